"""DAPO's dynamic sampling (algorithm.filter_groups): groups with one reward for all their samples are dropped and
spare prompts sampled until the maker batch is full; the batch keeps its size, spares follow from the ticket."""

import pytest
import torch

from coati_ray.experience import Experience
from coati_ray.experience.dynamic_sampling import flat_groups, make_filtered_experience, spare_prompts
from coati_ray.experience.prompts import PromptStream

N = 2  # samples per prompt


def fake_experience(rewards: list, width: int) -> Experience:
    B = len(rewards)
    seqs = torch.arange(B * width).view(B, width)
    ones = torch.ones(B, 3)
    return Experience(sequences=seqs, attention_mask=torch.ones_like(seqs), action_mask=ones.long(),
                      advantages=ones, reward=torch.tensor(rewards, dtype=torch.float))


def test_a_group_is_flat_when_all_its_rewards_are_equal():
    assert flat_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5]), 2).tolist() == [True, False, True]


def test_spares_follow_from_the_ticket_alone_and_never_move_the_stream():
    items = [{"id": i} for i in range(20)]
    plain = PromptStream(items, batch_size=4, seed=1)
    spared = PromptStream(items, batch_size=4, seed=1, spare_rounds=2)
    assert spared.batch(3)[:4] == plain.batch(3)  # the batch's own prompts first, as without spares
    assert len(spared.batch(3)) == 12 and spared.batch(3) == PromptStream(items, 4, 1, spare_rounds=2).batch(3)
    assert spare_prompts(items, 4, 3, 2, 1) != spare_prompts(items, 4, 4, 2, 1)
    assert spared.next_batch()[1] == 0 and spared.next_batch()[1] == 1


def test_flat_groups_are_replaced_by_groups_from_spare_rounds():
    rounds = {  # prompt id of the round's first item -> its rewards (N per prompt)
        0: [1, 1, 0, 1, 0, 0, 1, 0],      # groups: flat, signal, flat, signal
        4: [1, 1, 1, 1, 0.2, 0.4, 0, 0],  # flat, flat, signal, flat
        8: [0, 0, 0, 0, 1, 1, 1, 1],      # all flat
    }
    calls = []

    def make(chunk):
        calls.append([c["id"] for c in chunk])
        return fake_experience(rounds[chunk[0]["id"]], width=5 + len(calls)), {"timing/generate": 1.0,
                                                                               "generated_tokens": 8.0, "kl": 0.1}

    items = [{"id": i} for i in range(12)]  # 4 prompts per batch, 2 spare rounds
    exp, stats = make_filtered_experience(make, items, prompts_per_batch=4, group_size=N, max_rounds=3)
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]  # 3 groups with signal after every round
    assert exp.num_samples == 8  # the batch keeps its size
    assert exp.reward.tolist()[:6] == pytest.approx([0, 1, 1, 0, 0.2, 0.4])  # every group with signal first
    assert flat_groups(exp.reward, N).tolist() == [False, False, False, True]  # one flat group fills it
    assert stats["experience/flat_groups_kept"] == 1 and stats["experience/sampling_rounds"] == 3
    assert stats["experience/dropped_groups"] == pytest.approx(9 / 12)
    assert stats["timing/generate"] == 3.0 and stats["generated_tokens"] == 24.0 and stats["kl"] == 0.1
    assert exp.group_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # groups from 3 rounds, numbered as the batch's


def test_a_batch_that_fills_in_its_first_round_samples_no_spares():
    calls = []

    def make(chunk):
        calls.append(chunk)
        return fake_experience([0, 1] * 4, width=4), {}

    exp, stats = make_filtered_experience(make, [{"id": i} for i in range(12)], 4, N, 3)
    assert len(calls) == 1 and stats["experience/dropped_groups"] == 0 and exp.num_samples == 8


def test_filter_groups_needs_a_group_relative_estimator(tiny_llama, tmp_path):
    from coati_ray.errors import ConfigError
    from tests.test_algorithms import grpo_cfg

    cfg = grpo_cfg(tiny_llama, tmp_path, "algorithm.filter_groups=true")
    assert cfg.algorithm.filter_groups
    with pytest.raises(ConfigError, match="algorithm.filter_groups: needs a group-relative estimator"):
        grpo_cfg(tiny_llama, tmp_path, "algorithm.filter_groups=true", "algorithm.advantage_estimator=reinforce_pp")


def test_groups_are_read_from_the_group_index_whatever_the_row_order():
    from coati_ray.experience.dynamic_sampling import group_rows

    exp = fake_experience([1, 0, 1, 1, 0, 0], width=4)
    assert [r.tolist() for r in group_rows(exp, N)] == [[0, 1], [2, 3], [4, 5]]  # no index: consecutive rows
    exp.group_index = torch.tensor([5, 9, 5, 7, 9, 7])  # the same prompts' samples, interleaved
    assert [r.tolist() for r in group_rows(exp, N)] == [[0, 2], [1, 4], [3, 5]]
    calls = []

    def make(chunk):
        calls.append(chunk)
        return exp, {}

    out, stats = make_filtered_experience(make, [{"id": i} for i in range(3)], 3, N, 1)
    # by index: group 5 = rows 0, 2 = (1, 1) flat; 9 = rows 1, 4 = (0, 0) flat; 7 = rows 3, 5 = (1, 0) kept,
    # first; the flat ones fill the batch
    assert out.reward.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0] and stats["experience/dropped_groups"] == 2 / 3
