"""MFU (model FLOPs / the devices' dense peak) in every PPO step's metrics: the peak table, the groups' compute
dtype, and how the step record divides. CPU has no peak, so the table and the division are tested here with GPU
names and COATI_PEAK_TFLOPS; tests/gpu reads a real GPU's."""

from __future__ import annotations

import pytest
import torch

from coati_ray.reporting.step_metrics import MAKER_MEANS, step_metrics
from coati_ray.utils.flops import PEAK_ENV, device_peak_tflops, mfu, peak_tflops


def test_the_peak_table_knows_gpus_by_the_name_torch_reports_and_the_dtype(monkeypatch):
    monkeypatch.delenv(PEAK_ENV, raising=False)
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe", "float16") == 756.0  # the longer name first
    assert peak_tflops("NVIDIA H200", "float32") == 67.0  # plain fp32: torch leaves TF32 matmuls off
    assert peak_tflops("NVIDIA L40S", "bfloat16") == 362.0 and peak_tflops("NVIDIA L4", "bfloat16") == 121.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312.0
    assert peak_tflops("NVIDIA L40", "bfloat16") == 181.0 and peak_tflops("NVIDIA H200 NVL", "bfloat16") == 835.0
    assert peak_tflops("Some Future GPU", "bfloat16") is None and peak_tflops("cpu", "float32") is None
    if not torch.cuda.is_available():
        assert device_peak_tflops("float32") is None  # a CPU: no MFU, rather than a made-up peak
    monkeypatch.setenv(PEAK_ENV, "100")
    assert peak_tflops("Some Future GPU", "bfloat16") == 100.0 and mfu(25.0, 100.0) == 0.25
    assert mfu(25.0, None) is None
    monkeypatch.setenv(PEAK_ENV, "fast")
    with pytest.raises(ValueError, match="COATI_PEAK_TFLOPS='fast' is not a number"):
        peak_tflops("any", "bfloat16")


def test_a_groups_compute_dtype_is_its_mixed_precision_else_its_weights(monkeypatch):
    from types import SimpleNamespace

    from coati_ray.trainers.ppo import compute_dtype, group_peak_tflops

    model = torch.nn.Linear(2, 2)
    zero2 = SimpleNamespace(name="colossalai_zero2", cfg=SimpleNamespace(precision="bf16"), world_size=4)
    ddp = SimpleNamespace(name="ddp", cfg=SimpleNamespace(precision="bf16"), world_size=2)
    assert compute_dtype(zero2, model) == "bfloat16" and compute_dtype(ddp, model) == "float32"
    assert compute_dtype(ddp, model.to(torch.bfloat16)) == "bfloat16"
    monkeypatch.setenv(PEAK_ENV, "50")
    assert group_peak_tflops(zero2, model) == 200.0  # one device per rank
    monkeypatch.delenv(PEAK_ENV)
    if not torch.cuda.is_available():
        assert group_peak_tflops(zero2, model) is None


def _step(updates, makes):
    return step_metrics(updates=updates, makes=makes, sync={"export_seconds": 0.0, "bytes": 0, "transport": "ipc"},
                        loads=[], step_seconds=2.0, buffer={"held_samples": 0, "capacity": 16, "dropped": 0},
                        version=1, makers=2, maker_restarts=0)


def _batch(flops, **peak):
    return {**{k: 0.0 for k in MAKER_MEANS}, "samples": 8, "generated_tokens": 80, "flops": flops, "batch_id": 0,
            **peak}


def test_each_groups_mfu_is_its_flops_over_the_step_divided_by_its_devices_peak():
    consumed = {"staleness": [0], "versions": [0]}
    updates = {"actor": {"consumed": consumed, "flops/actor": 400e12, "peak_tflops/actor": 1000.0},
               "critic": {"consumed": consumed, "flops/critic": 100e12}}  # no peak (a CPU group): no MFU
    # two makers share GPU 0 of host a (its peak counts once), a third has GPU 1
    makes = [_batch(100e12, peak_tflops=500.0, device="a:0"), _batch(100e12, peak_tflops=500.0, device="a:0"),
             _batch(200e12, peak_tflops=500.0, device="a:1")]
    m = _step(updates, makes)
    assert m["tflops/actor_trainer"] == pytest.approx(200.0) and m["mfu/actor_trainer"] == pytest.approx(0.2)
    assert "mfu/critic_trainer" not in m and "peak_tflops/actor" not in m
    assert m["tflops/makers"] == pytest.approx(200.0) and m["mfu/makers"] == pytest.approx(200.0 / 1000.0)
    assert "mfu/makers" not in _step(updates, [_batch(1e12), _batch(1e12, peak_tflops=5.0, device="b:0")])


def test_a_cpu_rollout_reports_no_peak_and_a_known_gpu_its_device(monkeypatch):
    from coati_ray.experience.rollout_worker import device_peak

    model = torch.nn.Linear(2, 2)
    monkeypatch.delenv(PEAK_ENV, raising=False)
    if not torch.cuda.is_available():
        assert device_peak(model) == {}
    monkeypatch.setenv(PEAK_ENV, "80")
    if not torch.cuda.is_available():  # on a GPU host this would hide its devices from the rest of the session
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
        out = device_peak(model)
        assert out["peak_tflops"] == 80.0 and out["device"].endswith(":3")
