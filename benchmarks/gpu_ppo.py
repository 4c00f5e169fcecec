"""PPO on one GPU: iteration time, samples/s/GPU and TFLOP/s per group, for opt-125m/350m/1.3b-shaped
models under ddp, zero2 and gemini. Not run yet: no GPU was available (see RESULTS.md).

    python -m benchmarks.gpu_ppo [--sizes opt-125m opt-350m opt-1.3b] [--strategies ddp colossalai_zero2 colossalai_gemini]

Models are built locally from OPT configs of those shapes (random weights, the repo's tokenizer:
throughput does not depend on the values) and saved in Hugging Face format. One GPU is shared by
fractions: the maker 0.3, the actor group 0.3, the critic group 0.3.
"""

from __future__ import annotations

import argparse
import os

from benchmarks.common import OUT, REPO, save, steady

SHAPES = {"opt-125m": (768, 12, 12), "opt-350m": (1024, 24, 16), "opt-1.3b": (2048, 24, 32)}


def build(name: str) -> tuple[str, str]:
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    from coati_ray.models import RewardModel
    from coati_ray.models.loading import load_tokenizer

    path, rm = os.path.join(OUT, "gpu_models", name), os.path.join(OUT, "gpu_models", name + "-rm")
    if not os.path.isfile(os.path.join(rm, "value_head.safetensors")):
        tok = load_tokenizer(os.path.join(REPO, "assets", "tokenizer"))
        hidden, layers, heads = SHAPES[name]
        cfg = OPTConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, ffn_dim=4 * hidden,
                        num_attention_heads=heads, word_embed_proj_dim=hidden, max_position_embeddings=2048,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        torch.manual_seed(0)
        OPTForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
        tok.save_pretrained(path)
        RewardModel.from_pretrained(path).save_pretrained(rm)
    return path, rm


def run(name: str, strategy: str, steps: int) -> dict:
    from actors.driver import PPOJob
    from coati_ray.config import load_config
    from coati_ray.config.ppo import PPOConfig

    path, rm = build(name)
    dtype = "float32" if strategy == "ddp" else "bfloat16"
    cfg = load_config(PPOConfig, os.path.join(REPO, "configs", "ppo_tiny.yaml"), [
        f"actor.path={path}", f"critic.path={path}", f"reward.path={rm}", f"actor.dtype={dtype}",
        f"critic.dtype={dtype}", f"reward.dtype={dtype}", f"data.prompt_path={os.path.join(REPO, 'data', 'prompts', 'train.jsonl')}",
        "generation.max_new_tokens=64", "ppo.rollout_batch_size=32", "ppo.train_batch_size=32", "ppo.micro_batch_size=8",
        f"ppo.max_steps={steps}", "maker.num_makers=1", "maker.batch_size=32", "maker.num_gpus=0.3", "maker.num_cpus=1",
        "maker.torch_threads=4", "buffer.capacity=128"] + [
        f"{g}.{k}" for g in ("actor_trainer", "critic_trainer") for k in (
            f"strategy.name={strategy}", "resources.num_ranks=1", "resources.num_gpus_per_rank=0.3",
            "resources.num_cpus_per_rank=1", "resources.torch_threads=4")],
        output_dir=os.path.join(OUT, "gpu", f"{name}-{strategy}"))
    cfg.validate()
    rows = []
    PPOJob(cfg, log=False, overwrite=True).run(on_step=lambda job, step, m: rows.append(m))
    step_s = steady([r["timing/step"] for r in rows])
    return {"model": name, "strategy": strategy, "step_seconds": step_s, "samples_per_s_per_gpu": 32 / step_s,
            **{k: steady([r[k] for r in rows]) for k in ("tflops/makers", "tflops/actor_trainer",
                                                         "tflops/critic_trainer")}}


def main(argv=None) -> None:
    import ray

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", nargs="*", default=list(SHAPES))
    p.add_argument("--strategies", nargs="*", default=["ddp", "colossalai_zero2", "colossalai_gemini"])
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args(argv)
    ray.init(include_dashboard=False, log_to_driver=False, namespace="coati")
    rows = []
    try:
        for name in args.sizes:
            for strategy in args.strategies:
                try:
                    rows.append(run(name, strategy, args.steps))
                except Exception as e:  # one failing combination is a result, not the end of the sweep
                    rows.append({"model": name, "strategy": strategy, "error": f"{type(e).__name__}: {e}"[:300]})
                print(rows[-1], flush=True)
    finally:
        ray.shutdown()
    save("gpu", {"rows": rows, "command": "python -m benchmarks.gpu_ppo"})


if __name__ == "__main__":
    main()
