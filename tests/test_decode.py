"""Generation in which finished rows stop costing (coati_ray.models.decode): greedy equal to Hugging Face's
`generate` token for token on five families, sampled rows independent of their batch, and the decode work
equal to the rows' own lengths, not rows × the longest."""

import os

import pytest
import torch

from coati_ray.data.datasets import collate_prompts
from coati_ray.models import Actor
from coati_ray.models.tiny import FAMILIES

PROMPTS = ["sort: 3 1 2", "sort: 9 8 7 6 5 4", "what is a reward model?", "sort: 5 3"]


def batch_of(tokenizer, prompts=PROMPTS):
    from coati_ray.inference import render_prompt

    return collate_prompts([{"input_ids": render_prompt(tokenizer, p)} for p in prompts], tokenizer.pad_token_id)


def ends_at_different_steps(actor, ids, mask, tokenizer, steps=12):
    """End tokens chosen from the model's own greedy output so that rows end at different steps (random
    tiny models seldom say EOS by themselves): the token, or pair of tokens, whose first appearances are the
    most spread over the rows."""
    import itertools

    seqs, _, _ = actor.generate(ids, mask, tokenizer, max_new_tokens=steps, do_sample=False, compact=False,
                                eos_token_id=[-1])
    rows = seqs[:, ids.size(1):].tolist()

    def ends(tokens):
        return [next((j for j, t in enumerate(r) if t in tokens), steps) for r in rows]

    seen = sorted({t for r in rows for t in r})
    candidates = [(t,) for t in seen] + list(itertools.combinations(seen, 2))
    best = max(candidates, key=lambda c: (len(set(ends(c))), max(ends(c)) - min(ends(c))))
    return list(best)


def varied(actor):
    """The tiny model with seeded noise on every weight: some random tiny models (bloom's) repeat one token
    under greedy decoding, and the test needs rows that differ."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return actor


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_hugging_face_generate_token_for_token(assets, tokenizer, family):
    actor = varied(Actor.from_pretrained(os.path.join(assets, "models", f"tiny-{family}")).eval())
    b = batch_of(tokenizer)
    ids, mask = b["input_ids"], b["attention_mask"]
    eos = ends_at_different_steps(actor, ids, mask, tokenizer)
    hf = actor.generate(ids, mask, tokenizer, max_new_tokens=12, do_sample=False, compact=False, eos_token_id=eos)
    ours = actor.generate(ids, mask, tokenizer, max_new_tokens=12, do_sample=False, eos_token_id=eos)
    lengths = hf[2].sum(1)
    assert lengths.min() < lengths.max(), "the test needs rows that end at different steps"
    for a, b_ in zip(hf, ours):  # sequences (padding after each EOS included), attention mask, action mask
        assert torch.equal(a, b_)


class CountingModel(torch.nn.Module):
    """The model, counting the rows of every decode step it is asked for."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, []

    def forward(self, input_ids, **kwargs):
        self.rows.append(input_ids.size(0))
        return self.model(input_ids=input_ids, **kwargs)


def test_finished_rows_leave_the_batch_and_sampled_rows_do_not_depend_on_their_batch(assets, tokenizer):
    from coati_ray.models.decode import generate_compacting

    actor = Actor.from_pretrained(os.path.join(assets, "models", "tiny-llama")).eval()
    b = batch_of(tokenizer)
    ids, mask = b["input_ids"], b["attention_mask"]
    eos = ends_at_different_steps(actor, ids, mask, tokenizer)
    seeds = [101, 202, 303, 404]
    counting = CountingModel(actor.model)
    together = generate_compacting(counting, ids, mask, max_new_tokens=16, eos_token_id=eos,
                                   pad_token_id=tokenizer.pad_token_id, row_seeds=seeds, top_k=50, top_p=0.95)
    responses = together[:, ids.size(1):]
    lengths = [next((j + 1 for j, t in enumerate(r.tolist()) if t in eos), responses.size(1)) for r in responses]
    # the first pass reads the prompts; each later step decodes only the rows still going
    assert counting.rows[0] == 4
    assert sum(counting.rows[1:]) == sum(length - 1 for length in lengths)
    assert max(lengths) > min(lengths) and sum(counting.rows) < 4 * max(lengths)

    for i in range(4):  # the same row alone, with its seed: the same tokens
        row_mask = mask[i:i + 1]
        start = int(row_mask[0].argmax())
        alone = generate_compacting(actor.model, ids[i:i + 1, start:], row_mask[:, start:], max_new_tokens=16,
                                    eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, row_seeds=[seeds[i]],
                                    top_k=50, top_p=0.95)
        mine = alone[0, ids.size(1) - start:].tolist()
        assert mine == responses[i, :len(mine)].tolist()
        assert all(t == tokenizer.pad_token_id for t in responses[i, len(mine):].tolist())
    with pytest.raises(ValueError, match="3 seeds for a batch of 4"):
        generate_compacting(actor.model, ids, mask, max_new_tokens=2, eos_token_id=eos,
                            pad_token_id=tokenizer.pad_token_id, row_seeds=seeds[:3])


def test_sampling_follows_the_warped_distribution(assets):
    """top-k 1 is greedy; a row's stream is its seed's whatever the others draw."""
    from coati_ray.models.decode import sample_rows, sampling_warpers

    logits = torch.tensor([[0.0, 3.0, 1.0, -1.0], [2.0, 0.0, 0.5, 0.1]])
    top1 = sampling_warpers(1.0, 1, 1.0)(None, logits.clone())
    picks = sample_rows(torch.softmax(top1, -1), [torch.Generator().manual_seed(s) for s in (1, 2)])
    assert picks.tolist() == [1, 0]
    probs = torch.softmax(logits, -1)
    first = sample_rows(probs, [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)])
    again = sample_rows(probs[1:], [torch.Generator().manual_seed(8)])
    assert first[1] == again[0]
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.cat([sample_rows(probs[:1], [g]) for _ in range(4000)]), minlength=4).float()
    assert torch.allclose(counts / 4000, probs[0], atol=0.03)


def test_what_the_loop_cannot_reproduce_goes_through_generate(assets, tokenizer):
    """A checkpoint whose generation config adds a processor (a repetition penalty) or a family whose cache
    rows cannot be dropped is left to Hugging Face's generate, so its output stays generate's."""
    from coati_ray.models.decode import can_compact, sample_rows

    actor = varied(Actor.from_pretrained(os.path.join(assets, "models", "tiny-llama")).eval())
    assert can_compact(actor.model)
    actor.model.generation_config.repetition_penalty = 1.3
    assert not can_compact(actor.model)
    b = batch_of(tokenizer)
    hf = actor.generate(b["input_ids"], b["attention_mask"], tokenizer, max_new_tokens=8, do_sample=False,
                        compact=False)
    assert torch.equal(actor.generate(b["input_ids"], b["attention_mask"], tokenizer, max_new_tokens=8,
                                      do_sample=False)[0], hf[0])
    actor.model.generation_config.repetition_penalty = 1.0
    actor.model.config.model_type = "jamba"  # a hybrid cache: not a family the loop drops rows from
    assert not can_compact(actor.model)
    with pytest.raises(RuntimeError, match="not finite"):
        sample_rows(torch.tensor([[float("nan"), 1.0]]), [torch.Generator().manual_seed(0)])
    zero_first = torch.tensor([[0.0, 0.5, 0.5]])  # a leading token cut by top-k is never drawn, even at u = 0
    assert sample_rows(zero_first, [torch.Generator().manual_seed(s) for s in [0]]).item() in (1, 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_static_cache_backend_generates_hfs_tokens_and_falls_back_where_there_is_none(assets, tokenizer,
                                                                                         family):
    """generation.backend: static — Hugging Face's generate over a static KV cache (compiled on CUDA) gives the
    dynamic cache's greedy tokens; gpt2 has no static cache in transformers 4.51, so it goes through plain
    generate."""
    from types import SimpleNamespace

    from coati_ray.models.generators import generator

    actor = varied(Actor.from_pretrained(os.path.join(assets, "models", f"tiny-{family}")).eval())
    assert bool(getattr(actor.model, "_supports_static_cache", False)) == (family != "gpt2")
    b = batch_of(tokenizer)
    ids, mask = b["input_ids"], b["attention_mask"]
    gen = SimpleNamespace(max_new_tokens=10, do_sample=False, temperature=1.0, top_k=0, top_p=1.0)
    plain = generator("hf")(actor, gen, ids, mask, tokenizer)
    caches, generate = [], actor.model.generate
    actor.model.generate = lambda **kw: caches.append(kw.get("cache_implementation")) or generate(**kw)
    static = generator("static")(actor, gen, ids, mask, tokenizer)
    assert caches == [None if family == "gpt2" else "static"]
    for a, b_ in zip(plain, static):
        assert torch.equal(a, b_)
