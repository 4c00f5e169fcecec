"""Stage 3 on one GPU through a local Ray: the groups and the maker share the device by fractional num_gpus
(actor group ZeRO-2 bf16, critic group Gemini bf16, maker in bf16), with either weight transport and with
LoRA on ZeRO-2; after every sync the maker holds exactly the bf16 cast of the trainers' weights. (For the
Gemini critic, "the trainer's weights" are Gemini's gather, the sync's own source; that the gather is the
model Gemini trains is shown by test_strategies_gpu, where a Gemini export loads back to identical logits.)"""

import os

import pytest
import torch

from tests.ppo_helpers import ppo_config

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs CUDA: fractional GPUs, ZeRO-2 and Gemini (run by `make gpu-check`)")

SHARED_GPU = ["actor_trainer.strategy.name=colossalai_zero2", "actor_trainer.strategy.precision=bf16",
              "critic_trainer.strategy.name=colossalai_gemini", "critic_trainer.strategy.precision=bf16",
              "actor_trainer.resources.num_ranks=1", "actor_trainer.resources.num_gpus_per_rank=0.3",
              "critic_trainer.resources.num_gpus_per_rank=0.3", "maker.num_makers=1", "maker.num_gpus=0.3",
              "maker.dtype=bfloat16", "algorithm.max_steps=3"]


@pytest.fixture(scope="module")
def gpu_ray():
    ray.init(num_cpus=8, num_gpus=torch.cuda.device_count(), include_dashboard=False, namespace="coati", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


def run_and_compare(cfg) -> tuple[list, dict]:
    from actors.driver import RLJob

    rows, seen = [], {}

    def after_step(job, step, m):
        rows.append(m)
        maker = next(iter(job.makers.values()))
        seen[step] = {"maker": ray.get(maker.weights.remote()),
                      "actor": ray.get(job.groups["actor"][0].weights.remote()),
                      "critic": ray.get(job.groups["critic"][0].weights.remote())}

    RLJob(cfg).run(on_step=after_step)
    return rows, seen


@pytest.mark.parametrize("transport", ["object_store", "collective"])
def test_zero2_actor_and_gemini_critic_share_one_gpu_with_a_bf16_maker(gpu_ray, tiny_llama, reward_dir, tmp_path,
                                                                      transport):
    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / transport, *SHARED_GPU, f"weight_sync.transport={transport}")
    rows, seen = run_and_compare(cfg)
    assert [r["version"] for r in rows] == [1, 2, 3]
    assert all(r["memory/actor_peak_gb"] > 0 and r["memory/critic_peak_gb"] > 0 for r in rows)
    assert all(r["memory/makers_peak_gb"] > 0 for r in rows)
    assert all(r["sync/collective"] == (transport == "collective") for r in rows)
    for step, s in seen.items():
        for role in ("actor", "critic"):
            trainer, maker = s[role], s["maker"][role]
            assert trainer.keys() == maker.keys()
            for k, v in trainer.items():
                want = v.to(torch.bfloat16) if v.is_floating_point() else v
                assert maker[k].dtype == want.dtype and torch.equal(maker[k], want), (step, role, k)
    assert all(torch.isfinite(torch.tensor(r["actor/loss"])) for r in rows)


def test_lora_actor_on_zero2_syncs_only_adapters(gpu_ray, tiny_llama, reward_dir, tmp_path):
    from coati_ray.models.weights import LORA_MARKER

    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / "lora", *SHARED_GPU, "actor.lora_rank=4")
    rows, seen = run_and_compare(cfg)
    last = seen[max(seen)]
    lora = [k for k in last["actor"] if LORA_MARKER in k]
    assert lora and all(torch.equal(last["maker"]["actor"][k], last["actor"][k].to(torch.bfloat16)) for k in lora)
    assert os.path.isfile(tmp_path / "lora" / "checkpoints" / "final" / "actor" / "model" / "config.json")


@pytest.mark.skipif(torch.cuda.device_count() < 3,
                    reason="NCCL refuses two ranks on one GPU, and the sync group is the actor's rank 0, the "
                           "critic's rank 0 and the maker: needs 3 GPUs")
def test_nccl_collective_sync_is_bit_equal_to_the_object_store_path(gpu_ray, tiny_llama, reward_dir, tmp_path):
    whole = [o.replace("num_gpus_per_rank=0.3", "num_gpus_per_rank=1").replace("num_gpus=0.3", "num_gpus=1")
             for o in SHARED_GPU]
    results = {}
    for transport in ("object_store", "collective"):
        cfg = ppo_config(tiny_llama, reward_dir, tmp_path / transport, *whole, f"weight_sync.transport={transport}",
                         "weight_sync.backend=nccl" if transport == "collective" else "weight_sync.backend=auto")
        results[transport] = run_and_compare(cfg)[1]
    for step in results["object_store"]:
        a, b = results["object_store"][step]["maker"], results["collective"][step]["maker"]
        assert all(torch.equal(a[r][k], b[r][k]) for r in a for k in a[r])
