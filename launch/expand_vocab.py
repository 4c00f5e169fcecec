"""Expand a model's vocabulary (Colossal-LLaMA's init_tokenizer + init_model in one step):

    python -m launch.expand_vocab --source_model_and_tokenizer_path DIR \\
        --expand_tokens_file pieces.jsonl --target_model_path OUT

Every `{"piece": ...}` row of the jsonl that the source tokenizer does not already encode as one token
becomes one new token, with the next free id (existing ids are unchanged; repeats are skipped). The model
written to OUT (Hugging Face format, with its tokenizer) gets one new input-embedding and LM-head row per
new token, each the mean of the old vocabulary's rows (tied embeddings: one matrix). OUT must not exist:
nothing is overwritten; it is written to a new temporary sibling and renamed once complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

from coati_ray.errors import CoatiError, ConfigError, ModelError
from launch.common import fail, quiet_libraries


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.expand_vocab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source_model_and_tokenizer_path", "--source", dest="source", required=True,
                   help="Hugging Face model directory with its tokenizer")
    p.add_argument("--expand_tokens_file", "--pieces", dest="pieces", required=True,
                   help='jsonl of {"piece": ...} rows')
    p.add_argument("--target_model_path", "--output", dest="output", required=True,
                   help="new directory for the expanded model and tokenizer (written to a temporary sibling, then renamed)")
    return p


def check(args) -> None:
    """Bad input, in one line, before any model loads."""
    from coati_ray.models.loading import check_model_dir

    check_model_dir(args.source)
    if os.path.exists(args.output):
        raise ConfigError(f"config error: --target_model_path '{args.output}' exists; choose a new directory "
                          "(nothing is overwritten)")
    parent = os.path.dirname(os.path.abspath(args.output))
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"config error: --target_model_path '{args.output}': cannot write into '{parent}'; "
                          "choose a writable location")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    quiet_libraries()
    try:
        from coati_ray.models.vocab import read_pieces

        check(args)
        pieces = read_pieces(args.pieces)
        from coati_ray.models.loading import load_causal_lm
        from coati_ray.models.vocab import expand_model, expand_tokenizer

        tokenizer = _source_tokenizer(args.source)
        model = load_causal_lm(args.source, dtype=_stored_dtype(args.source))
        expansion = expand_tokenizer(tokenizer, pieces)
        expand_model(model, expansion)
    except CoatiError as e:
        return fail(e)
    report = {"source": os.path.abspath(args.source), "pieces_file": os.path.abspath(args.pieces),
              "old_vocab": expansion.first_id, "new_vocab": len(tokenizer), "added": len(expansion.added),
              "already_present": len(expansion.already_present), "repeated": expansion.repeated,
              "first_new_id": expansion.first_id}
    out = os.path.abspath(args.output)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out) + ".tmp-", dir=os.path.dirname(out))  # never an existing dir
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "expand_vocab.json"), "w") as f:
            json.dump({**report, "added_pieces": expansion.added, "already_present_pieces": expansion.already_present},
                      f, indent=1, ensure_ascii=False)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"expanded {report['old_vocab']} -> {report['new_vocab']} tokens: {report['added']} added, "
          f"{report['already_present']} already one token, {report['repeated']} repeated; written to {args.output}")
    return 0


def _source_tokenizer(path: str):
    """The source tokenizer exactly as saved (no pad token added: the output keeps its special tokens)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelError(f"model error: cannot load a tokenizer from '{path}' ({str(e).splitlines()[0]}); "
                         "--source_model_and_tokenizer_path must hold the tokenizer files too") from None


def _stored_dtype(path: str) -> str:
    """The dtype the checkpoint was saved in (so a bf16 model stays bf16 and old rows stay bit-equal)."""
    with open(os.path.join(path, "config.json")) as f:
        dtype = json.load(f).get("torch_dtype") or "float32"
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"


if __name__ == "__main__":
    sys.exit(main())
