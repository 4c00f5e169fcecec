"""Tiny models of today's chat families, each with its family's special tokens and chat template, written
here (nothing is downloaded): the repo's tokenizer plus the family's added tokens, a tiny random model of
the family's architecture, and the template its instruct models ship.

    qwen2-chatml  ChatML as Qwen2-Instruct writes it: <|im_start|>role\\n...<|im_end|>\\n, a default system
                  turn when the conversation has none, no BOS, EOS = <|im_end|>
    llama3        Llama-3-Instruct's header template: <|begin_of_text|><|start_header_id|>role<|end_header_id|>
                  \\n\\n...<|eot_id|>, contents trimmed, EOS = <|eot_id|>, no pad token (users pad with EOS)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

# Qwen2-Instruct's tokenizer_config.json chat_template, verbatim.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Meta-Llama-3-8B-Instruct's tokenizer_config.json chat_template, verbatim.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ChatFamily:
    architecture: str  # a family of coati_ray.models.tiny.FAMILIES
    template: str
    added: tuple[str, ...]  # special tokens the family adds to the vocabulary
    tokens: dict = field(default_factory=dict)  # bos/eos/pad/unk: a token, or None to unset it
    stop: tuple[str, ...] = ()  # what the generation config lists as EOS, as instruct models do


CHAT_FAMILIES = {
    "qwen2-chatml": ChatFamily("qwen2", CHATML_TEMPLATE, ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                               {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
                               ("<|im_end|>", "<|endoftext|>")),
    "llama3": ChatFamily("llama", LLAMA3_TEMPLATE, ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                                    "<|end_header_id|>", "<|eot_id|>"),
                         {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": None},
                         ("<|end_of_text|>", "<|eot_id|>")),
}


def chat_tokenizer(base_dir: str, name: str):
    """The repo's tokenizer (from `base_dir`) turned into family `name`'s: its special tokens and template."""
    from transformers import AutoTokenizer

    spec = CHAT_FAMILIES[name]
    tok = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    tok.add_special_tokens({"additional_special_tokens": list(spec.added)})
    for key, value in spec.tokens.items():
        setattr(tok, key, value)
    tok.chat_template = spec.template
    return tok


def build_chat_model(name: str, base_tokenizer_dir: str, out_dir: str, hidden: int = 64, layers: int = 2,
                     heads: int = 4, seed: int = 0) -> str:
    """A tiny random model of family `name` with its tokenizer and template, saved to `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM

    from coati_ray.models.tiny import tiny_config

    spec = CHAT_FAMILIES[name]
    tok = chat_tokenizer(base_tokenizer_dir, name)
    torch.manual_seed(seed)
    config = tiny_config(spec.architecture, tok, hidden=hidden, layers=layers, heads=heads)
    model = AutoModelForCausalLM.from_config(config)
    pad: Optional[int] = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.generation_config.pad_token_id = pad
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids(t) for t in spec.stop]
    model.generation_config.bos_token_id = tok.bos_token_id
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir
