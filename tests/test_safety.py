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


def test_every_tokenizer_and_model_load_carries_the_models_trust_remote_code():
    """A model with custom code that a config allows (model.trust_remote_code) must load everywhere: the PPO
    trainer's and PPO-ptx's tokenizer, launch.generate's reward model, the data preparation, not only the
    first load (they used to drop it and fail at the first checkpoint)."""
    loads = [(path, args) for path, src in python_sources()
             for func in ("load_tokenizer", "Actor.from_pretrained", "RewardModel.from_pretrained",
                          "Critic.from_pretrained", "cls.from_pretrained")
             for args in calls(src, func) if not src[:src.find(func + "(" + args)].rstrip().endswith("def")]
    assert len(loads) >= 6, loads
    dropped = [(path, args) for path, args in loads if "trust_remote_code" not in args and "**" not in args]
    assert not dropped, f"trust_remote_code dropped: {dropped}"


def test_tokenizer_for_and_the_reward_judge_pass_trust_remote_code_on(tiny_llama, monkeypatch):
    from transformers import AutoTokenizer

    from coati_ray.config import ModelConfig
    from coati_ray.models.loading import tokenizer_for

    seen = []
    real = AutoTokenizer.from_pretrained.__func__
    monkeypatch.setattr(AutoTokenizer, "from_pretrained",
                        classmethod(lambda cls, *a, **k: seen.append(k.get("trust_remote_code")) or real(cls, *a, **k)))
    tokenizer_for(ModelConfig(path=tiny_llama, trust_remote_code=True), "auto")
    assert seen == [True]


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
    assert seen["runtime_env"]["env_vars"]["COATI_BIND_IP"] == "127.0.0.1"  # where the job's groups listen


class _Payload:
    """What a tampered checkpoint carries: unpickling it calls open(path, "w"), i.e. runs code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_zero2_and_gemini_resume_reads_optimizer_shards_without_running_code(tmp_path):
    """ColossalAI's sharded readers (LowLevelZero's and Gemini's optimizer resume) call torch.load bare. Our
    Strategy.load_optimizer runs them under weights_only_loads: a tampered shard is refused and runs nothing,
    a real optimizer state still loads."""
    import pickle
    from pathlib import Path

    import torch
    from colossalai.checkpoint_io.utils import load_shard_state_dict

    from coati_ray.config.schema import StrategyConfig
    from coati_ray.strategies.strategy import Strategy, weights_only_loads

    marker, evil = tmp_path / "code_ran", tmp_path / "pytorch_optim-00001.bin"
    torch.save({"state": {0: _Payload(str(marker))}}, evil)
    with weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        load_shard_state_dict(Path(evil))
    assert not marker.exists()

    class Booster:  # what booster.load_optimizer does on a GPU: ColossalAI's reader over the folder's shards
        def load_optimizer(self, optimizer, path):
            load_shard_state_dict(Path(path) / evil.name)

    strategy = Strategy(StrategyConfig(name="colossalai_zero2", precision="bf16"))
    strategy.booster = Booster()
    with pytest.raises(pickle.UnpicklingError):
        strategy.load_optimizer(None, str(tmp_path))
    assert not marker.exists() and torch.load.__module__ == "torch.serialization"  # and torch.load is restored

    param = torch.nn.Parameter(torch.ones(3))
    adam = torch.optim.AdamW([param], betas=(0.9, 0.95))
    param.grad = torch.ones(3)
    adam.step()
    good = tmp_path / "good.bin"
    torch.save(adam.state_dict(), good)
    with weights_only_loads():
        state = load_shard_state_dict(Path(good))
    assert torch.equal(state["state"][0]["exp_avg"], adam.state_dict()["state"][0]["exp_avg"])
    assert state["param_groups"][0]["betas"] == (0.9, 0.95)
    load_shard_state_dict(Path(evil))  # the defect, shown: outside the guard the same reader runs the payload
    assert marker.exists()
