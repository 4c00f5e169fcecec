"""Vocabulary expansion, as Colossal-LLaMA does it: new pieces become single tokens after the old ones,
and each new input-embedding and LM-head row starts at the mean of the old rows of the tokens the piece used
to split into (Colossal-LLaMA's init_model), so a new token starts with roughly the meaning of its spelling.
A SentencePiece tokenizer gets the pieces in its own model (Colossal-LLaMA's init_tokenizer); any other gets
them as whole-word added tokens (see expand_tokenizer). Text without a new piece tokenizes as before.

Rows of old tokens are unchanged, so the embeddings of old text are too. Its outputs are not quite: the new
LM-head rows add logits, so they take some probability mass from the old tokens until training sorts them out.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import torch
from torch import nn

from coati_ray.errors import DataError, ModelError


@dataclass
class Expansion:
    """What expand_tokenizer did: the pieces added (in id order from `first_id`) and those skipped."""

    first_id: int
    added: list[str] = field(default_factory=list)
    pieces_as_old_ids: dict = field(default_factory=dict)       # an added piece -> the old ids it split into
    already_present: list[str] = field(default_factory=list)   # already one token of the source tokenizer
    repeated: int = 0                                           # later copies of a piece in the file
    sentencepiece_model: bytes | None = None                    # the grown SentencePiece model, if any

    @property
    def new_ids(self) -> range:
        return range(self.first_id, self.first_id + len(self.added))


def read_pieces(path: str) -> list[str]:
    """The `piece` of every row of a jsonl file (`{"piece": "你好"}`); a bad row names its file and line."""
    from coati_ray.data.loading import check_utf8

    pieces = []
    if os.path.isfile(path):
        check_utf8(path)  # names the line of a bad byte
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"data error: cannot read '{path}' ({e.strerror}); point --expand_tokens_file at a "
                        "jsonl of {\"piece\": ...} rows") from None
    with f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise DataError(f"data error: {path}:{line_no} is not valid JSON; each line must be one "
                                "{\"piece\": ...} object") from None
            piece = row.get("piece") if isinstance(row, dict) else None
            if not isinstance(piece, str) or not piece.strip():
                raise DataError(f"data error: {path}:{line_no} has no non-empty string 'piece'; each line must "
                                "be like {\"piece\": \"你好\"}")
            pieces.append(piece)
    if not pieces:
        raise DataError(f"data error: '{path}' holds no pieces; add {{\"piece\": ...}} rows")
    return pieces


def sentencepiece_file(tokenizer) -> str | None:
    """The SentencePiece model behind `tokenizer` (Llama-2, Mistral, Baichuan...), or None for one without
    (byte-level BPE: GPT-2, Llama-3, Qwen2)."""
    path = getattr(tokenizer, "vocab_file", None)
    return path if isinstance(path, str) and path.endswith(".model") and os.path.isfile(path) else None


def old_ids_of(tokenizer, piece: str) -> list[int]:
    """The ids `piece` splits into under `tokenizer`, without the lone SentencePiece dummy prefix ("▁") that
    encoding a piece on its own puts before it: the piece means its letters, not a space."""
    ids = tokenizer.encode(piece, add_special_tokens=False)
    if len(ids) > 1 and tokenizer.convert_ids_to_tokens(ids[0]) == "\u2581" and not piece.startswith((" ", "\u2581")):
        ids = ids[1:]
    return ids


def expand_tokenizer(tokenizer, pieces: list[str]):
    """(tokenizer, Expansion): `tokenizer` grown by each new piece as one token with the next free id; existing
    ids are unchanged. A piece already in the vocabulary or already encoded as one token, and a piece's repeats,
    are skipped.

    How a new piece takes part in segmentation depends on the tokenizer, and text without a new piece
    tokenizes exactly as before either way:
    - a SentencePiece tokenizer gets each piece appended to its model as an ordinary piece of score 0, as
      Colossal-LLaMA's init_tokenizer does; the piece is then used wherever SentencePiece's own segmentation
      reaches it (a BPE model: by merging two pieces that spell it; a unigram model: wherever it fits);
    - any other tokenizer (byte-level BPE has no way to add a piece to its merges without changing old text)
      gets each piece as an added token that matches only as a whole word: "rt" is not found in "sort", and a
      piece inside unspaced CJK text ("人工智能" in "我爱人工智能") is not found either, only between spaces or
      punctuation.
    """
    out = Expansion(first_id=len(tokenizer))
    vocab, seen = tokenizer.get_vocab(), set()
    for piece in pieces:
        if piece in seen:
            out.repeated += 1
            continue
        seen.add(piece)
        old_ids = old_ids_of(tokenizer, piece)
        if piece in vocab or len(old_ids) == 1:
            out.already_present.append(piece)
        else:
            out.added.append(piece)
            out.pieces_as_old_ids[piece] = old_ids
    model_file = sentencepiece_file(tokenizer)
    if model_file is not None:
        tokenizer = grow_sentencepiece(tokenizer, model_file, out)
    else:
        from tokenizers import AddedToken

        tokenizer.add_tokens([AddedToken(p, single_word=True, normalized=False) for p in out.added])
    ids = tokenizer.convert_tokens_to_ids(out.added)
    if ids != list(out.new_ids) or len(tokenizer) != out.new_ids.stop:
        raise ModelError(f"model error: the tokenizer did not give the {len(out.added)} new pieces the ids "
                         f"{out.first_id}..{out.new_ids.stop - 1} (got {ids[:5]}...); it may hold added tokens "
                         "outside its vocabulary: remove them or expand from its base tokenizer")
    return tokenizer, out


def grow_sentencepiece(tokenizer, model_file: str, expansion: Expansion):
    """A tokenizer of `tokenizer`'s class loaded from its SentencePiece model with `expansion.added` appended
    as ordinary pieces (score 0, Colossal-LLaMA's init_tokenizer); a fast tokenizer is converted from it. The
    grown model's bytes are kept in `expansion.sentencepiece_model` for saving beside the tokenizer."""
    from transformers.convert_slow_tokenizer import import_protobuf

    model_pb2 = import_protobuf()  # the copy already loaded (sentencepiece's or transformers'): one per process
    proto = model_pb2.ModelProto()
    with open(model_file, "rb") as f:
        proto.ParseFromString(f.read())
    for piece in expansion.added:
        proto.pieces.append(model_pb2.ModelProto.SentencePiece(piece=piece, score=0.0))
    expansion.sentencepiece_model = proto.SerializeToString()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for name in os.listdir(tmp):
            if name == "tokenizer.json":
                os.remove(os.path.join(tmp, name))  # else the fast tokenizer would load the old vocabulary
        with open(os.path.join(tmp, tokenizer.vocab_files_names["vocab_file"]), "wb") as f:
            f.write(expansion.sentencepiece_model)
        return type(tokenizer).from_pretrained(tmp, local_files_only=True)


def unreachable_pieces(tokenizer, expansion: Expansion) -> list[str]:
    """Added pieces that the grown tokenizer does not produce even for the piece's own text: in a
    SentencePiece BPE model a piece is reached only by merging two pieces that spell it, so one whose halves
    are not pieces (a long phrase, or characters the model spells in bytes) stays a row nothing uses."""
    return [piece for new_id, piece in zip(expansion.new_ids, expansion.added)
            if new_id not in old_ids_of(tokenizer, piece)]


def mean_init_rows(weight: torch.Tensor, old_rows: int, new_rows: range) -> None:
    """Set `weight[new_rows]` to the mean of `weight[:old_rows]` (computed in float32), in place.

    weight: (vocab, hidden) or (vocab,) for a bias; old_rows: rows of the old vocabulary; new_rows: the
    rows to set.
    """
    with torch.no_grad():
        mean = weight[:old_rows].float().mean(dim=0)
        weight[new_rows.start:new_rows.stop] = mean.to(weight.dtype)


def piece_init_rows(weight: torch.Tensor, expansion: Expansion, old_rows: int) -> None:
    """Each new piece's row of `weight` (vocab, hidden) or (vocab,) = the mean (in float32) of the old rows of
    the ids it split into under the old tokenizer, in place; a piece with no such id keeps what it had."""
    with torch.no_grad():
        for new_id, piece in zip(expansion.new_ids, expansion.added):
            ids = [i for i in expansion.pieces_as_old_ids.get(piece, []) if i < old_rows]
            if ids:
                weight[new_id] = weight[ids].float().mean(dim=0).to(weight.dtype)


def expand_model(model: nn.Module, expansion: Expansion) -> None:
    """Grow `model` (an HF causal LM, in place) to hold the expansion's tokens: its input embeddings and
    its LM head (one matrix when they are tied; a head bias too) get the new rows, each the mean of the old
    rows of the tokens its piece used to split into. Rows of old ids, and spare rows the model had beyond the
    new ids, are left bit-equal. A model smaller than its old tokenizer gets the missing old rows set to the
    mean of the old vocabulary."""
    size = model.get_input_embeddings().weight.shape[0]
    old_rows = min(expansion.first_id, size)
    fill = range(old_rows, expansion.new_ids.stop)
    if fill.stop > size:
        model.resize_token_embeddings(fill.stop, mean_resizing=False)
    inputs = model.get_input_embeddings().weight
    mean_init_rows(inputs, old_rows, fill)  # every filled row first, so a piece without old ids has the mean
    piece_init_rows(inputs, expansion, old_rows)
    head = model.get_output_embeddings()
    if head is None:
        return
    if head.weight.data_ptr() != inputs.data_ptr():
        mean_init_rows(head.weight, old_rows, fill)
        piece_init_rows(head.weight, expansion, old_rows)
    if getattr(head, "bias", None) is not None:  # a biased head: a new logit starts at its pieces' mean bias
        mean_init_rows(head.bias, old_rows, fill)
        piece_init_rows(head.bias, expansion, old_rows)


def source_tokenizer(path: str):
    """The source tokenizer exactly as saved (no pad token added: the output keeps its special tokens)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelError(f"model error: cannot load a tokenizer from '{path}' ({str(e).splitlines()[0]}); "
                         "the source directory must hold the tokenizer files too") from None


def stored_dtype(path: str) -> str:
    """The dtype the checkpoint was saved in (so a bf16 model stays bf16 and old rows stay bit-equal)."""
    with open(os.path.join(path, "config.json")) as f:
        dtype = json.load(f).get("torch_dtype") or "float32"
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"


def expand_checkpoint(source: str, pieces_path: str, output: str) -> dict:
    """Expand the model + tokenizer in `source` with the pieces of `pieces_path` into the new directory
    `output` (written to a fresh temporary sibling, then renamed); returns the report also saved there
    as expand_vocab.json."""
    from coati_ray.models.loading import load_causal_lm

    pieces = read_pieces(pieces_path)
    tokenizer = source_tokenizer(source)
    model = load_causal_lm(source, dtype=stored_dtype(source))
    tokenizer, expansion = expand_tokenizer(tokenizer, pieces)
    expand_model(model, expansion)
    unreachable = unreachable_pieces(tokenizer, expansion)
    report = {"source": os.path.abspath(source), "pieces_file": os.path.abspath(pieces_path),
              "old_vocab": expansion.first_id, "new_vocab": len(tokenizer), "added": len(expansion.added),
              "already_present": len(expansion.already_present), "repeated": expansion.repeated,
              "unreachable": len(unreachable), "first_new_id": expansion.first_id}
    out = os.path.abspath(output)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out) + ".tmp-", dir=os.path.dirname(out))  # never an existing dir
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if expansion.sentencepiece_model is not None:  # the tokenizer was loaded from a file now gone
            with open(os.path.join(tmp, tokenizer.vocab_files_names["vocab_file"]), "wb") as f:
                f.write(expansion.sentencepiece_model)
        with open(os.path.join(tmp, "expand_vocab.json"), "w", encoding="utf-8") as f:
            json.dump({**report, "added_pieces": expansion.added, "already_present_pieces": expansion.already_present,
                       "unreachable_pieces": unreachable},
                      f, indent=1, ensure_ascii=False)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report
