"""The weight-transport seam (actors/transports/): a transport of one's own, from a module outside the package
(docs/extending.md's example, read from that file), goes through WeightSync and the maker pool's coalesced loads
into the makers' WeightReceiver bit-equal to the trainer's weights; the config names it in one line when wrong."""

from __future__ import annotations

import os
import re
import types

import pytest
import ray
import torch

from tests.conftest import REPO


def docs_example() -> str:
    """The `my_pkg/transports.py` block of docs/extending.md, verbatim."""
    with open(os.path.join(REPO, "docs", "extending.md")) as f:
        text = f.read()
    return re.search(r"```python\n# my_pkg/transports.py\n(.*?)```", text, re.S).group(1)


@pytest.fixture
def user_transport(tmp_path, monkeypatch):
    root = tmp_path / "user_code"
    root.mkdir()
    (root / "my_transports.py").write_text(docs_example() + "\n\nclass Duck:  # the methods, not the class\n"
                                           "    publish = handle_for = close = print\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("SHARED_WEIGHTS_DIR", str(tmp_path / "weights"))
    yield "my_transports"
    import sys

    sys.modules.pop("my_transports", None)


class Done:
    """A finished ObjectRef stand-in."""

    def __init__(self, value):
        self.value, self.done = value, True


class FakeRay:
    exceptions = ray.exceptions

    @staticmethod
    def wait(refs, num_returns=1, timeout=None):
        return list(refs), []

    @staticmethod
    def get(ref, timeout=None):
        return ref.value if isinstance(ref, Done) else ref


def remote(fn):
    return types.SimpleNamespace(remote=lambda *a, **k: Done(fn(*a, **k)))


class TrainerRank0:
    """A trainer group's rank 0 as a transport reaches it: methods, and __ray_call__ running a function inside."""

    def __init__(self, model):
        self.sender = types.SimpleNamespace(state=model.state_dict)
        self.__ray_call__ = remote(lambda fn, *args: fn(self, *args))


def test_a_transport_of_ones_own_delivers_bit_equal_weights_through_the_seam(user_transport, monkeypatch):
    from actors.maker_pool import MakerPool
    from actors.transports import loads
    from actors.weight_endpoints import WeightReceiver
    from actors.weight_sync import WeightSync
    from coati_ray.config.runtime import SyncConfig

    monkeypatch.setattr(loads, "ray", FakeRay)
    spec = f"{user_transport}:SharedDisk"
    SyncConfig(transport=spec).validate()  # the config accepts it (imports it, checks its methods)

    torch.manual_seed(0)
    trained = {"actor": torch.nn.Linear(4, 3), "critic": torch.nn.Linear(4, 1)}
    makers = {i: {"actor": torch.nn.Linear(4, 3).to(torch.bfloat16), "critic": torch.nn.Linear(4, 1)}
              for i in range(2)}
    receivers = {i: WeightReceiver(m, {"actor": False, "critic": False}) for i, m in makers.items()}
    pool = MakerPool(cfg=None, cfg_dict={}, buffer=None, info=lambda line: None)
    pool.makers = {i: types.SimpleNamespace(load_weights=remote(receivers[i].load)) for i in receivers}
    pool.incarnation = {i: 0 for i in receivers}
    for i in receivers:
        pool.loads.added(i)
    trainers = types.SimpleNamespace(ranks={role: [TrainerRank0(m)] for role, m in trained.items()},
                                     get=lambda refs: [FakeRay.get(r) for r in refs])
    cfg = types.SimpleNamespace(weight_sync=SyncConfig(transport=spec), algorithm=types.SimpleNamespace(mode="sync"))
    sync = WeightSync(cfg, trainers, pool, info=lambda line: None)
    assert sync.transport == spec

    for version in (1, 2, 3):
        with torch.no_grad():
            for m in trained.values():
                for p in m.parameters():
                    p.add_(0.1 * version)
        stats = sync.publish(version)
        assert stats["transport"] == spec and stats["bytes"] > 0
        results = pool.wait_loads()
        assert sorted(r["version"] for r in results) == [version, version]
        assert {r["transport"] for r in results} == {"shared_disk"}
        for i, models in makers.items():
            assert receivers[i].version == version
            for role, model in models.items():
                for name, value in model.state_dict().items():
                    want = trained[role].state_dict()[name].to(value.dtype)  # the maker's dtype: cast, counted
                    assert torch.equal(value, want), (i, role, name)
    written = sorted(os.listdir(os.environ["SHARED_WEIGHTS_DIR"]))
    assert written == ["actor-2.safetensors", "actor-3.safetensors", "critic-2.safetensors", "critic-3.safetensors"]


@pytest.mark.parametrize("spec, needle", [
    ("colective", "weight_sync.transport: 'colective' is not a weight transport; did you mean 'collective'?"),
    ("my_transports:Missing", "'my_transports' has no 'Missing'"),
])
def test_a_wrong_transport_is_one_line_naming_the_key(user_transport, spec, needle):
    """The config reads the transport registry (coati_ray.seams.TRANSPORTS), never a hand-kept list of names."""
    from coati_ray.config.runtime import SyncConfig
    from coati_ray.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        SyncConfig(transport=spec).validate()
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_class_that_is_not_a_transport_is_one_line_before_ray(user_transport):
    from actors.transports import check_transport, transport_class
    from coati_ray.errors import ConfigError

    assert transport_class(f"{user_transport}:SharedDisk").name == f"{user_transport}:SharedDisk"
    for spec in ("auto", "object_store", "collective", "ipc", f"{user_transport}:SharedDisk"):
        check_transport(spec)
    for duck in ("Duck", "read"):  # duck-typed or a function: the one rule is a subclass, said before Ray starts
        with pytest.raises(ConfigError) as e:
            check_transport(f"{user_transport}:{duck}")  # RLJob and the pipeline ask this before Ray starts
        assert "is not a WeightTransport subclass" in str(e.value) and "\n" not in str(e.value)
