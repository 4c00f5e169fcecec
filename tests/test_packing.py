"""Padding-free updates (algorithm.micro_batch_tokens, coati_ray/models/packing.py): a packed forward gives the padded
one's log-probs and values, and an optimiser step over packed micro-batches moves the weights as the padded one
does, on llama and qwen2."""

from __future__ import annotations

import os

import pytest
import torch

from coati_ray.models.packing import block_causal_mask, pack, split_to, token_budget_chunks, unpack

FAMILIES = ("llama", "qwen2")


def padded_batch(vocab: int, B: int = 6, P: int = 5, A: int = 7, seed: int = 0):
    """Left-padded prompts of 2..P tokens, answers of 1..A tokens then padding (attention 0), as a maker's."""
    g = torch.Generator().manual_seed(seed)
    seqs = torch.randint(4, vocab, (B, P + A), generator=g)
    prompt = torch.tensor([P, 2, 3, P, 4, 2][:B])
    answer = torch.tensor([A, 1, 4, 2, A, 5][:B])
    cols = torch.arange(P + A)[None, :]
    mask = ((cols >= P - prompt[:, None]) & (cols < P + answer[:, None])).long()
    seqs = seqs.masked_fill(mask == 0, 0)
    action_mask = (torch.arange(A)[None, :] < answer[:, None]).long()
    return seqs, mask, action_mask


def test_pack_keeps_every_real_token_with_its_own_positions_and_unpack_puts_them_back():
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 1, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    p = pack(ids, mask)
    assert p.input_ids.tolist() == [[5, 6, 7, 8, 9, 1]]
    assert p.position_ids.tolist() == [[0, 1, 2, 0, 1, 2]] and p.lengths == [3, 3]
    back = unpack(p.input_ids[..., None].float(), p)[..., 0]
    assert torch.equal(back, (ids * mask).float())
    m = block_causal_mask([2, 1], torch.float32, "cpu")[0, 0]
    low = torch.finfo(torch.float32).min
    assert m.tolist() == [[0, low, low], [0, 0, low], [low, low, 0]]  # causal within a sequence, never across


def test_micro_batches_by_token_budget_and_the_same_count_on_every_rank():
    assert token_budget_chunks([5, 5, 3, 9, 1], budget=10) == [[0, 1], [2], [3, 4]]
    assert token_budget_chunks([12, 2], budget=10) == [[0], [1]]  # longer than the budget: alone
    tokens = [2, 8, 5, 4, 9]
    own = token_budget_chunks(tokens, budget=9)  # another rank needed 4 packs: this one splits to 4 as well
    for k in (len(own), 4, 5):
        parts = split_to(own, tokens, k)
        assert len(parts) == k and sum(parts, []) == list(range(5)) and all(parts)
        assert all(sum(tokens[i] for i in p) <= 9 for p in parts)  # never past the budget
    with pytest.raises(ValueError):
        split_to([[0, 1]], [1, 1], 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_packed_forward_gives_the_padded_log_probs_and_values(assets, family):
    from coati_ray.models import Actor, Critic

    path = os.path.join(assets, "models", f"tiny-{family}")
    actor = Actor.from_pretrained(path).eval()
    seqs, mask, action_mask = padded_batch(actor.config.vocab_size)
    A = action_mask.size(1)
    with torch.no_grad():
        padded = actor.log_probs(seqs, mask, A)
        actor.pack_sequences = True
        packed = actor.log_probs(seqs, mask, A)
    real = action_mask.bool()
    assert torch.allclose(packed[real], padded[real], atol=1e-5), (packed - padded)[real].abs().max()

    critic = Critic.from_pretrained(path, head_seed=0).eval()
    with torch.no_grad():
        values = critic(seqs, mask, A)
        critic.pack_sequences = True
        packed_values = critic(seqs, mask, A)
    assert torch.allclose(packed_values[real], values[real], atol=1e-5)


def one_update(family_path, exp, role: str, *overrides):
    from coati_ray.config import load_config
    from coati_ray.config.rl import RLConfig
    from coati_ray.strategies import make_strategy
    from coati_ray.trainers.ppo import make_group_trainer
    from tests.conftest import REPO

    cfg = load_config(RLConfig, os.path.join(REPO, "configs", "ppo_tiny.yaml"), [
        f"actor.path={family_path}", f"critic.path={family_path}", "algorithm.rollout_batch_size=6",
        "algorithm.train_batch_size=6", "algorithm.whiten_advantages=false", "algorithm.kl_coef=0", "maker.batch_size=6",
        f"{role}_trainer.strategy.name=naive", f"{role}_trainer.resources.num_ranks=1",
        f"{role}_trainer.optim.eps=1.0", f"{role}_trainer.optim.lr=1e-2", *overrides])
    strategy = make_strategy(getattr(cfg, f"{role}_trainer").strategy)
    strategy.setup_distributed()
    torch.manual_seed(0)
    trainer = make_group_trainer(role, cfg, strategy)
    before = {k: v.detach().clone() for k, v in strategy.unwrap(trainer.model).state_dict().items()}
    metrics = trainer.train(exp, step=0)
    after = {k: v.detach().clone() for k, v in strategy.unwrap(trainer.model).state_dict().items()}
    metrics["moved"] = max((after[k] - before[k]).abs().max().item() for k in after)
    return after, metrics


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_micro_batches_move_the_weights_as_padded_ones(assets, family):
    from coati_ray.experience import Experience
    from coati_ray.models import Actor

    path = os.path.join(assets, "models", f"tiny-{family}")
    model = Actor.from_pretrained(path)
    seqs, mask, action_mask = padded_batch(model.config.vocab_size)
    A = action_mask.size(1)
    with torch.no_grad():
        logp = model.log_probs(seqs, mask, A)
    g = torch.Generator().manual_seed(1)
    adv = torch.randn(6, A, generator=g)
    exp = Experience(sequences=seqs, attention_mask=mask, action_mask=action_mask, action_log_probs=logp,
                     values=torch.randn(6, A, generator=g) * 0.1, returns=torch.randn(6, A, generator=g),
                     advantages=adv, kl=torch.zeros(6, A), reward=torch.zeros(6))
    for role in ("actor", "critic"):
        padded, plain = one_update(path, exp, role, "algorithm.micro_batch_size=2")
        packed, metrics = one_update(path, exp, role, "algorithm.micro_batch_tokens=20")
        assert metrics[f"{role}/micro_batches"] >= 2  # the budget cut the 6 samples into several packs
        worst = max((packed[k] - padded[k]).abs().max().item() for k in padded)
        assert plain["moved"] > 1e-4 and worst < 1e-5, (role, plain["moved"], worst)


def test_packing_a_family_that_cannot_is_one_line_before_anything_loads(assets, tmp_path):
    from coati_ray.errors import ConfigError
    from tests.test_algorithms import grpo_cfg

    gpt2 = os.path.join(assets, "models", "tiny-gpt2")
    with pytest.raises(ConfigError, match="algorithm.micro_batch_tokens: packs sequences for llama.*actor.path is a gpt2"):
        grpo_cfg(gpt2, tmp_path, "algorithm.micro_batch_tokens=64")
    grpo_cfg(os.path.join(assets, "models", "tiny-qwen2"), tmp_path, "algorithm.micro_batch_tokens=64")  # accepted
