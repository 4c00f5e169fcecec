"""coati_ray/models/shared_tensors.py: another process on the node maps the sender's tensors (no copy through the object
store): it reads exactly the sender's values, and what it writes is in the sender's memory."""

import multiprocessing

import pytest
import torch

from coati_ray.models.shared_tensors import open_shared, share


def _receiver(blob: bytes, expected: dict, out) -> None:
    state = open_shared(blob)
    same = all(torch.equal(state[k], v) for k, v in expected.items()) and set(state) == set(expected)
    state["w"].add_(1.0)  # written into the sender's memory if it is mapped, lost if it were a copy
    out.put(same)


def test_a_process_on_the_node_maps_the_senders_tensors():
    model = torch.nn.Linear(4, 3).to(torch.bfloat16)
    state = {"w": model.weight.data, "b": model.bias.data, "view": model.weight.data[1:]}
    expected = {k: v.clone() for k, v in state.items()}
    blob = share(state)
    assert len(blob) < 2000  # where the memory is, not the data
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_receiver, args=(blob, expected, out))
    p.start()
    assert out.get(timeout=120) is True
    p.join(timeout=60)
    assert p.exitcode == 0
    # the parameter itself was written: it lives in shared memory now and keeps working in place
    assert torch.equal(model.weight.data, expected["w"] + 1)
    model.weight.data.mul_(2)
    assert model.weight.data.is_shared()


def test_the_sender_unlinks_the_shared_memory_files_it_made_and_keeps_its_weights(monkeypatch):
    import os

    from actors import weight_endpoints
    from actors.weight_endpoints import WeightSender
    from coati_ray.strategies import make_strategy
    from coati_ray.config.strategy import StrategyConfig

    # outside a Ray actor: asking Ray for the object store's size would start a Ray in this test process
    monkeypatch.setattr(weight_endpoints, "_object_store_bytes", lambda: 0)
    model = torch.nn.Linear(64, 32)
    sender = WeightSender(make_strategy(StrategyConfig()), model, lora_only=False, gathers=False)
    assert "ipc" in sender.export_ipc()
    files = [os.path.join("/dev/shm", f) for f in sender.shared]
    assert files and all(os.path.exists(f) for f in files)  # torch left them there, even past this process
    freed = sender.release_shared()
    assert freed >= 64 * 32 * 4 and not any(os.path.exists(f) for f in files) and sender.shared == set()
    model.weight.data.add_(1.0)  # still mapped here: the weights keep working in place
    assert model(torch.ones(1, 64)).shape == (1, 32)


# ---------------------------------------------------------------- where the weight sync uses it (no Ray)


def fake_sync(monkeypatch, maker_place: dict, trainer_place: dict, gpus_per_rank: float, transport: str = "auto",
              export: dict = None):
    from types import SimpleNamespace

    import ray

    from actors import weight_sync
    from actors.transports import ipc

    class FakeRay:
        exceptions = ray.exceptions

        @staticmethod
        def get(value, timeout=None):
            return value

    monkeypatch.setattr(ipc, "ray", FakeRay)

    def answers(value):
        return SimpleNamespace(remote=lambda *args, **kwargs: value)

    rank0 = SimpleNamespace(__ray_call__=answers(trainer_place), export_ipc=answers(export or {}))
    trainers = SimpleNamespace(ranks={"actor": [rank0]}, get=lambda refs: list(refs))
    pool = SimpleNamespace(makers={0: SimpleNamespace(node=answers(maker_place))}, incarnation={0: 0})
    cfg = SimpleNamespace(weight_sync=SimpleNamespace(transport=transport, timeout_s=5), algorithm=SimpleNamespace(mode="sync"),
                          actor_trainer=SimpleNamespace(resources=SimpleNamespace(num_gpus_per_rank=gpus_per_rank),
                                                        strategy=SimpleNamespace(name="ddp")))
    lines = []
    return weight_sync.WeightSync(cfg, trainers, pool, lines.append), lines


@pytest.mark.parametrize("maker, trainer, gpus, reaches", [
    ({"node": "a", "device": "cpu", "gpus": []}, {"node": "a", "gpus": []}, 0, True),
    ({"node": "b", "device": "cpu", "gpus": []}, {"node": "a", "gpus": []}, 0, False),   # another node
    ({"node": "a", "device": "cuda", "gpus": ["0"]}, {"node": "a", "gpus": ["0"]}, 0.5, True),  # the same GPU
    ({"node": "a", "device": "cuda", "gpus": ["1"]}, {"node": "a", "gpus": ["0"]}, 1, False),   # another GPU
    ({"node": "a", "device": "cpu", "gpus": []}, {"node": "a", "gpus": ["0"]}, 1, False),      # CUDA to a CPU maker
])
def test_ipc_reaches_a_maker_only_on_the_trainers_node_and_gpu(monkeypatch, maker, trainer, gpus, reaches):
    sync, _ = fake_sync(monkeypatch, maker, trainer, gpus)
    assert sync.transports["ipc"].reaches(0) is reaches


def test_ipc_refused_for_a_small_shared_memory_falls_back_and_auto_tries_the_collective_next(monkeypatch):
    sync, lines = fake_sync(monkeypatch, {"node": "a", "device": "cpu", "gpus": []}, {"node": "a", "gpus": []}, 0,
                            export={"refused": "/dev/shm has 1 MiB free for 9 MiB of weights", "version": 1})
    sync.active, sync.version = sync.transports["ipc"], 1  # auto picked ipc at an earlier sync
    stored = {"version": 1, "roles": {}, "bytes": 9}
    monkeypatch.setattr(sync.store, "handle_for", lambda index, wait=True: stored)
    assert sync.handle_for(0) is stored
    assert sync.transport == "collective" and not sync.transports["ipc"].reaches_every_maker()
    assert sync.handle_for(0) is stored and len(lines) == 1 and "/dev/shm has 1 MiB free" in lines[0]
