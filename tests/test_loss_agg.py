"""algorithm.loss_agg: a loss over one optimiser step's whole mini-batch, whatever the micro-batch size and rank count."""

from __future__ import annotations

import os

import pytest
import torch

from coati_ray.algo.functional import masked_mean
from coati_ray.algo.loss_agg import LOSS_AGGS, MiniBatch, local_counts, share


def rank_gradients(per_token_of, mask: torch.Tensor, param: torch.Tensor, how: str, ranks: int, micro: int,
                   max_tokens: int) -> torch.Tensor:
    """The gradient an optimiser step sees: each rank sums its micro-batches' shares (x ranks), and the
    strategy averages the ranks' gradients, as DDP / ZeRO / Gemini do. per_token_of(rows) -> (b, A)."""
    B = mask.shape[0]
    per_rank = B // ranks
    rows = [torch.arange(r * per_rank, (r + 1) * per_rank) for r in range(ranks)]
    totals = [sum(c) for c in zip(*(local_counts(mask[idx]) for idx in rows))]  # the all-reduce
    mb = MiniBatch(tokens=totals[0], samples=totals[1], max_tokens=max_tokens)
    grads = []
    for idx in rows:
        param.grad = None
        for j in range(0, per_rank, micro):
            chunk = idx[j:j + micro]
            (share(per_token_of(chunk), mask[chunk], how, mb) * ranks).backward()
        grads.append(param.grad.clone())
    return torch.stack(grads).mean(dim=0)


@pytest.mark.parametrize("how", LOSS_AGGS)
def test_every_aggregation_is_the_same_for_1x8_2x4_and_8x1(how):
    """8 answers of different lengths: 1 rank with 8 micro-batches, 2 ranks with 4, 8 ranks with 1 and one
    micro-batch of all 8 give the same gradient."""
    g = torch.Generator().manual_seed(0)
    B, A = 8, 9
    lengths = torch.tensor([1, 9, 3, 7, 2, 5, 9, 4])
    mask = (torch.arange(A)[None, :] < lengths[:, None]).long()
    x = torch.randn(B, A, 5, generator=g)
    param = torch.randn(5, generator=g, requires_grad=True)

    def per_token(rows):
        return torch.tanh(x[rows] @ param) ** 2

    whole = rank_gradients(per_token, mask, param, how, ranks=1, micro=8, max_tokens=A)
    for ranks, micro in ((1, 1), (2, 1), (8, 1), (2, 4), (4, 2)):
        got = rank_gradients(per_token, mask, param, how, ranks, micro, max_tokens=A)
        assert torch.allclose(got, whole, atol=1e-6), (ranks, micro)


def test_the_issues_example_two_answers_of_1_and_9_tokens():
    """Per-token weights under each aggregation, against what a mean per micro-batch gave with micro-batch 1
    (0.5 and 1/18: the length bias Dr. GRPO removes)."""
    mask = torch.zeros(2, 9, dtype=torch.long)
    mask[0, :1], mask[1, :9] = 1, 1
    ones = torch.ones(2, 9, requires_grad=True)
    weights = {}
    for how in LOSS_AGGS:
        ones.grad = None
        mb = MiniBatch(tokens=10, samples=2, max_tokens=16)
        for row in (0, 1):  # micro-batch 1: each answer on its own
            share(ones[row:row + 1], mask[row:row + 1], how, mb).backward()
        weights[how] = (ones.grad[0, 0].item(), ones.grad[1, 0].item())
    assert weights["token_mean"] == pytest.approx((0.1, 0.1))
    assert weights["seq_mean_token_mean"] == pytest.approx((0.5, 0.5 / 9))
    assert weights["seq_mean_token_sum_norm"] == pytest.approx((1 / 32, 1 / 32))
    ones.grad = None
    for row in (0, 1):  # what a mean per micro-batch, averaged over micro-batches, did
        (masked_mean(ones[row:row + 1], mask[row:row + 1]) / 2).backward()
    assert (ones.grad[0, 0].item(), ones.grad[1, 0].item()) == pytest.approx((0.5, 1 / 18))


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo"])
def test_the_policy_trainer_updates_the_same_for_any_micro_batch_size(estimator, tiny_llama):
    """Answers of different lengths, one optimiser step: micro-batches of 8, 2 and 1 move the weights alike
    (token_mean for grpo, Dr. GRPO's own normalisation for dr_grpo)."""
    from coati_ray.config import load_config
    from coati_ray.config.rl import RLConfig
    from coati_ray.models import Actor
    from coati_ray.strategies import make_strategy
    from coati_ray.trainers.ppo import make_group_trainer
    from tests.conftest import REPO
    from tests.test_ppo_correctness import synthetic_experience

    model = Actor.from_pretrained(tiny_llama)
    exp = synthetic_experience(model, model.config.vocab_size, A=6)
    lengths = torch.tensor([1, 6, 2, 5, 3, 6, 1, 4])
    exp.action_mask = (torch.arange(6)[None, :] < lengths[:, None]).long()
    params = {}
    for micro in (8, 2, 1):
        cfg = load_config(RLConfig, os.path.join(REPO, "configs", "ppo_tiny.yaml"),
                          [f"actor.path={tiny_llama}", f"algorithm.advantage_estimator={estimator}",
                           "algorithm.n_samples_per_prompt=2", "algorithm.rollout_batch_size=8", "algorithm.train_batch_size=8",
                           f"algorithm.micro_batch_size={micro}", "algorithm.whiten_advantages=false", "algorithm.kl_coef=0",
                           "actor_trainer.strategy.name=naive", "actor_trainer.resources.num_ranks=1",
                           "actor_trainer.optim.eps=1.0", "actor_trainer.optim.lr=1e-2", "maker.batch_size=8"])
        assert cfg.loss_agg() == ("seq_mean_token_sum_norm" if estimator == "dr_grpo" else "token_mean")
        strategy = make_strategy(cfg.actor_trainer.strategy)
        strategy.setup_distributed()
        torch.manual_seed(0)
        trainer = make_group_trainer("actor", cfg, strategy)
        trainer.train(exp, step=0)
        params[micro] = {k: v.detach().clone() for k, v in strategy.unwrap(trainer.model).state_dict().items()}
    start = model.state_dict()
    moved = max((params[8][k] - start[k]).abs().max().item() for k in start)
    worst = max((params[m][k] - params[8][k]).abs().max().item() for m in (2, 1) for k in start)
    assert moved > 1e-4 and worst < 1e-6, (moved, worst)
