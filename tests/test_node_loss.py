"""A whole node lost mid-run, on a multi-node Ray (`ray.cluster_utils.Cluster`: a head and two maker nodes,
each its own raylet and object store). The maker on the lost node is restarted on the other, the
experience that lived in the lost object store is made again, and the run finishes with every batch
trained on once and the books balanced."""

import os
import time

import pytest

from tests.ppo_helpers import assert_books_balance, assert_no_leaks, ppo_config
from tests.test_faults import SMALL, consumed_batch_ids

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    head = {"num_cpus": 2, "include_dashboard": False, "_system_config": {
        # a dead node is declared within ~2 s, not Ray's default ~30 s
        "health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 4,
        # experiences go to the maker node's object store even when tiny, as a real model's always do
        "max_direct_call_object_size": 4096}}
    c = Cluster(initialize_head=True, connect=False, head_node_args=head)
    for _ in range(2):  # the trainers and the buffer stay on the head: only these nodes offer `inference`
        c.add_node(num_cpus=1, resources={"inference": 1})
    ray.init(address=c.address, namespace="coati", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}})
    yield c
    ray.shutdown()
    c.shutdown()


def node_of(handle) -> str:
    return ray.get(handle.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))


@pytest.mark.slow
def test_a_node_lost_with_experience_in_its_object_store_is_made_again_and_trained_on_once(cluster, tiny_llama,
                                                                                            reward_dir, tmp_path):
    """Async, one maker on a node of its own. Between two steps, while the buffer holds experience that
    maker made (in its node's object store) and no trainer has fetched, the node is killed. The trainers
    cannot fetch that experience; the driver has it made again by the maker Ray restarts on the spare node."""
    from actors.driver import RLJob

    # 3 PPO epochs make a step's update outlast a batch's generation, so the maker is ahead (staleness 1) and
    # the buffer holds its next batches when a step ends, however loaded the machine is
    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / "run", *SMALL, "algorithm.mode=async", "algorithm.max_staleness=1",
                     "algorithm.ppo_epochs=3", "algorithm.max_steps=8", "maker.num_makers=1", "maker.num_cpus=1",
                     "maker.resources={inference: 1}")
    rows, removed = [], []

    def on_step(job, step, m):
        rows.append(m)
        if removed or step < 2 or ray.get(job.buffer.stats.remote())["held_items"] == 0:
            return
        where = node_of(job.makers[0])
        assert where != ray.get_runtime_context().get_node_id()  # not on the head, with the driver and buffer
        cluster.remove_node(next(n for n in cluster.worker_nodes if n.node_id == where), allow_graceful=False)
        removed.append((step, where, time.monotonic()))

    summary = RLJob(cfg).run(on_step=on_step)
    assert removed, "the buffer never held unfetched experience between steps: nothing was lost"
    assert summary["steps"] == 8
    assert summary["batches_lost_with_a_node"] >= 1 and summary["maker_restarts"] == 1, summary
    acc = summary["buffer"]
    assert acc["lost"] == acc["remade"] == summary["batches_lost_with_a_node"] and acc["awaiting_remake"] == 0
    assert_books_balance(acc)
    for role in ("actor", "critic"):
        ids = consumed_batch_ids(rows, role)
        assert sorted(ids) == list(range(len(ids))) and len(ids) == 8 * len(rows[0]["consumed"][role]["batch_ids"])
    assert_no_leaks()


@ray.remote(num_cpus=0)
class Rank:
    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()


def test_every_node_writes_a_probe_the_driver_reads_back_or_the_run_stops_in_one_line(cluster, tmp_path):
    """One actor on each node of the cluster writes into the run directory; the driver reads every probe back
    and removes it. A directory a node cannot write stops the run in one line naming the rank and its host."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from actors.cluster import check_shared_output
    from coati_ray.errors import WorkerLost

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    ranks = {f"rank-{i}": Rank.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
             for i, node in enumerate(nodes)}
    assert sorted(ray.get([r.node.remote() for r in ranks.values()])) == sorted(nodes) and len(nodes) >= 2
    check_shared_output(ranks, str(tmp_path / "run"))
    assert os.listdir(tmp_path / "run" / ".storage-probe") == []  # read back and removed
    (tmp_path / "a_file").write_text("")
    with pytest.raises(WorkerLost) as e:
        check_shared_output(ranks, str(tmp_path / "a_file" / "run"))
    msg = str(e.value)
    assert "\n" not in msg and "is not shared: rank-0 on" in msg and "NotADirectoryError" in msg
    assert "storage every node mounts" in msg
    for r in ranks.values():
        ray.kill(r)
