"""Judging a policy on held-out prompts (gold score, reward-model score, KL to the initial policy)."""

from coati_ray.evaluation.policy import PolicyEval, evaluate_policy

__all__ = ["PolicyEval", "evaluate_policy"]
