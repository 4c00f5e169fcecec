"""Configuration of stage 3: PPO on Ray (makers, trainer groups, replay buffer)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, Optional

from coati_ray.config.checks import _fail, _require_data, check_chat_template
from coati_ray.config.placement import check_placement
from coati_ray.config.rollout import RolloutConfig
from coati_ray.config.rewards import RewardSourceSpec, RewardSourcesConfig  # noqa: F401 (re-exported)
from coati_ray.config.sample_options import check_sample_options
from coati_ray.config.runtime import BufferConfig, MakerConfig, SyncConfig, WatchdogConfig  # noqa: F401 (re-exported)
from coati_ray.config.schema import JobConfig, ModelConfig, OptimizerConfig, ResourceConfig, StrategyConfig, opt
from coati_ray.models.value import VALUE_HEAD_FILE


@dataclass
class PromptDataConfig:
    """Prompts for generation, and the optional pretraining data of PPO-ptx."""

    prompt_path: str = opt("data/prompts/train.jsonl", "prompts: `prompt`, `instruction` or `messages` rows in a local "
                                                       "file (.jsonl/.json/.csv/.parquet/.arrow) or a hub dataset name")
    eval_prompt_path: Optional[str] = opt(None, "held-out prompts scored every ppo.eval_every steps (eval/* metrics)")
    subset: Optional[str] = opt(None, "hub datasets: the subset (configuration) of prompt_path / eval_prompt_path")
    split: str = opt("train", "hub datasets: the split prompt_path is read from")
    eval_split: str = opt("test", "hub datasets: the split eval_prompt_path is read from")
    chat_template: str = opt("auto", "how prompts become text: auto (the actor tokenizer's chat template, else "
                                     "Coati's), coati, or a .jinja file; its end-of-turn token ends a response")
    eval_max_samples: Optional[int] = opt(None, "use at most this many held-out prompts")
    gold_task: Optional[str] = opt(None, "programmatic gold scorer that judges held-out answers (e.g. 'sorting'); "
                                         "never used for training")
    ptx_path: Optional[str] = opt(None, "SFT-layout data for the PPO-ptx loss (needs ppo.ptx_coef > 0); a hub name "
                                        "reads its train split")
    format: Literal["auto", "prompt", "instruction", "messages"] = opt("auto", "prompt row layout")
    max_prompt_length: int = opt(64, "prompt tokens kept (from the right: the assistant prefix must stay)")
    ptx_max_length: int = opt(128, "tokens per PPO-ptx sequence")
    max_samples: Optional[int] = opt(None, "use at most this many prompts")
    on_bad_row: Literal["error", "skip"] = opt("error", "a row missing its fields: stop, or skip and count it")

    def source(self, which: str = "train"):
        """How a hub dataset name in prompt_path / eval_prompt_path is read."""
        from coati_ray.data.loading import HubSource

        return HubSource(self.subset, self.split if which == "train" else self.eval_split)

    def validate(self, key: str = "data") -> None:
        _require_data(f"{key}.prompt_path", self.prompt_path)
        for name in ("eval_prompt_path", "ptx_path"):
            if getattr(self, name) is not None:
                _require_data(f"{key}.{name}", getattr(self, name))
        check_chat_template(self.chat_template, f"{key}.chat_template")
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
    backend: str = opt("compact", "compact: finished rows leave the decode batch (a batch costs its rows' own "
                                  "lengths, each row samples from its own seeded stream); hf: Hugging Face's generate, "
                                  "every row decoded until the longest ends; or 'module:function' of your own "
                                  "(coati_ray/models/generators.py)")

    def validate(self, key: str = "generation") -> None:
        from coati_ray.models.generators import generator

        generator(self.backend)  # an unknown name or a module that does not import: one line now
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
    micro_batch_tokens: Optional[int] = opt(None, "padding-free updates: cut each rank's mini-batch into micro-batches "
                                                  "of at most this many real tokens, each packed into one row with "
                                                  "attention kept within each sequence (llama, mistral, qwen2, qwen3); "
                                                  "null: micro_batch_size samples, padded")
    ppo_epochs: int = opt(1, "passes over each rollout batch")
    advantage_estimator: str = opt(
        "gae", "a registered estimator: gae (PPO with a critic) or a critic-free one: grpo, dr_grpo, rloo, "
               "reinforce_pp, reinforce_pp_baseline (coati_ray/algo/advantages.py); or 'module:function' of your "
               "own (docs/extending.md)")
    n_samples_per_prompt: int = opt(1, "samples generated per prompt (a prompt group; group-relative "
                                       "estimators need >= 2)")
    kl_coef: float = opt(0.1, "weight of the KL penalty to the initial policy")
    kl_penalty: Literal["reward", "loss"] = opt(
        "reward", "where the KL goes: reward (Coati/PPO: -kl_coef * KL on every token's reward) or loss (GRPO: "
                  "kl_coef * k3 added to the policy loss)")
    kl_estimator: Literal["k1", "k2", "k3"] = opt("k1", "per-token KL estimator in the reward (the loss uses k3)")
    gamma: float = opt(1.0, "discount")
    lam: float = opt(0.95, "GAE lambda")
    clip_eps: float = opt(0.2, "policy ratio clip: [1 - clip_eps, 1 + clip_eps]")
    clip_eps_low: Optional[float] = opt(None, "lower policy ratio clip, 1 - clip_eps_low (DAPO names both bounds: "
                                              "0.2 with clip_eps_high 0.28); null: clip_eps")
    clip_eps_high: Optional[float] = opt(None, "upper policy ratio clip, 1 + clip_eps_high (DAPO's clip-higher, "
                                               "e.g. 0.28); null: clip_eps")
    behaviour_correction: Literal["none", "tis", "mis"] = opt(
        "none", "off-policy correction for the gap between the makers' log-probs and the trainer's own (async "
                "staleness, a bf16 maker): the ratio against the trainer's recomputed log-probs, each token "
                "weighted by trainer / maker probability, truncated at behaviour_cap (tis) or dropped above it "
                "(mis); costs one forward pass per sample on the trainer")
    behaviour_cap: float = opt(2.0, "the cap of behaviour_correction's importance weight (>= 1)")
    filter_groups: bool = opt(False, "DAPO's dynamic sampling: drop prompt groups whose samples all got the same "
                                     "reward (no signal for a group-relative estimator) and sample more prompts "
                                     "until the maker batch is full again")
    max_sampling_rounds: int = opt(3, "filter_groups: rounds of prompts one maker batch may sample; a batch still "
                                      "short after the last is filled with dropped groups (advantage 0)")
    overlong_filter: bool = opt(False, "leave responses cut at generation.max_new_tokens without an end token out "
                                       "of the loss (DAPO's overlong filtering: a cut answer is not a wrong one)")
    overlong_penalty: float = opt(0.0, "DAPO's soft overlong punishment: the reward falls linearly by up to this "
                                       "much over the last overlong_buffer tokens before max_new_tokens (0: off)")
    overlong_buffer: Optional[int] = opt(None, "tokens before max_new_tokens where overlong_penalty starts; null: a "
                                               "fifth of generation.max_new_tokens (DAPO: 4k of 20k)")
    value_clip_eps: float = opt(0.2, "value clip around the old values (0: off)")
    reward_clip: float = opt(10.0, "clip the training reward (all sources, weighted) to [-c, c] (0: off)")
    whiten_advantages: Optional[bool] = opt(None, "normalise advantages over the group's whole rollout batch (all "
                                                  "ranks); null: the estimator's default (gae, reinforce_pp: yes)")
    loss_agg: Optional[Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]] = opt(
        None, "how the per-token losses of one optimiser step's whole mini-batch (all micro-batches, all ranks) "
              "become one number: token_mean (every token alike: DAPO, verl), seq_mean_token_mean (each answer "
              "alike: GRPO), seq_mean_token_sum_norm (token sum / (answers x max_new_tokens): Dr. GRPO); null: "
              "the estimator's default (dr_grpo: seq_mean_token_sum_norm, the others token_mean)")
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
class TrainerGroupConfig:
    """One trainer group (actor or critic): strategy, optimiser and resources."""

    strategy: StrategyConfig = opt(None, "parallel strategy of this group")
    optim: OptimizerConfig = opt(None, "optimiser of this group")
    resources: ResourceConfig = opt(None, "ranks and per-rank resources of this group")


@dataclass
class PPOConfig(JobConfig):
    """Stage 3: PPO with a KL penalty (and optional PPO-ptx): makers, trainer groups and a replay buffer on Ray."""

    output_dir: str = opt("runs/ppo", "run directory: config.yaml, metrics.jsonl, summary.json, checkpoints/")
    actor: ModelConfig = opt(None, "the policy to optimise (usually the SFT checkpoint); also the initial policy")
    critic: Optional[ModelConfig] = opt(None, "the critic (usually initialised from the reward model); only for "
                                              "ppo.advantage_estimator=gae")
    reward: Optional[ModelConfig] = opt(None, "the frozen reward model (the RM stage's checkpoint); none when "
                                              "rewards come from a function or HTTP service only")
    rewards: RewardSourcesConfig = opt(None, "training reward sources and their weights")
    data: PromptDataConfig = opt(None, "prompts and PPO-ptx data")
    generation: GenerationConfig = opt(None, "sampling")
    ppo: PPOAlgoConfig = opt(None, "algorithm")
    rollout: RolloutConfig = opt(None, "multi-turn episodes in an environment (tools); without one, one response "
                                       "per sample")
    placement: Literal["separate", "colocated"] = opt(
        "separate", "where generation runs: separate (maker actors; weights sent to them after every update) or "
        "colocated (the actor group's ranks generate with their own weights: no weight copy; sync mode)")
    maker: MakerConfig = opt(None, "experience makers (placement: separate)")
    buffer: BufferConfig = opt(None, "replay buffer")
    sync: SyncConfig = opt(None, "weight sync from the trainers to the makers")
    watchdog: WatchdogConfig = opt(None, "ending a run whose step stopped making progress")
    actor_trainer: TrainerGroupConfig = opt(None, "the actor trainer group")
    critic_trainer: TrainerGroupConfig = opt(None, "the critic trainer group")

    @property
    def algorithm(self):
        """The AlgorithmSpec of ppo.advantage_estimator: which models and trainer groups the job builds."""
        from coati_ray.algo.advantages import algorithm

        return algorithm(self.ppo.advantage_estimator)

    @property
    def roles(self) -> tuple[str, ...]:
        """The trainer groups (and buffer consumer groups) of this job: ('actor', 'critic') or ('actor',)."""
        return self.algorithm.trainer_roles

    @property
    def prompts_per_batch(self) -> int:
        """Prompts in one maker batch: maker.batch_size samples are n_samples_per_prompt per prompt."""
        return self.maker.batch_size // self.ppo.n_samples_per_prompt

    @property
    def trainer_log_probs_are_behaviour(self) -> bool:
        """Sync mode, one update per rollout (one epoch, one minibatch) and no KL in the reward: the policy
        that sampled is exactly the one the trainer's first forward computes, so makers skip their own
        log-prob pass and the trainer takes its detached log-probs as the behaviour's (TRL and verl do the
        same when num_iterations / ppo_epochs is 1). Saves one forward pass per sample."""
        p = self.ppo
        return (p.mode == "sync" and p.ppo_epochs == 1 and p.train_batch_size == p.rollout_batch_size
                and (p.kl_penalty == "loss" or p.kl_coef == 0) and p.behaviour_correction == "none")

    @property
    def response_tokens(self) -> int:
        """The most tokens after a prompt: one response's (generation.max_new_tokens), or an episode's
        (rollout.max_total_tokens: every turn and every tool answer)."""
        return self.rollout.max_total_tokens if self.rollout.multi_turn else self.generation.max_new_tokens

    def whiten(self) -> bool:
        w = self.ppo.whiten_advantages
        return self.algorithm.whiten if w is None else w

    def loss_agg(self) -> str:
        return self.ppo.loss_agg or self.algorithm.loss_agg

    def validate(self, check_reward_head: bool = True) -> None:
        """`check_reward_head=False` when the reward model is yet to be trained (the pipeline)."""
        super().validate()
        self._check_algorithm()
        for key in ("actor", "critic", "reward"):
            if getattr(self, key) is not None:
                getattr(self, key).validate(key, trained=key != "reward")
        if self.reward is not None:
            if self.reward.lora_rank:
                _fail("reward.lora_rank", "the reward model is frozen", "remove reward.lora_rank")
            if check_reward_head and not os.path.isfile(os.path.join(self.reward.local_path, VALUE_HEAD_FILE)):
                _fail("reward.path", f"'{self.reward.path}' has no {VALUE_HEAD_FILE}, so it is not a reward model",
                      "point it at the RM stage's checkpoints/final")
        self.rollout.validate()
        if self.rollout.multi_turn and self.ppo.overlong_penalty > 0:
            _fail("ppo.overlong_penalty", "measures one response against generation.max_new_tokens, and an episode "
                  "of rollout.environment has several turns", "use ppo.overlong_filter (episodes cut by "
                  "rollout.max_turns or max_total_tokens are left out), or remove rollout.environment")
        if self.rollout.multi_turn and self.rollout.reward_weight == 0 and not (
                self.rewards.specs(self.reward is not None)):
            _fail("rollout.reward_weight", "is 0 and no rewards.* source is set, so nothing rewards the episodes",
                  "set rollout.reward_weight (e.g. 1.0) or a rewards source")
        self.rewards.validate(has_reward_model=self.reward is not None, has_environment=self.rollout.multi_turn)
        self.sync.validate()
        self.watchdog.validate()
        self.data.validate()
        self.generation.validate()
        self.maker.validate()
        self._check_models_agree()
        p = self.ppo
        for name in ("max_steps", "rollout_batch_size", "train_batch_size", "micro_batch_size", "ppo_epochs",
                     "log_every"):
            if getattr(p, name) < 1:
                _fail(f"ppo.{name}", f"must be >= 1, got {getattr(p, name)}", "use a positive integer")
        if not 0 < p.clip_eps < 1:
            _fail("ppo.clip_eps", f"must be in (0, 1), got {p.clip_eps}", "e.g. 0.2")
        if p.clip_eps_low is not None and not 0 < p.clip_eps_low < 1:
            _fail("ppo.clip_eps_low", f"must be in (0, 1), got {p.clip_eps_low}", "e.g. 0.2, or null for ppo.clip_eps")
        if p.clip_eps_high is not None and p.clip_eps_high <= 0:
            _fail("ppo.clip_eps_high", f"must be > 0, got {p.clip_eps_high}", "e.g. 0.28, or null for ppo.clip_eps")
        if p.behaviour_cap < 1:
            _fail("ppo.behaviour_cap", f"must be >= 1, got {p.behaviour_cap}", "e.g. 2.0")
        check_sample_options(self)  # packing, dynamic sampling, overlong: coati_ray/config/sample_options.py
        check_placement(self)
        if p.rollout_batch_size % self.maker.batch_size:
            _fail("ppo.rollout_batch_size", f"{p.rollout_batch_size} is not a multiple of maker.batch_size "
                  f"({self.maker.batch_size})", f"set it to a multiple of {self.maker.batch_size}")
        if p.rollout_batch_size % p.train_batch_size:
            _fail("ppo.train_batch_size", f"{p.train_batch_size} does not divide ppo.rollout_batch_size "
                  f"({p.rollout_batch_size})", "choose a divisor of the rollout batch")
        for group in (f"{role}_trainer" for role in self.roles):
            g = getattr(self, group)
            g.resources.validate(f"{group}.resources")
            ranks = g.resources.num_ranks
            model = getattr(self, group.split("_")[0])
            if g.strategy.name == "3d":
                _fail(f"{group}.strategy.name", "the 3d strategy is for the supervised stages (SFT, RM, pretrain): "
                      "a PPO group's weight export does not gather tensor-parallel shards yet",
                      "use colossalai_zero2 or colossalai_gemini for PPO trainer groups")
            g.strategy.validate(f"{group}.strategy", num_ranks=ranks, model_key=group.split("_")[0],
                                model_dtype=model.dtype, lora=model.lora_rank > 0, machine=False,
                                quantize=model.quantize)
            g.optim.validate(f"{group}.optim")
            from coati_ray.config.checks import check_flash_attn_precision

            check_flash_attn_precision(model, g.strategy, group.split("_")[0])
            per = (p.micro_batch_size if p.micro_batch_tokens is None else 1) * ranks  # packs: any size
            if p.train_batch_size % per:
                _fail("ppo.train_batch_size", f"{p.train_batch_size} is not divisible by micro_batch_size "
                      f"({p.micro_batch_size}) x {group} ranks ({ranks}) = {per}", f"use a multiple of {per}")
            if self.maker.batch_size % ranks:
                _fail("maker.batch_size", f"{self.maker.batch_size} samples cannot be split evenly over the "
                      f"{ranks} ranks of {group}", f"use a multiple of {ranks}")
        self._check_maker_dtype()
        for role in self.roles:
            getattr(self, f"{role}_trainer").strategy.check_machine(f"{role}_trainer.strategy")
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

    def _check_algorithm(self) -> None:
        """The estimator's needs against the models and groups the config sets up."""
        p = self.ppo
        try:
            spec = self.algorithm
        except KeyError as e:
            _fail("ppo.advantage_estimator", str(e.args[0]).split("; ")[0], str(e.args[0]).split("; ", 1)[1])
        name = f"ppo.advantage_estimator={p.advantage_estimator}"
        if spec.needs_critic and self.critic is None:
            _fail("critic.path", f"{name} needs a critic", "set critic.path (e.g. the RM stage's checkpoint) or "
                  "choose a critic-free estimator: grpo, dr_grpo, rloo, reinforce_pp")
        if not spec.needs_critic:
            if self.critic is not None:
                _fail("critic", f"{name} trains no critic, but a critic is configured",
                      "remove the critic section (and critic_trainer), or use ppo.advantage_estimator=gae")
            if self.critic_trainer != _default_group():
                _fail("critic_trainer", f"{name} trains no critic, but critic_trainer keys are set",
                      "remove the critic_trainer section, or use ppo.advantage_estimator=gae")
        n = p.n_samples_per_prompt
        if n < 1:
            _fail("ppo.n_samples_per_prompt", f"must be >= 1, got {n}", "e.g. 4")
        if spec.group_relative and n < 2:
            _fail("ppo.n_samples_per_prompt", f"{name} compares each prompt's samples, so it needs at least 2",
                  "set ppo.n_samples_per_prompt=4 (or 8)")
        if self.maker.batch_size % n:
            _fail("maker.batch_size", f"{self.maker.batch_size} samples cannot hold whole groups of "
                  f"ppo.n_samples_per_prompt={n} (a prompt's samples stay in one maker batch)",
                  f"use a multiple of {n}")

    def _check_maker_dtype(self) -> None:
        if self.maker.num_gpus > 0 or self.placement == "colocated":  # colocated: no makers, the groups' devices
            return
        for model in ("actor", "critic", "reward"):
            if getattr(self, model) is not None and getattr(self, model).use_flash_attn:
                _fail(f"{model}.use_flash_attn", "makers on CPU (maker.num_gpus=0) load every model with it, and "
                      "FlashAttention-2 runs on CUDA only", "give makers GPUs (maker.num_gpus) or remove the key")
        for model in ("actor", "critic", "reward"):
            if getattr(self, model) is None:
                continue
            if self.maker_dtype(model) == "float16":
                _fail("maker.dtype", f"makers on CPU (maker.num_gpus=0) would run the {model} in float16, which "
                      "CPU kernels do not cover", "set maker.dtype=bfloat16 or float32, or give makers GPUs")

    def _check_models_agree(self) -> None:
        """Critic and reward model read the actor's tokens, and every model must hold a whole sequence."""
        from coati_ray.config.checks import model_config, require_fits_context

        response = self.response_tokens
        what = "rollout.max_total_tokens" if self.rollout.multi_turn else "generation.max_new_tokens"
        length = self.data.max_prompt_length + response
        vocab = model_config("actor.path", self.actor.local_path).get("vocab_size")
        for key in ("actor", "critic", "reward"):
            if getattr(self, key) is None:
                continue
            path = getattr(self, key).local_path
            require_fits_context(f"{key}.path", path, length, f"data.max_prompt_length + {what}",
                                 f"lower data.max_prompt_length or {what}")
            theirs = model_config(f"{key}.path", path).get("vocab_size")
            if key != "actor" and vocab and theirs and theirs != vocab:
                _fail(f"{key}.path", f"'{path}' has a vocabulary of {theirs} but the actor's has {vocab}",
                      "train the critic and reward model from the actor's base model and tokenizer")


def _default_group() -> TrainerGroupConfig:
    from coati_ray.config.loader import from_dict

    return from_dict(TrainerGroupConfig, {})
