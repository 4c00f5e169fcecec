"""Tokenize jsonl data for continual pretraining or SFT, as Colossal-LLaMA lays it out:

    python -m launch.prepare_data --mode pretrain --data_input_dirs DIR1,DIR2 --tokenizer_dir MODEL \\
        --data_output_dirs OUT [--max_length 4096] [--num_spliced_dataset_bins 10] [--seed 42]

pretrain rows: {"source", "target", "category"} (loss on target; one category's samples spliced up to
max_length); sft rows: {"messages": [{"from", "content"}, ...]} (not spliced). OUT gets `cache/` (the
tokenized parts, keyed by the inputs, tokenizer and settings), `jsonl/part-NNNNN.jsonl` and
`arrow/part-NNNNN/` (`datasets.save_to_disk`; give these folders to `launch.pretrain` / SFT's
data.train_path), one part per (category, bin), and `prepared.json` (written last). Deterministic for a
seed; a rerun with the same inputs and settings reuses the cache; OUT prepared from anything else is
refused, never overwritten.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys

from coati_ray.errors import CoatiError, ConfigError
from launch.common import fail, quiet_libraries

TOKENIZER_FILES = ("tokenizer", "special_tokens", "vocab", "merges", "added_tokens")


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


def cache_key(args, files: list[str]) -> str:
    """What the output depends on: mode, settings, the tokenizer's files and every input file's bytes."""
    h = hashlib.sha256(json.dumps([args.mode, args.max_length, args.num_spliced_dataset_bins, args.seed]).encode())
    tokenizer_files = sorted(f for f in os.listdir(args.tokenizer_dir) if f.startswith(TOKENIZER_FILES))
    for path in [os.path.join(args.tokenizer_dir, f) for f in tokenizer_files] + files:
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def check(args) -> list[str]:
    from coati_ray.data.prepare import jsonl_files

    if args.max_length < 8:
        raise ConfigError(f"config error: --max_length must be >= 8, got {args.max_length}")
    if args.num_spliced_dataset_bins < 1:
        raise ConfigError(f"config error: --num_spliced_dataset_bins must be >= 1, got {args.num_spliced_dataset_bins}")
    if not os.path.isdir(args.tokenizer_dir):
        raise ConfigError(f"config error: --tokenizer_dir '{args.tokenizer_dir}' is not a directory")
    return jsonl_files([d for d in args.data_input_dirs.split(",") if d])


def save_parts(parts: list[dict], root: str, jsonl_too: bool) -> None:
    """Each part as `root/arrow/part-NNNNN` (save_to_disk) and, with jsonl_too, `root/jsonl/part-NNNNN.jsonl`."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    for i, part in enumerate(parts):
        columns = {"input_ids": [r["input_ids"] for r in part["rows"]], "labels": [r["labels"] for r in part["rows"]],
                   "category": [part["category"]] * len(part["rows"]), "bin": [part["bin"]] * len(part["rows"])}
        Dataset.from_dict(columns).save_to_disk(os.path.join(root, "arrow", f"part-{i:05d}"))
        if jsonl_too:
            os.makedirs(os.path.join(root, "jsonl"), exist_ok=True)
            with open(os.path.join(root, "jsonl", f"part-{i:05d}.jsonl"), "w") as f:
                for j in range(len(part["rows"])):
                    f.write(json.dumps({k: v[j] for k, v in columns.items()}) + "\n")


def load_parts(root: str, manifest: dict) -> list[dict]:
    from datasets import load_from_disk

    parts = []
    for i, p in enumerate(manifest["parts"]):
        ds = load_from_disk(os.path.join(root, "arrow", f"part-{i:05d}"))
        parts.append({"category": p["category"], "bin": p["bin"],
                      "rows": [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in ds]})
    return parts


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    quiet_libraries()
    try:
        files = check(args)
        key = cache_key(args, files)
        out = args.data_output_dirs
        marker = os.path.join(out, "prepared.json")
        if os.path.exists(marker):
            with open(marker) as f:
                if json.load(f)["key"] == key:
                    print(f"{out} is already prepared from these inputs and settings (key {key}): nothing to do")
                    return 0
            raise ConfigError(f"config error: --data_output_dirs '{out}' holds data prepared from other inputs or "
                              "settings; choose a new directory (nothing is overwritten)")
        partial = os.path.join(out, "prepared.partial")  # written before our jsonl/ and arrow/, removed after
        if any(os.path.exists(os.path.join(out, sub)) for sub in ("jsonl", "arrow")) and not os.path.exists(partial):
            raise ConfigError(f"config error: --data_output_dirs '{out}' already has jsonl/ or arrow/ folders that this "
                              "command did not write; choose a new directory (nothing is overwritten)")
        cache = os.path.join(out, "cache", key)
        if os.path.exists(os.path.join(cache, "prepared.json")):
            with open(os.path.join(cache, "prepared.json")) as f:
                manifest = json.load(f)
            parts = load_parts(cache, manifest)
            print(f"reusing the tokenized cache {cache}")
        else:
            from coati_ray.data.prepare import prepare
            from coati_ray.models.loading import load_tokenizer

            tokenizer = load_tokenizer(args.tokenizer_dir)
            parts, counts = prepare(args.mode, files, tokenizer, args.max_length, args.num_spliced_dataset_bins,
                                    args.seed)
            manifest = {"key": key, "mode": args.mode, "inputs": [os.path.abspath(f) for f in files],
                        "tokenizer_dir": os.path.abspath(args.tokenizer_dir), "max_length": args.max_length,
                        "num_spliced_dataset_bins": args.num_spliced_dataset_bins, "seed": args.seed, **counts,
                        "parts": [{"name": f"part-{i:05d}", "category": p["category"], "bin": p["bin"],
                                   "samples": len(p["rows"]), "tokens": sum(len(r["input_ids"]) for r in p["rows"])}
                                  for i, p in enumerate(parts)]}
            shutil.rmtree(cache, ignore_errors=True)  # an interrupted cache of this key (no prepared.json)
            save_parts(parts, cache, jsonl_too=False)
            with open(os.path.join(cache, "prepared.json"), "w") as f:
                json.dump(manifest, f, indent=1, ensure_ascii=False)
        with open(partial, "w") as f:
            f.write(key)
        for sub in ("jsonl", "arrow"):  # leftovers of our own interrupted run
            shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
        save_parts(parts, out, jsonl_too=True)
        with open(marker, "w") as f:
            json.dump(manifest, f, indent=1, ensure_ascii=False)
        os.remove(partial)
    except CoatiError as e:
        return fail(e)
    print(f"prepared {manifest['rows']} rows ({manifest['truncated']} truncated) of {manifest['categories']} "
          f"categories into {manifest['samples']} samples in {len(manifest['parts'])} parts: {out}/arrow/part-*")
    return 0


if __name__ == "__main__":
    sys.exit(main())
