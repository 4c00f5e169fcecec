"""Stage 2: reward model on ranked pairs (log_sig / log_exp), tracking accuracy and margin."""

from __future__ import annotations

import functools
from typing import Optional

import torch

from coati_ray.algo.losses import reward_model_loss
from coati_ray.trainers.sft import _source
from coati_ray.trainers.supervised import SupervisedTrainer


class RMTrainer(SupervisedTrainer):
    stage = "rm"

    @staticmethod
    def build_dataset(path: str, tokenizer, data_cfg, max_samples: Optional[int], which: str = "train"):
        from coati_ray.data.datasets import build_preference_dataset

        return build_preference_dataset(path, tokenizer, data_cfg.max_length, data_cfg.format, max_samples,
                                        data_cfg.on_bad_row, source=_source(data_cfg, which))

    @staticmethod
    def inspect(item: dict, tokenizer) -> dict:
        """What `--inspect-data` shows of a pair: the two conversations the model scores (at their last token)."""
        from coati_ray.data.template import ChatFormat

        chat = ChatFormat.of(tokenizer)
        return {"chosen": chat.decode(item["chosen_ids"]), "rejected": chat.decode(item["rejected_ids"])}

    @staticmethod
    def build_model(model_cfg, checkpoint: Optional[str]):
        from coati_ray.models.factory import build_reward_model

        return build_reward_model(model_cfg, checkpoint=checkpoint)

    @staticmethod
    def collator(tokenizer):
        from coati_ray.data.datasets import collate_pairs

        return functools.partial(collate_pairs, pad_token_id=tokenizer.pad_token_id)

    def _scores(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        # Chosen and rejected go through the model in one forward pass (one all-reduce under DDP).
        ids, mask = _stack_pairs(batch)
        scores = self.model(ids, mask)
        half = batch["chosen_ids"].size(0)
        return scores[:half], scores[half:]

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        chosen, rejected = self._scores(batch)
        return reward_model_loss(chosen, rejected, self.cfg.loss_fn)

    def item_tokens(self, item: dict) -> int:
        return len(item["chosen_ids"]) + len(item["rejected_ids"])

    def loss_units(self, batch: dict) -> float:
        return float(batch["chosen_ids"].size(0))

    def eval_batch(self, batch: dict) -> dict:
        chosen, rejected = self._scores(batch)
        n = chosen.numel()
        loss, stats = reward_model_loss(chosen, rejected, self.cfg.loss_fn)
        return {"loss": (loss.item() * n, n), "acc": (stats["acc"] * n, n), "margin": (stats["margin"] * n, n)}


def _stack_pairs(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad chosen (B, Tc) and rejected (B, Tr) to one width and stack: (2B, max(Tc, Tr))."""
    c, r = batch["chosen_ids"], batch["rejected_ids"]
    width = max(c.size(1), r.size(1))

    def pad(x, value):
        return torch.nn.functional.pad(x, (0, width - x.size(1)), value=value)

    ids = torch.cat([pad(c, 0), pad(r, 0)])
    mask = torch.cat([pad(batch["chosen_mask"], 0), pad(batch["rejected_mask"], 0)])
    return ids, mask


def run_rm(cfg, rank: int = 0, world_size: int = 1, master_addr: str = "127.0.0.1",
           master_port: Optional[int] = None, resume_from: Optional[str] = None, store=None) -> dict:
    """One rank of an RM job (in-process or inside a Ray actor)."""
    from coati_ray.trainers.runner import run_supervised

    return run_supervised(RMTrainer, cfg, rank, world_size, master_addr, master_port, resume_from, store)
