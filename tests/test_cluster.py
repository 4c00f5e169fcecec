"""connect(): join a `ray start` cluster or RAY_ADDRESS, but never another process's embedded Ray."""

import subprocess
import sys
import time

import pytest

ray = pytest.importorskip("ray")


def test_does_not_join_another_process_embedded_ray(tmp_path, monkeypatch):
    from actors.cluster import connect, started_cluster_running

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if started_cluster_running():
        pytest.skip("a `ray start` cluster runs on this machine; joining it is the intended behaviour")
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import ray, time, pathlib\n"
        "ray.init(num_cpus=1, include_dashboard=False)\n"
        f"pathlib.Path({str(ready)!r}).write_text('up')\n"
        "time.sleep(120)\n")])
    try:
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.5)
        assert ready.exists(), "the other process did not start its Ray"
        assert connect(num_cpus=2) is True  # started its own embedded Ray
        assert ray.cluster_resources()["CPU"] == 2
    finally:
        if ray.is_initialized():
            ray.shutdown()
        holder.kill()
        holder.wait()
