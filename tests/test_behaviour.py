"""algorithm.clip_eps_high (clip-higher) and algorithm.behaviour_correction (tis / mis against the makers' log-probs)."""

from __future__ import annotations

import math
import os

import pytest
import torch

from coati_ray.algo.behaviour import behaviour_weights, importance_ratio, log_gap_sum, ratio_sums
from coati_ray.algo.losses import policy_loss


def test_tis_truncates_and_mis_drops_tokens_over_the_cap():
    trainer = torch.log(torch.tensor([[0.5, 0.5, 0.9, 0.2]]))
    behaviour = torch.log(torch.tensor([[0.5, 0.1, 0.3, 0.4]]))
    mask = torch.tensor([[1, 1, 1, 0]])
    ratio = importance_ratio(trainer, behaviour)
    assert ratio.tolist()[0] == pytest.approx([1.0, 5.0, 3.0, 0.5], rel=1e-5)
    assert behaviour_weights(ratio, mask, "tis", 2.0).tolist()[0] == pytest.approx([1.0, 2.0, 2.0, 0.0])
    assert behaviour_weights(ratio, mask, "mis", 2.0).tolist()[0] == pytest.approx([1.0, 0.0, 0.0, 0.0])
    assert ratio_sums(ratio, mask, 2.0) == pytest.approx([9.0, 3.0, 2.0], rel=1e-5)
    assert log_gap_sum(trainer, behaviour, mask) == pytest.approx(math.log(5) + math.log(3), rel=1e-6)
    tiny = torch.full((1, 1), 1e-9, dtype=torch.float64)  # a gap float32's ratio would round to 0
    assert log_gap_sum(tiny, torch.zeros(1, 1), torch.ones(1, 1)) == pytest.approx(1e-9, rel=1e-6)
    assert importance_ratio(torch.zeros(1, 1), torch.full((1, 1), -1e4)).isfinite().all()  # never inf


def test_clip_higher_lets_a_token_rise_past_1_plus_clip_eps():
    """Ratio 1.25 on a positive advantage: clip_eps 0.2 stops its gradient, clip_eps_high 0.28 does not;
    the lower bound stays at 1 - clip_eps."""
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.25, 0.7]])).requires_grad_(True)
    adv, mask = torch.tensor([[1.0, -1.0]]), torch.ones(1, 2)
    grads = {}
    for high in (None, 0.28):
        new.grad = None
        policy_loss(new, old, adv, mask, clip_eps=0.2, clip_eps_high=high)[0].backward()
        grads[high] = new.grad[0].tolist()
    assert grads[None][0] == 0.0 and grads[0.28][0] != 0.0
    assert grads[None][1] == grads[0.28][1] == 0.0  # 0.7 < 1 - 0.2 on a negative advantage: clipped either way


def test_clip_eps_low_sets_the_lower_bound_on_its_own():
    """Ratio 0.75 on a negative advantage: clip_eps 0.2 clips it (0.75 < 0.8), clip_eps_low 0.3 does not
    (0.75 > 0.7), while the upper bound stays at 1 + clip_eps for the token at 1.25."""
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[0.75, 1.25]])).requires_grad_(True)
    adv, mask = torch.tensor([[-1.0, 1.0]]), torch.ones(1, 2)
    grads = {}
    for low in (None, 0.3):
        new.grad = None
        policy_loss(new, old, adv, mask, clip_eps=0.2, clip_eps_low=low)[0].backward()
        grads[low] = new.grad[0].tolist()
    assert grads[None][0] == 0.0 and grads[0.3][0] != 0.0
    assert grads[None][1] == grads[0.3][1] == 0.0


def trained(tiny_llama, exp, *overrides):
    """The actor's weights after one update on `exp`, and its metrics."""
    from coati_ray.config import load_config
    from coati_ray.config.rl import RLConfig
    from coati_ray.strategies import make_strategy
    from coati_ray.trainers.ppo import make_group_trainer
    from tests.conftest import REPO

    cfg = load_config(RLConfig, os.path.join(REPO, "configs", "ppo_tiny.yaml"),
                      [f"actor.path={tiny_llama}", "algorithm.advantage_estimator=grpo", "algorithm.n_samples_per_prompt=2",
                       "algorithm.rollout_batch_size=8", "algorithm.train_batch_size=8", "algorithm.micro_batch_size=4",
                       "algorithm.whiten_advantages=false", "algorithm.kl_coef=0", "actor_trainer.strategy.name=naive",
                       "actor_trainer.resources.num_ranks=1", "actor_trainer.optim.eps=1.0",
                       "actor_trainer.optim.lr=1e-2", "maker.batch_size=8", *overrides])
    strategy = make_strategy(cfg.actor_trainer.strategy)
    strategy.setup_distributed()
    torch.manual_seed(0)
    trainer = make_group_trainer("actor", cfg, strategy)
    metrics = trainer.train(exp, step=0)
    return {k: v.detach().clone() for k, v in strategy.unwrap(trainer.model).state_dict().items()}, metrics


def max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_behaviour_correction_against_a_maker_that_drifted(tiny_llama):
    """The maker's log-probs are the trainer's except on some tokens, where the maker gave the sampled token
    e times less probability (ratio e > cap 2). tis: those tokens' weight is 2, the metrics say so; mis: the
    update equals one in which those tokens carry no advantage; a maker equal to the trainer changes nothing."""
    from coati_ray.config import load_config
    from coati_ray.config.rl import RLConfig
    from coati_ray.models import Actor
    from tests.conftest import REPO
    from tests.test_ppo_correctness import synthetic_experience

    model = Actor.from_pretrained(tiny_llama)
    exp = synthetic_experience(model, model.config.vocab_size)
    drifted = torch.zeros_like(exp.action_log_probs, dtype=torch.bool)
    drifted[::2, 1::2] = True
    maker = exp._replace({"action_log_probs": exp.action_log_probs - drifted.float()})

    plain, _ = trained(tiny_llama, exp)
    same, m_same = trained(tiny_llama, exp, "algorithm.behaviour_correction=tis")
    assert max_diff(same, plain) < 1e-6 and m_same["behaviour/ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert m_same["behaviour/capped_frac"] == 0.0
    assert m_same["actor/padding_fraction"] == pytest.approx(1 - exp.attention_mask.float().mean().item())

    tis, m_tis = trained(tiny_llama, maker, "algorithm.behaviour_correction=tis")
    share = drifted.float().mean().item()
    assert m_tis["behaviour/capped_frac"] == pytest.approx(share)
    assert m_tis["behaviour/ratio_max"] == pytest.approx(math.e, rel=1e-3)
    assert m_tis["behaviour/ratio_mean"] == pytest.approx(1 + share * (math.e - 1), rel=1e-3)
    assert max_diff(tis, plain) > 1e-5  # the drifted tokens weigh twice as much

    assert m_tis["behaviour/log_ratio_abs_mean"] == pytest.approx(share, rel=1e-3)  # 1 nat on the drifted tokens

    # measure: the same metrics, and the update `none` makes from the maker's log-probs
    measured, m_measured = trained(tiny_llama, maker, "algorithm.behaviour_correction=measure")
    uncorrected, _ = trained(tiny_llama, maker)
    assert max_diff(measured, uncorrected) < 1e-6 and max_diff(measured, tis) > 1e-5
    assert {k: v for k, v in m_measured.items() if k.startswith("behaviour/")} == pytest.approx(
        {k: v for k, v in m_tis.items() if k.startswith("behaviour/")})

    mis, _ = trained(tiny_llama, maker, "algorithm.behaviour_correction=mis")
    silenced, _ = trained(tiny_llama, exp._replace({"advantages": exp.advantages * (~drifted).float()}))
    assert max_diff(mis, silenced) < 1e-6 and max_diff(mis, plain) > 1e-5

    cfg = load_config(RLConfig, os.path.join(REPO, "configs", "ppo_tiny.yaml"),
                      [f"actor.path={tiny_llama}", "algorithm.advantage_estimator=grpo", "algorithm.n_samples_per_prompt=2",
                       "algorithm.kl_coef=0", "algorithm.rollout_batch_size=8", "algorithm.train_batch_size=8", "maker.batch_size=8"])
    assert cfg.trainer_log_probs_are_behaviour  # without a correction the makers skip their log-prob pass
    cfg.algorithm.behaviour_correction = "tis"
    assert not cfg.trainer_log_probs_are_behaviour  # with one they must send theirs
    cfg.algorithm.behaviour_correction = "measure"
    assert not cfg.trainer_log_probs_are_behaviour  # and to be measured, too
