"""What the job opens to the network: its groups meet through a Ray actor (no store port at all) and their
gloo connections listen on the interface Ray uses (loopback for a local run); nothing a foreign client could
reach on another interface. Ray's own servers are Ray's (README "On a shared cluster")."""

import socket

import pytest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def embedded_ray():
    from actors.cluster import connect

    assert connect(num_cpus=2) is True  # the job's own embedded Ray, as a local run starts it
    yield
    ray.shutdown()


def listening() -> set:
    import psutil

    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


def external_ip() -> str:
    """This machine's address on its outside interface (where a foreign client would come from)."""
    import psutil

    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    pytest.skip("no interface besides loopback to come from")


@ray.remote(num_cpus=0)
class Member:
    """One weight-sync member: forms the group, broadcasts, reports the sockets the group made it open."""

    def form(self, meeting, rank, size):
        from actors.broadcast_group import WeightBroadcastGroup

        before = listening()
        self.group = WeightBroadcastGroup(meeting, rank, size, "gloo", 60)
        import torch

        t = torch.full((8,), float(rank))
        self.group.broadcast(t)
        return {"value": t.tolist(), "opened": sorted(listening() - before)}


def test_an_embedded_runs_actors_bind_their_groups_to_loopback(embedded_ray):
    from actors.rendezvous import node_bind_ip

    assert ray.get(ray.remote(num_cpus=0)(node_bind_ip).remote()) == "127.0.0.1"


def test_a_weight_sync_group_opens_no_store_and_listens_on_loopback_only(embedded_ray):
    """The group meets through the rendezvous actor under its secret; the only sockets forming it opens are
    gloo's, on 127.0.0.1, which a client from the outside interface cannot reach."""
    from actors.rendezvous import new_rendezvous, new_secret

    meeting = (new_rendezvous(), new_secret())
    members = [Member.remote() for _ in range(3)]
    out = ray.get([m.form.remote(meeting, r, 3) for r, m in enumerate(members)])
    assert all(o["value"] == [0.0] * 8 for o in out)  # rank 0's tensor reached everyone
    opened = [sock for o in out for sock in o["opened"]]
    assert opened and all(ip == "127.0.0.1" for ip, _ in opened), opened
    outside = external_ip()
    for _, port in opened:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((outside, port)) != 0, f"port {port} answers on {outside}"
    keys = ray.get(meeting[0].count.remote(""))
    assert keys == ray.get(meeting[0].count.remote(meeting[1] + "/"))  # every key under the group's secret
    for m in members:
        ray.kill(m)


def test_the_rendezvous_actor_hands_out_each_add_once_under_concurrent_calls(embedded_ray):
    """The threaded actor itself (not only its class, tests/test_outside_services.py): calls in flight at once
    get each count once (torch numbers members by them), and one compare_set of many wins."""
    from actors.rendezvous import RendezvousStore, new_rendezvous, new_secret

    rendezvous, secret = new_rendezvous(), new_secret()
    try:
        values = ray.get([rendezvous.add.remote(f"{secret}/count", 1) for _ in range(2000)])
        assert sorted(values) == list(range(1, 2001))
        won = ray.get([rendezvous.compare_set.remote(f"{secret}/leader", b"", f"m{i}".encode()) for i in range(64)])
        assert len(set(won)) == 1
        assert RendezvousStore(rendezvous, secret).add("count", 1) == 2001  # the store torch sees, same key
    finally:
        ray.kill(rendezvous)


def _report_sockets(rank, world_size, store, before=None):
    """A trainer rank: join the group's world (ddp over gloo) through its store; the sockets that opened."""
    import torch.distributed as dist

    from coati_ray.config.schema import StrategyConfig
    from coati_ray.strategies import make_strategy

    before = listening()
    strategy = make_strategy(StrategyConfig(name="ddp"), rank, world_size, store=store)
    strategy.setup_distributed()
    total = strategy.all_reduce_sum([float(rank + 1)])[0]
    opened = sorted(listening() - before)
    dist.destroy_process_group()
    return {"total": total, "opened": opened, "tcpstore": type(store).__name__}


def test_a_trainer_groups_world_meets_through_the_rendezvous_and_listens_on_loopback(embedded_ray):
    from actors.group import TrainerGroup

    with TrainerGroup("net-trainer", 2, num_cpus_per_rank=0.5, torch_threads=1) as group:
        out = group.run(_report_sockets)
    assert [o["total"] for o in out] == [3.0, 3.0] and {o["tcpstore"] for o in out} == {"RendezvousStore"}
    opened = [sock for o in out for sock in o["opened"]]
    assert opened and all(ip == "127.0.0.1" for ip, _ in opened), opened


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def test_every_socket_of_the_embedded_run_listens_on_loopback_only(embedded_ray):
    """Ray's own servers too (GCS, raylet, object manager, agents, each worker's gRPC server), after the
    tests above ran the job's groups in it: every process this run started, none listening elsewhere, and
    no port answers on the outside interface."""
    import psutil

    @ray.remote(num_cpus=0)
    class Idle:
        def pid(self):
            return __import__("os").getpid()

    idle = Idle.remote()
    worker = ray.get(idle.pid.remote())
    me = psutil.Process()
    processes = [me] + me.children(recursive=True)
    assert worker in {p.pid for p in processes}  # the workers are the run's own descendants
    sockets, names = set(), set()
    for p in processes:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    sockets.add((p.name(), c.laddr.ip, c.laddr.port))
                    names.add(p.name())
        except psutil.NoSuchProcess:
            continue
    assert {"gcs_server", "raylet"} <= names, names
    assert all(ip in LOOPBACK for _, ip, _ in sockets), sorted(s for s in sockets if s[1] not in LOOPBACK)
    outside = external_ip()
    for name, _, port in sockets:
        with socket.socket() as s:
            s.settimeout(1)
            assert s.connect_ex((outside, port)) != 0, f"{name} port {port} answers on {outside}"
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    ray.kill(idle)
