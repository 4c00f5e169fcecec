"""Reading datasets with HF `datasets` (local files, or hub datasets by name) and validating every row
before training starts.

A hub dataset is pinned like a model (coati_ray.models.hub): the driver resolves its revision once to a commit
(`pin_hub_data`), the config carries the commit, and every process reads that commit's snapshot from its node's
hub cache with `datasets.load_dataset(<snapshot>, name=config_name, data_dir=subset, split=...)`. Loading the
snapshot directory (rather than `load_dataset(name, revision=...)`) is what makes offline mode exact: offline,
`datasets` ignores the revision of a hub name and falls back to the latest build it cached.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

from coati_ray.errors import DataError

EXTENSIONS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}


@dataclass(frozen=True)
class HubSource:
    """How to read a path that names a hub dataset.

    subset: a directory of the repo (`load_dataset(..., data_dir=subset)`, Coati's `--subset`, e.g. hh-rlhf's
    harmless-base); split: the split; revision: the commit the driver pinned (None: main, for a config that was
    never pinned); config_name: a configuration of the dataset card (`load_dataset(..., name=...)`); section,
    revision_key and path_key: the config keys an error names.
    """

    subset: Optional[str] = None
    split: str = "train"
    revision: Optional[str] = None
    config_name: Optional[str] = None
    section: str = "data"
    revision_key: str = "data.revision"
    path_key: str = "data.train_path"

    def selection(self):
        """The files of the repo this source reads (coati_ray.models.hub.Selection)."""
        from coati_ray.models.hub import Selection

        return Selection("dataset", self.subset, self.config_name, self.section, self.revision_key)


def pin_hub_data(path: Optional[str], revision: Optional[str], source: HubSource) -> Optional[str]:
    """The commit every process will read `path` at, when it names a hub dataset (resolved now, downloading
    the files `source` reads into the hub cache, or read from it offline); else `revision` unchanged.
    Ends in one line when it cannot be resolved, or when source's subset / config_name is not in that commit."""
    from coati_ray.models.hub import pin

    if path is None or not is_hub_data(path):
        return revision
    return pin(path, revision, source.path_key, "dataset", source.selection()).commit


def is_hub_data(path: str) -> bool:
    """True when a dataset path names a hub dataset: not a local path, of a repo id's shape, and without a
    data file's extension (a missing `train.jsonl` is a missing file, not a hub id)."""
    from coati_ray.models.hub import is_hub_id

    return is_hub_id(path) and os.path.splitext(path)[1].lower() not in EXTENSIONS


def load_rows(path: str, max_samples: Optional[int] = None):
    """A `datasets.Dataset` from a local .jsonl/.json/.csv/.parquet/.arrow file or `save_to_disk` directory."""
    return read_rows(path, max_samples)[0]


def datasets_cache_dir() -> str:
    """The `datasets` cache this process reads (HF_DATASETS_CACHE, else HF_HOME/datasets)."""
    import datasets

    if os.environ.get("HF_DATASETS_CACHE"):
        return os.environ["HF_DATASETS_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "datasets")
    return str(datasets.config.HF_DATASETS_CACHE)


def read_hub_rows(name: str, source: HubSource):
    """A hub dataset's split through `datasets.load_dataset` and its cache (offline: the cached copy)."""
    import datasets

    from coati_ray.models.hub import local_dir, offline

    snapshot = local_dir(name, source.revision, source.path_key, "dataset", source.selection())
    commit = os.path.basename(os.path.normpath(snapshot))
    cache = datasets_cache_dir()
    where = (f"hub dataset '{name}' at {commit[:12]}" + (f" subset '{source.subset}'" if source.subset else "") +
             (f" config '{source.config_name}'" if source.config_name else "") +
             f" split '{source.split}' (cache {cache}{', HF_HUB_OFFLINE=1' if offline() else ''})")
    try:
        return datasets.load_dataset(snapshot, source.config_name, data_dir=source.subset, split=source.split,
                                     cache_dir=cache)
    except Exception as e:  # datasets raises ValueError (an unknown split), FileNotFoundError, DataFilesNotFound...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:240]
        raise DataError(f"data error: {where} cannot be loaded ({first}); check the name, {source.section}.subset "
                        f"(a directory), {source.section}.config_name and the split") from None


def read_rows(path: str, max_samples: Optional[int] = None, on_bad_row: str = "error",
              source: Optional[HubSource] = None):
    """(`datasets.Dataset`, lines skipped as invalid JSON) from a local file, a `save_to_disk` directory, or
    (a path that does not exist locally and has a hub id's shape) a hub dataset read as `source` says.

    A .jsonl line that is not valid JSON stops the run naming its file and line, or with
    `on_bad_row='skip'` is skipped and counted like a row without its fields.
    """
    import datasets

    datasets.disable_progress_bars()
    # datasets logs a parse failure itself before raising; the DataError below is the one line we show
    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)
    if is_hub_data(path):
        return _limit(read_hub_rows(path, source or HubSource()), path, max_samples), 0
    from coati_ray.storage.uri import is_uri

    if is_uri(path):  # s3:// / gs:// / hdfs://: read from this node's copy (downloaded once per node and version)
        from coati_ray.storage.cache import local_copy

        path = local_copy(path, "data")
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
                try:
                    ds = datasets.load_dataset(EXTENSIONS[ext], data_files=path, split="train", keep_in_memory=True)
                except Exception:
                    if ext != ".jsonl":
                        raise
                    ds, malformed = _jsonl_line_by_line(path, on_bad_row)  # which line, and maybe skip it
                    return _limit(ds, path, max_samples), malformed
    except DataError:
        raise
    except Exception as e:  # datasets wraps parse errors in several exception types
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise DataError(f"data error: cannot read '{path}' ({first[:200]}); check that it is well-formed") from None
    return _limit(ds, path, max_samples), 0


def _limit(ds, path: str, max_samples: Optional[int]):
    if len(ds) == 0:
        raise DataError(f"data error: '{path}' has no rows; it needs at least one")
    if max_samples is not None and len(ds) > max_samples:
        ds = ds.select(range(max_samples))
    return ds


def _jsonl_line_by_line(path: str, on_bad_row: str):
    """The rows of a .jsonl file the fast reader refused, parsed one line at a time: a line that is not a
    JSON object names its file and line, or is skipped and counted."""
    import json

    import datasets

    rows, malformed = [], 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"a JSON {type(row).__name__}, not an object")
            except ValueError as e:
                if on_bad_row == "skip":
                    malformed += 1
                    continue
                reason = str(e).split(":")[0] if isinstance(e, json.JSONDecodeError) else str(e)
                raise DataError(f"data error: {path} line {number} is not a JSON object ({reason}); fix the line "
                                "or set data.on_bad_row=skip") from None
            rows.append(row)
    if not rows:
        raise DataError(f"data error: '{path}' has no valid JSON rows; check that it is JSON Lines")
    try:
        return datasets.Dataset.from_list(rows), malformed
    except Exception as e:  # rows whose fields do not share one type across lines
        raise DataError(f"data error: cannot read '{path}' ({str(e).splitlines()[0][:200]}); give every row's "
                        "fields the same types") from None


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
