"""Tiny-model kit: a tokenizer trained on text in this repo and tiny random models of real families.

Everything downstream loads these with `from_pretrained` from local directories, exactly as a
user's real checkpoint would be loaded; nothing is downloaded.

    python -m coati_ray.models.tiny --out assets            # tokenizer + all families + chat families
    python -m coati_ray.models.tiny --out assets --families llama --chat qwen2-chatml --hidden 128 --layers 4
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from typing import Iterable, Optional

import torch

FAMILIES = ("gpt2", "opt", "bloom", "llama", "qwen2")
# families of data/chat_templates built as tiny models beside the chat families (the others: tokenizers in tests)
BUILT_TEMPLATE_FAMILIES = ("qwen3",)
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


# The sorting task's datasets. Colossal-LLaMA's samples (data/pretrain, sft_bilingual, vocab) stay out: their
# pieces must be new to the tokenizer for vocabulary expansion to add them, and the demos' tokenizer (so
# their figures) must not change when a sample is added.
TOKENIZER_CORPUS = ("pref", "prompts", "ptx", "sft")


def _coati_text(messages: list[dict]) -> str:
    """A conversation in Coati's layout without BOS/EOS, as the tokenizer's training text has always been
    rendered (so the tokenizer, and every demo figure's model, stays byte-identical)."""
    return "".join(("" if i == 0 else "\n") + "Human: " + m["content"] if m["from"] in ("human", "user")
                   else "\nAssistant: " + m["content"] for i, m in enumerate(messages))


def repo_texts(root: str = REPO_ROOT) -> Iterable[str]:
    """Every string value in the sorting task's data/*/*.jsonl files, rendered in Coati's layout."""
    paths = [p for d in TOKENIZER_CORPUS for p in glob.glob(os.path.join(root, "data", d, "**", "*.jsonl"), recursive=True)]
    for path in sorted(paths):
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if "messages" in row:
                    yield _coati_text(row["messages"])
                else:
                    yield "\n".join(str(v) for v in row.values() if isinstance(v, str))
    yield "Human: " + "\nAssistant: "


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer (GPT-2 style: any UTF-8 text round-trips), as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    fast.padding_side = "right"
    return fast


def tiny_config(family: str, tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, max_positions: int = 512):
    """A small random config of a real model family, with the tokenizer's special-token ids."""
    from transformers import BloomConfig, GPT2Config, LlamaConfig, OPTConfig, Qwen2Config

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    vocab = len(tokenizer)
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab, n_positions=max_positions, n_embd=hidden, n_layer=layers, n_head=heads, **ids)
    if family == "opt":
        return OPTConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, ffn_dim=hidden * 4,
                         num_attention_heads=heads, max_position_embeddings=max_positions,
                         word_embed_proj_dim=hidden, **ids)
    if family == "bloom":
        return BloomConfig(vocab_size=vocab, hidden_size=hidden, n_layer=layers, n_head=heads, **ids)
    if family == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                           max_position_embeddings=max_positions, tie_word_embeddings=False, **ids)
    if family == "qwen3":
        from transformers import Qwen3Config

        return Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=hidden // heads,
                           max_position_embeddings=max_positions, tie_word_embeddings=False,
                           use_sliding_window=False, sliding_window=None, **ids)
    if family == "qwen2":
        return Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                           max_position_embeddings=max_positions, tie_word_embeddings=False,
                           use_sliding_window=False, sliding_window=None, **ids)
    raise ValueError(f"unknown family '{family}'; choose from {', '.join(FAMILIES)}")


def build_tiny_model(family: str, tokenizer, out_dir: str, hidden: int = 64, layers: int = 2, heads: int = 4,
                     seed: int = 0) -> str:
    """Save a randomly initialised causal LM of `family` plus the tokenizer to `out_dir` (HF format)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family, tokenizer, hidden=hidden, layers=layers, heads=heads)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_assets(out: str, families: Optional[Iterable[str]] = None, hidden: int = 64, layers: int = 2,
                 heads: int = 4, vocab_size: int = 512, suffix: str = "",
                 chat: Optional[Iterable[str]] = None) -> dict[str, str]:
    """Tokenizer at `out/tokenizer`, models at `out/models/tiny-<family><suffix>` and, for the chat families
    (coati_ray.models.tiny_chat; None: all), `out/models/tiny-<name><suffix>`; returns the model dirs."""
    from coati_ray.models.tiny_chat import CHAT_FAMILIES, build_chat_model, build_family_model

    tok_dir = os.path.join(out, "tokenizer")
    if os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    else:
        tokenizer = train_tokenizer(repo_texts(), vocab_size=vocab_size)
        tokenizer.save_pretrained(tok_dir)
    paths = {}
    for family in families or FAMILIES:
        paths[family] = build_tiny_model(family, tokenizer, os.path.join(out, "models", f"tiny-{family}{suffix}"),
                                         hidden=hidden, layers=layers, heads=heads)
    for name in list(CHAT_FAMILIES) + list(BUILT_TEMPLATE_FAMILIES) if chat is None else chat:
        target = os.path.join(out, "models", f"tiny-{name}{suffix}")
        if name in CHAT_FAMILIES:
            paths[name] = build_chat_model(name, tok_dir, target, hidden=hidden, layers=layers, heads=heads)
        else:
            paths[name] = build_family_model(name, target, hidden=hidden, layers=layers, heads=heads)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="assets")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--suffix", default="", help="appended to each model directory name")
    parser.add_argument("--chat", nargs="*", default=None, help="chat families with their own templates "
                        "(coati_ray.models.tiny_chat; default: all)")
    args = parser.parse_args()
    paths = build_assets(args.out, args.families, args.hidden, args.layers, args.heads, args.vocab_size, args.suffix,
                         args.chat)
    for family, path in paths.items():
        print(f"tiny {family}: {path}")


if __name__ == "__main__":
    main()
