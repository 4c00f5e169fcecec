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
              "critic_trainer.resources.num_gpus_per_rank=0.3", "ppo.max_steps=3"]


def test_ipc_maps_the_trainers_cuda_tensors_into_a_maker_on_the_same_gpu(gpu_ray, tiny_llama, reward_dir, tmp_path):
    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / "ipc", *ZERO2_BOTH, "maker.num_makers=1", "maker.num_gpus=0.3",
                     "maker.dtype=bfloat16", "sync.transport=ipc")
    rows, seen = run_and_compare(cfg)
    assert [r["version"] for r in rows] == [1, 2, 3] and all(r["sync/ipc"] == 1 for r in rows)
    for step, s in seen.items():
        for role in ("actor", "critic"):
            for k, v in s[role].items():
                theirs = s["maker"][role][k]
                assert torch.equal(theirs, v.to(theirs.dtype)), (step, role, k)


def test_colocated_zero2_generates_on_the_actor_ranks_and_publishes_nothing(gpu_ray, tiny_llama, reward_dir, tmp_path):
    from actors.driver import PPOJob

    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / "colocated", *ZERO2_BOTH, "placement=colocated")
    rows = []
    summary = PPOJob(cfg).run(on_step=lambda job, step, m: rows.append(m))
    assert summary["steps"] == 3 and summary["placement"] == "colocated"
    assert all(r["sync/bytes"] == 0 and r["makers"] == 0 and r["memory/makers_peak_gb"] > 0 for r in rows)
    assert all(r["response_length"] > 0 and r["critic/loss"] == r["critic/loss"] for r in rows)
    from coati_ray.utils.flops import device_peak_tflops

    if device_peak_tflops("bfloat16") is not None:  # a GPU of the table: every group's MFU, a fraction of it
        assert all(0 < r[f"mfu/{g}"] < 1 for r in rows for g in ("makers", "actor_trainer", "critic_trainer"))
