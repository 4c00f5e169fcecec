"""Weight sync's layout without Ray (buckets, numpy views), and the collective group's failure line with
stand-in actors that run the real group code: a peer that never joins is named within weight_sync.timeout_s."""

import time

import numpy as np
import pytest
import torch

from coati_ray.models.weight_layout import flatten, from_numpy, plan_buckets, to_numpy, unflatten

ray = pytest.importorskip("ray")


def state():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(4, 3, generator=g), "b": torch.randn(10, generator=g),
            "c": torch.randn(2, 2, generator=g).to(torch.bfloat16), "d": torch.randn(300, generator=g),
            "e": torch.arange(3)}


def test_buckets_keep_order_group_by_dtype_and_cut_large_tensors():
    s = state()
    buckets = plan_buckets(s, bucket_bytes=100)  # 25 float32 elements, 50 bf16, 12 int64
    assert all(b.nbytes <= 100 for b in buckets)  # one bucket of transport memory, whatever the tensor
    names = [[p.name for p in b.pieces] for b in buckets]
    assert names[0] == ["a", "b"] and names[1] == ["c"]  # a + b = 88 bytes; a dtype change closes a bucket
    assert [p.numel for b in buckets for p in b.pieces if p.name == "d"] == [25] * 12  # 300 floats in 12 pieces
    rebuilt = {k: torch.zeros_like(v) for k, v in s.items()}
    for b in buckets:
        flat = flatten(s, b)
        assert flat.numel() == b.numel and flat.dtype == s[b.pieces[0].name].dtype
        for piece, view in unflatten(flat, b):
            rebuilt[piece.name].view(-1)[piece.start:piece.start + piece.numel].copy_(view)
    assert all(torch.equal(rebuilt[k], v) for k, v in s.items())


def test_numpy_views_round_trip_without_copies_bf16_included():
    s = state()
    arrays, dtypes = to_numpy(s)
    assert arrays["c"].dtype == np.int16 and dtypes["c"] == "torch.bfloat16"
    assert arrays["a"].ctypes.data == s["a"].data_ptr()  # the tensor's own memory
    back = from_numpy(arrays, dtypes)
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in s.items())
    assert back["b"].data_ptr() == s["b"].data_ptr()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, namespace="coati-sync-test", log_to_driver=False)
    yield
    ray.shutdown()


@ray.remote(num_cpus=0)
class Joiner:
    """Runs the real WeightBroadcastGroup; `hang=True` stands for a peer that never turns up (never calls it), `die=True`
    for a maker whose process dies as it is asked to join, `delay` for one whose join call starts late."""

    def __init__(self, hang=False, die=False, delay=0.0):
        self.hang, self.die, self.delay = hang, die, delay

    def ping(self):
        return True

    def join_sync(self, *args):
        if self.hang:
            time.sleep(3600)
        if self.die:
            import os

            os._exit(1)
        time.sleep(self.delay)
        from actors.broadcast_group import WeightBroadcastGroup

        meeting, rank, size, backend, timeout = args[-5:]
        self.group = WeightBroadcastGroup(meeting, rank, size, backend, timeout)
        return rank

    def sync_plan(self, bucket_bytes):
        return plan_buckets({"w": torch.ones(4)}, bucket_bytes)

    def leave_sync(self):
        pass


class StandInTrainers:
    def __init__(self, sender):
        from actors.rendezvous import new_rendezvous

        self.ranks = {"actor": [sender]}
        self.rendezvous = new_rendezvous()

    def get(self, refs):
        return ray.get(refs)


class StandInPool:
    def __init__(self, makers):
        self.makers = dict(enumerate(makers))
        self.incarnation = {i: 0 for i in self.makers}

    def published(self, version, received):
        self.received = received


def test_a_peer_that_never_joins_ends_in_one_line_naming_it(local_ray):
    from actors.weight_sync import WeightSync
    from coati_ray.config.rl import SyncConfig
    from coati_ray.errors import WorkerLost

    cfg = type("Cfg", (), {})()
    cfg.weight_sync = SyncConfig(transport="collective", timeout_s=3)
    pool = StandInPool([Joiner.remote(), Joiner.remote(hang=True)])
    sync = WeightSync(cfg, StandInTrainers(Joiner.remote()), pool, info=lambda m: None)
    sync.transports["collective"]._backend = lambda: "gloo"
    t = time.monotonic()
    with pytest.raises(WorkerLost) as e:
        sync.publish(1)
    msg = str(e.value)
    assert "maker-1 did not join the actor group" in msg and "weight_sync.timeout_s=3s" in msg and "\n" not in msg, msg
    assert "maker-0" not in msg and time.monotonic() - t < 30


def test_a_maker_dying_while_joining_releases_the_members_at_once_and_the_group_re_forms_next_sync(local_ray):
    """maker-1 dies as the group forms. The driver abandons the group, so the trainer rank that joined and
    maker-0, whose join starts only after that, leave at once (their actors answer again) instead of
    blocking for weight_sync.timeout_s, and the failure is a membership change (the group forms again at the
    next sync), not a reason to give up the collective for the rest of the run."""
    from actors.transports import TransportBroke
    from actors.weight_sync import WeightSync
    from coati_ray.config.rl import SyncConfig

    cfg = type("Cfg", (), {})()
    cfg.weight_sync = SyncConfig(transport="auto", timeout_s=120)
    sender = Joiner.remote()
    pool = StandInPool([Joiner.remote(delay=3.0), Joiner.remote(die=True)])
    sync = WeightSync(cfg, StandInTrainers(sender), pool, info=lambda m: None)
    sync.transports["collective"]._backend = lambda: "gloo"
    t = time.monotonic()
    with pytest.raises(TransportBroke, match="maker-1 died while joining the actor group"):
        sync.transports["collective"]._form("actor", {0: 0, 1: 0})
    ray.get([sender.ping.remote(), pool.makers[0].ping.remote()], timeout=20)  # neither is still joining
    assert time.monotonic() - t < 30  # far below weight_sync.timeout_s=120


def test_a_swap_takes_only_a_consistent_set_of_roles():
    """The actor's version 6 has arrived, the critic's is still version 5: no swap (neither under label 5 nor
    6); once the critic's 6 arrives, both go in together as version 6."""
    from actors.weight_endpoints import WeightReceiver
    from coati_ray.models.weight_layout import flatten

    modules = {"actor": torch.nn.Linear(3, 2), "critic": torch.nn.Linear(2, 1)}
    receiver = WeightReceiver(modules, {"actor": False, "critic": False})

    def stage(role, version, value):
        state = {k: torch.full_like(v, value) for k, v in modules[role].state_dict().items()}
        buckets = plan_buckets(state, 1 << 20)
        receiver.staging[role] = (buckets, [flatten(state, b) for b in buckets])
        receiver.staged[role] = version

    stage("actor", 5, 5.0)
    stage("critic", 5, 5.0)
    assert receiver.swap()["version"] == 5
    stage("actor", 6, 6.0)
    assert receiver.swap() is None and receiver.version == 5
    assert torch.equal(modules["actor"].weight, torch.full((2, 3), 5.0))  # nothing of version 6 went in yet
    stage("critic", 6, 6.0)
    assert receiver.swap()["version"] == 6
    assert all(torch.equal(p, torch.full_like(p, 6.0)) for m in modules.values() for p in m.parameters())
