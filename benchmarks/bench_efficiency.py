"""Work per sample with and without the two changes that cut it: the compacting decode and packed updates.

    python -m benchmarks.bench_efficiency [--workload medium] [--steps 8] [--repeats 2]

The PPO job of benchmarks/common.py (actor, critic, reference and reward model) measured as
benchmarks.bench_pipeline's `standalone` measures it: a maker alone, then the trainer groups alone, each
stage's CPU time per sample read from /proc for its actors' pids. Two settings, interleaved over the rounds:

- baseline: `generation.backend: hf` (Hugging Face's generate: every row is decoded until the longest
  row of its batch ends) and padded micro-batches of `algorithm.micro_batch_size`;
- efficient: `generation.backend: compact` (finished rows leave the decode batch) and
  `algorithm.micro_batch_tokens` (each micro-batch packed into one row, no padding), the budget the padded
  micro-batch's own size: micro_batch_size x (prompt + new tokens).

`core_seconds_per_sample` is generation + training core-seconds per sample of the efficient setting (median
over the rounds), `baseline_core_seconds_per_sample` the baseline's, and their ratio the fraction of the
work left (target: <= 0.75). `best_case_fraction` bounds that ratio from the batches themselves (each maker
batch's `experience/finished_row_fraction` and `experience/padding_fraction`, coati_ray/experience/waste.py):
the work left if the baseline's decoding cost nothing for finished rows and its updates nothing for padding.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import ray

from benchmarks.bench_pipeline import connect, standalone
from benchmarks.common import MICRO, ROLLOUT, WORKLOADS, machine, save
from benchmarks.side_by_side import cpu_flags, cpu_has_native_bf16
from coati_ray.experience.waste import best_case_fraction

PROMPT_TOKENS = 32  # data.max_prompt_length of benchmarks.common.ppo_config


def settings(workload: str) -> dict[str, list[str]]:
    """name -> the config overrides of that setting."""
    budget = MICRO * (PROMPT_TOKENS + WORKLOADS[workload]["new_tokens"])
    return {"baseline": ["generation.backend=hf"],
            "efficient": ["generation.backend=compact", f"algorithm.micro_batch_tokens={budget}"]}


def cpu_record() -> dict:
    """The box's CPU and the flags that decide its speed here (boxes of one kind differ ~2x)."""
    flags = cpu_flags()
    return {"model": machine()["cpu"], "native_bf16": cpu_has_native_bf16(flags),
            "flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))}


def summarize(runs: list[dict]) -> dict:
    """runs: {setting, round, generation_core_seconds_per_sample, training_core_seconds_per_sample} ->
    per setting the medians of each stage and of their sum over the rounds, and efficient / baseline."""
    by = {}
    for r in runs:
        by.setdefault(r["setting"], []).append(r)
    out = {}
    for name, rows in by.items():
        gen = statistics.median(r["generation_core_seconds_per_sample"] for r in rows)
        train = statistics.median(r["training_core_seconds_per_sample"] for r in rows)
        total = statistics.median(r["generation_core_seconds_per_sample"] + r["training_core_seconds_per_sample"]
                                  for r in rows)
        out[name] = {"generation": gen, "training": train, "total": total, "rounds": len(rows)}
    result = {"settings": out}
    if "baseline" in out and all("padding_fraction" in r for r in by["baseline"]):
        base_rows = by["baseline"]

        def trained_padding(r):  # the batches the trainers train on (maker batches merged), where measured
            return r.get("training_padding_fraction", r["padding_fraction"])

        result.update(finished_row_fraction=statistics.median(r["finished_row_fraction"] for r in base_rows),
                      padding_fraction=statistics.median(trained_padding(r) for r in base_rows),
                      best_case_fraction=statistics.median(best_case_fraction(
                          r["generation_core_seconds_per_sample"], r["training_core_seconds_per_sample"],
                          r["finished_row_fraction"], trained_padding(r)) for r in base_rows))
    if "baseline" in out and "efficient" in out:
        base, eff = out["baseline"], out["efficient"]
        result.update(core_seconds_per_sample=eff["total"], baseline_core_seconds_per_sample=base["total"],
                      fraction_of_baseline=eff["total"] / base["total"],
                      generation_fraction=eff["generation"] / base["generation"],
                      training_fraction=eff["training"] / base["training"])
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="medium")
    p.add_argument("--steps", type=int, default=8, help="steps of each stage alone (the first is warm-up)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds of both settings")
    args = p.parse_args(argv)
    runs = []
    connect()
    try:
        for rnd in range(args.repeats):
            names = list(settings(args.workload))
            for name in names if rnd % 2 == 0 else names[::-1]:  # neither always runs on a box just warmed
                print(f"[bench] efficiency round {rnd + 1}/{args.repeats}: {name}", flush=True)
                row = standalone(args.steps, args.workload, *settings(args.workload)[name],
                                 name=f"efficiency_{name}")
                runs.append({"setting": name, "round": rnd, **row})
                print(f"[bench]   -> {row['generation_core_seconds_per_sample']:.3f} + "
                      f"{row['training_core_seconds_per_sample']:.3f} core-s per sample (finished rows "
                      f"{row['finished_row_fraction']:.3f} of the decode, padding {row['padding_fraction']:.3f})",
                      flush=True)
    finally:
        ray.shutdown()
    result = {**summarize(runs), "runs": runs, "settings_overrides": settings(args.workload),
              "workload": {"name": args.workload, "new_tokens": WORKLOADS[args.workload]["new_tokens"],
                           "rollout": ROLLOUT, "micro": MICRO},
              "steps": args.steps, "repeats": args.repeats, "cpu": cpu_record(),
              "command": "python -m benchmarks.bench_efficiency " + " ".join(sys.argv[1:] if argv is None else argv)}
    save(f"efficiency_{args.workload}", result)
    return result


if __name__ == "__main__":
    main()
