"""A trainer rank lost mid-run no longer ends it: the job's actors start again from the last complete checkpoint,
by themselves, and the run trains exactly the batches an uninterrupted run trains; `<role>_trainer.max_restarts`
bounds it. One Ray for the module."""

import json
import os

import pytest

from tests.ppo_helpers import assert_no_leaks, local_ray, ppo_config  # noqa: F401

ray = pytest.importorskip("ray")

OVERRIDES = ("algorithm.max_steps=4", "algorithm.save_every=2", "algorithm.rollout_batch_size=8",
             "algorithm.train_batch_size=8")


def recorder(store, kill_at=None, victim="critic-trainer-0"):
    """Records each step's consumed batch ids; at step `kill_at` (the first time) kills `victim`."""
    killed = []

    def after_step(job, step, m):
        store[step] = m["consumed"]
        if step == kill_at and not killed:
            ray.kill(ray.get_actor(victim, namespace="coati"), no_restart=True)
            killed.append(step)
    return after_step


@pytest.fixture(scope="module")
def uninterrupted(local_ray, tiny_llama, reward_dir, tmp_path_factory):
    from actors.driver import RLJob

    steps = {}
    RLJob(ppo_config(tiny_llama, reward_dir, tmp_path_factory.mktemp("full"), *OVERRIDES)).run(on_step=recorder(steps))
    return steps


@pytest.mark.slow
def test_a_lost_trainer_rank_restarts_the_job_from_its_checkpoint_none_skipped_none_twice(uninterrupted, tiny_llama,
                                                                                        reward_dir, tmp_path):
    from actors.driver import RLJob

    steps = {}
    out = tmp_path / "restarted"
    summary = RLJob(ppo_config(tiny_llama, reward_dir, out, *OVERRIDES)).run(on_step=recorder(steps, kill_at=3))
    assert summary["steps"] == 4 and summary["trainer_restarts"] == 1
    assert summary["trainer_restart_log"][0]["step"] == 2 and summary["trainer_restart_log"][0]["steps_redone"] == 1
    assert summary["trainer_restart_log"][0]["lost"] == ["critic-trainer-0"]
    for step in (1, 2, 3, 4):  # step 3 trained twice: its second time (after the restart) is the one recorded
        for role in ("actor", "critic"):
            assert steps[step][role]["batch_ids"] == uninterrupted[step][role]["batch_ids"], (step, role)
    with open(out / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows if "reward" in r] == [1, 2, 3, 4]  # the lines of the undone step 3 dropped
    restart = [r for r in rows if "trainer/restarts" in r]
    assert len(restart) == 1 and restart[0]["step"] == 2 and restart[0]["trainer/steps_redone"] == 1
    assert os.path.isdir(out / "checkpoints" / "final" / "actor" / "model")
    assert_no_leaks()


@pytest.mark.slow
def test_past_max_restarts_the_run_stops_in_one_line_naming_the_checkpoint(local_ray, tiny_llama, reward_dir,
                                                                           tmp_path):
    from actors.driver import RLJob
    from coati_ray.errors import WorkerLost

    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / "run", *OVERRIDES, "critic_trainer.max_restarts=0")
    with pytest.raises(WorkerLost) as e:
        RLJob(cfg).run(on_step=recorder({}, kill_at=1))
    text = str(e.value)
    assert "\n" not in text and "critic-trainer-0 died at step 2" in text
    assert "critic_trainer 0 of max_restarts=0" in text and "no checkpoint was saved yet" in text
    assert_no_leaks()
