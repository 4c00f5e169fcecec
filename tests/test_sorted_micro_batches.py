"""Length-sorted, trimmed micro-batches (algorithm.sort_micro_batches, on by default): a rank's mini-batch is cut
into micro-batches of alike lengths, each without the columns that are padding in all its rows. Fewer positions
are computed; the losses, gradients and weights after an update equal the unsorted, untrimmed path's to float
noise, on one rank and on two (each loss is a share of the whole mini-batch, so the grouping cannot change it)."""

from __future__ import annotations

import os

import pytest
import torch

from coati_ray.experience import Experience

PROMPTS = [5, 2, 3, 5, 4, 2, 1, 3]   # real prompt tokens of each row, left-padded to 5
ANSWERS = [7, 1, 4, 2, 7, 5, 3, 6]   # real answer tokens, right-padded to 7


def padded_experience(model, P: int = 5, A: int = 7) -> Experience:
    """8 rows as a maker pads them, with the model's own log-probs (the first ratio is 1), advantages, values and
    returns that differ per token."""
    B = len(PROMPTS)
    g = torch.Generator().manual_seed(0)
    cols = torch.arange(P + A)[None, :]
    prompt, answer = torch.tensor(PROMPTS)[:, None], torch.tensor(ANSWERS)[:, None]
    mask = ((cols >= P - prompt) & (cols < P + answer)).long()
    seqs = torch.randint(4, model.config.vocab_size, (B, P + A), generator=g).masked_fill(mask == 0, 0)
    action_mask = (torch.arange(A)[None, :] < answer).long()
    with torch.no_grad():
        logp = model.log_probs(seqs, mask, A) * action_mask
    return Experience(sequences=seqs, attention_mask=mask, action_mask=action_mask, action_log_probs=logp,
                      values=torch.randn(B, A, generator=g) * 0.1 * action_mask,
                      returns=torch.randn(B, A, generator=g) * action_mask,
                      advantages=torch.randn(B, A, generator=g) * action_mask, kl=torch.zeros(B, A),
                      reward=torch.zeros(B))


def test_trimming_drops_only_columns_of_padding_and_keeps_the_first_actions(tiny_llama):
    from coati_ray.models import Actor

    exp = padded_experience(Actor.from_pretrained(tiny_llama))
    part = exp.select(torch.tensor([1, 3, 6]))  # prompts of 2, 5, 1 tokens; answers of 1, 2, 3
    cut = part.trimmed()
    assert cut.sequences.shape == (3, 5 + 3) and cut.num_actions == 3  # no prompt column is empty; 4 answer ones are
    assert torch.equal(cut.sequences, part.sequences[:, :8]) and torch.equal(cut.advantages, part.advantages[:, :3])
    assert int(part.attention_mask[:, 8:].sum()) == 0 and int(part.action_mask[:, 3:].sum()) == 0
    short = exp.select(torch.tensor([2, 6, 7]))  # prompts of 3, 1, 3: the first 2 columns are padding in all rows
    cut = short.trimmed()
    assert cut.sequences.shape == (3, 3 + 6) and torch.equal(cut.sequences, short.sequences[:, 2:11])
    assert torch.equal(cut.attention_mask, short.attention_mask[:, 2:11])
    assert exp.trimmed() is exp  # the whole batch has no empty column


def one_update(path: str, exp: Experience, role: str, *overrides):
    """One update of `role` on one rank: the weights after it, its metrics and the widths the model was given."""
    from coati_ray.config import load_config
    from coati_ray.config.rl import RLConfig
    from coati_ray.strategies import make_strategy
    from coati_ray.trainers.ppo import make_group_trainer
    from tests.conftest import REPO

    cfg = load_config(RLConfig, os.path.join(REPO, "configs", "ppo_tiny.yaml"), [
        f"actor.path={path}", f"critic.path={path}", "algorithm.rollout_batch_size=8",
        "algorithm.train_batch_size=8", "algorithm.micro_batch_size=2", "algorithm.whiten_advantages=false",
        "algorithm.kl_coef=0", "maker.batch_size=8", f"{role}_trainer.strategy.name=naive",
        f"{role}_trainer.resources.num_ranks=1", f"{role}_trainer.optim.eps=1.0", f"{role}_trainer.optim.lr=1e-2",
        *overrides])
    strategy = make_strategy(getattr(cfg, f"{role}_trainer").strategy)
    strategy.setup_distributed()
    torch.manual_seed(0)
    trainer = make_group_trainer(role, cfg, strategy)
    widths = []
    strategy.unwrap(trainer.model).register_forward_pre_hook(lambda m, args: widths.append(args[0].size(1)))
    before = {k: v.detach().clone() for k, v in strategy.unwrap(trainer.model).state_dict().items()}
    metrics = trainer.train(exp, step=0)
    after = {k: v.detach().clone() for k, v in strategy.unwrap(trainer.model).state_dict().items()}
    metrics["moved"] = max((after[k] - before[k]).abs().max().item() for k in after)
    return after, metrics, widths


@pytest.mark.parametrize("role,extra", [("actor", []), ("actor", ["algorithm.behaviour_correction=tis"]),
                                        ("critic", [])], ids=["actor", "actor-tis", "critic"])
def test_sorted_trimmed_micro_batches_update_as_the_shuffled_padded_ones(tiny_llama, role, extra):
    from coati_ray.models import Actor

    model = Actor.from_pretrained(tiny_llama)
    exp = padded_experience(model)
    plain, plain_metrics, plain_widths = one_update(tiny_llama, exp, role, "algorithm.sort_micro_batches=false",
                                                    *extra)
    cut, cut_metrics, cut_widths = one_update(tiny_llama, exp, role, *extra)
    assert set(plain_widths) == {12}  # every forward at the batch's width
    assert sum(cut_widths) < sum(plain_widths) and min(cut_widths) < 12  # the sorted ones were trimmed
    worst = max((cut[k] - plain[k]).abs().max().item() for k in plain)
    assert plain_metrics["moved"] > 1e-4 and worst < 1e-6, (plain_metrics["moved"], worst)
    assert cut_metrics[f"{role}/loss"] == pytest.approx(plain_metrics[f"{role}/loss"], abs=1e-6)
    if extra:  # the trainer's own old log-probs, recomputed per trimmed micro-batch, put back at full width
        assert cut_metrics["behaviour/log_ratio_abs_mean"] < 1e-5
        assert cut_metrics["behaviour/ratio_max"] == pytest.approx(1.0, abs=1e-5)


def test_two_ranks_sorted_and_trimmed_update_as_one_rank_unsorted(tiny_llama, reward_dir, tmp_path):
    from coati_ray.models import Actor
    from tests.test_ppo_correctness import one_rank_and_two, ppo_cfg

    common = ["algorithm.rollout_batch_size=8", "algorithm.train_batch_size=8", "algorithm.micro_batch_size=2",
              "actor_trainer.optim.eps=1.0", "actor_trainer.optim.lr=1e-2", "maker.batch_size=8"]
    single = ppo_cfg(tiny_llama, reward_dir, tmp_path / "single", *common, "actor_trainer.strategy.name=naive",
                     "actor_trainer.resources.num_ranks=1", "algorithm.sort_micro_batches=false")
    double = ppo_cfg(tiny_llama, reward_dir, tmp_path / "ddp", *common, "actor_trainer.strategy.name=ddp",
                     "actor_trainer.resources.num_ranks=2")
    assert double.algorithm.sort_micro_batches  # the default
    model = Actor.from_pretrained(tiny_llama)
    moved, worst = one_rank_and_two(single, double, padded_experience(model), model.state_dict(), tmp_path)
    assert moved > 1e-4 and worst < 1e-6, (moved, worst)
