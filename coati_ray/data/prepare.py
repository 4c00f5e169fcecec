"""Colossal-LLaMA's data preparation: jsonl directories -> tokenized samples in bins per category.

Pretraining rows are `{"source", "target", "category"}` (the loss is on `target` only); the samples of
one category are spliced together up to `max_length` tokens, so a step wastes no padding. SFT rows are
`{"messages": [{"from", "content"}, ...]}` (loss on assistant turns; `category` optional) and are not
spliced. Each category's samples are shuffled with the seed and cut into `num_bins` contiguous bins;
bucket b of training is bin b of every category (see coati_ray/trainers/pretrain.py).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import shutil
from typing import Iterator

from coati_ray.algo.losses import IGNORE_INDEX
from coati_ray.data.datasets import _bos, _ids, tokenize_conversation
from coati_ray.data.formats import sft_messages
from coati_ray.errors import DataError

MODES = ("pretrain", "sft")
TOKENIZER_FILES = ("tokenizer", "special_tokens", "vocab", "merges", "added_tokens", "spiece", "sentencepiece",
                   "tokenization_")
PREPARE_VERSION = 2  # part of the cache key: a change to how samples are built invalidates old caches
# 2: source and target tokenized as one string; rows whose target is cut off are skipped and counted


def jsonl_files(dirs: list[str]) -> list[str]:
    """Every *.jsonl file of the input directories, in a stable order; a missing or empty directory is
    one line."""
    files = []
    for d in dirs:
        if not os.path.isdir(d):
            raise DataError(f"data error: --data_input_dirs: '{d}' is not a directory; give directories of .jsonl files")
        found = sorted(glob.glob(os.path.join(d, "*.jsonl")))
        if not found:
            raise DataError(f"data error: --data_input_dirs: '{d}' holds no .jsonl file")
        files += found
    return files


def read_rows(files: list[str]) -> Iterator[tuple[str, dict]]:
    """(where, row) for every non-blank line; `where` is 'file:line'. A line that is not a JSON object
    stops with one line naming it."""
    from coati_ray.data.loading import check_utf8

    for path in files:
        check_utf8(path)  # a bad byte is named by its line
        with open(path, encoding="utf-8") as f:
            try:
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    where = f"{path}:{line_no}"
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        raise DataError(f"data error: {where} is not valid JSON; each line must be one object") from None
                    if not isinstance(row, dict):
                        raise DataError(f"data error: {where} is not a JSON object")
                    yield where, row
            except UnicodeDecodeError:
                raise DataError(f"data error: {path} is not UTF-8 text; re-encode it as UTF-8") from None


def pretrain_sample(row: dict, where: str, tokenizer, max_length: int) -> dict:
    """input_ids = BOS + tokens(source + target) + EOS, labels = IGNORE over BOS and the source's tokens; cut
    at max_length. Source and target are tokenized as one string, as the text reads (no SentencePiece dummy
    prefix or broken merge at their boundary); a token that straddles the boundary is the target's."""
    for key in ("source", "target", "category"):
        if not isinstance(row.get(key), str):
            raise DataError(f"data error: {where}: field '{key}' must be a string (rows are "
                            "{\"source\": ..., \"target\": ..., \"category\": ...}; source may be \"\")")
    if not row["target"]:
        raise DataError(f"data error: {where}: 'target' is empty, so there is nothing to learn from")
    text, tokens, source_tokens = joint_tokens(tokenizer, row["source"], row["target"])
    prompt = _bos(tokenizer) + tokens[:source_tokens]
    target = tokens[source_tokens:] + [tokenizer.eos_token_id]
    ids, labels = prompt + target, [IGNORE_INDEX] * len(prompt) + target
    return {"input_ids": ids[:max_length], "labels": labels[:max_length], "category": row["category"] or "unknown",
            "truncated": len(ids) > max_length}


def joint_tokens(tokenizer, source: str, target: str) -> tuple[str, list[int], int]:
    """(source + target, its token ids, how many of them are the source's): the first token that ends past
    the source's last character starts the target. A tokenizer without offsets (a slow one): the source's
    own tokens when they are a prefix of the whole string's, else source and target tokenized apart."""
    text = source + target
    if not source:
        return text, _ids(tokenizer, text), 0
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        first = next((i for i, (_, end) in enumerate(offsets) if end > len(source)), len(offsets))
        return text, enc["input_ids"], first
    whole, alone = _ids(tokenizer, text), _ids(tokenizer, source)
    if whole[:len(alone)] == alone:
        return text, whole, len(alone)
    return text, alone + _ids(tokenizer, target), len(alone)


def sft_sample(row: dict, where: str, tokenizer, max_length: int) -> dict:
    """`messages` rendered with the tokenizer's chat template (Coati's when it has none); labels only on the
    assistant turns (and their end-of-turn tokens); cut at max_length."""
    try:
        full, full_labels = tokenize_conversation(sft_messages(row, "messages")["messages"], tokenizer, None)
    except ValueError as e:
        raise DataError(f"data error: {where}: {e}") from None
    ids, labels = full[:max_length], full_labels[:max_length]
    category = row.get("category") if isinstance(row.get("category"), str) and row.get("category") else "unknown"
    return {"input_ids": ids, "labels": labels, "category": category, "truncated": len(full) > max_length}


def splice(samples: list[dict], max_length: int) -> list[dict]:
    """Concatenate consecutive samples (each: input_ids (L_i,), labels (L_i,)) while the total stays
    within max_length; each output holds whole samples only. Returns [{input_ids, labels}] of length
    <= max_length each, covering every sample once, in order."""
    out, ids, labels = [], [], []
    for s in samples:
        if ids and len(ids) + len(s["input_ids"]) > max_length:
            out.append({"input_ids": ids, "labels": labels})
            ids, labels = [], []
        ids, labels = ids + s["input_ids"], labels + s["labels"]
    if ids:
        out.append({"input_ids": ids, "labels": labels})
    return out


def contiguous_bins(items: list, num_bins: int) -> list[list]:
    """`items` cut into `num_bins` contiguous runs whose sizes differ by at most one (empty runs when
    there are fewer items than bins)."""
    size, extra = divmod(len(items), num_bins)
    bins, start = [], 0
    for b in range(num_bins):
        end = start + size + (b < extra)
        bins.append(items[start:end])
        start = end
    return bins


def prepare(mode: str, files: list[str], tokenizer, max_length: int, num_bins: int, seed: int) -> tuple[list[dict], dict]:
    """Parts [{category, bin, rows: [{input_ids, labels}]}] ordered by (category, bin), and counts."""
    make = pretrain_sample if mode == "pretrain" else sft_sample
    by_category: dict[str, list[dict]] = {}
    rows = truncated = dropped = 0
    for where, row in read_rows(files):
        s = make(row, where, tokenizer, max_length)
        if all(label == IGNORE_INDEX for label in s["labels"]):
            if not s["truncated"]:
                raise DataError(f"data error: {where}: the row has no target tokens to learn; give it a non-empty "
                                "target (pretrain) or assistant turn (sft)")
            dropped += 1  # every target token is past max_length: nothing to learn, so skipped and counted
            continue
        rows += 1
        truncated += s.pop("truncated")
        by_category.setdefault(s.pop("category"), []).append(s)
    if not rows:
        raise DataError("data error: the input directories hold no rows" + (
            f" whose target fits max_length={max_length} ({dropped} cut off entirely); raise --max_length or "
            "shorten the sources" if dropped else ""))
    parts = []
    for category in sorted(by_category):
        samples = by_category[category]
        random.Random(f"{seed}:{category}").shuffle(samples)
        if mode == "pretrain":
            samples = splice(samples, max_length)
        for b, items in enumerate(contiguous_bins(samples, num_bins)):
            if items:
                parts.append({"category": category, "bin": b, "rows": items})
    counts = {"rows": rows, "truncated": truncated, "dropped_target_cut_off": dropped, "categories": len(by_category),
              "samples": sum(len(p["rows"]) for p in parts)}
    return parts, counts


def cache_key(mode: str, files: list[str], tokenizer_dir: str, max_length: int, num_bins: int, seed: int) -> str:
    """What the output depends on: mode, settings, the tokenizer's files and every input file's bytes."""
    h = hashlib.sha256(json.dumps([PREPARE_VERSION, mode, max_length, num_bins, seed]).encode())
    tokenizer_files = sorted(f for f in os.listdir(tokenizer_dir) if f.startswith(TOKENIZER_FILES))
    for path in [os.path.join(tokenizer_dir, f) for f in tokenizer_files] + files:
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


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


def prepare_to_disk(mode: str, input_dirs: list[str], tokenizer_dir: str, out: str, max_length: int, num_bins: int,
                    seed: int, info=print, trust_remote_code: bool = False) -> dict:
    """`out`/cache/<key>/, jsonl/, arrow/ and prepared.json (written last); returns the manifest. An `out`
    already prepared from the same inputs and settings is left as it is; one prepared from anything else,
    or holding jsonl/ or arrow/ folders this function did not write, is refused."""
    from coati_ray.errors import ConfigError

    files = jsonl_files(input_dirs)
    key = cache_key(mode, files, tokenizer_dir, max_length, num_bins, seed)
    marker = os.path.join(out, "prepared.json")
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            manifest = json.load(f)
        if manifest.get("key") == key:
            info(f"{out} is already prepared from these inputs and settings (key {key}): nothing to do")
            return manifest
        raise ConfigError(f"config error: '{out}' holds data prepared from other inputs or settings; choose a new "
                          "output directory (nothing is overwritten)")
    partial = os.path.join(out, "prepared.partial")  # written before our jsonl/ and arrow/, removed after
    if any(os.path.exists(os.path.join(out, sub)) for sub in ("jsonl", "arrow")) and not os.path.exists(partial):
        raise ConfigError(f"config error: '{out}' already has jsonl/ or arrow/ folders that this command did not "
                          "write; choose a new output directory (nothing is overwritten)")
    cache = os.path.join(out, "cache", key)
    if os.path.exists(os.path.join(cache, "prepared.json")):
        with open(os.path.join(cache, "prepared.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        parts = load_parts(cache, manifest)
        info(f"reusing the tokenized cache {cache}")
    else:
        from coati_ray.models.loading import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_dir, trust_remote_code)
        parts, counts = prepare(mode, files, tokenizer, max_length, num_bins, seed)
        manifest = {"key": key, "mode": mode, "inputs": [os.path.abspath(f) for f in files],
                    "tokenizer_dir": os.path.abspath(tokenizer_dir), "max_length": max_length,
                    "num_spliced_dataset_bins": num_bins, "seed": seed, **counts,
                    "parts": [{"name": f"part-{i:05d}", "category": p["category"], "bin": p["bin"],
                               "samples": len(p["rows"]), "tokens": sum(len(r["input_ids"]) for r in p["rows"])}
                              for i, p in enumerate(parts)]}
        shutil.rmtree(cache, ignore_errors=True)  # an interrupted cache of this key (no prepared.json)
        save_parts(parts, cache, jsonl_too=False)
        with open(os.path.join(cache, "prepared.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, ensure_ascii=False)
    os.makedirs(out, exist_ok=True)
    with open(partial, "w") as f:
        f.write(key)
    for sub in ("jsonl", "arrow"):  # leftovers of our own interrupted run
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    save_parts(parts, out, jsonl_too=True)
    with open(marker, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
    os.remove(partial)
    dropped = manifest.get("dropped_target_cut_off", 0)
    info(f"prepared {manifest['rows']} rows ({manifest['truncated']} truncated"
         + (f", {dropped} skipped: their target was cut off entirely" if dropped else "")
         + f") of {manifest['categories']} "
         f"categories into {manifest['samples']} samples in {len(manifest['parts'])} parts: {out}/arrow/part-*")
    return manifest
