"""TRL's PPO trainer on our workload; runs inside a TRL venv (benchmarks/trl_env.sh), never ours.

    <venv>/bin/python benchmarks/trl_ppo.py --inputs runs/bench/trl_inputs --steps 10 --out result.json

Imports only torch, transformers, datasets and trl. Stamps the end of every PPO update (rollout of
ROLLOUT prompts, scoring, one epoch of updates) with a callback and writes the stamps; benchmarks.side_by_side
turns them into a rate by the rule it applies to ours. TRL at its best: precision explicit (fp32 unless
--precision bf16), stop at EOS, any number of threads, and under `accelerate launch` any number of processes
(the rollout split between them, rank 0 writes).
"""

import argparse
import json
import os
import time


def config_kwargs(w: dict, world: int, steps: int, precision: str, gpu: bool, output_dir: str) -> dict:
    """TRL's PPOConfig for workload `w` on `world` processes (each makes rollout / world samples per step)."""
    if w["rollout"] % (w["micro"] * world):
        raise SystemExit(f"error: rollout {w['rollout']} does not split into {world} processes x micro {w['micro']}")
    return dict(output_dir=output_dir, per_device_train_batch_size=w["micro"],
                gradient_accumulation_steps=w["rollout"] // (w["micro"] * world), num_mini_batches=1,
                num_ppo_epochs=w["epochs"], local_rollout_forward_batch_size=w["maker_batch"],
                response_length=w["new_tokens"], total_episodes=w["rollout"] * steps, kl_coef=w["kl_coef"],
                temperature=1.0, learning_rate=w["lr"], report_to="none", save_strategy="no",
                num_sample_generations=0, logging_steps=10**6, use_cpu=not gpu, seed=42,
                stop_token="eos",  # a response ends at EOS, as ours does (None would decode every row to the end)
                missing_eos_penalty=None,
                # OnPolicyConfig defaults to bf16=True, CPU autocast included: the precision is said, never implied
                bf16=precision == "bf16", fp16=False)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--inputs", required=True, help="dir from benchmarks.bench_trl: prompts.jsonl, rm/, workload.json")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--gpu", action="store_true", help="train on the GPU (benchmarks.gpu_ppo's side-by-side)")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    try:  # TRL 1.x moved PPO to trl.experimental.ppo; 0.x has it at the top level
        from trl.experimental.ppo import PPOConfig, PPOTrainer
    except ImportError:
        from trl import PPOConfig, PPOTrainer

    torch.set_num_threads(args.threads)
    with open(os.path.join(args.inputs, "workload.json")) as f:
        w = json.load(f)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # accelerate launch: each process makes rollout / world
    config = PPOConfig(**config_kwargs(w, world, args.steps, args.precision, args.gpu,
                                       os.path.join(args.inputs, "trl_out")))
    tok = AutoTokenizer.from_pretrained(w["model"], padding_side="left")
    with open(os.path.join(args.inputs, "prompts.jsonl")) as f:
        ids = [json.loads(line)["input_ids"] for line in f]
    dataset = Dataset.from_dict({"input_ids": ids})
    policy = AutoModelForCausalLM.from_pretrained(w["model"])
    ref = AutoModelForCausalLM.from_pretrained(w["model"])
    reward = AutoModelForSequenceClassification.from_pretrained(os.path.join(args.inputs, "rm"), num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(w["model"], num_labels=1)
    for m in (reward, value):
        m.config.pad_token_id = tok.pad_token_id

    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=dataset, value_model=value, callbacks=[Clock()])
    t = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t
    if int(os.environ.get("RANK", "0")) != 0:
        return
    result = {"trl": trl.__version__, "torch": torch.__version__, "steps": len(stamps), "step_ends": stamps,
              "wall_seconds": wall, "processes": world, "threads": args.threads, "precision": args.precision,
              "samples_per_step": w["rollout"]}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "step_ends"}))


if __name__ == "__main__":
    main()
