"""This repository's gold tasks as lm-evaluation-harness tasks: a YAML, a local jsonl and a one-line module per task,
written into a directory lm-eval reads with `include_path` (or `lm_eval --include_path DIR`), so the tasks that
judge our policies run through the harness users already run, beside their own task files.

Each is a generation task, greedy, whose answer is scored two ways per prompt: `exact_match` against the gold
answer (the sorted list; "The sum is N"), and `gold_score`, the task's own programmatic score in [0, 1]
(coati_ray/tasks), the one the pipeline's report has always shown. Nothing is downloaded: `dataset_path: json`
is the `datasets` library's local JSON reader.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable

from coati_ray.tasks import calc, sorting

REPO_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "data"))


@dataclass(frozen=True)
class GoldTask:
    prompts: str  # a jsonl of {"prompt": ...} rows in this repository
    answer: Callable[[str], str]  # prompt -> the gold answer
    gold: str  # name in coati_ray.tasks.GOLD_SCORERS
    max_gen_toks: int
    what: str


def _sorting_answer(prompt: str) -> str:
    return sorting.answer_text(sorting.parse_prompt(prompt))


def _calc_answer(prompt: str) -> str:
    return calc.answer_text(sum(calc.parse_prompt(prompt)))


BUILTIN_TASKS = {
    "coati_sorting": GoldTask(os.path.join(REPO_DATA, "prompts", "eval.jsonl"), _sorting_answer, "sorting", 24,
                              "sort the numbers (make demo's task); exact match and gold score"),
    "coati_calc": GoldTask(os.path.join(REPO_DATA, "calc", "eval.jsonl"), _calc_answer, "calc", 32,
                           "add two numbers, no tool (make demo-tools' task); exact match and gold score"),
}

_YAML = """\
# Written by coati_ray.evaluation.lm_eval_tasks: {what}.
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {max_gen_toks}
  do_sample: false
process_results: !function {module}.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
  - metric: gold_score
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

_MODULE = """\
# Written by coati_ray.evaluation.lm_eval_tasks: the scores of {name} (exact match and the task's gold score).
from coati_ray.evaluation.lm_eval_tasks import results_of

process_results = results_of("{name}")
"""


def results_of(name: str) -> Callable[[dict, list], dict]:
    """lm-eval's process_results for a built-in task: the generated answer against the gold one."""
    from coati_ray.tasks import gold_scorer

    task = BUILTIN_TASKS[name]
    score = gold_scorer(task.gold)

    def process_results(doc: dict, results: list) -> dict:
        answer = (results[0] if results else "").strip()
        return {"exact_match": float(answer == doc["answer"]), "gold_score": float(score(doc["prompt"], answer))}

    return process_results


def write_builtin_tasks(names: list[str], directory: str) -> str:
    """Write the named built-in tasks (YAML, jsonl, scoring module) into `directory`; returns it."""
    os.makedirs(directory, exist_ok=True)
    for name in names:
        task = BUILTIN_TASKS[name]
        rows = []
        with open(task.prompts, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    prompt = json.loads(line)["prompt"]
                    rows.append({"prompt": prompt, "answer": task.answer(prompt)})
        data = os.path.join(directory, f"{name}.jsonl")
        with open(data, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        module = f"{name}_scores"
        with open(os.path.join(directory, f"{module}.py"), "w", encoding="utf-8") as f:
            f.write(_MODULE.format(name=name))
        with open(os.path.join(directory, f"{name}.yaml"), "w", encoding="utf-8") as f:
            f.write(_YAML.format(name=name, what=task.what, data=json.dumps(os.path.abspath(data)),
                                 max_gen_toks=task.max_gen_toks, module=module))
    return directory
