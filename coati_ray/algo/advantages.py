"""Advantage estimators and the algorithm each one makes: a registry chosen by `algorithm.advantage_estimator`.

Shapes: B = samples, A = action (response) tokens, n = samples per prompt (a group). The samples of
one prompt are consecutive rows (a maker batch holds whole groups), so groups are `view(-1, n)`.

    gae           PPO with a critic: generalised advantage estimation over per-token rewards
    grpo          group-relative: (score - group mean) / (group std + eps)        (DeepSeekMath)
    dr_grpo       group-relative without the std: score - group mean              (Dr. GRPO)
    rloo          leave-one-out baseline: score - mean of the group's others     (Ahmadian et al.)
    reinforce_pp  REINFORCE++: discounted per-token returns, whitened over the batch (Hu, 2025)
    reinforce_pp_baseline  REINFORCE++ with the group mean score subtracted first

Every estimator takes the same `AdvantageInputs` and returns (advantages (B, A), returns (B, A) or
None); only `gae` reads values and gives returns, so only it needs a critic. A new estimator is one
function and one `register(...)` line here, or a function in your own module named as `module:function`
(marked with `@estimator(...)` when it needs a critic or groups).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass
class AdvantageInputs:
    """What a maker has when it estimates advantages for one batch."""

    scores: torch.Tensor              # (B,): the sequence-level reward (clipped), before any KL
    kl_rewards: torch.Tensor          # (B, A): the KL penalty as rewards (per token, or Coati's once at the
    #                                   last token: algorithm.kl_penalty reward / sequence), else 0
    action_mask: torch.Tensor         # (B, A)
    values: Optional[torch.Tensor] = None  # (B, A) critic values, or None
    group_size: int = 1               # n samples per prompt, consecutive rows
    gamma: float = 1.0
    lam: float = 0.95
    eps: float = 1e-6

    @property
    def token_rewards(self) -> torch.Tensor:
        """(B, A): the KL penalty's rewards plus the score on each sample's last token."""
        from coati_ray.algo.reward_shaping import last_token_index

        out = self.kl_rewards.clone().float()
        out[torch.arange(out.size(0)), last_token_index(self.action_mask)] += self.scores.float()
        return out * self.action_mask.float()

    def with_kl(self, sequence_advantage: torch.Tensor) -> torch.Tensor:
        """A sequence-level advantage (B,) on every token, plus the returns-to-go of the KL penalty when it
        is in the reward (as OpenRLHF shapes group estimators): (B, A)."""
        return per_token(sequence_advantage, self.action_mask) + discounted_returns(self.kl_rewards.float(),
                                                                                   self.action_mask, self.gamma)


Estimator = Callable[[AdvantageInputs], tuple[torch.Tensor, Optional[torch.Tensor]]]


@dataclass(frozen=True)
class AlgorithmSpec:
    """An estimator and what the job must build for it."""

    name: str
    estimate: Estimator
    needs_critic: bool            # a critic model in the makers and a critic trainer group
    group_relative: bool          # compares a prompt's samples: needs algorithm.n_samples_per_prompt >= 2
    whiten: bool                  # the default of algorithm.whiten_advantages (over the group's whole batch)
    loss_agg: str = "token_mean"  # the default of algorithm.loss_agg (coati_ray/algo/loss_agg.py)

    @property
    def trainer_roles(self) -> tuple[str, ...]:
        return ("actor", "critic") if self.needs_critic else ("actor",)


REGISTRY: dict[str, AlgorithmSpec] = {}


def register(name: str, estimate: Estimator, needs_critic: bool = False, group_relative: bool = False,
             whiten: bool = False, loss_agg: str = "token_mean") -> Estimator:
    REGISTRY[name] = AlgorithmSpec(name, estimate, needs_critic, group_relative, whiten, loss_agg)
    return estimate


def estimator(needs_critic: bool = False, group_relative: bool = False, whiten: bool = False,
              loss_agg: str = "token_mean") -> Callable[[Estimator], Estimator]:
    """Mark an estimator in your own module with what the job must build for it; name it in the config as
    `algorithm.advantage_estimator: your.module:function` (docs/extending.md). Unmarked, a function counts as
    critic-free, not group-relative, unwhitened, token-mean."""
    def mark(fn: Estimator) -> Estimator:
        fn.__coati_estimator__ = dict(needs_critic=needs_critic, group_relative=group_relative, whiten=whiten,
                                      loss_agg=loss_agg)
        return fn
    return mark


_LOADED: dict[str, AlgorithmSpec] = {}  # the user's `module:function` estimators, imported once per process


def algorithm(name: str) -> AlgorithmSpec:
    """The spec of a registered name, or of `module:function` (imported once, kept apart from REGISTRY)."""
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" in name:
        if name not in _LOADED:
            from coati_ray.utils.plugins import load_callable

            fn = load_callable(name, "algorithm.advantage_estimator", "my_pkg.estimators:my_advantage")
            marked = getattr(fn, "__coati_estimator__", {})  # unmarked: critic-free, not group-relative
            _LOADED[name] = AlgorithmSpec(name, fn, **{"needs_critic": False, "group_relative": False,
                                                       "whiten": False, **marked})
        return _LOADED[name]
    import difflib

    close = difflib.get_close_matches(name, list(REGISTRY), n=1)
    raise KeyError(f"unknown advantage estimator '{name}'; " + (f"did you mean '{close[0]}'? " if close else "")
                   + f"use one of: {', '.join(REGISTRY)}, or 'module:function' for one of your own (a module of "
                   "yours that registers one by name goes in plugins: [...])")


# ---------------------------------------------------------------- group statistics


def group_view(scores: torch.Tensor, n: int) -> torch.Tensor:
    """(B,) -> (B / n, n): the samples of each prompt in a row."""
    if scores.numel() % n:
        raise ValueError(f"{scores.numel()} samples do not split into groups of {n}")
    return scores.float().view(-1, n)


def per_token(advantage: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """A sequence-level advantage (B,) on every action token: (B, A), 0 on padding."""
    return advantage.unsqueeze(1) * action_mask.to(advantage.dtype)


def discounted_returns(rewards: torch.Tensor, action_mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = sum_{k >= t} gamma^(k - t) r_k over valid tokens. rewards, action_mask: (B, A) -> (B, A)."""
    mask = action_mask.to(rewards.dtype)
    rewards = rewards * mask
    out = torch.zeros_like(rewards)
    running = torch.zeros(rewards.size(0), dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(rewards.size(1))):
        running = rewards[:, t] + gamma * running
        out[:, t] = running
    return out * mask


# ---------------------------------------------------------------- the estimators


def gae_recursion(rewards: torch.Tensor, values: torch.Tensor, action_mask: torch.Tensor, gamma: float = 1.0,
                  lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the action tokens.

    rewards, values, action_mask: (B, A) -> (advantages, returns), each (B, A).
    delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1}, where V and A
    after the last valid token are 0 (the episode ends there). returns = advantages + values.
    Masked positions get 0 advantage and 0 return.
    """
    mask = action_mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    B, A = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(A)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        advantages[:, t] = adv_t * m
        # A masked (padding) position must not carry value or advantage backwards.
        next_value = torch.where(m > 0, values[:, t], next_value)
        next_adv = torch.where(m > 0, adv_t, next_adv)
    returns = (advantages + values) * mask
    return advantages.detach(), returns.detach()


def gae(x: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's GAE on the per-token rewards with the critic's values (the recursion: gae_recursion above)."""
    if x.values is None:
        raise ValueError("gae needs the critic's values")
    return gae_recursion(x.token_rewards, x.values, x.action_mask, x.gamma, x.lam)


def grpo(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """A_i = (s_i - mean(s_group)) / (std(s_group) + eps), the same on every token of sample i.

    std is the unbiased one (as TRL and the GRPO paper compute it); a group of equal scores, or a
    group of one, has no signal and gets advantage 0.
    """
    g = group_view(x.scores, x.group_size)
    centred = g - g.mean(dim=1, keepdim=True)
    std = g.std(dim=1, keepdim=True) if x.group_size > 1 else torch.zeros_like(centred)
    return x.with_kl((centred / (std + x.eps)).flatten()), None


def dr_grpo(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """A_i = s_i - mean(s_group): GRPO without the std normalisation, whose question-level difficulty
    bias Dr. GRPO removes; its loss defaults to Dr. GRPO's own normalisation (algorithm.loss_agg=
    seq_mean_token_sum_norm: no per-answer length in the denominator either)."""
    g = group_view(x.scores, x.group_size)
    return x.with_kl((g - g.mean(dim=1, keepdim=True)).flatten()), None


def rloo(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """A_i = s_i - mean_{j != i} s_j = n / (n - 1) * (s_i - mean(s_group)); 0 for a group of one."""
    n = x.group_size
    g = group_view(x.scores, n)
    if n == 1:
        return x.with_kl(torch.zeros_like(g).flatten()), None
    baseline = (g.sum(dim=1, keepdim=True) - g) / (n - 1)
    return x.with_kl((g - baseline).flatten()), None


def reinforce_pp(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """REINFORCE++: the discounted return of the per-token rewards (KL penalty on every token, score on
    the last); the trainer then whitens them over the group's whole batch (its global baseline)."""
    return discounted_returns(x.token_rewards, x.action_mask, x.gamma), None


def reinforce_pp_baseline(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """REINFORCE++-baseline: the group's mean score is subtracted from each sample's score before the
    returns are taken (and whitened over the batch), which removes the prompt's difficulty."""
    g = group_view(x.scores, x.group_size)
    centred = dataclasses.replace(x, scores=(g - g.mean(dim=1, keepdim=True)).flatten())
    return discounted_returns(centred.token_rewards, x.action_mask, x.gamma), None


register("gae", gae, needs_critic=True, whiten=True)
register("grpo", grpo, group_relative=True)
register("dr_grpo", dr_grpo, group_relative=True, loss_agg="seq_mean_token_sum_norm")
register("rloo", rloo, group_relative=True)
register("reinforce_pp", reinforce_pp, whiten=True)
register("reinforce_pp_baseline", reinforce_pp_baseline, group_relative=True, whiten=True)
