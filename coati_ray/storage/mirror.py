"""A run directory on remote storage, written through a node-local mirror.

The files of a run that grow step by step (metrics.jsonl, TensorBoard events, eval samples, W&B's run id) and
the ones written once (summary.json, report.md, plots) are written into `mirror.local` exactly as into a
local run directory, and `push` uploads the files that changed since the last push. A process pushes:

- after a record, at most every `COATI_SYNC_EVERY_S` seconds (default 30: one small PUT per changed file),
- before every checkpoint (so a resumed run finds the metrics up to its checkpoint),
- when the run ends (summary.json), after which the mirror is removed.

Each process mirrors only the files it writes (the driver's config.yaml, rank 0's metrics), so two
processes never upload the same file. For a local run directory the mirror is the directory itself and
pushing does nothing: local runs behave as they always did. Checkpoints never go through the mirror
(coati_ray/storage/checkpoint.py).
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Optional

from coati_ray.storage.staging import new_staging
from coati_ray.storage.uri import is_uri, join

SYNC_ENV = "COATI_SYNC_EVERY_S"
# Folders, at any depth (a pipeline's sft/checkpoints/ too), that `pull` leaves remote: the big and the immutable
# (checkpoints are read through the cache) and what a report redraws; and those a mirror never pushes.
NOT_PULLED = frozenset({"checkpoints", "tensorboard", "prepared", "plots", "lm_eval_tasks", ".storage-probe"})
NOT_PUSHED = frozenset({"checkpoints", ".storage-probe"})


def _under(name: str, folders: frozenset) -> bool:
    """`name` (a relative path) lies in one of `folders` at any depth; W&B's own files too, but its run id."""
    parts = name.split("/")
    if "wandb" in parts[:-1] and folders is NOT_PULLED and parts[-1] != "run_id":
        return True
    return bool(folders.intersection(parts[:-1]))


def sync_every_s() -> float:
    try:
        return float(os.environ.get(SYNC_ENV, "30"))
    except ValueError:
        return 30.0


class Mirror:
    def __init__(self, target: str):
        self.target, self.remote = target, is_uri(target)
        self.local = new_staging("run", target) if self.remote else target
        self._sent: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) when pushed or pulled
        self._last = time.monotonic()

    def pull(self, only: Optional[tuple[str, ...]] = None) -> list[str]:
        """Download the run's small files (all but NOT_PULLED; `only`: those under these prefixes) that are not
        here yet; returns what was fetched. Before writing anything that continues them (a resumed run)."""
        if not self.remote:
            return []
        from coati_ray.storage.fs import download, list_files

        names = [n for n in list_files(self.target) if not _under(n, NOT_PULLED) and n != "manifest.json"
                 and (only is None or n.startswith(only)) and not os.path.exists(os.path.join(self.local, n))]
        download(self.target, self.local, names)
        for n in names:
            self._sent[n] = _stamp(os.path.join(self.local, n))
        return names

    def push(self, force: bool = True) -> list[str]:
        """Upload what changed here since the last push (`force=False`: only if COATI_SYNC_EVERY_S passed)."""
        if not self.remote or not os.path.isdir(self.local):
            return []
        if not force and time.monotonic() - self._last < sync_every_s():
            return []
        from coati_ray.storage.fs import upload

        changed = {}
        for d, _, names in os.walk(self.local):
            for n in names:
                rel = os.path.relpath(os.path.join(d, n), self.local)
                if _under(rel, NOT_PUSHED) or rel.endswith(".tmp"):
                    continue
                stamp = _stamp(os.path.join(d, n))
                if self._sent.get(rel) != stamp:
                    changed[rel] = stamp
        if changed:
            upload(self.local, self.target, sorted(changed))
            self._sent.update(changed)
        self._last = time.monotonic()
        return sorted(changed)

    def close(self) -> None:
        """Push what is left and remove the local mirror (a local run directory stays, of course)."""
        if self.remote and os.path.isdir(self.local):
            try:
                self.push()
            finally:
                shutil.rmtree(self.local, ignore_errors=True)

    def discard(self) -> None:
        """Remove the local mirror without pushing (after an error that ends the process anyway)."""
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)

    def shown(self, path: Optional[str]) -> Optional[str]:
        """A path under the mirror as the run's own location (its URI), for lines and summaries."""
        if not self.remote or not path or not (path == self.local or path.startswith(self.local + os.sep)):
            return path
        return join(self.target, os.path.relpath(path, self.local))


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns
