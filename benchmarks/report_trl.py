"""RESULTS.md sections 1 and 6: our PPO and GRPO side by side with TRL's (CPU, then GPU), from bench_trl's and
gpu_ppo's results (benchmarks/side_by_side.py is the protocol; benchmarks/report.py writes the whole file)."""

from __future__ import annotations

from benchmarks.common import f


def phase_rows(section: dict) -> list:
    """Seconds per phase of a step, the median over rounds of each side's best configuration (ours from the
    job's timing/*, TRL's from trl_grpo's timers: generate and reference forward, the rest as its update); a
    phase one side does not time is '—'."""
    import statistics

    best = section.get("summary", {}).get("best", {})
    sides = {}
    for side in ("ours", "trl"):
        rows = [r.get("timing") or {} for r in section.get("runs", [])
                if r.get("side") == side and r.get("config") == best.get(side) and r.get("timing")]
        if rows:
            sides[side] = {k: statistics.median(t.get(k, 0.0) for t in rows) for k in rows[0]}
    if not sides:
        return []
    phases = [k for k in ("generate", "ref", "reward", "values", "update_actor", "update_critic")
              if any(k in t for t in sides.values())]
    out = ["", "Seconds per step by phase (median over rounds; TRL's rest of the step counted as its update):", "",
           "| phase | ours | TRL |", "|---|---|---|"]
    for k in phases:
        out.append(f"| {k} | " + " | ".join(f"{sides[s][k]:.2f}" if s in sides and k in sides[s] else "—"
                                             for s in ("ours", "trl")) + " |")
    return out


def measured_when(algo_result: dict) -> str:
    """' (measured <date> at <commit>)' where bench_trl stamped one algorithm's rows on their own (an
    `--algos` run keeps the other algorithm's earlier rows)."""
    if "commit" not in algo_result:
        return ""
    return f" (measured {algo_result['measured_at']} at {algo_result['commit']})"


def cpu_note(run_cpu, section_cpu) -> str:
    """' (on another box than the run above, ...)' when a partial run's rows ran on another CPU than the section's
    full run (boxes differ ~2x: compare those rows with each other, not with the full run's); '' otherwise."""
    if not run_cpu or run_cpu == section_cpu:
        return ""
    kind = ("native bf16: " + ", ".join(x for x in run_cpu["flags"] if "bf16" in x) if run_cpu["native_bf16"]
            else "no native bf16")
    return f" (on another box than the run above, {kind}: compare these rows with each other only)"


def trl_section(r) -> list[str]:
    """Section 1 from bench_trl's result: the protocol, then for PPO and GRPO every configuration of each side
    (median and range over the rounds) and the median ratio with its range."""
    if r is None:
        return ["*Not measured in this run.*"]
    if "protocol" not in r:
        return [f"*Measured on {r.get('measured_at', '?')} by the earlier protocol (one run per side, TRL's PPO under "
                f"CPU bf16 autocast and decoding every row to the end, our step without the driver's work); its "
                f"ratios (PPO {f(r.get('ppo_ratio'))}×, GRPO {f(r.get('grpo_ratio'))}×) are superseded, not "
                "comparable: rerun `make bench`.*"]
    pr, w, cpu = r["protocol"], r["workload"], r["cpu"]
    bf16 = ("the CPU has native bf16, so TRL is also tried in bf16 (recorded, never the ratio's: ours trains in fp32)"
            if cpu["native_bf16"] else "no native bf16 on this CPU (flags: " + (", ".join(cpu["flags"]) or "none")
            + "), so TRL runs in fp32 only, as ours does")
    out = [f"Protocol: {pr['repeats']} interleaved rounds; in each, every configuration of each side runs once "
           f"({pr['steps']} steps, the first {pr['warmup_steps']} warm-up), the sides alternating and the side that "
           "starts alternating from round to round. A step is the wall-clock between consecutive step ends on both "
           "sides (ours read in the driver's per-step callback, after everything the driver does per step; TRL's in "
           "its `on_step_end`). TRL (" + ", ".join(pr["trl_versions"]) + ") in fp32 explicitly, PPO stopping at EOS "
           f"as ours does, in each layout: {', '.join(pr['trl_layouts'])} (p = processes under `accelerate launch`, "
           f"t = torch threads each); {bf16}. Each side counts its best configuration (highest median); the ratio is "
           "ours ÷ TRL's within each round, its median and range over the rounds."
           + (f" Ours run in: {', '.join(pr['ours'])} (`--ours`)." if pr.get("ours") else ""), ""]
    if "ppo" in r:
        out += [f"**PPO**{measured_when(r['ppo'])}: `{w['model']}`, {w['rollout']} prompts per step, {w['new_tokens']} new tokens, generation "
                f"batches of {w['maker_batch']}, one PPO epoch over one mini-batch of {w['rollout']} in micro-batches "
                f"of {w['micro']}, actor, critic, reference and reward model on both sides.", "",
                *side_by_side_rows(r["ppo"], r.get("ppo_ratio"), r.get("ppo_ratio_range"), "ppo")]
    if "grpo" in r:
        g = r["grpo_workload"]
        out += ["", f"**GRPO**{measured_when(r['grpo'])} (`trl.GRPOTrainer` against ours): {g['rollout'] // g['group']} prompts × {g['group']} "
                f"samples per step, {g['new_tokens']} new tokens, the {g['reward']} as the reward, KL {g['kl_coef']} in "
                f"the loss, one update over all {g['rollout']} in micro-batches of {g['micro']}; no critic on either "
                "side.", "", *side_by_side_rows(r["grpo"], r.get("grpo_ratio"), r.get("grpo_ratio_range"), "grpo")]
    colocated = r.get("colocated") or {}
    run = colocated.get("run")
    if run and any(colocated.get(f"{a}_ratio") is not None for a in ("ppo", "grpo")):
        rp = run["protocol"]
        out += ["", f"**Colocated** (`placement: colocated`), measured in a run of its own ({run.get('measured_at', '?')}, "
                f"{rp['repeats']} round(s) of {rp['steps']} steps; ours: {', '.join(rp.get('ours', []))}; TRL: "
                f"{', '.join(rp['trl_layouts'])}), against TRL's best of that run:"]
        for algo in ("ppo", "grpo"):
            if algo in run and colocated.get(f"{algo}_ratio") is not None:
                where = cpu_note(run[algo].get("cpu") or run.get("cpu"), cpu)  # each algorithm's rows: their box
                out += ["", f"{algo.upper()}{where}:", "", *side_by_side_rows(run[algo], run.get(f"{algo}_ratio"),
                                                                      run.get(f"{algo}_ratio_range"), algo)]
                out += phase_rows(run[algo])
        out += ["", "Colocated against TRL: " + "; ".join(
            f"{a.upper()} **{f(colocated[f'{a}_ratio'])}×**" for a in ("ppo", "grpo")
            if colocated.get(f"{a}_ratio") is not None) + f" (target ≥ 1.25× for both). Command: `{run['command']}`"]
    elif any(colocated.get(f"{a}_ratio") is not None for a in ("ppo", "grpo")):
        out += ["", "**Colocated** (`placement: colocated`, our `colocated` rows above) against TRL's best, round by "
                "round: " + "; ".join(
                    f"{a.upper()} {f(colocated[f'{a}_ratio'])}× ({f(colocated[f'{a}_ratio_range'][0])}–"
                    f"{f(colocated[f'{a}_ratio_range'][1])})" for a in ("ppo", "grpo")
                    if colocated.get(f"{a}_ratio") is not None) + ". Target: ≥ 1.25× for both."]
    prev = r.get("previous")
    if "grpo" not in r:
        earlier = f" (the earlier protocol, already fp32 and stopping at EOS on both sides, gave {f(prev['grpo_ratio'])}×)" \
            if prev and prev.get("grpo_ratio") else ""
        out += ["", f"**GRPO**: not measured by this protocol at this size yet{earlier}; "
                "`python -m benchmarks.bench_trl --workload " + ("medium" if "medium" in r["command"] else "tiny")
                + " --algos grpo` measures it."]
    if prev and (prev.get("ppo_ratio") or prev.get("grpo_ratio")):
        now = f"{f(r.get('ppo_ratio'))}× and {f(r.get('grpo_ratio'))}×" if "grpo" in r else \
            f"PPO {f(r.get('ppo_ratio'))}× (GRPO not yet re-measured)"
        out += ["", f"What moved: the earlier protocol (measured {prev.get('measured_at')}) gave PPO "
                f"{f(prev.get('ppo_ratio'))}× and GRPO {f(prev.get('grpo_ratio'))}×, now {now}. Then TRL's PPO trained under CPU bf16 autocast (OnPolicyConfig's "
                "`bf16=True` default) on a CPU without bf16 instructions and decoded every row to the full length, "
                "each side ran once, TRL in one layout, and our step left out the driver's per-step work; its GRPO "
                "already ran fp32 and stopped at EOS, so only the timing rule, the layouts and the repeats differ "
                "there. Rates from another day may come from another box of this kind (they differ ~2×): compare "
                "the ratios, which each run takes on one box."]
        for algo in ("ppo", "grpo"):
            cs = r.get(algo, {}).get("summary", {}).get("configs", {}).get("trl", {})
            best = r.get(algo, {}).get("summary", {}).get("best", {}).get("trl")
            single = next((c for c in cs if c.endswith("1p x 2t fp32")), None)
            if best and single and best != single:
                out.append(f"TRL's {algo.upper()} is fastest as {best.split(' ', 1)[1]}: "
                           f"{f(cs[best]['median'] / cs[single]['median'])}× its one-process, two-thread rate, "
                           "the only layout the earlier protocol tried.")
    out += ["", f"Command: `{r['command']}`"]
    return out


def side_by_side_rows(found: dict, ratio, ratio_range, algo: str) -> list[str]:
    from benchmarks.bench_trl import OURS_SETUPS

    s = found["summary"]
    best = s.get("best", {})
    out = ["| side | configuration | samples/s (median) | min–max | step (s, median) | rounds |",
           "|---|---|---|---|---|---|"]
    for side in ("ours", "trl"):
        for config, c in s["configs"].get(side, {}).items():
            steps = sorted(x["step_seconds"] for x in found["runs"]
                           if x["side"] == side and x["config"] == config and "step_seconds" in x)
            label = (f"sync ({OURS_SETUPS[algo]['sync']})" if config == "sync" else
                     f"async ({OURS_SETUPS[algo]['async']})" if config == "async" else config)
            if config in found.get("uncounted", []):
                label += ", not counted (another precision than ours)"
            name = "coati_ray" if side == "ours" else "TRL"
            mark = "**" if best.get(side) == config else ""
            out.append(f"| {mark}{name}{mark} | {label} | {mark}{f(c['median'])}{mark} | {f(c['min'])}–{f(c['max'])} | "
                       f"{f(steps[len(steps) // 2], 3) if steps else 'n/a'} | {c['n']} |")
    for x in s.get("failed", []):
        out.append(f"| {'coati_ray' if x['side'] == 'ours' else 'TRL'} | {x['config']} (round {x['round'] + 1}) | "
                   f"failed: {x['error']} | | | |")
    if ratio is None:
        out += ["", "No ratio: a side has no successful run."]
    else:
        out += ["", f"Ours ÷ TRL: **{f(ratio)}×** ({f(ratio_range[0])}–{f(ratio_range[1])}) over "
                f"{len(s['ratios'])} rounds, our {best['ours']} against TRL {best['trl']}."]
    return out


def gpu_section(r) -> list[str]:
    if r is None or "rows" not in r:  # (the GPU issue's phases alone: benchmarks/gpu_results.py writes them)
        return ["*The sweep was not measured: `make gpu-check` runs on a GPU machine (README, GPU).*"]
    # gpu_ppo writes rows, gpu and command; the GPU session's notes (stack, tests, what it met) are added by hand
    v = r.get("versions", {})
    out = [f"Measured {r['measured_at']} on {r.get('device') or r.get('gpu')} by `make gpu-check` ({r['command']}). "
           "Stack: " + (", ".join(f"{k} {val}" for k, val in v.items()) or "not recorded") + ".", "",
           f"Workload: {r.get('workload', 'see benchmarks/gpu_ppo.py')}.", "",
           "| model | strategy | step (s) | samples/s/GPU | generated tok/s | TFLOP/s maker / actor / critic | "
           "peak GiB maker / actor / critic | sync (s) | sync GB/s | vs TRL samples/s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    def label(x):  # one line per configuration: placement, transport and the run's tag when not the defaults
        extra = [x[k] for k in ("placement", "transport") if x.get(k) not in (None, "separate", "object_store", "none")]
        return " ".join([x["strategy"], *extra] + ([f"[{x['tag']}]"] if x.get("tag") else []))

    groups = {}  # (model, configuration) -> its successful rows, one per round
    for x in r["rows"]:
        if "error" in x:
            out.append(f"| {x['model']} | {label(x)} | {x['error'][:90]} |||||||")
        else:
            groups.setdefault((x["model"], label(x)), []).append(x)

    def med(rows, key):
        values = sorted(x[key] for x in rows if x.get(key) is not None)
        return values[len(values) // 2] if values else None

    def trl_precision(x):  # rows from before the precision was said ran under OnPolicyConfig's bf16=True default
        return x.get("precision") or ("bf16" if x["strategy"] == "trl" else "fp32" if x["strategy"] == "ddp" else "bf16")

    trl = {(m, trl_precision(rows[0])): rows for (m, st), rows in groups.items() if st.startswith("trl")}
    for (m, st), rows in groups.items():
        if st.startswith("trl"):
            continue
        x, t = rows[0], trl.get((m, trl_precision(rows[0])))
        ratio = (f"{med(rows, 'samples_per_s_per_gpu') / med(t, 'samples_per_s'):.2f}× ({trl_precision(rows[0])})"
                 if t else "—")
        out.append(f"| {m} | {st} | {f(med(rows, 'step_seconds'))} | {f(med(rows, 'samples_per_s_per_gpu'), 1)} | "
                   f"{f(med(rows, 'generated_tokens_per_s'), 0)} | {f(med(rows, 'tflops_makers'))} / "
                   f"{f(med(rows, 'tflops_actor_trainer'))} / {f(med(rows, 'tflops_critic_trainer'))} | "
                   f"{f(med(rows, 'peak_gb_makers'))} / {f(med(rows, 'peak_gb_actor'))} / {f(med(rows, 'peak_gb_critic'))}"
                   f" | {f(med(rows, 'sync_seconds'))} | {f(med(rows, 'sync_gb_per_s'))} | {ratio} |")
    for (m, precision), rows in trl.items():
        label = (f"TRL {rows[0]['trl']} PPOTrainer ({precision})" if rows[0].get("precision") else
                 f"TRL {rows[0]['trl']} PPOTrainer (bf16 autocast: OnPolicyConfig's default, before the precision "
                 "was said; no stop token)")
        out.append(f"| {m} | {label} | {f(med(rows, 'step_seconds'))} | {f(med(rows, 'samples_per_s'), 1)} | "
                   f"{f(med(rows, 'generated_tokens_per_s'), 0)} | | | | | 1.00× |")
    if any("round" in x for x in r["rows"]):
        out += ["", "Medians over the interleaved rounds; a step is the time between consecutive step ends on both "
                "sides; ratios compare equal precisions (ddp with TRL fp32, ZeRO-2/Gemini with TRL bf16)."]
    else:
        out += ["", "One run per row, measured before the fair protocol (benchmarks/side_by_side.py): TRL's row ran in "
                "bf16 autocast, so the fp32 ddp row's ratio is not like for like; the next GPU run replaces them."]
    if "tests_summary" in r:
        out += ["", f"tests/gpu: {r['tests_summary']}. NCCL with two ranks on one GPU: {r['nccl_two_ranks_one_gpu']}."]
    for title, key in (("Incompatibilities met:", "incompatibilities"), ("Bugs found on the GPU and fixed:", "bugs_fixed"),
                       ("Open:", "open")):
        if r.get(key):
            out += ["", title, *[f"- {x}" for x in r[key]]]
    return out
