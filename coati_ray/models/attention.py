"""Grouped-query attention at decode without copying the KV cache.

transformers' `sdpa` attention repeats each key/value head `num_key_value_groups` times before calling
`scaled_dot_product_attention` (`repeat_kv`: a copy of the whole cache, every layer, every decode step). On CPU
that copy cost more than the attention itself: 3.3 s of a 9.8 s generation (39M llama, 8 query heads on 4 KV
heads, 32 rows x 64 new tokens, one thread). When one token is decoded per row, the query heads that share a
KV head can instead ride along the query-length axis: query (B, H, 1, D) viewed as (B, H_kv, n_rep, D) attends to
the un-repeated cache (B, H_kv, L, D) under the same padding mask. Each query row meets the same keys in the same
order, so the output is the same attention (tests/test_attention.py checks it against `repeat_kv` to float
noise, and greedy decoding token for token). Longer queries (prefill, the training and reference passes) keep
transformers' own path: their causal mask differs per query row, and there the copy is small next to the FLOPs.
"""

from __future__ import annotations

from typing import Optional

import torch

_installed = False


def fold_query_heads(query: torch.Tensor, n_rep: int) -> torch.Tensor:
    """query (B, H, 1, D), H = H_kv * n_rep, head h reading KV head h // n_rep (as repeat_kv orders them)
    -> (B, H_kv, n_rep, D): the heads sharing a KV head as rows of one query."""
    batch, heads, _, dim = query.shape
    return query.reshape(batch, heads // n_rep, n_rep, dim)


def unfold_query_heads(output: torch.Tensor, heads: int) -> torch.Tensor:
    """output (B, H_kv, n_rep, D) -> (B, 1, H, D), the layout transformers' attention functions return."""
    batch, _, _, dim = output.shape
    return output.reshape(batch, heads, 1, dim).transpose(1, 2)


def decode_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: Optional[torch.Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
                    is_causal: Optional[bool] = None, **kwargs):
    """transformers' `sdpa` attention function, without copying the KV cache when one token per row attends to
    it: no repeat_kv for grouped heads, no `.contiguous()` of a reserved cache's views. query (B, H, Lq, D), key/value (B, H_kv, Lk, D), attention_mask (B, 1, Lq, Lk) or None
    -> ((B, Lq, H, D), None); any other case goes to transformers' own function unchanged."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    n_rep = getattr(module, "num_key_value_groups", 1)
    foldable = (query.shape[2] == 1 and key.shape[1] * n_rep == query.shape[1]
                and (attention_mask is None or (attention_mask.ndim == 4 and attention_mask.shape[1] == 1
                                                and attention_mask.shape[2] == 1))
                and not (dropout and module.training))
    if not foldable:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    mask = None if attention_mask is None else attention_mask[:, :, :, : key.shape[-2]]
    output = torch.nn.functional.scaled_dot_product_attention(
        fold_query_heads(query.contiguous(), n_rep), _rows_contiguous(key), _rows_contiguous(value), attn_mask=mask,
        dropout_p=0.0, scale=scaling, is_causal=False)  # one query token: it sees its whole (masked) past
    return unfold_query_heads(output, query.shape[1]).contiguous(), None


def _rows_contiguous(states: torch.Tensor) -> torch.Tensor:
    """A cache view (B, H, L, D) as it is when each position's D values are contiguous (decode.reserved_cache's
    views of a longer buffer are): copying it whole every step is the cost this module removes."""
    if states.is_cuda:  # SDPA's memory-efficient kernel has given wrong results on strided inputs with a mask
        return states.contiguous()  # (pytorch#112577, why transformers copies them): the un-repeated cache, at least
    return states if states.stride(-1) == 1 else states.contiguous()


def install() -> None:
    """Make `decode_sdpa` the `sdpa` attention of every model this process loads (transformers'
    AttentionInterface.register, documented for replacing an attention function); once per process."""
    global _installed
    if _installed:
        return
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register("sdpa", decode_sdpa)
    _installed = True
