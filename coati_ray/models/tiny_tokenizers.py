"""Tokenizers of each kind today's chat models use, trained here on the repo's text (nothing is downloaded):
the same pipeline as the real ones' tokenizer.json, a small vocabulary.

    bytelevel-gpt2    byte-level BPE, GPT-2's split (the repo's own tiny tokenizer)
    bytelevel-llama3  byte-level BPE, Llama-3's split (digits in threes; also tiktoken's cl100k: Phi-4, OLMo-2)
    bytelevel-qwen2   byte-level BPE, Qwen2's split (single digits; Qwen2.5, Qwen3, R1-distill-Qwen)
    sp-llama2         SentencePiece BPE as Llama-2 ships it: spaces become `▁`, a `▁` is prepended to every
                      piece of text (the legacy normaliser), bytes fall back to <0xNN> (Llama-2, Mistral v0.3,
                      Phi-3)
    sp-gemma          SentencePiece BPE as Gemma ships it: spaces become `▁`, nothing prepended, byte fallback
"""

from __future__ import annotations

from typing import Iterable

KINDS = ("bytelevel-gpt2", "bytelevel-llama3", "bytelevel-qwen2", "sp-llama2", "sp-gemma")

# the pre-tokenizer split patterns of the real tokenizer.json files
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def train_kind(kind: str, texts: Iterable[str], vocab_size: int = 600, specials: tuple = ("<unk>", "<s>", "</s>")):
    """A `tokenizers.Tokenizer` of `kind` trained on `texts`, holding `specials` as added special tokens."""
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind '{kind}'; choose from {', '.join(KINDS)}")
    if kind.startswith("bytelevel"):
        return _bytelevel(kind, list(texts), vocab_size, specials)
    return _sentencepiece(kind, list(texts), vocab_size, specials)


def _bytelevel(kind: str, texts: list, vocab_size: int, specials: tuple):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    if kind == "bytelevel-gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        pattern = LLAMA3_SPLIT if kind == "bytelevel-llama3" else QWEN2_SPLIT
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _sentencepiece(kind: str, texts: list, vocab_size: int, specials: tuple):
    """Merges learnt within words (as SentencePiece splits on whitespace), then the tokenizer rebuilt the way
    Llama-2's / Gemma's tokenizer.json is: no pre-tokenizer, the `▁` handling in the normaliser, byte
    fallback tokens <0x00>..<0xFF> in the vocabulary."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    learner = Tokenizer(models.BPE(unk_token=specials[0]))
    learner.normalizer = normalizers.Replace(" ", "▁")
    # words split at spaces, newlines alone (Llama-2's and Gemma's vocabularies merge nothing across a newline)
    learner.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
        pre_tokenizers.Split("\n", behavior="isolated")])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False)
    learner.train_from_iterator(texts, trainer=trainer)
    learnt = json.loads(learner.to_str())["model"]
    vocab: dict = {}
    for token in list(specials) + BYTE_TOKENS + sorted(learnt["vocab"], key=learnt["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learnt["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token=specials[0], byte_fallback=True, fuse_unk=True))
    steps = [normalizers.Replace(" ", "▁")]
    if kind == "sp-llama2":
        steps.insert(0, normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(steps)
    parts = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if kind == "sp-llama2":
        parts.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(parts)
    tok.add_special_tokens(list(specials))
    return tok
