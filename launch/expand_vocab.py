"""Expand a model's vocabulary (Colossal-LLaMA's init_tokenizer + init_model in one step):

    python -m launch.expand_vocab --source_model_and_tokenizer_path DIR \\
        --expand_tokens_file pieces.jsonl --target_model_path OUT

Every `{"piece": ...}` row of the jsonl that the source tokenizer does not already hold becomes one new
token, with the next free id (existing ids are unchanged; repeats are skipped). The model written to
OUT (Hugging Face format, with its tokenizer) gets one new input-embedding and LM-head row per new
token, each the mean of the old rows of the tokens its piece used to split into (tied embeddings: one
matrix). OUT must not exist:
nothing is overwritten; it is written to a new temporary sibling and renamed once complete.
"""

from __future__ import annotations

import argparse
import os
import sys

from coati_ray.errors import CoatiError, ConfigError
from launch.common import fail, quiet_libraries


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.expand_vocab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source_model_and_tokenizer_path", "--source", dest="source", required=True,
                   help="Hugging Face model directory with its tokenizer, or a hub id")
    p.add_argument("--revision", default=None, help="hub revision of the source (branch, tag or commit)")
    p.add_argument("--expand_tokens_file", "--pieces", dest="pieces", required=True,
                   help='jsonl of {"piece": ...} rows')
    p.add_argument("--target_model_path", "--output", dest="output", required=True,
                   help="new directory for the expanded model and tokenizer (written to a temporary sibling, then renamed)")
    return p


def check(args) -> None:
    """Bad input, in one line, before any model loads."""
    from coati_ray.models.hub import pin
    from coati_ray.models.loading import check_model_dir
    from coati_ray.models.vocab import read_pieces

    args.source = pin(args.source, args.revision, "--source_model_and_tokenizer_path").local_dir
    check_model_dir(args.source)
    if os.path.exists(args.output):
        raise ConfigError(f"config error: --target_model_path '{args.output}' exists; choose a new directory "
                          "(nothing is overwritten)")
    parent = os.path.dirname(os.path.abspath(args.output))
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"config error: --target_model_path '{args.output}': cannot write into '{parent}'; "
                          "choose a writable location")
    read_pieces(args.pieces)


def main(argv=None) -> int:
    from launch.seed_flags import seed_argv

    try:  # the seed's own flags (launch/seed_flags.py)
        argv = seed_argv("expand_vocab", argv)
    except CoatiError as e:
        return fail(e)
    args = parser().parse_args(argv)
    quiet_libraries()
    try:
        check(args)
        from coati_ray.models.vocab import expand_checkpoint

        report = expand_checkpoint(args.source, args.pieces, args.output)
    except CoatiError as e:
        return fail(e)
    print(f"expanded {report['old_vocab']} -> {report['new_vocab']} tokens: {report['added']} added, "
          f"{report['already_present']} already present, {report['repeated']} repeated; written to {args.output}")
    if report["unreachable"]:
        print(f"note: {report['unreachable']} added piece(s) are never produced by the tokenizer's segmentation "
              "(unreachable_pieces in expand_vocab.json): their rows stay unused; add the pieces that spell them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
