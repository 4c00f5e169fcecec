"""Learning-rate schedules as pure functions of the step (wrapped in torch's LambdaLR)."""

from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, kind: str = "cosine",
              min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at optimiser step `step` (0-based).

    Linear warm-up over `warmup_steps`, then constant, cosine or linear decay to `min_ratio`
    at `total_steps`.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if kind == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "linear":
        decay = 1.0 - progress
    else:
        raise ValueError(f"unknown scheduler '{kind}'")
    return min_ratio + (1.0 - min_ratio) * decay


def make_optimizer(params, oc, strategy_name: str):
    """AdamW from an OptimizerConfig; ColossalAI's HybridAdam (what ZeRO/Gemini are built around) on GPU."""
    import torch

    kwargs = dict(lr=oc.lr, betas=(oc.beta1, oc.beta2), eps=oc.eps, weight_decay=oc.weight_decay)
    if strategy_name.startswith("colossalai") and torch.cuda.is_available():
        from colossalai.nn.optimizer import HybridAdam

        return HybridAdam(params, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def make_scheduler(optimizer, total_steps: int, warmup_steps: int, kind: str, min_ratio: float):
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, kind, min_ratio))
