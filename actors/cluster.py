"""Connecting to Ray: an existing cluster when one is reachable, an embedded local one otherwise; and whether the
connected cluster can host a job (its resources, its output directory on every node)."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Callable, Optional

NAMESPACE = "coati"
BIND_IP_ENV = "COATI_BIND_IP"  # where the job's own groups listen; set for an embedded (one-machine) Ray
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's one-machine mode, all on loopback


def connect(address: Optional[str] = None, num_cpus: Optional[float] = None, quiet: Optional[bool] = None,
            dashboard: bool = False, dashboard_port: int = 8265, info: Optional[Callable[[str], None]] = None) -> bool:
    """ray.init once. Returns True when this call started an embedded local Ray.

    `address` (or RAY_ADDRESS, as set by `ray job submit`) names a cluster; with neither, a cluster
    started by `ray start` on this machine is joined, else a local Ray starts, bound to 127.0.0.1,
    with its dashboard on the first free port from `dashboard_port` when `dashboard`. `info` gets the
    dashboard's address (and how to log in) either way.
    """
    import ray

    if ray.is_initialized():
        return False
    if quiet is None:  # COATI_ACTOR_LOGS=1 streams every actor's output to the driver (debugging)
        quiet = os.environ.get("COATI_ACTOR_LOGS") != "1"
    runtime_env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}}
    address = address or os.environ.get("RAY_ADDRESS")
    if address is None and started_cluster_running():
        address = "auto"
    if address:
        context = ray.init(address=address, namespace=NAMESPACE, runtime_env=runtime_env, log_to_driver=not quiet)
        _announce(context, info)
        return False
    port = free_port(dashboard_port) if dashboard else None
    # One machine: every group this job forms listens on loopback (actors/rendezvous.py node_bind_ip), and so
    # does Ray itself (single_machine_ray).
    runtime_env["env_vars"][BIND_IP_ENV] = "127.0.0.1"
    with single_machine_ray():
        context = ray.init(namespace=NAMESPACE, num_cpus=num_cpus, include_dashboard=dashboard,
                           dashboard_host="127.0.0.1", runtime_env=runtime_env, log_to_driver=not quiet,
                           _node_ip_address="127.0.0.1", **({"dashboard_port": port} if port else {}))
    if dashboard:
        _announce(context, info)
    return True


@contextlib.contextmanager
def single_machine_ray():
    """Ray started inside this block keeps every server on loopback: GCS, raylet, object manager, agents and
    each worker's gRPC server bind to the node's address, and on Linux Ray turns a 127.0.0.1 node address into
    the machine's outside one unless in the single-machine mode it uses on macOS and Windows
    (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0). The processes Ray starts inherit the variable; this process's copy,
    read when Ray was imported, is set for the block and put back after it, so a later multi-node Ray in the
    same process (tests' cluster_utils) is unaffected."""
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_ENV], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = saved_env


def free_port(first: int, tries: int = 100) -> int:
    """The first port from `first` nothing listens on at 127.0.0.1."""
    for port in range(first, first + tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port in {first}..{first + tries - 1} for the Ray dashboard")


def _announce(context, info: Optional[Callable[[str], None]]) -> None:
    url = getattr(context, "dashboard_url", None)
    if not url:
        return
    url = url if url.startswith("http") else f"http://{url}"
    token = " (it asks for the cluster's token: paste the output of `ray get-auth-token`)" \
        if os.environ.get("RAY_AUTH_MODE", "token") != "disabled" else ""
    (info or print)(f"Ray dashboard: {url}{token}")


def started_cluster_running() -> bool:
    """True when `ray start` runs a cluster on this machine (it leaves its address file in Ray's temp dir).

    address="auto" alone would also find another process's *embedded* Ray and silently share it,
    dying when that process exits; an embedded Ray writes no address file, so it is not joined.
    """
    temp = os.environ.get("RAY_TMPDIR", "/tmp")
    return os.path.isfile(os.path.join(temp, "ray", "ray_current_cluster"))



def check_output_on_every_node(output_dir: str, timeout_s: float = 60.0) -> None:
    """Before any actor or placement group: a zero-CPU task on every other alive node writes a probe into
    `output_dir` and the driver reads it back. A local path that another node does not share, or a URI that
    another node cannot write (no credentials there, no route to the endpoint), ends the run here in one line
    naming the node and the fix. One node: nothing to check (the config's checks wrote there already)."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from coati_ray.errors import ConfigError
    from coati_ray.storage.uri import absolute, redact
    from coati_ray.utils.shared_storage import missing_probes, unshared_message

    here = ray.get_runtime_context().get_node_id()
    others = [n for n in ray.nodes() if n.get("Alive") and n["NodeID"] != here]
    if not others:
        return
    output_dir, token = absolute(output_dir), uuid.uuid4().hex
    probe = ray.remote(num_cpus=0)(_probe_task)
    # named by node id: several nodes may share an address (one host's raylets, cluster_utils)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
        output_dir, f"node-{n['NodeManagerAddress']}-{n['NodeID']}", token) for n in others]
    try:
        reports = ray.get(refs, timeout=timeout_s)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as e:
        raise ConfigError(f"run error: the other nodes could not be asked whether they see output_dir "
                          f"'{redact(output_dir)}' within {timeout_s:.0f}s ({type(e).__name__}); check that every "
                          "node is up (`ray status`) and start again") from None
    missing = missing_probes(reports, token)
    if missing:
        raise ConfigError(unshared_message(output_dir, missing, before_start=True))


def _probe_task(output_dir: str, name: str, token: str) -> dict:
    from coati_ray.utils.shared_storage import write_probe

    return write_probe(output_dir, name, token)


def check_shared_output(handles: dict, output_dir: str, timeout_s: float = 60.0) -> None:
    """Every actor in `handles` ({name: handle}) writes a probe file into `output_dir` on its own node and the
    driver reads each back: a node that does not see the driver's directory ends the run here, in one
    line, before any step is trained (its checkpoints would otherwise never be completed)."""
    import uuid

    import ray

    from coati_ray.errors import WorkerLost
    from coati_ray.utils.shared_storage import missing_probes, unshared_message

    from coati_ray.storage.uri import absolute

    output_dir, token = absolute(output_dir), uuid.uuid4().hex
    refs = [handle.__ray_call__.remote(_write_probe, output_dir, name, token) for name, handle in handles.items()]
    missing = missing_probes(ray.get(refs, timeout=timeout_s), token)
    if missing:
        raise WorkerLost(unshared_message(output_dir, missing))


def _write_probe(_worker, output_dir: str, name: str, token: str) -> dict:
    from coati_ray.utils.shared_storage import write_probe

    return write_probe(output_dir, name, token)


def ppo_resources(cfg) -> tuple[float, float]:
    """(CPUs, GPUs) a PPO job reserves: its makers and its trainer groups."""
    makers = cfg.maker.num_makers if cfg.placement_spec.makers else 0
    cpus, gpus = makers * cfg.maker.num_cpus, makers * cfg.maker.num_gpus
    for group in (getattr(cfg, f"{role}_trainer") for role in cfg.roles):
        cpus += group.resources.num_ranks * group.resources.num_cpus_per_rank
        gpus += group.resources.num_ranks * group.resources.num_gpus_per_rank
    return cpus, gpus


def check_cluster_fits(cfg, extra: str = "") -> None:
    """Refuse a PPO config the connected cluster cannot host, before any actor starts. Under maker.autoscale the
    makers are left out: on a cluster with Ray's autoscaler a maker that does not fit yet asks for a node (one
    never placed ends the run after maker.start_timeout_s, in one line)."""
    need_cpu, need_gpu = ppo_resources(cfg)
    import ray

    from coati_ray.errors import ConfigError

    have = ray.cluster_resources()
    autoscaled = cfg.maker.autoscale is not None and cfg.placement_spec.makers
    if autoscaled:
        need_cpu -= cfg.maker.num_makers * cfg.maker.num_cpus
        need_gpu -= cfg.maker.num_makers * cfg.maker.num_gpus
    for name, amount in (cfg.maker.resources if cfg.placement_spec.makers and not autoscaled else {}).items():
        need = cfg.maker.num_makers * amount
        if need > have.get(name, 0) + 1e-9:
            raise ConfigError(f"config error: maker.resources: {cfg.maker.num_makers} maker(s) need {need:g} "
                              f"{name} but the Ray cluster has {have.get(name, 0):g}; start the nodes meant for "
                              f"makers with --resources='{{\"{name}\": N}}', or lower maker.num_makers")
    if need_cpu > have.get("CPU", 0) + 1e-9 or need_gpu > have.get("GPU", 0) + 1e-9:
        raise ConfigError(f"config error: the job asks for {need_cpu:g} CPUs and {need_gpu:g} GPUs but the Ray "
                          f"cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs; lower "
                          f"{extra}maker.num_makers / num_cpus / num_gpus or the group sizes")
