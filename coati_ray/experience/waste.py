"""What the two work-cutting options would remove from a batch, measured on the batch itself: a user reads in
the metrics whether `generation.backend: compact` and `algorithm.micro_batch_tokens` have anything to cut.

Shapes: B = batch, T = sequence positions (prompt + response).
"""

from __future__ import annotations

import torch


def finished_row_fraction(lengths: torch.Tensor) -> float:
    """lengths: (B,) response tokens of each row -> the share of a padded decode's row-steps spent on rows that
    had already finished: 1 - sum(lengths) / (B * max(lengths)). Hugging Face's generate decodes every row until
    the longest ends; the compacting decode drops finished rows, so this is what it can remove from decoding
    (0 when every row runs as long)."""
    longest = int(lengths.max()) if lengths.numel() else 0
    if longest == 0:
        return 0.0
    return 1.0 - float(lengths.sum()) / (lengths.numel() * longest)


def padding_fraction(mask: torch.Tensor) -> float:
    """mask: (B, T) 1 for a real token, 0 for padding -> the share of positions that are padding. A padded
    forward or update over this batch computes them all; packed micro-batches (`algorithm.micro_batch_tokens`)
    compute only the real ones, so this is what packing can remove from that batch (the trainers report it
    for the merged batches they train on: `<role>/padding_fraction`)."""
    return 1.0 - float(mask.float().mean()) if mask.numel() else 0.0


def best_case_fraction(generation: float, training: float, finished_rows: float, padding: float) -> float:
    """generation, training: core-seconds per sample of the two stages (padded decode, padded updates);
    finished_rows, padding: the fractions above -> the share of the work left if decoding cost nothing for
    finished rows and updates nothing for padding, and nothing else changed: an estimate of the least work the
    two options can leave, not a strict bound. It leans optimistic (a maker stage is more than its decode; on CPU
    and SDPA a packed row's attention costs more than its rows'), and misses that the steps after a row ends are
    the decode's longest-cache ones and, on a GPU with varlen attention, that packing also saves attention's
    quadratic term."""
    total = generation + training
    if total <= 0:
        raise ValueError("generation + training core-seconds must be positive")
    return (generation * (1.0 - finished_rows) + training * (1.0 - padding)) / total
