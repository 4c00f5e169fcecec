"""What the GPU issue's device calls brought back, into RESULTS.json and RESULTS.md.

    python -m benchmarks.gpu_results FOLDER [FOLDER ...]   # the device tool's files_at of each call, or runs/gpu_check

Each phase of scripts/gpu/check.sh writes its JSON to $OUT; RESULTS.json on the GPU machine is lost with the
machine. This reads what came back (one folder per device call; a later folder wins): every phase file becomes
its own section (`gpu_diagnose_lr0`, `gpu_colocated`, ...; a phase not run leaves its section as it was), the GPU
and versions come from `versions.txt`, and the GPU issue's figures go into the `gpu` section under
`colocated_vs_trl`, `gemini_1p3b_tokens_per_s` (with `gemini_1p3b_diagnosis`, the per-step evidence) and
`generate_tokens_per_s`. The bench phase's `gpu.json` replaces the sweep's rows in `gpu`, keeping the notes written
there by hand. RESULTS.md is then written again; section 6 shows them (`lines`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

# check.sh's --out file -> its gpu_ppo --section (tests/test_side_by_side.py holds the two together)
PHASES = {"diagnose_gemini_lr0.json": "gpu_diagnose_lr0", "diagnose_gemini_lr1e-6.json": "gpu_diagnose_lr1e-6",
          "diagnose_zero2.json": "gpu_diagnose_zero2", "colocated.json": "gpu_colocated",
          "colocated_separate.json": "gpu_separate", "colocated_offload.json": "gpu_offload",
          "generate.json": "gpu_generate"}
SWEEP_FILE = "gpu.json"  # the bench phase's: the sweep's own `gpu` section (its hand-written notes kept)
HEADLINE = ("colocated_vs_trl", "gemini_1p3b_tokens_per_s", "gemini_1p3b_diagnosis", "generate_tokens_per_s")
DIAGNOSES = ("gpu_diagnose_lr0", "gpu_diagnose_lr1e-6", "gpu_diagnose_zero2")
SERIES = (("response length", "response_length"), ("KL", "kl"), ("actor grad norm", "actor/grad_norm"),
          ("log-prob gap", "behaviour/log_ratio_abs_mean"),
          ("max abs Δ trainer-maker", "sync/max_abs_delta"), ("max abs Δ since the step before", "actor/max_abs_update"))


def read_versions(text: str) -> dict:
    """scripts/gpu/versions.py's output -> {"device": GPU name, "versions": {package: version}}."""
    out = {"versions": {}}
    for line in text.splitlines():
        if line.startswith("gpu:"):
            gpu, *rest = line[4:].split("|")
            out["device"] = gpu.strip()
            words = " ".join(rest).split()
            out["versions"].update(dict(zip(words[::2], words[1::2])))
        elif len(line.split()) == 2 and not line.startswith("import"):
            name, version = line.split()
            out["versions"][name] = version
    return out


def read_folders(folders: list) -> dict:
    """{section: the phase's JSON} of the phase files found in `folders`, later folders winning; each names the GPU
    and stack of its call's versions.txt (or of the latest call before it that ran the versions phase)."""
    sections, stack = {}, {}
    for folder in folders:
        if os.path.isfile(os.path.join(folder, "versions.txt")):
            with open(os.path.join(folder, "versions.txt")) as fh:
                stack = read_versions(fh.read())
        for name, section in [*PHASES.items(), (SWEEP_FILE, "gpu")]:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                with open(path) as fh:
                    sections[section] = {**stack, **json.load(fh)}
    return sections


def _ok(rows: list) -> list:
    return [r for r in rows if "error" not in r]


def _median(rows: list, key: str):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def _ratio(ours: list, theirs: list):
    a, b = _median(ours, "samples_per_s_per_gpu"), _median(theirs, "samples_per_s")
    return a / b if a and b else None


def headline(sections: dict) -> dict:
    """The GPU issue's keys of the `gpu` section, from the phase sections present (a phase not run: no key)."""
    out = {}
    colocated = _ok(sections.get("gpu_colocated", {}).get("rows", []))
    ours = [r for r in colocated if r.get("placement") == "colocated"]
    trl = [r for r in colocated if str(r.get("strategy", "")).startswith("trl")]
    if ours and trl:
        out["colocated_vs_trl"] = {
            "ratio": _ratio(ours, trl), "target": 1.5, "model": ours[0]["model"], "strategy": ours[0]["strategy"],
            "trl_precision": trl[0].get("precision"), "ours_step_seconds": _median(ours, "step_seconds"),
            "trl_step_seconds": _median(trl, "step_seconds")}
        separate = _ok(sections.get("gpu_separate", {}).get("rows", []))
        if separate:  # another device call: the same kind of GPU, not necessarily the same machine
            out["colocated_vs_trl"]["separate"] = {r["transport"]: {
                "vs_trl": _ratio([r], trl), "step_seconds": r["step_seconds"], "sync_seconds": r["sync_seconds"],
                "colocated_vs_this": _median(ours, "samples_per_s_per_gpu") / r["samples_per_s_per_gpu"]}
                for r in separate}
    tokens, diagnosis = {}, {}
    for section in DIAGNOSES:  # a run cut short or failed part way: its steps, no rate
        for r in sections.get(section, {}).get("rows", []):
            label = f"{r['strategy']} lr {r.get('tag', '').removeprefix('lr') or '?'}"
            if "error" not in r:
                tokens[label] = r["generated_tokens_per_s"]
            if r.get("per_step"):
                diagnosis[label] = {key: [s.get(key) for s in r["per_step"]] for _, key in SERIES}
                if "error" in r:
                    diagnosis[label]["error"] = r["error"]
    if tokens:
        out["gemini_1p3b_tokens_per_s"] = tokens
    if diagnosis:
        out["gemini_1p3b_diagnosis"] = diagnosis
    generated = {}
    for r in _ok(sections.get("gpu_generate", {}).get("rows", [])):
        generated.setdefault(r["model"], {}).setdefault(str(r["batch"]), {})[r["backend"]] = r["tokens_per_s"]
    if generated:
        out["generate_tokens_per_s"] = generated
    return out


def _cell(text: str, limit: int = 90) -> str:
    """Free text (an error) inside a table cell: a `|` or a line break would end the cell or the row."""
    return " ".join(str(text)[:limit].split()).replace("|", "\\|")


def _g(x, digits=3) -> str:
    return "—" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def lines(load) -> list[str]:
    """RESULTS.md section 6's part for the GPU issue's runs (`load(section)` reads RESULTS.json); [] before any ran."""
    out, top = [], load("gpu") or {}
    if any(k in top for k in HEADLINE):
        out += ["### The GPU issue's figures", ""]
        ran = [r for s in PHASES.values() if (r := load(s)) and r.get("device")]
        if ran:
            v = ran[0].get("versions", {})
            out += [f"`make gpu-check` phases ({', '.join(sorted(s for s in PHASES.values() if load(s)))}) on "
                    f"{ran[0]['device']}, measured {min(r['measured_at'] for r in ran)[:10]}; stack: "
                    + (", ".join(f"{k} {val}" for k, val in v.items()) or "not recorded") + ".", ""]
        c = top.get("colocated_vs_trl")
        if c:
            out.append(f"- Colocated against TRL ({c['model']}, {c['strategy']}, TRL {c['trl_precision']}): "
                       f"{_g(c['ratio'])}× samples/s (target {c['target']}×); step {_g(c['ours_step_seconds'])} s "
                       f"against {_g(c['trl_step_seconds'])} s.")
        if top.get("gemini_1p3b_tokens_per_s"):
            out.append("- Generated tokens/s at opt-1.3b: " + ", ".join(
                f"{k} {_g(v)}" for k, v in top["gemini_1p3b_tokens_per_s"].items()) + ".")
        if out[-1]:
            out.append("")
    diagnoses = [(s, r) for s in DIAGNOSES for r in (load(s) or {}).get("rows", []) if r.get("per_step")]
    if diagnoses:
        out += ["### Gemini at opt-1.3b: the diagnosis", "",
                "Per step, PPO at the learning rate named (ZeRO-2 the control); `algorithm.behaviour_correction: measure`.",
                "", "| run | step | " + " | ".join(name for name, _ in SERIES) + " |",
                "|---|---|" + "---|" * len(SERIES)]
        for _, r in diagnoses:
            for i, s in enumerate(r.get("per_step", []), 1):
                out.append(f"| {r['strategy']} [{r.get('tag', '')}] | {i} | "
                           + " | ".join(_g(s.get(key)) for _, key in SERIES) + " |")
        out.append("")
        out += [f"- {r['strategy']} [{r.get('tag', '')}] did not finish: {_cell(r['error'], 300)}"
                for _, r in diagnoses if "error" in r] + ([""] if any("error" in r for _, r in diagnoses) else [])
    runs = [r for s in ("gpu_colocated", "gpu_separate", "gpu_offload") for r in (load(s) or {}).get("rows", [])]
    if runs:
        trl = [r for r in _ok(runs) if str(r.get("strategy", "")).startswith("trl")]
        out += ["### Colocated and separate at opt-1.3b against TRL", "",
                "| configuration | step (s) | samples/s | generated tok/s | sync (s) | MFU maker / actor / critic | vs TRL |",
                "|---|---|---|---|---|---|---|"]
        for r in runs:
            name = " ".join(str(r[k]) for k in ("strategy", "placement", "transport") if r.get(k) not in (None, "none"))
            name += f" [{r['tag']}]" if r.get("tag") else ""
            if "error" in r:
                out.append(f"| {name} | {_cell(r['error'])} ||||||")
                continue
            mfu = " / ".join(_g(r.get(f"mfu_{g}")) for g in ("makers", "actor_trainer", "critic_trainer"))
            vs = "1.00×" if r in trl else (f"{_ratio([r], trl):.2f}×" if trl else "—")
            out.append(f"| {name} | {_g(r.get('step_seconds'))} | {_g(r.get('samples_per_s_per_gpu'))} | "
                       f"{_g(r.get('generated_tokens_per_s'))} | {_g(r.get('sync_seconds'))} | {mfu} | {vs} |")
        out.append("")
    generate = load("gpu_generate")
    if generate and generate.get("rows"):
        out += ["### Generation backends", "", f"On {generate.get('device')}, {generate.get('command', '')}.", "",
                "| model | batch | backend | tokens/s | first call (s) | greedy tokens equal to hf's |",
                "|---|---|---|---|---|---|"]
        for r in generate["rows"]:
            if "error" in r:
                out.append(f"| {r['model']} | {r['batch']} | {r['backend']} | {_cell(r['error'])} |||")
            else:
                out.append(f"| {r['model']} | {r['batch']} | {r['backend']} | {r['tokens_per_s']:.0f} | "
                           f"{r['first_call_seconds']:.2f} | {'yes' if r['same_tokens_as_first_backend'] else 'NO'} |")
        out.append("")
    return out


def merge(folders: list) -> dict:
    """Write every phase found into its RESULTS.json section and the headline into `gpu`; returns the headline."""
    from benchmarks import common

    sections = read_folders(folders)
    if not sections:
        raise SystemExit(f"gpu_results: no phase file ({', '.join([*PHASES, SWEEP_FILE])}) in {', '.join(folders)}")
    for section, result in sections.items():  # the file's measured_at (when it ran) wins over save's (now)
        if section == "gpu":
            common.update_section("gpu", result)
        else:
            common.save(section, result, stamp_machine=False)
    top = headline({s: r for s in PHASES.values() if (r := common.load(s))})  # with phases merged before
    common.update_section("gpu", top, replaces=HEADLINE)  # a figure the phases no longer give is not kept
    return top


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="the folders of the device calls' files, oldest first")
    args = p.parse_args(argv)
    print(json.dumps(merge(args.folders), indent=2))
    from benchmarks.report import write

    write()


if __name__ == "__main__":
    main()
