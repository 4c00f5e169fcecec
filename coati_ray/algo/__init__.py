"""Pure tensor maths of RLHF: no models, no Ray, no I/O."""

from coati_ray.algo.functional import (
    action_log_probs,
    entropy_from_logits,
    log_probs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from coati_ray.algo.losses import IGNORE_INDEX, kl_loss, policy_loss, ptx_mix, reward_model_loss, sft_loss, value_loss
from coati_ray.algo.advantages import gae_recursion
from coati_ray.algo.reward_shaping import (coati_token_kl, kl_estimate, last_token_index, on_last_token, per_token_rewards,
                                    sequence_kl_penalty)

__all__ = [
    "action_log_probs", "entropy_from_logits", "log_probs_from_logits", "masked_mean", "masked_sum",
    "masked_var", "masked_whiten", "IGNORE_INDEX", "kl_loss", "policy_loss", "ptx_mix", "reward_model_loss",
    "sft_loss", "value_loss", "gae_recursion", "kl_estimate", "last_token_index", "per_token_rewards",
    "coati_token_kl", "sequence_kl_penalty", "on_last_token",
]
