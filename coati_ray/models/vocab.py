"""Vocabulary expansion, as Colossal-LLaMA does it: new pieces become single tokens after the old ones,
and the model's new input-embedding and LM-head rows start at the mean of the old rows.

Starting new rows at the mean (rather than at random) keeps the model's outputs on old text unchanged
and gives each new token the "average" meaning until training moves it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from torch import nn

from coati_ray.errors import DataError


@dataclass
class Expansion:
    """What expand_tokenizer did: the pieces added (in id order from `first_id`) and those skipped."""

    first_id: int
    added: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)   # already one token of the source tokenizer
    repeated: int = 0                                           # later copies of a piece in the file


def read_pieces(path: str) -> list[str]:
    """The `piece` of every row of a jsonl file (`{"piece": "你好"}`); a bad row names its file and line."""
    pieces = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"data error: cannot read '{path}' ({e.strerror}); point --expand_tokens_file at a "
                        "jsonl of {\"piece\": ...} rows") from None
    with f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise DataError(f"data error: {path}:{line_no} is not valid JSON; each line must be one "
                                "{\"piece\": ...} object") from None
            piece = row.get("piece") if isinstance(row, dict) else None
            if not isinstance(piece, str) or not piece.strip():
                raise DataError(f"data error: {path}:{line_no} has no non-empty string 'piece'; each line must "
                                "be like {\"piece\": \"你好\"}")
            pieces.append(piece)
    if not pieces:
        raise DataError(f"data error: '{path}' holds no pieces; add {{\"piece\": ...}} rows")
    return pieces


def expand_tokenizer(tokenizer, pieces: list[str]) -> Expansion:
    """Add each new piece to `tokenizer` (in place) as one token with the next free id; existing ids are
    unchanged. A piece the tokenizer already encodes as one token, and a piece's repeats, are skipped."""
    out = Expansion(first_id=len(tokenizer))
    seen = set()
    for piece in pieces:
        if piece in seen:
            out.repeated += 1
            continue
        seen.add(piece)
        if len(tokenizer.encode(piece, add_special_tokens=False)) == 1:
            out.already_present.append(piece)
        else:
            out.added.append(piece)
    tokenizer.add_tokens(out.added)
    return out


def mean_init_rows(weight: torch.Tensor, old_rows: int, new_rows: range) -> None:
    """Set `weight[new_rows]` to the mean of `weight[:old_rows]` (computed in float32), in place.

    weight: (vocab, hidden); old_rows: rows of the old vocabulary; new_rows: ids of the added tokens.
    """
    with torch.no_grad():
        mean = weight[:old_rows].float().mean(dim=0)
        weight[new_rows.start:new_rows.stop] = mean.to(weight.dtype)


def expand_model(model: nn.Module, expansion: Expansion) -> None:
    """Grow `model` (an HF causal LM, in place) to hold the expansion's tokens: its input embeddings and
    its LM head (one matrix when they are tied) get the new rows, each the mean of the old vocabulary's
    rows. Rows of old ids, and spare rows the model had beyond the new ids, are left bit-equal."""
    old_rows, new_ids = expansion.first_id, range(expansion.first_id, expansion.first_id + len(expansion.added))
    size = model.get_input_embeddings().weight.shape[0]
    if new_ids.stop > size:
        model.resize_token_embeddings(new_ids.stop, mean_resizing=False)
    inputs = model.get_input_embeddings().weight
    mean_init_rows(inputs, old_rows, new_ids)
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != inputs.data_ptr():
        mean_init_rows(head.weight, old_rows, new_ids)
        if getattr(head, "bias", None) is not None:  # a biased head: new logits start at the mean bias
            with torch.no_grad():
                head.bias[new_ids.start:new_ids.stop] = head.bias[:old_rows].float().mean().to(head.bias.dtype)
