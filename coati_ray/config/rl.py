"""Configuration of stage 3: PPO on Ray (makers, trainer groups, replay buffer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional

from coati_ray.config.checks import _fail, _require_data, check_chat_template
from coati_ray.config.rollout import RolloutConfig
from coati_ray.config.reward_sources import RewardSourceSpec, RewardSourcesConfig  # noqa: F401 (re-exported)
from coati_ray.config.runtime import (BufferConfig, ColocatedConfig, MakerConfig, SyncConfig,  # noqa: F401 (re-exported)
                                      WatchdogConfig)
from coati_ray.config.schema import JobConfig, ModelConfig, OptimizerConfig, ResourceConfig, StrategyConfig, opt


@dataclass
class PromptDataConfig:
    """Prompts for generation, and the optional pretraining data of PPO-ptx."""

    prompt_path: str = opt("data/prompts/train.jsonl", "prompts: `prompt`, `instruction` or `messages` rows in a local "
                                                       "file (.jsonl/.json/.csv/.parquet/.arrow) or a hub dataset name")
    eval_prompt_path: Optional[str] = opt(None, "held-out prompts scored every algorithm.eval_every steps (eval/* metrics)")
    revision: Optional[str] = opt(None, "hub datasets: revision of prompt_path (branch, tag or commit; null: main); "
                                        "the driver pins it to the commit it resolves, which every maker and rank "
                                        "loads and config.yaml keeps")
    eval_revision: Optional[str] = opt(None, "hub datasets: revision of eval_prompt_path (null: data.revision's "
                                             "commit when it is prompt_path, else main); pinned like data.revision")
    ptx_revision: Optional[str] = opt(None, "hub datasets: revision of ptx_path (null: main); pinned like "
                                            "data.revision")
    subset: Optional[str] = opt(None, "hub datasets: a directory of the prompt_path / eval_prompt_path repo, read as "
                                      "load_dataset(name, data_dir=subset) as Coati's --subset is")
    config_name: Optional[str] = opt(None, "hub datasets: a configuration of the prompt_path / eval_prompt_path "
                                           "card, read as load_dataset(name, config_name) (null: its default)")
    split: str = opt("train", "hub datasets: the split prompt_path is read from")
    eval_split: str = opt("test", "hub datasets: the split eval_prompt_path is read from")
    chat_template: str = opt("auto", "how prompts become text: auto (the actor tokenizer's chat template, else "
                                     "Coati's), coati, or a .jinja file; its end-of-turn token ends a response")
    system_prompt: Optional[str] = opt(None, "a system turn rendered before every conversation that has none "
                                             "(the checkpoints keep it; None: the tokenizer's own, \"\": none)")
    chat_template_kwargs: Optional[dict[str, Any]] = opt(None, "extra variables the template is rendered with, e.g. "
                                                     "{enable_thinking: false} for Qwen3 (None: the tokenizer's own, "
                                                     "kept from the SFT checkpoint; {}: none)")
    eval_max_samples: Optional[int] = opt(None, "use at most this many held-out prompts")
    gold_task: Optional[str] = opt(None, "programmatic gold scorer that judges held-out answers (e.g. 'sorting'); "
                                         "never used for training")
    ptx_path: Optional[str] = opt(None, "SFT-layout data for the PPO-ptx loss (needs algorithm.ptx_coef > 0); a hub name "
                                        "reads its train split")
    format: Literal["auto", "prompt", "instruction", "messages"] = opt("auto", "prompt row layout")
    max_prompt_length: int = opt(64, "prompt tokens kept (from the right: the assistant prefix must stay)")
    ptx_max_length: int = opt(128, "tokens per PPO-ptx sequence")
    max_samples: Optional[int] = opt(None, "use at most this many prompts")
    on_bad_row: Literal["error", "skip"] = opt("error", "a row missing its fields: stop, or skip and count it")

    def source(self, which: str = "train", key: str = "data"):
        """How a hub dataset name in prompt_path ("train"), eval_prompt_path ("eval") or ptx_path ("ptx", its
        train split) is read, at its pinned commit."""
        from coati_ray.data.loading import HubSource

        if which == "ptx":
            return HubSource(None, "train", self.ptx_revision, None, key, f"{key}.ptx_revision", f"{key}.ptx_path")
        train = which == "train"
        return HubSource(self.subset, self.split if train else self.eval_split,
                         self.revision if train else self.eval_revision, self.config_name, key,
                         f"{key}.{'revision' if train else 'eval_revision'}",
                         f"{key}.{'prompt_path' if train else 'eval_prompt_path'}")

    def pin(self, key: str = "data") -> None:
        """Resolve the hub datasets prompt_path / eval_prompt_path / ptx_path name to the commits every maker
        and trainer rank loads, in place."""
        from coati_ray.data.loading import pin_hub_data

        self.revision = pin_hub_data(self.prompt_path, self.revision, self.source("train", key))
        if self.eval_prompt_path is not None:
            if self.eval_revision is None and self.eval_prompt_path == self.prompt_path:
                self.eval_revision = self.revision
            self.eval_revision = pin_hub_data(self.eval_prompt_path, self.eval_revision, self.source("eval", key))
        if self.ptx_path is not None:
            self.ptx_revision = pin_hub_data(self.ptx_path, self.ptx_revision, self.source("ptx", key))

    def validate(self, key: str = "data") -> None:
        from coati_ray.config.schema import check_hub_data_keys

        _require_data(f"{key}.prompt_path", self.prompt_path)
        for name in ("eval_prompt_path", "ptx_path"):
            if getattr(self, name) is not None:
                _require_data(f"{key}.{name}", getattr(self, name))
        check_hub_data_keys(self, key, {"revision": self.prompt_path, "eval_revision": self.eval_prompt_path,
                                        "ptx_revision": self.ptx_path})
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
        self.pin(key)


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
                                  "every row decoded until the longest ends; static: hf over a static KV cache, "
                                  "compiled with CUDA graphs on a GPU (many batches of one shape); or "
                                  "'module:function' of your own (coati_ray/models/generators.py)")
    sampler_log_probs: bool = opt(True, "take the behaviour log-probs from the logits the sampler drew from (compact "
                                        "backend): one actor forward fewer per sample, equal to a separate pass "
                                        "to float noise; false: a separate forward over the sampled sequences")

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
class AlgorithmConfig:
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
    sort_micro_batches: bool = opt(True, "cut each rank's mini-batch into micro-batches of samples of alike length "
                                         "and drop the columns that are padding in all of a micro-batch's rows: "
                                         "the same losses and gradients to float noise (each loss is a share of "
                                         "the whole mini-batch), fewer positions computed; false: in shuffled "
                                         "order, at the shard's width")
    share_prompts: bool = opt(True, "rows of one prompt group (n_samples_per_prompt > 1) next to each other run "
                                    "their prompt once in the reference, behaviour and training forwards, its "
                                    "keys and values repeated for each answer: the same log-probs and gradients "
                                    "to float noise, fewer positions; a group's rows in a mini-batch then stay "
                                    "together, the longest groups first (families with a transformers cache and "
                                    "position ids, not under flash-attention 2 or length-scaled RoPE; in training "
                                    "on the naive and ddp strategies, without gradient checkpointing or dropout)")
    ppo_epochs: int = opt(1, "passes over each rollout batch")
    advantage_estimator: str = opt(
        "gae", "a registered estimator: gae (PPO with a critic) or a critic-free one: grpo, dr_grpo, rloo, "
               "reinforce_pp, reinforce_pp_baseline (coati_ray/algo/advantages.py); or 'module:function' of your "
               "own (docs/extending.md)")
    n_samples_per_prompt: int = opt(1, "samples generated per prompt (a prompt group; group-relative "
                                       "estimators need >= 2)")
    kl_coef: float = opt(0.1, "weight of the KL penalty to the initial policy (0: none, and the makers skip the "
                              "initial policy's pass)")
    kl_penalty: Literal["reward", "sequence", "loss"] = opt(
        "reward", "where the KL goes: reward (PPO: -kl_coef * KL on every token's reward), sequence (Coati's "
                  "train_prompts.py --kl_coef: kl_coef * the response's mean of (e^r - 1) - r, r = log pi - log "
                  "pi_ref, taken once from the sequence's reward at its last token) or loss (GRPO: kl_coef * k3 "
                  "added to the policy loss)")
    kl_estimator: Literal["k1", "k2", "k3"] = opt("k1", "per-token KL estimator of kl_penalty=reward and of the kl "
                                                        "metric (sequence uses Coati's, the loss k3)")
    gamma: float = opt(1.0, "discount")
    lam: float = opt(0.95, "GAE lambda")
    clip_eps: float = opt(0.2, "policy ratio clip: [1 - clip_eps, 1 + clip_eps]")
    clip_eps_low: Optional[float] = opt(None, "lower policy ratio clip, 1 - clip_eps_low (DAPO names both bounds: "
                                              "0.2 with clip_eps_high 0.28); null: clip_eps")
    clip_eps_high: Optional[float] = opt(None, "upper policy ratio clip, 1 + clip_eps_high (DAPO's clip-higher, "
                                               "e.g. 0.28); null: clip_eps")
    behaviour_correction: Literal["none", "tis", "mis", "measure"] = opt(
        "none", "off-policy correction for the gap between the makers' log-probs and the trainer's own (async "
                "staleness, a bf16 maker): the ratio against the trainer's recomputed log-probs, each token "
                "weighted by trainer / maker probability, truncated at behaviour_cap (tis) or dropped above it "
                "(mis), or only measured (measure: behaviour/* metrics, no correction; the makers' log-probs "
                "are the old ones); costs one forward pass per sample on the trainer")
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

    @property
    def kl_in_reward(self) -> bool:
        """The makers subtract a KL penalty from the rewards (per token, or once per sequence): they need
        the behaviour policy's log-probs."""
        return self.kl_penalty in ("reward", "sequence") and self.kl_coef != 0

    @property
    def needs_reference(self) -> bool:
        """Whether the makers run the initial policy's pass: only a KL (in the reward or in the loss) reads it.
        With kl_coef 0 it is skipped, as TRL does at beta 0, and the `kl` metric is left out."""
        return self.kl_coef != 0


@dataclass
class TrainerGroupConfig:
    """One trainer group (actor or critic): strategy, optimiser and resources."""

    strategy: StrategyConfig = opt(None, "parallel strategy of this group")
    optim: OptimizerConfig = opt(None, "optimiser of this group")
    resources: ResourceConfig = opt(None, "ranks and per-rank resources of this group")
    max_restarts: int = opt(3, "a rank of this group lost (its process or its node): the job restarts its actors "
                               "from the last complete checkpoint by itself, at most this many times in a run "
                               "(0: the run stops at once with the line naming the checkpoint to resume from)")


@dataclass
class RLConfig(JobConfig):
    """Stage 3 (Coati's "PPO" stage, the pipeline's `ppo:`): reinforcement learning of the policy, PPO with a KL
    penalty (and optional PPO-ptx), GRPO and the other estimators of `algorithm.advantage_estimator`: makers,
    trainer groups and a replay buffer on Ray."""

    # keys renamed since configs were written: read under their new names, said once (docs/concepts.md)
    RENAMES: ClassVar[dict] = {"ppo": "algorithm", "reward": "reward_model", "sync": "weight_sync"}

    output_dir: str = opt("runs/ppo", "run directory: config.yaml, metrics.jsonl, summary.json, checkpoints/")
    actor: ModelConfig = opt(None, "the policy to optimise (usually the SFT checkpoint); also the initial policy")
    critic: Optional[ModelConfig] = opt(None, "the critic (usually initialised from the reward model); only for "
                                              "algorithm.advantage_estimator=gae")
    reward_model: Optional[ModelConfig] = opt(None, "the frozen reward model (the RM stage's checkpoint); none "
                                                    "when rewards come from a function or HTTP service only")
    rewards: RewardSourcesConfig = opt(None, "training reward sources and their weights")
    data: PromptDataConfig = opt(None, "prompts and PPO-ptx data")
    generation: GenerationConfig = opt(None, "sampling")
    algorithm: AlgorithmConfig = opt(None, "the RL algorithm: estimator, losses, KL, schedule")
    rollout: RolloutConfig = opt(None, "multi-turn episodes in an environment (tools); without one, one response "
                                       "per sample")
    placement: str = opt(
        "separate", "where generation runs: separate (maker actors; weights sent to them after every update), "
        "colocated (the actor group's ranks generate with their own weights: no weight copy; sync mode), or a "
        "placement of your own (coati_ray.seams.Placement: a registered name, or 'module:attr')")
    plugins: list[str] = opt([], "modules of your own imported before the config is checked and in every actor: "
                                 "they register plug-ins by name (estimators, reward kinds, backends, transports, "
                                 "placements; coati_ray/seams.py)")
    colocated: ColocatedConfig = opt(None, "placement: colocated's memory")
    maker: MakerConfig = opt(None, "experience makers (placement: separate)")
    buffer: BufferConfig = opt(None, "replay buffer")
    weight_sync: SyncConfig = opt(None, "weight sync from the trainers to the makers")
    watchdog: WatchdogConfig = opt(None, "ending a run whose step stopped making progress")
    actor_trainer: TrainerGroupConfig = opt(None, "the actor trainer group")
    critic_trainer: TrainerGroupConfig = opt(None, "the critic trainer group")

    @property
    def placement_spec(self):
        """The coati_ray.seams.Placement `placement` names (what the driver and the checks read)."""
        from coati_ray.config.placement import placement_of

        return placement_of(self.placement)

    @property
    def estimator(self):
        """The AlgorithmSpec of algorithm.advantage_estimator: which models and trainer groups the job builds."""
        from coati_ray.algo.advantages import algorithm

        return algorithm(self.algorithm.advantage_estimator)

    @property
    def roles(self) -> tuple[str, ...]:
        """The trainer groups (and buffer consumer groups) of this job: ('actor', 'critic') or ('actor',)."""
        return self.estimator.trainer_roles

    @property
    def prompts_per_batch(self) -> int:
        """Prompts in one maker batch: maker.batch_size samples are n_samples_per_prompt per prompt."""
        return self.maker.batch_size // self.algorithm.n_samples_per_prompt

    @property
    def trainer_log_probs_are_behaviour(self) -> bool:
        """Sync mode, one update per rollout (one epoch, one minibatch) and no KL in the reward: the policy
        that sampled is exactly the one the trainer's first forward computes, so makers skip their own
        log-prob pass and the trainer takes its detached log-probs as the behaviour's (TRL and verl do the
        same when num_iterations / ppo_epochs is 1). Saves one forward pass per sample."""
        p = self.algorithm
        return (p.mode == "sync" and p.ppo_epochs == 1 and p.train_batch_size == p.rollout_batch_size
                and not p.kl_in_reward and p.behaviour_correction == "none")

    @property
    def response_tokens(self) -> int:
        """The most tokens after a prompt: one response's (generation.max_new_tokens), or an episode's
        (rollout.max_total_tokens: every turn and every tool answer)."""
        return self.rollout.max_total_tokens if self.rollout.multi_turn else self.generation.max_new_tokens

    def whiten(self) -> bool:
        w = self.algorithm.whiten_advantages
        return self.estimator.whiten if w is None else w

    def loss_agg(self) -> str:
        return self.algorithm.loss_agg or self.estimator.loss_agg

    def validate(self, check_reward_head: bool = True) -> None:
        """`check_reward_head=False` when the reward model is yet to be trained (the pipeline); the checks are
        coati_ray/config/ppo_checks.py."""
        from coati_ray.config.ppo_checks import check_ppo
        from coati_ray.seams import import_plugins

        import_plugins(self.plugins)  # before any section looks a name up: the modules register theirs
        super().validate()
        check_ppo(self, check_reward_head)

    def maker_dtype(self, model: str) -> str:
        """The dtype a maker loads `model` ('actor', 'initial', 'critic', 'reward') in.

        Trainers and makers are separate precisions: a trainer keeps its master weights (model.dtype, or
        fp32 masters under zero2/gemini) and every weight sync casts to this dtype on purpose.
        """
        if self.maker.dtype != "auto":
            return self.maker.dtype
        if model in ("reward", "reward_model"):
            return self.reward_model.dtype
        key = "critic" if model == "critic" else "actor"
        strategy = getattr(self, f"{key}_trainer").strategy
        if strategy.name.startswith("colossalai") and strategy.precision != "fp32":
            return {"bf16": "bfloat16", "fp16": "float16"}[strategy.precision]
        return getattr(self, key).dtype
