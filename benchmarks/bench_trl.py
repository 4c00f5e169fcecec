"""Ours against TRL's PPO and GRPO trainers: same tiny model, tokenizer, prompts, generation length,
batch sizes and epochs (GRPO: same group size and reward function), on this machine, one after the other.

    python -m benchmarks.bench_trl [--steps 10] [--trl 0.19.1 1.12.0] [--grpo-trl 0.19.1] [--workload tiny|medium]

Each TRL version runs in its own venv made by benchmarks/trl_env.sh (pinned; torch 2.5.1 like
ours). The reward model is ours converted to AutoModelForSequenceClassification (score = our value
head; its bias, a constant reward offset, has no place there and is dropped).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks.common import (EPOCHS, MICRO, OUT, REPO, ROLLOUT, WORKLOADS, niced_overrides, ppo_config,
                               reward_model_dir, save, steady, workload_model)

INPUTS = os.path.join(OUT, "trl_inputs")  # the tiny workload's; trl_inputs_<workload> for the others
MODEL, NEW_TOKENS = workload_model("tiny"), WORKLOADS["tiny"]["new_tokens"]
WORKLOAD = "tiny"
MAKER_BATCH, KL, LR = 8, 0.05, 1e-5
# GRPO: 16 prompts x 4 samples per step, one optimiser step over all 64 in micro-batches of 8, KL in the loss
GRPO_ROLLOUT, GRPO_GROUP, GRPO_MICRO, GRPO_KL = 64, 4, 8, 0.04


def use_workload(name: str) -> None:
    """Point this module's workload (model, new tokens, TRL inputs) at `name` of benchmarks.common.WORKLOADS."""
    global MODEL, NEW_TOKENS, INPUTS, WORKLOAD
    WORKLOAD = name
    MODEL, NEW_TOKENS = workload_model(name), WORKLOADS[name]["new_tokens"]
    INPUTS = os.path.join(OUT, "trl_inputs" if name == "tiny" else f"trl_inputs_{name}")


def prepare() -> None:
    """The prompts as token ids (our template, so both sides see identical inputs) and the RM as seq-cls."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from coati_ray.config.ppo import PromptDataConfig
    from coati_ray.experience.prompts import read_prompt_data
    from coati_ray.models.loading import load_tokenizer

    os.makedirs(INPUTS, exist_ok=True)
    tok = load_tokenizer(MODEL)
    items, _, _ = read_prompt_data(PromptDataConfig(prompt_path=os.path.join(REPO, "data", "prompts", "train.jsonl"),
                                                    max_prompt_length=32), tok)
    with open(os.path.join(INPUTS, "prompts.jsonl"), "w") as f:  # ids for PPO, the same ids as text for GRPO
        f.writelines(json.dumps({"input_ids": it["input_ids"], "text": tok.decode(it["input_ids"])}) + "\n"
                     for it in items)
    with open(os.path.join(INPUTS, "grpo.json"), "w") as f:
        json.dump({"model": MODEL, "rollout": GRPO_ROLLOUT, "group": GRPO_GROUP, "micro": GRPO_MICRO,
                   "new_tokens": NEW_TOKENS, "kl_coef": GRPO_KL, "lr": LR}, f)
    rm_dir = reward_model_dir(WORKLOAD)
    cfg = AutoConfig.from_pretrained(rm_dir, num_labels=1)
    cfg.pad_token_id = tok.pad_token_id
    seqcls = AutoModelForSequenceClassification.from_config(cfg)
    backbone = load_file(os.path.join(rm_dir, "model.safetensors"))
    missing = seqcls.model.load_state_dict(backbone, strict=False)
    assert not missing.unexpected_keys, missing
    head = load_file(os.path.join(rm_dir, "value_head.safetensors"))
    with torch.no_grad():
        seqcls.score.weight.copy_(head["weight"])
    seqcls.save_pretrained(os.path.join(INPUTS, "rm"), safe_serialization=True)
    with open(os.path.join(INPUTS, "workload.json"), "w") as f:
        json.dump({"model": MODEL, "rollout": ROLLOUT, "micro": MICRO, "epochs": EPOCHS, "new_tokens": NEW_TOKENS,
                   "maker_batch": MAKER_BATCH, "kl_coef": KL, "lr": LR}, f)


def run_ours(steps: int, mode: str = "sync") -> dict:
    """Our job with 2 makers of 1 torch thread and 1-rank naive groups on 2 CPUs: of the configurations
    benchmarks.bench_pipeline compares (RESULTS.md section 2), the fastest of each mode on the 39M
    workload. sync is TRL's algorithm: the makers and the trainers take turns, so generation gets both
    cores, one maker on each (1 maker of 2 threads is slower: its threads wait on each other), then the
    actor and critic groups one core each, side by side. async (max_staleness 1) makes the next step's
    batches while the trainers update, the trainers at nice 19 (Ray runs actors at 15), so that a core
    both stages want goes mostly to the makers, who set the pace."""
    import ray

    from actors.driver import PPOJob

    setup_overrides = ["maker.num_makers=2"] if mode == "sync" else \
        ["maker.num_makers=2", "ppo.mode=async", "ppo.max_staleness=1", *niced_overrides()]
    cfg = ppo_config(os.path.join(OUT, f"vs_trl_{mode}"), f"ppo.max_steps={steps}", f"maker.batch_size={MAKER_BATCH}",
                     f"ppo.kl_coef={KL}", f"actor_trainer.optim.lr={LR}", "ppo.log_every=100", *setup_overrides,
                     workload=WORKLOAD)
    rows = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="coati")
    try:
        PPOJob(cfg, overwrite=True).run(on_step=lambda job, step, m: rows.append(m))
    finally:
        ray.shutdown()
    step_s = steady([r["timing/step"] for r in rows])
    length = steady([r["response_length"] for r in rows if "response_length" in r])  # async: steps with batches
    setup = ("2 makers of 1 thread, then the 1-rank actor and critic groups side by side, 1 thread each"
             if mode == "sync" else "max_staleness 1: 2 makers of 1 thread and the trainers at once, the "
             "trainers at nice 19")
    return {"steps": len(rows), "step_seconds": step_s, "samples_per_s": ROLLOUT / step_s,
            "generated_tokens_per_s": ROLLOUT * length / step_s, "mean_response_tokens": length, "setup": setup}


def run_ours_grpo(steps: int, mode: str = "sync") -> dict:
    """Our GRPO job on the same workload: a 1-rank naive actor group, no critic anywhere.

    sync is TRL's algorithm (on-policy, one update per rollout): maker and trainer take turns, so each
    gets both cores (1 maker, 2 torch threads). async lets 2 makers of 1 thread each (half the rollout each)
    make the next step's batches while the trainer updates (one version stale at most), the trainer at
    nice 19, so that a core both want goes mostly to the makers."""
    import ray

    from coati_ray.config import load_config
    from coati_ray.config.ppo import PPOConfig
    from actors.driver import PPOJob

    cfg = load_config(PPOConfig, os.path.join(REPO, "configs", "grpo_tiny.yaml"), [
        f"actor.path={MODEL}", f"data.prompt_path={os.path.join(REPO, 'data', 'prompts', 'train.jsonl')}",
        f"generation.max_new_tokens={NEW_TOKENS}", f"ppo.max_steps={steps}", f"ppo.rollout_batch_size={GRPO_ROLLOUT}",
        f"ppo.train_batch_size={GRPO_ROLLOUT}", f"ppo.micro_batch_size={GRPO_MICRO}",
        f"ppo.n_samples_per_prompt={GRPO_GROUP}", f"ppo.kl_coef={GRPO_KL}", "maker.num_makers=1",
        f"maker.batch_size={GRPO_ROLLOUT}", "actor_trainer.strategy.name=naive", "actor_trainer.resources.num_ranks=1",
        f"actor_trainer.optim.lr={LR}", f"buffer.capacity={2 * GRPO_ROLLOUT}", "ppo.log_every=100",
        f"ppo.mode={mode}", "ray.dashboard=false", "buffer.timeout_s=1200",
        *(["maker.torch_threads=2", "maker.num_cpus=1", "actor_trainer.resources.torch_threads=2",
           "actor_trainer.resources.num_cpus_per_rank=1"] if mode == "sync" else
          ["ppo.max_staleness=1", "maker.num_makers=2", f"maker.batch_size={GRPO_ROLLOUT // 2}",
           "maker.num_cpus=0.5", *niced_overrides(roles=("actor",))])], output_dir=os.path.join(OUT, f"vs_trl_grpo_{mode}_{WORKLOAD}"))
    cfg.validate()
    rows = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="coati")
    try:
        PPOJob(cfg, overwrite=True).run(on_step=lambda job, step, m: rows.append(m))
    finally:
        ray.shutdown()
    step_s = steady([r["timing/step"] for r in rows])
    setup = ("2 threads each: the maker, then the trainer" if mode == "sync" else "max_staleness 1: 2 makers "
             "of 1 thread (half the rollout each) and the trainer at once, the trainer at nice 19")
    return {"mode": mode, "setup": setup, "steps": len(rows), "step_seconds": step_s,
            "samples_per_s": GRPO_ROLLOUT / step_s,
            "mean_response_tokens": steady([r["response_length"] for r in rows if "response_length" in r]),
            "timing": {k: steady([r[f"timing/{k}"] for r in rows if r.get("experience/batches")])
                       for k in ("generate", "ref", "update_actor")}}


def run_trl(version: str, steps: int, script: str = "trl_ppo.py") -> dict:
    subprocess.run(["bash", os.path.join(REPO, "benchmarks", "trl_env.sh"), version], check=True, cwd=REPO)
    python = os.path.join(OUT, f"venv-trl-{version}", "bin", "python")
    out = os.path.join(INPUTS, f"trl-{version}-{script.split('.')[0]}.json")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)
    subprocess.run([python, os.path.join(REPO, "benchmarks", script), "--inputs", INPUTS, "--steps", str(steps),
                    "--out", out], check=True, cwd=INPUTS, env=env)
    with open(out) as f:
        return json.load(f)


def compare(ours: dict, versions: list[str], steps: int, script: str) -> dict:
    rows = {}
    for version in versions:
        try:
            rows[version] = run_trl(version, steps, script)
        except subprocess.CalledProcessError as e:  # recorded, not hidden: RESULTS.md says it failed
            rows[version] = {"error": f"exit {e.returncode}: {' '.join(map(str, e.cmd))[:300]}"}
    for r in rows.values():
        if "samples_per_s" in r:
            r["ours_over_trl_samples"] = ours["samples_per_s"] / r["samples_per_s"]
            if "generated_tokens_per_s" in r and "generated_tokens_per_s" in ours:
                r["ours_over_trl_tokens"] = ours["generated_tokens_per_s"] / r["generated_tokens_per_s"]
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--trl", nargs="*", default=["1.12.0", "0.19.1"], help="TRL versions for PPO")
    p.add_argument("--grpo-trl", nargs="*", default=["0.19.1"], help="TRL versions for GRPO")
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="tiny")
    args = p.parse_args(argv)
    use_workload(args.workload)
    prepare()
    ours = run_ours(args.steps)
    ours_async = run_ours(args.steps, "async")
    rows = compare(ours, args.trl, args.steps, "trl_ppo.py")
    for r in rows.values():
        if "samples_per_s" in r:
            r["ours_async_over_trl_samples"] = ours_async["samples_per_s"] / r["samples_per_s"]
    ours_grpo = run_ours_grpo(args.steps, "sync")
    ours_grpo_async = run_ours_grpo(args.steps, "async")
    grpo_rows = compare(ours_grpo, args.grpo_trl, args.steps, "trl_grpo.py")
    for r in grpo_rows.values():
        if "samples_per_s" in r:
            r["ours_async_over_trl_samples"] = ours_grpo_async["samples_per_s"] / r["samples_per_s"]

    def best(found):
        ratios = [r["ours_over_trl_samples"] for r in found.values() if "ours_over_trl_samples" in r]
        return min(ratios) if ratios else None  # against the fastest TRL measured

    result = {"workload": {"model": os.path.relpath(MODEL, REPO), "rollout": ROLLOUT, "micro": MICRO,
                           "epochs": EPOCHS, "new_tokens": NEW_TOKENS, "maker_batch": MAKER_BATCH,
                           "steps": args.steps},
              "ours": ours, "ours_async": ours_async, "trl": rows, "ppo_ratio": best(rows),
              "grpo": {"workload": {"rollout": GRPO_ROLLOUT, "group": GRPO_GROUP, "micro": GRPO_MICRO,
                                    "new_tokens": NEW_TOKENS, "kl_coef": GRPO_KL, "reward": "sorting verifier"},
                       "ours": ours_grpo, "ours_async": ours_grpo_async, "trl": grpo_rows},
              "grpo_ratio": best(grpo_rows),
              "command": "python -m benchmarks.bench_trl " + " ".join(argv or sys.argv[1:])}
    save("vs_trl" if args.workload == "tiny" else f"vs_trl_{args.workload}", result)
    return result


if __name__ == "__main__":
    main()
