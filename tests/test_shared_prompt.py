"""One pass over a prompt for the rows of its group (algorithm.share_prompts, models/shared_prompt.py): the
log-probs, gradients and the weights after an update equal the full forward's to float noise, on llama and qwen2,
on one rank and on two; rows that do not share a prompt run as before."""

from __future__ import annotations

import os

import pytest
import torch

from coati_ray.experience import Experience
from coati_ray.models.shared_prompt import prompt_runs

FAMILIES = ("llama", "qwen2")
GROUP_PROMPTS = [5, 2, 4, 3]        # real prompt tokens of each group's prompt, left-padded to 5
ANSWERS = [7, 3, 1, 6, 4, 7, 2, 5]  # real answer tokens of each row, right-padded to 7


def grouped_batch(vocab: int, n: int = 2, P: int = 5, A: int = 7):
    """len(GROUP_PROMPTS) groups of n rows: each group's rows start with the same left-padded prompt and go on
    with answers of their own lengths, as a maker lays out n samples per prompt."""
    g = torch.Generator().manual_seed(0)
    B = len(GROUP_PROMPTS) * n
    prompt = torch.tensor(GROUP_PROMPTS).repeat_interleave(n)[:, None]
    answer = torch.tensor(ANSWERS[:B])[:, None]
    cols = torch.arange(P + A)[None, :]
    mask = ((cols >= P - prompt) & (cols < P + answer)).long()
    seqs = torch.randint(4, vocab, (B, P + A), generator=g)
    seqs[:, :P] = torch.randint(4, vocab, (len(GROUP_PROMPTS), P), generator=g).repeat_interleave(n, dim=0)
    seqs = seqs.masked_fill(mask == 0, 0)
    action_mask = (torch.arange(A)[None, :] < answer).long()
    return seqs, mask, action_mask, torch.arange(B) // n


def test_runs_are_neighbouring_rows_with_the_same_prompt_tokens_and_padding():
    seqs, mask, _, _ = grouped_batch(50)
    assert prompt_runs(seqs, mask, 5).tolist() == [2, 2, 2, 2]
    assert prompt_runs(seqs[[0, 2, 4, 6]], mask[[0, 2, 4, 6]], 5) is None  # no two neighbours share: nothing saved
    moved = seqs.clone()
    moved[3, 4] += 1  # one token of row 3's prompt differs: it runs alone
    assert prompt_runs(moved, mask, 5).tolist() == [2, 1, 1, 2, 2]
    assert prompt_runs(seqs[[0, 1, 2, 4, 5]], mask[[0, 1, 2, 4, 5]], 5).tolist() == [2, 1, 2]


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prompt_log_probs_and_gradients_equal_the_full_forward(assets, family):
    from coati_ray.models import Actor

    actor = Actor.from_pretrained(os.path.join(assets, "models", f"tiny-{family}"))
    seqs, mask, action_mask, _ = grouped_batch(actor.config.vocab_size)
    A = action_mask.size(1)
    calls = []
    actor.model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs["input_ids"].shape),
                                          with_kwargs=True)
    out = {}
    for share in (False, True):
        actor.zero_grad()
        calls.clear()
        log_probs = actor.log_probs(seqs, mask, A, temperature=0.7, share_prompts=share)
        (log_probs * action_mask).sum().backward()
        out[share] = (log_probs * action_mask, {k: p.grad.clone() for k, p in actor.named_parameters()})
        widths = [tuple(c) for c in calls]
        # shared: the 4 prompts once (but their last token), then the 8 answers from it on; else the 8 whole rows
        assert widths == ([(4, 4), (8, 8)] if share else [(8, 12)])
    torch.testing.assert_close(out[True][0], out[False][0], rtol=0, atol=1e-5)
    scale = max(g.abs().max().item() for g in out[False][1].values())
    worst = max((out[True][1][k] - g).abs().max().item() for k, g in out[False][1].items())
    assert scale > 1e-2 and worst < 1e-5 * scale, (scale, worst)


def grouped_experience(model) -> Experience:
    seqs, mask, action_mask, groups = grouped_batch(model.config.vocab_size)
    B, A = action_mask.shape
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        logp = model.log_probs(seqs, mask, A) * action_mask
    return Experience(sequences=seqs, attention_mask=mask, action_mask=action_mask, action_log_probs=logp,
                      advantages=torch.randn(B, A, generator=g) * action_mask, kl=torch.zeros(B, A),
                      reward=torch.zeros(B), ref_log_probs=logp + 0.1 * torch.randn(B, A, generator=g) * action_mask,
                      group_index=groups)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_update_with_shared_prompts_moves_the_weights_as_the_full_forward(assets, family):
    from coati_ray.models import Actor
    from tests.test_sorted_micro_batches import one_update

    path = os.path.join(assets, "models", f"tiny-{family}")
    exp = grouped_experience(Actor.from_pretrained(path))
    common = ["algorithm.advantage_estimator=grpo", "algorithm.n_samples_per_prompt=2", "algorithm.kl_coef=0.1",
              "algorithm.kl_penalty=loss", "algorithm.behaviour_correction=tis"]
    plain, plain_metrics, _ = one_update(path, exp, "actor", *common, "algorithm.share_prompts=false",
                                         "algorithm.sort_micro_batches=false")
    shared, shared_metrics, _ = one_update(path, exp, "actor", *common)
    worst = max((shared[k] - plain[k]).abs().max().item() for k in plain)
    assert plain_metrics["moved"] > 1e-4 and worst < 1e-6, (plain_metrics["moved"], worst)
    assert shared_metrics["actor/loss"] == pytest.approx(plain_metrics["actor/loss"], abs=1e-6)
    assert shared_metrics["behaviour/log_ratio_abs_mean"] < 1e-5  # the recomputed old log-probs, shared too


def test_micro_batches_keep_groups_together_longest_first():
    from coati_ray.trainers.ppo import groups_longest_first

    groups = torch.tensor([7, 3, 7, 5, 3, 5])
    lengths = torch.tensor([4, 9, 2, 6, 1, 5])
    order = groups_longest_first(groups, lengths)
    assert groups[order].tolist() == [3, 3, 5, 5, 7, 7]  # groups by their longest row: 9, 6, 4
    assert groups[groups_longest_first(groups)].tolist() == [3, 3, 5, 5, 7, 7]


def test_two_ranks_sharing_prompts_update_as_one_rank_without(tiny_llama, reward_dir, tmp_path):
    from coati_ray.models import Actor
    from tests.test_ppo_correctness import one_rank_and_two, ppo_cfg

    common = ["algorithm.rollout_batch_size=8", "algorithm.train_batch_size=8", "algorithm.micro_batch_size=2",
              "algorithm.advantage_estimator=grpo", "algorithm.n_samples_per_prompt=2", "algorithm.kl_coef=0.1",
              "algorithm.kl_penalty=loss", "actor_trainer.optim.eps=1.0", "actor_trainer.optim.lr=1e-2",
              "maker.batch_size=8"]
    single = ppo_cfg(tiny_llama, reward_dir, tmp_path / "single", *common, "actor_trainer.strategy.name=naive",
                     "actor_trainer.resources.num_ranks=1", "algorithm.share_prompts=false",
                     "algorithm.sort_micro_batches=false")
    double = ppo_cfg(tiny_llama, reward_dir, tmp_path / "ddp", *common, "actor_trainer.strategy.name=ddp",
                     "actor_trainer.resources.num_ranks=2")
    assert double.algorithm.share_prompts  # the default
    model = Actor.from_pretrained(tiny_llama)
    moved, worst = one_rank_and_two(single, double, grouped_experience(model), model.state_dict(), tmp_path)
    assert moved > 1e-4 and worst < 1e-6, (moved, worst)


def test_sharing_is_refused_where_it_would_not_give_the_full_forwards_numbers(tiny_llama):
    """flash-attention 2 (a right-padded mask with a past is refused there), RoPE scaled by the length, and in
    training gradient checkpointing (no cache) or active dropout (one mask for a group's prompt)."""
    from coati_ray.models import Actor
    from coati_ray.models.shared_prompt import can_share

    actor = Actor.from_pretrained(tiny_llama)
    model, config = actor.model, actor.model.config
    assert can_share(model)
    config._attn_implementation = "flash_attention_2"
    assert not can_share(model)
    config._attn_implementation = "sdpa"
    config.rope_scaling = {"rope_type": "dynamic", "factor": 2.0}
    assert not can_share(model)
    config.rope_scaling = None
    model.train()
    assert can_share(model)  # training, no dropout, no checkpointing
    model.gradient_checkpointing_enable()
    assert not can_share(model)
    model.gradient_checkpointing_disable()
    config.attention_dropout = 0.1
    assert not can_share(model)
    model.eval()
    assert can_share(model)  # no dropout runs in eval
    seqs, mask, action_mask, _ = grouped_batch(config.vocab_size)
    assert actor.prompt_sharing(seqs, mask, action_mask.size(1))  # a prompt of 5 columns, runs of 2
    assert not actor.prompt_sharing(seqs[:, 4:], mask[:, 4:], action_mask.size(1))  # one column: nothing to share
