"""NEFTune: noise on the input embeddings in training only, at alpha / sqrt(length x hidden)."""

from __future__ import annotations

import math

import torch

from tests.test_stages import data_overrides, metrics, run


def tiny_actor(tiny_llama):
    from coati_ray.config import ModelConfig
    from coati_ray.models.factory import build_actor

    torch.manual_seed(0)
    return build_actor(ModelConfig(path=tiny_llama))


def test_evaluation_and_generation_are_unchanged_and_training_inputs_get_noise_of_the_documented_scale(tiny_llama):
    from coati_ray.models.neftune import add_neftune, input_embeddings

    actor = tiny_actor(tiny_llama)
    ids = torch.randint(5, 300, (4, 24))
    mask = torch.ones_like(ids)
    actor.eval()
    with torch.no_grad():
        clean_logits = actor(ids, mask)
        clean_answer = actor.model.generate(ids[:1, :8], max_new_tokens=8, do_sample=False)
    handle = add_neftune(actor, alpha=5.0)
    with torch.no_grad():
        assert torch.equal(actor(ids, mask), clean_logits)  # evaluation: no noise
        assert torch.equal(actor.model.generate(ids[:1, :8], max_new_tokens=8, do_sample=False), clean_answer)

    seen = []
    embeddings = input_embeddings(actor)
    probe = embeddings.register_forward_hook(lambda m, i, out: seen.append(out.detach()))  # runs after NEFTune's
    actor.train()
    with torch.no_grad():
        actor(ids, mask)
    noise = seen[-1] - embeddings.weight[ids]
    bound = 5.0 / math.sqrt(ids.shape[1] * embeddings.weight.shape[1])
    assert noise.abs().max() <= bound * (1 + 1e-5) and noise.abs().max() > 0.95 * bound
    assert abs(noise.std().item() - bound / math.sqrt(3)) < 0.05 * bound  # uniform on [-a, a]
    handle.remove(), probe.remove()


def test_sft_with_use_neft_trains_on_noisy_embeddings(tiny_llama, tmp_path):
    args = (*data_overrides("sft", tiny_llama), "trainer.max_steps=2", "trainer.save_every=null")
    assert run("sft", tmp_path / "plain", *args) == 0
    assert run("sft", tmp_path / "again", *args) == 0
    assert run("sft", tmp_path / "neft", *args, "use_neft=true") == 0
    plain, again, neft = (metrics(tmp_path / d) for d in ("plain", "again", "neft"))
    assert plain[0]["loss"] == again[0]["loss"]  # runs repeat exactly, so a difference below is the noise
    assert plain[0]["loss"] != neft[0]["loss"]
