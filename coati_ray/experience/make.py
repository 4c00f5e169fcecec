"""Making one Experience from a prompt batch with the maker's models (no Ray here).

    generate n samples per prompt (actor) -> log-probs (actor) and reference log-probs (initial)
    -> training reward (reward model, function, HTTP service: weighted) -> values (critic, gae only)
    -> KL penalty (when it goes in the reward: on every token, or once per sequence as Coati's)
    -> advantages (the configured estimator)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch

from coati_ray.algo.advantages import AdvantageInputs, algorithm
from coati_ray.algo.functional import masked_mean
from coati_ray.algo.reward_shaping import (coati_token_kl, kl_estimate, on_last_token, overlong_penalty, produced_limit,
                                    sequence_kl_penalty, truncated_rows)
from coati_ray.experience.batch import Experience, group_indices
from coati_ray.experience.waste import finished_row_fraction, padding_fraction


@dataclass
class ExperienceModels:
    actor: torch.nn.Module                      # Actor (policy being trained)
    initial: torch.nn.Module                    # Actor (frozen reference)
    reward: Optional[torch.nn.Module] = None    # RewardModel (frozen), when the reward model is a source
    critic: Optional[torch.nn.Module] = None    # Critic, when the estimator needs one (gae)

    def all(self) -> list:
        return [m for m in (self.actor, self.initial, self.reward, self.critic) if m is not None]


def build_experience_models(cfg, device=None) -> ExperienceModels:
    """The models a maker holds for RLConfig `cfg`: actor and initial always, the reward model when
    `reward` is set, the critic when the estimator needs one. Each in its maker dtype
    (`cfg.maker_dtype`), frozen, in eval mode, with dropout off unless `algorithm.disable_dropout` is false."""
    import dataclasses

    from coati_ray.models import build_actor, build_critic

    actor = _frozen(cfg, build_actor(dataclasses.replace(cfg.actor, dtype=cfg.maker_dtype("actor"))), device)
    models = build_reference_models(cfg, actor, device)
    if cfg.estimator.needs_critic:
        models.critic = _frozen(cfg, build_critic(dataclasses.replace(cfg.critic, dtype=cfg.maker_dtype("critic")),
                                                  head_seed=cfg.algorithm.seed), device)
    return models


def build_reference_models(cfg, actor: torch.nn.Module, device=None) -> ExperienceModels:
    """`actor` (a maker's copy, or a colocated actor rank's own trained model, left as it is) with the frozen
    models beside it: the initial policy and, when `reward` is set, the reward model, in the maker dtype."""
    import dataclasses

    from coati_ray.models import Actor
    from coati_ray.models.factory import build_reward_model

    # the reference is the actor's base as the actor holds it: quantized too under QLoRA
    initial = Actor.from_pretrained(cfg.actor.local_path, cfg.maker_dtype("actor"), cfg.actor.trust_remote_code,
                                    quantize=cfg.actor.quantize)
    models = ExperienceModels(actor=actor, initial=_frozen(cfg, initial, device))
    if cfg.reward_model is not None:
        models.reward = _frozen(cfg, build_reward_model(dataclasses.replace(cfg.reward_model, dtype=cfg.maker_dtype("reward")),
                                                        require_head=True), device)
    return models


def _frozen(cfg, model: torch.nn.Module, device) -> torch.nn.Module:
    from coati_ray.models.dropout import disable_dropout

    model.to(device or "cpu").eval().requires_grad_(False)
    if cfg.algorithm.disable_dropout:
        disable_dropout(model)
    return model


def group_stats(scores: torch.Tensor, n: int) -> dict:
    """Within-group reward spread of a batch whose n samples per prompt are consecutive: (B,) -> the mean
    within-group std and the fraction of groups whose rewards are all equal (no learning signal for
    group-relative estimators)."""
    if n < 2:
        return {}
    g = scores.float().view(-1, n)
    return {"experience/group_reward_std": float(g.std(dim=1).mean()),
            "experience/groups_all_equal": float((g.max(dim=1).values - g.min(dim=1).values <= 1e-6).float().mean())}


@dataclass
class ScoredRollout:
    """A generated and scored batch before its values and advantages: B samples, A response tokens.

    sequences, mask: (B, T); action_mask (before the overlong filter), ref_log_probs, log_probs, kl: (B, A)
    (log_probs and kl None when the maker skips the behaviour pass, ref_log_probs and kl None when no KL
    reads them: algorithm.kl_coef 0); score: (B,) the weighted, clipped
    training reward; truncated: (B,) bool. Colocated placement computes values where the critic trains, so
    the batch crosses from the actor group to the critic group in this form (CPU tensors).
    """

    sequences: torch.Tensor
    mask: torch.Tensor
    action_mask: torch.Tensor
    ref_log_probs: Optional[torch.Tensor]
    score: torch.Tensor
    truncated: torch.Tensor
    group_size: int
    stats: dict
    log_probs: Optional[torch.Tensor] = None
    kl: Optional[torch.Tensor] = None
    version: int = 0
    maker: int = 0
    batch_id: int = 0

    def cpu(self) -> "ScoredRollout":
        import dataclasses

        return dataclasses.replace(self, **{k: getattr(self, k).cpu() for k in (
            "sequences", "mask", "action_mask", "ref_log_probs", "score", "truncated", "log_probs", "kl")
            if getattr(self, k) is not None})


@torch.no_grad()
def make_experience(models: ExperienceModels, tokenizer, items: list[dict], gen, ppo, rewards=None, *,
                    version: int = 0, maker: int = 0, batch_id: int = 0, device: Optional[torch.device] = None,
                    behaviour_log_probs: bool = True, episodes=None) -> tuple[Experience, dict]:
    """Prompt items (`input_ids`, `prompt`, `row`) -> (Experience, statistics with timings under stable names).

    Each prompt is sampled `algorithm.n_samples_per_prompt` times; its samples are consecutive rows, so a
    group-relative estimator sees whole groups. `rewards` is a RewardSources (default: the reward model).
    `behaviour_log_probs=False` skips the actor's log-prob pass (the trainer's first forward stands for it;
    only valid when nothing here needs them: no KL in the reward). `episodes` (an EpisodeRunner, for
    `rollout.environment`) makes each sample a multi-turn episode instead of one response.
    """
    scored = score_rollout(models, tokenizer, items, gen, ppo, rewards, version=version, maker=maker,
                           batch_id=batch_id, device=device, behaviour_log_probs=behaviour_log_probs,
                           episodes=episodes)
    t = time.perf_counter()
    values = critic_values(models.critic, scored) if models.critic is not None else None
    scored.stats["timing/values"] = time.perf_counter() - t
    return finish_experience(scored, values, ppo)


@torch.no_grad()
def critic_values(critic: torch.nn.Module, scored: ScoredRollout) -> torch.Tensor:
    """The critic's values of a scored batch: (B, A), zero outside the response."""
    device = next(critic.parameters()).device
    A = scored.action_mask.size(1)
    action_mask = scored.action_mask.to(device)
    return critic(scored.sequences.to(device), scored.mask.to(device), A) * action_mask


@torch.no_grad()
def score_rollout(models: ExperienceModels, tokenizer, items: list[dict], gen, ppo, rewards=None, *,
                  version: int = 0, maker: int = 0, batch_id: int = 0, device: Optional[torch.device] = None,
                  behaviour_log_probs: bool = True, episodes=None) -> ScoredRollout:
    """Generate (or run episodes), take the behaviour and reference log-probs, and score: make_experience
    without the critic."""
    from coati_ray.data.datasets import collate_prompts
    from coati_ray.evaluation.policy import decode_responses
    from coati_ray.experience.reward_sources import RewardSources

    n = ppo.n_samples_per_prompt
    if rewards is None:
        from coati_ray.config.rl import RewardSourcesConfig
        from coati_ray.config import from_dict

        rewards = RewardSources(from_dict(RewardSourcesConfig, {}), models.reward)
    device = device or next(models.actor.parameters()).device
    rows = [it for it in items for _ in range(n)]
    timings = {}
    for m in models.all():
        m.eval()
    t = time.perf_counter()
    played = None
    if episodes is not None:  # each sample an episode: turns and the environment's answers (experience/episodes.py)
        played = episodes(models.actor, tokenizer, rows, gen, device, batch_id)
        sequences, mask, action_mask = (x.to(device) for x in (played.sequences, played.mask, played.action_mask))
        prompt_length = played.prompt_length
    else:
        batch = collate_prompts(rows, tokenizer.pad_token_id)
        input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        from_sampler = behaviour_log_probs and getattr(gen, "sampler_log_probs", True)
        generated = models.actor.generate_with(gen, input_ids, attention_mask, tokenizer, sampler_log_probs=from_sampler)
        sequences, mask, action_mask = generated
        prompt_length = input_ids.size(1)
    timings["timing/generate"] = time.perf_counter() - t
    A = action_mask.size(1)

    # The behaviour policy is the tempered one the sampler drew from; the reference is tempered alike
    # so that the KL compares the same kind of distribution (verl does the same).
    temperature = gen.temperature if gen.do_sample else 1.0
    t = time.perf_counter()  # timing/ref: the behaviour and reference passes together
    log_probs, actor_passes = None, 1  # the generation
    if behaviour_log_probs:  # the sampler's own, where the backend kept them (one forward fewer, as TRL does)
        sampled = getattr(generated, "log_probs", None) if played is None else None
        if sampled is not None and sampled.shape == action_mask.shape:
            log_probs = sampled.to(device)
        else:
            log_probs = models.actor.log_probs(sequences, mask, A, temperature, share_prompts=ppo.share_prompts)
            actor_passes += 1
    ref_log_probs = models.initial.log_probs(sequences, mask, A, temperature, share_prompts=ppo.share_prompts) \
        if ppo.needs_reference else None
    actor_passes += ref_log_probs is not None
    timings["timing/ref"] = time.perf_counter() - t

    t = time.perf_counter()
    texts = {}
    if rewards.needs_text:
        texts = {"prompts": [r["prompt"] for r in rows], "rows": [r.get("row", {"prompt": r["prompt"]}) for r in rows],
                 "responses": decode_responses(tokenizer, sequences[:, prompt_length:],
                                               mask[:, prompt_length:] if played is not None else action_mask)}
    score, parts = rewards(sequences, mask, **texts) if rewards.sources else \
        (torch.zeros(len(rows), device=sequences.device), {})
    if played is not None:  # the environment's rewards (every turn's, summed) beside the other sources
        score = score + episodes.cfg.reward_weight * played.env_reward.to(score.device)
        parts = {**parts, "env": played.env_reward}
    if ppo.reward_clip > 0:
        score = score.clamp(-ppo.reward_clip, ppo.reward_clip)
    if played is not None and bool(played.failed.any()):  # nothing of a failed episode trains: keep it out of its
        score = neutral_scores(score, played.failed.to(score.device), n)  # group's baseline too
    lengths = action_mask.sum(dim=1)
    limit = gen.max_new_tokens
    if played is not None:
        truncated = played.truncated.to(device)
    else:  # judged on what the backend produced: a response it cut, at the limit it ran with
        truncated = truncated_rows(action_mask, sequences[:, prompt_length:], models.actor.eos_token_ids(tokenizer),
                                   generated.max_new_tokens)
        limit = produced_limit(lengths, truncated, generated.max_new_tokens)
        if limit < gen.max_new_tokens:
            _say_backend_limit(gen, limit)
    if ppo.overlong_penalty > 0:  # DAPO: a soft penalty over the last tokens before the limit
        buffer = min(ppo.overlong_buffer or max(1, gen.max_new_tokens // 5), limit)
        penalty = overlong_penalty(lengths, limit, buffer, ppo.overlong_penalty).to(score.device)
        score = score + penalty.to(score.dtype)
        parts = {**parts, "overlong_penalty": penalty}
    timings["timing/reward"] = time.perf_counter() - t
    kl = token_kl(log_probs, ref_log_probs, ppo) * action_mask \
        if log_probs is not None and ref_log_probs is not None else None
    stats = {"response_length": float(lengths.float().mean()), "experience/truncated": float(truncated.float().mean()),
             "experience/max_new_tokens": float(limit),
             **({"kl": float(masked_mean(kl, action_mask, dim=1).mean())} if kl is not None else
                {} if ref_log_probs is None else {"kl": float("nan")}),
             **timings, "timing/values": 0.0, "generated_tokens": float(lengths.sum()),
             "experience/actor_passes": float(actor_passes),
             **group_stats(score.float().cpu(), n), **(played.stats if played is not None else {})}
    if played is None:  # what compaction and packing could remove from this batch (an episode's turns differ)
        stats["experience/finished_row_fraction"] = finished_row_fraction(lengths)
        stats["experience/padding_fraction"] = padding_fraction(mask)
    for name, value in parts.items():
        stats[f"reward/{name}"] = float(value.mean())
    return ScoredRollout(sequences=sequences, mask=mask, action_mask=action_mask, ref_log_probs=ref_log_probs,
                         score=score.float(), truncated=truncated, group_size=n, stats=stats, log_probs=log_probs,
                         kl=kl, version=version, maker=maker, batch_id=batch_id)


_SAID: set = set()


def _say_backend_limit(gen, limit: int) -> None:
    """Once per backend and limit: the backend cut responses before generation.max_new_tokens (truncation and the
    overlong options follow what it produced; Dr. GRPO's constant is the config's)."""
    if (gen.backend, limit) in _SAID:
        return
    _SAID.add((gen.backend, limit))
    import logging

    logging.getLogger("coati_ray").warning(
        f"generation.backend {gen.backend} cut responses at {limit} tokens, fewer than generation.max_new_tokens="
        f"{gen.max_new_tokens}: experience/truncated and the overlong options use {limit}; set "
        f"generation.max_new_tokens={limit} so that Dr. GRPO's constant (loss_agg seq_mean_token_sum_norm) does too")


def token_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, ppo) -> torch.Tensor:
    """(B, A) per-token KL to the initial policy, the one the penalty uses: Coati's (e^r - 1) - r for
    kl_penalty=sequence, else algorithm.kl_estimator's."""
    if ppo.kl_penalty == "sequence":
        return coati_token_kl(log_probs, ref_log_probs)
    return kl_estimate(log_probs, ref_log_probs, ppo.kl_estimator)


def kl_rewards(s: ScoredRollout, ppo) -> torch.Tensor:
    """(B, A) the KL penalty as rewards: -kl_coef * KL on every token (kl_penalty=reward), Coati's
    sequence-level penalty once at each response's last token (sequence), or 0 (loss, or kl_coef 0)."""
    if not ppo.kl_in_reward:
        return torch.zeros_like(s.action_mask, dtype=torch.float32)
    if s.log_probs is None:
        raise ValueError("a KL penalty in the reward needs the behaviour log-probs")
    if ppo.kl_penalty == "sequence":
        penalty = sequence_kl_penalty(s.log_probs, s.ref_log_probs, s.action_mask, ppo.kl_coef)
        return on_last_token(-penalty, s.action_mask)
    return -ppo.kl_coef * s.kl


def neutral_scores(scores: torch.Tensor, failed: torch.Tensor, n: int) -> torch.Tensor:
    """scores (B,), failed (B,) bool, groups of n consecutive samples -> scores where each failed sample holds
    the mean of its group's other samples (0 when all failed): its own advantage is masked out, and with this
    it moves neither the group's mean nor, for one failure, much of its spread."""
    g, f = scores.view(-1, n), failed.view(-1, n).to(scores.dtype)
    ok = (1 - f).sum(dim=1, keepdim=True)
    mean = (g * (1 - f)).sum(dim=1, keepdim=True) / ok.clamp(min=1)
    return torch.where(f.bool(), mean.expand_as(g), g).reshape(-1)


def finish_experience(scored: ScoredRollout, values: Optional[torch.Tensor], ppo) -> tuple[Experience, dict]:
    """A scored batch and its values (B, A; None without a critic) -> (Experience, statistics): the KL
    penalty in the reward, the configured estimator's advantages, then DAPO's overlong filter."""
    s = scored
    device = s.action_mask.device
    values = values.to(device) if values is not None else None
    advantages, returns = algorithm(ppo.advantage_estimator).estimate(AdvantageInputs(
        scores=s.score, kl_rewards=kl_rewards(s, ppo), action_mask=s.action_mask, values=values,
        group_size=s.group_size, gamma=ppo.gamma, lam=ppo.lam))
    action_mask = s.action_mask
    if ppo.overlong_filter and bool(s.truncated.any()):  # DAPO: a cut answer is left out of the loss, not punished
        action_mask = action_mask * (~s.truncated.to(device)).to(action_mask.dtype)[:, None]
    cpu = (lambda x: x.cpu() if x is not None else None)
    exp = Experience(sequences=s.sequences.cpu(), attention_mask=s.mask.cpu(), action_mask=action_mask.cpu(),
                     action_log_probs=cpu(s.log_probs), ref_log_probs=cpu(s.ref_log_probs), values=cpu(values),
                     returns=cpu(returns), advantages=advantages.float().cpu(), kl=cpu(s.kl),
                     reward=s.score.float().cpu(), version=s.version, maker=s.maker, batch_id=s.batch_id,
                     group_index=group_indices(s.batch_id, s.sequences.size(0), s.group_size))
    return exp, dict(s.stats)
