"""Loading tokenizers and backbones from local Hugging Face directories (never from a hub)."""

from __future__ import annotations

import os
from typing import Optional

import torch

from coati_ray.errors import ModelError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_model_dir(path: str) -> None:
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelError(f"model error: '{path}' is not a Hugging Face model directory (no config.json); "
                         "point it at a directory written by save_pretrained()")


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """A tokenizer with a pad token (falls back to EOS) and left padding for generation."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"model error: cannot load a tokenizer from '{path}' ({str(e).splitlines()[0]}); "
                         "set model.tokenizer_path to a directory with tokenizer files") from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"model error: tokenizer at '{path}' has neither pad nor eos token; add one")
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, dtype: str = "float32", trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    check_model_dir(path)
    return AutoModelForCausalLM.from_pretrained(path, torch_dtype=DTYPES[dtype], local_files_only=True,
                                                trust_remote_code=trust_remote_code)


def load_backbone(path: str, dtype: str = "float32", trust_remote_code: bool = False):
    """The transformer without its LM head (for critics and reward models)."""
    from transformers import AutoModel

    check_model_dir(path)
    return AutoModel.from_pretrained(path, torch_dtype=DTYPES[dtype], local_files_only=True,
                                     trust_remote_code=trust_remote_code)


def check_vocab(tokenizer, model, where: Optional[str] = None) -> None:
    """The tokenizer must not produce ids the embedding table does not have.

    `model` is an Actor, a ValueModel or a bare Hugging Face model.
    """
    hf = getattr(model, "model", None) or getattr(model, "backbone", None) or model
    emb = hf.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > emb:
        raise ModelError(f"model error: tokenizer has {len(tokenizer)} tokens but the model's embedding has "
                         f"{emb} rows{' (' + where + ')' if where else ''}; use the tokenizer saved with the model")


def check_tokenizer_fits(tokenizer, path: str, key: str) -> None:
    """Before any model loads: the tokenizer's ids must fit the vocabulary config.json declares."""
    from coati_ray.config.schema import model_config

    vocab = model_config(key, path).get("vocab_size")
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise ModelError(f"model error: {key}: the tokenizer has {len(tokenizer)} tokens but '{path}' has a "
                         f"vocabulary of {vocab}; use the tokenizer saved with the model (or set tokenizer_path)")
