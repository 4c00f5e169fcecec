"""Tokenised datasets for the three stages and the collators that pad them.

SFT and preference sequences are right-padded; PPO prompts are left-padded so that generation
continues every prompt from the same position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from coati_ray.algo.losses import IGNORE_INDEX
from coati_ray.data.formats import detect_format, preference_pair, prompt_only, sft_messages
from coati_ray.data.loading import HubSource, normalize_rows, read_rows
from coati_ray.data.template import ChatFormat
from coati_ray.errors import DataError


@dataclass
class LoadReport:
    """What loading a dataset did, for the run's summary."""

    path: str
    rows: int
    skipped_bad: int
    truncated: int
    dropped_empty: int


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _resolve_format(ds, fmt: str, stage: str, path: str) -> str:
    if fmt != "auto":
        return fmt
    try:
        return detect_format(ds.column_names, stage)
    except ValueError as e:
        raise DataError(f"data error: {path}: {e}; or set data.format explicitly") from None


def tokenize_conversation(messages: list[dict], tokenizer, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of role messages rendered with the tokenizer's chat template (Coati's when it has
    none), as one sequence: labels are IGNORE_INDEX everywhere except the assistant turns' tokens and their
    end-of-turn token (a template that rewrites earlier turns: the final turn's)."""
    return ChatFormat.of(tokenizer).tokenize(messages, max_length)


def sft_items(row: dict, tokenizer, max_length: int, rewritten_history: str = "per_turn") -> list[dict]:
    """A normalised SFT row -> its samples [{input_ids, labels, truncated}]: one, or one per assistant turn
    when the chat template rewrites earlier turns and `rewritten_history` is per_turn."""
    out = []
    for ids, labels in ChatFormat.of(tokenizer).samples(row["messages"], None, rewritten_history):
        out.append({"input_ids": ids[:max_length], "labels": labels[:max_length], "truncated": len(ids) > max_length})
    return out


def build_sft_dataset(path: str, tokenizer, max_length: int, fmt: str = "auto", max_samples: Optional[int] = None,
                      on_bad_row: str = "error", source: Optional[HubSource] = None,
                      rewritten_history: str = "per_turn") -> tuple[list[dict], LoadReport]:
    ds, malformed = read_rows(path, max_samples, on_bad_row, source)
    fmt = _resolve_format(ds, fmt, "sft", path)
    rows, skipped = normalize_rows(
        ds, lambda r: sft_items(sft_messages(r, fmt), tokenizer, max_length, rewritten_history), path, on_bad_row)
    out, truncated, empty = [], 0, 0
    for item in (item for items in rows for item in items):
        truncated += item.pop("truncated")
        if all(label == IGNORE_INDEX for label in item["labels"]):
            empty += 1  # the reply was cut off entirely: no loss to learn from
            continue
        out.append(item)
    if not out:
        raise DataError(f"data error: {path}: every reply was truncated away at max_length={max_length}; "
                        "raise data.max_length")
    return out, LoadReport(path, len(out), skipped + malformed, truncated, empty)


def preference_item(pair: dict, tokenizer, max_length: int) -> dict:
    """A normalised pair -> {chosen_ids, rejected_ids, truncated}: each side is the rendered conversation
    (prompt turns, then the reply) up to the reply's end-of-turn token, the token the reward is read at."""
    chat = ChatFormat.of(tokenizer)
    item, truncated = {}, 0
    for side in ("chosen", "rejected"):
        ids, _ = chat.tokenize(pair["prompt"] + [{"role": "assistant", "content": pair[side]}])
        truncated += len(ids) > max_length
        item[f"{side}_ids"] = ids[:max_length]
    item["truncated"] = truncated
    return item


def build_preference_dataset(path: str, tokenizer, max_length: int, fmt: str = "auto",
                             max_samples: Optional[int] = None, on_bad_row: str = "error",
                             source: Optional[HubSource] = None) -> tuple[list[dict], LoadReport]:
    ds, malformed = read_rows(path, max_samples, on_bad_row, source)
    fmt = _resolve_format(ds, fmt, "pairs", path)
    out, skipped = normalize_rows(ds, lambda r: preference_item(preference_pair(r, fmt), tokenizer, max_length),
                                  path, on_bad_row)
    truncated = sum(item.pop("truncated") for item in out)
    return out, LoadReport(path, len(out), skipped + malformed, truncated, 0)


def prompt_item(row: dict, tokenizer, max_prompt_length: int) -> dict:
    """A normalised prompt row -> {input_ids (with the generation prompt), prompt, messages, truncated}."""
    ids = ChatFormat.of(tokenizer).prompt_ids(row["messages"])
    truncated = len(ids) > max_prompt_length
    if truncated:
        ids = ids[-max_prompt_length:]  # keep the end: the generation prompt must stay
    return {"input_ids": ids, "prompt": row["prompt"], "messages": row["messages"], "truncated": truncated}


def build_prompt_dataset(path: str, tokenizer, max_prompt_length: int, fmt: str = "auto",
                         max_samples: Optional[int] = None, on_bad_row: str = "error",
                         source: Optional[HubSource] = None) -> tuple[list[dict], LoadReport]:
    ds, malformed = read_rows(path, max_samples, on_bad_row, source)
    fmt = _resolve_format(ds, fmt, "prompt", path)
    # Each item keeps its whole data row: a reward function or service may read more than the prompt.
    out, skipped = normalize_rows(
        ds, lambda r: {**prompt_item(prompt_only(r, fmt), tokenizer, max_prompt_length), "row": dict(r)},
        path, on_bad_row)
    truncated = sum(item.pop("truncated") for item in out)
    return out, LoadReport(path, len(out), skipped + malformed, truncated, 0)


def pad_right(seqs: list[list[int]], pad: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [pad] * (width - len(s)) for s in seqs], dtype=torch.long)


def pad_left(seqs: list[list[int]], pad: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([[pad] * (width - len(s)) + s for s in seqs], dtype=torch.long)


def mask_of(seqs: list[list[int]], left: bool = False) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    rows = [([0] * (width - len(s)) + [1] * len(s)) if left else ([1] * len(s) + [0] * (width - len(s))) for s in seqs]
    return torch.tensor(rows, dtype=torch.long)


def collate_sft(items: list[dict], pad_token_id: int) -> dict:
    """-> input_ids, attention_mask, labels: (B, T), right-padded; padding labels are IGNORE_INDEX."""
    ids = [it["input_ids"] for it in items]
    return {"input_ids": pad_right(ids, pad_token_id), "attention_mask": mask_of(ids),
            "labels": pad_right([it["labels"] for it in items], IGNORE_INDEX)}


def collate_pairs(items: list[dict], pad_token_id: int) -> dict:
    """-> chosen_ids, chosen_mask, rejected_ids, rejected_mask: (B, T_c) and (B, T_r), right-padded."""
    out = {}
    for side in ("chosen", "rejected"):
        seqs = [it[f"{side}_ids"] for it in items]
        out[f"{side}_ids"], out[f"{side}_mask"] = pad_right(seqs, pad_token_id), mask_of(seqs)
    return out


def collate_prompts(items: list[dict], pad_token_id: int) -> dict:
    """-> input_ids, attention_mask: (B, P), left-padded for generation."""
    ids = [it["input_ids"] for it in items]
    return {"input_ids": pad_left(ids, pad_token_id), "attention_mask": mask_of(ids, left=True)}
