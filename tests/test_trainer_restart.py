"""A trainer rank lost mid-run no longer ends it: the trainer groups start again from the last complete checkpoint,
by themselves, the makers stay, and the run trains every batch once, as a resumed run does (the stop past
`<role>_trainer.max_restarts` is tests/test_faults.py's, with max_restarts=0; a lost node with the run on object
storage is tests/test_object_storage_runs.py's)."""

import json
import os

import pytest

from tests.ppo_helpers import assert_no_leaks, local_ray, ppo_config  # noqa: F401

ray = pytest.importorskip("ray")


@pytest.mark.slow
def test_a_lost_trainer_rank_restarts_the_job_from_its_checkpoint_none_skipped_none_twice(local_ray, tiny_llama,
                                                                                        reward_dir, tmp_path):
    from actors.driver import RLJob

    steps, killed, seen, makers = {}, [], [], []

    def on_step(job, step, m):
        steps[step] = m["consumed"]  # step 3 trained twice: its second time (after the restart) is kept
        seen.append((step, m["reward"], m["actor/loss"], m["critic/loss"]))
        makers.append(ray.get([h.pid.remote() for h in job.makers.values()]))
        if step == 3 and not killed:
            ray.kill(ray.get_actor("critic-trainer-0", namespace="coati"), no_restart=True)
            killed.append(step)

    out = tmp_path / "restarted"
    cfg = ppo_config(tiny_llama, reward_dir, out, "algorithm.max_steps=4", "algorithm.save_every=2",
                     "algorithm.rollout_batch_size=8", "algorithm.train_batch_size=8")
    summary = RLJob(cfg).run(on_step=on_step)
    assert summary["steps"] == 4 and summary["trainer_restarts"] == 1
    log = summary["trainer_restart_log"][0]
    assert log["step"] == 2 and log["steps_redone"] == 1 and log["lost"] == ["critic-trainer-0"]
    # the makers stayed (the same processes, none restarted) and went back to the checkpoint's weights: step 3,
    # made and trained again from the step-2 checkpoint, equals its first time
    assert log["makers_kept"] and all(pids == makers[0] for pids in makers) and summary["maker_restarts"] == 0
    first, again = [s for s in seen if s[0] == 3]
    assert first == pytest.approx(again, abs=1e-5), (first, again)
    for role in ("actor", "critic"):
        ids = [b for s in sorted(steps) for b in steps[s][role]["batch_ids"]]
        assert sorted(ids) == list(range(len(ids))) and len(ids) == 4 * len(steps[1][role]["batch_ids"]), ids
    with open(out / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows if "reward" in r] == [1, 2, 3, 4]  # the lines of the undone step 3 dropped
    restart = [r for r in rows if "trainer/restarts" in r]
    assert len(restart) == 1 and restart[0]["step"] == 2 and restart[0]["trainer/steps_redone"] == 1
    assert os.path.isdir(out / "checkpoints" / "final" / "actor" / "model")
    assert_no_leaks()
