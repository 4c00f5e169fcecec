"""Tokenize jsonl data for continual pretraining or SFT, as Colossal-LLaMA lays it out:

    python -m launch.prepare_data --mode pretrain --data_input_dirs DIR1,DIR2 --tokenizer_dir MODEL \\
        --data_output_dirs OUT [--max_length 4096] [--num_spliced_dataset_bins 10] [--seed 42]

pretrain rows: {"source", "target", "category"} (loss on target; one category's samples spliced up to
max_length); sft rows: {"messages": [{"from", "content"}, ...]} (not spliced). OUT gets `cache/` (the
tokenized parts, keyed by the inputs, tokenizer and settings), `jsonl/part-NNNNN.jsonl` and
`arrow/part-NNNNN/` (`datasets.save_to_disk`; give OUT to `launch.pretrain`'s data.train_path), one
part per (category, bin), and `prepared.json` (written last). Deterministic for a seed; a rerun with
the same inputs and settings reuses the cache; OUT prepared from anything else is refused, never
overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys

from coati_ray.errors import CoatiError, ConfigError
from launch.common import fail, quiet_libraries


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.prepare_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("pretrain", "sft"), required=True)
    p.add_argument("--data_input_dirs", required=True, help="comma-separated directories of .jsonl files")
    p.add_argument("--tokenizer_dir", required=True, help="Hugging Face tokenizer (or model) directory")
    p.add_argument("--data_output_dirs", required=True, help="output directory: cache/, jsonl/, arrow/")
    p.add_argument("--max_length", type=int, default=4096, help="tokens per (spliced) sample")
    p.add_argument("--num_spliced_dataset_bins", type=int, default=10, help="bins per category (buckets)")
    p.add_argument("--seed", type=int, default=42, help="shuffle of each category before binning")
    return p


def main(argv=None) -> int:
    from launch.seed_flags import seed_argv

    try:  # the seed's own flags (launch/seed_flags.py)
        argv = seed_argv("prepare_data", argv)
    except CoatiError as e:
        return fail(e)
    args = parser().parse_args(argv)
    quiet_libraries()
    try:
        if args.max_length < 8:
            raise ConfigError(f"config error: --max_length must be >= 8, got {args.max_length}")
        if args.num_spliced_dataset_bins < 1:
            raise ConfigError(f"config error: --num_spliced_dataset_bins must be >= 1, got {args.num_spliced_dataset_bins}")
        if not os.path.isdir(args.tokenizer_dir):
            raise ConfigError(f"config error: --tokenizer_dir '{args.tokenizer_dir}' is not a directory")
        from coati_ray.data.prepare import prepare_to_disk

        prepare_to_disk(args.mode, [d for d in args.data_input_dirs.split(",") if d], args.tokenizer_dir,
                        args.data_output_dirs, args.max_length, args.num_spliced_dataset_bins, args.seed)
    except CoatiError as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
