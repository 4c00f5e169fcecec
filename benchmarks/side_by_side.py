"""The plumbing of a side by side a sceptic accepts, free of any timing (tests/test_side_by_side.py):
which configurations each side runs, the interleaved order of the runs, one rule for a step's time on
both sides, and the ratio with its spread.

Rules, the same for both sides:
- a step's time is the wall-clock between consecutive step ends (everything a trainer or our driver does
  per step is inside it), the first `WARMUP_STEPS` steps are warm-up;
- each side runs every one of its configurations once per round, the sides alternating inside a round
  and the side that starts alternating from round to round;
- a side's best configuration is the one with the highest median samples/s over the rounds; the ratio is
  the median over rounds of (ours best ÷ theirs best) within the same round, its range the min and max.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Iterable, Optional

WARMUP_STEPS = 2
MIN_STEADY_STEPS = 10


@dataclass(frozen=True)
class TrlLayout:
    """How TRL runs: `processes` (accelerate, gloo on CPU) of `threads` torch threads each, in `precision`."""

    processes: int
    threads: int
    precision: str = "fp32"

    @property
    def name(self) -> str:
        return f"{self.processes}p x {self.threads}t {self.precision}"


def trl_layouts(cores: int, native_bf16: bool) -> list[TrlLayout]:
    """Every layout TRL is tried in on a CPU of `cores` cores: one process with all cores, one process with one
    thread, one process per core with one thread each; in fp32 (what ours trains in), and, where the CPU has bf16
    instructions, the first again in bf16 (labelled: a different precision, recorded but never the ratio's)."""
    layouts = [TrlLayout(1, cores), TrlLayout(1, 1)]
    if cores > 1:
        layouts.append(TrlLayout(cores, 1))
    if native_bf16:
        layouts.append(TrlLayout(1, cores, "bf16"))
    return list(dict.fromkeys(layouts))


def cpu_has_native_bf16(flags: Optional[Iterable[str]] = None) -> bool:
    """Whether the CPU computes bf16 in hardware (avx512_bf16 or amx_bf16); without them torch emulates it."""
    if flags is None:
        flags = cpu_flags()
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []


def interleave(ours: list[str], theirs: list[str], repeats: int) -> list[tuple[str, str, int]]:
    """The run order as (side, configuration, round): in each round the sides alternate configuration by
    configuration (the longer list finishes alone), ours first in even rounds and theirs first in odd ones, so
    that neither side always runs on a machine just warmed (or slowed) by the other."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    order = []
    for rnd in range(repeats):
        first, second = (("ours", ours), ("trl", theirs)) if rnd % 2 == 0 else (("trl", theirs), ("ours", ours))
        for i in range(max(len(ours), len(theirs))):
            for side, configs in (first, second):
                if i < len(configs):
                    order.append((side, configs[i], rnd))
    return order


def steady_step_seconds(step_ends: list[float], warmup: int = WARMUP_STEPS) -> list[float]:
    """step_ends: [n] clock readings at the end of steps 1..n -> [n - warmup] seconds of steps warmup+1..n,
    each the time between its end and the previous step's end."""
    if warmup < 1:
        raise ValueError("warmup must be at least 1: the first step has no previous step end")
    kept = step_ends[warmup - 1:]
    return [b - a for a, b in zip(kept, kept[1:])]


def run_rate(step_ends: list[float], samples_per_step: int, warmup: int = WARMUP_STEPS) -> dict:
    """One run's steady rate from its step ends, by the same rule on both sides."""
    seconds = steady_step_seconds(step_ends, warmup)
    if not seconds:
        raise ValueError(f"{len(step_ends)} step ends leave no steady step after {warmup} warm-up steps")
    mean = sum(seconds) / len(seconds)
    return {"steady_steps": len(seconds), "step_seconds": mean, "samples_per_s": samples_per_step / mean,
            "step_seconds_min": min(seconds), "step_seconds_max": max(seconds)}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def config_ratio(runs: list[dict], ours: str, theirs: str) -> dict:
    """Our configuration `ours` against TRL's `theirs`, paired round by round: {ratio (median), ratio_range},
    None where no round has both."""
    rate = {}
    for r in runs:
        if "error" not in r and "samples_per_s" in r:
            rate[(r["side"], r["config"], r["round"])] = r["samples_per_s"]
    ratios = [rate[("ours", ours, rnd)] / rate[("trl", theirs, rnd)]
              for (side, config, rnd) in sorted(rate, key=lambda k: k[2])
              if side == "ours" and config == ours and ("trl", theirs, rnd) in rate]
    if not ratios:
        return {"ratio": None, "ratio_range": None}
    return {"ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)]}


def summarize(runs: list[dict], uncounted: Iterable[str] = ()) -> dict:
    """runs: {side, config, round, samples_per_s} (a failed run has "error" instead of samples_per_s) ->
    per side and configuration the spread of samples/s, each side's best configuration (never one named in
    `uncounted`: recorded, but in another precision than ours), and the ratio of ours best to theirs best
    paired round by round (its median and range)."""
    uncounted = set(uncounted)
    by = {}
    for r in runs:
        if "error" not in r and "samples_per_s" in r:
            by.setdefault(r["side"], {}).setdefault(r["config"], {})[r["round"]] = r["samples_per_s"]
    configs = {side: {c: spread(list(rounds.values())) for c, rounds in cs.items()} for side, cs in by.items()}
    out = {"configs": configs, "failed": [{k: r[k] for k in ("side", "config", "round", "error")}
                                          for r in runs if "error" in r]}
    if "ours" not in by or "trl" not in by:
        return {**out, "ratio": None, "ratio_range": None}
    eligible = {side: [c for c in cs if c not in uncounted] for side, cs in configs.items()}
    if not eligible["ours"] or not eligible["trl"]:
        return {**out, "ratio": None, "ratio_range": None}
    best = {side: max(cs, key=lambda c: (configs[side][c]["median"], c)) for side, cs in eligible.items()}
    ours, theirs = by["ours"][best["ours"]], by["trl"][best["trl"]]
    ratios = [ours[r] / theirs[r] for r in sorted(ours) if r in theirs]
    if not ratios:
        return {**out, "best": best, "ratio": None, "ratio_range": None}
    return {**out, "best": best, "ratios": ratios, "ratio": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)]}

