"""8-bit and 4-bit bases (bitsandbytes, on this CPU): QLoRA training in the stages, the merged export back to
full precision, and the refusals. The PPO run with a 4-bit actor is in test_ppo_ray.py."""

import os

import pytest
import torch

from coati_ray.config import load_config
from tests.conftest import REPO, data_path

pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantized_lora_model_computes_close_to_full_and_exports_full_precision(tiny_llama, tmp_path, kind):
    from transformers import AutoModelForCausalLM

    from coati_ray.config import ModelConfig
    from coati_ray.models import Actor, build_actor, export_model
    from coati_ray.models.quantize import is_quantized, weight_bytes

    full = Actor.from_pretrained(tiny_llama).eval()
    actor = build_actor(ModelConfig(path=tiny_llama, lora_rank=4, quantize=kind)).eval()
    assert sum(is_quantized(m) for m in actor.modules()) == 14  # every linear but the LM head
    assert weight_bytes(actor.model.get_base_model()) < 0.6 * weight_bytes(full.model)
    assert {n for n, p in actor.named_parameters() if p.requires_grad} and all(
        "lora_" in n for n, p in actor.named_parameters() if p.requires_grad)
    ids = torch.randint(4, 200, (2, 12))
    with torch.no_grad():
        drift = (actor(ids) - full(ids)).abs().max().item()
        for name, p in actor.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)  # adapters that have learned something
        adapted = actor(ids)
    assert drift < (0.02 if kind == "int8" else 0.2), drift
    export_model(actor, str(tmp_path / "merged"), merge_lora=True)
    with torch.no_grad():  # exporting left the live (maybe CPU-repacked) quantized layers as they were
        assert torch.equal(actor(ids), adapted)
    merged, info = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", output_loading_info=True)
    assert not any(info.values()) and merged.dtype == torch.float32
    assert not any(is_quantized(m) for m in merged.modules())
    with torch.no_grad():
        assert (merged(ids).logits - adapted).abs().max().item() < (0.02 if kind == "int8" else 5e-3)


def test_sft_loss_falls_on_a_4bit_base(tiny_llama, tmp_path):
    from coati_ray.config import SFTConfig
    from coati_ray.models.loading import load_tokenizer
    from coati_ray.strategies import make_strategy
    from coati_ray.trainers.sft import SFTTrainer

    cfg = load_config(SFTConfig, os.path.join(REPO, "configs", "sft_tiny.yaml"), [
        f"model.path={tiny_llama}", f"data.train_path={data_path('sft', 'train.jsonl')}", "data.eval_path=null",
        "model.lora_rank=8", "model.quantize=int4", "trainer.batch_size=8", "trainer.micro_batch_size=4",
        "optim.lr=1e-2", "optim.warmup_steps=0", "optim.scheduler=constant"], output_dir=str(tmp_path))
    cfg.validate()
    strategy = make_strategy(cfg.strategy)
    strategy.setup_distributed()
    tok = load_tokenizer(tiny_llama)
    items, _ = SFTTrainer.build_dataset(cfg.data.train_path, tok, cfg.data, 64)
    trainer = SFTTrainer(cfg, strategy, SFTTrainer.build_model(cfg.model, None), tok, items, None,
                         SFTTrainer.collator(tok), cfg.output_dir)
    batches = trainer.batch_indices(0)
    base = {k: v.clone() for k, v in trainer.model.state_dict().items() if "lora_" not in k}
    losses = [trainer.train_step(trainer.rank_micro_batches(batches[i % 2]))["loss"] for i in range(8)]
    assert losses[-1] < losses[0] - 0.5, losses
    after = trainer.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())  # the 4-bit base never moved


@pytest.mark.parametrize("overrides,needle", [
    (["model.quantize=int4"], "only LoRA adapters can train on it"),
    (["model.quantize=int8", "model.lora_rank=4", "strategy.name=colossalai_zero2", "strategy.precision=bf16"],
     "trains with naive or ddp only"),
])
def test_quantized_bases_refused_where_they_cannot_train(tiny_llama, tmp_path, overrides, needle):
    from coati_ray.config import SFTConfig
    from coati_ray.errors import ConfigError

    cfg = load_config(SFTConfig, os.path.join(REPO, "configs", "sft_tiny.yaml"), [
        f"model.path={tiny_llama}", f"data.train_path={data_path('sft', 'train.jsonl')}", *overrides],
        output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=needle):
        cfg.validate()


def test_a_frozen_reward_model_may_be_quantized_without_lora(tiny_llama, reward_dir, tmp_path):
    from coati_ray.config.rl import RLConfig

    cfg = load_config(RLConfig, os.path.join(REPO, "configs", "ppo_tiny.yaml"), [
        f"actor.path={tiny_llama}", f"critic.path={tiny_llama}", f"reward_model.path={reward_dir}",
        f"data.prompt_path={data_path('prompts', 'train.jsonl')}", "reward_model.quantize=int8"], output_dir=str(tmp_path))
    cfg.validate()
