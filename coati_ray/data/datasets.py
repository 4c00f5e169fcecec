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
from coati_ray.data.loading import normalize_rows, read_rows
from coati_ray.data.template import DEFAULT_TEMPLATE, ChatTemplate
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


def tokenize_conversation(messages: list[dict], tokenizer, max_length: int,
                          template: ChatTemplate = DEFAULT_TEMPLATE) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with labels = IGNORE_INDEX everywhere except assistant replies (and their EOS).

    Each turn is tokenised on its own so the boundary between prompt and reply is exact; the
    result is the same token split that generation sees (prompt ends with the assistant prefix).
    """
    input_ids: list[int] = _bos(tokenizer)
    labels: list[int] = [IGNORE_INDEX] * len(input_ids)
    for i, m in enumerate(messages):
        if m["from"] == "human":
            ids = _ids(tokenizer, template.human_turn(m["content"], first=i == 0) + template.assistant_prefix)
            input_ids += ids
            labels += [IGNORE_INDEX] * len(ids)
        else:
            ids = _ids(tokenizer, m["content"]) + [tokenizer.eos_token_id]
            input_ids += ids
            labels += ids
    return input_ids[:max_length], labels[:max_length]


def build_sft_dataset(path: str, tokenizer, max_length: int, fmt: str = "auto", max_samples: Optional[int] = None,
                      on_bad_row: str = "error") -> tuple[list[dict], LoadReport]:
    ds, malformed = read_rows(path, max_samples, on_bad_row)
    fmt = _resolve_format(ds, fmt, "sft", path)
    rows, skipped = normalize_rows(ds, lambda r: sft_messages(r, fmt), path, on_bad_row)
    out, truncated, empty = [], 0, 0
    for row in rows:
        full, _ = tokenize_conversation(row["messages"], tokenizer, max_length=10**9)
        ids, labels = tokenize_conversation(row["messages"], tokenizer, max_length)
        truncated += len(full) > max_length
        if all(label == IGNORE_INDEX for label in labels):
            empty += 1  # the reply was cut off entirely: no loss to learn from
            continue
        out.append({"input_ids": ids, "labels": labels})
    if not out:
        raise DataError(f"data error: {path}: every reply was truncated away at max_length={max_length}; "
                        "raise data.max_length")
    return out, LoadReport(path, len(out), skipped + malformed, truncated, empty)


def build_preference_dataset(path: str, tokenizer, max_length: int, fmt: str = "auto",
                             max_samples: Optional[int] = None, on_bad_row: str = "error",
                             template: ChatTemplate = DEFAULT_TEMPLATE) -> tuple[list[dict], LoadReport]:
    ds, malformed = read_rows(path, max_samples, on_bad_row)
    fmt = _resolve_format(ds, fmt, "pairs", path)
    rows, skipped = normalize_rows(ds, lambda r: preference_pair(r, fmt), path, on_bad_row)
    out, truncated = [], 0
    for pair in rows:
        # hh-rlhf prompts are already whole dialogues ending in "Assistant:"; ours get the template.
        prompt = pair["prompt"] if fmt == "hh_rlhf" else template.render_prompt(pair["prompt"])
        prefix = _bos(tokenizer) + _ids(tokenizer, prompt)
        item = {}
        for side in ("chosen", "rejected"):
            ids = prefix + _ids(tokenizer, pair[side]) + [tokenizer.eos_token_id]
            truncated += len(ids) > max_length
            item[f"{side}_ids"] = ids[:max_length]
        out.append(item)
    return out, LoadReport(path, len(out), skipped + malformed, truncated, 0)


def build_prompt_dataset(path: str, tokenizer, max_prompt_length: int, fmt: str = "auto",
                         max_samples: Optional[int] = None, on_bad_row: str = "error",
                         template: ChatTemplate = DEFAULT_TEMPLATE) -> tuple[list[dict], LoadReport]:
    ds, malformed = read_rows(path, max_samples, on_bad_row)
    fmt = _resolve_format(ds, fmt, "prompt", path)
    # Each item keeps its whole data row: a reward function or service may read more than the prompt.
    rows, skipped = normalize_rows(ds, lambda r: {**prompt_only(r, fmt), "row": dict(r)}, path, on_bad_row)
    out, truncated = [], 0
    for row in rows:
        ids = _bos(tokenizer) + _ids(tokenizer, template.render_prompt(row["prompt"]))
        if len(ids) > max_prompt_length:
            truncated += 1
            ids = ids[-max_prompt_length:]  # keep the end: the assistant prefix must stay
        out.append({"input_ids": ids, "prompt": row["prompt"], "row": row["row"]})
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
