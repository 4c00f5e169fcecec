"""Continual pretraining on `launch.prepare_data` output: loss on target tokens, bucket-ordered batches.

Bucket b is bin b of every category (Colossal-LLaMA's bucket-based training): an epoch walks the
buckets in order, shuffling within each, so every stretch of training sees each category in the
proportion the data has, instead of whatever a global shuffle happens to give.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Optional

import torch

from coati_ray.data.datasets import LoadReport
from coati_ray.errors import DataError
from coati_ray.trainers.sft import SFTTrainer


def prepared_folders(path: str) -> list[str]:
    """The save_to_disk folders behind one entry of data.train_path: a prepare_data output directory, its
    arrow/ directory, or one part folder."""
    if os.path.exists(os.path.join(path, "prepared.partial")) or (
            os.path.isdir(os.path.join(path, "arrow")) and not os.path.isfile(os.path.join(path, "prepared.json"))):
        raise DataError(f"data error: '{path}' is half-written (no prepared.json); run launch.prepare_data into it again")
    for root in (os.path.join(path, "arrow"), path):
        parts = sorted(glob.glob(os.path.join(root, "part-*")))
        if parts:
            return parts
    if os.path.isfile(os.path.join(path, "state.json")):
        return [path]
    raise DataError(f"data error: '{path}' holds no prepared data (no arrow/part-* folders); "
                    "run python -m launch.prepare_data first")


def load_prepared(paths: list[str], max_length: int, max_samples: Optional[int]) -> tuple[list[dict], int]:
    """Items {input_ids, labels, bin} of every part folder, cut at max_length; and how many were cut. With
    `max_samples`, every category keeps its share of them, spread over its bins (`sample_by_category`)."""
    from datasets import load_from_disk

    from coati_ray.storage import readable_path

    by_category: dict[str, list[dict]] = {}
    for path in paths:
        for folder in prepared_folders(readable_path(path, "data.train_path")):  # a URI: this node's cached copy
            ds = load_from_disk(folder)
            missing = {"input_ids", "labels"} - set(ds.column_names)
            if missing:
                raise DataError(f"data error: {folder} has no column(s) {sorted(missing)}; it is not "
                                "launch.prepare_data output")
            bins = ds["bin"] if "bin" in ds.column_names else [0] * len(ds)
            categories = ds["category"] if "category" in ds.column_names else [""] * len(ds)
            for ids, labels, b, c in zip(ds["input_ids"], ds["labels"], bins, categories):
                by_category.setdefault(c, []).append({"input_ids": ids, "labels": labels, "bin": int(b)})
    items = [it for group in sample_by_category(by_category, max_samples).values() for it in group]
    truncated = sum(len(it["input_ids"]) > max_length for it in items)
    for it in items:
        it["input_ids"], it["labels"] = it["input_ids"][:max_length], it["labels"][:max_length]
    return items, truncated


def sample_by_category(by_category: dict[str, list], max_samples: Optional[int]) -> dict[str, list]:
    """At most `max_samples` items in all, each category's count in proportion to its size (largest
    remainders get the leftover), taken at evenly spaced positions so every bin of the category is drawn
    from; every item when max_samples is None or not below the total."""
    total = sum(len(v) for v in by_category.values())
    if max_samples is None or max_samples >= total:
        return by_category
    exact = {c: max_samples * len(v) / total for c, v in by_category.items()}
    quota = {c: int(x) for c, x in exact.items()}
    for c in sorted(exact, key=lambda c: exact[c] - quota[c], reverse=True)[:max_samples - sum(quota.values())]:
        quota[c] += 1
    return {c: [v[i * len(v) // quota[c]] for i in range(quota[c])] for c, v in by_category.items() if quota[c]}


def random_items(vocab_size: int, length: int, count: int, seed: int = 0) -> list[dict]:
    """`count` random token sequences of `length` (a benchmark needs no data): labels = input_ids."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (count, length), generator=g).tolist()
    return [{"input_ids": x, "labels": x, "bin": 0} for x in ids]


def bucket_order(bins: list[int], generator: torch.Generator) -> list[int]:
    """Indices of items (bins[i]: item i's bin) bucket by bucket in ascending bin, shuffled within each."""
    order = []
    for b in sorted(set(bins)):
        members = torch.tensor([i for i, x in enumerate(bins) if x == b])
        order += members[torch.randperm(len(members), generator=generator)].tolist()
    return order


class PretrainTrainer(SFTTrainer):
    stage = "pretrain"

    def __init__(self, cfg, strategy, model, tokenizer, train_items, *args, **kwargs):
        tc = cfg.trainer
        steps = (len(train_items) // tc.batch_size) * tc.max_epochs
        steps = min(steps, tc.max_steps) if tc.max_steps is not None else steps
        if cfg.optim.warmup_steps == 0 and cfg.warmup_ratio > 0:  # Colossal-LLaMA's default: 2.5 % of the steps
            cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim,
                                                                     warmup_steps=int(steps * cfg.warmup_ratio)))
        super().__init__(cfg, strategy, model, tokenizer, train_items, *args, **kwargs)

    @staticmethod
    def build_dataset(path: str, tokenizer, data_cfg, max_samples: Optional[int], which: str = "train"):
        from coati_ray.config.pretrain import split_paths

        if data_cfg.benchmark:
            items = random_items(len(tokenizer), data_cfg.max_length, data_cfg.num_samples)
            return items, LoadReport("random (data.benchmark)", len(items), 0, 0, 0)
        items, truncated = load_prepared(split_paths(path), data_cfg.max_length, max_samples)
        if not items:
            raise DataError(f"data error: {path} holds no samples")
        top = max(max(item["input_ids"]) for item in items)
        if top >= len(tokenizer):
            raise DataError(f"data error: {path} holds token id {top} but the model's tokenizer has {len(tokenizer)} "
                            "tokens; prepare the data with the tokenizer of model.path (e.g. the expanded one)")
        return items, LoadReport(path, len(items), 0, truncated, 0)

    @staticmethod
    def build_model(model_cfg, checkpoint: Optional[str]):
        from coati_ray.models.factory import build_actor

        actor = build_actor(model_cfg, checkpoint=checkpoint)
        if model_cfg.freeze_non_embeds_params:
            hf = actor.model
            keep = {id(hf.get_input_embeddings().weight), id(hf.get_output_embeddings().weight)}
            for p in hf.parameters():
                p.requires_grad_(id(p) in keep)
        return actor

    def batch_indices(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.cfg.strategy.seed + epoch)
        order = bucket_order([item["bin"] for item in self.train_items], g)
        bs = self.cfg.trainer.batch_size
        return [order[i * bs:(i + 1) * bs] for i in range(self.steps_per_epoch)]


def run_pretrain(cfg, rank: int = 0, world_size: int = 1, master_addr: str = "127.0.0.1",
                 master_port: Optional[int] = None, resume_from: Optional[str] = None, store=None) -> dict:
    """One rank of a pretraining job (in-process or inside a Ray actor)."""
    from coati_ray.trainers.runner import run_supervised

    return run_supervised(PretrainTrainer, cfg, rank, world_size, master_addr, master_port, resume_from, store)
