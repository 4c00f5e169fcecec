"""Experience making and weight sync without Ray: shapes, masks, strict loading, sharding."""

import pytest
import torch

from coati_ray.config import from_dict
from coati_ray.config.rl import GenerationConfig, AlgorithmConfig
from coati_ray.data.datasets import collate_prompts
from coati_ray.errors import ModelError
from coati_ray.experience import Experience, ExperienceModels, concat, make_experience
from coati_ray.experience.prompts import PromptStream
from coati_ray.models import Actor, Critic, RewardModel
from coati_ray.models.weights import check_compatible, export_weights, load_weights


@pytest.fixture(scope="module")
def models(tiny_llama):
    return ExperienceModels(actor=Actor.from_pretrained(tiny_llama), initial=Actor.from_pretrained(tiny_llama),
                            reward=RewardModel.from_pretrained(tiny_llama), critic=Critic.from_pretrained(tiny_llama))


def prompt_items(tokenizer, n=4):
    from coati_ray.inference import render_prompt

    texts = [f"sort: {i} {i + 3} 1" for i in range(n)] + ["sort: 9 8 7 6 5 4 3"]
    return [{"input_ids": render_prompt(tokenizer, t), "prompt": t} for t in texts[:n]]


def prompts(tokenizer, n=4):
    return collate_prompts(prompt_items(tokenizer, n), tokenizer.pad_token_id)


def test_make_experience_shapes_and_invariants(models, tokenizer):
    torch.manual_seed(0)
    batch = prompts(tokenizer)
    gen = from_dict(GenerationConfig, {"max_new_tokens": 6})
    ppo = from_dict(AlgorithmConfig, {"kl_coef": 0.1})
    exp, timings = make_experience(models, tokenizer, prompt_items(tokenizer), gen, ppo, version=3)
    B, A = 4, exp.num_actions
    assert exp.sequences.shape == (B, batch["input_ids"].size(1) + A) and exp.version == 3
    for name in ("action_log_probs", "values", "returns", "advantages", "kl"):
        t = getattr(exp, name)
        assert t.shape == (B, A) and torch.all(t[exp.action_mask == 0] == 0), name
    # the initial model equals the actor here, so the KL penalty is exactly zero
    assert torch.allclose(exp.kl, torch.zeros_like(exp.kl), atol=1e-6)
    assert set(timings) >= {"timing/generate", "timing/ref", "timing/reward", "timing/values"}


def scored_by_hand(score: float = 1.0):
    """One sample: pi / pi_ref = 2 and 1/2 on its two response tokens (Coati's mean KL 1/4), padding after."""
    from coati_ray.algo import coati_token_kl
    from coati_ray.experience.make import ScoredRollout

    logp, ref, mask = torch.tensor([[0.5, 0.25, 0.9]]).log(), torch.tensor([[0.25, 0.5, 0.1]]).log(), \
        torch.tensor([[1, 1, 0]])
    return ScoredRollout(sequences=torch.zeros(1, 5, dtype=torch.long), mask=torch.ones(1, 5), action_mask=mask,
                         ref_log_probs=ref, score=torch.tensor([score]), truncated=torch.tensor([False]),
                         group_size=1, stats={}, log_probs=logp, kl=coati_token_kl(logp, ref) * mask)


@pytest.mark.parametrize("kl_coef, penalty", [(0.2, 0.2 * 0.25), (0.0, 0.0)])
def test_coatis_sequence_kl_comes_off_the_reward_once_at_the_last_token(kl_coef, penalty):
    """algorithm.kl_penalty=sequence: with V = 0, gamma = lam = 1 the return of every token is the sequence's reward
    minus kl_coef x the mean KL, once; kl_coef 0 takes nothing (and needs no behaviour log-probs)."""
    from coati_ray.experience.make import finish_experience, kl_rewards

    ppo = from_dict(AlgorithmConfig, {"kl_coef": kl_coef, "kl_penalty": "sequence", "gamma": 1.0, "lam": 1.0})
    assert torch.allclose(kl_rewards(scored_by_hand(), ppo), torch.tensor([[0.0, -penalty, 0.0]]))
    exp, _ = finish_experience(scored_by_hand(score=1.0), torch.zeros(1, 3), ppo)
    assert torch.allclose(exp.returns, torch.tensor([[1.0 - penalty, 1.0 - penalty, 0.0]]))
    assert exp.reward.tolist() == [1.0]  # the reward metric stays the reward; the KL metric is the KL


def test_the_per_token_penalty_is_still_there_for_kl_penalty_reward():
    from coati_ray.experience.make import kl_rewards

    scored = scored_by_hand()
    scored.kl = torch.tensor([[0.1, 0.2, 0.0]])
    ppo = from_dict(AlgorithmConfig, {"kl_coef": 0.5, "kl_penalty": "reward"})
    assert torch.allclose(kl_rewards(scored, ppo), torch.tensor([[-0.05, -0.1, 0.0]]))
    assert torch.equal(kl_rewards(scored, from_dict(AlgorithmConfig, {"kl_coef": 0.5, "kl_penalty": "loss"})),
                       torch.zeros(1, 3))


def test_a_maker_reports_coatis_kl_when_the_penalty_is_sequence_level(models, tokenizer, tiny_llama):
    """make_experience with a reference that differs from the actor: the `kl` metric is the batch mean of
    Coati's sequence KL, and Experience.kl holds its per-token terms."""
    from coati_ray.algo import coati_token_kl, masked_mean

    initial = Actor.from_pretrained(tiny_llama).eval().requires_grad_(False)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in initial.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    moved = ExperienceModels(actor=models.actor, initial=initial, reward=models.reward, critic=models.critic)
    gen = from_dict(GenerationConfig, {"max_new_tokens": 6})
    ppo = from_dict(AlgorithmConfig, {"kl_coef": 0.1, "kl_penalty": "sequence"})
    exp, stats = make_experience(moved, tokenizer, prompt_items(tokenizer), gen, ppo)
    expected = coati_token_kl(exp.action_log_probs, exp.ref_log_probs) * exp.action_mask
    assert torch.allclose(exp.kl, expected, atol=1e-6)
    assert stats["kl"] == pytest.approx(float(masked_mean(expected, exp.action_mask, dim=1).mean()), rel=1e-5)
    assert stats["kl"] > 0


def test_shard_and_concat():
    def fake(B, P, A, version):
        return Experience(sequences=torch.arange(B * (P + A)).view(B, P + A), attention_mask=torch.ones(B, P + A),
                          action_mask=torch.ones(B, A), action_log_probs=torch.zeros(B, A), values=torch.zeros(B, A),
                          returns=torch.zeros(B, A), advantages=torch.zeros(B, A), kl=torch.zeros(B, A),
                          reward=torch.arange(B).float(), version=version)

    e = fake(4, 3, 2, 1)
    assert e.shard(1, 2).reward.tolist() == [2.0, 3.0]
    with pytest.raises(ValueError):
        e.shard(0, 3)
    both = concat([fake(2, 3, 2, 1), fake(2, 5, 4, 2)])
    assert both.sequences.shape == (4, 9) and both.action_mask.shape == (4, 4)
    assert both.action_mask[:2, 2:].sum() == 0 and both.attention_mask[:2, :2].sum() == 0
    assert both.version == 1


def test_strict_weight_loading_refuses_mismatch(tiny_llama, assets):
    import os

    a, b = Actor.from_pretrained(tiny_llama), Actor.from_pretrained(tiny_llama)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.5)
    state = export_weights(a, lora_only=False)
    load_weights(b, state, lora_only=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    missing = dict(state)
    missing.pop(next(iter(missing)))
    with pytest.raises(ModelError, match="1 missing"):
        check_compatible(b, missing, lora_only=False)
    with pytest.raises(ModelError, match="unexpected"):
        check_compatible(b, {**state, "model.extra.weight": torch.zeros(1)}, lora_only=False)
    other = Actor.from_pretrained(os.path.join(assets, "models", "tiny-gpt2"))
    before = {k: v.clone() for k, v in b.state_dict().items()}
    with pytest.raises(ModelError, match="refused"):
        load_weights(b, export_weights(other, lora_only=False), lora_only=False)
    assert all(torch.equal(before[k], v) for k, v in b.state_dict().items())  # nothing half-loaded
    key = next(k for k, v in state.items() if v.dim() == 2)
    with pytest.raises(ModelError, match="wrong shape"):
        check_compatible(b, {**state, key: state[key][:, :-1]}, lora_only=False)


def test_prompt_stream_is_resumable_and_covers_each_epoch():
    items = [{"i": i} for i in range(10)]
    s = PromptStream(items, 4, seed=1)
    batches = [s.next_batch() for _ in range(5)]
    flat = [it["i"] for b, _ in batches for it in b]
    assert sorted(flat[:10]) == list(range(10)) and [bid for _, bid in batches] == [0, 1, 2, 3, 4]
    again = PromptStream(items, 4, seed=1, position=3)
    assert again.next_batch() == batches[3]


def test_policy_trainer_with_ptx_and_value_trainer_update(models, tokenizer, tiny_llama):
    from coati_ray.config.rl import RLConfig
    from coati_ray.config import load_config
    from coati_ray.strategies import make_strategy
    from coati_ray.trainers.ppo import PolicyTrainer, ValueTrainer
    from coati_ray.trainers.sft import SFTTrainer
    from tests.conftest import REPO, data_path
    import os

    cfg = load_config(RLConfig, os.path.join(REPO, "configs", "ppo_tiny.yaml"),
                      ["algorithm.ptx_coef=0.5", "algorithm.micro_batch_size=2", "algorithm.train_batch_size=4",
                       "actor_trainer.strategy.name=naive", "actor_trainer.resources.num_ranks=1",
                       "algorithm.rollout_batch_size=4", "algorithm.ppo_epochs=2"])
    torch.manual_seed(0)
    exp, _ = make_experience(models, tokenizer, prompt_items(tokenizer), cfg.generation, cfg.algorithm)
    exp.advantages = torch.randn_like(exp.advantages) * exp.action_mask
    ptx, _ = SFTTrainer.build_dataset(data_path("ptx", "train.jsonl"), tokenizer,
                                      type("D", (), {"max_length": 64, "format": "auto", "on_bad_row": "error"}), 16)
    strategy = make_strategy(cfg.actor_trainer.strategy)
    strategy.setup_distributed()
    policy = PolicyTrainer(Actor.from_pretrained(tiny_llama), strategy, cfg.actor_trainer, cfg.algorithm, 1, ptx,
                           SFTTrainer.collator(tokenizer))
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    m = policy.train(exp, step=0)
    assert policy.updates == 2 and m["actor/ptx_loss"] > 0 and "actor/clip_frac" in m
    assert m["actor/loss"] == pytest.approx(0.5 * m["actor/ptx_loss"] + 0.5 * m["actor/policy_loss"], rel=1e-4)
    assert any(not torch.equal(before[k], v) for k, v in policy.model.state_dict().items())
    value = ValueTrainer(Critic.from_pretrained(tiny_llama), strategy, cfg.critic_trainer, cfg.algorithm, 1)
    m = value.train(exp, step=0)
    assert m["critic/loss"] > 0 and m["timing/update_critic"] > 0
