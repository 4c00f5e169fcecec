"""Configuration of the whole pipeline: SFT -> RM -> PPO in one job, each stage feeding the next.

The pipeline owns the links between stages: the RM starts from the SFT model, PPO's actor is the
SFT model and its reward model (and, for gae, its critic) is the RM. Those paths, each stage's output
directory and its seed are set here from `output_dir` and `seed`; a config that sets them itself is
refused (two sources of truth for one path is how runs train on the wrong checkpoint). The RM stage
is optional: without it (RLVR), PPO takes its reward from a function or service and trains no critic.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Optional

from coati_ray.config.ppo import PPOConfig
from coati_ray.config.schema import JobConfig, RMConfig, SFTConfig, _fail, opt
from coati_ray.errors import ConfigError

STAGES = ("sft", "rm", "ppo")
# (section, key path) -> which stage's final checkpoint it is set to
CHAINED = {("rm", "model", "path"): "sft", ("ppo", "actor", "path"): "sft",
           ("ppo", "critic", "path"): "rm", ("ppo", "reward", "path"): "rm"}
PLACEHOLDER = "<set by the pipeline>"


def chained(has_rm: bool, needs_critic: bool) -> dict:
    """The links of a pipeline with or without the RM stage; a critic is linked only when PPO trains one."""
    return {key: source for key, source in CHAINED.items()
            if (has_rm or source != "rm") and (key[0] != "rm" or has_rm)
            and (key != ("ppo", "critic", "path") or needs_critic)}


@dataclass
class PipelineConfig(JobConfig):
    """Stages 1-3 in one job: `sft`, `rm` and `ppo` take the keys of their own stage configs."""

    output_dir: str = opt("runs/pipeline", "run directory: sft/, rm/, ppo/, summary.json, report.md, plots/")
    seed: int = opt(1, "seed of every stage (data order, head init, sampling); overrides the stages' own seeds")
    sft: SFTConfig = opt(None, "stage 1 (keys of configs/sft_*.yaml, minus output_dir)")
    rm: Optional[RMConfig] = opt(None, "stage 2 (keys of configs/rm_*.yaml, minus output_dir and model.path); leave it "
                                       "out for RLVR (rewards from ppo.rewards.function / http_url)")
    ppo: PPOConfig = opt(None, "stage 3 (keys of configs/ppo_*.yaml, minus output_dir and actor/critic/reward paths)")

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(s for s in STAGES if getattr(self, s) is not None)

    def stage_dir(self, stage: str) -> str:
        return os.path.join(self.output_dir, stage)

    def final_checkpoint(self, stage: str) -> str:
        return os.path.join(self.stage_dir(stage), "checkpoints", "final")

    def link(self) -> None:
        """Point each stage at its own directory and at the previous stage's output; one seed for all."""
        for stage in self.stages:
            getattr(self, stage).output_dir = self.stage_dir(stage)
        for (section, *keys), source in chained(self.rm is not None, self.ppo.algorithm.needs_critic).items():
            setattr(getattr(getattr(self, section), keys[0]), keys[1], self.final_checkpoint(source))
        self.sft.strategy.seed = self.seed
        if self.rm is not None:
            self.rm.strategy.seed = self.seed
        for role in self.ppo.roles:
            getattr(self.ppo, f"{role}_trainer").strategy.seed = self.seed
        self.ppo.ppo.seed = self.seed

    def validate(self) -> None:
        """Every stage's checks, now: later stages are checked against the SFT base model, whose
        architecture and tokenizer their inputs will have (their real inputs do not exist yet)."""
        super().validate()
        self.sft.validate()
        base = self.sft.model.path
        if self.rm is not None:
            self.stand_in("rm", base).validate()
        self.stand_in("ppo", base).validate(check_reward_head=False)
        if self.ppo.data.gold_task and not self.ppo.data.eval_prompt_path:
            _fail("ppo.data.eval_prompt_path", "the report's gold scores need held-out prompts",
                  "set ppo.data.eval_prompt_path")

    def stand_in(self, stage: str, base: str):
        """A copy of `stage`'s config whose chained inputs point at `base` (for checks before they exist)."""
        cfg = copy.deepcopy(getattr(self, stage))
        for (section, *keys), _ in chained(self.rm is not None, self.ppo.algorithm.needs_critic).items():
            if section == stage:
                setattr(getattr(cfg, keys[0]), keys[1], base)
        return cfg


def prepare_pipeline_dict(data: dict) -> None:
    """Refuse keys the pipeline sets itself; fill placeholders so the typed config can be built."""
    for stage in STAGES:
        section = data.get(stage)
        if isinstance(section, dict) and "output_dir" in section:
            raise ConfigError(f"config error: {stage}.output_dir is set by the pipeline (<output_dir>/{stage}); "
                              "remove it and set the top-level output_dir or --output-dir")
    ppo = data.get("ppo") if isinstance(data.get("ppo"), dict) else {}
    estimator = (ppo.get("ppo") or {}).get("advantage_estimator", "gae") if isinstance(ppo.get("ppo"), dict) else "gae"
    from coati_ray.algo.advantages import REGISTRY

    needs_critic = estimator not in REGISTRY or REGISTRY[estimator].needs_critic  # an unknown name fails later
    links = chained(isinstance(data.get("rm"), dict), needs_critic)
    for (stage, *keys), source in links.items():
        node = data.setdefault(stage, {})
        if not isinstance(node, dict):
            continue  # from_dict reports the wrong type with its key
        inner = node.setdefault(keys[0], {})
        if isinstance(inner, dict):
            if keys[1] in inner:
                raise ConfigError(f"config error: {stage}.{'.'.join(keys)} is set by the pipeline (the {source} "
                                  f"stage's checkpoints/final); remove it, or run launch.{stage} on its own")
            inner[keys[1]] = PLACEHOLDER
