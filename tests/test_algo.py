"""The RLHF maths against values computed by hand."""

import math

import pytest
import torch

from coati_ray.algo import (
    action_log_probs,
    gae_recursion,
    kl_estimate,
    last_token_index,
    log_probs_from_logits,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    policy_loss,
    ptx_mix,
    reward_model_loss,
    sft_loss,
    value_loss,
)
from coati_ray.algo.losses import IGNORE_INDEX
from coati_ray.trainers.schedule import lr_factor

T = torch.tensor


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


def test_masked_mean_ignores_masked_positions():
    x = T([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = T([[1, 1, 0], [1, 0, 0]])
    assert close(masked_mean(x, mask), 7.0 / 3.0)
    assert close(masked_mean(x, mask, dim=1), [1.5, 4.0])
    assert close(masked_mean(x, torch.zeros_like(mask), dim=1), [0.0, 0.0])  # empty rows: 0, not NaN


def test_masked_whiten_unit_variance_on_mask_only():
    x = T([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = T([[1, 1, 0], [1, 1, 0]])
    w = masked_whiten(x, mask)
    # masked values 1,2,3,4: mean 2.5, unbiased var 5/3
    assert close(w[:, :2], (T([[1.0, 2.0], [3.0, 4.0]]) - 2.5) / math.sqrt(5 / 3), 1e-4)
    assert close(w[:, 2], [0.0, 0.0])
    assert close(masked_whiten(x, mask, shift_mean=False)[0, 0], (1 - 2.5) / math.sqrt(5 / 3) + 2.5, 1e-4)


def test_log_probs_from_logits_by_hand():
    logits = T([[[0.0, math.log(3.0)]]])  # probabilities 1/4, 3/4
    assert close(log_probs_from_logits(logits, T([[1]])), [[math.log(0.75)]])
    assert close(log_probs_from_logits(logits, T([[0]])), [[math.log(0.25)]])


def test_action_log_probs_shift_by_one():
    # Position t predicts token t+1; the last A tokens' log-probs come from positions T-A-1 .. T-2.
    logits = torch.zeros(1, 3, 2)
    logits[0, 1] = T([0.0, math.log(3.0)])  # predicts token at position 2
    ids = T([[0, 0, 1]])
    out = action_log_probs(logits, ids, num_actions=1)
    assert out.shape == (1, 1) and close(out, [[math.log(0.75)]])


def test_kl_estimators_by_hand():
    logp, ref = T([[math.log(0.5)]]), T([[math.log(0.25)]])
    ln2 = math.log(2.0)
    assert close(kl_estimate(logp, ref, "k1"), [[ln2]])
    assert close(kl_estimate(logp, ref, "k2"), [[0.5 * ln2**2]])
    assert close(kl_estimate(logp, ref, "k3"), [[0.5 - 1 + ln2]])
    assert close(kl_estimate(logp, logp, "k3"), [[0.0]])
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k4")


def test_last_token_index_left_and_right_padding():
    mask = T([[1, 1, 0], [0, 1, 1], [0, 0, 0], [1, 1, 1]])
    assert last_token_index(mask).tolist() == [1, 2, 0, 2]


def test_per_token_rewards_kl_on_every_token_score_on_last():
    r = per_token_rewards(T([2.0]), T([[0.1, 0.2, 0.3]]), T([[1, 1, 0]]), kl_coef=0.5)
    assert close(r, [[-0.05, -0.1 + 2.0, 0.0]])
    clipped = per_token_rewards(T([9.0]), T([[0.0, 0.0]]), T([[1, 1]]), kl_coef=0.1, clip_score=1.0)
    assert close(clipped, [[0.0, 1.0]])


def coati_compute_reward(r, kl_coef, log_probs, log_probs_base, action_mask):
    """Coati's train_prompts.py reward (coati/models/utils.py), written out: one sequence-level approximate KL,
    the mean over the response's tokens, subtracted once from the reward."""
    if kl_coef <= 0.0:
        return r
    log_ratio = log_probs - log_probs_base
    approx_kl = (log_ratio.exp() - 1) - log_ratio
    approx_kl = (approx_kl * action_mask).sum(dim=1) / action_mask.sum(dim=1)
    return r - kl_coef * approx_kl


def test_coatis_sequence_kl_penalty_by_hand():
    from coati_ray.algo import coati_token_kl, on_last_token, sequence_kl_penalty

    # pi / pi_ref = 2 and 1/2 on the two response tokens: (2 - 1 - ln 2) and (1/2 - 1 + ln 2), mean 1/4; the
    # third token is padding (its ratio of 9 would add 9 - 1 - ln 9 = 5.8 if it counted)
    logp, ref = T([[0.5, 0.25, 0.9]]).log(), T([[0.25, 0.5, 0.1]]).log()
    mask = T([[1, 1, 0]])
    ln2 = math.log(2.0)
    assert close(coati_token_kl(logp, ref)[:, :2], [[1 - ln2, ln2 - 0.5]])
    assert close(sequence_kl_penalty(logp, ref, mask, kl_coef=0.2), [0.2 * 0.25])
    assert close(on_last_token(T([-0.05]), mask), [[0.0, -0.05, 0.0]])
    assert close(on_last_token(T([-0.05, 1.0]), T([[1, 1, 0], [0, 1, 1]])), [[0.0, -0.05, 0.0], [0.0, 0.0, 1.0]])
    assert close(sequence_kl_penalty(logp, ref, torch.zeros_like(mask), kl_coef=0.2), [0.0])  # no tokens: 0


def test_coatis_sequence_kl_penalty_is_coatis_compute_reward():
    from coati_ray.algo import sequence_kl_penalty

    torch.manual_seed(0)
    logp, ref = -torch.rand(4, 7) * 3, -torch.rand(4, 7) * 3
    mask = (torch.arange(7)[None, :] < T([[7], [5], [1], [3]])).float()
    r = torch.randn(4)
    assert close(r - sequence_kl_penalty(logp, ref, mask, 0.1), coati_compute_reward(r, 0.1, logp, ref, mask))


def test_the_sequence_penalty_is_taken_once_where_the_per_token_one_is_summed():
    """The penalty of issue 47: 100 tokens at a 0.05-nat gap. Per token (k1, in the reward) the returns carry
    the sum, 100 x 0.05 x kl_coef; Coati's takes the mean of (e^r - 1) - r once, ~0.00125 x kl_coef."""
    from coati_ray.algo import coati_token_kl, on_last_token, sequence_kl_penalty

    logp, ref, mask = torch.full((1, 100), -1.0), torch.full((1, 100), -1.05), torch.ones(1, 100)
    zero = torch.zeros(1, 100)
    _, per_token = gae_recursion(-0.1 * kl_estimate(logp, ref, "k1"), zero, mask, gamma=1.0, lam=1.0)
    _, sequence = gae_recursion(on_last_token(-sequence_kl_penalty(logp, ref, mask, 0.1), mask), zero, mask,
                                gamma=1.0, lam=1.0)
    assert close(per_token[0, 0], -0.1 * 100 * 0.05, tol=1e-4)
    assert close(sequence[0, 0], -0.1 * (math.exp(0.05) - 1 - 0.05), tol=1e-7)
    assert close(sequence[0, 0], sequence[0, -1], tol=1e-7)  # nothing taken per token
    assert per_token[0, 0] / sequence[0, 0] > 3900
    assert close(coati_token_kl(logp, ref).mean(), math.exp(0.05) - 1 - 0.05, tol=1e-7)


def test_gae_by_hand():
    adv, ret = gae_recursion(T([[1.0, 0.0, 2.0]]), T([[0.5, 1.0, 1.5]]), T([[1, 1, 1]]), gamma=0.9, lam=0.8)
    # t2: 2 - 1.5 = 0.5; t1: 0.9*1.5 - 1 = 0.35, + 0.72*0.5 = 0.71; t0: 1 + 0.9 - 0.5 = 1.4, + 0.72*0.71
    assert close(adv, [[1.4 + 0.72 * 0.71, 0.71, 0.5]])
    assert close(ret, [[1.4 + 0.72 * 0.71 + 0.5, 1.71, 2.0]])


def test_gae_masked_tail_carries_nothing():
    adv, ret = gae_recursion(T([[1.0, 2.0, 999.0]]), T([[0.5, 1.0, 777.0]]), T([[1, 1, 0]]), gamma=0.9, lam=0.8)
    assert close(adv, [[1.4 + 0.72 * 1.0, 1.0, 0.0]])
    assert close(ret, [[1.4 + 0.72 + 0.5, 2.0, 0.0]])


@pytest.mark.parametrize("ratio,adv,expected_loss,clipped", [
    (1.1, 1.0, -1.1, 0.0),   # inside the trust region: not clipped
    (1.5, 1.0, -1.2, 1.0),   # clipped high: ratio capped at 1 + eps
    (0.5, -1.0, 0.8, 1.0),   # clipped low: ratio floored at 1 - eps for a negative advantage
    (0.5, 1.0, -0.5, 0.0),   # below 1 - eps with positive advantage: pessimistic branch is unclipped
])
def test_policy_loss_cases(ratio, adv, expected_loss, clipped):
    old = T([[0.0, 0.0]])
    new = T([[math.log(ratio), 5.0]])  # second token is masked and would dominate if counted
    loss, stats = policy_loss(new, old, T([[adv, 100.0]]), T([[1, 0]]), clip_eps=0.2)
    assert close(loss, expected_loss)
    assert stats["clip_frac"] == pytest.approx(clipped)


def test_value_loss_clipped_and_not():
    loss, stats = value_loss(T([[1.5]]), T([[1.0]]), T([[2.0]]), T([[1]]), clip_eps=0.2)
    assert close(loss, 0.5 * 0.64) and stats["clip_frac"] == 1.0  # v_clip = 1.2 -> (0.8)^2 > (0.5)^2
    loss, stats = value_loss(T([[1.1]]), T([[1.0]]), T([[2.0]]), T([[1]]), clip_eps=0.2)
    assert close(loss, 0.5 * 0.81) and stats["clip_frac"] == 0.0
    loss, _ = value_loss(T([[1.5, 9.0]]), T([[1.0, 0.0]]), T([[2.0, 0.0]]), T([[1, 0]]), clip_eps=0.0)
    assert close(loss, 0.5 * 0.25)


def test_reward_model_losses_by_hand():
    chosen, rejected = T([2.0, 0.0]), T([1.0, 1.0])
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2
    for kind in ("log_sig", "log_exp"):
        loss, stats = reward_model_loss(chosen, rejected, kind)
        assert close(loss, expected)
        assert stats["acc"] == 0.5 and stats["margin"] == pytest.approx(0.0)
    loss, stats = reward_model_loss(T([3.0]), T([-1.0]), "log_sig")
    assert stats["acc"] == 1.0 and stats["margin"] == pytest.approx(4.0)


def test_sft_loss_ignores_unlabelled_tokens():
    logits = torch.zeros(1, 4, 4)  # uniform: every labelled token costs ln 4
    logits[0, 0, 2] = 50.0          # predicts position 1, which is ignored below
    labels = T([[IGNORE_INDEX, IGNORE_INDEX, 1, 3]])
    assert close(sft_loss(logits, labels), math.log(4.0))


def test_ptx_mix():
    assert close(ptx_mix(T(2.0), T(4.0), 0.25), 0.25 * 4.0 + 0.75 * 2.0)
    assert close(ptx_mix(T(2.0), T(4.0), 0.0), 2.0)
    with pytest.raises(ValueError):
        ptx_mix(T(2.0), T(4.0), 1.5)


def test_lr_schedule():
    assert lr_factor(0, 10, warmup_steps=2) == pytest.approx(0.5)
    assert lr_factor(2, 10, warmup_steps=2, kind="cosine") == pytest.approx(1.0)
    assert lr_factor(10, 10, warmup_steps=2, kind="cosine") == pytest.approx(0.0)
    assert lr_factor(6, 10, warmup_steps=2, kind="linear") == pytest.approx(0.5)
    assert lr_factor(10, 10, kind="linear", min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(7, 10, kind="constant") == 1.0
