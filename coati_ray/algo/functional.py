"""Masked reductions and log-probabilities: the building blocks every loss uses.

Shapes: B = batch, T = sequence length, V = vocabulary, A = number of action (response) tokens.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Sum of `x` where `mask` is 1. x, mask: same shape; returns a scalar or x reduced over `dim`."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() if dim is None else (x * mask).sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is 1 (x, mask: (B, A)); empty rows give 0, not NaN."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim=dim) / mask.sum(dim=dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `x` over masked positions (scalar); Bessel-corrected when `unbiased`."""
    mean = masked_mean(x, mask)
    n = mask.to(x.dtype).sum()
    var = masked_sum((x - mean) ** 2, mask) / n.clamp(min=1.0)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise `x` (B, A) to unit variance over masked positions; masked-out positions become 0.

    With `shift_mean=False` the mean is added back (used for rewards, whose sign matters).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def log_probs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(labels) under `logits`. logits: (B, T, V), labels: (B, T) -> (B, T).

    Computed as logit - logsumexp(logits) to avoid materialising a (B, T, V) log-softmax copy.
    """
    logits = logits.float()
    picked = torch.gather(logits, dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def action_log_probs(logits: torch.Tensor, input_ids: torch.Tensor, num_actions: int) -> torch.Tensor:
    """Log-probs of the last `num_actions` tokens of each sequence.

    logits: (B, T, V) from a causal LM over input_ids (B, T). Token t is predicted by position
    t-1, so the result (B, A) holds log p(input_ids[:, T-A+i] | prefix) for i in 0..A-1.
    """
    shifted = log_probs_from_logits(logits[:, :-1, :], input_ids[:, 1:])
    return shifted[:, -num_actions:]


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position: (B, T, V) -> (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)
