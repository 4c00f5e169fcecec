"""Write benchmarks/RESULTS.md from runs/bench/results/*.json (what `make bench` just measured)."""

from __future__ import annotations

import os
import time

from benchmarks.common import REPO, f, load, machine, versions
from benchmarks.gpu_results import lines as gpu_issue_lines
from benchmarks.report_trl import gpu_section, side_by_side_rows, trl_section  # noqa: F401 (sections 1 and 6)

PATH = os.path.join(REPO, "benchmarks", "RESULTS.md")


def pipeline_section(r) -> list[str]:
    if r is None:
        return ["*Not measured in this run.*"]
    a, jobs = r["standalone"], r["jobs"]
    if "core_seconds_per_sample" not in r:
        return ["*Measured by an older version of this benchmark (stage bound only); rerun `make bench`.*"]
    out = ["| measurement | samples/s | core-s / sample | fraction of the bound | of the stage bound |",
           "|---|---|---|---|---|",
           f"| a maker alone (1 maker, 1 thread) | {f(a['maker_samples_per_s'])} | "
           f"{f(a['generation_core_seconds_per_sample'], 4)} | | |",
           f"| the trainer groups alone (actor + critic, 1 rank each) | {f(a['trainer_samples_per_s'])} | "
           f"{f(a['training_core_seconds_per_sample'], 4)} | | |",
           f"| **bound**: {r['cores']} cores ÷ {f(r['core_seconds_per_sample'], 4)} core-s per sample | "
           f"{f(r['bound_samples_per_s'])} | | 1.00 | |",
           f"| stage bound (the slower stage alone: {r['bound_stage']}) | {f(r['stage_bound_samples_per_s'])} | | "
           f"{f(r['stage_bound_samples_per_s'] / r['bound_samples_per_s'])} | 1.00 |"]
    def cores_of(j, key):
        return next((o.split("=", 1)[1] for o in j.get("overrides", []) if o.startswith(key)), "?")

    names = {"sync": "sync", "async": "async, 1 maker (the OS schedules)",
             "sync_maker_1_threads": "sync, 1 maker of 1 thread while the trainers wait",
             "sync_maker_2_threads": "sync, 1 maker of 2 threads while the trainers wait",
             "sync_2_makers": "sync, 2 makers of 1 thread while the trainers wait",
             "async_2_makers": "async, 2 makers (the OS schedules)",
             "async_2_makers_nice": "async, 2 makers, trainers at nice 19 (a core both want goes mostly to the makers)"}
    if "async_pinned" in jobs:
        j = jobs["async_pinned"]
        names["async_pinned"] = (f"async, 1 maker, stages on their own cores (maker on {cores_of(j, 'maker.cpu_cores')}, "
                                 f"trainers on {cores_of(j, 'actor_trainer.resources.cpu_cores')})")
    def fastest(mode):  # results older than the sync_job / async_job keys name no fastest job
        return max((k for k, j in jobs.items() if j.get("mode", k.split("_")[0]) == mode),
                   key=lambda k: jobs[k]["trained_samples_per_s"])

    sync_job, async_job = r.get("sync_job") or fastest("sync"), r.get("async_job") or fastest("async")
    best = {sync_job, async_job}
    for mode, j in jobs.items():
        mark = " (the faster of its mode)" if mode in best else ""
        out.append(f"| full job, {names.get(mode, mode)}{mark} | {f(j['trained_samples_per_s'])} | | "
                   f"**{f(j['fraction_of_bound'])}** | {f(j['fraction_of_stage_bound'])} |")
    keys = sorted({k for j in jobs.values() for k in j["timing_seconds"]})
    sync_rate = jobs[sync_job]["trained_samples_per_s"]
    headline = (f"Async over sync, each in its fastest configuration: "
                f"**{f(jobs[async_job]['trained_samples_per_s'] / sync_rate)}×** ({async_job} against {sync_job}); "
                "each async job over that sync job: " + ", ".join(f"{k} {f(j['trained_samples_per_s'] / sync_rate)}×"
                                                                 for k, j in jobs.items() if j.get("mode") == "async"))
    out += ["", headline + ". Where a step's wall time went (seconds, mean of the "
            "steady steps; the stages overlap in async mode, so they do not add up to the step there):", "",
            "| job | step | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for mode, j in jobs.items():
        out.append(f"| {mode} | {f(j['step_seconds'], 3)} | " + " | ".join(f(j['timing_seconds'].get(k), 3) for k in keys) + " |")
    if all("cores" in j for j in jobs.values()):
        out += ["", "Where the cores' time went (steady steps; CPU time of the actors' processes from /proc, per "
                "sample made (makers) or trained (trainers), against what each stage used standalone; idle: the machine's idle cores on "
                "average). What a job loses against the bound is idle cores plus work done slower than standalone:",
                "", "| job | maker core-s / sample (alone: " + f(a['generation_core_seconds_per_sample'], 4) +
                ") | trainer core-s / sample (alone: " + f(a['training_core_seconds_per_sample'], 4) +
                ") | idle cores (of " + str(r['cores']) + ") |", "|---|---|---|---|"]
        for mode, j in jobs.items():
            c = j["cores"]
            out.append(f"| {mode} | {f(c['maker_core_seconds_per_sample'], 4)} | "
                       f"{f(c['trainer_core_seconds_per_sample'], 4)} | {f(c['idle_cores'])} |")
    if not r["maker_scaling"]:
        return out + ["", f"Command: `{r['command']}`"]
    model = {row["makers"]: row for row in r.get("scaling_model", {}).get("check", [])}
    out += ["", "**Maker scaling** (the makers alone, trainers idle: 1, 2 or 4 makers of 1 torch thread each make "
            "the same batches, sent at once and spread evenly; this machine has 2 cores), against "
            "[`benchmarks/scaling_model.py`](scaling_model.py)'s prediction from the 1-maker run's costs "
            "(rate = min(makers ÷ g, cores ÷ (g + h)), g: the makers' core-s per sample, h: everyone else's):", "",
            "| makers | experience samples/s | speed-up over 1 | predicted samples/s | prediction error |",
            "|---|---|---|---|---|"]
    for n, s in r["maker_scaling"].items():
        m = model.get(int(n))
        out.append(f"| {n} | {f(s['produced_samples_per_s'])} | {f(s['speedup'])}× | "
                   f"{f(m['predicted']) if m else '—'} | {format(100 * m['error'], '+.0f') + ' %' if m else '—'} |")
    cluster = r.get("scaling_model", {}).get("cluster")
    if cluster:
        out += ["", "The same model on a cluster (async; each maker on its own 2-core node, trainers on 2 cores of "
                "their own, the sync job's weight sync per step): "
                + ", ".join(f"{c['makers']} maker(s) {f(c['samples_per_s'])} samples/s ({c['bound_by']})"
                            for c in cluster) + ". Scaling makers pays until their rate meets the trainers'; "
                "past it, add trainer ranks."]
    out += ["", f"Command: `{r['command']}`"]
    return out


def sync_section(r) -> list[str]:
    if r is None:
        return ["*Not measured in this run.*"]
    if "raw_seconds" in (r.get("rows") or [{}])[0]:
        return ["*Measured by an older version of this benchmark (object store only); rerun `make bench`.*"]
    out = [f"Measured {r['measured_at']}, best of {r['repeats']}, buckets of {r['bucket_mb']:g} MB, LoRA rank "
           f"{r['lora_rank']} on every linear layer. *publish*: the sender's part until every maker has the bytes "
           "(object store: the put; collective: the broadcast into each maker's staging); *apply*: the makers' "
           "part between batches (object store: get + copy into the model; collective: the swap from staging). "
           "The floors move the same bytes as one numpy `ray.put` + `ray.get` and as one flat gloo broadcast, "
           "with no model at either end.", "",
           "| model | sync | makers | bytes | object store publish + apply (s) | ÷ raw put+get | collective publish + "
           "apply (s) | broadcast GB/s | raw broadcast GB/s | ÷ raw bandwidth |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        o, c = x["object_store"], x["collective"]
        out.append(f"| {x['size']} | {x['mode']} | {x['makers']} | {x['bytes'] / 1e6:.1f} MB | "
                   f"{f(o['publish_seconds'], 3)} + {f(o['apply_seconds'], 3)} | {f(x['object_store_over_raw_time'])}× | "
                   f"{f(c['publish_seconds'], 3)} + {f(c['apply_seconds'], 3)} | {f(c['publish_gb_per_s'])} | "
                   f"{f(x['raw_broadcast']['gb_per_s'])} | {f(x['collective_over_raw_bandwidth'])} |")
    if all("ipc" in x for x in r["rows"]):
        out += ["", "ipc (sync mode, makers on the trainer's node): the maker maps the trainer's tensors (shared "
                "memory) and copies them into its model; the floor maps a shared buffer of the same bytes and copies "
                "it once. The target: ipc ≤ 1.3× the floor.", "",
                "| model | sync | makers | ipc (s) | raw shared copy (s) | ÷ raw | GB/s |", "|---|---|---|---|---|---|---|"]
        out += [f"| {x['size']} | {x['mode']} | {x['makers']} | {f(x['ipc']['seconds'], 3)} | "
                f"{f(x['raw_shared_copy']['seconds'], 3)} | {f(x['ipc_over_raw'])}× | {f(x['ipc']['gb_per_s'])} |"
                for x in r["rows"]]
    else:
        out += ["", "*ipc: not measured by this run (the benchmark predates the transport); rerun "
                "`python -m benchmarks.bench_weight_sync`.*"]
    scaling = ", ".join(f"{k}: {f(v)}×" for k, v in r.get("collective_3_over_1_makers", {}).items())
    out += ["", f"Collective broadcast, 3 makers over 1 (time): {scaling}. Targets: broadcast ≥ 0.8 of the raw "
            f"broadcast's bandwidth (worst: {f(r['collective_over_raw_bandwidth_min'])}), object store ≤ 1.5× the "
            f"raw put+get (worst: {f(r['object_store_over_raw_time_max'])}×), 3 makers ≤ 1.3× of 1.",
            "", *sync_misses(r["rows"]), "", f"Command: `{r['command']}`"]
    return out


def sync_misses(rows: list[dict]) -> list[str]:
    """Why the weight-sync targets are missed on this machine, from the rows' own figures."""
    full = [x for x in rows if x["mode"] == "full"]
    one = {x["size"]: x for x in full if x["makers"] == 1}
    three = {x["size"]: x for x in full if x["makers"] == 3}
    raw_scaling = ", ".join(f"{k}: {f(one[k]['raw_broadcast']['gb_per_s'] / three[k]['raw_broadcast']['gb_per_s'])}×"
                            for k in one if k in three)
    applies = ", ".join(f"{x['size']}: {f(x['object_store']['apply_seconds'], 3)} s against {f(x['raw_put_get']['seconds'], 3)} s"
                        for x in full if x["makers"] == 1)
    copy = [x["object_store"]["apply_seconds"] / x["raw_put_get"]["seconds"] for x in full if x["makers"] == 1]
    publishes = ", ".join(f"{x['size']} × {x['makers']}: publish {f(x['object_store']['publish_seconds'], 3)} s" for x in full)
    worst = min(full, key=lambda x: x["collective_over_raw_bandwidth"])
    return [f"*Why the targets are missed here.* 3 makers over 1: the raw gloo broadcast, with no model at either "
            f"end, slows down about as much ({raw_scaling}): the sender and three receivers share this machine's 2 "
            "cores and one memory bus, so every extra receiver's copy competes with the others, and the collective "
            "(which stays near the raw broadcast's bandwidth) cannot do better here; across nodes each receiver has "
            "its own link and NCCL pipelines the broadcast. Object store over raw put+get: the raw floor's `get` is a zero-copy view, "
            "while a maker must write every byte into its model's parameters once (a strict, counted copy, cast "
            f"where dtypes differ); that copy alone (1 maker, apply against the whole raw put+get: {applies}) takes "
            f"{f(min(copy))}–{f(max(copy))}× the floor, and below 100 MB a Ray task's round trip per maker "
            "(milliseconds) weighs as much as the bytes; where a row's ratio is far above its copy's, its publish "
            f"(the `ray.put` of numpy views) was slow in that repeat ({publishes}). The targets are read on "
            "full-model syncs: LoRA rows move 10 MB or less, where a call's fixed cost dominates both transports. The collective's worst bandwidth row is "
            f"{worst['size']} with {worst['makers']} maker(s) ({f(worst['collective_over_raw_bandwidth'])} of the raw "
            "broadcast), where the broadcast takes tens of milliseconds and 2-core scheduling noise moves the ratio "
            "from run to run; `weight_sync.transport=auto` uses the collective whenever the group forms."]


def soak_section(r) -> list[str]:
    if r is None:
        return ["*Not measured in this run.*"]
    staleness = r.get("max_staleness", 2)
    out = [f"Measured {r['measured_at']}. {r['steps']} async steps in {f(r['wall_seconds'], 0)} s (2 makers, "
           f"staleness ≤ {staleness}, buffer {r['buffer_capacity']} samples). The soak runs the tiny workload only: "
           "what it tests (restarts, books, memory over a thousand steps) does not depend on the model's size, and "
           "a thousand steps of the 39M one would take about 3 hours here."]
    if "dropped_fraction" in r:
        out += ["", f"**Dropped as stale: {r['dropped']} of {r['produced']} batches produced "
                f"({100 * r['dropped_fraction']:.1f} %)**; trainers idle {100 * r['trainer_idle_fraction']:.0f} % of "
                f"each step on average (waiting for experience). Staleness of the batches consumed (versions behind: "
                f"count): {r['staleness_counts']}; {r['steps_with_stale_experience']} of {r['steps']} steps trained on "
                f"some experience {staleness} version(s) old, so the makers did run ahead. The driver starts no batch "
                "that would be too stale when consumed (admission control), so none has to be thrown away."]
    if "kills" in r:
        by = r["kills_by_how"]
        out += ["", f"**Makers killed {len(r['kills'])} times** on a seeded schedule (seed {r['seed']}, one per "
                f"~{r['kill_every']} steps: {by['ray.kill']} by `ray.kill`, {by['SIGKILL']} by SIGKILL): "
                f"{r['maker_restarts']} restarts, {r['maker_batches_regenerated']} batches made again, "
                f"{r['duplicates_refused']} duplicate copies refused, {r['makers_dropped']} makers dropped; "
                f"**books balance: {r['books_balance']}**."]
    out += ["", f"Resident memory of every actor, from step {r['warmup_steps']} (after warm-up) to the end (a "
            "restarted maker is a new process, so a new row):", "",
            "| actor (class:pid) | steps alive | after warm-up (MB) | end (MB) | max (MB) | growth (MB) | "
            "1st half / 2nd half (MB) | 2nd half MB per 100 steps |", "|---|---|---|---|---|---|---|---|"]
    for name, a in r["actors"].items():
        halves = f"{a['growth_first_half_mb']} / {a['growth_second_half_mb']}" if "growth_first_half_mb" in a else "–"
        rate = a.get("second_half_mb_per_100_steps", "–")
        out.append(f"| {name} | {a.get('steps_alive', '–')} | {a['rss_mb_after_warmup']} | {a['rss_mb_end']} | "
                   f"{a['rss_mb_max']} | {a['growth_mb']} | {halves} | {rate} |")
    leaking = [n for n, a in r["actors"].items() if a.get("steady_growth")]
    if any(n.startswith("ReplayBuffer") for n in leaking):
        out += ["", "The replay buffer keeps two bounded memories that fill as the run goes: the batch ids it has "
                "accepted (to refuse a remade copy; pruned to the newest 4,096 once 8,192 are held) and the last 256 "
                "finished items (a rank may report one lost with its node after taking it). At 2 items a step "
                "they fill over the first ~4,000 steps; the growth flagged below is theirs and stops there."]
    if any("steady_growth" in a for a in r["actors"].values()):
        out += ["", "**Leak check**: " + (f"still growing steadily in the second half: {', '.join(leaking)}." if leaking
                else "no actor still grows steadily in the second half of the run (more than 2 MB and at least half "
                     "its first-half growth): what growth there is comes early and levels off.")]
    out += ["", f"Driver growth: {r['driver_growth_mb']} MB. Buffer: peak {r['buffer_peak_samples']} of "
            f"{r['buffer_capacity']} samples (never above capacity); produced {r['produced']}, delivered "
            f"{r['delivered']}, dropped as stale {r['dropped']}; books balance: {r['books_balance']}.", "",
            "Command: `python -m benchmarks.soak --steps %d%s`" % (
                r["steps"], f" --kill-every {r['kill_every']} --seed {r['seed']}" if "kills" in r else "")]
    return out


def quantize_section(r) -> list[str]:
    if r is None:
        return ["*Not measured in this run.*"]
    w = r["workload"]
    out = [f"Measured {r['measured_at']}. bitsandbytes layers swapped in on this CPU ({w['threads']} threads); the LM "
           "head stays full precision, as bitsandbytes' own integration leaves it. Quality: mean log-likelihood "
           f"per token of {w['rows']} held-out reference answers (`{w['eval']}`), and the mean per-token "
           "KL(full ‖ quantized) of the next-token distributions there. Speed: greedy generation, "
           f"{w['batch']} prompts at once, {w['new_tokens']} new tokens.", "",
           "| model | quantize | weights (MB) | ÷ full | tokens/s | mean log-lik | KL from full |",
           "|---|---|---|---|---|---|---|"]
    for m in r["models"]:
        full = m["none"]["weight_bytes"]
        for kind in ("none", "int8", "int4"):
            q = m[kind]
            out.append(f"| {m['model']}, {m['parameters'] / 1e6:.1f}M params | {kind} | {q['weight_bytes'] / 1e6:.2f} | "
                       f"{f(full / q['weight_bytes'])} | {f(q['tokens_per_s'], 1)} | {f(q['mean_loglik'], 4)} | "
                       f"{q['kl_from_full']:.2e} |")
    out += ["", "On a CPU, bitsandbytes dequantizes each weight for every matmul, so low-bit layers save memory, "
            "not time; on CUDA its kernels are the fast path. The 39M and ~100M llamas are randomly initialised "
            "(nothing can be downloaded; they do not train in a benchmark's time on 2 cores), so their log-likelihoods "
            "sit near -ln(vocabulary); the KL is their quality figure.", "", f"Command: `{r['command']}`"]
    return out


def generation_section(rows) -> list[str]:
    rows = [r for r in rows if r is not None]
    if not rows:
        return ["*Not measured in this run.*"]
    sampler = ("`Actor.generate`: the compacting decode loop (`generation.backend: compact`)" if all("commit" in r for r in rows)
               else "Hugging Face `generate` through `Actor.generate`: measured before the compacting decode made "
                    "the makers decode with their own loop")
    out = [f"The makers' sampler ({sampler}, sampling) against a lower bound "
           "of bare forward passes of the same model: one prefill, then one cached decode step per token. Every "
           "response runs to the full length on both sides; best of 3 after a warm-up, one process.", "",
           "| model | parameters | batch × new tokens | threads | forward bound tok/s | generate tok/s | "
           "generate ÷ bound |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        w = r["workload"]
        out.append(f"| {w['model']} | {w['parameters'] / 1e6:.1f}M | {w['batch']} × {w['new_tokens']} | {w['threads']} | "
                   f"{f(r['forward_bound_tokens_per_s'], 0)} | {f(r['generate_tokens_per_s'], 0)} | "
                   f"**{f(r['generate_fraction_of_bound'])}** |")
    out += ["", "Commands: " + ", ".join(f"`{r['command']}`" for r in rows)]
    return out


def efficiency_section(r) -> list[str]:
    """benchmarks.bench_efficiency's result: core-seconds per sample with and without the compacting decode
    and packed updates, per stage, and the fraction of the work left."""
    if r is None or "settings" not in r:
        return ["*Not measured in this run* (`python -m benchmarks.bench_efficiency`)."]
    s, o = r["settings"], r["settings_overrides"]
    cpu = r.get("cpu")
    kind = (("native bf16: " + ", ".join(x for x in cpu["flags"] if "bf16" in x)) if cpu["native_bf16"] else
            "no native bf16: " + (", ".join(x for x in cpu["flags"] if x.startswith("avx")) or "no AVX")) if cpu else ""
    box = f" on {cpu['model']} ({kind}; boxes of one kind differ ~2x)" if cpu else ""
    out = [f"The PPO job's stages alone (as in the table above), {r['repeats']} interleaved rounds of {r['steps']} "
           f"steps each, medians, measured {r.get('measured_at', '?')}{box}; core-seconds per sample:", "",
           "| setting | overrides | maker stage (generate, reference, reward, values) | training | total | rounds |",
           "|---|---|---|---|---|---|"]
    for name in ("baseline", "efficient"):
        if name in s:
            out.append(f"| {name} | `{' '.join(o[name])}` | {f(s[name]['generation'], 4)} | "
                       f"{f(s[name]['training'], 4)} | {f(s[name]['total'], 4)} | {s[name]['rounds']} |")
    if "fraction_of_baseline" in r:
        out += ["", f"Work left: **{f(r['fraction_of_baseline'])}** of the baseline's core-seconds per sample "
                f"(maker stage {f(r['generation_fraction'])}, training {f(r['training_fraction'])}); target ≤ 0.75. "
                "The compacting decode saves, in the decode alone, what rows that end before their batch's longest "
                "would have cost; packing saves the padding of micro-batches whose prompts or responses differ in "
                "length. Neither saves anything where every row has the same prompt length and runs to "
                "max_new_tokens. The two settings sample with different streams (compact: one seeded stream per "
                "row), so their responses are not the same tokens."]
    if "best_case_fraction" in r:
        out += ["", f"What there was to cut, from the baseline's own batches: rows that had ended took "
                f"{f(100 * r['finished_row_fraction'], 1)}% of its decode's row-steps and padding "
                f"{f(100 * r['padding_fraction'], 1)}% of the positions it trained on, so if both cost nothing and "
                f"the rest of the work stayed as it was, **{f(r['best_case_fraction'])}** of the baseline would be "
                "left: an estimate of the least the two can leave (coati_ray/experience/waste.py says where it leans "
                "each way). A fraction well below it needs a workload whose lengths vary more."]
    out += ["", f"Command: `{r['command']}`"]
    return out


def limit_section(r) -> list[str]:
    """benchmarks.bench_trl's roofline (benchmarks/roofline.py): the work one sample needs, the machine's limit
    measured in the same run, and each side's samples/s as a fraction of it."""
    rows = {a: r[a] for a in ("grpo", "ppo") if r and isinstance(r.get(a), dict)}
    if not rows:
        return ["*Not measured in this run* (`python -m benchmarks.bench_trl --workload medium`)."]
    any_row = next(iter(rows.values()))
    m = any_row["machine"]
    out = [f"Measured {r.get('measured_at', '?')} in the run of section 1's medium row, on {m['cores']} cores: the "
           f"fastest fp32 matmul through torch {f(any_row['machine_gflops'], 0)} GFLOP/s (of "
           + ", ".join(f"{k} {f(v, 0)}" for k, v in m["matmul_gflops"].items())
           + f"), a large copy {f(any_row['machine_bandwidth_gbps'], 1)} GB/s. What is counted: "
           "`benchmarks/roofline.py` (2·N FLOPs per real token of a forward, 6·N of a trained one; "
           "decode bound by the weights and keys/values it reads).", "",
           "| algorithm | GFLOP per sample (passes) | limit samples/s | ours samples/s (config) | ours fraction | "
           "TRL samples/s (config) | TRL fraction |", "|---|---|---|---|---|---|---|"]
    for algo, row in rows.items():
        passes = ", ".join(f"{k} {f(v, 2)}" for k, v in row["passes_gflop"].items())
        out.append(f"| {algo} | {f(row['useful_gflop_per_sample'], 2)} ({passes}) | {f(row['limit_samples_per_s'])} | "
                   f"{f(row['ours_samples_per_s'])} ({row.get('ours_config')}) | **{f(row['ours_fraction'])}** | "
                   f"{f(row['trl_samples_per_s'])} ({row.get('trl_config')}) | {f(row['trl_fraction'])} |")
    out += ["", "Goal: GRPO ≥ 0.8 and PPO ≥ 0.7 of the limit.", "", f"Command: `{r.get('command', '?')}`"]
    return out


def write() -> str:
    m = load("machine") or machine()  # the box the benchmarks ran on, not the one writing the report
    v = load("versions") or versions("torch", "transformers", "ray", "colossalai", "peft", "datasets")
    lines = ["# Benchmark results", "",
             f"Written from [`RESULTS.json`](RESULTS.json) on {time.strftime('%Y-%m-%d %H:%M')}: `make bench` measures "
             "every section, `make soak` the soak alone; each section says when it was measured.", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']}, Python {m['python']}. "
             "The GPU figures (section 6) come from a GPU machine, named there.", "",
             "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()), "",
             "## 1. Against TRL's PPO trainer", "", "### Tiny workload", "", *trl_section(load("vs_trl")), "",
             "### Medium workload (39M llama, 64 new tokens)", "", *trl_section(load("vs_trl_medium")), "",
             "### The machine's limit (medium workload)", "", *limit_section(load("limit_medium")), "",
             "## 2. Pipeline efficiency and maker scaling", "", "### Tiny workload (4 x 128 llama, 16 new tokens)", "",
             *pipeline_section(load("pipeline")), "", "### Medium workload (10 x 512 llama, 39M parameters, 64 new tokens)", "",
             *pipeline_section(load("pipeline_medium")), "",
             "### Work per sample: the compacting decode and packed updates (medium workload)", "",
             *efficiency_section(load("efficiency_medium")), "",
             "## 3. Weight sync", "", *sync_section(load("weight_sync")), "",
             "## 4. Soak (reliability)", "", *soak_section(load("soak")), "",
             "## 5. Quantized inference (`launch.generate --quantize`)", "", *quantize_section(load("quantize")), "",
             "## 6. GPU", "", *gpu_section(load("gpu")), "", *gpu_issue_lines(load),
             "## 7. Generation against plain forward passes", "",
             *generation_section([load("generation"), load("generation_medium")]), ""]
    with open(PATH, "w") as fh:
        fh.write("\n".join(lines))
    print(f"[bench] wrote {PATH}")
    return PATH


if __name__ == "__main__":
    write()
