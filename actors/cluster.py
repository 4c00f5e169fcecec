"""Connecting to Ray: an existing cluster when one is reachable, an embedded local one otherwise."""

from __future__ import annotations

import os
from typing import Optional

NAMESPACE = "coati"


def connect(address: Optional[str] = None, num_cpus: Optional[float] = None, quiet: Optional[bool] = None) -> bool:
    """ray.init once. Returns True when this call started an embedded local Ray.

    `address` (or RAY_ADDRESS, as set by `ray job submit`) names a cluster; with neither, a cluster
    started by `ray start` on this machine is joined, else a local Ray starts with its dashboard
    bound to 127.0.0.1 only.
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
        ray.init(address=address, namespace=NAMESPACE, runtime_env=runtime_env, log_to_driver=not quiet)
        return False
    ray.init(namespace=NAMESPACE, num_cpus=num_cpus, include_dashboard=False, dashboard_host="127.0.0.1",
             runtime_env=runtime_env, log_to_driver=not quiet)
    return True


def started_cluster_running() -> bool:
    """True when `ray start` runs a cluster on this machine (it leaves its address file in Ray's temp dir).

    address="auto" alone would also find another process's *embedded* Ray and silently share it,
    dying when that process exits; an embedded Ray writes no address file, so it is not joined.
    """
    temp = os.environ.get("RAY_TMPDIR", "/tmp")
    return os.path.isfile(os.path.join(temp, "ray", "ray_current_cluster"))

