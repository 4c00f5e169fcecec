"""Loading tokenizers and backbones from Hugging Face directories: local ones, or the snapshot of a pinned hub
commit in this node's cache (coati_ray.models.hub resolves those to a directory first)."""

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


def tokenizer_for(model_cfg, rendering=None):
    """The tokenizer of a ModelConfig (its tokenizer_path or path, local or the pinned hub commit, with its
    trust_remote_code), carrying how a stage renders conversations: `rendering` a data config (its
    chat_template, chat_template_kwargs and system_prompt), or a `data.chat_template` value (`auto`, `coati` or
    a .jinja file); None leaves the tokenizer as saved. They travel with it into every checkpoint it saves."""
    tok = load_tokenizer(model_cfg.local_tokenizer_path, model_cfg.trust_remote_code)
    from coati_ray.data.template import use_chat_template

    if isinstance(rendering, str):
        use_chat_template(tok, rendering)
    elif getattr(rendering, "chat_template", None) is not None:  # a stage that renders conversations
        use_chat_template(tok, rendering.chat_template, getattr(rendering, "chat_template_kwargs", None),
                          getattr(rendering, "system_prompt", None))
    return tok


def load_causal_lm(path: str, dtype: str = "float32", trust_remote_code: bool = False, quantize: str = "none",
                   attn_implementation: Optional[str] = None):
    from transformers import AutoModelForCausalLM

    return _load(AutoModelForCausalLM, path, dtype, trust_remote_code, quantize, attn_implementation)


def load_backbone(path: str, dtype: str = "float32", trust_remote_code: bool = False, quantize: str = "none",
                  attn_implementation: Optional[str] = None):
    """The transformer without its LM head (for critics and reward models)."""
    from transformers import AutoModel

    return _load(AutoModel, path, dtype, trust_remote_code, quantize, attn_implementation)


def _load(auto_cls, path: str, dtype: str, trust_remote_code: bool, quantize: str,
          attn_implementation: Optional[str] = None):
    """`quantize` int8/int4: transformers' bitsandbytes path on CUDA; on a CPU (which transformers 4.51
    refuses without intel-extension-for-pytorch) the linear layers are swapped for bitsandbytes' own."""
    check_model_dir(path)
    from coati_ray.models import attention

    attention.install()  # decode attends to the KV cache without copying it (coati_ray/models/attention.py)
    kwargs = dict(torch_dtype=DTYPES[dtype], local_files_only=True, trust_remote_code=trust_remote_code)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if quantize != "none" and torch.cuda.is_available():
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=quantize == "int8", load_in_4bit=quantize == "int4", bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=DTYPES[dtype])
        kwargs["device_map"] = {"": torch.cuda.current_device()}
        return auto_cls.from_pretrained(path, **kwargs)
    model = auto_cls.from_pretrained(path, **kwargs)
    if quantize != "none":
        from coati_ray.models.quantize import quantize_linears

        quantize_linears(model, quantize)
    return model


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
    from coati_ray.config.checks import model_config

    vocab = model_config(key, path).get("vocab_size")
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise ModelError(f"model error: {key}: the tokenizer has {len(tokenizer)} tokens but '{path}' has a "
                         f"vocabulary of {vocab}; use the tokenizer saved with the model (or set tokenizer_path)")
