"""Connecting to Ray: an existing cluster when one is reachable, an embedded local one otherwise."""

from __future__ import annotations

import os
from typing import Optional

NAMESPACE = "coati"


def connect(address: Optional[str] = None, num_cpus: Optional[float] = None, quiet: Optional[bool] = None) -> bool:
    """ray.init once. Returns True when this call started an embedded local Ray.

    `address` (or RAY_ADDRESS, as set by `ray job submit`) names a cluster; with neither, "auto"
    is tried and, when no cluster is running, a local Ray starts with its dashboard on
    127.0.0.1 only.
    """
    import ray

    if ray.is_initialized():
        return False
    if quiet is None:  # COATI_ACTOR_LOGS=1 streams every actor's output to the driver (debugging)
        quiet = os.environ.get("COATI_ACTOR_LOGS") != "1"
    runtime_env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace=NAMESPACE, runtime_env=runtime_env, log_to_driver=not quiet)
        return False
    try:
        ray.init(address="auto", namespace=NAMESPACE, runtime_env=runtime_env, log_to_driver=not quiet)
        return False
    except ConnectionError as e:
        # Only "no cluster here" falls back to an embedded Ray; a cluster that refuses us (e.g. a
        # missing auth token) must not be silently replaced by a private one.
        if "Could not find any running Ray instance" not in str(e):
            raise
    ray.init(namespace=NAMESPACE, num_cpus=num_cpus, include_dashboard=False, dashboard_host="127.0.0.1",
             runtime_env=runtime_env, log_to_driver=not quiet)
    return True


def available_resources() -> dict:
    import ray

    return ray.cluster_resources()
