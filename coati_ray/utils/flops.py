"""FLOP estimates for throughput figures: the usual 2N per token for a forward pass (inference)
and 6N for forward + backward (training), N = parameters. Attention's sequence-length term and
padding are ignored, so these are lower bounds on the work done and comparable across runs."""

from __future__ import annotations


def num_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def inference_flops(n_params: int, tokens: float) -> float:
    """2N FLOPs per token of a forward pass."""
    return 2.0 * n_params * tokens


def training_flops(n_params: int, tokens: float) -> float:
    """6N FLOPs per token of forward + backward."""
    return 6.0 * n_params * tokens


def experience_flops(n_actor: int, n_reward: int, n_critic: int, tokens: float) -> float:
    """One experience batch of `tokens` (prompt + response) tokens: the actor's generation, the actor's
    and the initial policy's log-probs, the reward model and the critic: 2 * tokens * (3N_a + N_r + N_c)."""
    return inference_flops(3 * n_actor + n_reward + n_critic, tokens)


def tflops(flops: float, seconds: float) -> float:
    return flops / max(seconds, 1e-12) / 1e12
