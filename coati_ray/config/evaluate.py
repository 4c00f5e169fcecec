"""The pipeline's `evaluate:` section: lm-evaluation-harness tasks run on the base model and after named stages,
so the report shows what each stage did to the benchmarks the user cares about (a before/after table)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from coati_ray.config.checks import _fail
from coati_ray.config.fields import opt, required
from coati_ray.errors import ConfigError

# stages whose output is a policy lm-eval can run (the RM stage's is a reward model)
EVALUABLE = ("expand_vocab", "pretrain", "sft", "ppo")


@dataclass
class EvaluateStageConfig:
    """lm-eval after stages: this repository's gold tasks (coati_sorting, coati_calc) or task YAMLs of your own."""

    tasks: list[str] = required("lm-eval task names (coati_sorting, coati_calc, or tasks under include_path)")
    after: list[str] = opt(["sft", "ppo"], "stages whose policy is evaluated when they finish (sft, ppo, pretrain, "
                                           "expand_vocab)")
    base: bool = opt(True, "also evaluate the model the first stage starts from (the 'before' column)")
    include_path: list[str] = opt([], "folders of task YAML files of your own")
    limit: Optional[float] = opt(None, "documents per task (a fraction below 1); null: all")
    num_fewshot: Optional[int] = opt(None, "few-shot examples (null: each task's own)")
    batch_size: int = opt(16, "sequences per forward pass")
    chat: bool = opt(True, "render prompts with the checkpoint's chat template (false: raw text)")

    def validate(self, stages: tuple) -> None:
        from coati_ray.evaluation.lm_eval_run import check_tasks

        for stage in self.after:
            if stage == "rm":
                _fail("evaluate.after", "the rm stage makes a reward model, which lm-eval cannot run as a policy",
                      "evaluate after sft and ppo (e.g. after: [sft, ppo])")
            if stage not in EVALUABLE or stage not in stages:
                _fail("evaluate.after", f"'{stage}' is not a stage of this pipeline that makes a policy",
                      f"choose from {', '.join(s for s in EVALUABLE if s in stages)}")
        if self.limit is not None and self.limit <= 0:
            _fail("evaluate.limit", f"must be > 0, got {self.limit}", "e.g. 40 (documents) or 0.5 (half of each task)")
        if self.batch_size < 1:
            _fail("evaluate.batch_size", f"must be >= 1, got {self.batch_size}", "e.g. 16")
        try:
            check_tasks(self.tasks, self.include_path)
        except ConfigError as e:  # its line names the key without the section
            raise ConfigError(str(e).replace("config error: ", "config error: evaluate.", 1)) from None
