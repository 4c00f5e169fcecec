"""Off-policy correction (`algorithm.behaviour_correction`): the maker that sampled an answer is not quite the
policy the trainer updates. Its weights may be older (async: up to max_staleness versions), or the same
weights in another precision (a bf16 maker under an fp32 trainer), so its log-probs (the behaviour's) differ
from the trainer's own at the start of the update. PPO's ratio is then taken against the trainer's
recomputed log-probs (the proximal policy), and each token's loss is weighted by the importance ratio
trainer / behaviour, bounded by a cap so that one unlikely token cannot blow up the update:

  tis  truncated importance sampling: w = min(ratio, cap)
  mis  masked importance sampling:    w = ratio where ratio <= cap, else 0 (the token drops out of the loss;
                                       it still counts in algorithm.loss_agg's denominators)
  measure  no correction: the metrics alone (how far the makers' weights are from the trainer's: at lr 0 a
           broken weight sync or export shows as a large |log ratio| from step 2, the first after a sync)

Shapes: B = samples, A = action tokens.
"""

from __future__ import annotations

import torch

CORRECTIONS = ("none", "tis", "mis", "measure")
MAX_LOG_RATIO = 20.0  # exp(20) ~ 5e8: a finite ratio for a token the behaviour all but ruled out


def importance_ratio(trainer_log_probs: torch.Tensor, behaviour_log_probs: torch.Tensor) -> torch.Tensor:
    """exp(trainer - behaviour) per token, (B, A), float32, no gradient."""
    log_ratio = trainer_log_probs.detach().float() - behaviour_log_probs.detach().float()
    return log_ratio.clamp(max=MAX_LOG_RATIO).exp()


def behaviour_weights(ratio: torch.Tensor, action_mask: torch.Tensor, how: str, cap: float) -> torch.Tensor:
    """Each token's weight in the policy loss, (B, A): `ratio` (B, A) truncated (tis) or masked (mis) at
    `cap`; 0 outside `action_mask` (B, A)."""
    if how == "tis":
        w = ratio.clamp(max=cap)
    elif how == "mis":
        w = torch.where(ratio <= cap, ratio, torch.zeros_like(ratio))
    else:
        raise ValueError(f"unknown behaviour correction '{how}'; use one of: {', '.join(CORRECTIONS)}")
    return w * action_mask.to(w.dtype)


def ratio_sums(ratio: torch.Tensor, action_mask: torch.Tensor, cap: float) -> list[float]:
    """[sum of ratios, tokens, tokens over the cap] over `action_mask` (B, A): what ranks all-reduce for
    the metrics (their maximum is reduced apart)."""
    m = action_mask.bool()
    return [float(ratio[m].sum()), float(m.sum()), float((ratio[m] > cap).sum())]


def log_gap_sum(trainer_log_probs: torch.Tensor, behaviour_log_probs: torch.Tensor,
                action_mask: torch.Tensor) -> float:
    """Sum over `action_mask` (B, A) of |trainer - behaviour| log-probs (B, A), in float64 from the log-probs
    themselves (through the ratio, float32 would round gaps under ~6e-8 to 0 and cap large ones)."""
    gap = (trainer_log_probs.detach().double() - behaviour_log_probs.detach().double()).abs()
    return float(gap[action_mask.bool()].sum())
