"""TRL's PPO trainer on our workload; runs inside a TRL venv (benchmarks/trl_env.sh), never ours.

    <venv>/bin/python benchmarks/trl_ppo.py --inputs runs/bench/trl_inputs --steps 10 --out result.json

Imports only torch, transformers, datasets and trl. Times every PPO update (rollout of
ROLLOUT prompts, scoring, one epoch of updates) with a callback and writes the steady-state rates.
"""

import argparse
import json
import os
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--inputs", required=True, help="dir from benchmarks.bench_trl: prompts.jsonl, rm/, workload.json")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
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

    grad_accum = w["rollout"] // w["micro"]
    config = PPOConfig(output_dir=os.path.join(args.inputs, "trl_out"), per_device_train_batch_size=w["micro"],
                       gradient_accumulation_steps=grad_accum, num_mini_batches=1, num_ppo_epochs=w["epochs"],
                       local_rollout_forward_batch_size=w["maker_batch"], response_length=w["new_tokens"],
                       total_episodes=w["rollout"] * args.steps, kl_coef=w["kl_coef"], temperature=1.0,
                       learning_rate=w["lr"], report_to="none", save_strategy="no", num_sample_generations=0,
                       logging_steps=10**6, use_cpu=not args.gpu, seed=42, stop_token=None, missing_eos_penalty=None)

    stamps = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            stamps.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=dataset, value_model=value, callbacks=[Clock()])
    t = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    kept = steps[2:] if len(steps) > 2 else steps  # the first updates include warm-up
    step_s = sum(kept) / len(kept)
    # TRL generates response_length tokens for every sample (no stop token here): its token count
    result = {"trl": trl.__version__, "torch": torch.__version__, "steps": len(steps), "step_seconds": step_s,
              "samples_per_s": w["rollout"] / step_s, "generated_tokens_per_s": w["rollout"] * w["new_tokens"] / step_s,
              "wall_seconds": wall, "threads": args.threads}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
