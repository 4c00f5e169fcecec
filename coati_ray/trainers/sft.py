"""Stage 1: supervised fine-tuning, loss on assistant tokens only."""

from __future__ import annotations

import functools
from typing import Optional

import torch

from coati_ray.algo.losses import IGNORE_INDEX, sft_loss
from coati_ray.trainers.supervised import SupervisedTrainer


class SFTTrainer(SupervisedTrainer):
    stage = "sft"

    def __init__(self, cfg, strategy, model, *args, **kwargs):
        if cfg.use_neft:
            from coati_ray.models.neftune import add_neftune

            add_neftune(model, cfg.neft_alpha)
        super().__init__(cfg, strategy, model, *args, **kwargs)

    @staticmethod
    def build_dataset(path: str, tokenizer, data_cfg, max_samples: Optional[int], which: str = "train"):
        from coati_ray.data.datasets import build_sft_dataset

        return build_sft_dataset(path, tokenizer, data_cfg.max_length, data_cfg.format, max_samples,
                                 data_cfg.on_bad_row, source=_source(data_cfg, which),
                                 rewritten_history=getattr(data_cfg, "rewritten_history", "per_turn"))

    @staticmethod
    def inspect(item: dict, tokenizer) -> dict:
        """What `--inspect-data` shows of a sample: its text and the spans the loss trains on."""
        from coati_ray.data.template import ChatFormat

        chat = ChatFormat.of(tokenizer)
        return {"text": chat.decode(item["input_ids"]), "trained": chat.trained_spans(item["input_ids"], item["labels"])}

    @staticmethod
    def build_model(model_cfg, checkpoint: Optional[str]):
        from coati_ray.models.factory import build_actor

        return build_actor(model_cfg, checkpoint=checkpoint)

    @staticmethod
    def collator(tokenizer):
        from coati_ray.data.datasets import collate_sft

        return functools.partial(collate_sft, pad_token_id=tokenizer.pad_token_id)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        if self.packing:  # the pack's logits (1, L, V) as they are: no (B, T, V) copy with zeros at the padding
            from coati_ray.models.packing import pack_labels

            logits = self.model(batch["input_ids"], batch["attention_mask"], keep_packed=True)
            return sft_loss(logits, pack_labels(batch["labels"], batch["attention_mask"], IGNORE_INDEX)), {}
        logits = self.model(batch["input_ids"], batch["attention_mask"])
        return sft_loss(logits, batch["labels"]), {}

    def loss_units(self, batch: dict) -> float:
        return float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def count_tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())

    def eval_batch(self, batch: dict) -> dict:
        logits = self.model(batch["input_ids"], batch["attention_mask"])
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        return {"loss": (sft_loss(logits, batch["labels"]).item() * n, n)}


def run_sft(cfg, rank: int = 0, world_size: int = 1, master_addr: str = "127.0.0.1",
            master_port: Optional[int] = None, resume_from: Optional[str] = None, store=None) -> dict:
    """One rank of an SFT job (in-process or inside a Ray actor)."""
    from coati_ray.trainers.runner import run_supervised

    return run_supervised(SFTTrainer, cfg, rank, world_size, master_addr, master_port, resume_from, store)


def _source(data_cfg, which: str):
    """How a hub dataset name is read (subset, split); a config without those keys reads the train split."""
    return data_cfg.source(which) if hasattr(data_cfg, "source") else None
