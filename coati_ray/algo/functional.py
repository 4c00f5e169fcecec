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


def masked_moments(x: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """[sum, sum of squares, count] of `x` (B, A) over masked positions, in float64: what ranks
    all-reduce so that statistics over a batch split across them equal those of the whole batch."""
    m = mask.to(torch.float64)
    x = x.to(torch.float64) * m
    return [float(x.sum()), float((x * x).sum()), float(m.sum())]


def whiten_from_moments(x: torch.Tensor, mask: torch.Tensor, moments: list[float], eps: float = 1e-8) -> torch.Tensor:
    """Normalise `x` (B, A) with the mean and (Bessel-corrected) variance of summed `moments`
    ([sum, sum of squares, count], possibly over several ranks); masked-out positions become 0."""
    total, squares, n = moments
    mean = total / max(n, 1.0)
    var = max(squares / max(n, 1.0) - mean * mean, 0.0)
    if n > 1:
        var = var * n / (n - 1)
    whitened = (x - mean) * (1.0 / (var + eps) ** 0.5)
    return whitened * mask.to(x.dtype)


def log_probs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(labels) under `logits`. logits: (B, T, V), labels: (B, T) -> (B, T).

    Computed as logit - logsumexp(logits) to avoid materialising a (B, T, V) log-softmax copy.
    """
    logits = logits.float()
    picked = torch.gather(logits, dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def action_log_probs(logits: torch.Tensor, input_ids: torch.Tensor, num_actions: int,
                     temperature: float = 1.0) -> torch.Tensor:
    """Log-probs of the last `num_actions` tokens of each sequence under softmax(logits / temperature).

    logits: (B, T, V) from a causal LM over input_ids (B, T). Token t is predicted by position
    t-1, so the result (B, A) holds log p(input_ids[:, T-A+i] | prefix) for i in 0..A-1.
    `temperature` is the sampler's: the behaviour policy that generated the tokens is the tempered
    one, so its log-probs (and the trainer's, in the ratio) must be too. top-k / top-p are not
    applied: the log-prob is the tempered full distribution's, as in verl and OpenRLHF.
    """
    logits = logits[:, -num_actions - 1:-1, :]  # only the positions that predict an action
    if temperature != 1.0:
        logits = logits.float() / temperature
    return log_probs_from_logits(logits, input_ids[:, -num_actions:])


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position: (B, T, V) -> (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)
