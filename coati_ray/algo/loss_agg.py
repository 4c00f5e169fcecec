"""How a per-token loss becomes one number for an optimiser step (`algorithm.loss_agg`), over the whole mini-batch.

Shapes: B = samples in a micro-batch, A = action tokens. A mini-batch is every micro-batch of every rank that
one optimiser step accumulates. Each micro-batch contributes its *share*: summing the shares of all of them
gives the mini-batch's loss, so the result is the same for any micro-batch size and rank count (a mean per
micro-batch averaged over micro-batches is not: it weighs a token by how long its micro-batch's answers are).

  token_mean               sum of every token's loss / tokens in the mini-batch       (DAPO; verl's default)
  seq_mean_token_mean      mean over samples of each sample's token mean              (GRPO)
  seq_mean_token_sum_norm  sum of every token's loss / (samples x max_new_tokens)     (Dr. GRPO: no length bias)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LOSS_AGGS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


@dataclass(frozen=True)
class MiniBatch:
    """The denominators of one mini-batch, every rank's micro-batches together."""

    tokens: float        # action tokens (mask ones)
    samples: float       # sequences
    max_tokens: int      # the longest answer generation allows: Dr. GRPO's constant


def local_counts(action_mask: torch.Tensor) -> tuple[float, float]:
    """(action tokens, samples) of this rank's part of a mini-batch. action_mask: (B, A). A sample with no
    token in the loss (algorithm.overlong_filter left it out) is not counted."""
    return float(action_mask.sum()), float((action_mask.sum(dim=-1) > 0).sum())


def share(per_token: torch.Tensor, action_mask: torch.Tensor, how: str, mb: MiniBatch) -> torch.Tensor:
    """This micro-batch's share of the mini-batch loss (a scalar with gradient).

    per_token: (B, A) loss of each action token; action_mask: (B, A), 1 on the answer's tokens.
    """
    mask = action_mask.to(per_token.dtype)
    summed = per_token * mask
    if how == "token_mean":
        return summed.sum() / max(mb.tokens, 1.0)
    if how == "seq_mean_token_mean":
        return (summed.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)).sum() / max(mb.samples, 1.0)
    if how == "seq_mean_token_sum_norm":
        return summed.sum() / (max(mb.samples, 1.0) * max(mb.max_tokens, 1))
    raise ValueError(f"unknown loss aggregation '{how}'; use one of: {', '.join(LOSS_AGGS)}")
