"""Making one Experience from a prompt batch with the four models (no Ray here).

    generate (actor) -> log-probs (actor) -> reference log-probs (initial) -> score (reward model)
    -> values (critic) -> per-token reward with KL penalty -> GAE advantages and returns
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from coati_ray.algo.rewards import gae, kl_estimate, per_token_rewards
from coati_ray.experience.batch import Experience


@dataclass
class ExperienceModels:
    actor: torch.nn.Module      # Actor (policy being trained)
    initial: torch.nn.Module    # Actor (frozen reference)
    reward: torch.nn.Module     # RewardModel (frozen)
    critic: torch.nn.Module     # Critic


def build_experience_models(cfg, device=None) -> ExperienceModels:
    """The four models a maker holds for PPOConfig `cfg`: each in its maker dtype (`cfg.maker_dtype`),
    frozen, in eval mode, with dropout off unless `ppo.disable_dropout` is false."""
    import dataclasses

    from coati_ray.models import Actor, build_actor, build_critic
    from coati_ray.models.dropout import disable_dropout
    from coati_ray.models.factory import build_reward_model

    actor = build_actor(dataclasses.replace(cfg.actor, dtype=cfg.maker_dtype("actor")))
    initial = Actor.from_pretrained(cfg.actor.path, cfg.maker_dtype("actor"), cfg.actor.trust_remote_code)
    reward = build_reward_model(dataclasses.replace(cfg.reward, dtype=cfg.maker_dtype("reward")), require_head=True)
    critic = build_critic(dataclasses.replace(cfg.critic, dtype=cfg.maker_dtype("critic")))
    for m in (actor, initial, reward, critic):
        m.to(device or "cpu").eval().requires_grad_(False)
        if cfg.ppo.disable_dropout:
            disable_dropout(m)
    return ExperienceModels(actor=actor, initial=initial, reward=reward, critic=critic)


@torch.no_grad()
def make_experience(models: ExperienceModels, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    gen, ppo, version: int = 0, maker: int = 0, batch_id: int = 0) -> tuple[Experience, dict]:
    """Prompts (B, P), left-padded -> (Experience, timings in seconds under stable names)."""
    timings = {}
    for m in (models.actor, models.initial, models.reward, models.critic):
        m.eval()
    t = time.perf_counter()
    sequences, mask, action_mask = models.actor.generate(
        input_ids, attention_mask, tokenizer, max_new_tokens=gen.max_new_tokens, do_sample=gen.do_sample,
        temperature=gen.temperature, top_k=gen.top_k, top_p=gen.top_p)
    timings["timing/generate"] = time.perf_counter() - t
    A = action_mask.size(1)

    # The behaviour policy is the tempered one the sampler drew from; the reference is tempered alike
    # so that the KL compares the same kind of distribution (verl does the same).
    temperature = gen.temperature if gen.do_sample else 1.0
    t = time.perf_counter()
    log_probs = models.actor.log_probs(sequences, mask, A, temperature)
    ref_log_probs = models.initial.log_probs(sequences, mask, A, temperature)
    timings["timing/ref"] = time.perf_counter() - t

    t = time.perf_counter()
    score = models.reward(sequences, mask)
    timings["timing/reward"] = time.perf_counter() - t

    t = time.perf_counter()
    values = models.critic(sequences, mask, A) * action_mask
    timings["timing/values"] = time.perf_counter() - t

    kl = kl_estimate(log_probs, ref_log_probs, ppo.kl_estimator) * action_mask
    rewards = per_token_rewards(score, kl, action_mask, ppo.kl_coef, ppo.reward_clip)
    advantages, returns = gae(rewards, values, action_mask, ppo.gamma, ppo.lam)
    exp = Experience(sequences=sequences.cpu(), attention_mask=mask.cpu(), action_mask=action_mask.cpu(),
                     action_log_probs=log_probs.cpu(), values=values.cpu(), returns=returns.cpu(),
                     advantages=advantages.cpu(), kl=kl.cpu(), reward=score.float().cpu(), version=version,
                     maker=maker, batch_id=batch_id)
    timings["generated_tokens"] = float(action_mask.sum())
    return exp, timings
