"""Configuration of the whole pipeline: [expand_vocab ->] [pretrain ->] SFT -> RM -> PPO in one job.

The pipeline owns the links between stages: the RM starts from the SFT model, PPO's actor is the
SFT model and its reward model (and, for gae, its critic) is the RM. Those paths, each stage's output
directory and its seed are set here from `output_dir` and `seed`; a config that sets them itself is
refused (two sources of truth for one path is how runs train on the wrong checkpoint). The RM stage
is optional: without it (RLVR), PPO takes its reward from a function or service and trains no critic.
Colossal-LLaMA's stages may come first: `expand_vocab` (its model feeds the next stage) and `pretrain`
(on `prepare.data_input_dirs`, tokenized by the pipeline with the tokenizer pretraining uses; its model
feeds SFT).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Optional

from coati_ray.config.evaluate import EvaluateStageConfig
from coati_ray.config.rl import RLConfig
from coati_ray.config.pretrain import PretrainConfig
from coati_ray.config.checks import _fail, _require_model_dir
from coati_ray.config.schema import JobConfig, RMConfig, SFTConfig, opt, required
from coati_ray.errors import ConfigError

STAGES = ("expand_vocab", "pretrain", "sft", "rm", "ppo")
# (section, key path) -> which stage's final checkpoint it is set to
CHAINED = {("rm", "model", "path"): "sft", ("ppo", "actor", "path"): "sft",
           ("ppo", "critic", "path"): "rm", ("ppo", "reward_model", "path"): "rm"}
PLACEHOLDER = "<set by the pipeline>"


def chained(has_rm: bool, needs_critic: bool, has_expand: bool = False, has_pretrain: bool = False) -> dict:
    """The links of a pipeline with or without the RM stage; a critic is linked only when PPO trains one;
    with expand_vocab and/or pretrain first, SFT (and pretrain) start from the stage before them."""
    links = {key: source for key, source in CHAINED.items()
             if (has_rm or source != "rm") and (key[0] != "rm" or has_rm)
             and (key != ("ppo", "critic", "path") or needs_critic)}
    if has_expand and has_pretrain:
        links[("pretrain", "model", "path")] = "expand_vocab"
    if has_expand or has_pretrain:
        links[("sft", "model", "path")] = "pretrain" if has_pretrain else "expand_vocab"
    return links


@dataclass
class ExpandVocabStageConfig:
    """launch.expand_vocab as the pipeline's first stage."""

    source: str = required("model + tokenizer directory or hub id to expand (the pipeline's base model)")
    pieces: str = required("jsonl of {\"piece\": ...} rows (Colossal-LLaMA's expand_tokens_file)")
    revision: Optional[str] = opt(None, "hub revision of `source` (pinned to the commit it resolves)")
    output_dir: str = opt(PLACEHOLDER, "set by the pipeline (<output_dir>/expand_vocab)")

    def validate(self) -> None:
        from coati_ray.models.vocab import read_pieces

        from coati_ray.models.hub import local_dir, pin

        self.revision = pin(self.source, self.revision, "expand_vocab.source").commit or self.revision
        _require_model_dir("expand_vocab.source", local_dir(self.source, self.revision))
        read_pieces(self.pieces)


@dataclass
class PrepareConfig:
    """launch.prepare_data --mode pretrain, run by the pipeline for its pretrain stage."""

    data_input_dirs: str = required("directories of {source, target, category} jsonl files, comma-separated")
    num_spliced_dataset_bins: int = opt(10, "bins per category (pretraining buckets)")
    seed: int = opt(42, "shuffle of each category before binning")

    def validate(self) -> None:
        from coati_ray.data.prepare import jsonl_files

        if self.num_spliced_dataset_bins < 1:
            _fail("prepare.num_spliced_dataset_bins", f"must be >= 1, got {self.num_spliced_dataset_bins}", "e.g. 10")
        jsonl_files([d for d in self.data_input_dirs.split(",") if d])


@dataclass
class PipelineConfig(JobConfig):
    """Stages 1-3 in one job: `sft`, `rm` and `ppo` take the keys of their own stage configs."""

    output_dir: str = opt("runs/pipeline", "run directory: sft/, rm/, ppo/, summary.json, report.md, plots/")
    seed: int = opt(1, "seed of every stage (data order, head init, sampling); overrides the stages' own seeds")
    expand_vocab: Optional[ExpandVocabStageConfig] = opt(None, "optional first stage: expand the base model's "
                                                              "vocabulary (keys source, pieces)")
    pretrain: Optional[PretrainConfig] = opt(None, "optional stage before SFT: continual pretraining (keys of "
                                                   "configs/pretrain_*.yaml, minus output_dir and data.train_path)")
    prepare: Optional[PrepareConfig] = opt(None, "the pretrain stage's raw data, tokenized by the pipeline into "
                                                 "<output_dir>/prepared")
    sft: SFTConfig = opt(None, "stage 1 (keys of configs/sft_*.yaml, minus output_dir)")
    rm: Optional[RMConfig] = opt(None, "stage 2 (keys of configs/rm_*.yaml, minus output_dir and model.path); leave it "
                                       "out for RLVR (rewards from ppo.rewards.function / http_url)")
    ppo: RLConfig = opt(None, "stage 3 (keys of configs/ppo_*.yaml, minus output_dir and actor/critic/reward paths)")
    evaluate: Optional[EvaluateStageConfig] = opt(None, "lm-evaluation-harness tasks run on the base model and after "
                                                        "stages (keys tasks, after, include_path, limit); the report "
                                                        "gets a before/after table")

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(s for s in STAGES if getattr(self, s) is not None)

    def stage_dir(self, stage: str) -> str:
        from coati_ray.storage.uri import join

        return join(self.output_dir, stage)

    def final_checkpoint(self, stage: str) -> str:
        from coati_ray.storage.uri import join

        return join(self.stage_dir(stage), "checkpoints", "final")

    @property
    def prepared_dir(self) -> str:
        from coati_ray.storage.uri import join

        return join(self.output_dir, "prepared")

    def links(self) -> dict:
        return chained(self.rm is not None, self.ppo.estimator.needs_critic, self.expand_vocab is not None,
                       self.pretrain is not None)

    def base_model(self) -> tuple[str, Optional[str]]:
        """(path, revision) of the model the first stage starts from (what later stages' inputs are checked
        against)."""
        if self.expand_vocab is not None:
            return self.expand_vocab.source, self.expand_vocab.revision
        first = self.pretrain.model if self.pretrain is not None else self.sft.model
        return first.path, first.revision

    def pin(self) -> None:
        """Resolve every hub id the stages name (not the links, which are this run's checkpoints) to its commit,
        in place, so every stage and actor loads the commit the checks read: models, tokenizers and the hub
        datasets of sft.data, rm.data and ppo.data."""
        from coati_ray.config.schema import ModelConfig

        if self.expand_vocab is not None:
            self.expand_vocab.validate()
        for stage in ("pretrain", "sft", "rm", "ppo"):
            cfg = getattr(self, stage)
            for name in ("model", "actor", "critic", "reward_model"):
                model = getattr(cfg, name, None) if cfg is not None else None
                if not isinstance(model, ModelConfig):
                    continue
                if model.path != PLACEHOLDER and (stage, name, "path") not in self.links():
                    model.pin(f"{stage}.{name}")
                elif model.tokenizer_path is not None:  # a linked model's own tokenizer may be a hub id too
                    from coati_ray.models.hub import TOKENIZER, pin

                    resolved = pin(model.tokenizer_path, model.tokenizer_revision, f"{stage}.{name}.tokenizer_path",
                                   selection=TOKENIZER)
                    model.tokenizer_revision = resolved.commit or model.tokenizer_revision
        for stage in ("sft", "rm", "ppo"):  # the stand-ins validate copies: the stages keep these commits
            if getattr(self, stage) is not None:
                getattr(self, stage).data.pin(f"{stage}.data")

    def link(self) -> None:
        """Point each stage at its own directory and at the previous stage's output; one seed for all; the
        pipeline's W&B settings for every stage that has none (one run per stage, grouped)."""
        import dataclasses

        for stage in self.stages:
            getattr(self, stage).output_dir = self.stage_dir(stage)
        tracking = self.logging.wandb
        for stage in ("pretrain", "sft", "rm", "ppo"):
            stage_cfg = getattr(self, stage)
            if tracking.enabled and stage_cfg is not None and not stage_cfg.logging.wandb.enabled:
                run = tracking.name or os.path.basename(self.output_dir.rstrip("/") if "://" in self.output_dir
                                                        else os.path.abspath(self.output_dir))
                stage_cfg.logging.wandb = dataclasses.replace(tracking, name=f"{run}-{stage}",
                                                              group=tracking.group or run)
        for (section, *keys), source in self.links().items():
            setattr(getattr(getattr(self, section), keys[0]), keys[1], self.final_checkpoint(source))
        if self.pretrain is not None:
            self.pretrain.data.train_path = self.prepared_dir
            self.pretrain.strategy.seed = self.seed
        self.sft.strategy.seed = self.seed
        if self.rm is not None:
            self.rm.strategy.seed = self.seed
        for role in self.ppo.roles:
            getattr(self.ppo, f"{role}_trainer").strategy.seed = self.seed
        self.ppo.algorithm.seed = self.seed

    def validate(self) -> None:
        """Every stage's checks, now: later stages are checked against the SFT base model, whose
        architecture and tokenizer their inputs will have (their real inputs do not exist yet)."""
        super().validate()
        self.pin()
        base = self.base_model()
        if self.pretrain is not None:
            if self.prepare is None:
                _fail("prepare", "the pretrain stage needs its data", "add prepare.data_input_dirs (jsonl directories)")
            self.prepare.validate()
            self.stand_in("pretrain", base).validate()
        elif self.prepare is not None:
            _fail("prepare", "only the pretrain stage uses it", "add a pretrain section or remove prepare")
        self.stand_in("sft", base).validate()
        if self.rm is not None:
            self.stand_in("rm", base).validate()
        self.stand_in("ppo", base).validate(check_reward_head=False)
        if self.evaluate is not None:
            self.evaluate.validate(self.stages)
        if self.ppo.data.gold_task and not self.ppo.data.eval_prompt_path:
            _fail("ppo.data.eval_prompt_path", "the report's gold scores need held-out prompts",
                  "set ppo.data.eval_prompt_path")

    def stand_in(self, stage: str, base: tuple[str, Optional[str]]):
        """A copy of `stage`'s config whose chained inputs point at `base` (path, revision), for checks before
        they exist."""
        cfg = copy.deepcopy(getattr(self, stage))
        for (section, *keys), _ in self.links().items():
            if section == stage:
                model = getattr(cfg, keys[0])
                model.path, model.revision = base
        if stage == "pretrain":  # its prepared data does not exist yet: the rows are checked by preflight
            cfg.data.train_path, cfg.data.benchmark = "", True
        return cfg


def prepare_pipeline_dict(data: dict) -> None:
    """Refuse keys the pipeline sets itself; fill placeholders so the typed config can be built."""
    for stage in STAGES:
        section = data.get(stage)
        if isinstance(section, dict) and "output_dir" in section:
            raise ConfigError(f"config error: {stage}.output_dir is set by the pipeline (<output_dir>/{stage}); "
                              "remove it and set the top-level output_dir or --output-dir")
    ppo = data.get("ppo") if isinstance(data.get("ppo"), dict) else {}
    algo = ppo.get("algorithm", ppo.get("ppo"))  # ppo.ppo: the section's name before it was algorithm
    estimator = algo.get("advantage_estimator", "gae") if isinstance(algo, dict) else "gae"
    from coati_ray.algo.advantages import algorithm

    try:
        needs_critic = algorithm(estimator).needs_critic
    except KeyError as e:  # one line now: the stages' links below would need the estimator's spec
        problem, fix = str(e.args[0]).split("; ", 1)
        raise ConfigError(f"config error: ppo.algorithm.advantage_estimator: {problem}; {fix}") from None
    links = chained(isinstance(data.get("rm"), dict), needs_critic, isinstance(data.get("expand_vocab"), dict),
                    isinstance(data.get("pretrain"), dict))
    pretrain = data.get("pretrain")
    if isinstance(pretrain, dict) and "load_checkpoint" in pretrain:
        raise ConfigError("config error: pretrain.load_checkpoint is not used in a pipeline (pretrain starts from "
                          "expand_vocab's model or pretrain.model.path; --resume continues it); remove it, or run "
                          "launch.pretrain on its own")
    if isinstance(pretrain, dict) and isinstance(pretrain.get("data"), dict) and "train_path" in pretrain["data"]:
        raise ConfigError("config error: pretrain.data.train_path is set by the pipeline (<output_dir>/prepared, "
                          "tokenized from prepare.data_input_dirs); remove it, or run launch.pretrain on its own")
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
