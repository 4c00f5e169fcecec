"""Tiny models of today's chat families, each with its family's special tokens and chat template, written
here (nothing is downloaded): the repo's tokenizer plus the family's added tokens, a tiny random model of
the family's architecture, and the template its instruct models ship.

    qwen2-chatml  ChatML as Qwen2-Instruct writes it: <|im_start|>role\\n...<|im_end|>\\n, a default system
                  turn when the conversation has none, no BOS, EOS = <|im_end|>
    llama3        Llama-3-Instruct's header template: <|begin_of_text|><|start_header_id|>role<|end_header_id|>
                  \\n\\n...<|eot_id|>, contents trimmed, EOS = <|eot_id|>, no pad token (users pad with EOS)

The families of data/chat_templates (Qwen3, Llama-3.1, Gemma, Phi, Mistral, R1-distill, gpt-oss, ...: the
templates verbatim from the models' repositories, sources.json names each one's source and commit) get a
tokenizer of their own kind (coati_ray.models.tiny_tokenizers: byte-level BPE with the family's split, or
SentencePiece with Llama-2's or Gemma's normaliser) with the family's special tokens: `family_tokenizer(name)`.
`qwen3` is built as a tiny model too (tiny-qwen3: `make demo MODEL=tiny-qwen3-h128`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
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


TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "chat_templates")
# each family's tokenizer kind (coati_ray.models.tiny_tokenizers) and the architecture of its tiny model
TEMPLATE_FAMILIES = {
    "qwen3": ("bytelevel-qwen2", "qwen3"), "qwen2.5": ("bytelevel-qwen2", "qwen2"),
    "deepseek-r1-distill": ("bytelevel-qwen2", "qwen2"),
    "llama3.1": ("bytelevel-llama3", "llama"), "llama3.2": ("bytelevel-llama3", "llama"),
    "smollm3": ("bytelevel-llama3", "llama"), "mistral-nemo": ("bytelevel-llama3", "llama"),
    "phi4": ("bytelevel-llama3", "llama"), "phi4-mini": ("bytelevel-llama3", "llama"),
    "glm4": ("bytelevel-llama3", "llama"), "gpt-oss": ("bytelevel-llama3", "llama"),
    "olmo2": ("bytelevel-llama3", "llama"), "llama3-original": ("bytelevel-llama3", "llama"),
    "merlinite": ("sp-llama2", "llama"),
    "llama2": ("sp-llama2", "llama"), "mistral-v0.3": ("sp-llama2", "llama"), "phi3": ("sp-llama2", "llama"),
    "gemma2": ("sp-gemma", "llama"), "gemma3": ("sp-gemma", "llama"),
}


@lru_cache(maxsize=1)
def template_sources() -> dict:
    """data/chat_templates/sources.json: each family's model, the repository and commit its template was copied
    from, and its tokens (bos, eos, pad, the added tokens marked special and not)."""
    with open(os.path.join(TEMPLATE_DIR, "sources.json"), encoding="utf-8") as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


def family_template(name: str) -> str:
    with open(os.path.join(TEMPLATE_DIR, f"{name}.jinja"), encoding="utf-8", newline="") as f:
        return f.read()


def available_families() -> list[str]:
    """The families whose template was collected (data/chat_templates/<name>.jinja)."""
    return [name for name in TEMPLATE_FAMILIES if name in template_sources()
            and os.path.isfile(os.path.join(TEMPLATE_DIR, f"{name}.jinja"))]


def family_tokenizer(name: str, vocab_size: int = 600):
    """A tokenizer of family `name`'s kind, trained on the repo's text, with the family's special tokens (and
    added tokens that are not special, as Qwen3's <think>) and its chat template."""
    from tokenizers import AddedToken
    from transformers import GemmaTokenizerFast, LlamaTokenizerFast, PreTrainedTokenizerFast

    from coati_ray.models.tiny import repo_texts
    from coati_ray.models.tiny_tokenizers import train_kind

    spec, (kind, _) = template_sources()[name], TEMPLATE_FAMILIES[name]
    roles = {"bos_token": spec.get("bos"), "eos_token": spec.get("eos"), "pad_token": spec.get("pad")}
    if kind.startswith("sp-"):
        roles["unk_token"] = "<unk>"
    specials = list(dict.fromkeys([t for t in roles.values() if t] + list(spec.get("special_added") or [])))
    raw = train_kind(kind, repo_texts(), vocab_size, tuple(specials))
    cls = {"sp-llama2": LlamaTokenizerFast, "sp-gemma": GemmaTokenizerFast}.get(kind, PreTrainedTokenizerFast)
    extra = {"legacy": True} if kind == "sp-llama2" else {}
    tok = cls(tokenizer_object=raw, **{k: v for k, v in roles.items() if v}, **extra)
    for key, value in roles.items():
        if value is None:
            setattr(tok, key, None)
    plain = [t for t in spec.get("nonspecial_added") or [] if t not in tok.get_vocab()]
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain])
    tok.chat_template = family_template(name)
    return tok


def build_family_model(name: str, out_dir: str, hidden: int = 64, layers: int = 2, heads: int = 4,
                       seed: int = 0) -> str:
    """A tiny random model of template family `name` (its architecture, tokenizer and template), saved to
    `out_dir`; its generation config stops at the family's stop tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    from coati_ray.models.tiny import tiny_config

    tok = family_tokenizer(name)
    torch.manual_seed(seed)
    config = tiny_config(TEMPLATE_FAMILIES[name][1], tok, hidden=hidden, layers=layers, heads=heads)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    stops = [tok.convert_tokens_to_ids(t) for t in template_sources()[name].get("stop") or [] if t in tok.get_vocab()]
    model.generation_config.eos_token_id = stops or tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir
