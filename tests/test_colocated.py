"""placement: colocated — the actor group's ranks generate with their own weights.

For the same seed and rollout layout (a maker's batch = what a rank makes at once) a colocated sync job
and a separate sync job must train the same policy: the same tokens, equal losses and parameters at
step 3, for PPO (values from the critic group) and GRPO; and the colocated job moves no policy weights.
"""

import os

import pytest
import torch

from coati_ray.errors import ConfigError
from tests.conftest import REPO, data_path
from tests.ppo_helpers import assert_books_balance, assert_no_leaks, local_ray, metrics, ppo_config  # noqa: F401

ray = pytest.importorskip("ray")

STEPS = 3
COMPARED = ("reward", "kl", "response_length", "actor/loss", "actor/policy_loss", "actor/clip_frac")


def run_job(cfg) -> dict:
    """Run `cfg`; keep each step's metrics, the consumed batch ids and rank 0's parameters after the last step."""
    from actors.driver import RLJob

    seen = {"metrics": [], "makers": []}

    def after_step(job, step, m):
        seen["metrics"].append(m)
        seen["makers"].append(len(job.makers))
        if step == STEPS:
            seen["actor"] = ray.get(job.groups["actor"][0].weights.remote())
            if "critic" in job.groups:
                seen["critic"] = ray.get(job.groups["critic"][0].weights.remote())

    seen["summary"] = RLJob(cfg).run(on_step=after_step)
    return seen


def assert_same_training(separate: dict, colocated: dict, compared: tuple) -> None:
    assert len(separate["metrics"]) == len(colocated["metrics"]) == STEPS
    for step, (a, b) in enumerate(zip(separate["metrics"], colocated["metrics"]), start=1):
        assert b["experience/digests"] == a["experience/digests"] and len(a["experience/digests"]) == 2
        for key in compared:  # the same tokens sampled, then the same losses
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (step, key, a[key], b[key])
        assert b["consumed"]["actor"]["batch_ids"] == a["consumed"]["actor"]["batch_ids"]
        assert b["sync/bytes"] == 0 and a["sync/bytes"] > 0  # no policy weight moved
    every = [d for m in separate["metrics"] for d in m["experience/digests"]]
    assert len(set(every)) == len(every) == 2 * STEPS  # a fingerprint that tells batches apart
    for role in ("actor", "critic"):
        if role in separate:
            for name, tensor in separate[role].items():
                torch.testing.assert_close(colocated[role][name], tensor, rtol=1e-5, atol=1e-6, msg=f"{role} {name}")
    assert all(n == 0 for n in colocated["makers"]) and colocated["summary"]["placement"] == "colocated"
    assert_books_balance(colocated["summary"]["buffer"])
    assert_no_leaks()


@pytest.mark.slow
def test_colocated_ppo_trains_the_policy_a_separate_job_trains(local_ray, tiny_llama, reward_dir, tmp_path):
    """gae: 2 ddp actor ranks generate one 4-sample batch each (as 2 makers of batch 4 would), the critic rank
    adds the values; 3 steps later both jobs hold the same actor and critic. The colocated job also runs
    colocated.offload_optimizer's path (on a CPU nothing moves: 0 GiB, the same training)."""
    common = [f"algorithm.max_steps={STEPS}", "generation.max_new_tokens=6"]
    separate = run_job(ppo_config(tiny_llama, reward_dir, tmp_path / "separate", *common))
    colocated = run_job(ppo_config(tiny_llama, reward_dir, tmp_path / "colocated", *common, "placement=colocated",
                                   "colocated.offload_optimizer=true"))
    assert_same_training(separate, colocated, COMPARED + ("critic/loss",))
    assert colocated["metrics"][-1]["critic/loss"] > 0
    assert all(m["memory/actor_offloaded_gb"] == 0.0 and m["memory/critic_offloaded_gb"] == 0.0
               for m in colocated["metrics"])


@pytest.mark.slow
def test_colocated_grpo_trains_the_policy_a_separate_job_trains(local_ray, tiny_llama, tmp_path):
    from coati_ray.config import load_config
    from coati_ray.config.rl import RLConfig

    def cfg(name, *extra):
        c = load_config(RLConfig, os.path.join(REPO, "configs", "grpo_tiny.yaml"), [
            f"actor.path={tiny_llama}", f"data.prompt_path={data_path('prompts', 'train.jsonl')}",
            "generation.max_new_tokens=6", f"algorithm.max_steps={STEPS}", *extra], output_dir=str(tmp_path / name))
        c.validate()
        return c

    separate = run_job(cfg("separate"))
    colocated = run_job(cfg("colocated", "placement=colocated"))
    assert_same_training(separate, colocated, COMPARED)
    assert "critic" not in colocated


@pytest.mark.parametrize("kl_penalty", ["reward", "sequence"])
def test_a_batch_scored_without_the_critic_then_valued_elsewhere_is_the_makers_experience(tiny_llama, reward_dir,
                                                                                          tmp_path, kl_penalty):
    """What an actor rank makes (a ScoredRollout, CPU tensors) plus what a critic rank adds (values, advantages)
    is the Experience a maker holding all four models makes, tensor for tensor (with the KL penalty per token or
    Coati's once per sequence), and sampling leaves the caller's random stream where it was."""
    from coati_ray.experience.make import build_experience_models
    from coati_ray.experience.prompts import read_prompt_data
    from coati_ray.experience.reward_sources import RewardSources
    from coati_ray.experience.rollout_worker import RolloutWorker, finish_with_values
    from coati_ray.models import load_tokenizer

    cfg = ppo_config(tiny_llama, reward_dir, tmp_path, "generation.max_new_tokens=6", f"algorithm.kl_penalty={kl_penalty}")
    tok = load_tokenizer(tiny_llama)
    items, _, _ = read_prompt_data(cfg.data, tok)
    models = build_experience_models(cfg)
    rewards = RewardSources(cfg.rewards, models.reward)
    maker = RolloutWorker(cfg, models, tok, rewards, torch.device("cpu"), index=0)
    whole, whole_stats = maker.make(items[:4], batch_id=7, version=3)
    import dataclasses

    split = RolloutWorker(cfg, dataclasses.replace(models, critic=None), tok, rewards, torch.device("cpu"), index=0)
    before = torch.get_rng_state()
    scored, stats = split.make(items[:4], batch_id=7, version=3, defer_values=True)
    assert torch.equal(torch.get_rng_state(), before)
    exp, stats = finish_with_values(models.critic, scored, cfg.algorithm, stats)
    assert stats["digest"] == whole_stats["digest"] and stats["samples"] == 4
    assert set(exp.tensors()) == set(whole.tensors())
    for name, tensor in whole.tensors().items():
        assert torch.equal(exp.tensors()[name], tensor), name
    assert exp.group_index.tolist() == [28, 29, 30, 31]  # batch 7's 4 prompts (1 sample each), numbered apart


def test_colocated_is_refused_in_one_line_where_it_cannot_run(tiny_llama, reward_dir, tmp_path):
    with pytest.raises(ConfigError, match="placement.*algorithm.mode=sync"):
        ppo_config(tiny_llama, reward_dir, tmp_path / "a", "placement=colocated", "algorithm.mode=async")
    with pytest.raises(ConfigError, match="actor_trainer.strategy.name.*Gemini"):
        ppo_config(tiny_llama, reward_dir, tmp_path / "b", "placement=colocated",
                   "actor_trainer.strategy.name=colossalai_gemini", "actor_trainer.strategy.precision=bf16")
    with pytest.raises(ConfigError, match="maker.dtype: colocated"):
        ppo_config(tiny_llama, reward_dir, tmp_path / "c", "placement=colocated", "maker.dtype=bfloat16")
    from coati_ray.config.placement import check_placement

    # filter_groups with a critic: only an estimator of one's own marked group-relative and needing a critic
    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / "e", "placement=colocated")
    cfg.algorithm.filter_groups = True
    with pytest.raises(ConfigError, match="algorithm.filter_groups: colocated"):
        check_placement(cfg)
    with pytest.raises(ConfigError, match="weight_sync.transport: ipc maps the trainers' own tensors"):
        ppo_config(tiny_llama, reward_dir, tmp_path / "d", "weight_sync.transport=ipc", "algorithm.mode=async")
