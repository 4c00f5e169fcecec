"""Sampling in which finished rows stop costing: a decode loop over a Hugging Face causal LM whose batch
shrinks as rows end (their rows of the KV cache dropped), each row drawing from its own random stream.

Hugging Face's `generate` keeps every row in the batch until the longest one ends, decoding padding for the
finished ones; vLLM and SGLang drop them. Here the same: after each step the rows that emitted an end token
leave the batch, so a batch costs the sum of its rows' lengths rather than rows × the longest. Greedy output
equals `generate`'s token for token (tests/test_decode.py, five families, CPU fp32). A sampled row draws from
its own seeded stream, so which rows share its batch, and when they end, never changes its random numbers;
where kernels depend on the batch's shape (a GPU, bf16) the logits themselves can move in the last bits.
Families outside COMPACTABLE, and checkpoints whose generation config adds processors (a repetition
penalty, say), are left to `generate` (`can_compact`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

MAX_SEED = 2**62
RESERVE_CHUNK = 64  # positions a reserved cache holds past its prefill before it first doubles
# families whose forward keeps its KV cache as a DynamicCache (or batch-first legacy tuples) that rows can be
# dropped from; others (hybrid/static caches, Mamba states, sequence-first caches) go through `generate`
COMPACTABLE = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "opt", "bloom", "gpt_neox", "gptj", "phi", "phi3")
# generation-config keys whose non-default value adds a logits processor this loop does not apply
_PROCESSOR_KEYS = ("repetition_penalty", "no_repeat_ngram_size", "min_new_tokens", "min_length", "bad_words_ids",
                   "suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id",
                   "sequence_bias", "encoder_repetition_penalty", "exponential_decay_length_penalty",
                   "renormalize_logits", "epsilon_cutoff", "eta_cutoff", "typical_p", "min_p",
                   "cache_implementation", "watermarking_config")


def can_compact(model) -> bool:
    """Whether this loop gives what `generate` would for `model`: a family whose cache rows can be dropped, and
    a checkpoint generation config that adds no processor (a repetition penalty, say) beyond temperature,
    top-k and top-p."""
    from transformers import GenerationConfig

    base = getattr(model, "get_base_model", lambda: model)()
    if getattr(base.config, "model_type", None) not in COMPACTABLE:
        return False
    own, default = getattr(base, "generation_config", None), GenerationConfig()
    return own is None or all(getattr(own, k, None) == getattr(default, k, None) for k in _PROCESSOR_KEYS)


def row_seeds_from_torch(batch_size: int) -> list[int]:
    """One seed per row, drawn from torch's global generator (the maker seeds it per batch): rows keep
    their streams when others leave the batch."""
    return [int(s) for s in torch.randint(0, MAX_SEED, (batch_size,))]


def sampling_warpers(temperature: float, top_k: int, top_p: float):
    """transformers' own logits warpers, in the order `generate` applies them (temperature, top-k, top-p)."""
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k and top_k > 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def sample_rows(probs: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """probs: (B, V), one CPU generator per row -> (B,) token ids, row i drawn by inverse CDF from one uniform
    of generators[i] (so a row's draw depends on its own stream only)."""
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators]).to(probs.device)
    cdf = probs.double().cumsum(-1)
    if not bool(torch.isfinite(cdf[:, -1]).all()) or bool((cdf[:, -1] <= 0).any()):
        raise RuntimeError("sampling from a distribution that is not finite (NaN or inf logits)")
    cdf = cdf / cdf[:, -1:]  # exactly 1 at the end, whatever the rounding of the sum
    # right=True: a draw of exactly 0 cannot land on a leading token of probability 0 (cut by top-k / top-p)
    return torch.searchsorted(cdf, u[:, None], right=True).squeeze(-1).clamp(max=probs.size(-1) - 1)


def reserved_cache(chunk: Optional[int] = None, limit: Optional[int] = None):
    """A transformers DynamicCache whose keys and values live in reserved buffers (B, H, capacity, D) that grow by
    doubling: a decode step writes its token in place and the layers read views of the filled part.

    DynamicCache concatenates the whole cache into a new tensor at every step, every layer: O(L^2) copying, and on
    CPU each new tensor of a few MB is fresh memory whose page faults cost more than the copy (1.9 s of an 8.1 s
    generation, 39M llama, 32 rows x 64 tokens, one thread). Rows that finish are dropped by moving the kept
    rows to the front of the same buffers. `limit`: the most positions it will hold (prompt + new tokens): no
    buffer grows past it."""
    from transformers.cache_utils import DynamicCache

    chunk = RESERVE_CHUNK if chunk is None else chunk

    class ReservedCache(DynamicCache):
        def __init__(self):
            super().__init__()
            self.filled: list[int] = []
            self.buffers: list[tuple] = []
            self.rows = 0

        def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
            if layer_idx == 0:
                self._seen_tokens += key_states.shape[-2]
            new = key_states.shape[-2]
            if len(self.buffers) <= layer_idx:  # the prefill: room for it and the first `chunk` tokens after it
                if layer_idx != len(self.buffers):
                    raise RuntimeError(f"ReservedCache: layer {layer_idx} came before layer {len(self.buffers)}")
                batch, heads, _, dim = key_states.shape
                room = new + chunk if limit is None else max(new, min(new + chunk, limit))
                self.buffers.append(tuple(t.new_empty(batch, heads, room, dim) for t in (key_states, value_states)))
                self.filled.append(0)
                self.key_cache.append(key_states)
                self.value_cache.append(value_states)
                self.rows = batch
            start = self.filled[layer_idx]
            keys, values = self.buffers[layer_idx]
            if start + new > keys.shape[-2]:  # full: double it, keeping what is filled
                capacity = max(2 * keys.shape[-2], start + new)
                capacity = capacity if limit is None else max(start + new, min(capacity, limit))
                keys, values = (_reserve(b[:self.rows, :, :start], capacity) for b in (keys, values))
                self.buffers[layer_idx] = (keys, values)
            keys[:self.rows, :, start:start + new] = key_states
            values[:self.rows, :, start:start + new] = value_states
            self.filled[layer_idx] = start + new
            self.key_cache[layer_idx] = keys[:self.rows, :, :start + new]
            self.value_cache[layer_idx] = values[:self.rows, :, :start + new]
            return self.key_cache[layer_idx], self.value_cache[layer_idx]

        def batch_select_indices(self, indices: torch.Tensor):
            kept = indices.numel()
            for layer_idx, (keys, values) in enumerate(self.buffers):
                end = self.filled[layer_idx]
                for buffer in (keys, values):
                    buffer[:kept, :, :end] = buffer[:self.rows, :, :end].index_select(0, indices.to(buffer.device))
                self.key_cache[layer_idx] = keys[:kept, :, :end]
                self.value_cache[layer_idx] = values[:kept, :, :end]
            self.rows = kept

    return ReservedCache()


def _reserve(states: torch.Tensor, capacity: int) -> torch.Tensor:
    """(B, H, L, D) -> (B, H, capacity, D) with `states` in its first L positions (the rest unset)."""
    batch, heads, length, dim = states.shape
    buffer = states.new_empty(batch, heads, capacity, dim)
    buffer[:, :, :length] = states
    return buffer


def select_cache_rows(cache, keep: torch.Tensor):
    """The KV cache restricted to batch rows `keep` (B',) long: a transformers Cache in place, or a legacy
    tuple of per-layer (key, value) tensors with the batch first."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(keep)
        return cache
    return tuple(tuple(t.index_select(0, keep.to(t.device)) for t in layer) for layer in cache)


@torch.no_grad()
def generate_compacting(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                        eos_token_id: Optional[list], pad_token_id: int, do_sample: bool = True,
                        temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                        row_seeds: Optional[list[int]] = None, pass_positions: bool = True,
                        return_log_probs: bool = False):
    """Continue left-padded prompts input_ids, attention_mask: (B, P) -> sequences (B, P + A), A the longest
    response; after a row's end token its positions hold `pad_token_id` (as `generate` pads them).

    `return_log_probs` returns (sequences, log_probs (B, A) float32) instead: each sampled token's log-prob
    under softmax(logits / temperature) (temperature 1 when greedy; no top-k / top-p, as
    algo.functional.action_log_probs takes them), read from the logits the sampler drew from, so the
    behaviour policy needs no forward pass of its own; 0 after a row's end token.

    `row_seeds` (B,) seed each row's stream (default: drawn from torch's global generator);
    `pass_positions` gives the model position ids that start at each row's first real token (False for
    families that take none, e.g. bloom's alibi)."""
    B, P = input_ids.shape
    device = input_ids.device
    eos = torch.as_tensor(list(eos_token_id or []), dtype=torch.long, device=device)
    warpers = sampling_warpers(temperature, top_k, top_p) if do_sample else None
    generators = None
    if do_sample:
        seeds = row_seeds if row_seeds is not None else row_seeds_from_torch(B)
        if len(seeds) != B:
            raise ValueError(f"row_seeds has {len(seeds)} seeds for a batch of {B} rows")
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    out = torch.full((B, max_new_tokens), pad_token_id, dtype=input_ids.dtype, device=device)
    out_log_probs = torch.zeros((B, max_new_tokens), dtype=torch.float32, device=device) if return_log_probs else None
    behaviour_temperature = temperature if do_sample else 1.0
    rows = torch.arange(B, device=device)  # the original row of each row still decoding
    mask = attention_mask.long()
    kwargs = {}
    if pass_positions:  # as generate's prepare_inputs_for_generation: padded positions at 1
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    step_ids = input_ids
    cache = None
    length = 0
    from coati_ray.algo.functional import log_probs_from_logits
    from coati_ray.models.actor import forward_parameters

    first = {"logits_to_keep": 1} if "logits_to_keep" in forward_parameters(model) else {}  # as generate's prefill
    if getattr(getattr(model, "get_base_model", lambda: model)(), "_supports_cache_class", False):
        cache = reserved_cache(limit=P + max_new_tokens)  # written in place (a model that returns another cache is followed as before)
    for t in range(max_new_tokens):
        output = model(input_ids=step_ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                       return_dict=True, **kwargs, **(first if t == 0 else {}))
        cache = output.past_key_values
        logits = output.logits[:, -1, :].float()
        if do_sample:
            scores = warpers(step_ids, logits)  # temperature, top-k and top-p read no past tokens
            next_ids = sample_rows(torch.softmax(scores, dim=-1), generators)
        else:
            next_ids = logits.argmax(-1)
        out[rows, t] = next_ids.to(out.dtype)
        if out_log_probs is not None:
            tempered = logits / behaviour_temperature if behaviour_temperature != 1.0 else logits
            out_log_probs[rows, t] = log_probs_from_logits(tempered[:, None, :], next_ids[:, None]).squeeze(1)
        length = t + 1
        done = torch.isin(next_ids, eos) if eos.numel() else torch.zeros_like(next_ids, dtype=torch.bool)
        if bool(done.all()) or t + 1 == max_new_tokens:
            break
        if bool(done.any()):  # the finished rows leave the batch and the cache
            keep = (~done).nonzero().squeeze(-1)
            rows, next_ids, mask = rows[keep], next_ids[keep], mask[keep]
            cache = select_cache_rows(cache, keep)
            if generators is not None:
                generators = [generators[i] for i in keep.tolist()]
        mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
        step_ids = next_ids[:, None].to(input_ids.dtype)
        if pass_positions:
            kwargs["position_ids"] = (mask.sum(-1, keepdim=True) - 1)
    sequences = torch.cat([input_ids, out[:, :length]], dim=1)
    return (sequences, out_log_probs[:, :length]) if return_log_probs else sequences
