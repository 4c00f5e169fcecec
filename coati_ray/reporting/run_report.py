"""Any run directory (a stage's, or a pipeline's) -> PNG plots and a markdown report.

    python -m launch.report runs/demo          # a pipeline: each stage, then the pipeline report
    python -m launch.report runs/ppo_tiny      # one stage

Works from metrics.jsonl, summary.json and config.yaml only, so it also reports on a run that is
still going or was killed.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from coati_ray.reporting.curves import plot_panels, read_metrics, series

CURVE_PANELS = [
    ("loss", ["loss", "eval/loss"]),
    ("pairwise accuracy (RM)", ["acc", "eval/acc"]),
    ("held-out gold score", ["eval/gold_score"]),
    ("reward-model score", ["reward", "eval/reward"]),
    ("KL to the initial policy", ["kl", "eval/kl_to_initial"]),
    ("PPO losses", ["actor/loss", "critic/loss"]),
    ("learning rate", ["lr", "actor/lr", "critic/lr"]),
]
THROUGHPUT_PANELS = [
    ("samples / s", ["throughput/samples_per_s"]),
    ("tokens / s", ["throughput/generated_tokens_per_s", "throughput/actor_tokens_per_s",
                    "throughput/critic_tokens_per_s", "throughput/tokens_per_s"]),
]
# The parts of one PPO step, in pipeline order (the step's wall time is timing/step).
TIMING_PARTS = ["timing/generate", "timing/ref", "timing/reward", "timing/values", "timing/update_actor",
                "timing/update_critic", "timing/sync"]


def mean_of(records: list[dict], key: str) -> Optional[float]:
    values = series(records, key)[1]
    return sum(values) / len(values) if values else None


def plot_timing(records: list[dict], path: str) -> Optional[str]:
    """One stacked bar: the mean seconds per step of each stage of the step, beside the step's wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [(k.split("/", 1)[1], mean_of(records, k)) for k in TIMING_PARTS]
    parts = [(name, v) for name, v in parts if v is not None]
    step = mean_of(records, "timing/step")
    if not parts:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bottom = 0.0
    for name, value in parts:
        ax.bar(["stages (sum)"], [value], bottom=bottom, label=f"{name} {value:.3f}s")
        bottom += value
    if step is not None:
        ax.bar(["step wall time"], [step], color="grey", label=f"step {step:.3f}s")
    ax.set_ylabel("seconds per step (mean)")
    ax.set_title("where a step's time goes (generate/ref/reward/values: per maker batch; groups overlap)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def stage_report(run_dir: str) -> dict[str, Optional[str]]:
    """plots/{curves,timing,throughput}.png and report.md for one stage's run directory."""
    records = read_metrics(run_dir)
    plots = os.path.join(run_dir, "plots")
    name = os.path.basename(os.path.normpath(run_dir))
    paths = {
        "curves": plot_panels(records, CURVE_PANELS, os.path.join(plots, "curves.png"), f"{name}: curves"),
        "throughput": plot_panels(records, THROUGHPUT_PANELS, os.path.join(plots, "throughput.png"),
                                  f"{name}: throughput"),
    }
    os.makedirs(plots, exist_ok=True)
    paths["timing"] = plot_timing(records, os.path.join(plots, "timing.png"))
    summary = read_json(os.path.join(run_dir, "summary.json"))
    md = [f"# Run report: `{run_dir}`", "", f"{len(records)} metric records, last step "
          f"{max((r.get('step', 0) for r in records), default=0)}.", ""]
    if summary:
        md += ["## Summary", "", "| key | value |", "|---|---|"]
        md += [f"| `{k}` | {_fmt(v)} |" for k, v in summary.items() if not isinstance(v, (dict, list))]
        md.append("")
    timing = [(k, mean_of(records, k)) for k in TIMING_PARTS + ["timing/step"]]
    timing = [(k, v) for k, v in timing if v is not None]
    if timing:
        md += ["## Timing (mean seconds per step)", "", "| stage | seconds |", "|---|---|"]
        md += [f"| `{k}` | {v:.4f} |" for k, v in timing]
        md.append("")
    for key, title in (("curves", "Curves"), ("timing", "Timing breakdown"), ("throughput", "Throughput")):
        if paths[key]:
            md += [f"## {title}", "", f"![{title}]({os.path.relpath(paths[key], run_dir)})", ""]
    config = os.path.join(run_dir, "config.yaml")
    if os.path.isfile(config):
        md += ["## Config", "", "```yaml", open(config, encoding="utf-8").read().rstrip(), "```", ""]
    paths["report_md"] = os.path.join(run_dir, "report.md")
    with open(paths["report_md"], "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    return paths


def read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
