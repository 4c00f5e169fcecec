"""Ours against TRL's PPO and GRPO trainers: same model, tokenizer, prompts, generation length, batch sizes
and epochs (GRPO: same group size and reward function), on this machine, interleaved and repeated.

    python -m benchmarks.bench_trl [--workload tiny|medium] [--steps 12] [--repeats 3] [--trl 0.19.1]
                                   [--algos ppo grpo] [--layouts 1x2 1x1 2x1]

The protocol (benchmarks/side_by_side.py): each side in every configuration it has (ours: sync and async;
TRL: 1 process x all cores, 1 x 1 thread, one process per core under accelerate, fp32, plus bf16 where the
CPU has it), once per round, the sides alternating; a step is the time between consecutive step ends on both
sides, the first 2 are warm-up; the ratio is ours best over TRL's best, the median over rounds, with its
range. Each TRL version runs in its own venv made by benchmarks/trl_env.sh (pinned; 0.19.1 on torch 2.5.1
like ours). The reward model is ours converted to AutoModelForSequenceClassification (score = our value
head; its bias, a constant reward offset, has no place there and is dropped).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.common import (EPOCHS, MICRO, OUT, REPO, ROLLOUT, WORKLOADS, commit, load, niced_overrides,
                               ppo_config, reward_model_dir, save, steady, workload_model)
from benchmarks.side_by_side import (WARMUP_STEPS, TrlLayout, config_ratio, cpu_flags, cpu_has_native_bf16,
                                     interleave, run_rate, summarize, trl_layouts)

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

    from coati_ray.config.rl import PromptDataConfig
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


OURS_SETUPS = {
    "ppo": {"sync": "2 makers of 1 thread, then the 1-rank actor and critic groups side by side, 1 thread each",
            "async": "max_staleness 1: 2 makers of 1 thread and the trainers at once, the trainers at nice 19",
            "colocated": "placement colocated: 2 ddp actor ranks of 1 thread generate half the rollout each with "
                         "their own weights (no weight sync), the 1-rank critic adds values, then both train"},
    "grpo": {"sync": "2 threads each: the maker, then the trainer",
             "async": "max_staleness 1: 2 makers of 1 thread (half the rollout each) and the trainer at once, the "
                      "trainer at nice 19",
             "colocated": "placement colocated: 2 ddp actor ranks of 1 thread, each generating half the rollout "
                          "with its own weights (no weight sync), then training"},
}
COLOCATED = ["placement=colocated", "actor_trainer.strategy.name=ddp", "actor_trainer.resources.num_ranks=2",
             "actor_trainer.resources.num_cpus_per_rank=0.5", "actor_trainer.resources.torch_threads=1"]
# PPO's critic as 2 ddp ranks too: with one rank its update (the whole batch on one core) outlasted the actor
# ranks' (half each), and the step waited on it (9.3 s against 6.5 s of a 19.9 s step on an AVX2 box; 3.5 s against
# 2.6 s on an AVX-512/AMX one, 2026-12-02)
COLOCATED_CRITIC = ["critic_trainer.strategy.name=ddp", "critic_trainer.resources.num_ranks=2",
                    "critic_trainer.resources.num_cpus_per_rank=0.5", "critic_trainer.resources.torch_threads=1"]


def _run_job(cfg) -> tuple[list[float], list[dict]]:
    """Our job on an embedded 2-CPU Ray -> (the clock at each step end, each step's metrics). The clock is read
    in the driver's per-step callback, after everything the driver does for the step (sync, buffer stats,
    metrics, logging), as TRL's is read in its on_step_end."""
    import ray

    from actors.driver import RLJob

    ends, rows = [], []

    def on_step(job, step, metrics):
        ends.append(time.perf_counter())
        rows.append(metrics)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="coati")
    try:
        RLJob(cfg, overwrite=True).run(on_step=on_step)
    finally:
        ray.shutdown()
    return ends, rows


def run_ours(steps: int, mode: str = "sync") -> dict:
    """Our PPO job with 2 makers of 1 torch thread and 1-rank naive groups on 2 CPUs: of the configurations
    benchmarks.bench_pipeline compares (RESULTS.md section 2), the fastest of each mode on the 39M
    workload. sync is TRL's algorithm: the makers and the trainers take turns, so generation gets both
    cores, one maker on each (1 maker of 2 threads is slower: its threads wait on each other), then the
    actor and critic groups one core each, side by side. async (max_staleness 1) makes the next step's
    batches while the trainers update, the trainers at nice 19 (Ray runs actors at 15), so that a core
    both stages want goes mostly to the makers, who set the pace."""
    setup_overrides = {"sync": ["maker.num_makers=2"],
                       "async": ["maker.num_makers=2", "algorithm.mode=async", "algorithm.max_staleness=1", *niced_overrides()],
                       "colocated": [*COLOCATED, *COLOCATED_CRITIC]}[mode]
    cfg = ppo_config(os.path.join(OUT, f"vs_trl_{mode}"), f"algorithm.max_steps={steps}", f"maker.batch_size={MAKER_BATCH}",
                     f"algorithm.kl_coef={KL}", f"actor_trainer.optim.lr={LR}", "algorithm.log_every=100", *setup_overrides,
                     workload=WORKLOAD)
    ends, rows = _run_job(cfg)
    rate = run_rate(ends, ROLLOUT)
    length = steady([r["response_length"] for r in rows if "response_length" in r])  # async: steps with batches
    return {**rate, "mode": mode, "setup": OURS_SETUPS["ppo"][mode], "mean_response_tokens": length,
            "generated_tokens_per_s": rate["samples_per_s"] * length,
            "driver_timing_step": steady([r["timing/step"] for r in rows]),
            "timing": {k[len("timing/"):]: steady([r.get(k, 0.0) for r in rows if r.get("experience/batches")])
                       for k in sorted(rows[-1]) if k.startswith("timing/") and k != "timing/step"}}


def run_ours_grpo(steps: int, mode: str = "sync") -> dict:
    """Our GRPO job on the same workload: a 1-rank naive actor group, no critic anywhere.

    sync is TRL's algorithm (on-policy, one update per rollout): maker and trainer take turns, so each
    gets both cores (1 maker, 2 torch threads). async lets 2 makers of 1 thread each (half the rollout each)
    make the next step's batches while the trainer updates (one version stale at most), the trainer at
    nice 19, so that a core both want goes mostly to the makers."""
    from coati_ray.config import load_config
    from coati_ray.config.rl import RLConfig

    cfg = load_config(RLConfig, os.path.join(REPO, "configs", "grpo_tiny.yaml"), [
        f"actor.path={MODEL}", f"data.prompt_path={os.path.join(REPO, 'data', 'prompts', 'train.jsonl')}",
        f"generation.max_new_tokens={NEW_TOKENS}", f"algorithm.max_steps={steps}", f"algorithm.rollout_batch_size={GRPO_ROLLOUT}",
        f"algorithm.train_batch_size={GRPO_ROLLOUT}", f"algorithm.micro_batch_size={GRPO_MICRO}",
        f"algorithm.n_samples_per_prompt={GRPO_GROUP}", f"algorithm.kl_coef={GRPO_KL}", "maker.num_makers=1",
        f"maker.batch_size={GRPO_ROLLOUT}", "actor_trainer.strategy.name=naive", "actor_trainer.resources.num_ranks=1",
        f"actor_trainer.optim.lr={LR}", f"buffer.capacity={2 * GRPO_ROLLOUT}", "algorithm.log_every=100",
        f"algorithm.mode={'async' if mode == 'async' else 'sync'}", "ray.dashboard=false", "buffer.timeout_s=1200",
        *{"sync": ["maker.torch_threads=2", "maker.num_cpus=1", "actor_trainer.resources.torch_threads=2",
                   "actor_trainer.resources.num_cpus_per_rank=1"],
          "async": ["algorithm.max_staleness=1", "maker.num_makers=2", f"maker.batch_size={GRPO_ROLLOUT // 2}",
                    "maker.num_cpus=0.5", *niced_overrides(roles=("actor",))],
          "colocated": [*COLOCATED, f"maker.batch_size={GRPO_ROLLOUT // 2}"]}[mode]],
        output_dir=os.path.join(OUT, f"vs_trl_grpo_{mode}_{WORKLOAD}"))
    cfg.validate()
    ends, rows = _run_job(cfg)
    return {**run_rate(ends, GRPO_ROLLOUT), "mode": mode, "setup": OURS_SETUPS["grpo"][mode],
            "mean_response_tokens": steady([r["response_length"] for r in rows if "response_length" in r]),
            "timing": {k: steady([r[f"timing/{k}"] for r in rows if r.get("experience/batches")])
                       for k in ("generate", "ref", "update_actor")}}


def trl_command(python: str, script: str, layout: TrlLayout, args: list[str]) -> list[str]:
    """The command line of one TRL run: the script under its venv's python, or under `accelerate launch`
    (gloo on CPU) when the layout has several processes; the threads and precision passed through."""
    tail = [os.path.join(REPO, "benchmarks", script), *args, "--threads", str(layout.threads),
            "--precision", layout.precision]
    if layout.processes == 1:
        return [python, *tail]
    # --multi_gpu is accelerate's torch.distributed.run launcher; on CPU (TRL's use_cpu) its processes use gloo:
    # `--cpu` with several processes would want mpirun
    return [python, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
            "--num_processes", str(layout.processes), "--mixed_precision", "no", "--main_process_port", "29533",
            *tail]


def run_trl(version: str, steps: int, script: str = "trl_ppo.py", layout: TrlLayout = TrlLayout(1, 2)) -> dict:
    subprocess.run(["bash", os.path.join(REPO, "benchmarks", "trl_env.sh"), version], check=True, cwd=REPO)
    python = os.path.join(OUT, f"venv-trl-{version}", "bin", "python")
    out = os.path.join(INPUTS, f"trl-{version}-{script.split('.')[0]}.json")
    if os.path.exists(out):
        os.remove(out)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": str(layout.threads)}
    env.pop("PYTHONPATH", None)
    subprocess.run(trl_command(python, script, layout, ["--inputs", INPUTS, "--steps", str(steps), "--out", out]),
                   check=True, cwd=INPUTS, env=env, timeout=3600)
    with open(out) as f:
        raw = json.load(f)
    phases = raw.pop("phases", None)
    rate = run_rate(raw.pop("step_ends"), raw["samples_per_step"])
    if phases:
        raw["timing"] = trl_timing(phases, rate)
    return {**rate, **raw}


def trl_timing(phases: list, rate: dict) -> dict:
    """TRL's rank-0 seconds per phase ([{phase: s}] by step, from trl_grpo.time_phases), averaged over the steps
    the rate counts (those after the warm-up); update_actor is the rest of the mean step, as ours is timed."""
    steps = phases[WARMUP_STEPS:WARMUP_STEPS + rate["steady_steps"]]
    if len(steps) < rate["steady_steps"]:
        raise ValueError(f"phases of {len(phases)} steps for {rate['steady_steps']} steady ones after the warm-up")
    timing = {k: sum(p.get(k, 0.0) for p in steps) / len(steps) for k in ("generate", "ref")}
    timing["update_actor"] = rate["step_seconds"] - sum(timing.values())
    return timing


def our_configs(algo: str, ours: list[str] | None) -> list[str]:
    """Our configurations of `algo` to run, in OURS_SETUPS' order: those named in `ours`, every one if None."""
    unknown = sorted(set(ours or ()) - set(OURS_SETUPS[algo]))
    if unknown:
        raise ValueError(f"--ours: no {algo} configuration {unknown}; choose from {sorted(OURS_SETUPS[algo])}")
    return [c for c in OURS_SETUPS[algo] if ours is None or c in ours]


def side_by_side(algo: str, steps: int, repeats: int, versions: list[str], layouts: list[TrlLayout],
                 ours: list[str] | None = None) -> dict:
    """Every configuration of both sides (ours: those named, default all), `repeats` interleaved rounds
    (benchmarks.side_by_side.interleave)."""
    ours_run = run_ours if algo == "ppo" else run_ours_grpo
    script = "trl_ppo.py" if algo == "ppo" else "trl_grpo.py"
    trl_configs = {f"{v} {lay.name}": (v, lay) for v in versions for lay in layouts}
    runs = []
    for side, config, rnd in interleave(our_configs(algo, ours), list(trl_configs), repeats):
        print(f"[bench] {algo} round {rnd + 1}/{repeats}: {side} {config}", flush=True)
        row = {"side": side, "config": config, "round": rnd}
        try:
            if side == "ours":
                row.update(ours_run(steps, config))
            else:
                version, layout = trl_configs[config]
                row.update(run_trl(version, steps, script, layout))
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, ValueError) as e:
            row["error"] = f"{type(e).__name__}: {e}"[:400]  # recorded, not hidden: RESULTS.md says it failed
        runs.append(row)
        print(f"[bench]   -> " + (row["error"] if "error" in row else f"{row['samples_per_s']:.2f} samples/s"),
              flush=True)
    uncounted = [c for c, (_, lay) in trl_configs.items() if lay.precision != "fp32"]
    return {"runs": runs, "summary": summarize(runs, uncounted), "uncounted": uncounted}


def carry_unmeasured(result: dict, before: dict, measured: list[str]) -> None:
    """An algorithm not run this time keeps what this protocol measured for it before, stamped with its own
    commit and date, so `--algos grpo` does not erase the PPO rows (save() replaces the whole section)."""
    if "protocol" not in before:
        return
    for algo in ("ppo", "grpo"):
        if algo in measured or algo not in before:
            continue
        kept = dict(before[algo])
        for key in ("measured_at", "commit", "command"):
            kept.setdefault(key, before.get(key))
        result[algo] = kept
        for key in (f"{algo}_ratio", f"{algo}_ratio_range"):
            result[key] = before.get(key)
            if key in before.get("colocated", {}):
                result.setdefault("colocated", {})[key] = before["colocated"][key]
        run = before.get("colocated", {}).get("run")
        if run and algo in run:  # the colocated ratio came from a run of its own: its rows come along
            result.setdefault("colocated", {}).setdefault("run", {k: v for k, v in run.items()
                                                                 if k not in ("ppo", "grpo")})[algo] = run[algo]


def keep_full_run(before: dict, partial: dict) -> dict:
    """The section as it was (every configuration of ours against TRL), with the partial run (`--ours`
    naming some of them, colocated among them) kept under "colocated" beside the colocated ratios it
    measured, algorithm by algorithm (a later `--algos grpo` run keeps the earlier PPO rows): the headline
    ratios stay those of the run that tried all of ours."""
    kept = dict(before)
    old = dict(before.get("colocated") or {})
    run = dict(old.get("run") or {})
    run.update({k: v for k, v in partial.items() if k not in ("colocated", "previous", "ppo", "grpo")})
    # the run's stamp is the latest partial run's (an earlier one's date must not outlive its rows); each
    # algorithm's rows keep the machine they ran on, since a later run of the other may be on another box
    run["measured_at"] = partial.get("measured_at") or time.strftime("%Y-%m-%d %H:%M:%S")
    run["commit"] = partial.get("commit") or commit()
    for algo in ("ppo", "grpo"):
        if partial.get(algo):
            run[algo] = {**partial[algo], "cpu": partial[algo].get("cpu", partial.get("cpu"))}
            for key in (f"{algo}_ratio", f"{algo}_ratio_range"):
                run[key] = partial.get(key)
                old[key] = (partial.get("colocated") or {}).get(key)
    kept["colocated"] = {**old, "run": run}
    return kept


def machine_limit(algo: str, machine, found: dict) -> dict:
    """limit_<workload>.<algo>: the work one sample needs (benchmarks/roofline.py says what is counted, with our
    best run's mean response length for both sides: TRL's scripts do not report theirs) against this machine's
    limit, and each side's best median samples/s as a fraction of it."""
    from benchmarks.roofline import ModelShape, limit_row, passes

    summary = found["summary"]
    best = summary.get("best", {})
    median = (lambda side: summary.get("configs", {}).get(side, {}).get(best.get(side), {}).get("median"))
    ours_rows = [r for r in found["runs"] if r.get("side") == "ours" and r.get("config") == best.get("ours")
                 and "mean_response_tokens" in r]
    response = sum(r["mean_response_tokens"] for r in ours_rows) / len(ours_rows) if ours_rows else NEW_TOKENS
    with open(os.path.join(INPUTS, "prompts.jsonl")) as f:
        lengths = [len(json.loads(line)["input_ids"]) for line in f]
    prompt = sum(lengths) / len(lengths)
    actor = ModelShape.of(MODEL)
    value = ModelShape.of(MODEL, value_head=True)
    work = passes(algo, actor, value, value, prompt, response,
                  decode_batch=MAKER_BATCH if algo == "ppo" else GRPO_ROLLOUT,
                  micro_batch=MICRO if algo == "ppo" else GRPO_MICRO,
                  kl=(KL if algo == "ppo" else GRPO_KL) != 0)
    row = limit_row(algo, machine, work, median("ours"), median("trl"))
    row.update(prompt_tokens=prompt, response_tokens=response, ours_config=best.get("ours"),
               trl_config=best.get("trl"))
    print(f"[bench] {algo} limit {row['limit_samples_per_s']:.2f} samples/s ({row['useful_gflop_per_sample']:.1f} "
          f"GFLOP/sample): ours {row['ours_fraction'] or 0:.2f}, TRL {row['trl_fraction'] or 0:.2f} of it", flush=True)
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=12, help="steps per run, the first 2 warm-up (>= 12: 10 steady)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds of every configuration")
    p.add_argument("--trl", nargs="*", default=["0.19.1"], help="TRL versions (PPO and GRPO); 1.12.0 also pinned")
    p.add_argument("--algos", nargs="*", choices=["ppo", "grpo"], default=["ppo", "grpo"])
    p.add_argument("--layouts", nargs="*", default=None,
                   help="TRL layouts as <processes>x<threads> (default: every one of side_by_side.trl_layouts)")
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="tiny")
    p.add_argument("--ours", nargs="+", choices=sorted(OURS_SETUPS["ppo"]), default=None,
                   help="our configurations to run (default: every one), colocated among them: the run is kept "
                        "beside the full run's section, under its colocated key")
    args = p.parse_args(argv)
    if args.ours is not None and "colocated" not in args.ours:
        p.error("--ours must name colocated: a run of some of ours measures the colocated placement")
    if args.steps < WARMUP_STEPS + 1:
        p.error(f"--steps must leave a steady step after {WARMUP_STEPS} warm-up steps")
    flags = cpu_flags()
    layouts = trl_layouts(len(os.sched_getaffinity(0)), cpu_has_native_bf16(flags))
    if args.layouts is not None:
        layouts = [lay for lay in layouts if f"{lay.processes}x{lay.threads}" in args.layouts]
    use_workload(args.workload)
    prepare()
    result = {"workload": {"model": os.path.relpath(MODEL, REPO), "rollout": ROLLOUT, "micro": MICRO,
                           "epochs": EPOCHS, "new_tokens": NEW_TOKENS, "maker_batch": MAKER_BATCH},
              "grpo_workload": {"rollout": GRPO_ROLLOUT, "group": GRPO_GROUP, "micro": GRPO_MICRO,
                                "new_tokens": NEW_TOKENS, "kl_coef": GRPO_KL, "reward": "sorting verifier"},
              "protocol": {"steps": args.steps, "warmup_steps": WARMUP_STEPS, "repeats": args.repeats,
                           **({"ours": args.ours} if args.ours else {}),
                           "trl_versions": args.trl, "trl_layouts": [lay.name for lay in layouts]},
              "cpu": {"native_bf16": cpu_has_native_bf16(flags),
                      "flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))},
              "command": "python -m benchmarks.bench_trl " + " ".join(argv or sys.argv[1:])}
    from benchmarks.roofline import Machine

    machine = Machine.measure(len(os.sched_getaffinity(0)))  # before the runs, on an idle machine
    print(f"[bench] machine limit: {machine.gflops:.0f} GFLOP/s fp32 ({machine.matmul_gflops}), "
          f"{machine.bandwidth_gbps:.1f} GB/s copy, {machine.cores} cores", flush=True)
    for algo in args.algos:
        found = side_by_side(algo, args.steps, args.repeats, args.trl, layouts, args.ours)
        found.update(measured_at=time.strftime("%Y-%m-%d %H:%M:%S"), commit=commit(), command=result["command"])
        result[algo] = found
        result[f"{algo}_ratio"] = found["summary"]["ratio"]
        result[f"{algo}_ratio_range"] = found["summary"]["ratio_range"]
        result.setdefault("limit", {})[algo] = machine_limit(algo, machine, found)
        best_trl = found["summary"].get("best", {}).get("trl")
        if best_trl and "colocated" in OURS_SETUPS[algo]:  # the colocated placement on its own, against TRL's best
            pair = config_ratio(found["runs"], "colocated", best_trl)
            result.setdefault("colocated", {}).update({f"{algo}_ratio": pair["ratio"],
                                                       f"{algo}_ratio_range": pair["ratio_range"]})
    name = "vs_trl" if args.workload == "tiny" else f"vs_trl_{args.workload}"
    if result.get("limit"):  # the machine's limit, measured in this run: its own section, per algorithm
        limit_name = "limit" if args.workload == "tiny" else f"limit_{args.workload}"
        save(limit_name, {**(load(limit_name) or {}), **result["limit"], "command": result["command"],
                          "commit": commit(), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": result["cpu"]})
    before = load(name) or {}
    if args.ours is not None and set(args.ours) != set(OURS_SETUPS["ppo"]) and "protocol" in before:
        result = keep_full_run(before, result)  # a run of some of ours never replaces the run of all of them
        save(name, result, stamp_machine=False)  # its rows name their CPU; the file's machine stays the full run's
        return result
    carry_unmeasured(result, before, args.algos)
    # what the section said before, so RESULTS.md can say what moved (kept across re-runs of this protocol)
    result["previous"] = before.get("previous") if "protocol" in before else {
        k: before.get(k) for k in ("measured_at", "ppo_ratio", "grpo_ratio", "commit")} if before else None
    save(name, result)
    return result


if __name__ == "__main__":
    main()
