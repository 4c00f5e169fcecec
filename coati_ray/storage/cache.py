"""Remote checkpoints, models and datasets read through a node-local cache: downloaded once per node.

    local = local_copy("s3://bucket/run/sft/checkpoints/final", "actor.path")   # a directory on this node

The cache entry is keyed by the URI and its version: a checkpoint's manifest hash (the enclosing
`checkpoints/<name>/manifest.json` for a path inside one, which must exist: an incomplete checkpoint is
refused), else the hash of the listing (every file's size and modification time), so a changed object is a
new version and a new download. The processes of one node take a file lock per URI (as hub models do,
coati_ray/models/hub.py): the first downloads into `<entry>.partial-<pid>` and renames it, the others wait and
read it. A process resolves a URI once and keeps that version for its lifetime.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from typing import Optional

from coati_ray.storage.checkpoint import MANIFEST, manifest_bytes, version_of
from coati_ray.storage.fs import StorageError, download, info, list_files
from coati_ray.storage.staging import cache_root
from coati_ray.storage.uri import absolute, key_of, redact

_CHECKPOINT = re.compile(r"^(.*/checkpoints/(?:final|step_\d+))(?:/(.*))?$")
_RESOLVED: dict[str, str] = {}
_LOCK = threading.Lock()


def cache_dir() -> str:
    return os.path.join(cache_root(), "storage")


def local_copy(uri: str, key: str = "path") -> str:
    """The local file or directory holding `uri` on this node (downloaded into the cache if not there yet).
    `key` names the config key in the one-line error when it cannot be read."""
    uri = absolute(uri)
    with _LOCK:
        if uri in _RESOLVED and os.path.exists(_RESOLVED[uri]):
            return _RESOLVED[uri]
    version, files = _version(uri, key)
    entry = os.path.join(cache_dir(), f"{key_of(uri)}-{version}")
    single = files is None
    from filelock import FileLock

    os.makedirs(os.path.join(cache_dir(), ".locks"), exist_ok=True)
    with FileLock(os.path.join(cache_dir(), ".locks", f"{key_of(uri)}.lock")):
        if not os.path.isdir(entry):
            partial = f"{entry}.partial-{os.getpid()}"
            shutil.rmtree(partial, ignore_errors=True)
            os.makedirs(partial)
            try:
                if single:
                    download(uri, os.path.join(partial, os.path.basename(uri)))
                else:
                    download(uri, partial, files)
                with open(os.path.join(partial, ".coati-source.json"), "w") as f:  # what this entry is (no secrets)
                    json.dump({"uri": redact(uri), "version": version}, f)
                os.replace(partial, entry)
            finally:  # a failed download leaves no half-written directory behind
                shutil.rmtree(partial, ignore_errors=True)
    out = os.path.join(entry, os.path.basename(uri)) if single else entry
    with _LOCK:
        _RESOLVED[uri] = out
    return out


def _version(uri: str, key: str) -> tuple[str, Optional[list[str]]]:
    """(version, the files to fetch relative to `uri`; None when `uri` is one file)."""
    import pyarrow.fs as pafs

    m = _CHECKPOINT.match(uri)
    if m:  # inside one of our checkpoints: only a sealed one, at the version its manifest names
        root, sub = m.group(1), m.group(2) or ""
        body = manifest_bytes(root)
        if body is None:
            raise StorageError(f"storage error: {key}: '{redact(root)}' is not a complete checkpoint (no {MANIFEST}: "
                               "its upload never finished); use an earlier checkpoints/step_* or let the run finish")
        listed = sorted(json.loads(body)["files"])
        if sub in listed:
            return version_of(body), None
        files = [f[len(sub) + 1:] for f in listed if f.startswith(sub + "/")] if sub else listed + [MANIFEST]
        if not files:
            raise StorageError(f"storage error: {key}: '{redact(uri)}' does not exist (its checkpoint has no '{sub}')")
        return version_of(body), files
    found = info(uri)
    if found.type == pafs.FileType.NotFound:
        raise StorageError(f"storage error: {key}: '{redact(uri)}' does not exist; check the URI (and that the run "
                           "that writes it has finished)")
    if found.type == pafs.FileType.File:
        return _hash(f"{found.size}:{found.mtime_ns}"), None
    listing = list_files(uri)
    if MANIFEST in listing:
        body = manifest_bytes(uri)
        return version_of(body), sorted(json.loads(body)["files"]) + [MANIFEST]
    if not listing:
        raise StorageError(f"storage error: {key}: '{redact(uri)}' is an empty directory; check the URI")
    return _hash(json.dumps(sorted(listing.items()))), sorted(listing)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached(uri: str) -> Optional[str]:
    """Where `uri` was resolved to by this process, if it was (for tests and reports)."""
    return _RESOLVED.get(absolute(uri))


def forget() -> None:
    """Resolve every URI afresh on its next use (tests; a long-lived process that wants new versions)."""
    with _LOCK:
        _RESOLVED.clear()
