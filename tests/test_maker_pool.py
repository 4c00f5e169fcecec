"""The maker pool's weight-load bookkeeping, without Ray: fake makers whose loads finish when told."""

from __future__ import annotations

import time
import types

import ray
import pytest

import actors.maker_pool as maker_pool
import actors.transports.loads as loads
from actors.maker_pool import MakerPool


class Load:
    """A fake ObjectRef of a load_weights call."""

    def __init__(self, version: int):
        self.version, self.done = version, False


class FakeRay:
    exceptions = ray.exceptions

    @staticmethod
    def wait(refs, num_returns=1, timeout=None):
        return [r for r in refs if r.done], [r for r in refs if not r.done]

    @staticmethod
    def kill(actor, no_restart=True):
        pass

    @staticmethod
    def get(ref, timeout=None):
        assert ref.done, "the pool blocked on a load that has not run"
        return {"version": ref.version, "seconds": 0.0}


class FakeMaker:
    def __init__(self):
        self.sent: list[Load] = []
        self.load_weights = types.SimpleNamespace(remote=self._load)

    def _load(self, handle):
        self.sent.append(Load(handle["version"]))
        return self.sent[-1]


class FakeSync:
    def __init__(self):
        self.version = 1

    def object_store_handle(self, wait=True):
        return {"version": self.version}

    def handle_for(self, index, wait=True):
        return self.object_store_handle(wait)


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setattr(maker_pool, "ray", FakeRay)
    monkeypatch.setattr(loads, "ray", FakeRay)
    p = MakerPool(cfg=None, cfg_dict={}, buffer=None, info=lambda line: None)
    p.makers, p.loads.version, p.incarnation, p.sync = {0: FakeMaker()}, {0: 0}, {0: 0}, FakeSync()
    return p


def test_a_busy_maker_is_sent_each_version_once_and_no_load_result_is_lost(pool):
    maker = pool.makers[0]
    pool.loads.send_newest(0)
    pool.loads.send_newest(0)                      # it already awaits version 1: nothing sent
    pool.sync.version = 3                     # two publishes while the maker was busy
    pool.loads.send_newest(0)                      # only the newest is sent; version 2 is skipped
    assert [load.version for load in maker.sent] == [1, 3]
    assert pool.finished_loads() == []        # neither has run: nothing reported, nothing blocked on
    for load in maker.sent:
        load.done = True
    assert sorted(r["version"] for r in pool.finished_loads()) == [1, 3]
    assert pool.loads.pending == {} and pool.loads.superseded == []  # no ref kept: the exports can be released


def test_waiting_for_loads_collects_superseded_ones_too(pool):
    pool.loads.send_newest(0)
    pool.sync.version = 2
    pool.loads.send_newest(0)
    waited = []
    pool.wait_all = lambda refs: (waited.extend(refs), [setattr(r, "done", True) for r in refs])
    assert sorted(r["version"] for r in pool.wait_loads()) == [1, 2]
    assert sorted(r.version for r in waited) == [1, 2] and pool.loads.superseded == []


def test_a_removed_makers_unfinished_load_is_still_collected(pool):
    pool.cfg = types.SimpleNamespace(maker=types.SimpleNamespace())
    pool.loads.send_newest(0)
    pool.scale_to(0)
    assert pool.makers == {} and [i for i, _ in pool.loads.superseded] == [0]
    pool.loads.superseded[0][1].done = True
    assert [r["version"] for r in pool.finished_loads()] == [1] and pool.loads.superseded == []


class FakeTrainer:
    """Rank 0 of a trainer group: the steps its weights have seen, and how often it was asked to export."""

    def __init__(self, steps: int):
        self.steps, self.exports, self.updating = steps, 0, False
        self.steps_trained = types.SimpleNamespace(remote=lambda: {"steps": self.steps, "busy": self.updating})
        self.export_weights = types.SimpleNamespace(remote=self._export)

    def _export(self, block=True):
        if self.updating:
            assert not block, "the driver waited for an update in progress"
            return {"busy": True}
        self.exports += 1
        return {"ref": None, "dtypes": {}, "bytes": 8, "version": self.steps}


class MakingMaker(FakeMaker):
    def __init__(self):
        super().__init__()
        self.made: list[int] = []
        self.make = types.SimpleNamespace(remote=self._make)

    def _make(self, items, batch_id, version):
        self.made.append(batch_id)
        return Load(version), Load(version)


def collective_job(pool, makers: dict, timeout_s: float):
    """A collective-transport job at version 1 whose actor group has finished step 1 (its weights have seen 2
    steps) while the critic's still waits for the one batch the node loss took, now first in line."""
    from actors.maker_pool import Batch
    from actors.scheduling import StepScheduler
    from actors.weight_sync import WeightSync

    cfg = types.SimpleNamespace(weight_sync=types.SimpleNamespace(transport="collective", timeout_s=timeout_s))
    actor, critic = FakeTrainer(2), FakeTrainer(1)
    trainers = types.SimpleNamespace(ranks={"actor": [actor], "critic": [critic]}, get=lambda refs: list(refs))
    pool.cfg, pool.makers = cfg, makers
    pool.incarnation = {i: 0 for i in makers}
    sync = WeightSync(cfg, trainers, pool, info=lambda line: None)
    sync.version = 1
    pool.orphans = [Batch(3, ["lost prompt"])]
    buffer = types.SimpleNamespace(wait_lost=types.SimpleNamespace(remote=lambda: Load(0)))
    prompts = types.SimpleNamespace(batch=lambda ticket: [f"prompt {ticket}"])
    scheduler = StepScheduler(pool, None, buffer, prompts, items_per_step=2, max_staleness=0, capacity_items=8,
                              last_ticket=100, first_step=1)
    scheduler.next_ticket = 4
    return scheduler, sync, actor, critic


def test_a_maker_back_without_weights_never_holds_back_the_batch_a_trainer_group_waits_for(pool):
    """Under the collective, a restarted maker needs a consistent export, which cannot exist while the critic
    waits for a remade batch the driver must hand out: the driver does not wait (nor export) for it; the
    maker that holds the weights makes the batch, and the restarted one loads once the groups agree."""
    back, holding = MakingMaker(), MakingMaker()
    pool.loads.version = {0: 0, 1: 1}   # maker 0 came back with its base weights; maker 1 got version 1 by broadcast
    scheduler, sync, actor, critic = collective_job(pool, {0: back, 1: holding}, timeout_s=30.0)

    t = time.monotonic()
    scheduler.feed(step=1)
    assert time.monotonic() - t < 1.0                      # no waiting for the groups to agree
    assert holding.made[0] == 3 and back.made == [] and back.sent == []
    assert actor.exports == critic.exports == 0             # a probe, not an export, while they differ
    assert list(pool.awaiting) == [0] and sync.uneven == {"actor": 2, "critic": 1}
    scheduler.check_not_deadlocked(step=1)                 # maker 1 is working: not a deadlock
    assert scheduler.stuck_since is None

    critic.steps, critic.updating = 2, True                # the batch arrived; the critic's update runs
    sync.store._next_probe = 0.0
    scheduler.feed(step=2)                                 # equal steps, but an update holds the weights
    assert back.sent == [] and actor.exports == critic.exports == 0 and list(pool.awaiting) == [0]

    critic.updating = False                                # the update ended
    sync.store._next_probe = 0.0
    scheduler.feed(step=2)
    assert [load.version for load in back.sent] == [2] and back.made and pool.awaiting == {}
    assert actor.exports == critic.exports == 1


def test_when_no_maker_can_work_the_run_ends_in_one_line_naming_the_fix(pool):
    back = MakingMaker()
    pool.loads.version = {0: 0}
    scheduler, sync, actor, critic = collective_job(pool, {0: back}, timeout_s=0.0)
    scheduler.feed(step=1)
    assert back.made == [] and pool.running == {} and [b.batch_id for b in pool.orphans] == [3]
    scheduler.check_not_deadlocked(step=1)                 # stuck from now on: the clock starts
    assert scheduler.stuck_since is not None
    with pytest.raises(maker_pool.WorkerLost, match="weight_sync.transport=object_store") as e:
        time.sleep(0.01)
        scheduler.check_not_deadlocked(step=1)
    assert "\n" not in str(e.value) and "{'actor': 2, 'critic': 1}" in str(e.value)
    pool.orphans.clear()
    scheduler.next_ticket = 100                            # no work left to hand out: a slow update, not stuck
    scheduler.check_not_deadlocked(step=1)
    assert scheduler.stuck_since is None
