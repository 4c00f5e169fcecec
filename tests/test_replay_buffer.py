"""The replay-buffer actor on its own: backpressure, timeouts, per-group sharded delivery by step window,
staleness accounting, books."""

import time

import pytest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, namespace="coati-buffer-test", log_to_driver=False)
    yield
    ray.shutdown()


def make(capacity=8, groups=None, max_staleness=None, timeout_s=30.0, per_step=1, first_step=0):
    from actors.replay_buffer import ReplayBuffer

    return ReplayBuffer.remote(capacity, groups or {"actor": 2, "critic": 1}, per_step, first_step, max_staleness,
                               timeout_s)


def put(buf, n=4, version=0, batch_id=0, timeout_s=None):
    return buf.put.remote([ray.put({"batch": batch_id})], n, version, 0, batch_id, timeout_s)


def test_each_item_once_per_group_sharded_over_ranks(local_ray):
    buf = make()
    for i in range(2):
        ray.get(put(buf, batch_id=i))
    got = {(g, r): [ray.get(buf.get.remote(g, r)) for _ in range(2)] for g, n in (("actor", 2), ("critic", 1))
           for r in range(n)}
    for (g, r), items in got.items():
        assert [ray.get(it["ref"][0])["batch"] for it in items] == [0, 1]   # same order on every rank
        assert all(it["rank"] == r and it["world_size"] == (2 if g == "actor" else 1) for it in items)
    s = ray.get(buf.stats.remote())
    assert s["produced"] == 2 and s["delivered"] == {"actor": 2, "critic": 2} and s["held_items"] == 0


def test_producer_waits_when_full_and_resumes_when_drained(local_ray):
    buf = make(capacity=4, groups={"actor": 1, "critic": 1})
    ray.get(put(buf, batch_id=0))
    ray.get(buf.get.remote("actor", 0))  # the critic has not taken batch 0 yet: it is still held
    ray.get(put(buf, batch_id=1))  # over capacity, but the actor needs it now: never held back (no deadlock)
    blocked = put(buf, batch_id=2)  # a later step's batch waits for space
    ready, _ = ray.wait([blocked], timeout=1.0)
    assert not ready  # real backpressure
    ray.get(buf.get.remote("critic", 0))  # batch 0 leaves; batch 1 (4 samples) still fills the buffer
    assert not ray.wait([blocked], timeout=0.5)[0]
    ray.get(buf.get.remote("actor", 0))  # the actor is on batch 2's step now
    assert ray.get(blocked, timeout=10) == 2
    assert ray.get(buf.stats.remote())["peak_samples"] == 8


def test_timeouts_raise_clear_errors(local_ray):
    from actors.replay_buffer import BufferTimeout

    buf = make(capacity=4, groups={"actor": 1}, timeout_s=0.5)
    t = time.time()
    with pytest.raises(ray.exceptions.RayTaskError) as e:
        ray.get(buf.get.remote("actor", 0))
    assert isinstance(e.value.cause, BufferTimeout) and "makers are not producing" in str(e.value.cause)
    assert time.time() - t < 10
    ray.get(put(buf, batch_id=0))
    with pytest.raises(ray.exceptions.RayTaskError) as e:
        ray.get(put(buf, batch_id=2))  # not needed by the step the trainers are on: waits for space
    assert isinstance(e.value.cause, BufferTimeout) and "trainers are not consuming" in str(e.value.cause)


def test_a_regenerated_batch_is_refused_not_delivered_twice(local_ray):
    """A batch made again after its maker died must not reach a trainer twice."""
    buf = make(capacity=8, groups={"actor": 1}, first_step=7)
    first = ray.get(put(buf, batch_id=7))
    assert first >= 0 and ray.get(put(buf, batch_id=7)) == -1
    ray.get(buf.get.remote("actor", 0))
    assert ray.get(put(buf, batch_id=7)) == -1  # still refused after the original was consumed
    assert ray.get(put(buf, batch_id=8)) >= 0
    stats = ray.get(buf.close.remote())
    assert stats["produced"] == 2 and stats["duplicates_refused"] == 2
    assert stats["produced"] == stats["delivered"]["actor"] + stats["dropped"]


def test_each_step_gets_exactly_its_tickets_in_arrival_order(local_ray):
    """Step s trains on batch ids [s*k, (s+1)*k): a batch of the next step that lands first waits, and a
    slow batch of the current step does not hold up the ones that have landed."""
    buf = make(capacity=64, groups={"actor": 1, "critic": 1}, per_step=2, max_staleness=1)
    for batch_id, version in ((2, 0), (1, 0), (3, 1)):  # one at a time: an async actor does not promise call order
        ray.get(put(buf, version=version, batch_id=batch_id))
    first = ray.get(buf.get.remote("actor", 0))
    assert first["batch_id"] == 1  # batch 2 landed earlier but belongs to step 1
    pending = buf.get.remote("actor", 0)
    assert not ray.wait([pending], timeout=0.5)[0]  # batch 0 is still being made: the step waits for it
    ray.get(put(buf, version=0, batch_id=0))
    assert ray.get(pending, timeout=10)["batch_id"] == 0
    ray.get(buf.set_version.remote(1))
    step1 = [ray.get(buf.get.remote("actor", 0)) for _ in range(2)]
    assert [g["batch_id"] for g in step1] == [2, 3] and [g["staleness"] for g in step1] == [1, 0]
    for _ in range(4):
        ray.get(buf.get.remote("critic", 0))
    acc = ray.get(buf.close.remote())
    assert acc["delivered"] == {"actor": 4, "critic": 4} and acc["dropped"] == 0 and acc["over_staleness"] == 0
    assert acc["max_staleness_delivered"] == {"actor": 1, "critic": 1} and acc["staleness_counts"] == {"0": 4, "1": 4}
    for group in ("actor", "critic"):
        assert acc["produced"] == acc["delivered"][group] + acc["dropped"]


def test_unknown_consumer_rejected(local_ray):
    buf = make()
    with pytest.raises(ray.exceptions.RayTaskError, match="unknown consumer"):
        ray.get(buf.get.remote("actor", 5))


def test_ranks_waiting_together_all_get_the_item(local_ray):
    # Regression: rank 0 assigning the item used to leave rank 1 asleep (it waited only for a new,
    # unassigned item), which deadlocked a ddp group in its first collective.
    buf = make(capacity=16, groups={"actor": 2, "critic": 1}, timeout_s=20)
    for i in range(3):
        waiting = [buf.get.remote("actor", r) for r in (0, 1)] + [buf.get.remote("critic", 0)]
        time.sleep(0.3)
        ray.get(put(buf, batch_id=i))
        got = ray.get(waiting, timeout=10)
        assert len({g["item_id"] for g in got}) == 1
    assert ray.get(buf.stats.remote())["delivered"] == {"actor": 3, "critic": 3}


def test_an_experience_lost_with_its_node_is_refilled_by_its_remake_and_reaches_each_rank_once(local_ray):
    """Groups actor (2 ranks) and critic (1). Actor rank 0 fetched batch 0 before its node went; actor rank 1
    and the critic could not and report it lost. The driver learns the batch id, the remake's put refills the
    same item: rank 1 and the critic get the remake, rank 0 nothing twice, and the books balance."""
    buf = make(groups={"actor": 2, "critic": 1}, per_step=2)
    lost_ref = buf.wait_lost.remote()
    for i in range(2):
        ray.get(put(buf, batch_id=i))
    first = {(g, r): ray.get(buf.get.remote(g, r)) for g, r in (("actor", 0), ("actor", 1), ("critic", 0))}
    assert {it["batch_id"] for it in first.values()} == {0}
    ray.get(buf.lost.remote("actor", 1, first[("actor", 1)]["item_id"]))
    ray.get(buf.lost.remote("critic", 0, first[("critic", 0)]["item_id"]))  # the last taker: it was let go
    assert ray.get(lost_ref, timeout=10) == [0]  # reported once, however many ranks saw it
    waiting = buf.get.remote("actor", 1)
    assert not ray.wait([waiting], timeout=0.5)[0]  # nothing to give until the remake lands
    remade = buf.put.remote([ray.put({"batch": 0, "remade": True})], 4, 1, 1, 0)
    assert ray.get(remade) == first[("actor", 1)]["item_id"]  # the same item, refilled
    again = ray.get(waiting, timeout=10)
    assert ray.get(again["ref"][0]) == {"batch": 0, "remade": True} and again["version"] == 1
    assert ray.get(ray.get(buf.get.remote("critic", 0))["ref"][0]) == {"batch": 0, "remade": True}
    rest = [ray.get(buf.get.remote(g, r))["batch_id"] for g, r in (("actor", 0), ("actor", 1), ("critic", 0))]
    assert rest == [1, 1, 1]  # each rank's next item is batch 1: batch 0 reached nobody twice
    s = ray.get(buf.stats.remote())
    assert s["lost"] == 1 and s["remade"] == 1 and s["awaiting_remake"] == 0 and s["duplicates_refused"] == 0
    assert s["produced"] == 2 and s["delivered"] == {"actor": 2, "critic": 2} and s["held_items"] == 0
    ray.get(buf.close.remote())
    assert ray.get(buf.wait_lost.remote(), timeout=10) == []  # a closed buffer lets the driver's wait go
