"""The pipeline's report: did RLHF help on the task's gold score, and at what KL and cost."""

from __future__ import annotations

import json
import os
from typing import Optional

from coati_ray.reporting.curves import plot_panels, read_metrics

# The report's headline numbers, in the order the terminal table shows them.
HEADLINE = ("gold_score_sft", "gold_score_ppo", "gold_gain", "baseline_gold_sft", "baseline_gold_ppo",
            "tool_calls_ppo", "reward_sft", "reward_ppo", "rm_accuracy",
            "kl_to_initial", "ppo_steps", "wall_seconds")

OPTIONAL = ("baseline_gold_sft", "baseline_gold_ppo", "tool_calls_ppo")  # rows shown only when a run has them

STAGE_NAMES = ("sft", "rm", "ppo")

PPO_PANELS = [
    ("held-out gold score (judge only, never a training signal)", ["eval/gold_score", "eval/baseline/gold_score"]),
    ("training reward (train batches) and reward-model score (held-out)", ["reward", "eval/reward"]),
    ("KL to the initial policy (kl: per token of training batches; eval: per held-out answer)",
     ["kl", "eval/kl_to_initial"]),
]
PPO_PANELS.append(("multi-turn episodes: turns and tool calls per episode, environment errors per batch",
                   ["rollout/turns", "rollout/tool_calls", "rollout/env_errors", "eval/rollout/tool_calls"]))
SUPERVISED_PANELS = [("loss", ["loss", "eval/loss"]), ("pairwise accuracy", ["acc", "eval/acc"])]


def pipeline_summary(stages: dict[str, dict], stage_seconds: dict[str, float], wall_seconds: float,
                     seed: int, eval_info: dict) -> dict:
    """The stages' summaries -> the report's numbers. gold/reward/KL come from the PPO job's first
    evaluation (the SFT policy, before any update) and its last (the final policy), on the same
    held-out prompts with the same sampler and seed."""
    ppo, rm, sft = stages.get("ppo", {}), stages.get("rm", {}), stages.get("sft", {})
    first, last = ppo.get("eval_first", {}), ppo.get("eval_last", {})
    gold_sft, gold_ppo = first.get("eval/gold_score"), last.get("eval/gold_score")
    return {
        "gold_score_sft": gold_sft,
        "gold_score_ppo": gold_ppo,
        "gold_gain": None if gold_sft is None or gold_ppo is None else gold_ppo - gold_sft,
        # multi-turn runs with rollout.baseline_options (e.g. without the tool), and tool calls per episode
        "baseline_gold_sft": first.get("eval/baseline/gold_score"),
        "baseline_gold_ppo": last.get("eval/baseline/gold_score"),
        "tool_calls_ppo": last.get("eval/rollout/tool_calls"),
        "reward_sft": first.get("eval/reward"),
        "reward_ppo": last.get("eval/reward"),
        "rm_accuracy": rm.get("eval/acc"),
        "kl_to_initial": last.get("eval/kl_to_initial"),
        "ppo_steps": ppo.get("steps"),
        "wall_seconds": wall_seconds,
        "seed": seed,
        "sft_eval_loss": sft.get("eval/loss"),
        "stage_seconds": stage_seconds,
        "evaluation": eval_info,
        "samples_before": ppo.get("samples_first", []),
        "samples_after": ppo.get("samples_last", []),
    }


def format_table(summary: dict) -> str:
    """The headline numbers as an aligned two-column table."""
    rows = []
    for key in HEADLINE:
        value = summary.get(key)
        if value is None and key in OPTIONAL:
            continue
        if isinstance(value, float):
            value = f"{value:.1f}" if key == "wall_seconds" else f"{value:.4f}"
        rows.append((key, "-" if value is None else str(value)))
    for stage, seconds in summary.get("stage_seconds", {}).items():
        rows.append((f"  {stage} seconds", f"{seconds:.1f}"))
    width = max(len(k) for k, _ in rows)
    line = "+" + "-" * (width + 2) + "+" + "-" * 14 + "+"
    body = [f"| {k:<{width}} | {v:>12} |" for k, v in rows]
    return "\n".join([line, *body, line])


def samples_table(before: list[dict], after: list[dict], limit: int = 8) -> str:
    """Markdown: the same held-out prompts answered by the SFT policy and by the PPO policy."""
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    cell = lambda text: "`" + text.replace("\n", "⏎").replace("|", "\\|") + "`"  # noqa: E731 (one table row)
    lines = ["| prompt | SFT answer | gold | PPO answer | gold |", "|---|---|---|---|---|"]
    for b, a in list(zip(before, after))[:limit]:
        lines.append(f"| {cell(b['prompt'])} | {cell(b['response'])} | {fmt(b.get('gold_score'))} | "
                     f"{cell(a['response'])} | {fmt(a.get('gold_score'))} |")
    return "\n".join(lines)


def write_pipeline_report(run_dir: str, summary: dict) -> dict[str, Optional[str]]:
    """plots/*.png, samples.md and report.md under `run_dir`; returns the paths written."""
    plots = os.path.join(run_dir, "plots")
    paths = {
        "ppo_png": plot_panels(read_metrics(os.path.join(run_dir, "ppo")), PPO_PANELS,
                               os.path.join(plots, "ppo.png"), "PPO: reward, KL and gold score against step"),
        "sft_png": plot_panels(read_metrics(os.path.join(run_dir, "sft")), SUPERVISED_PANELS[:1],
                               os.path.join(plots, "sft.png"), "SFT"),
        "rm_png": plot_panels(read_metrics(os.path.join(run_dir, "rm")), SUPERVISED_PANELS,
                              os.path.join(plots, "rm.png"), "reward model"),
    }
    samples = samples_table(summary.get("samples_before", []), summary.get("samples_after", []))
    with open(os.path.join(run_dir, "samples.md"), "w", encoding="utf-8") as f:
        f.write("# Held-out prompts before and after PPO\n\n" + samples + "\n")
    ev = summary.get("evaluation", {})
    trained = ev.get("training_reward") or "the reward model"
    judge = (f"it judges held-out prompts; the training reward was {trained}" if "reward model" in trained
             and "tasks." not in trained else
             f"the training reward was {trained}, a verifier of the same task, so the gold score here measures "
             "how the policy does on prompts it never trained on")
    md = ["# coati_ray pipeline report", "",
          f"Seed {summary.get('seed')}, estimator `{ev.get('estimator', 'gae')}`. Gold score: `{ev.get('task')}` on "
          f"{ev.get('prompts')} held-out prompts x {ev.get('samples_per_prompt')} answers ({ev.get('decoding')}); "
          f"{judge}.", "",
          "```", format_table(summary), "```", ""]
    if summary.get("lm_eval", {}).get("stages"):  # the pipeline's evaluate section: lm-eval beside the gold score
        from coati_ray.reporting.lm_eval_table import report_section

        md += report_section(summary["lm_eval"]["stages"], summary["lm_eval"].get("limit"), ev.get("task"))
    for key, title in (("ppo_png", "PPO"), ("sft_png", "SFT"), ("rm_png", "Reward model")):
        if paths[key]:
            md += [f"## {title}", "", f"![{title}]({os.path.relpath(paths[key], run_dir)})", ""]
    md += ["## Samples", "", samples, ""]
    paths["report_md"] = os.path.join(run_dir, "report.md")
    with open(paths["report_md"], "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    return paths


def write_json(path: str, data: dict) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(path + ".tmp", path)
