"""Passes the makers no longer run (issue 48): the behaviour log-probs read from the sampler's own logits, and
the reference pass skipped when no KL reads it. Each against the uncut path, to float tolerance."""

from __future__ import annotations

import pytest
import torch

from coati_ray.config import from_dict
from coati_ray.config.rl import AlgorithmConfig, GenerationConfig
from coati_ray.experience import ExperienceModels, make_experience
from coati_ray.models import Actor, Critic, RewardModel


@pytest.fixture(scope="module")
def models(tiny_llama):
    return ExperienceModels(actor=Actor.from_pretrained(tiny_llama).eval(), initial=Actor.from_pretrained(tiny_llama),
                            reward=RewardModel.from_pretrained(tiny_llama), critic=Critic.from_pretrained(tiny_llama))


def prompt_items(tokenizer, n=6):
    from coati_ray.inference import render_prompt

    texts = [f"sort: {i} {i + 3} 1" + " 7" * i for i in range(n)]  # lengths differ: left padding, rows end apart
    return [{"input_ids": render_prompt(tokenizer, t), "prompt": t} for t in texts]


@pytest.mark.parametrize("sampling", [dict(temperature=0.7, top_k=20), dict(temperature=1.0, top_p=0.9),
                                      dict(do_sample=False)])
def test_sampler_log_probs_equal_a_separate_forward(models, tokenizer, sampling):
    """The log-probs the compact loop reads from the logits it drew from are the tempered full distribution's
    (no top-k / top-p), as action_log_probs computes them in a forward over the whole sequence."""
    from coati_ray.data.datasets import collate_prompts

    batch = collate_prompts(prompt_items(tokenizer), tokenizer.pad_token_id)
    gen = from_dict(GenerationConfig, {"max_new_tokens": 12, **sampling})
    torch.manual_seed(3)
    out = models.actor.generate_with(gen, batch["input_ids"], batch["attention_mask"], tokenizer,
                                     sampler_log_probs=True)
    sequences, mask, action_mask = out
    assert out.log_probs is not None and out.log_probs.shape == action_mask.shape
    temperature = gen.temperature if gen.do_sample else 1.0
    with torch.no_grad():
        separate = models.actor.log_probs(sequences, mask, action_mask.size(1), temperature)
    gap = ((out.log_probs - separate) * action_mask).abs().max().item()
    assert gap < 1e-4, gap
    assert torch.all(out.log_probs[action_mask == 0] == 0)
    assert int(action_mask.sum()) > action_mask.size(0)  # more than one token per row was compared
    torch.manual_seed(3)  # asking for them changes nothing the sampler draws
    again = models.actor.generate_with(gen, batch["input_ids"], batch["attention_mask"], tokenizer)
    assert again.log_probs is None and torch.equal(again[0], sequences)


def test_a_backend_without_sampler_log_probs_falls_back_to_the_forward(models, tokenizer):
    """The hf backend keeps no log-probs: the maker runs the separate pass and the experience is the same kind."""
    gen = from_dict(GenerationConfig, {"max_new_tokens": 6, "backend": "hf"})
    ppo = from_dict(AlgorithmConfig, {"kl_coef": 0.1})
    torch.manual_seed(0)
    exp, _ = make_experience(models, tokenizer, prompt_items(tokenizer, 4), gen, ppo)
    with torch.no_grad():
        separate = models.actor.log_probs(exp.sequences, exp.attention_mask, exp.num_actions, gen.temperature)
    assert torch.allclose(exp.action_log_probs * exp.action_mask, separate * exp.action_mask, atol=1e-6)


def _counting(module):
    calls = []
    handle = module.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_gradients_from_either_behaviour_source_match(models, tokenizer):
    """One PPO loss and its gradient, behaviour log-probs from the sampler vs from a separate forward."""
    from coati_ray.algo.functional import action_log_probs
    from coati_ray.algo.losses import policy_loss

    ppo = from_dict(AlgorithmConfig, {"kl_coef": 0.05})
    grads, losses = {}, {}
    for use in (True, False):
        gen = from_dict(GenerationConfig, {"max_new_tokens": 8, "temperature": 0.8, "sampler_log_probs": use})
        torch.manual_seed(7)
        exp, _ = make_experience(models, tokenizer, prompt_items(tokenizer, 4), gen, ppo)
        actor = models.actor
        actor.zero_grad()
        log_probs = action_log_probs(actor(exp.sequences, exp.attention_mask), exp.sequences, exp.num_actions, 0.8)
        loss, _ = policy_loss(log_probs, exp.action_log_probs, exp.advantages, exp.action_mask, 0.2)
        loss.backward()
        grads[use] = torch.cat([p.grad.flatten() for p in actor.parameters() if p.grad is not None])
        losses[use] = loss.item()
        actor.zero_grad()
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
    scale = grads[False].abs().max().item()
    assert (grads[True] - grads[False]).abs().max().item() <= 1e-4 * max(scale, 1.0)


def test_kl_coef_0_skips_the_reference_pass(models, tokenizer):
    """No KL reads the initial policy's log-probs at kl_coef 0: its pass is not run, the experience carries none,
    and the advantages are those of the full path."""
    gen = from_dict(GenerationConfig, {"max_new_tokens": 6})
    made = {}
    for kl_coef in (0.0, 1e-12):  # 1e-12: the reference runs, its penalty below float noise
        ppo = from_dict(AlgorithmConfig, {"kl_coef": kl_coef, "advantage_estimator": "grpo",
                                          "n_samples_per_prompt": 2, "kl_penalty": "loss"})
        calls, handle = _counting(models.initial.model)
        torch.manual_seed(0)
        made[kl_coef] = make_experience(models, tokenizer, prompt_items(tokenizer, 2), gen, ppo) + (len(calls),)
        handle.remove()
    (cut, stats, cut_calls), (full, full_stats, full_calls) = made[0.0], made[1e-12]
    assert cut_calls == 0 and full_calls == 2  # one reference pass: its groups' prompts once, then the answers
    assert cut.ref_log_probs is None and full.ref_log_probs is not None
    assert "kl" not in stats and "kl" in full_stats
    # the FLOPs the makers report count the passes run: the generation alone (log-probs from the sampler),
    # then the generation and the reference
    assert stats["experience/actor_passes"] == 1 and full_stats["experience/actor_passes"] == 2
    assert torch.equal(cut.sequences, full.sequences)
    assert torch.allclose(cut.advantages, full.advantages, atol=1e-6)


def test_a_grpo_trainer_step_runs_on_experience_without_reference(models, tokenizer, tiny_llama):
    """The policy trainer reads ref_log_probs only for a KL loss: at kl_coef 0 it trains on experience
    that carries none (what the makers' cut hands it)."""
    import os

    from coati_ray.config import load_config
    from coati_ray.config.rl import RLConfig
    from coati_ray.strategies import make_strategy
    from coati_ray.trainers.ppo import PolicyTrainer
    from tests.conftest import REPO

    cfg = load_config(RLConfig, os.path.join(REPO, "configs", "grpo_tiny.yaml"),
                      ["algorithm.kl_coef=0", "algorithm.n_samples_per_prompt=2", "algorithm.micro_batch_size=2",
                       "algorithm.train_batch_size=4", "algorithm.rollout_batch_size=4",
                       "actor_trainer.strategy.name=naive", "actor_trainer.resources.num_ranks=1"])
    torch.manual_seed(0)
    exp, _ = make_experience(models, tokenizer, prompt_items(tokenizer, 2), cfg.generation, cfg.algorithm)
    assert exp.ref_log_probs is None
    strategy = make_strategy(cfg.actor_trainer.strategy)
    strategy.setup_distributed()
    policy = PolicyTrainer(Actor.from_pretrained(tiny_llama), strategy, cfg.actor_trainer, cfg.algorithm, 1)
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    m = policy.train(exp, step=0)
    assert "actor/kl_loss" not in m and torch.isfinite(torch.tensor(m["actor/loss"]))
    assert any(not torch.equal(before[k], v) for k, v in policy.model.state_dict().items())


def _first_step(run) -> dict:
    return run.metrics[0]


@pytest.mark.slow
def test_the_cuts_train_as_the_uncut_path_on_two_ranks(tmp_path):
    """Tiny Ray jobs with two DDP actor ranks: PPO with the sampler's log-probs vs a separate behaviour pass,
    and GRPO at kl_coef 0 (no reference pass) vs 1e-12 (the pass runs, its KL below float noise): the same
    samples, and the first update's losses equal to float tolerance."""
    from actors.testing import tiny_job

    two = ["actor_trainer.resources.num_ranks=2", "actor_trainer.strategy.name=ddp", "ray.dashboard=false"]
    ppo = {use: tiny_job(*two, f"generation.sampler_log_probs={str(use).lower()}", "generation.temperature=0.8",
                         algorithm="ppo", steps=1, output_dir=str(tmp_path / f"ppo{use}")) for use in (True, False)}
    a, b = _first_step(ppo[True]), _first_step(ppo[False])
    assert a["reward"] == pytest.approx(b["reward"], abs=1e-6) and a["response_length"] == b["response_length"]
    for key in ("kl", "actor/loss", "critic/loss"):
        assert a[key] == pytest.approx(b[key], abs=1e-5), key
    grpo = {kl: tiny_job(*two, f"algorithm.kl_coef={kl}", algorithm="grpo", steps=1,
                         output_dir=str(tmp_path / f"grpo{kl}")) for kl in ("0", "1e-12")}
    a, b = _first_step(grpo["0"]), _first_step(grpo["1e-12"])
    assert "kl" not in a and "kl" in b
    assert a["reward"] == pytest.approx(b["reward"], abs=1e-6)
    assert a["actor/loss"] == pytest.approx(b["actor/loss"], abs=1e-5)
