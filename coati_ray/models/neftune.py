"""NEFTune (Jain et al. 2023, "Noisy Embeddings Improve Instruction Finetuning"), through transformers' hook.

The hook adds uniform noise in [-a, a], a = alpha / sqrt(length x hidden), to the input embeddings'
output (batch, length, hidden) while the embedding module is in training mode; in eval mode (evaluation,
generation, export) it returns the embeddings untouched.
"""

from __future__ import annotations

from torch import nn


def input_embeddings(model: nn.Module) -> nn.Module:
    """The input-embedding module of an Actor, a peft model or a plain HF model."""
    inner = getattr(model, "model", model)
    return inner.get_input_embeddings()


def add_neftune(model: nn.Module, alpha: float):
    """Register NEFTune on `model`'s input embeddings; returns the hook handle (`.remove()` undoes it)."""
    from transformers.trainer_utils import neftune_post_forward_hook

    embeddings = input_embeddings(model)
    embeddings.neftune_noise_alpha = alpha
    return embeddings.register_forward_hook(neftune_post_forward_hook)
