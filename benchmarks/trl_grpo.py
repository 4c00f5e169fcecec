"""TRL's GRPO trainer on our GRPO workload; runs inside a TRL venv (benchmarks/trl_env.sh), never ours.

    <venv>/bin/python benchmarks/trl_grpo.py --inputs runs/bench/trl_inputs --steps 10 --out result.json

Same model, prompts (our template, as text), group size, generation length, batch and reward function
(the sorting verifier, copied here so this file imports only torch, transformers, datasets and trl).
Stamps the end of every optimiser step (one generation of the whole batch, scoring, one update) with a
callback and writes the stamps (benchmarks.side_by_side makes the rate). Precision explicit (fp32 unless
--precision bf16); under `accelerate launch` the batch is split between the processes, rank 0 writes.
"""

import argparse
import json
import os
import time
from collections import Counter


def gold_score(prompt: str, response: str) -> float:
    """coati_ray.tasks.sorting.gold_score on the prompt's numbers (tests/test_algorithms.py keeps them equal)."""
    body = prompt.split("sort:", 1)[-1].split("\n", 1)[0]
    numbers = [int(t) for t in body.split() if t.lstrip("-").isdigit()]
    tokens = response.split()
    ints = [int(t) for t in tokens if t.lstrip("-").isdigit()]
    if not numbers or not tokens:
        return 0.0
    pairs = list(zip(ints, ints[1:]))
    order = 1.0 if not pairs else sum(a <= b for a, b in pairs) / len(pairs)
    overlap = sum((Counter(ints) & Counter(numbers)).values())
    content = overlap / max(len(tokens), len(numbers))
    return order * content


def sorting_reward(prompts, completions, **kwargs):
    return [gold_score(p, c) for p, c in zip(prompts, completions)]


def config_kwargs(w: dict, world: int, steps: int, precision: str, output_dir: str) -> dict:
    """TRL's GRPOConfig for workload `w` on `world` processes: one generation of the whole batch per optimiser
    step (steps_per_generation defaults to the accumulation steps), split between the processes."""
    if w["rollout"] % (w["micro"] * world):
        raise SystemExit(f"error: rollout {w['rollout']} does not split into {world} processes x micro {w['micro']}")
    return dict(output_dir=output_dir, per_device_train_batch_size=w["micro"],
                gradient_accumulation_steps=w["rollout"] // (w["micro"] * world), num_generations=w["group"],
                max_completion_length=w["new_tokens"], max_prompt_length=64, beta=w["kl_coef"],
                learning_rate=w["lr"], temperature=1.0, max_steps=steps, report_to="none",
                save_strategy="no", logging_steps=10**6, use_cpu=True, seed=42, num_iterations=1,
                remove_unused_columns=False, dataloader_num_workers=0, bf16=precision == "bf16", fp16=False,
                gradient_checkpointing=False)


def time_phases(trainer, stamps: list) -> list:
    """Seconds of each step spent in generation and in the reference forward, on this process: [{phase: s}] by
    step (index = steps ended before it), from wrappers around the unwrapped model's `generate` and TRL's
    `_get_per_token_logps` called with the reference model; the step's rest (reward, the training forward and
    backward, the optimiser) is what bench_trl reports as update_actor."""
    phases: list = []

    def add(phase: str, seconds: float) -> None:
        while len(phases) <= len(stamps):
            phases.append({})
        phases[len(stamps)][phase] = phases[len(stamps)].get(phase, 0.0) + seconds

    model_cls = type(trainer.accelerator.unwrap_model(trainer.model))
    generate, logps = model_cls.generate, trainer._get_per_token_logps

    def timed_generate(self, *a, **k):
        t = time.perf_counter()
        try:
            return generate(self, *a, **k)
        finally:
            add("generate", time.perf_counter() - t)

    def timed_logps(model, *a, **k):
        t = time.perf_counter()
        try:
            return logps(model, *a, **k)
        finally:
            if model is trainer.ref_model:
                add("ref", time.perf_counter() - t)

    model_cls.generate = timed_generate
    trainer._get_per_token_logps = timed_logps
    return phases


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--inputs", required=True, help="dir from benchmarks.bench_trl: prompts.jsonl, grpo.json")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(args.threads)
    with open(os.path.join(args.inputs, "grpo.json")) as f:
        w = json.load(f)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # accelerate launch: one generation batch over all processes
    config = GRPOConfig(**config_kwargs(w, world, args.steps, args.precision,
                                        os.path.join(args.inputs, "trl_grpo_out")))
    tok = AutoTokenizer.from_pretrained(w["model"], padding_side="left")
    with open(os.path.join(args.inputs, "prompts.jsonl")) as f:
        texts = [json.loads(line)["text"] for line in f]
    dataset = Dataset.from_dict({"prompt": texts})
    model = AutoModelForCausalLM.from_pretrained(w["model"])
    prompts_per_step = w["rollout"] // w["group"]
    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    trainer = GRPOTrainer(model=model, reward_funcs=sorting_reward, args=config, train_dataset=dataset,
                          processing_class=tok, callbacks=[Clock()])
    phases = time_phases(trainer, stamps)
    t = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t
    if int(os.environ.get("RANK", "0")) != 0:
        return
    result = {"trl": trl.__version__, "torch": torch.__version__, "steps": len(stamps), "step_ends": stamps,
              "prompts_per_step": prompts_per_step, "samples_per_step": w["rollout"], "wall_seconds": wall,
              "processes": world, "threads": args.threads, "precision": args.precision, "phases": phases}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "step_ends"}))


if __name__ == "__main__":
    main()
