"""Losses of the three stages: SFT cross-entropy, pairwise RM losses, PPO policy/value and PPO-ptx.

Shapes: B = batch, T = sequence length, V = vocabulary, A = number of action tokens.
Each loss returns a scalar tensor plus, where useful, a dict of detached scalar statistics.
"""

from __future__ import annotations

from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F

from coati_ray.algo.functional import masked_mean

IGNORE_INDEX = -100


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over labelled tokens.

    logits: (B, T, V); labels: (B, T) with IGNORE_INDEX on tokens that carry no loss (prompt,
    padding). Position t predicts labels[t + 1].
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                           ignore_index=IGNORE_INDEX)


def reward_model_loss(chosen: torch.Tensor, rejected: torch.Tensor,
                      kind: Literal["log_sig", "log_exp"] = "log_sig") -> tuple[torch.Tensor, dict]:
    """Pairwise ranking loss on reward scores. chosen, rejected: (B,) -> (loss, stats).

    log_sig (OpenAI): -log sigmoid(c - r).  log_exp (Anthropic): log(1 + exp(r - c)).
    The two are the same function of (c - r); log_exp is kept under its published name and
    computed with softplus, which is the numerically stable form of log(1 + exp(x)).
    stats: acc = fraction with c > r, margin = mean(c - r).
    """
    diff = chosen.float() - rejected.float()
    if kind == "log_sig":
        loss = -F.logsigmoid(diff).mean()
    elif kind == "log_exp":
        loss = F.softplus(-diff).mean()
    else:
        raise ValueError(f"unknown RM loss '{kind}'; use log_sig or log_exp")
    stats = {"acc": (diff > 0).float().mean().item(), "margin": diff.mean().item()}
    return loss, stats


Reduce = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (per-token loss (B, A), mask (B, A)) -> scalar


def policy_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                action_mask: torch.Tensor, clip_eps: float = 0.2, reduce: Reduce = masked_mean,
                clip_eps_high: Optional[float] = None,
                weights: Optional[torch.Tensor] = None,
                clip_eps_low: Optional[float] = None) -> tuple[torch.Tensor, dict]:
    """Clipped PPO surrogate, reduced by `reduce` (masked token mean by default; the trainer passes its
    mini-batch share, coati_ray/algo/loss_agg.py).

    log_probs (current policy), old_log_probs (behaviour or proximal policy), advantages, action_mask and
    `weights` (each token's importance weight, coati_ray/algo/behaviour.py; None: 1): (B, A).
    loss = reduce(-min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) * weights); eps_low and eps_high
    default to eps (DAPO's clip-higher sets eps_high larger, so unlikely tokens can still gain probability).
    stats: clip_frac (tokens where the clipped branch was taken), approx_kl (k3 of old vs new), ratio.
    """
    log_ratio = log_probs.float() - old_log_probs.float()
    ratio = log_ratio.exp()
    surr1 = ratio * advantages
    low = clip_eps if clip_eps_low is None else clip_eps_low
    high = clip_eps if clip_eps_high is None else clip_eps_high
    surr2 = ratio.clamp(1.0 - low, 1.0 + high) * advantages
    per_token = -torch.min(surr1, surr2)
    if weights is not None:
        per_token = per_token * weights.detach()
    loss = reduce(per_token, action_mask)
    with torch.no_grad():
        clipped = (surr2 < surr1).float()
        stats = {
            "clip_frac": masked_mean(clipped, action_mask).item(),
            "approx_kl": masked_mean(torch.expm1(-log_ratio) + log_ratio, action_mask).item(),
            "ratio": masked_mean(ratio, action_mask).item(),
        }
    return loss, stats


def kl_loss(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, action_mask: torch.Tensor,
            reduce: Reduce = masked_mean) -> torch.Tensor:
    """GRPO's KL term in the loss: `reduce` (masked token mean by default) of k3 = exp(r) - r - 1,
    r = ref - log_probs.

    log_probs (current policy, with gradient), ref_log_probs (initial policy), action_mask: (B, A).
    k3 is unbiased for KL(pi || pi_ref) on samples of pi and never negative; its gradient pulls the
    policy towards the reference where it has drifted.
    """
    r = ref_log_probs.float() - log_probs.float()
    return reduce(torch.expm1(r) - r, action_mask)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               action_mask: torch.Tensor, clip_eps: float = 0.2,
               reduce: Reduce = masked_mean) -> tuple[torch.Tensor, dict]:
    """Clipped value loss, reduced by `reduce` (masked token mean by default).

    values (current critic), old_values (critic at experience time), returns, action_mask: (B, A).
    v_clip = old + clip(values - old, -eps, eps); loss = 0.5 * reduce(max((v - R)^2, (v_clip - R)^2)).
    `clip_eps <= 0` disables clipping. stats: clip_frac (tokens where the clipped term was larger).
    """
    values = values.float()
    unclipped = (values - returns) ** 2
    if clip_eps > 0:
        v_clip = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
        clipped = (v_clip - returns) ** 2
        per_token = torch.max(unclipped, clipped)
        clip_frac = masked_mean((clipped > unclipped).float(), action_mask).item()
    else:
        per_token, clip_frac = unclipped, 0.0
    return 0.5 * reduce(per_token, action_mask), {"clip_frac": clip_frac}


def ptx_mix(policy: torch.Tensor, ptx: torch.Tensor, ptx_coef: float) -> torch.Tensor:
    """PPO-ptx as Coati defines it: ptx_coef * ptx + (1 - ptx_coef) * policy (scalars -> scalar).

    ptx_coef = 0 is plain PPO; the pretraining loss keeps the policy close to the language it knew.
    """
    if not 0.0 <= ptx_coef <= 1.0:
        raise ValueError(f"ptx_coef must be in [0, 1], got {ptx_coef}")
    return ptx_coef * ptx + (1.0 - ptx_coef) * policy
