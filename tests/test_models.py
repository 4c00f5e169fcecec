"""Actor / Critic / RewardModel over tiny models of five real families, LoRA, and the tiny kit."""

import os

import pytest
import torch

from coati_ray.config import ModelConfig
from coati_ray.data.datasets import collate_prompts
from coati_ray.errors import ModelError
from coati_ray.models import Actor, Critic, RewardModel, build_actor, build_reward_model, export_model
from coati_ray.models.actor import response_mask
from coati_ray.models.lora import adapter_state_dict, trainable_parameters
from coati_ray.models.tiny import FAMILIES
from coati_ray.models.value import ValueModel

PROMPTS = ["sort: 3 1 2", "sort: 10 9 8 7 6 5"]


def family_dir(assets, family):
    return os.path.join(assets, "models", f"tiny-{family}")


def prompt_batch(tokenizer):
    from coati_ray.inference import render_prompt

    items = [{"input_ids": render_prompt(tokenizer, p)} for p in PROMPTS]
    return collate_prompts(items, tokenizer.pad_token_id)


@pytest.mark.parametrize("family", FAMILIES)
def test_actor_forward_logprobs_generate(assets, tokenizer, family):
    torch.manual_seed(0)
    actor = Actor.from_pretrained(family_dir(assets, family)).eval()
    batch = prompt_batch(tokenizer)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = actor(ids, mask)
    assert logits.shape == (*ids.shape, actor.config.vocab_size)

    seqs, full_mask, action_mask = actor.generate(ids, mask, tokenizer, max_new_tokens=6, do_sample=True,
                                                  temperature=1.0, top_k=50, top_p=0.95)
    A = seqs.size(1) - ids.size(1)
    assert 1 <= A <= 6 and action_mask.shape == (2, A) and full_mask.shape == seqs.shape
    assert torch.equal(seqs[:, : ids.size(1)], ids)  # prompts are left-padded and kept as they were
    lp = actor.log_probs(seqs, full_mask, A)
    assert lp.shape == (2, A) and torch.all(lp <= 0)
    # log-probs agree with a manual gather over the full softmax
    manual = torch.log_softmax(actor(seqs, full_mask).float(), -1)[:, -A - 1:-1].gather(
        -1, seqs[:, -A:].unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(lp, manual, atol=1e-5)


def test_left_padding_does_not_change_logprobs(assets, tokenizer):
    actor = Actor.from_pretrained(family_dir(assets, "llama")).eval()
    one = prompt_batch(tokenizer)
    short_ids = one["input_ids"][0:1, one["attention_mask"][0].argmax():]
    alone = actor.log_probs(short_ids, torch.ones_like(short_ids), 3)
    padded = actor.log_probs(one["input_ids"][0:1], one["attention_mask"][0:1], 3)
    assert torch.allclose(alone, padded, atol=1e-5)


def test_response_mask_stops_after_first_eos():
    eos = 2
    actions = torch.tensor([[5, 6, eos, 0, 0], [5, 5, 5, 5, 5], [eos, 7, eos, 0, 0]])
    assert response_mask(actions, eos).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


@pytest.mark.parametrize("family", FAMILIES)
def test_reward_and_critic_shapes_and_last_token(assets, tokenizer, family):
    rm = RewardModel.from_pretrained(family_dir(assets, family)).eval()
    ids = torch.tensor([[1, 40, 41, 42, 2]])
    score = rm(ids, torch.ones_like(ids))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    padded_mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    assert score.shape == (1,)
    assert torch.allclose(rm(padded, padded_mask), score, atol=1e-5)  # read at the last non-pad token
    critic = Critic.from_pretrained(family_dir(assets, family)).eval()
    assert critic(ids, torch.ones_like(ids), num_actions=2).shape == (1, 2)


def test_value_head_initialisation_std():
    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"hidden_size": 3999})()
            self.w = torch.nn.Parameter(torch.zeros(1))

    torch.manual_seed(0)
    model = ValueModel(Backbone())
    std = model.value_head.weight.std().item()
    assert std == pytest.approx(1.0 / 4000, rel=0.05)
    assert torch.all(model.value_head.bias == 0)


def test_reward_model_save_load_round_trip_and_head_mismatch(assets, tmp_path):
    rm = RewardModel.from_pretrained(family_dir(assets, "gpt2")).eval()
    with torch.no_grad():
        rm.value_head.weight.fill_(0.01)
    rm.save_pretrained(str(tmp_path / "rm"))
    again = RewardModel.from_pretrained(str(tmp_path / "rm"), require_head=True).eval()
    ids = torch.tensor([[1, 30, 31, 2]])
    assert torch.equal(rm(ids, torch.ones_like(ids)), again(ids, torch.ones_like(ids)))
    from transformers import AutoModel

    AutoModel.from_pretrained(str(tmp_path / "rm"))  # the backbone alone is a plain HF directory
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(1, 7), "bias": torch.zeros(1)}, str(tmp_path / "rm" / "value_head.safetensors"))
    with pytest.raises(ModelError, match="different backbone"):
        RewardModel.from_pretrained(str(tmp_path / "rm"))
    with pytest.raises(ModelError, match="no value_head"):
        RewardModel.from_pretrained(family_dir(assets, "gpt2"), require_head=True)


def test_lora_trains_only_adapters_and_merged_export_matches(assets, tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(path=family_dir(assets, "llama"), lora_rank=4, lora_alpha=8)
    actor = build_actor(cfg)
    trainable, total = trainable_parameters(actor)
    names = [n for n, p in actor.named_parameters() if p.requires_grad]
    assert 0 < trainable < total / 2 and all("lora_" in n for n in names)
    base_before = {n: p.detach().clone() for n, p in actor.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in actor.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.tensor([[1, 40, 41, 42, 43, 2]])
    for _ in range(3):
        loss = -actor.log_probs(ids, torch.ones_like(ids), 4).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(p, base_before[n]) for n, p in actor.named_parameters() if not p.requires_grad)
    assert set(adapter_state_dict(actor.model)) and all("lora_" in k for k in adapter_state_dict(actor.model))

    actor.eval()
    export_model(actor, str(tmp_path / "merged"), merge_lora=True)
    assert not os.path.exists(tmp_path / "merged" / "adapter_config.json")
    merged = Actor.from_pretrained(str(tmp_path / "merged")).eval()
    with torch.no_grad():
        assert torch.allclose(actor(ids, torch.ones_like(ids)), merged(ids, torch.ones_like(ids)), atol=1e-4)

    export_model(actor, str(tmp_path / "adapters"), merge_lora=False)
    assert os.path.isfile(tmp_path / "adapters" / "adapter_config.json")
    resumed = build_actor(cfg, checkpoint=str(tmp_path / "adapters")).eval()
    with torch.no_grad():
        assert torch.allclose(actor(ids, torch.ones_like(ids)), resumed(ids, torch.ones_like(ids)), atol=1e-5)


def test_lora_reward_model_keeps_head_trainable(assets):
    rm = build_reward_model(ModelConfig(path=family_dir(assets, "opt"), lora_rank=2))
    trainable = {n for n, p in rm.named_parameters() if p.requires_grad}
    assert "value_head.weight" in trainable and any("lora_" in n for n in trainable)
    assert not any("lora_" not in n and not n.startswith("value_head") for n in trainable)


def test_tiny_kit_tokenizer_round_trips_repo_text(tokenizer):
    text = "Human: sort: 24 28 13\nAssistant: 13 24 28"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text) / 2  # trained merges, not bytes
    assert tokenizer.decode(tokenizer("naïve 漢字", add_special_tokens=False)["input_ids"]) == "naïve 漢字"


def test_a_critic_without_a_saved_head_starts_with_the_same_head_in_every_process(tiny_llama):
    """A PPO critic from a model with no value head (critic.path = the SFT model): its trainer and each maker
    build it in their own process, at another point of their RNG streams; with the job's seed they hold the
    same fresh head before the first sync (it differed before)."""
    import torch

    from coati_ray.config import ModelConfig
    from coati_ray.models import build_critic

    cfg = ModelConfig(path=tiny_llama)
    torch.manual_seed(1)
    trainer = build_critic(cfg, head_seed=42)
    torch.manual_seed(2)
    torch.rand(100)
    maker = build_critic(cfg, head_seed=42)
    assert torch.equal(trainer.value_head.weight, maker.value_head.weight)
    assert not torch.equal(build_critic(cfg, head_seed=43).value_head.weight, trainer.value_head.weight)
