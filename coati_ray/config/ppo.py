"""Configuration of stage 3: PPO run as Ray actor groups (makers, trainer groups, replay buffer)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, Optional

from coati_ray.config.schema import (
    JobConfig,
    ModelConfig,
    OptimizerConfig,
    ResourceConfig,
    StrategyConfig,
    _fail,
    _require_path,
    opt,
)
from coati_ray.models.value import VALUE_HEAD_FILE


@dataclass
class PromptDataConfig:
    """Prompts for generation, and the optional pretraining data of PPO-ptx."""

    prompt_path: str = opt("data/prompts/train.jsonl", "prompts: `prompt`, `instruction` or `messages` rows")
    eval_prompt_path: Optional[str] = opt(None, "held-out prompts scored every ppo.eval_every steps (eval/* metrics)")
    eval_max_samples: Optional[int] = opt(None, "use at most this many held-out prompts")
    gold_task: Optional[str] = opt(None, "programmatic gold scorer that judges held-out answers (e.g. 'sorting'); "
                                         "never used for training")
    ptx_path: Optional[str] = opt(None, "SFT-layout data for the PPO-ptx loss (needs ppo.ptx_coef > 0)")
    format: Literal["auto", "prompt", "instruction", "messages"] = opt("auto", "prompt row layout")
    max_prompt_length: int = opt(64, "prompt tokens kept (from the right: the assistant prefix must stay)")
    ptx_max_length: int = opt(128, "tokens per PPO-ptx sequence")
    max_samples: Optional[int] = opt(None, "use at most this many prompts")
    on_bad_row: Literal["error", "skip"] = opt("error", "a row missing its fields: stop, or skip and count it")

    def validate(self, key: str = "data") -> None:
        _require_path(f"{key}.prompt_path", self.prompt_path)
        for name in ("eval_prompt_path", "ptx_path"):
            if getattr(self, name) is not None:
                _require_path(f"{key}.{name}", getattr(self, name))
        if self.gold_task is not None:
            from coati_ray.tasks import GOLD_SCORERS

            if self.gold_task not in GOLD_SCORERS:
                _fail(f"{key}.gold_task", f"unknown task '{self.gold_task}'", f"use one of: {', '.join(GOLD_SCORERS)}")
            if self.eval_prompt_path is None:
                _fail(f"{key}.gold_task", "a gold score needs held-out prompts", f"set {key}.eval_prompt_path")
        if self.eval_max_samples is not None and self.eval_max_samples < 1:
            _fail(f"{key}.eval_max_samples", f"must be >= 1 or null, got {self.eval_max_samples}", "e.g. 64")
        if self.max_prompt_length < 4:
            _fail(f"{key}.max_prompt_length", f"must be >= 4, got {self.max_prompt_length}", "e.g. 64")


@dataclass
class GenerationConfig:
    """Sampling used by the experience makers."""

    max_new_tokens: int = opt(16, "response tokens generated per prompt")
    do_sample: bool = opt(True, "sample (True) or greedy (False)")
    temperature: float = opt(1.0, "softmax temperature")
    top_k: int = opt(0, "keep the k most likely tokens (0: off)")
    top_p: float = opt(1.0, "nucleus sampling mass (1.0: off)")

    def validate(self, key: str = "generation") -> None:
        if self.max_new_tokens < 1:
            _fail(f"{key}.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}", "e.g. 16")
        if self.temperature <= 0:
            _fail(f"{key}.temperature", f"must be > 0, got {self.temperature}", "use do_sample=false for greedy")
        if not 0 < self.top_p <= 1:
            _fail(f"{key}.top_p", f"must be in (0, 1], got {self.top_p}", "e.g. 0.95")


@dataclass
class PPOAlgoConfig:
    """The PPO update and its rewards."""

    mode: Literal["sync", "async"] = opt("sync", "sync: on-policy; async: makers run ahead by <= max_staleness versions")
    max_staleness: int = opt(1, "async: trainer's version minus the version that made an experience, at most; "
                                "batches that would exceed it are not started")
    max_steps: int = opt(10, "PPO steps (each: one rollout batch, ppo_epochs of updates, one weight sync)")
    rollout_batch_size: int = opt(8, "samples per step, over all makers")
    train_batch_size: int = opt(8, "samples per optimiser step (all ranks of a group together)")
    micro_batch_size: int = opt(4, "samples per forward/backward on one rank")
    ppo_epochs: int = opt(1, "passes over each rollout batch")
    kl_coef: float = opt(0.1, "weight of the per-token KL penalty to the initial policy")
    kl_estimator: Literal["k1", "k2", "k3"] = opt("k1", "per-token KL estimator in the reward")
    gamma: float = opt(1.0, "discount")
    lam: float = opt(0.95, "GAE lambda")
    clip_eps: float = opt(0.2, "policy ratio clip")
    value_clip_eps: float = opt(0.2, "value clip around the old values (0: off)")
    reward_clip: float = opt(10.0, "clip the RM score to [-c, c] (0: off)")
    whiten_advantages: bool = opt(True, "normalise advantages over the group's whole rollout batch (all ranks)")
    disable_dropout: bool = opt(True, "turn dropout off in every PPO model (as TRL does), so the policy that "
                                      "sampled is the policy in the ratio; false keeps the checkpoints' dropout")
    ptx_coef: float = opt(0.0, "PPO-ptx: loss = ptx_coef * ptx + (1 - ptx_coef) * policy")
    ptx_batch_size: int = opt(4, "pretraining sequences per micro-batch when ptx_coef > 0")
    save_every: Optional[int] = opt(None, "checkpoint every N steps (None: at the end only)")
    log_every: int = opt(1, "print a progress line every N steps (metrics.jsonl gets every step)")
    eval_every: Optional[int] = opt(None, "score data.eval_prompt_path every N steps, before the first and after "
                                          "the last (None: only before and after when eval prompts are set)")
    eval_greedy: bool = opt(False, "evaluate with greedy decoding instead of the training sampler")
    eval_samples_per_prompt: int = opt(1, "sampled answers per held-out prompt (more: a less noisy mean)")
    seed: int = opt(42, "driver seed: prompt order and sampling")


@dataclass
class MakerConfig:
    """Experience makers: each holds actor, initial, reward and critic models."""

    num_makers: int = opt(2, "experience-maker actors (independent of the trainer groups)")
    batch_size: int = opt(4, "prompts per maker batch (one buffer item)")
    num_cpus: float = opt(0.5, "CPUs per maker")
    num_gpus: float = opt(0.0, "GPUs per maker (fractions colocate with trainers)")
    torch_threads: Optional[int] = opt(1, "torch threads per maker")
    max_restarts: int = opt(3, "Ray restarts of a dead maker")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "inference dtype of every maker model; auto: what each trainer group computes in (its "
                "precision on zero2/gemini, else its model.dtype) and reward.dtype for the reward model")
    start_timeout_s: float = opt(120.0, "a maker not scheduled and ready within this many seconds ends the run "
                                        "with one line")

    def validate(self, key: str = "maker") -> None:
        if self.num_makers < 1:
            _fail(f"{key}.num_makers", f"must be >= 1, got {self.num_makers}", "PPO needs at least one maker")
        if self.batch_size < 1:
            _fail(f"{key}.batch_size", f"must be >= 1, got {self.batch_size}", "e.g. 4")


@dataclass
class BufferConfig:
    """The replay-buffer actor between makers and trainers."""

    capacity: int = opt(64, "samples held at most (>= one rollout batch); async makers run ahead no further")
    timeout_s: float = opt(600.0, "a producer or consumer waiting longer than this fails with a clear error")


@dataclass
class TrainerGroupConfig:
    """One trainer group (actor or critic): strategy, optimiser and resources."""

    strategy: StrategyConfig = opt(None, "parallel strategy of this group")
    optim: OptimizerConfig = opt(None, "optimiser of this group")
    resources: ResourceConfig = opt(None, "ranks and per-rank resources of this group")


@dataclass
class PPOConfig(JobConfig):
    """Stage 3: PPO with a KL penalty (and optional PPO-ptx) on Ray actor groups."""

    output_dir: str = opt("runs/ppo", "run directory: config.yaml, metrics.jsonl, summary.json, checkpoints/")
    actor: ModelConfig = opt(None, "the policy to optimise (usually the SFT checkpoint); also the initial policy")
    critic: ModelConfig = opt(None, "the critic (usually initialised from the reward model)")
    reward: ModelConfig = opt(None, "the frozen reward model (the RM stage's checkpoint)")
    data: PromptDataConfig = opt(None, "prompts and PPO-ptx data")
    generation: GenerationConfig = opt(None, "sampling")
    ppo: PPOAlgoConfig = opt(None, "algorithm")
    maker: MakerConfig = opt(None, "experience makers")
    buffer: BufferConfig = opt(None, "replay buffer")
    actor_trainer: TrainerGroupConfig = opt(None, "the actor trainer group")
    critic_trainer: TrainerGroupConfig = opt(None, "the critic trainer group")

    def validate(self, check_reward_head: bool = True) -> None:
        """`check_reward_head=False` when the reward model is yet to be trained (the pipeline)."""
        super().validate()
        for key in ("actor", "critic", "reward"):
            getattr(self, key).validate(key)
        if self.reward.lora_rank:
            _fail("reward.lora_rank", "the reward model is frozen", "remove reward.lora_rank")
        if check_reward_head and not os.path.isfile(os.path.join(self.reward.path, VALUE_HEAD_FILE)):
            _fail("reward.path", f"'{self.reward.path}' has no {VALUE_HEAD_FILE}, so it is not a reward model",
                  "point it at the RM stage's checkpoints/final")
        self.data.validate()
        self.generation.validate()
        self.maker.validate()
        self._check_models_agree()
        p = self.ppo
        for name in ("max_steps", "rollout_batch_size", "train_batch_size", "micro_batch_size", "ppo_epochs",
                     "log_every"):
            if getattr(p, name) < 1:
                _fail(f"ppo.{name}", f"must be >= 1, got {getattr(p, name)}", "use a positive integer")
        if p.rollout_batch_size % self.maker.batch_size:
            _fail("ppo.rollout_batch_size", f"{p.rollout_batch_size} is not a multiple of maker.batch_size "
                  f"({self.maker.batch_size})", f"set it to a multiple of {self.maker.batch_size}")
        if p.rollout_batch_size % p.train_batch_size:
            _fail("ppo.train_batch_size", f"{p.train_batch_size} does not divide ppo.rollout_batch_size "
                  f"({p.rollout_batch_size})", "choose a divisor of the rollout batch")
        for group in ("actor_trainer", "critic_trainer"):
            g = getattr(self, group)
            g.resources.validate(f"{group}.resources")
            ranks = g.resources.num_ranks
            model = getattr(self, group.split("_")[0])
            g.strategy.validate(f"{group}.strategy", num_ranks=ranks, model_key=group.split("_")[0],
                                model_dtype=model.dtype, lora=model.lora_rank > 0, machine=False)
            g.optim.validate(f"{group}.optim")
            per = p.micro_batch_size * ranks
            if p.train_batch_size % per:
                _fail("ppo.train_batch_size", f"{p.train_batch_size} is not divisible by micro_batch_size "
                      f"({p.micro_batch_size}) x {group} ranks ({ranks}) = {per}", f"use a multiple of {per}")
            if self.maker.batch_size % ranks:
                _fail("maker.batch_size", f"{self.maker.batch_size} samples cannot be split evenly over the "
                      f"{ranks} ranks of {group}", f"use a multiple of {ranks}")
        self._check_maker_dtype()
        for group in ("actor_trainer", "critic_trainer"):
            getattr(self, group).strategy.check_machine(f"{group}.strategy")
        if p.eval_samples_per_prompt < 1:
            _fail("ppo.eval_samples_per_prompt", f"must be >= 1, got {p.eval_samples_per_prompt}", "e.g. 4")
        if p.eval_every is not None and p.eval_every < 1:
            _fail("ppo.eval_every", f"must be >= 1 or null, got {p.eval_every}", "e.g. 10")
        if p.mode == "async" and p.max_staleness < 1:
            _fail("ppo.max_staleness", "async mode needs max_staleness >= 1", "use mode=sync for on-policy")
        if p.ptx_coef > 0 and self.data.ptx_path is None:
            _fail("ppo.ptx_coef", "PPO-ptx needs pretraining data", "set data.ptx_path or ppo.ptx_coef=0")
        if not 0 <= p.ptx_coef <= 1:
            _fail("ppo.ptx_coef", f"must be in [0, 1], got {p.ptx_coef}", "e.g. 0.1")
        if self.buffer.capacity < p.rollout_batch_size:
            _fail("buffer.capacity", f"{self.buffer.capacity} samples cannot hold one step's rollout batch "
                  f"({p.rollout_batch_size})", f"set it to at least {p.rollout_batch_size}")
        if self.maker.start_timeout_s <= 0:
            _fail("maker.start_timeout_s", f"must be > 0, got {self.maker.start_timeout_s}", "e.g. 120")

    def maker_dtype(self, model: str) -> str:
        """The dtype a maker loads `model` ('actor', 'initial', 'critic', 'reward') in.

        Trainers and makers are separate precisions: a trainer keeps its master weights (model.dtype, or
        fp32 masters under zero2/gemini) and every weight sync casts to this dtype on purpose.
        """
        if self.maker.dtype != "auto":
            return self.maker.dtype
        if model == "reward":
            return self.reward.dtype
        key = "critic" if model == "critic" else "actor"
        strategy = getattr(self, f"{key}_trainer").strategy
        if strategy.name.startswith("colossalai") and strategy.precision != "fp32":
            return {"bf16": "bfloat16", "fp16": "float16"}[strategy.precision]
        return getattr(self, key).dtype

    def _check_maker_dtype(self) -> None:
        if self.maker.num_gpus > 0:
            return
        for model in ("actor", "critic", "reward"):
            if self.maker_dtype(model) == "float16":
                _fail("maker.dtype", f"makers on CPU (maker.num_gpus=0) would run the {model} in float16, which "
                      "CPU kernels do not cover", "set maker.dtype=bfloat16 or float32, or give makers GPUs")

    def _check_models_agree(self) -> None:
        """Critic and reward model read the actor's tokens, and every model must hold a whole sequence."""
        from coati_ray.config.schema import model_config, require_fits_context

        length = self.data.max_prompt_length + self.generation.max_new_tokens
        vocab = model_config("actor.path", self.actor.path).get("vocab_size")
        for key in ("actor", "critic", "reward"):
            path = getattr(self, key).path
            require_fits_context(f"{key}.path", path, length, "data.max_prompt_length + generation.max_new_tokens",
                                 "lower data.max_prompt_length or generation.max_new_tokens")
            theirs = model_config(f"{key}.path", path).get("vocab_size")
            if key != "actor" and vocab and theirs and theirs != vocab:
                _fail(f"{key}.path", f"'{path}' has a vocabulary of {theirs} but the actor's has {vocab}",
                      "train the critic and reward model from the actor's base model and tokenizer")
