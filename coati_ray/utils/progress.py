"""Progress of a stage that runs inside Ray actors, shown by the driver without streaming actor logs.

Actor output stays in Ray's log files (the dashboard shows it per actor); the driver instead
follows the stage's metrics.jsonl and prints one line every few seconds.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Optional


class MetricsTail:
    """`with MetricsTail(run_dir, "sft", total=600, keys=("loss",)):` prints the newest step periodically."""

    def __init__(self, run_dir: str, stage: str, total: Optional[int], keys: tuple[str, ...], every_s: float = 10.0):
        from coati_ray.storage.uri import join

        self.path = join(run_dir, "metrics.jsonl")
        self.stage, self.total, self.keys, self.every_s = stage, total, keys, every_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.start = time.time()
        self.shown_step = -1

    def __enter__(self) -> "MetricsTail":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def _loop(self) -> None:
        while not self.stop.wait(self.every_s):
            record = last_record(self.path)
            if record is None or record.get("step", -1) == self.shown_step:
                continue
            self.shown_step = record["step"]
            print(self.line(record, time.time() - self.start), flush=True)

    def line(self, record: dict, elapsed: float) -> str:
        step = record.get("step", 0)
        shown = "  ".join(f"{k}={record[k]:.4g}" for k in self.keys if isinstance(record.get(k), (int, float)))
        if self.total:
            eta = elapsed / max(step, 1) * max(self.total - step, 0)
            return f"[{self.stage}] step {step}/{self.total}  {shown}  ({elapsed:.0f}s, eta {eta:.0f}s)"
        return f"[{self.stage}] step {step}  {shown}  ({elapsed:.0f}s)"


def last_record(path: str) -> Optional[dict]:
    """The last complete JSON line of a metrics file (local, or a URI as last uploaded), or None."""
    from coati_ray.storage.uri import is_uri

    if is_uri(path):
        from coati_ray.storage.fs import StorageError, exists, read_bytes

        try:
            lines = read_bytes(path)[-8192:].decode("utf-8", errors="ignore").splitlines() if exists(path) else []
        except StorageError:  # progress lines only: the run itself says what is wrong with its storage
            return None
    elif not os.path.isfile(path):
        return None
    else:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            lines = f.read().decode("utf-8", errors="ignore").splitlines()
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None
