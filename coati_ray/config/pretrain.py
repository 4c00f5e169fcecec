"""Continual pretraining (Colossal-LLaMA's train.py) on data from `launch.prepare_data`.

Colossal-LLaMA's switches map onto our keys: `dataset` -> data.train_path (comma-separated prepared
folders), `load_checkpoint` -> load_checkpoint, `save_interval` -> trainer.save_every, `warmup_steps`
-> optim.warmup_steps (0: warmup_ratio of the steps, 2.5 %), `mixed_precision` -> strategy.precision,
`gradient_clipping` -> strategy.grad_clip, `use_grad_checkpoint` -> model.gradient_checkpointing,
`use_flash_attn` -> model.use_flash_attn, `freeze_non_embeds_params` -> model.freeze_non_embeds_params,
`benchmark` / `num_samples` -> data.benchmark / data.num_samples, `use_neft` -> use_neft.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from coati_ray.config.checks import _fail, _require_path
from coati_ray.config.schema import DataConfig, ModelConfig, SFTConfig, opt


def split_paths(paths: str) -> list[str]:
    return [p.strip() for p in paths.split(",") if p.strip()]


@dataclass
class PretrainDataConfig(DataConfig):
    """Prepared data (or random sequences for a benchmark)."""

    train_path: str = opt("", "launch.prepare_data output directories (or their arrow/part-* folders), comma-separated")
    eval_path: Optional[str] = opt(None, "held-out prepared data, the same way; None disables evaluation")
    max_length: int = opt(4096, "tokens per sample; longer prepared samples are cut")
    max_samples: Optional[int] = opt(None, "use at most this many prepared samples, every category in proportion "
                                           "and spread over its bins (None: all)")
    benchmark: bool = opt(False, "train on random token sequences of max_length instead of data (throughput)")
    num_samples: int = opt(512, "random sequences when benchmark=true")

    def validate(self, key: str = "data") -> None:
        if not self.benchmark and not split_paths(self.train_path):
            _fail(f"{key}.train_path", "is empty", "point it at launch.prepare_data output, or set data.benchmark=true")
        for path in split_paths(self.train_path) + split_paths(self.eval_path or ""):
            _require_path(f"{key}.train_path", path)
        if self.max_length < 8:
            _fail(f"{key}.max_length", f"must be >= 8, got {self.max_length}", "e.g. 4096")
        if self.num_samples < 1:
            _fail(f"{key}.num_samples", f"must be >= 1, got {self.num_samples}", "e.g. 512")


@dataclass
class PretrainModelConfig(ModelConfig):
    freeze_non_embeds_params: bool = opt(False, "train only the input embeddings and the LM head (e.g. right after "
                                                "launch.expand_vocab)")

    def validate(self, key: str = "model", trained: bool = True) -> None:
        super().validate(key, trained)
        if self.freeze_non_embeds_params and self.lora_rank > 0:
            _fail(f"{key}.freeze_non_embeds_params", "with LoRA only the adapters train",
                  "set model.lora_rank=0 or remove freeze_non_embeds_params")


@dataclass
class PretrainConfig(SFTConfig):
    """Continual pretraining of a causal LM on prepared data, loss on target tokens, bucket order."""

    output_dir: str = opt("runs/pretrain", "run directory: config.yaml, metrics.jsonl, summary.json, checkpoints/")
    model: PretrainModelConfig = opt(None, "the causal LM to train further")
    data: PretrainDataConfig = opt(None, "prepared data (launch.prepare_data) or data.benchmark")
    load_checkpoint: Optional[str] = opt(None, "a step checkpoint (checkpoints/step_N: resumes model, optimiser, "
                                               "schedule and RNG) or a model folder (`modelling`: weights only, "
                                               "to start the next stage)")
    warmup_ratio: float = opt(0.025, "warm-up as a fraction of the steps when optim.warmup_steps is 0")

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.warmup_ratio < 1:
            _fail("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}", "e.g. 0.025")
        if self.load_checkpoint is not None:
            _require_path("load_checkpoint", self.load_checkpoint)
            if not os.path.isfile(os.path.join(self.load_checkpoint, "trainer_state.json")) and \
                    not os.path.isfile(os.path.join(self.load_checkpoint, "config.json")):
                _fail("load_checkpoint", f"'{self.load_checkpoint}' is neither a complete step checkpoint "
                      "(trainer_state.json) nor a model folder (config.json)", "point it at one of those")

    def check_layout(self) -> None:
        pass  # prepared data has one layout
