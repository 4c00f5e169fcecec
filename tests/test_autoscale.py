"""maker.autoscale: the rule without Ray (grow when the trainers wait, shrink when the buffer holds the next step,
no flapping), then the pool on Ray's own autoscaling test cluster (its fake multi-node provider): makers grow from
`min` onto a node the autoscaler launches for them, and idle nodes are given back."""

import os
import time

import pytest

from coati_ray.autoscale import Autoscaler, Rule, StepSignal, decide
from coati_ray.errors import ConfigError

RULE = Rule(min=1, max=4, window=3, idle_above=0.2, step_samples=8, useful=4)
WAITING = StepSignal(idle_fraction=0.6, held_samples=0)   # trainers waited, nothing made ahead
AHEAD = StepSignal(idle_fraction=0.0, held_samples=8)     # the whole next step already in the buffer
BETWEEN = StepSignal(idle_fraction=0.1, held_samples=4)


def test_grow_only_after_a_whole_window_of_waiting_trainers():
    assert decide([WAITING, WAITING], 1, RULE) == 1  # fewer steps than the window decide nothing
    assert decide([WAITING] * 3, 1, RULE) == 2
    assert decide([WAITING, BETWEEN, WAITING], 1, RULE) == 1  # one step in the band breaks the window
    assert decide([StepSignal(0.6, 1)] * 3, 1, RULE) == 1  # something was made ahead: not starved


def test_shrink_only_after_a_whole_window_of_a_full_next_step_and_never_past_the_bounds():
    assert decide([AHEAD] * 3, 3, RULE) == 2
    assert decide([AHEAD] * 3, 1, RULE) == 1  # min
    assert decide([WAITING] * 3, 4, RULE) == 4  # max
    small = Rule(min=1, max=8, window=3, idle_above=0.2, step_samples=8, useful=2)  # 2 batches in flight at most
    assert decide([WAITING] * 3, 2, small) == 2


def test_a_reversal_doubles_the_window_so_the_pool_settles_instead_of_flapping():
    scaler = Autoscaler(RULE)
    makers = 1
    for _ in range(3):
        makers = scaler.observe(WAITING, makers)
    assert makers == 2 and scaler.window == 3  # the first change: the window starts again
    for _ in range(3):
        makers = scaler.observe(AHEAD, makers)
    assert makers == 1 and scaler.window == 6  # a reversal: twice the window before the next change
    for _ in range(5):
        makers = scaler.observe(WAITING, makers)
    assert makers == 1  # five waiting steps are not enough now
    makers = scaler.observe(WAITING, makers)
    assert makers == 2 and scaler.window == 12 and scaler.changes == [(1, 2), (2, 1), (1, 2)]
    scaler.unplaced()  # the maker asked for was never placed: that grow did not happen, and it counts as a reversal
    assert scaler.window == 24 and scaler.signals == [] and scaler.changes == [(1, 2), (2, 1)]
    for _ in range(30):
        scaler.unplaced()
    assert scaler.window == RULE.window * 8  # bounded
    scaler.observe(WAITING, 1)
    scaler.restarted()  # a trainer restart: the signals and the window start afresh
    assert scaler.signals == [] and scaler.window == RULE.window and scaler.last == 0


def test_bad_autoscale_settings_are_one_line_before_anything_starts():
    from coati_ray.config import load_config
    from coati_ray.config.rl import RLConfig
    from tests.conftest import REPO

    base = os.path.join(REPO, "configs", "ppo_tiny.yaml")
    for override, needle in ((["maker.autoscale={min: 3, max: 2}"], "1 <= min <= max"),
                             (["maker.autoscale={min: 2, max: 4}", "maker.num_makers=1"], "outside maker.autoscale"),
                             (["maker.autoscale={min: 1, max: 4, window: 0}"], "maker.autoscale.window")):
        cfg = load_config(RLConfig, base, override)
        with pytest.raises(ConfigError) as e:
            cfg.maker.validate()
        assert needle in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- on Ray's autoscaling test cluster

# The fake provider's cluster config (Ray's autoscaler/_private/fake_multi_node/example.yaml, which the Ray 2.60
# wheel leaves out although ray.cluster_utils.AutoscalingCluster reads it): node types are filled in below.
FAKE_MULTINODE = {
    "cluster_name": "fake_multinode", "max_workers": 8,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "available_node_types": {}, "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0,
    "idle_timeout_minutes": 0.1, "docker": {}, "initialization_commands": [], "setup_commands": [],
    "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
    "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
    "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": []}


def autoscaling_cluster(head_resources: dict, worker_node_types: dict, **config):
    """ray.cluster_utils.AutoscalingCluster on the fake provider's config above."""
    import copy

    from ray.cluster_utils import AutoscalingCluster

    class Cluster(AutoscalingCluster):
        def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
            out = copy.deepcopy(FAKE_MULTINODE)
            out["available_node_types"] = dict(worker_node_types)
            out["available_node_types"]["ray.head.default"] = {"resources": head_resources, "node_config": {},
                                                               "max_workers": 0}
            out.update(config_kwargs)
            return out

    return Cluster(head_resources=head_resources, worker_node_types=worker_node_types, **config)


def _ppo_overrides(tiny_llama, reward_dir) -> list[str]:
    from tests.conftest import data_path

    return [f"actor.path={tiny_llama}", f"critic.path={tiny_llama}", f"reward_model.path={reward_dir}",
            f"data.prompt_path={data_path('prompts', 'train.jsonl')}", "buffer.timeout_s=300",
            "actor_trainer.resources.num_cpus_per_rank=0.5", "critic_trainer.resources.num_cpus_per_rank=0.5",
            "maker.num_cpus=1", "maker.resources={maker_slot: 1}", "maker.start_timeout_s=240",
            "ray.dashboard=false"]


@pytest.mark.slow
def test_makers_shrink_when_ahead_and_grow_onto_a_launched_node_while_trainers_wait_idle_nodes_go_back(
        tiny_llama, reward_dir, tmp_path, monkeypatch):
    """Makers fit only on worker nodes (a `maker_slot` resource the head has not), which the fake provider
    launches on demand. First async mode, two makers (a node launched for each) making short answers while the
    trainers take long updates: the buffer holds the whole next step, the pool shrinks to one maker, and the
    autoscaler gives the idle node back while the job still runs (its driver waiting in the step callback). Then sync mode, where the trainers wait for every
    batch: the pool grows from 1 to 2, the second maker on a node launched for it. Once the job's makers are gone,
    the autoscaler gives their idle nodes back."""
    import sys

    import ray

    from actors.driver import RLJob
    from coati_ray.config import load_config
    from coati_ray.config.rl import RLConfig
    from tests.conftest import REPO

    # the cluster is started with the `ray` command of this environment (make runs pytest without the venv on PATH)
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    cluster = autoscaling_cluster(head_resources={"CPU": 2},
                                 worker_node_types={"maker_node": {"resources": {"CPU": 1, "maker_slot": 1},
                                                                   "node_config": {}, "min_workers": 0,
                                                                   "max_workers": 2}},
                                 idle_timeout_minutes=0.2)
    cluster.start()
    try:
        ray.init("auto", namespace="coati", log_to_driver=False)

        def maker_nodes() -> int:
            return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("maker_slot"))

        base = os.path.join(REPO, "configs", "ppo_tiny.yaml")
        # Async, two makers and short answers against a long update: the buffer holds the whole next step at the
        # end of a step, so the pool shrinks to one, and the node of the maker it let go goes back
        shrink = load_config(RLConfig, base, _ppo_overrides(tiny_llama, reward_dir) + [
            "maker.num_makers=2", "maker.autoscale={min: 1, max: 2, window: 1}", "algorithm.mode=async",
            "algorithm.max_staleness=1", "algorithm.max_steps=5", "algorithm.rollout_batch_size=8",
            "algorithm.train_batch_size=8", "maker.batch_size=4", "generation.max_new_tokens=4",
            "algorithm.ppo_epochs=6", "algorithm.micro_batch_size=1"],
            output_dir=str(tmp_path / "shrink"))
        shrink.validate()
        seen, released = [], []

        def on_shrink_step(job, step, m):
            seen.append((job.num_makers, maker_nodes(), m["buffer/held_samples"]))
            if job.num_makers == 1 and not released:  # the job holds one maker now; the other's node goes back
                deadline = time.monotonic() + 120
                while maker_nodes() > 1 and time.monotonic() < deadline:
                    time.sleep(2)
                released.append(maker_nodes())

        summary = RLJob(shrink).run(on_step=on_shrink_step)
        assert summary["maker_autoscale_changes"][0] == [2, 1], (summary["maker_autoscale_changes"], seen)
        assert seen[0][:2] == (2, 2) and released == [1], (seen, released)
        deadline = time.monotonic() + 150
        while maker_nodes() > 0 and time.monotonic() < deadline:
            time.sleep(2)
        assert maker_nodes() == 0

        grow = load_config(RLConfig, base, _ppo_overrides(tiny_llama, reward_dir) + [
            "maker.num_makers=1", "maker.autoscale={min: 1, max: 2, window: 1}", "algorithm.max_steps=3",
            "algorithm.rollout_batch_size=16", "algorithm.train_batch_size=16", "maker.batch_size=4",
            "generation.max_new_tokens=16"], output_dir=str(tmp_path / "grow"))
        grow.validate()
        seen = []
        summary = RLJob(grow).run(on_step=lambda job, step, m: seen.append((job.num_makers, maker_nodes())))
        assert summary["maker_autoscale_changes"][0] == [1, 2], summary["maker_autoscale_changes"]
        assert max(makers for makers, _ in seen) == 2 and max(nodes for _, nodes in seen) == 2, seen

        # the job's makers are gone: the autoscaler gives their idle nodes back (idle_timeout_minutes)
        deadline = time.monotonic() + 150
        while maker_nodes() > 0 and time.monotonic() < deadline:
            time.sleep(2)
        assert maker_nodes() == 0
    finally:
        ray.shutdown()
        cluster.shutdown()  # `ray stop`: it also removes the address file later jobs would otherwise join
        assert not os.path.exists(os.path.join(os.environ.get("RAY_TMPDIR", "/tmp"), "ray", "ray_current_cluster"))
