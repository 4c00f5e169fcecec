"""Decoding without copying the KV cache: coati_ray.models.attention (grouped query heads folded instead of
repeat_kv's copy) and decode.reserved_cache (tokens written in place instead of a concatenation per step) give
what transformers' own attention and DynamicCache give, to float noise, and greedy decoding token for token."""

import os

import pytest
import torch

from coati_ray.models import Actor
from coati_ray.models.attention import decode_sdpa


class Heads(torch.nn.Module):
    def __init__(self, n_rep):
        super().__init__()
        self.num_key_value_groups = n_rep


def hf_sdpa(module, query, key, value, mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, mask, **kwargs)


@pytest.mark.parametrize("n_rep", [1, 2, 4])
@pytest.mark.parametrize("masked", [False, True])
def test_a_decode_query_attends_as_with_repeated_heads(n_rep, masked):
    torch.manual_seed(0)
    batch, kv_heads, length, dim = 3, 2, 9, 8
    query = torch.randn(batch, kv_heads * n_rep, 1, dim)
    buffer = torch.randn(2, batch, kv_heads, length + 5, dim)  # a reserved cache's views: strided along L
    key, value = buffer[0, :, :, :length], buffer[1, :, :, :length]
    assert not key.is_contiguous()
    mask = None
    if masked:  # left padding: row 1 starts at position 3, row 2 at 5
        mask = torch.zeros(batch, 1, 1, length + 2)  # longer than the keys, as transformers' masks can be
        mask[1, :, :, :3] = torch.finfo(torch.float32).min
        mask[2, :, :, :5] = torch.finfo(torch.float32).min
    ours, _ = decode_sdpa(Heads(n_rep), query, key, value, mask, scaling=dim ** -0.5)
    theirs, _ = hf_sdpa(Heads(n_rep), query, key, value, mask, scaling=dim ** -0.5)
    assert ours.shape == theirs.shape == (batch, 1, kv_heads * n_rep, dim)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    # a wrong fold (heads paired with the wrong KV head) would not pass: check the test can tell
    if n_rep > 1:
        swapped, _ = decode_sdpa(Heads(n_rep), query.flip(1), key, value, mask, scaling=dim ** -0.5)
        assert not torch.allclose(swapped.flip(2), theirs, atol=1e-3)


def test_longer_queries_keep_transformers_own_attention():
    torch.manual_seed(1)
    query, key, value = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    ours, _ = decode_sdpa(Heads(2), query, key, value, None, scaling=0.3)
    theirs, _ = hf_sdpa(Heads(2), query, key, value, None, scaling=0.3)
    assert torch.equal(ours, theirs)


@pytest.fixture
def transformers_attention():
    """transformers' own sdpa attention for the duration of a test, then ours again."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import AttentionInterface

    from coati_ray.models import attention

    AttentionInterface.register("sdpa", sdpa_attention_forward)
    yield
    AttentionInterface.register("sdpa", attention.decode_sdpa)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_decoding_with_a_growing_reserved_cache_equals_transformers_own(assets, tokenizer, family, monkeypatch,
                                                                       transformers_attention):
    """Greedy tokens and sampler log-probs of the compacting loop (reserved cache doubling from 3 positions past
    the prompt, rows dropped as they end, grouped heads folded) against Hugging Face's generate on a
    DynamicCache with repeat_kv."""
    from transformers.modeling_utils import AttentionInterface

    from coati_ray.models import attention, decode
    from tests.test_decode import batch_of, ends_at_different_steps, varied

    actor = varied(Actor.from_pretrained(os.path.join(assets, "models", f"tiny-{family}")).eval())
    assert actor.config.num_key_value_heads < actor.config.num_attention_heads  # grouped: the fold is used
    b = batch_of(tokenizer)
    ids, mask = b["input_ids"], b["attention_mask"]
    eos = ends_at_different_steps(actor, ids, mask, tokenizer, steps=14)
    theirs = actor.generate(ids, mask, tokenizer, max_new_tokens=14, do_sample=False, compact=False, eos_token_id=eos)
    with torch.no_grad():
        logits = actor(theirs[0], theirs[1])[:, ids.size(1) - 1:-1].float()
    their_log_probs = torch.log_softmax(logits, -1).gather(-1, theirs[0][:, ids.size(1):, None]).squeeze(-1)

    AttentionInterface.register("sdpa", attention.decode_sdpa)
    monkeypatch.setattr(decode, "RESERVE_CHUNK", 3)
    reserved = []
    real = decode.reserved_cache
    monkeypatch.setattr(decode, "reserved_cache",
                        lambda chunk=None, limit=None: reserved.append(real(chunk, limit)) or reserved[-1])
    sequences, full_mask, action_mask, info = actor.generate(ids, mask, tokenizer, max_new_tokens=14,
                                                             do_sample=False, eos_token_id=eos, sampler_log_probs=True)
    room = reserved[0].buffers[0][0].shape[-2]
    assert ids.size(1) + 3 < room <= ids.size(1) + 14  # it grew past its first room, never past prompt + new tokens
    lengths = action_mask.sum(1)
    assert lengths.min() < lengths.max(), "the test needs rows that end at different steps"
    assert torch.equal(sequences, theirs[0]) and torch.equal(action_mask, theirs[2])
    torch.testing.assert_close(info["log_probs"], their_log_probs * action_mask, rtol=0, atol=1e-5)
