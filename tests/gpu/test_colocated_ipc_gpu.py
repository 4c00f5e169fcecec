"""One GPU: the ipc weight transport (the maker maps rank 0's CUDA tensors by CUDA IPC handle, one device copy)
and placement: colocated (the actor group's ranks generate with their own weights, nothing published)."""

import pytest
import torch

from tests.gpu.test_ppo_gpu import gpu_ray, run_and_compare  # noqa: F401 (the module's Ray)
from tests.ppo_helpers import ppo_config

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs CUDA: CUDA IPC handles and ZeRO-2 (run by `make gpu-check`)")

ZERO2_BOTH = ["actor_trainer.strategy.name=colossalai_zero2", "actor_trainer.strategy.precision=bf16",
              "critic_trainer.strategy.name=colossalai_zero2", "critic_trainer.strategy.precision=bf16",
              "actor_trainer.resources.num_ranks=1", "actor_trainer.resources.num_gpus_per_rank=0.3",
              "critic_trainer.resources.num_gpus_per_rank=0.3", "algorithm.max_steps=3"]


def test_ipc_maps_the_trainers_cuda_tensors_into_a_maker_on_the_same_gpu(gpu_ray, tiny_llama, reward_dir, tmp_path):
    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / "ipc", *ZERO2_BOTH, "maker.num_makers=1", "maker.num_gpus=0.3",
                     "maker.dtype=bfloat16", "weight_sync.transport=ipc")
    rows, seen = run_and_compare(cfg)
    assert [r["version"] for r in rows] == [1, 2, 3] and all(r["sync/ipc"] == 1 for r in rows)
    for step, s in seen.items():
        for role in ("actor", "critic"):
            for k, v in s[role].items():
                theirs = s["maker"][role][k]
                assert torch.equal(theirs, v.to(theirs.dtype)), (step, role, k)


def test_colocated_zero2_generates_on_the_actor_ranks_and_publishes_nothing(gpu_ray, tiny_llama, reward_dir, tmp_path):
    from actors.driver import RLJob

    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / "colocated", *ZERO2_BOTH, "placement=colocated")
    rows = []
    summary = RLJob(cfg).run(on_step=lambda job, step, m: rows.append(m))
    assert summary["steps"] == 3 and summary["placement"] == "colocated"
    assert all(r["sync/bytes"] == 0 and r["makers"] == 0 and r["memory/makers_peak_gb"] > 0 for r in rows)
    assert all(r["response_length"] > 0 and r["critic/loss"] == r["critic/loss"] for r in rows)
    from coati_ray.utils.flops import device_peak_tflops

    if device_peak_tflops("bfloat16") is not None:  # a GPU of the table: every group's MFU, a fraction of it
        assert all(0 < r[f"mfu/{g}"] < 1 for r in rows for g in ("makers", "actor_trainer", "critic_trainer"))


def test_colocated_offload_moves_the_optimizer_out_between_updates_and_trains_the_same(gpu_ray, tiny_llama,
                                                                                       reward_dir, tmp_path):
    """colocated.offload_optimizer under ZeRO-2: Adam's moments and the fp32 masters leave the GPU after every
    update (memory/<role>_offloaded_gb) and come back before the next, and the run trains what one without it
    trains (the same losses; the copies are exact)."""
    from actors.driver import RLJob

    runs = {}
    for name, extra in (("kept", ()), ("offloaded", ("colocated.offload_optimizer=true",))):
        cfg = ppo_config(tiny_llama, reward_dir, tmp_path / name, *ZERO2_BOTH, "placement=colocated", *extra)
        rows = []
        RLJob(cfg).run(on_step=lambda job, step, m: rows.append(m))
        runs[name] = rows
    assert all(r["memory/actor_offloaded_gb"] > 0 and r["memory/critic_offloaded_gb"] > 0 for r in runs["offloaded"])
    for kept, offloaded in zip(runs["kept"], runs["offloaded"]):
        for key in ("actor/loss", "critic/loss", "reward"):
            assert offloaded[key] == pytest.approx(kept[key], rel=1e-5, abs=1e-6), key
