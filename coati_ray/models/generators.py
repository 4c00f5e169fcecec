"""Generation backends, chosen by `generation.backend`: a registry of functions that take the generation config
whole (no Ray here).

    sequences, mask, action_mask = generator(gen.backend)(actor, gen, input_ids, attention_mask, tokenizer)

Every backend returns what `Actor.generate` documents: (sequences (B, P + A), attention_mask (B, P + A),
action_mask (B, A)) for left-padded prompts (B, P), each response ending at its first end token. Built in:

    compact  finished rows leave the decode batch (coati_ray/models/decode.py; one random stream per row;
             greedy output equals hf's token for token); falls back to hf for a family it does not cover,
             a streamer, or a checkpoint whose generation config adds logits processors
    hf       Hugging Face `generate`: every row decoded until the longest ends
    static   Hugging Face `generate` over a static KV cache (allocated once at prompt + max_new_tokens): on CUDA,
             transformers compiles the decode step on the first call (torch.compile, CUDA graphs), which pays
             back over many batches of one shape; greedy output equals hf's; families without a static cache
             use hf

A backend of your own is `module:function` with the same signature (docs/extending.md).
"""

from __future__ import annotations

from typing import Callable

GeneratorFn = Callable[..., tuple]


def _sampling(gen) -> dict:
    return {"max_new_tokens": gen.max_new_tokens, "do_sample": gen.do_sample, "temperature": gen.temperature,
            "top_k": gen.top_k, "top_p": gen.top_p}


def compact(actor, gen, input_ids, attention_mask, tokenizer=None, sampler_log_probs: bool = False,
            **extra) -> tuple:
    """`sampler_log_probs`: also {"log_probs": (B, A)}, read from the sampler's logits where the compact loop
    runs (the behaviour policy's, without a forward pass of its own)."""
    return actor.generate(input_ids, attention_mask, tokenizer, compact=True, sampler_log_probs=sampler_log_probs,
                          **_sampling(gen), **extra)


def hf(actor, gen, input_ids, attention_mask, tokenizer=None, **extra) -> tuple:
    extra.pop("row_seeds", None)  # Hugging Face's sampler draws every row from one stream
    return actor.generate(input_ids, attention_mask, tokenizer, compact=False, **_sampling(gen), **extra)


def static(actor, gen, input_ids, attention_mask, tokenizer=None, **extra) -> tuple:
    if not getattr(actor.model, "_supports_static_cache", False):
        return hf(actor, gen, input_ids, attention_mask, tokenizer, **extra)
    extra.pop("row_seeds", None)
    return actor.generate(input_ids, attention_mask, tokenizer, compact=False, **_sampling(gen),
                          hf_options={"cache_implementation": "static"}, **extra)


GENERATORS: dict[str, GeneratorFn] = {"compact": compact, "hf": hf, "static": static}


def register_generator(name: str, fn: GeneratorFn) -> None:
    GENERATORS[name] = fn


def generator(name: str) -> GeneratorFn:
    """The backend registered as `name`, or `module:function` of your own."""
    if name in GENERATORS:
        return GENERATORS[name]
    if ":" in name:
        from coati_ray.utils.plugins import load_callable

        return load_callable(name, "generation.backend", "my_pkg.generation:generate")
    from coati_ray.errors import ConfigError

    raise ConfigError(f"config error: generation.backend: unknown backend '{name}'; use one of: "
                      f"{', '.join(GENERATORS)}, or 'module:function' of your own (a module of yours that registers "
                      "one by name goes in plugins: [...])")
