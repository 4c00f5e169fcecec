"""Fault injection on a live PPO job: makers killed (`ray.kill`, SIGKILL) are restarted and the run
finishes with the books balanced and nothing delivered twice; a dead trainer rank stops the run at
once with one line, a save it interrupted never looks complete, and `--resume` reaches the end."""

import os
import signal
import time

import psutil
import pytest
import torch

from tests.ppo_helpers import assert_books_balance, assert_no_leaks, local_ray, metrics, ppo_config  # noqa: F401

ray = pytest.importorskip("ray")

# one naive rank per group keeps these runs short; the trainer-loss test uses a 2-rank ddp group
SMALL = ("actor_trainer.resources.num_ranks=1", "actor_trainer.strategy.name=naive")


def kill_when_generating(pid: int, kill, timeout_s: float = 60.0):
    """Start a thread that calls `kill()` as soon as process `pid` runs a `make` (Ray titles an actor's
    process `ray::ExperienceMaker.make` while it executes one): the kill lands mid-batch, every time."""
    import threading

    fired = threading.Event()

    def watch():
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                title = psutil.Process(pid).cmdline()
            except psutil.Error:
                return
            if title and ".make" in title[0]:
                kill()
                fired.set()
                return
            time.sleep(0.002)

    threading.Thread(target=watch, daemon=True).start()
    return fired


def consumed_batch_ids(rows: list[dict], role: str) -> list[int]:
    return [b for m in rows for b in m["consumed"][role]["batch_ids"]]


@pytest.mark.slow
def test_sync_makers_killed_idle_and_mid_batch_recover_on_policy(local_ray, tiny_llama, reward_dir, tmp_path):
    """ray.kill of an idle maker, then SIGKILL of a maker while it generates: both are restarted,
    reload the current weights, regenerate their batch, and every step still trains on experience
    of the current policy."""
    from actors.driver import RLJob

    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / "sync", *SMALL, "algorithm.max_steps=5")
    seen, rows, fired = [], [], []

    def after_step(job, step, m):
        rows.append(m)
        makers = job.makers
        if step == 1:
            ray.kill(makers[0], no_restart=False)  # idle: Ray restarts it and it comes back at version 0
        if step == 2:
            pid = ray.get(makers[1].pid.remote())
            fired.append(kill_when_generating(pid, lambda: os.kill(pid, signal.SIGKILL)))
        if step >= 2:  # after the sync every maker holds exactly the trainers' weights
            trainer = ray.get(job.groups["actor"][0].weights.remote())
            states = [ray.get(mk.weights.remote()) for mk in makers.values()]
            same = all(torch.equal(s["actor"][k], trainer[k]) for s in states for k in trainer)
            seen.append({"step": step, "same": same, "versions": [s["version"] for s in states]})

    summary = RLJob(cfg).run(on_step=after_step)
    assert fired[0].is_set()
    assert summary["steps"] == 5 and summary["maker_restarts"] == 2 and summary["maker_batches_regenerated"] == 2
    assert all(s["same"] and s["versions"] == [s["step"]] * 2 for s in seen), seen
    for role in ("actor", "critic"):
        # every batch exactly once, and in sync mode always made by the policy of the step before
        assert sorted(consumed_batch_ids(rows, role)) == list(range(10))
        for step, m in enumerate(rows, start=1):
            assert m["consumed"][role]["versions"] == [step - 1] * 2, (step, m["consumed"][role])
    acc = summary["buffer"]
    assert_books_balance(acc)
    assert acc["produced"] == 10 and acc["duplicates_refused"] == 0
    assert_no_leaks()


@pytest.mark.slow
def test_async_makers_killed_mid_batch_regenerate_without_double_delivery(local_ray, tiny_llama, reward_dir,
                                                                           tmp_path):
    """Async mode: each maker is killed while it generates (one by ray.kill, one by SIGKILL); the run
    finishes, each lost batch is made again, and no batch reaches a trainer twice."""
    from actors.driver import RLJob

    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / "async", *SMALL, "algorithm.mode=async", "algorithm.max_staleness=2",
                     "algorithm.max_steps=6", "buffer.capacity=8")
    rows, fired = [], []

    def after_step(job, step, m):
        rows.append(m)
        if step == 1:
            handle = job.makers[0]
            pid = ray.get(handle.pid.remote())  # a maker is never blocked in a call: it answers promptly
            fired.append(kill_when_generating(pid, lambda: ray.kill(handle, no_restart=False)))
        if step == 3:
            pid = ray.get(job.makers[1].pid.remote())
            fired.append(kill_when_generating(pid, lambda: os.kill(pid, signal.SIGKILL)))

    summary = RLJob(cfg).run(on_step=after_step)
    assert all(f.is_set() for f in fired) and len(fired) == 2
    assert summary["steps"] == 6 and summary["maker_restarts"] == 2 and summary["maker_batches_regenerated"] == 2
    acc = summary["buffer"]
    assert_books_balance(acc)
    for role in ("actor", "critic"):
        ids = consumed_batch_ids(rows, role)
        assert len(ids) == len(set(ids)) == 12, ids  # no batch reached a trainer twice
        assert all(s <= 2 for m in rows for s in m["consumed"][role]["staleness"])
    assert_no_leaks()


@pytest.mark.slow
def test_dead_trainer_rank_fails_fast_interrupted_save_never_looks_complete_and_resume_finishes(
        local_ray, tiny_llama, reward_dir, tmp_path, capsys):
    """Rank 1 of a 2-rank ddp actor group dies right before the step-2 checkpoint: the run stops at
    once with one line naming the rank and the checkpoint to resume from; the half-written step 2 is
    never taken for a checkpoint; `--resume` from step 1 reaches step 3."""
    from actors.driver import RLJob
    from coati_ray.errors import WorkerLost
    from coati_ray.utils.run_dir import latest_checkpoint
    from launch.common import resolve_resume

    out = tmp_path / "trainer"
    cfg = ppo_config(tiny_llama, reward_dir, out, "maker.num_makers=1", "algorithm.max_steps=3", "algorithm.save_every=1",
                     "actor_trainer.max_restarts=0")  # the stop itself (restarts: tests/test_trainer_restart.py)

    def after_step(job, step, m):
        if step == 2:  # the save of step 2 comes next and needs every rank
            ray.kill(job.groups["actor"][1], no_restart=True)

    t = time.monotonic()
    with pytest.raises(WorkerLost) as e:
        RLJob(cfg).run(on_step=after_step)
    elapsed = time.monotonic() - t
    msg = str(e.value)
    assert "\n" not in msg and "actor-trainer-1 died" in msg and "--resume" in msg and "step_000001" in msg, msg
    assert elapsed < 120, f"a dead rank must stop the run, not hang it ({elapsed:.0f}s)"
    assert_no_leaks()
    assert not (out / "checkpoints" / "step_000002").exists()
    assert latest_checkpoint(str(out)) == str(out / "checkpoints" / "step_000001")

    resume_from = resolve_resume("latest", str(out))
    summary = RLJob(cfg, resume_from=resume_from).run()
    assert summary["steps"] == 3
    assert [r["step"] for r in metrics(out) if "timing/step" in r] == [1, 2, 3]
    assert_no_leaks()


@pytest.mark.slow
def test_one_death_with_several_queued_batches_is_one_restart_and_every_batch_remade(local_ray, tiny_llama,
                                                                                    reward_dir, tmp_path):
    """Sync mode, 4 batches per step over 2 makers (2 queued on each): SIGKILL of maker-1 while it generates
    loses both of its batches. It is restarted and reloaded once, and both batches are made again."""
    from actors.driver import RLJob

    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / "queued", *SMALL, "algorithm.max_steps=3",
                     "algorithm.rollout_batch_size=16", "algorithm.train_batch_size=8", "buffer.capacity=16")
    rows, fired, lines = [], [], []

    def after_step(job, step, m):
        rows.append(m)
        if step == 1:
            job.pool.info = lambda msg: lines.append(msg)  # the pool's progress lines, to count recoveries
            pid = ray.get(job.makers[1].pid.remote())
            fired.append(kill_when_generating(pid, lambda: os.kill(pid, signal.SIGKILL)))

    summary = RLJob(cfg).run(on_step=after_step)
    assert fired[0].is_set()
    assert summary["maker_restarts"] == 1 and summary["maker_batches_regenerated"] == 2, summary
    assert sum("restarted" in line for line in lines) == 1, lines
    for role in ("actor", "critic"):
        assert sorted(consumed_batch_ids(rows, role)) == list(range(12))
    assert_books_balance(summary["buffer"])
    assert_no_leaks()


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["drop", "fail"])
def test_a_maker_past_its_restarts_leaves_the_pool_or_ends_the_run(policy, local_ray, tiny_llama, reward_dir,
                                                                   tmp_path):
    """maker.max_restarts=0 and maker-1 SIGKILLed while it generates: with on_exhausted_restarts=drop the run
    goes on with maker-0, which makes the lost batch; with fail (the default) it ends with one line."""
    from actors.driver import RLJob
    from coati_ray.errors import WorkerLost

    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / policy, *SMALL, "algorithm.max_steps=4", "maker.max_restarts=0",
                     f"maker.on_exhausted_restarts={policy}")
    rows, fired = [], []

    def after_step(job, step, m):
        rows.append(m)
        if step == 1:
            pid = ray.get(job.makers[1].pid.remote())
            fired.append(kill_when_generating(pid, lambda: os.kill(pid, signal.SIGKILL)))

    if policy == "fail":
        with pytest.raises(WorkerLost) as e:
            RLJob(cfg).run(on_step=after_step)
        msg = str(e.value)
        assert "maker-1 died and Ray could not restart it" in msg and "on_exhausted_restarts=drop" in msg
        assert "\n" not in msg
    else:
        summary = RLJob(cfg).run(on_step=after_step)
        assert summary["steps"] == 4 and summary["makers_dropped"] == 1 and summary["makers"] == 1, summary
        assert summary["maker_restarts"] == 0 and summary["maker_batches_regenerated"] >= 1
        assert [m["makers"] for m in rows] == [2, 1, 1, 1]
        for role in ("actor", "critic"):
            assert sorted(consumed_batch_ids(rows, role)) == list(range(8))  # every batch once, none lost
        assert_books_balance(summary["buffer"])
    assert fired[0].is_set()
    assert_no_leaks()


@pytest.mark.slow
def test_trainer_rank_dying_while_makers_generate_ends_the_run_at_once(local_ray, tiny_llama, reward_dir, tmp_path):
    """Sync mode, 16 batches per step on one maker: the critic's only rank is killed as the maker starts the
    step's first batch. The run ends with one line naming it well before the step's generation would have
    finished (it used to wait for every batch, or for buffer.timeout_s when the buffer filled)."""
    from actors.driver import RLJob
    from coati_ray.errors import WorkerLost

    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / "trainer_dies", *SMALL, "algorithm.max_steps=4",
                     "maker.num_makers=1", "algorithm.rollout_batch_size=64", "algorithm.train_batch_size=8",
                     "buffer.capacity=64", "buffer.timeout_s=600", "generation.max_new_tokens=48",
                     "critic_trainer.max_restarts=0")
    fired, generation, killed_at = [], [], []

    def kill(critic):
        killed_at.append(time.monotonic())
        ray.kill(critic, no_restart=True)

    def after_step(job, step, m):
        if step == 1:
            generation.append(m["timing/generate"] * m["experience/batches"])  # a whole step's generation
            critic = job.groups["critic"][0]
            pid = ray.get(job.makers[0].pid.remote())
            fired.append(kill_when_generating(pid, lambda: kill(critic)))

    with pytest.raises(WorkerLost) as e:
        RLJob(cfg).run(on_step=after_step)
    ended = time.monotonic() - killed_at[0]
    assert fired[0].is_set()
    print(f"run ended {ended:.2f}s after the kill; a step generates for {generation[0]:.2f}s")
    assert ended < generation[0] / 2, (ended, generation[0])
    assert "critic-trainer-0 died at step 2" in str(e.value) and "\n" not in str(e.value)
    assert "critic_trainer 0 of max_restarts=0" in str(e.value)  # no restart left: the stop as before
    assert_no_leaks()


@pytest.mark.slow
def test_scaling_past_free_resources_is_refused_and_an_unplaceable_maker_ends_the_run(local_ray, tiny_llama,
                                                                                     reward_dir, tmp_path,
                                                                                     monkeypatch):
    """scale_makers(n) checks the cluster's free CPUs before asking Ray (which would queue the actor
    forever); a maker Ray still cannot place (resources taken meanwhile, or fragmented over nodes) ends
    the run after maker.start_timeout_s with one line naming it and what it waits for."""
    from actors.driver import RLJob
    from actors.maker_pool import MakerPool
    from coati_ray.errors import ConfigError, WorkerLost

    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / "scale", *SMALL, "algorithm.max_steps=3", "maker.num_makers=1",
                     "maker.num_cpus=0.5", "maker.start_timeout_s=5")
    refused = []

    def after_step(job, step, m):
        if step == 1:
            with pytest.raises(ConfigError) as e:
                job.scale_makers(20)  # 10 CPUs on a 2-CPU cluster
            refused.append(str(e.value))
            monkeypatch.setattr(MakerPool, "check_fits", lambda self, target: None)  # as if CPUs vanished since
            job.scale_makers(8)

    t = time.monotonic()
    with pytest.raises(WorkerLost) as e:
        RLJob(cfg).run(on_step=after_step)
    assert "scale_makers(20)" in refused[0] and "free" in refused[0]
    msg = str(e.value)
    assert "maker-7" in msg and "did not start within maker.start_timeout_s=5s" in msg and "\n" not in msg, msg
    assert time.monotonic() - t < 90
    assert_no_leaks()


@pytest.mark.slow
def test_maker_killed_between_syncs_on_the_collective_catches_up_and_the_group_reforms(local_ray, tiny_llama,
                                                                                      reward_dir, tmp_path):
    """Collective transport: maker-1 is killed after a sync. Ray restarts it; it reloads the current weights
    from the object store, remakes its batch, and the next sync re-forms the group with its new process."""
    from actors.driver import RLJob

    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / "collective", *SMALL, "algorithm.max_steps=4",
                     "weight_sync.transport=collective")
    seen = []

    def after_step(job, step, m):
        if step == 1:
            ray.kill(job.makers[1], no_restart=False)
        trainer = ray.get(job.groups["actor"][0].weights.remote())
        if step >= 2:
            states = [ray.get(mk.weights.remote()) for mk in job.makers.values()]
            seen.append({"step": step, "collective": m["sync/collective"],
                         "same": all(torch.equal(st["actor"][k], trainer[k]) for st in states for k in trainer),
                         "incarnations": dict(job.sync.groups["actor"].members)})

    summary = RLJob(cfg).run(on_step=after_step)
    assert summary["steps"] == 4 and summary["maker_restarts"] == 1 and summary["maker_batches_regenerated"] >= 1
    assert all(s["same"] and s["collective"] for s in seen), seen
    assert seen[0]["incarnations"] == {0: 0, 1: 1}  # the group re-formed around the restarted maker
    assert_books_balance(summary["buffer"])
    assert_no_leaks()


def test_watchdog_without_the_state_api_names_the_call_from_the_driver_record(local_ray, tmp_path):
    """This module's Ray has no dashboard, so no state API: the stalled actor is named with what the driver
    sent it, and the bound is watchdog.stall_s."""
    from actors.watchdog import Watchdog
    from coati_ray.config.rl import WatchdogConfig
    from coati_ray.errors import RunStalled

    @ray.remote(num_cpus=0)
    class Sleeper:
        def nap(self):
            time.sleep(600)

    sleeper = Sleeper.remote()
    ray.get(sleeper.__ray_ready__.remote())
    dog = Watchdog(WatchdogConfig(stall_s=1.5, stacks=False), str(tmp_path), lambda: {"maker-7": sleeper},
                   lambda: {"maker-7": "make of batch 3, sent 2s ago"})
    dog.locate()
    dog.begin_step(4)
    t = time.monotonic()
    with pytest.raises(RunStalled) as e:
        dog.wait([sleeper.nap.remote()])
    assert time.monotonic() - t < 1.5 + 5  # the bound, then the pings
    assert "step 5 made no progress for 2s (watchdog.stall_s)" in str(e.value)
    assert "maker-7 (make of batch 3, sent 2s ago)" in str(e.value)
    ray.kill(sleeper)


def _lose_the_next_load(maker):
    """Inside maker-1: its next weight load lands one version short, as a load that never arrived would."""
    real = maker.receiver.load

    def load_short(handle):
        out = real(handle)
        maker.receiver.version -= 1
        maker.receiver.load = real
        return out

    maker.receiver.load = load_short


@pytest.mark.slow
def test_a_maker_merely_behind_catches_up_without_counting_as_a_restart(local_ray, tiny_llama, reward_dir, tmp_path):
    """A live maker that lacks the weights it was promised refuses its batch (MakerBehind); the pool loads the
    newest weights into it and sends the batch again. Its process was not restarted, so no restart is counted
    and it keeps its place (incarnation) in the pool."""
    from actors.driver import RLJob

    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / "behind", *SMALL, "algorithm.max_steps=3",
                     "weight_sync.transport=object_store")
    seen = {}

    def after_step(job, step, m):
        if step == 1:
            ray.get(job.makers[1].__ray_call__.remote(_lose_the_next_load))
        seen[step] = dict(job.pool.incarnation)

    summary = RLJob(cfg).run(on_step=after_step)
    assert summary["steps"] == 3 and summary["maker_restarts"] == 0
    assert summary["maker_batches_behind"] >= 1 and summary["maker_batches_regenerated"] >= 1
    assert seen[3] == {0: 0, 1: 0}
    assert_books_balance(summary["buffer"])
