"""Padding-free forward passes: a micro-batch's sequences packed into one row, each with its own positions and
attention limited to itself, the outputs put back in the padded layout the losses read.

A padded micro-batch (B, T) costs B × T positions; packed it costs the real tokens L = sum of the attention
mask, with the same result: every sequence sees only its own tokens (a block-diagonal causal mask on CPU and
SDPA; on a GPU with flash_attention_2, no mask at all: Hugging Face detects the restarted position ids and
runs varlen attention) at the positions it has padded (0, 1, ... from its first real token). verl, ROLL and
slime train this way. Families whose attention takes a 4D mask and position ids: PACKABLE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# model_type of the families whose forward reads position ids and an additive 4D mask (bloom builds alibi from
# the 2D mask, OPT its positions from it, gpt2 takes no 4D mask in transformers 4.51)
PACKABLE = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class Packed:
    input_ids: torch.Tensor      # (1, L) every real token, sequence after sequence
    position_ids: torch.Tensor   # (1, L) 0, 1, ... within each sequence
    flat_index: torch.Tensor     # (L,) each packed token's index into the padded (B * T) layout
    lengths: list                # real tokens of each sequence (B,)
    shape: tuple                 # (B, T) of the padded layout


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Packed:
    """input_ids, attention_mask: (B, T), real tokens where the mask is 1 -> Packed (1, L)."""
    B, T = input_ids.shape
    real = attention_mask.bool()
    flat_index = real.reshape(-1).nonzero().squeeze(-1)
    lengths = real.sum(dim=1)
    starts = torch.cumsum(lengths, 0) - lengths                  # (B,) where each sequence begins in the pack
    owner = torch.repeat_interleave(torch.arange(B, device=input_ids.device), lengths)
    positions = torch.arange(int(lengths.sum()), device=input_ids.device) - starts[owner]
    return Packed(input_ids.reshape(-1)[flat_index][None], positions[None], flat_index, lengths.tolist(), (B, T))


def block_causal_mask(lengths: list, dtype: torch.dtype, device) -> torch.Tensor:
    """The additive attention mask of a pack: (1, 1, L, L), 0 where a token may attend (itself and earlier
    tokens of its own sequence), the dtype's minimum elsewhere."""
    owner = torch.repeat_interleave(torch.arange(len(lengths), device=device),
                                    torch.as_tensor(lengths, device=device))
    L = owner.numel()
    causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    allowed = causal & (owner[:, None] == owner[None, :])
    mask = torch.zeros(L, L, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def pack_labels(labels: torch.Tensor, attention_mask: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """labels (B, T) of a padded micro-batch -> (1, L) in the pack's order, `ignore_index` at each sequence's
    first token: in the pack, the last token of one sequence would otherwise predict the next one's first
    (and in the padded layout a sequence's first label is never predicted either), so a next-token loss on
    the pack's logits (1, L, V) equals the padded one."""
    packed = pack(labels, attention_mask)
    out = packed.input_ids.clone()
    lengths = torch.as_tensor(packed.lengths, device=labels.device)
    starts = (torch.cumsum(lengths, 0) - lengths)[lengths > 0]
    out[0, starts] = ignore_index
    return out


def unpack(x: torch.Tensor, packed: Packed) -> torch.Tensor:
    """x: (1, L, ...) per packed token -> (B, T, ...) in the padded layout, zeros at the padding."""
    B, T = packed.shape
    out = x.new_zeros(B * T, *x.shape[2:])
    out[packed.flat_index] = x[0]
    return out.view(B, T, *x.shape[2:])


def packed_call(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, dtype: torch.dtype, **kwargs):
    """Call a Hugging Face model (a causal LM or its backbone) on the pack of a padded micro-batch: the
    arguments it needs, (packed, the model's keyword arguments)."""
    packed = pack(input_ids, attention_mask)
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) == "flash_attention_2":
        mask = None  # varlen attention from the restarted position ids
    else:
        mask = block_causal_mask(packed.lengths, dtype, input_ids.device)
    return packed, dict(input_ids=packed.input_ids, attention_mask=mask, position_ids=packed.position_ids, **kwargs)


def packable(config) -> bool:
    return getattr(config, "model_type", None) in PACKABLE


def token_budget_chunks(tokens: list, budget: int) -> list[list[int]]:
    """Split samples of `tokens` real tokens each (in order) into consecutive micro-batches of at most
    `budget` tokens (a sample longer than the budget is a micro-batch alone) -> lists of positions."""
    chunks, current, used = [], [], 0
    for i, n in enumerate(tokens):
        if current and used + n > budget:
            chunks.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        chunks.append(current)
    return chunks


def split_to(chunks: list[list[int]], tokens: list, k: int) -> list[list[int]]:
    """`chunks` (consecutive, each within the budget) split further until there are exactly `k` (k <= samples):
    the chunk with the most tokens is halved by tokens, so no chunk ever grows past the budget. Every rank of
    a group must run the same number of micro-batches per optimiser step."""
    if not len(chunks) <= k <= len(tokens):
        raise ValueError(f"cannot make {k} micro-batches of {len(tokens)} samples in {len(chunks)} chunks")
    chunks = [list(c) for c in chunks]
    while len(chunks) < k:
        i = max((j for j, c in enumerate(chunks) if len(c) > 1), key=lambda j: sum(tokens[x] for x in chunks[j]))
        c = chunks[i]
        half, used, cut = sum(tokens[x] for x in c) / 2, 0, 1
        for cut in range(1, len(c)):
            used += tokens[c[cut - 1]]
            if used >= half:
                break
        chunks[i:i + 1] = [c[:cut], c[cut:]]
    return chunks
