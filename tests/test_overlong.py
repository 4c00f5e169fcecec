"""DAPO's overlong handling: responses cut at the length limit left out of the loss (algorithm.overlong_filter), and
the soft penalty over the last tokens before the limit (algorithm.overlong_penalty, algorithm.overlong_buffer)."""

import pytest
import torch

from coati_ray.algo.loss_agg import MiniBatch, local_counts, share
from coati_ray.algo.reward_shaping import overlong_penalty, produced_limit, truncated_rows
from tests.test_algorithms import grpo_cfg, grpo_models  # noqa: F401  (a module fixture)

EOS = 2


def test_the_penalty_falls_linearly_over_the_buffer_to_minus_the_factor_at_the_limit():
    lengths = torch.tensor([1, 6, 7, 8, 10])
    assert overlong_penalty(lengths, max_new_tokens=10, buffer=4, factor=1.0).tolist() == [0, 0, -0.25, -0.5, -1.0]
    assert overlong_penalty(lengths, 10, 4, 0.5)[-1] == -0.5


def test_a_row_is_cut_when_it_ends_without_an_end_token_at_whatever_length_the_backend_stopped():
    actions = torch.tensor([[5, 6, 7, 8], [5, 6, 7, EOS], [5, EOS, 0, 0], [5, 6, 7, 9], [5, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    # the last row: a backend that stopped at 2 tokens (its own cap) cut it, though generation allowed 4
    assert truncated_rows(mask, actions, [EOS]).tolist() == [True, False, False, True, True]
    assert truncated_rows(mask, actions, [EOS, 9]).tolist() == [True, False, False, False, True]
    assert truncated_rows(mask, actions, [], limit=4).tolist() == [True, True, False, True, False]
    lengths = mask.sum(1)
    cut = truncated_rows(mask, actions, [EOS])
    assert produced_limit(lengths, cut, 4) == 4
    assert produced_limit(lengths[2:3], cut[2:3], 4) == 4  # nothing cut: the limit the backend said
    assert produced_limit(lengths[4:], cut[4:], 4) == 2  # only the short cut row: the backend stopped at 2


def test_a_sample_left_out_of_the_loss_counts_in_no_denominator():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1]])
    assert local_counts(mask) == (5.0, 2.0)
    per_token = torch.ones(3, 3)
    mb = MiniBatch(*local_counts(mask), max_tokens=3)
    assert share(per_token, mask, "seq_mean_token_mean", mb).item() == pytest.approx(1.0)
    assert share(per_token, mask, "token_mean", mb).item() == pytest.approx(1.0)


def make(cfg, models, tokenizer, items):
    from coati_ray.experience import make_experience
    from coati_ray.experience.reward_sources import RewardSources

    torch.manual_seed(0)
    return make_experience(models, tokenizer, items, cfg.generation, cfg.algorithm, RewardSources(cfg.rewards))


def test_cut_answers_are_masked_out_of_the_loss_and_penalised_in_the_reward(grpo_models, tokenizer,  # noqa: F811
                                                                           tiny_llama, tmp_path):
    from coati_ray.experience.prompts import read_prompt_data

    base = grpo_cfg(tiny_llama, tmp_path, "generation.max_new_tokens=3")
    items = read_prompt_data(base.data, tokenizer)[0][:2]
    plain, stats = make(base, grpo_models, tokenizer, items)
    eos = grpo_models.actor.eos_token_ids(tokenizer)
    actions = plain.sequences[:, -plain.action_mask.size(1):]
    cut = truncated_rows(plain.action_mask, actions, eos)
    assert cut.any(), "a random tiny model answers 3 tokens without an end token"
    assert stats["experience/truncated"] == pytest.approx(float(cut.float().mean()))
    # what compaction and packing could remove, measured on this batch's own masks
    lengths = plain.action_mask.sum(dim=1).float()
    assert stats["experience/finished_row_fraction"] == pytest.approx(1 - float(lengths.sum()) / (len(lengths) *
                                                                                                  float(lengths.max())))
    assert stats["experience/padding_fraction"] == pytest.approx(1 - float(plain.attention_mask.float().mean()))

    filtered, fstats = make(grpo_cfg(tiny_llama, tmp_path, "generation.max_new_tokens=3", "algorithm.overlong_filter=true"),
                            grpo_models, tokenizer, items)
    assert torch.equal(filtered.sequences, plain.sequences)  # the same answers, only the loss mask differs
    assert torch.equal(filtered.action_mask[cut], torch.zeros_like(filtered.action_mask[cut]))
    assert torch.equal(filtered.action_mask[~cut], plain.action_mask[~cut])
    assert fstats["response_length"] == stats["response_length"]  # what was generated, not what is trained on

    penalised, pstats = make(grpo_cfg(tiny_llama, tmp_path, "generation.max_new_tokens=3", "algorithm.overlong_penalty=0.5",
                                      "algorithm.overlong_buffer=1"), grpo_models, tokenizer, items)
    lengths = plain.action_mask.sum(1)
    expected = torch.where(lengths >= 3, -0.5, 0.0)
    assert torch.allclose(penalised.reward - plain.reward, expected, atol=1e-6)
    assert pstats["reward/overlong_penalty"] == pytest.approx(float(expected.mean()))


def test_an_overlong_buffer_longer_than_the_answers_is_one_line_before_anything_loads(tiny_llama, tmp_path):
    from coati_ray.errors import ConfigError

    with pytest.raises(ConfigError, match=r"algorithm.overlong_buffer.*max_new_tokens=3"):
        grpo_cfg(tiny_llama, tmp_path, "generation.max_new_tokens=3", "algorithm.overlong_buffer=8")
