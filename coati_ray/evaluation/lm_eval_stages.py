"""lm-evaluation-harness inside the pipeline: the base model before any stage, then each stage's policy as it
finishes (`evaluate.after`), each into <run>/lm_eval/<label>/lm_eval.json, so the report can line them up.

Runs in the pipeline's driver process between stages, on the checkpoint the stage just wrote (its Ray actors are
gone by then, so the evaluation competes with nothing). A resumed pipeline reuses results already on disk.
"""

from __future__ import annotations

import gc
import json
import os
import time
from typing import Callable, Optional

from coati_ray.storage import readable_path
from coati_ray.storage.fs import exists, read_text
from coati_ray.storage.mirror import Mirror
from coati_ray.storage.uri import join

LABELS = ("base", "expand_vocab", "pretrain", "sft", "ppo")


def results_dir(run_dir: str, label: str) -> str:
    return join(run_dir, "lm_eval", label)


def policy_dir(cfg, stage: str) -> str:
    """Where a stage's policy is, as `from_pretrained` loads it (PPO keeps the actor under actor/model)."""
    final = cfg.final_checkpoint(stage)
    return join(final, "actor", "model") if stage == "ppo" else final


def evaluate_checkpoint(ecfg, label: str, model: str, run_dir: str, revision: Optional[str] = None,
                        reuse: bool = False, info: Callable[[str], None] = print) -> dict:
    """Run the evaluate section's tasks on `model`; results ({task: {metric: value}}) also written to disk."""
    from coati_ray.evaluation.lm_eval_model import CoatiLM
    from coati_ray.evaluation.lm_eval_run import resolve_tasks, run_harness, write_results

    done = join(results_dir(run_dir, label), "lm_eval.json")
    if reuse and exists(done):
        info(f"[pipeline] lm-eval {label}: reused {done}")
        return json.loads(read_text(done))["results"]
    started = time.time()
    work = Mirror(join(run_dir, "lm_eval"))  # a remote run directory: written here, then uploaded
    try:
        manager, names = resolve_tasks(ecfg.tasks, ecfg.include_path, work.local)
        lm = CoatiLM(pretrained=readable_path(model, f"lm-eval {label}"), revision=revision, chat=ecfg.chat,
                     batch_size=ecfg.batch_size)
        try:
            results = run_harness(lm, names, manager, limit=ecfg.limit, num_fewshot=ecfg.num_fewshot)
        finally:
            del lm
            gc.collect()
        seconds = time.time() - started
        write_results(os.path.join(work.local, label), results, {"model": model, "label": label, "tasks": names,
                                                                 "limit": ecfg.limit, "seconds": round(seconds, 1)})
        work.push()
    finally:
        work.discard()
    info(f"[pipeline] lm-eval {label}: {_headline(results)} in {seconds:.0f}s")
    return results


def _headline(results: dict) -> str:
    from coati_ray.evaluation.lm_eval_run import headline_metrics

    return ", ".join(f"{t}/{m} {v:.3f}" for t, m, v, _ in headline_metrics(results))


def collect(run_dir: str) -> dict:
    """{label: results} of every evaluation on disk, base first, stages in pipeline order."""
    out = {}
    for label in LABELS:
        path = join(results_dir(run_dir, label), "lm_eval.json")
        if exists(path):
            out[label] = json.loads(read_text(path))["results"]
    return out


def evaluate_after(cfg, label: str, reuse: bool = False, info: Callable[[str], None] = print) -> None:
    """The pipeline's hook: `label` is "base" (before the first stage) or a stage that just finished; nothing
    happens unless the pipeline's evaluate section asks for it."""
    ecfg = getattr(cfg, "evaluate", None)
    if ecfg is None or (label == "base" and not ecfg.base) or (label != "base" and label not in ecfg.after):
        return
    model, revision = cfg.base_model() if label == "base" else (policy_dir(cfg, label), None)
    evaluate_checkpoint(ecfg, label, model, cfg.output_dir, revision=revision, reuse=reuse, info=info)
