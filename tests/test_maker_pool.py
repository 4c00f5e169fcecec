"""The maker pool's weight-load bookkeeping, without Ray: fake makers whose loads finish when told."""

from __future__ import annotations

import types

import ray
import pytest

import actors.maker_pool as maker_pool
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

    def object_store_handle(self):
        return {"version": self.version}


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setattr(maker_pool, "ray", FakeRay)
    p = MakerPool(cfg=None, cfg_dict={}, buffer=None, info=lambda line: None)
    p.makers, p.version, p.incarnation, p.sync = {0: FakeMaker()}, {0: 0}, {0: 0}, FakeSync()
    return p


def test_a_busy_maker_is_sent_each_version_once_and_no_load_result_is_lost(pool):
    maker = pool.makers[0]
    pool._send_newest(0)
    pool._send_newest(0)                      # it already awaits version 1: nothing sent
    pool.sync.version = 3                     # two publishes while the maker was busy
    pool._send_newest(0)                      # only the newest is sent; version 2 is skipped
    assert [load.version for load in maker.sent] == [1, 3]
    assert pool.finished_loads() == []        # neither has run: nothing reported, nothing blocked on
    for load in maker.sent:
        load.done = True
    assert sorted(r["version"] for r in pool.finished_loads()) == [1, 3]
    assert pool.loads == {} and pool.superseded == []  # no ref kept: the exports can be released


def test_waiting_for_loads_collects_superseded_ones_too(pool):
    pool._send_newest(0)
    pool.sync.version = 2
    pool._send_newest(0)
    waited = []
    pool.wait_all = lambda refs: (waited.extend(refs), [setattr(r, "done", True) for r in refs])
    assert sorted(r["version"] for r in pool.wait_loads()) == [1, 2]
    assert sorted(r.version for r in waited) == [1, 2] and pool.superseded == []


def test_a_removed_makers_unfinished_load_is_still_collected(pool):
    pool.cfg = types.SimpleNamespace(maker=types.SimpleNamespace())
    pool._send_newest(0)
    pool.scale_to(0)
    assert pool.makers == {} and [i for i, _ in pool.superseded] == [0]
    pool.superseded[0][1].done = True
    assert [r["version"] for r in pool.finished_loads()] == [1] and pool.superseded == []
