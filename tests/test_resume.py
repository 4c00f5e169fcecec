"""Stage 3 resumed from a checkpoint on a local Ray: sync runs repeat the uninterrupted run exactly, async runs
remake the batches that were in flight. One Ray instance serves the whole module."""

import os
import shutil

import pytest

from tests.conftest import data_path
from tests.ppo_helpers import assert_no_leaks, local_ray, ppo_config  # noqa: F401

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def resume_pair(local_ray, tiny_llama, reward_dir, tmp_path_factory):
    """An uninterrupted 4-step run and one resumed from its step-2 checkpoint, both with rollout > train batch,
    2 PPO epochs and PPO-ptx, so the optimiser, the scheduler, the RNG and the ptx position all matter."""
    from actors.driver import RLJob

    root = tmp_path_factory.mktemp("resume")
    # LoRA dropout (kept by algorithm.disable_dropout) draws from each rank's RNG, so the RNG restore matters too
    overrides = ("algorithm.max_steps=4", "algorithm.save_every=2", "algorithm.rollout_batch_size=16", "algorithm.train_batch_size=8",
                 "algorithm.ppo_epochs=2", "algorithm.ptx_coef=0.2", "algorithm.ptx_batch_size=2", "actor.lora_rank=4",
                 "actor.lora_dropout=0.1",
                 f"data.ptx_path={data_path('ptx', 'train.jsonl')}", "actor_trainer.optim.scheduler=cosine",
                 "buffer.capacity=32")

    def recorder(store):
        def after_step(job, step, m):
            store[step] = {"metrics": m, "actor": ray.get(job.groups["actor"][0].weights.remote()),
                           "critic": ray.get(job.groups["critic"][0].weights.remote())}
        return after_step

    full, resumed = {}, {}
    cfg = ppo_config(tiny_llama, reward_dir, root / "full", *overrides)
    RLJob(cfg, log=True).run(on_step=recorder(full))
    os.makedirs(root / "resumed" / "checkpoints")
    shutil.copytree(root / "full" / "checkpoints" / "step_000002", root / "resumed" / "checkpoints" / "step_000002")
    cfg = ppo_config(tiny_llama, reward_dir, root / "resumed", *overrides)
    summary = RLJob(cfg, resume_from=str(root / "resumed" / "checkpoints" / "step_000002")).run(
        on_step=recorder(resumed))
    return {"full": full, "resumed": resumed, "summary": summary, "root": root}


@pytest.mark.slow
def test_async_resume_remakes_the_batches_in_flight_none_skipped_none_twice(local_ray, tiny_llama, reward_dir,
                                                                          tmp_path):
    """Async mode: batches the makers had started for later steps when the checkpoint was written are made
    again on resume (from the checkpoint's weights), so the resumed run trains exactly the batches the
    uninterrupted one trained after the checkpoint."""
    from actors.driver import RLJob

    overrides = ("algorithm.mode=async", "algorithm.max_staleness=1", "algorithm.max_steps=4", "algorithm.save_every=2")
    full, resumed = {}, {}

    def recorder(store):
        return lambda job, step, m: store.__setitem__(step, m["consumed"])

    RLJob(ppo_config(tiny_llama, reward_dir, tmp_path / "full", *overrides)).run(on_step=recorder(full))
    assert any(v < 2 for v in full[3]["actor"]["versions"])  # step 3's experience was in flight at step 2
    os.makedirs(tmp_path / "resumed" / "checkpoints")
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_000002",
                    tmp_path / "resumed" / "checkpoints" / "step_000002")
    summary = RLJob(ppo_config(tiny_llama, reward_dir, tmp_path / "resumed", *overrides),
                     resume_from=str(tmp_path / "resumed" / "checkpoints" / "step_000002")).run(on_step=recorder(resumed))
    assert summary["steps"] == 4 and sorted(resumed) == [3, 4]
    for step in (3, 4):
        for role in ("actor", "critic"):
            assert resumed[step][role]["batch_ids"] == full[step][role]["batch_ids"], (step, role)
    assert min(resumed[3]["actor"]["versions"]) == 2  # remade from the checkpoint's weights
    trained = [b for store, steps in ((full, (1, 2)), (resumed, (3, 4))) for s in steps for b in store[s]["actor"]["batch_ids"]]
    assert sorted(trained) == list(range(len(trained)))  # none skipped, none twice
    assert_no_leaks()


@pytest.mark.slow
def test_resume_continues_exactly_the_uninterrupted_run(resume_pair):
    full, resumed = resume_pair["full"], resume_pair["resumed"]
    assert resume_pair["summary"]["steps"] == 4 and sorted(resumed) == [3, 4]
    for step in (3, 4):
        a, b = full[step], resumed[step]
        for role in ("actor", "critic"):  # the same batches, made by the same policy versions, none skipped
            for key in ("batch_ids", "versions"):
                assert a["metrics"]["consumed"][role][key] == b["metrics"]["consumed"][role][key], (step, role)
        for key in ("actor/loss", "actor/ptx_loss", "critic/loss", "reward", "kl", "actor/lr"):
            assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-5, abs=1e-7), (step, key)
        for role in ("actor", "critic"):
            worst = max((a[role][k] - b[role][k]).abs().max().item() for k in a[role])
            assert worst < 1e-6, (step, role, worst)
    # the steps moved the weights by far more than that tolerance
    drift = max((full[4]["actor"][k] - full[2]["actor"][k]).abs().max().item() for k in full[4]["actor"])
    assert drift > 1e-4
    assert_no_leaks()


@pytest.mark.slow
def test_async_resume_with_episodes_in_flight_remakes_the_same_episodes(local_ray, tiny_llama, tmp_path):
    """Multi-turn episodes (rollout.environment) in async GRPO: the episodes in flight at the step-2 checkpoint
    are played again on resume, the same ones (equal experience digests), none skipped, none twice."""
    from actors.driver import RLJob
    from coati_ray.config import load_config
    from coati_ray.config.rl import RLConfig
    from tests.conftest import REPO

    def config(out):
        cfg = load_config(RLConfig, os.path.join(REPO, "configs", "grpo_tiny.yaml"), [
            f"actor.path={tiny_llama}", f"data.prompt_path={data_path('calc', 'prompts.jsonl')}",
            "rewards.function=null", "rollout.environment=coati_ray.tasks.calc:CalcEnvironment",
            "rollout.max_total_tokens=64", "generation.backend=tests.episode_fixtures:oracle_half_wrong",
            "generation.max_new_tokens=24", "algorithm.mode=async", "algorithm.max_staleness=1", "algorithm.max_steps=4",
            "algorithm.save_every=2"], output_dir=str(out))
        cfg.validate()
        return cfg

    full, resumed = {}, {}

    def recorder(store):
        return lambda job, step, m: store.__setitem__(step, m)

    RLJob(config(tmp_path / "full")).run(on_step=recorder(full))
    assert any(v < 2 for v in full[3]["consumed"]["actor"]["versions"])  # step 3's episodes were in flight
    os.makedirs(tmp_path / "resumed" / "checkpoints")
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_000002",
                    tmp_path / "resumed" / "checkpoints" / "step_000002")
    summary = RLJob(config(tmp_path / "resumed"), resume_from=str(tmp_path / "resumed" / "checkpoints" /
                                                                   "step_000002")).run(on_step=recorder(resumed))
    assert summary["steps"] == 4 and sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step]["consumed"]["actor"]["batch_ids"] == full[step]["consumed"]["actor"]["batch_ids"]
    # (async: a step in which no maker batch landed has no rollout/* of its own)
    assert any(m.get("rollout/tool_calls") == 1 for m in resumed.values())
    assert min(resumed[3]["consumed"]["actor"]["versions"]) == 2  # played again with the checkpoint's weights
    # the oracle's tokens depend only on the batch's prompts and seed: every episode batch played after the
    # resume is one the uninterrupted run played, token for token
    replayed = {d for m in resumed.values() for d in m["experience/digests"]}
    assert replayed and replayed <= {d for m in full.values() for d in m["experience/digests"]}
    trained = [b for store, steps in ((full, (1, 2)), (resumed, (3, 4))) for s in steps
               for b in store[s]["consumed"]["actor"]["batch_ids"]]
    assert sorted(trained) == list(range(len(trained)))  # none skipped, none twice
    assert_no_leaks()
