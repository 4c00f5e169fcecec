"""Directories that become visible only when complete: checkpoints, a stage's final model, prepared data.

Local paths keep their old way: writers fill `<dir>.tmp`, which is renamed to `<dir>` at the end. On an object
store there is no rename, so writers upload under `<dir>/` itself and `<dir>/manifest.json` is written last:
the listing of every file with its size. A directory without its manifest is incomplete (a run killed
mid-upload): `latest` never returns it, loading refuses it in one line, the next save of that name deletes it,
and retention deletes a manifest before the files it lists, so a half-deleted directory is never complete.
The manifest's hash is the directory's version in every node's download cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from typing import Optional

from coati_ray.storage.fs import delete, exists, list_files, read_bytes, write_text
from coati_ray.storage.staging import staged_writes
from coati_ray.storage.uri import is_uri, join

MANIFEST = "manifest.json"


def manifest_bytes(uri: str) -> Optional[bytes]:
    """The manifest of the directory `uri`, or None when it has none (incomplete, or not ours)."""
    path = join(uri, MANIFEST)
    return read_bytes(path) if exists(path) else None


def is_complete(uri: str) -> bool:
    """A remote directory with its manifest (a local one: it exists, the rename made it complete)."""
    return exists(join(uri, MANIFEST)) if is_uri(uri) else os.path.isdir(uri)


def version_of(manifest: bytes) -> str:
    return hashlib.sha256(manifest).hexdigest()[:16]


def seal(uri: str, meta: Optional[dict] = None) -> str:
    """Write `uri`/manifest.json after everything else: every file under `uri` with its size. Returns the
    version (the manifest's hash)."""
    files = {k: v[0] for k, v in sorted(list_files(uri).items()) if k != MANIFEST}
    body = json.dumps({"files": files, "sealed_at": time.time(), **(meta or {})}, indent=1, sort_keys=True)
    write_text(join(uri, MANIFEST), body)
    return version_of(body.encode())


def remove(uri: str) -> None:
    """Delete a (possibly incomplete) directory: its manifest first, so it is never complete half-deleted."""
    if is_uri(uri):
        delete(join(uri, MANIFEST))
        delete(uri)
    else:
        shutil.rmtree(uri, ignore_errors=True)


class Checkpoint:
    """One directory written by one or several processes and made complete by one of them.

        ckpt = Checkpoint(target); ckpt.begin()            # one process, before any writer
        with staged_writes(ckpt.path) as out: ...          # every writer (on its own node)
        ckpt.seal({"trainer_state.json": text})            # one process, after every writer returned

    `path` is where writers write: `<target>.tmp` for a local target, `target` itself for a URI (each writer
    stages locally and uploads under it)."""

    def __init__(self, target: str):
        self.target, self.remote = target, is_uri(target)
        self.path = target if self.remote else target + ".tmp"

    def begin(self) -> None:
        if self.remote:
            remove(self.target)  # an earlier, interrupted upload of the same name
        else:
            shutil.rmtree(self.path, ignore_errors=True)
            os.makedirs(self.path)

    def seal(self, files: Optional[dict[str, str]] = None, meta: Optional[dict] = None) -> str:
        """Write `files` ({name: text}: the markers), then make the directory complete; returns `target`."""
        for name, text in (files or {}).items():
            write_text(join(self.path, name), text)
        if self.remote:
            seal(self.target, meta)
        else:
            shutil.rmtree(self.target, ignore_errors=True)
            os.replace(self.path, self.target)
        return self.target


@contextlib.contextmanager
def written_whole(target: str):
    """`with written_whole(target) as out:` one process writes the whole directory under `out`; it becomes
    `target`, complete, when the block ends without error (a local .tmp renamed, or uploaded + sealed)."""
    ckpt = Checkpoint(target)
    ckpt.begin()
    with staged_writes(ckpt.path) as out:
        yield out
    ckpt.seal()
