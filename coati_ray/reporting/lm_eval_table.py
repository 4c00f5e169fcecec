"""The pipeline report's lm-eval table: each task's metrics on the base model and after each evaluated stage,
side by side, with the change from the first column to the last."""

from __future__ import annotations

from typing import Optional

COLUMN = {"base": "base", "expand_vocab": "after expand_vocab", "pretrain": "after pretrain", "sft": "after SFT",
          "ppo": "after PPO"}


def table_rows(by_stage: dict) -> tuple[list[str], list[list]]:
    """(stage labels in order, rows [task, metric, value per stage (None when absent), change last - first])."""
    from coati_ray.evaluation.lm_eval_run import headline_metrics

    labels = list(by_stage)
    keys = []
    for results in by_stage.values():
        for task, metric, _, _ in headline_metrics(results):
            if (task, metric) not in keys:
                keys.append((task, metric))
    rows = []
    for task, metric in keys:
        values = [by_stage[label].get(task, {}).get(metric) for label in labels]
        present = [v for v in values if v is not None]
        change = present[-1] - present[0] if len(present) >= 2 else None
        rows.append([task, metric, *values, change])
    return labels, rows


def _fmt(value: Optional[float], signed: bool = False) -> str:
    return "-" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")


def markdown_table(by_stage: dict) -> str:
    labels, rows = table_rows(by_stage)
    head = ["task", "metric", *(COLUMN.get(label, label) for label in labels), "change"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task, metric, *values, change in rows:
        lines.append("| " + " | ".join([task, metric, *(_fmt(v) for v in values), _fmt(change, True)]) + " |")
    return "\n".join(lines)


def terminal_table(by_stage: dict) -> str:
    labels, rows = table_rows(by_stage)
    head = ["task / metric", *(COLUMN.get(label, label) for label in labels), "change"]
    body = [[f"{task} {metric}", *(_fmt(v) for v in values), _fmt(change, True)] for task, metric, *values, change
            in rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    fmt = lambda r: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                      for i, (c, w) in enumerate(zip(r, widths))) + " |"
    return "\n".join([line, fmt(head), line, *(fmt(r) for r in body), line])


def report_section(by_stage: dict, limit, gold_task: Optional[str]) -> list[str]:
    """report.md's lm-eval section: the table and what its numbers are beside the gold score above."""
    docs = "every document" if limit is None else f"{limit:g} documents" if limit >= 1 else f"{limit:.0%} of each task"
    note = (f" `coati_{gold_task}` is the same task as the gold score above, answered greedily once per prompt "
            "(the gold score samples answers as PPO does), scored by exact match against the gold answer and by "
            "the task's gold scorer." if gold_task and any(f"coati_{gold_task}" in r for r in by_stage.values())
            else "")
    return ["## lm-evaluation-harness", "",
            f"lm-eval on {docs}, the policy rendered with its chat template (launch.evaluate's `coati` model), before "
            f"the first stage and after each evaluated one.{note} Per stage: `lm_eval/<stage>/lm_eval.json`.", "",
            markdown_table(by_stage), ""]
