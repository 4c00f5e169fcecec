"""metrics.jsonl -> series -> PNG line plots (matplotlib, headless)."""

from __future__ import annotations

import json
import os
from typing import Optional


def read_metrics(run_dir: str) -> list[dict]:
    """Every record of `run_dir/metrics.jsonl` ([] when the file is missing); bad lines are skipped."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a run killed mid-write leaves a partial last line
    return records


def series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of every record that has a numeric `key`, in step order."""
    points = sorted((r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)))
    return [p[0] for p in points], [p[1] for p in points]


def plot_panels(records: list[dict], panels: list[tuple[str, list[str]]], path: str,
                title: Optional[str] = None) -> Optional[str]:
    """One subplot per (title, keys) panel, each key a line against step; panels without data are left out.

    Returns the PNG path, or None when no panel had data.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [(t, [k for k in keys if series(records, k)[0]]) for t, keys in panels]
    present = [(t, keys) for t, keys in present if keys]
    if not present:
        return None
    fig, axes = plt.subplots(len(present), 1, figsize=(7, 2.6 * len(present)), squeeze=False)
    for ax, (panel_title, keys) in zip(axes[:, 0], present):
        for key in keys:
            xs, ys = series(records, key)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=key)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
