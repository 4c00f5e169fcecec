"""Running lm-evaluation-harness on a checkpoint or an endpoint, offline, and keeping its numbers.

    tm, names = resolve_tasks(["coati_sorting", "my_mc"], include_paths=["tasks/"], work_dir=run_dir)
    results = run_harness(CoatiLM(pretrained=...), names, tm, limit=40)   # {task: {metric: value, ...}}
    write_results(run_dir, results, {"model": ...})                       # lm_eval.json, lm_eval.md

Tasks are the user's own YAML files (multiple choice or generation, over local jsonl) found under
`include_paths`, this repository's gold tasks (`coati_*`, coati_ray/evaluation/lm_eval_tasks.py), or lm-eval's
own catalogue (which may need the hub for its data: offline, such a task stops with the harness's own error).
Task names are checked before any model loads. The harness is told not to reach the hub for ours: HF_HUB_OFFLINE
and HF_DATASETS_OFFLINE are set while it runs unless the user set them.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Optional

from coati_ray.errors import ConfigError


def check_tasks(tasks: list[str], include_paths: list[str]) -> None:
    """Every task name found (this repository's, the include paths', or lm-eval's catalogue) and every include
    path there, or one ConfigError line; writes nothing and loads no model."""
    from coati_ray.evaluation.lm_eval_tasks import BUILTIN_TASKS

    if not tasks:
        raise ConfigError("config error: tasks: no task named; e.g. --tasks coati_sorting or a task of --include-path")
    for path in include_paths:
        if not os.path.exists(path):
            raise ConfigError(f"config error: include_path: '{path}' does not exist; point it at the folder of your "
                              "task YAML files")
    wanted = [t for t in tasks if t not in BUILTIN_TASKS]
    if wanted:
        _manager(wanted, [os.path.abspath(p) for p in include_paths])


def _manager(tasks: list[str], paths: list[str]):
    """lm-eval's TaskManager over `paths`; its own catalogue is indexed only when a name is found nowhere else."""
    from coati_ray.evaluation.lm_eval_tasks import BUILTIN_TASKS

    with quiet_harness():
        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_path=paths or None, include_defaults=False)
        missing = [t for t in tasks if t not in manager.all_tasks]
        if missing:
            local = manager.all_tasks
            if all(_mentioned_in_catalogue(t) for t in missing):  # indexing the catalogue takes ~20 s on 2 cores
                manager = TaskManager(include_path=paths or None)
                missing = [t for t in tasks if t not in manager.all_tasks]
            if missing:
                known = ", ".join(sorted(set(local) | set(BUILTIN_TASKS))) or "none"
                raise ConfigError(f"config error: tasks: unknown lm-eval task(s) {', '.join(missing)}; tasks of the "
                                  f"include paths and built in: {known} (lm-eval's catalogue has neither); check the "
                                  "`task:` name in your YAML and pass its folder with --include-path")
    return manager


def _mentioned_in_catalogue(name: str) -> bool:
    """Whether `name` occurs as a word in any file of lm-eval's task catalogue: a name that occurs nowhere is no
    task of it, found in ~1 s by reading the files as text instead of indexing them."""
    import re

    import lm_eval.tasks

    word = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
    for folder, _, files in os.walk(os.path.dirname(lm_eval.tasks.__file__)):
        for file in files:
            if file.endswith((".yaml", ".yml", ".py")):
                with open(os.path.join(folder, file), encoding="utf-8", errors="ignore") as f:
                    if word.search(f.read()):
                        return True
    return False


def resolve_tasks(tasks: list[str], include_paths: list[str], work_dir: str):
    """(lm-eval TaskManager, task names): the built-in gold tasks written under work_dir/lm_eval_tasks, the
    user's directories indexed."""
    from coati_ray.evaluation.lm_eval_tasks import BUILTIN_TASKS, write_builtin_tasks

    check_tasks(tasks, include_paths)
    paths = [os.path.abspath(p) for p in include_paths]
    builtin = [t for t in tasks if t in BUILTIN_TASKS]
    if builtin:
        paths.append(write_builtin_tasks(builtin, os.path.join(os.path.abspath(work_dir), "lm_eval_tasks")))
    return _manager(tasks, paths), list(tasks)


@contextlib.contextmanager
def quiet_harness():
    """Offline for the hub (unless the user said otherwise) and lm-eval's INFO chatter off, for the block."""
    import logging

    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    for key in saved:
        os.environ.setdefault(key, "1")
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)


def run_harness(lm, tasks: list[str], task_manager, *, limit: Optional[float] = None, num_fewshot: Optional[int] = None,
                apply_chat_template: bool = False, seed: int = 0, model_args: Optional[dict] = None,
                batch_size: Optional[int] = None) -> dict:
    """lm_eval.simple_evaluate on `lm` (an LM object, or a registered model name with `model_args`); the results
    flattened to {task: {metric: value, metric_stderr: value, "samples": n}}."""
    with quiet_harness():
        import lm_eval

        out = lm_eval.simple_evaluate(model=lm, model_args=model_args, tasks=tasks, task_manager=task_manager,
                                      limit=limit, num_fewshot=num_fewshot, batch_size=batch_size,
                                      apply_chat_template=apply_chat_template, log_samples=False,
                                      bootstrap_iters=1000, random_seed=seed, numpy_random_seed=seed,
                                      torch_random_seed=seed, fewshot_random_seed=seed)
    if out is None:
        raise RuntimeError("lm-eval returned no results (a rank other than 0?)")
    return flatten_results(out)


def flatten_results(out: dict) -> dict:
    """lm-eval's {"results": {task: {"acc,none": v, "acc_stderr,none": s, "alias": ...}}, "n-samples": ...}
    -> {task: {"acc": v, "acc_stderr": s, "samples": n}} (a filter other than `none` keeps its name:
    "exact_match/strict-match")."""
    flat = {}
    samples = out.get("n-samples", {})
    for task, metrics in out.get("results", {}).items():
        row = {}
        for key, value in metrics.items():
            if "," not in key or not isinstance(value, (int, float)):
                continue
            metric, flt = key.split(",", 1)
            name = metric if flt == "none" else f"{metric}/{flt}"
            row[name] = float(value)
        n = samples.get(task, {})
        row["samples"] = int(n.get("effective", n.get("original", 0))) if isinstance(n, dict) else 0
        flat[task] = row
    return flat


def headline_metrics(results: dict) -> list[tuple[str, str, float, Optional[float]]]:
    """(task, metric, value, stderr) rows, the stderr beside its metric rather than a row of its own."""
    rows = []
    for task in sorted(results):
        metrics = results[task]
        for name in sorted(metrics):
            if name == "samples" or "_stderr" in name:
                continue
            stderr_key = name.replace("/", "_stderr/", 1) if "/" in name else f"{name}_stderr"
            rows.append((task, name, metrics[name], metrics.get(stderr_key)))
    return rows


def results_markdown(results: dict) -> str:
    lines = ["| task | metric | value | ± stderr | samples |", "|---|---|---|---|---|"]
    for task, metric, value, stderr in headline_metrics(results):
        err = "-" if stderr is None else f"{stderr:.4f}"
        lines.append(f"| {task} | {metric} | {value:.4f} | {err} | {results[task].get('samples', '-')} |")
    return "\n".join(lines)


def write_results(out_dir: str, results: dict, meta: dict) -> str:
    """<out_dir>/lm_eval.json (results and what produced them) and lm_eval.md; returns the JSON's path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "lm_eval.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({**meta, "results": results, "written": time.strftime("%Y-%m-%dT%H:%M:%S")}, f, indent=2)
    os.replace(path + ".tmp", path)
    with open(os.path.join(out_dir, "lm_eval.md"), "w", encoding="utf-8") as f:
        f.write(f"# lm-evaluation-harness: {meta.get('model', '')}\n\n{results_markdown(results)}\n")
    return path
