"""Reading local datasets with HF `datasets` and validating every row before training starts."""

from __future__ import annotations

import os
from typing import Callable, Optional

from coati_ray.errors import DataError

EXTENSIONS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}


def load_rows(path: str, max_samples: Optional[int] = None):
    """A `datasets.Dataset` from a local .jsonl/.json/.parquet/.arrow file or `save_to_disk` directory."""
    import datasets

    datasets.disable_progress_bars()
    # datasets logs a parse failure itself before raising; the DataError below is the one line we show
    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)
    if not os.path.exists(path):
        raise DataError(f"data error: '{path}' does not exist; check data.train_path / data.eval_path")
    try:
        if os.path.isdir(path):
            ds = datasets.load_from_disk(path)
            if isinstance(ds, datasets.DatasetDict):
                if "train" not in ds:
                    raise DataError(f"data error: '{path}' holds splits {list(ds)} but no 'train'; point at one split")
                ds = ds["train"]
        else:
            ext = os.path.splitext(path)[1].lower()
            if ext not in EXTENSIONS:
                raise DataError(f"data error: '{path}' has extension '{ext}'; use one of "
                                f"{', '.join(EXTENSIONS)} or a save_to_disk directory")
            if os.path.getsize(path) == 0:
                raise DataError(f"data error: '{path}' is empty; it needs at least one row")
            if EXTENSIONS[ext] == "json":
                check_utf8(path)
            if ext == ".arrow":
                ds = datasets.Dataset.from_file(path)
            else:
                ds = datasets.load_dataset(EXTENSIONS[ext], data_files=path, split="train", keep_in_memory=True)
    except DataError:
        raise
    except Exception as e:  # datasets wraps parse errors in several exception types
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise DataError(f"data error: cannot read '{path}' ({first[:200]}); check that it is well-formed") from None
    if len(ds) == 0:
        raise DataError(f"data error: '{path}' has no rows; it needs at least one")
    if max_samples is not None and len(ds) > max_samples:
        ds = ds.select(range(max_samples))
    return ds


def check_utf8(path: str, chunk_bytes: int = 1 << 20) -> None:
    """Stream the file through a strict decoder: pyarrow's JSON reader lets invalid UTF-8 through."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    line, offset = 1, 0
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                bad = offset + e.start
                line += chunk[: e.start].count(b"\n")
                raise DataError(f"data error: {path} line {line} (byte {bad}) is not valid UTF-8; "
                                "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
            line += chunk.count(b"\n")
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(f"data error: {path} ends inside a multi-byte character; re-encode it as UTF-8") from None


def normalize_rows(ds, normalize: Callable[[dict], dict], path: str, on_bad_row: str = "error") -> tuple[list[dict], int]:
    """Apply `normalize` (raises ValueError on a bad row) to every row.

    Returns (rows, skipped). With on_bad_row='error' the first bad row stops everything with a
    message naming the file and the row number (1-based, as an editor shows a .jsonl line).
    """
    rows, skipped = [], 0
    for i, row in enumerate(ds):
        try:
            rows.append(normalize(row))
        except ValueError as e:
            if on_bad_row == "skip":
                skipped += 1
                continue
            raise DataError(f"data error: {path} row {i + 1}: {e}; fix the row or set data.on_bad_row=skip") from None
    if not rows:
        raise DataError(f"data error: {path}: all {len(ds)} rows were invalid and skipped; check the data format")
    return rows, skipped
