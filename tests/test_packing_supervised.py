"""Padding-free SFT and RM (`trainer.micro_batch_tokens`): an optimiser step over packed micro-batches, cut
anywhere by the token budget, gives the loss and moves the weights as one padded micro-batch of the whole
shard does, on llama and qwen2; SFT's loss reads the pack's logits directly (pack_labels)."""

from __future__ import annotations

import os

import pytest
import torch

from coati_ray.models.packing import pack, pack_labels
from tests.conftest import REPO
from tests.test_stages import data_overrides

FAMILIES = ("llama", "qwen2")


def test_pack_labels_never_predict_across_a_boundary():
    labels = torch.tensor([[-100, 7, 8, -100, -100], [-100, -100, 5, 6, 9]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    assert pack_labels(labels, mask, -100).tolist() == [[-100, 7, 8, -100, 5, 6, 9]]
    assert pack(labels, mask).lengths == [3, 4]


def test_sft_loss_on_packed_logits_equals_the_padded_loss(assets):
    from coati_ray.algo.losses import IGNORE_INDEX, sft_loss
    from coati_ray.models import Actor

    actor = Actor.from_pretrained(os.path.join(assets, "models", "tiny-llama")).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, actor.config.vocab_size, (3, 9), generator=g)
    mask = torch.tensor([[1] * 9, [1] * 4 + [0] * 5, [1] * 6 + [0] * 3])
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, :2] = IGNORE_INDEX  # a prompt: no loss
    with torch.no_grad():
        padded = sft_loss(actor(ids, mask), labels)
        actor.pack_sequences = True
        packed_logits = actor(ids, mask, keep_packed=True)
        packed = sft_loss(packed_logits, pack_labels(labels, mask, IGNORE_INDEX))
    assert packed_logits.shape[:2] == (1, int(mask.sum()))  # no (B, T, V) copy
    assert torch.allclose(packed, padded, atol=1e-6), (packed, padded)


def one_step(stage: str, model_path: str, out_dir, *overrides):
    """One optimiser step of an SFT or RM trainer (one rank) on the first 8 rows: (weights after, metrics)."""
    from coati_ray.config import load_config
    from coati_ray.config.schema import RMConfig, SFTConfig
    from coati_ray.models.loading import tokenizer_for
    from coati_ray.strategies import make_strategy
    from coati_ray.trainers.rm import RMTrainer
    from coati_ray.trainers.sft import SFTTrainer

    config_cls, trainer_cls = (SFTConfig, SFTTrainer) if stage == "sft" else (RMConfig, RMTrainer)
    cfg = load_config(config_cls, os.path.join(REPO, "configs", f"{stage}_tiny.yaml"), [
        *data_overrides(stage, model_path), f"output_dir={out_dir}", "strategy.name=naive", "resources.num_ranks=1",
        "trainer.batch_size=8", "trainer.max_steps=1", "data.eval_path=null", "optim.lr=1e-2", "optim.eps=1.0",
        "optim.warmup_steps=0", "ray.dashboard=false", *overrides])
    strategy = make_strategy(cfg.strategy)
    strategy.setup_distributed()
    try:
        tokenizer = tokenizer_for(cfg.model, None)
        items, _ = trainer_cls.build_dataset(cfg.data.train_path, tokenizer, cfg.data, 8)
        torch.manual_seed(0)
        model = trainer_cls.build_model(cfg.model, None)
        trainer = trainer_cls(cfg, strategy, model, tokenizer, items, None, trainer_cls.collator(tokenizer),
                              str(out_dir))
        before = {k: v.detach().clone() for k, v in strategy.unwrap(trainer.model).state_dict().items()}
        metrics = trainer.train_step(trainer.rank_micro_batches(list(range(8))))
        after = {k: v.detach().clone() for k, v in strategy.unwrap(trainer.model).state_dict().items()}
        metrics["moved"] = max((after[k] - before[k]).abs().max().item() for k in after)
        metrics["item_tokens"] = [trainer.item_tokens(it) for it in items]
        return after, metrics
    finally:
        strategy.close()


@pytest.mark.parametrize("stage", ("sft", "rm"))
@pytest.mark.parametrize("family", FAMILIES)
def test_packed_micro_batches_train_as_one_padded_micro_batch(assets, family, stage, tmp_path):
    path = os.path.join(assets, "models", f"tiny-{family}")
    padded, plain = one_step(stage, path, tmp_path / "padded", "trainer.micro_batch_size=8")
    budget = max(plain["item_tokens"]) + 1  # several packs of different sizes
    runs = {b: one_step(stage, path, tmp_path / f"packed{b}", f"trainer.micro_batch_tokens={b}")
            for b in (budget, 3 * budget)}
    assert runs[budget][1]["micro_batches"] >= 3 > plain["micro_batches"] - 1
    assert runs[3 * budget][1]["micro_batches"] < runs[budget][1]["micro_batches"]
    for b, (packed, metrics) in runs.items():
        worst = max((packed[k] - padded[k]).abs().max().item() for k in padded)
        assert plain["moved"] > 1e-4 and worst < 1e-5, (stage, family, b, plain["moved"], worst)
        assert metrics["loss"] == pytest.approx(plain["loss"], abs=1e-5)


def test_supervised_packing_refusals_are_one_line_before_anything_loads(assets, tmp_path):
    from coati_ray.config import load_config
    from coati_ray.config.schema import SFTConfig
    from coati_ray.errors import ConfigError

    def cfg(model: str, *overrides):
        config = load_config(SFTConfig, os.path.join(REPO, "configs", "sft_tiny.yaml"), [
            *data_overrides("sft", os.path.join(assets, "models", model)), f"output_dir={tmp_path}", *overrides])
        config.validate()
        return config

    with pytest.raises(ConfigError, match="trainer.micro_batch_tokens: packs sequences for llama.*model.path is a gpt2"):
        cfg("tiny-gpt2", "trainer.micro_batch_tokens=64")
    with pytest.raises(ConfigError, match="trainer.micro_batch_tokens: NEFTune"):
        cfg("tiny-llama", "trainer.micro_batch_tokens=64", "use_neft=true")
    with pytest.raises(ConfigError, match="trainer.micro_batch_tokens: must be >= 1"):
        cfg("tiny-llama", "trainer.micro_batch_tokens=0")
    assert cfg("tiny-qwen2", "trainer.micro_batch_tokens=64").trainer.micro_batch_tokens == 64
