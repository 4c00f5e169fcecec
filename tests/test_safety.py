"""Safe defaults, checked on the code itself: no pickle-based weight loading, no remote code unless
asked for, weights written as safetensors, and an embedded Ray that listens on localhost only."""

import os
import re

import pytest

from tests.conftest import REPO

SOURCE_DIRS = ("coati_ray", "actors", "launch", "scripts")


def python_sources():
    for top in SOURCE_DIRS:
        for root, _, files in os.walk(os.path.join(REPO, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    with open(path, encoding="utf-8") as f:
                        yield os.path.relpath(path, REPO), f.read()


def calls(source: str, func: str) -> list[str]:
    """The argument text of every call to `func` (balanced parentheses)."""
    out = []
    for m in re.finditer(re.escape(func) + r"\(", source):
        depth, i = 1, m.end()
        while depth and i < len(source):
            depth += {"(": 1, ")": -1}.get(source[i], 0)
            i += 1
        out.append(source[m.end():i - 1])
    return out


def test_every_torch_load_is_weights_only():
    found = [(path, args) for path, src in python_sources() for args in calls(src, "torch.load")]
    assert found, "the scan found no torch.load at all: it is not looking at the code"
    unsafe = [(path, args) for path, args in found if "weights_only=True" not in args]
    assert not unsafe, f"torch.load without weights_only=True unpickles arbitrary code: {unsafe}"


def test_remote_code_is_off_unless_the_user_turns_it_on():
    from coati_ray.config import ModelConfig

    assert ModelConfig(path="x").trust_remote_code is False
    hardcoded = [path for path, src in python_sources() if re.search(r"trust_remote_code\s*=\s*True", src)]
    assert not hardcoded, f"trust_remote_code=True hard-coded in {hardcoded}"


def test_weights_are_saved_as_safetensors(assets, tmp_path):
    from coati_ray.models import RewardModel

    saves = [(path, args) for path, src in python_sources() for args in calls(src, ".save_pretrained")
             if "safe_serialization" in args or "state_dict" in args]
    assert all("safe_serialization=True" in args for _, args in saves if "model" in args.lower()), saves
    out = tmp_path / "rm"
    RewardModel.from_pretrained(os.path.join(assets, "models", "tiny-llama")).save_pretrained(str(out))
    names = os.listdir(out)
    assert any(n.endswith(".safetensors") for n in names) and not any(n.endswith((".bin", ".pt")) for n in names)


def test_embedded_ray_listens_on_localhost_only(monkeypatch):
    ray = pytest.importorskip("ray")
    from actors import cluster

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(cluster, "started_cluster_running", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster.connect() is True
    assert seen.get("dashboard_host") == "127.0.0.1" and "address" not in seen
