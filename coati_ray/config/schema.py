"""Typed configuration: one dataclass per component, one per job.

Every field carries a one-line `help` (CleanRL style) so `launch.<stage> --help-config` and the
README's config reference are generated from here and cannot drift. Cross-field checks live in
each class's `validate()`, which runs before any model loads or Ray resource is taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from coati_ray.config.checks import (
    _fail,
    _require_dir,
    _require_model_dir,
    _require_data,
    _require_writable,
    check_chat_template,
    check_cpu_cores,
    check_flash_attn,
    check_flash_attn_precision,
    check_nice,
    require_fits_context,
)
from coati_ray.config.fields import opt, required
from coati_ray.config.strategy import CUDA_ONLY_STRATEGIES, STRATEGIES, StrategyConfig  # noqa: F401 (re-exported)
from coati_ray.config.tracking import LoggingConfig
from coati_ray.config.sample_options import check_supervised_packing


@dataclass
class ModelConfig:
    """Which pretrained checkpoint to start from and how to adapt it."""

    path: str = required("local Hugging Face model directory (config.json + weights + tokenizer) or a hub id "
                         "(org/name), read through the Hugging Face cache (HF_HOME, HF_HUB_OFFLINE, HF_TOKEN)")
    revision: Optional[str] = opt(None, "hub revision of `path` (branch, tag or commit; null: main); the job pins "
                                        "it to the commit it resolves, which every actor loads and config.yaml keeps")
    tokenizer_path: Optional[str] = opt(None, "tokenizer directory or hub id; defaults to `path`")
    tokenizer_revision: Optional[str] = opt(None, "hub revision of `tokenizer_path` (pinned like `revision`)")
    lora_rank: int = opt(0, "LoRA rank; 0 trains every weight, >0 trains only peft LoRA adapters")
    lora_alpha: float = opt(16.0, "LoRA scaling numerator (scale = alpha / rank)")
    lora_dropout: float = opt(0.0, "dropout on the LoRA branch")
    lora_target_modules: str = opt("all-linear", "peft target_modules: 'all-linear' or comma-separated names")
    dtype: Literal["float32", "bfloat16", "float16"] = opt(
        "float32", "parameter dtype the trainer loads (naive/ddp train in it; zero2/gemini keep fp32 masters)")
    trust_remote_code: bool = opt(False, "allow model code shipped inside the checkpoint directory")
    gradient_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    use_flash_attn: bool = opt(False, "FlashAttention-2 (needs the flash-attn package and a GPU); SDPA otherwise")
    quantize: Literal["none", "int8", "int4"] = opt(
        "none", "load the base in 8-bit or 4-bit (nf4) through bitsandbytes, frozen; a trained model needs LoRA "
                "(QLoRA), and its exported checkpoint is merged back to full precision")

    @property
    def local_path(self) -> str:
        """The model directory on this node: `path`, or the cached snapshot of the pinned hub commit."""
        from coati_ray.models.hub import local_dir

        return local_dir(self.path, self.revision, "path")

    @property
    def local_tokenizer_path(self) -> str:
        from coati_ray.models.hub import TOKENIZER, local_dir

        if self.tokenizer_path is None:
            return self.local_path
        return local_dir(self.tokenizer_path, self.tokenizer_revision, "tokenizer_path", selection=TOKENIZER)

    @property
    def attn_implementation(self) -> Optional[str]:
        return "flash_attention_2" if self.use_flash_attn else None

    def pin(self, key: str = "model") -> None:
        """Resolve hub ids to the commits every process will load (on the driver, before Ray starts)."""
        from coati_ray.models.hub import TOKENIZER, pin

        resolved = pin(self.path, self.revision, f"{key}.path")
        self.revision = resolved.commit or self.revision
        if self.tokenizer_path is not None:  # a tokenizer's repo: its tokenizer files, not its weights
            resolved = pin(self.tokenizer_path, self.tokenizer_revision, f"{key}.tokenizer_path", selection=TOKENIZER)
            self.tokenizer_revision = resolved.commit or self.tokenizer_revision

    def validate(self, key: str = "model", trained: bool = True) -> None:
        """`trained=False` for a frozen model (the PPO reward model), which may be quantized without LoRA."""
        if self.quantize != "none" and trained and self.lora_rank <= 0:
            _fail(f"{key}.quantize", f"a {self.quantize} base is frozen, so only LoRA adapters can train on it",
                  f"set {key}.lora_rank (e.g. 8) or {key}.quantize=none")
        self.pin(key)
        _require_model_dir(f"{key}.path", self.local_path)
        if self.tokenizer_path is not None:
            _require_dir(f"{key}.tokenizer_path", self.local_tokenizer_path)
        if self.lora_rank < 0:
            _fail(f"{key}.lora_rank", f"must be >= 0, got {self.lora_rank}",
                  "use 0 for full fine-tuning or a positive rank such as 8 for LoRA")
        if not 0.0 <= self.lora_dropout < 1.0:
            _fail(f"{key}.lora_dropout", f"must be in [0, 1), got {self.lora_dropout}", "e.g. 0.05")
        check_flash_attn(self.use_flash_attn, f"{key}.use_flash_attn")


@dataclass
class DataConfig:
    """Where the training data lives and how to read it."""

    train_path: str = required("dataset: a local .jsonl/.json/.csv/.parquet/.arrow file, a `save_to_disk` directory, "
                               "or a hub dataset name (org/name: pinned to a commit, see data.revision, and read "
                               "from the hub cache with datasets.load_dataset)")
    eval_path: Optional[str] = opt(None, "held-out dataset in the same layout (a hub name: its data.eval_split); "
                                         "None disables evaluation")
    revision: Optional[str] = opt(None, "hub datasets: revision of train_path (branch, tag or commit; null: main); "
                                        "the driver pins it to the commit it resolves, which every rank loads and "
                                        "config.yaml keeps")
    eval_revision: Optional[str] = opt(None, "hub datasets: revision of eval_path (null: data.revision's commit when "
                                             "eval_path is train_path, else main); pinned like data.revision")
    subset: Optional[str] = opt(None, "hub datasets: a directory of the repo, read as load_dataset(name, "
                                      "data_dir=subset) as Coati's --subset is (e.g. harmless-base of "
                                      "Anthropic/hh-rlhf)")
    config_name: Optional[str] = opt(None, "hub datasets: a configuration of the dataset card, read as "
                                           "load_dataset(name, config_name) (null: the card's default)")
    split: str = opt("train", "hub datasets: the split train_path is read from")
    eval_split: str = opt("test", "hub datasets: the split eval_path is read from")
    format: Literal["auto", "messages", "instruction", "prompt_completion", "pairs", "hh_rlhf", "rm_static",
                    "prompt"] = opt(
        "auto", "row layout; 'auto' detects it from the columns of the first row")
    chat_template: str = opt("auto", "how conversations become text: auto (the tokenizer's own chat template, "
                                     "else Coati's), coati (\"Human: ... Assistant: ...\"), or a .jinja file; the "
                                     "checkpoints keep it")
    chat_template_kwargs: Optional[dict[str, Any]] = opt(
        None, "extra variables the template is rendered with in every stage, e.g. {enable_thinking: false} for "
              "Qwen3; the checkpoints keep them (None: the tokenizer's own, {}: none)")
    system_prompt: Optional[str] = opt(None, "a system turn rendered before every conversation that has none "
                                             "(the checkpoints keep it; None: the tokenizer's own, \"\": none)")
    rewritten_history: Literal["per_turn", "last_turn"] = opt(
        "per_turn", "a template that rewrites earlier turns (Qwen3, R1-distill drop their reasoning): per_turn "
                    "trains each assistant turn as its own sample, its history as the template renders it then; "
                    "last_turn trains the final turn only")
    max_length: int = opt(256, "maximum tokens per sequence (prompt + response)")
    max_samples: Optional[int] = opt(None, "use at most this many rows (None: all)")
    on_bad_row: Literal["error", "skip"] = opt("error", "a row missing its fields: stop with an error, or skip and count it")

    def source(self, which: str = "train", key: str = "data"):
        """How a hub dataset name in train_path / eval_path is read (at its pinned commit)."""
        from coati_ray.data.loading import HubSource

        train = which == "train"
        return HubSource(self.subset, self.split if train else self.eval_split,
                         self.revision if train else self.eval_revision, self.config_name, key,
                         f"{key}.{'revision' if train else 'eval_revision'}",
                         f"{key}.{'train_path' if train else 'eval_path'}")

    def pin(self, key: str = "data") -> None:
        """Resolve the hub datasets train_path / eval_path name to the commits every rank loads, in place."""
        from coati_ray.data.loading import pin_hub_data

        self.revision = pin_hub_data(self.train_path, self.revision, self.source("train", key))
        if self.eval_path is not None:
            if self.eval_revision is None and self.eval_path == self.train_path:
                self.eval_revision = self.revision  # one dataset, one commit: its eval split from the same one
            self.eval_revision = pin_hub_data(self.eval_path, self.eval_revision, self.source("eval", key))

    def validate(self, key: str = "data") -> None:
        _require_data(f"{key}.train_path", self.train_path)
        if self.eval_path is not None:
            _require_data(f"{key}.eval_path", self.eval_path)
        check_hub_data_keys(self, key, {"revision": self.train_path, "eval_revision": self.eval_path})
        check_chat_template(self.chat_template, f"{key}.chat_template")
        if self.max_length < 8:
            _fail(f"{key}.max_length", f"must be >= 8, got {self.max_length}", "e.g. 256")
        if self.max_samples is not None and self.max_samples < 1:
            _fail(f"{key}.max_samples", f"must be >= 1 or null, got {self.max_samples}", "remove it to use all rows")
        self.pin(key)


def check_hub_data_keys(cfg, key: str, paths: dict) -> None:
    """A revision key of `cfg` only beside a hub dataset name (`paths`: revision key -> the dataset path it
    pins, or None); `cfg.subset`, a directory of the repo, relative to its root."""
    from coati_ray.data.loading import is_hub_data

    subset = cfg.subset
    for revision_key, path in paths.items():
        if getattr(cfg, revision_key) is not None and path is not None and not is_hub_data(path):
            _fail(f"{key}.{revision_key}", f"'{getattr(cfg, revision_key)}' is a hub revision, but '{path}' is a "
                  "local path", f"remove {key}.{revision_key} (a local file has no revisions)")
    if subset is not None and (not subset.strip("/") or subset.startswith(("/", "~")) or ".." in subset.split("/")):
        _fail(f"{key}.subset", f"'{subset}' is not a directory inside a dataset repo",
              "name one relative to the repo's root, e.g. harmless-base (Coati's --subset)")


@dataclass
class OptimizerConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = opt(5e-5, "peak learning rate (0 freezes the weights: a diagnosis run, e.g. of a weight sync)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.95, "AdamW beta2")
    eps: float = opt(1e-8, "AdamW epsilon")
    scheduler: Literal["constant", "cosine", "linear"] = opt("cosine", "decay after warm-up")
    warmup_steps: int = opt(0, "linear warm-up steps")
    min_lr_ratio: float = opt(0.0, "final lr as a fraction of lr (cosine/linear)")

    def validate(self, key: str = "optim") -> None:
        if self.lr < 0:
            _fail(f"{key}.lr", f"must be >= 0, got {self.lr}", "e.g. 5e-5 (0 freezes the weights)")
        if self.warmup_steps < 0:
            _fail(f"{key}.warmup_steps", f"must be >= 0, got {self.warmup_steps}", "e.g. 0")


@dataclass
class ResourceConfig:
    """How many Ray actors a trainer group has and what each one takes."""

    num_ranks: int = opt(1, "processes in the trainer group (its torch.distributed world size)")
    num_cpus_per_rank: float = opt(1.0, "CPUs reserved per rank (fractions allowed)")
    num_gpus_per_rank: float = opt(0.0, "GPUs reserved per rank (fractions allow colocation)")
    torch_threads: Optional[int] = opt(None, "torch intra-op threads per rank (None: torch default)")
    cpu_cores: Optional[list[int]] = opt(None, "pin every thread of each rank to these cores of its node, e.g. [1] "
                                               "(Linux affinity; None: the OS schedules). Where makers and trainers "
                                               "share a node's cores, separate cores keep one stage from slowing the other")
    nice: int = opt(0, "Linux nice value of every thread of each rank (0-19; 0: unchanged; a thread already nicer "
                       "keeps its own; no privilege needed). Ray runs an actor's compute at nice 15, so there only "
                       "16-19 change anything: where makers and trainers share a node's cores, trainers at 19 leave "
                       "a core both want mostly (about 70 %) to the makers, and still use every cycle they leave")

    def validate(self, key: str = "resources") -> None:
        if self.num_ranks < 1:
            _fail(f"{key}.num_ranks", f"must be >= 1, got {self.num_ranks}", "e.g. 1 or 2")
        if self.num_cpus_per_rank < 0 or self.num_gpus_per_rank < 0:
            _fail(key, "CPU and GPU requests must be >= 0", "e.g. num_cpus_per_rank=1")
        check_cpu_cores(self.cpu_cores, f"{key}.cpu_cores")
        check_nice(self.nice, f"{key}.nice")


@dataclass
class TrainerConfig:
    """The update loop shared by the SFT and RM stages."""

    max_epochs: int = opt(1, "passes over the training data")
    max_steps: Optional[int] = opt(None, "stop after this many optimiser steps (None: run all epochs)")
    batch_size: int = opt(8, "global batch (sequences or pairs per optimiser step, all ranks together)")
    micro_batch_size: int = opt(4, "sequences per forward/backward on one rank; the rest is accumulated")
    micro_batch_tokens: Optional[int] = opt(None, "padding-free training: cut each rank's share of a batch into "
                                                  "micro-batches of at most this many tokens, each packed into one "
                                                  "row with attention kept within each sequence (llama, mistral, "
                                                  "qwen2, qwen3); the loss is a token mean over the share (SFT) or "
                                                  "a mean over its pairs (RM), whatever the cut; null: "
                                                  "micro_batch_size sequences, padded")
    accumulation_steps: Optional[int] = opt(None, "micro-batches accumulated per optimiser step on each rank; set "
                                                  "without batch_size, batch_size = micro_batch_size x "
                                                  "accumulation_steps x ranks (null: batch_size decides)")
    log_every: int = opt(1, "print a progress line every N steps (metrics.jsonl gets every step)")
    eval_every: Optional[int] = opt(None, "evaluate every N steps (None: at the end only)")
    save_every: Optional[int] = opt(None, "checkpoint every N steps (None: at the end only)")
    keep_checkpoints: int = opt(2, "how many step checkpoints to keep (the final model is always kept)")
    save_optimizer: bool = opt(True, "save optimiser state with each checkpoint (needed for exact resume)")

    def validate(self, key: str = "trainer", num_ranks: int = 1) -> None:
        for name in ("max_epochs", "batch_size", "micro_batch_size", "log_every"):
            if getattr(self, name) < 1:
                _fail(f"{key}.{name}", f"must be >= 1, got {getattr(self, name)}", "use a positive integer")
        for name in ("max_steps", "eval_every", "save_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                _fail(f"{key}.{name}", f"must be >= 1 or null, got {value}", "use a positive integer or remove it")
        per_step = self.micro_batch_size * num_ranks
        if self.accumulation_steps is not None:
            if self.accumulation_steps < 1:
                _fail(f"{key}.accumulation_steps", f"must be >= 1, got {self.accumulation_steps}", "e.g. 8")
            if self.batch_size != per_step * self.accumulation_steps:
                _fail(f"{key}.batch_size", f"{self.batch_size} disagrees with micro_batch_size ({self.micro_batch_size})"
                      f" x accumulation_steps ({self.accumulation_steps}) x ranks ({num_ranks}) = "
                      f"{per_step * self.accumulation_steps}", f"set only one of {key}.batch_size and "
                      f"{key}.accumulation_steps, or make them agree")
        if self.batch_size % per_step != 0:
            _fail(f"{key}.batch_size", f"{self.batch_size} is not divisible by micro_batch_size "
                  f"({self.micro_batch_size}) x ranks ({num_ranks}) = {per_step}",
                  f"set trainer.batch_size to a multiple of {per_step}")


@dataclass
class RayConfig:
    """The embedded local Ray a job starts when no cluster is running (a cluster keeps its own settings)."""

    dashboard: bool = opt(True, "start the Ray dashboard on 127.0.0.1 and print its address (false: faster start)")
    dashboard_port: int = opt(8265, "first port to try for the dashboard; the next free one is taken if busy")

    def validate(self, key: str = "ray") -> None:
        if not 1024 <= self.dashboard_port <= 65000:
            _fail(f"{key}.dashboard_port", f"must be in 1024..65000, got {self.dashboard_port}", "e.g. 8265")


@dataclass
class JobConfig:
    """Fields every job has; subclasses add their components."""

    output_dir: str = opt("runs/job", "run directory: config.yaml, metrics.jsonl, summary.json, checkpoints/")
    ray: RayConfig = opt(None, "the embedded local Ray (when no cluster is running)")
    logging: LoggingConfig = opt(None, "experiment tracking besides metrics.jsonl and TensorBoard (W&B)")

    def validate(self) -> None:
        _require_writable(self.output_dir)
        self.ray.validate()
        self.logging.validate()


@dataclass
class SFTConfig(JobConfig):
    """Stage 1: supervised fine-tuning of a causal LM (loss on assistant tokens only)."""

    output_dir: str = opt("runs/sft", "run directory: config.yaml, metrics.jsonl, summary.json, checkpoints/")
    model: ModelConfig = opt(None, "the causal LM to fine-tune")
    data: DataConfig = opt(None, "demonstrations: `messages` or `instruction`/`input`/`output` rows")
    strategy: StrategyConfig = opt(None, "parallel strategy")
    optim: OptimizerConfig = opt(None, "optimiser")
    trainer: TrainerConfig = opt(None, "update loop")
    resources: ResourceConfig = opt(None, "trainer-group size and per-rank resources")
    use_neft: bool = opt(False, "NEFTune: uniform noise of scale neft_alpha / sqrt(length x hidden) on the input "
                                "embeddings, in training only (evaluation and generation are unchanged)")
    neft_alpha: float = opt(5.0, "NEFTune's noise alpha (the NEFTune paper uses 5 to 15)")

    def validate(self) -> None:
        super().validate()
        if self.use_neft and self.neft_alpha <= 0:
            _fail("neft_alpha", f"must be > 0, got {self.neft_alpha}", "e.g. 5")
        self.model.validate()
        self.data.validate()
        self.resources.validate()
        self.strategy.validate(num_ranks=self.resources.num_ranks, model_dtype=self.model.dtype,
                               lora=self.model.lora_rank > 0, quantize=self.model.quantize, machine=False)
        self.optim.validate()
        self.trainer.validate(num_ranks=self.resources.num_ranks)
        tc = self.trainer
        self.strategy.check_3d_accumulation("strategy", tc.batch_size // self.resources.num_ranks // tc.micro_batch_size)
        self.check_layout()
        check_supervised_packing(self)
        check_flash_attn_precision(self.model, self.strategy, "model")
        self.strategy.check_machine()  # what this machine lacks comes after what the config gets wrong
        require_fits_context("data.max_length", self.model.local_path, self.data.max_length, "data.max_length",
                             "lower data.max_length to the model's context")

    def check_layout(self) -> None:
        if self.data.format not in ("auto", "messages", "instruction", "prompt_completion"):
            _fail("data.format", f"'{self.data.format}' is not an SFT layout",
                  "use auto, messages, instruction or prompt_completion")


@dataclass
class RMConfig(SFTConfig):
    """Stage 2: a reward model (backbone + scalar head) trained on ranked pairs."""

    output_dir: str = opt("runs/rm", "run directory: config.yaml, metrics.jsonl, summary.json, checkpoints/")
    loss_fn: Literal["log_sig", "log_exp"] = opt("log_sig", "pairwise loss: log_sig (OpenAI) or log_exp (Anthropic)")

    def check_layout(self) -> None:
        if self.use_neft:
            _fail("use_neft", "NEFTune is for SFT (and pretraining), not a reward model", "remove use_neft")
        if self.strategy.name == "3d" and self.strategy.zero == 0 and self.resources.num_ranks > 1:
            # 3d boosts the transformer only; without ZeRO its data parallelism is DDP around that transformer,
            # so the value head's gradients would never be averaged over ranks
            _fail("strategy.zero", "a reward model on 3d with zero=0 and several ranks would leave its value head "
                  "unsynchronised across ranks", "use strategy.zero=1 (or 2)")
        if self.data.format not in ("auto", "pairs", "hh_rlhf", "rm_static"):
            _fail("data.format", f"'{self.data.format}' is not a preference-pair layout",
                  "use auto, pairs, hh_rlhf or rm_static")
