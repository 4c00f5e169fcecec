"""Driver loss under `ray job submit`: `ray job stop` on a running PPO job leaves no actor and no
placement group behind on the cluster. Runs a real `ray start --head` cluster with its own ports and
temp dir, submits `launch.ppo` from the repo as the README does, and inspects the cluster's state."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, data_path

ray = pytest.importorskip("ray")
BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, env: dict, check: bool = True, timeout: float = 120) -> str:
    out = subprocess.run([os.path.join(BIN, "ray"), *args], env=env, capture_output=True, text=True,
                         timeout=timeout, cwd=REPO)
    if check and out.returncode != 0:
        raise AssertionError(f"ray {' '.join(args)} failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
    return out.stdout


@pytest.fixture(scope="module")
def head_node(tmp_path_factory):
    if ray.is_initialized():
        ray.shutdown()
    temp = f"/tmp/coati-jobstop-{os.getpid()}"  # short: Ray's unix socket paths have a length limit
    dash = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
    env.pop("RAY_ADDRESS", None)
    cli("start", "--head", f"--port={free_port()}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
        "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats", env=env, timeout=180)
    env["RAY_ADDRESS"] = f"http://127.0.0.1:{dash}"
    try:
        yield env
    finally:
        cli("stop", "--force", env=env, check=False)
        shutil.rmtree(temp, ignore_errors=True)


def cluster_state(env: dict, kind: str) -> list[dict]:
    return json.loads(cli("list", kind, "--format=json", "--limit=1000", "--detail", env=env))


@pytest.mark.slow
def test_ray_job_stop_releases_every_actor_and_placement_group(head_node, tiny_llama, reward_dir, tmp_path):
    env = head_node
    out_dir = tmp_path / "job"
    submitted = cli("job", "submit", "--no-wait", "--working-dir", ".", "--", "python", "-m", "launch.ppo",
                    "--config", "configs/ppo_tiny.yaml", "--output-dir", str(out_dir),
                    f"actor.path={tiny_llama}", f"critic.path={tiny_llama}", f"reward_model.path={reward_dir}",
                    f"data.prompt_path={data_path('prompts', 'train.jsonl')}", "algorithm.max_steps=100000",
                    "generation.max_new_tokens=6", env=env)
    job_id = re.search(r"raysubmit_[A-Za-z0-9]+", submitted).group(0)

    deadline = time.monotonic() + 240  # the job is training once a step is in its metrics
    while not (out_dir / "metrics.jsonl").is_file() and time.monotonic() < deadline:
        time.sleep(2)
    status = cli("job", "status", job_id, env=env)
    assert (out_dir / "metrics.jsonl").is_file(), f"the job never trained: {status} " + \
        cli("job", "logs", job_id, env=env, check=False)[-3000:]
    alive = [a for a in cluster_state(env, "actors") if a["state"] == "ALIVE" and a.get("ray_namespace") == "coati"]
    assert {a["name"] for a in alive} >= {"maker-0", "maker-1", "actor-trainer-0", "actor-trainer-1",
                                         "critic-trainer-0", "replay-buffer"}
    assert any(pg["state"] == "CREATED" for pg in cluster_state(env, "placement-groups"))

    cli("job", "stop", job_id, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        alive = [a["name"] for a in cluster_state(env, "actors") if a["state"] != "DEAD"]
        pgs = [pg["name"] for pg in cluster_state(env, "placement-groups") if pg["state"] != "REMOVED"]
        if not alive and not pgs:
            break
        time.sleep(1)
    assert not alive and not pgs, f"left behind: actors {alive}, placement groups {pgs}"
    assert "was stopped" in cli("job", "status", job_id, env=env)
