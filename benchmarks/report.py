"""Write benchmarks/RESULTS.md from runs/bench/results/*.json (what `make bench` just measured)."""

from __future__ import annotations

import os
import time

from benchmarks.common import REPO, load, machine, versions

PATH = os.path.join(REPO, "benchmarks", "RESULTS.md")


def f(x, digits=2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def trl_section(r) -> list[str]:
    if r is None:
        return ["*Not measured in this run.*"]
    w, ours = r["workload"], r["ours"]
    out = [f"Workload: `{w['model']}`, {w['rollout']} prompts per step, {w['new_tokens']} new tokens, "
           f"generation batches of {w['maker_batch']}, one PPO epoch over one mini-batch of {w['rollout']} in "
           f"micro-batches of {w['micro']}, {w['steps']} steps (the first 2 are warm-up and not counted). "
           "Both sides get the whole machine: ours as a sync job (1 maker, 1-rank actor and critic groups, "
           "1 torch thread each), TRL as one process with 2 torch threads.", "",
           "| trainer | step (s) | PPO samples/s | generated tokens/s | ours ÷ theirs (samples) | ours ÷ theirs (tokens) |",
           "|---|---|---|---|---|---|",
           f"| coati_ray (sync) | {f(ours['step_seconds'], 3)} | {f(ours['samples_per_s'])} | "
           f"{f(ours['generated_tokens_per_s'], 1)} | | |"]
    for version, t in r["trl"].items():
        if "error" in t:
            out.append(f"| TRL {version} | failed: {t['error']} | | | | |")
            continue
        where = "trl.experimental.ppo" if version.startswith("1.") else "trl.PPOTrainer"
        out.append(f"| TRL {version} (`{where}`, torch {t['torch']}) | {f(t['step_seconds'], 3)} | "
                   f"{f(t['samples_per_s'])} | {f(t['generated_tokens_per_s'], 1)} | "
                   f"**{f(t['ours_over_trl_samples'])}×** | {f(t['ours_over_trl_tokens'])}× |")
    out += ["", f"Our mean response length was {f(ours['mean_response_tokens'], 1)} tokens (EOS may end a "
            "sample early); TRL, run without a stop token, generates the full length, so its token count "
            "is samples × new tokens.", "", f"Command: `{r['command']}`"]
    return out


def pipeline_section(r) -> list[str]:
    if r is None:
        return ["*Not measured in this run.*"]
    a, jobs = r["standalone"], r["jobs"]
    out = ["| measurement | samples/s | fraction of the bound |", "|---|---|---|",
           f"| a maker alone (1 maker, 1 thread) | {f(a['maker_samples_per_s'])} | |",
           f"| the trainer groups alone (actor + critic, 1 rank each) | {f(a['trainer_samples_per_s'])} | |",
           f"| **bound** (slower stage: {r['bound_stage']}) | {f(r['bound_samples_per_s'])} | 1.00 |"]
    for mode, j in jobs.items():
        out.append(f"| full job, {mode} | {f(j['trained_samples_per_s'])} | **{f(j['fraction_of_bound'])}** |")
    out += ["", "**Maker scaling** (async job, fixed 1-rank trainer groups, 1 torch thread per maker, "
            "buffer and staleness loose enough that makers are not throttled):", "",
            "| makers | experience samples/s | speed-up over 1 |", "|---|---|---|"]
    for n, s in r["maker_scaling"].items():
        out.append(f"| {n} | {f(s['produced_samples_per_s'])} | {f(s['speedup'])}× |")
    out += ["", f"Command: `{r['command']}`"]
    return out


def sync_section(r) -> list[str]:
    if r is None:
        return ["*Not measured in this run.*"]
    out = ["| model | sync | bytes | ours (s) | ours GB/s | raw put+get (s) | raw GB/s | ours ÷ raw (time) |",
           "|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        out.append(f"| {x['size']} | {x['mode']} | {x['bytes'] / 1e6:.1f} MB | {f(x['seconds'], 3)} | "
                   f"{f(x['gb_per_s'])} | {f(x['raw_seconds'], 3)} | {f(x['raw_gb_per_s'])} | "
                   f"{f(x['ours_over_raw_time'], 1)}× |")
    out += ["", f"LoRA rank {r['lora_rank']} on every linear layer; best of {r['repeats']}. Command: `{r['command']}`"]
    return out


def soak_section(r) -> list[str]:
    if r is None:
        return ["*Not measured in this run.*"]
    out = [f"{r['steps']} async steps in {f(r['wall_seconds'], 0)} s (2 makers, staleness ≤ 2, buffer "
           f"{r['buffer_capacity']} samples). Resident memory of every actor, from step {r['warmup_steps']} "
           "(after warm-up) to the end:", "", "| actor (class:pid) | after warm-up (MB) | end (MB) | max (MB) | growth (MB) |",
           "|---|---|---|---|---|"]
    for name, a in r["actors"].items():
        out.append(f"| {name} | {a['rss_mb_after_warmup']} | {a['rss_mb_end']} | {a['rss_mb_max']} | {a['growth_mb']} |")
    out += ["", f"Driver growth: {r['driver_growth_mb']} MB. Buffer: peak {r['buffer_peak_samples']} of "
            f"{r['buffer_capacity']} samples (never above capacity); produced {r['produced']}, delivered "
            f"{r['delivered']}, dropped as stale {r['dropped']}; books balance: {r['books_balance']}.", "",
            "Command: `python -m benchmarks.soak --steps %d`" % r["steps"]]
    return out


def write() -> str:
    m = machine()
    v = versions("torch", "transformers", "ray", "colossalai", "peft", "datasets")
    lines = ["# Benchmark results", "",
             f"Written by `make bench` on {time.strftime('%Y-%m-%d %H:%M')}; every figure below comes from that run.", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']}, Python {m['python']}. "
             "No GPU: see the GPU section.", "",
             "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()), "",
             "## 1. Against TRL's PPO trainer", "", *trl_section(load("vs_trl")), "",
             "## 2. Pipeline efficiency and maker scaling", "", *pipeline_section(load("pipeline")), "",
             "## 3. Weight sync", "", *sync_section(load("weight_sync")), "",
             "## 4. Soak (reliability)", "", *soak_section(load("soak")), "",
             "## 5. GPU", "",
             "`python -m benchmarks.gpu_ppo` measures PPO iteration time, samples/s/GPU and TFLOP/s per group "
             "for opt-125m/350m/1.3b-shaped models with ddp, zero2 and gemini on one GPU. It has **not been "
             "run**: no GPU was available to this work. Its figures will go here when it is.", ""]
    with open(PATH, "w") as fh:
        fh.write("\n".join(lines))
    print(f"[bench] wrote {PATH}")
    return PATH


if __name__ == "__main__":
    write()
