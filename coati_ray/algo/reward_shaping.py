"""KL estimators, the per-token reward, Coati's sequence-level KL penalty and the rows a length limit cut
(GAE lives with the other advantage estimators, in coati_ray.algo.advantages).

Shapes: B = batch, A = number of action (response) tokens.
"""

from __future__ import annotations

from typing import Literal

import torch

KLEstimator = Literal["k1", "k2", "k3"]


def kl_estimate(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, kind: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1/k2/k3).

    log_probs, ref_log_probs: (B, A) -> (B, A). With r = ref_log_probs - log_probs:
      k1 = -r                 (unbiased, high variance, can be negative)
      k2 = r^2 / 2            (biased, low variance, >= 0)
      k3 = exp(r) - 1 - r     (unbiased, low variance, >= 0)
    """
    log_ratio = ref_log_probs.float() - log_probs.float()
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator '{kind}'; use k1, k2 or k3")


def coati_token_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """Coati's per-token approximate KL: (e^r - 1) - r with r = log pi - log pi_ref (k3 with the ratio the
    other way up; >= 0). log_probs, ref_log_probs: (B, A) -> (B, A)."""
    log_ratio = log_probs.float() - ref_log_probs.float()
    return torch.expm1(log_ratio) - log_ratio


def sequence_kl_penalty(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, action_mask: torch.Tensor,
                        kl_coef: float) -> torch.Tensor:
    """Coati's sequence-level KL penalty (train_prompts.py's --kl_coef): kl_coef times the mean over each
    response's tokens of `coati_token_kl`, one number per sequence, to subtract once from its reward.
    log_probs, ref_log_probs, action_mask: (B, A) -> (B,); a response with no tokens gets 0."""
    from coati_ray.algo.functional import masked_mean

    return kl_coef * masked_mean(coati_token_kl(log_probs, ref_log_probs), action_mask, dim=1)


def on_last_token(values: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """values (B,) placed at each response's last token, 0 elsewhere: (B, A), where the sequence's
    scalar reward goes."""
    out = torch.zeros(action_mask.shape, dtype=torch.float32, device=action_mask.device)
    out[torch.arange(out.size(0), device=out.device), last_token_index(action_mask)] = values.float()
    return out * action_mask.float()


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of `mask` (B, T) -> (B,); works for left or right padding.

    Rows with no 1 at all give index 0.
    """
    T = mask.size(1)
    flipped_first = torch.argmax(mask.flip(dims=[1]).to(torch.int64), dim=1)
    idx = (T - 1) - flipped_first
    return torch.where(mask.any(dim=1), idx, torch.zeros_like(idx))


def per_token_rewards(score: torch.Tensor, kl: torch.Tensor, action_mask: torch.Tensor, kl_coef: float,
                      clip_score: float = 0.0) -> torch.Tensor:
    """Reward at each action token: -kl_coef * KL on every token, plus the RM score on the last one.

    score: (B,) reward-model score of each full sequence; kl, action_mask: (B, A) -> (B, A).
    `clip_score > 0` clips the RM score to [-clip_score, clip_score] first. Masked tokens get 0.
    """
    mask = action_mask.to(kl.dtype)
    score = score.to(kl.dtype)
    if clip_score > 0:
        score = score.clamp(-clip_score, clip_score)
    rewards = -kl_coef * kl * mask
    last = last_token_index(action_mask)
    rewards[torch.arange(rewards.size(0), device=rewards.device), last] += score
    return rewards * mask


def truncated_rows(action_mask: torch.Tensor, actions: torch.Tensor, eos_ids: list[int],
                   limit: int = 0) -> torch.Tensor:
    """Responses the generation cut, at whatever length its backend stopped them: no end token among them
    (with no end token known: `limit` tokens or more). action_mask, actions: (B, A) -> (B,) bool."""
    if not eos_ids:
        return action_mask.sum(dim=1) >= max(limit, 1)
    ended = torch.isin(actions, torch.as_tensor(eos_ids, device=actions.device)).logical_and(action_mask.bool())
    return ~ended.any(dim=1)


def produced_limit(lengths: torch.Tensor, truncated: torch.Tensor, limit: int) -> int:
    """The response limit a batch was generated under, judged on what it holds: `limit` (what the backend said
    it allowed), or less when a cut response is shorter (the backend stopped it sooner).
    lengths (B,), truncated (B,) bool -> tokens."""
    if bool(truncated.any()):
        return min(limit, int(lengths[truncated].max()))
    return limit


def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer: int, factor: float) -> torch.Tensor:
    """DAPO's soft overlong punishment: 0 up to max_new_tokens - buffer tokens, then falling linearly to
    -factor at max_new_tokens. lengths: (B,) response tokens -> (B,) reward added to the score."""
    start = max_new_tokens - buffer
    over = (lengths.float() - start).clamp(min=0) / buffer
    return -factor * over.clamp(max=1.0)
