"""Node-local directories: the staging area a process writes into before it uploads (run files, its part of a
checkpoint), and the download cache (coati_ray/storage/cache.py), both under one root:

    $COATI_CACHE_DIR (default ~/.cache/coati_ray)/staging/<what>-<uri key>-<pid>-<random>/   removed after upload
    $COATI_CACHE_DIR/storage/<uri key>-<version>/                                           kept: the cache

A staging directory belongs to one process; one whose process is gone (killed mid-upload) is swept away by
the next process on that node that stages anything.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid

from coati_ray.storage.uri import is_uri, key_of

CACHE_ENV = "COATI_CACHE_DIR"


def cache_root() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get(CACHE_ENV) or "~/.cache/coati_ray"))


def staging_root() -> str:
    return os.path.join(cache_root(), "staging")


def new_staging(what: str, uri: str) -> str:
    """A fresh, empty staging directory of this process for writes bound to `uri`."""
    root = staging_root()
    os.makedirs(root, exist_ok=True)
    sweep_staging(root)
    path = os.path.join(root, f"{what}-{key_of(uri)}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(path)
    return path


def sweep_staging(root: str) -> None:
    """Remove staging directories whose process no longer runs on this node (a run killed mid-upload)."""
    for name in os.listdir(root):
        parts = name.split("-")
        if len(parts) < 4 or not parts[-2].isdigit() or int(parts[-2]) == os.getpid():
            continue
        try:
            os.kill(int(parts[-2]), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        except OSError:  # alive under another user
            pass


@contextlib.contextmanager
def staged_writes(target: str):
    """`with staged_writes(target) as out:` write (a part of) the directory `target` under `out`: `target` itself
    when it is a local path; else a fresh node-local staging directory whose files are uploaded under `target`
    when the block ends without error, then removed (removed on error too: the upload never happened).

    Several processes may write parts of one directory this way (each rank its own files); whoever seals it
    (coati_ray/storage/checkpoint.py) does so after all of them returned."""
    if not is_uri(target):
        yield target
        return
    from coati_ray.storage.fs import upload

    local = new_staging("part", target)
    try:
        yield local
        upload(local, target)
    finally:
        shutil.rmtree(local, ignore_errors=True)
