"""Storage URIs as users write them: `s3://bucket/run`, `gs://bucket/run`, `hdfs://namenode:8020/run`, or a
plain local (or NFS) path, which is not a URI and keeps the behaviour it always had.

A URI's path joins like a POSIX path (`os.path.join` and `os.path.basename` work on it as they are), but it
must never pass through `os.path.abspath` / `normpath`, which fold `s3://` into `s3:/`; `absolute` here does
the right thing for both kinds.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from typing import Optional

SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs")
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(path: Optional[str]) -> Optional[str]:
    """The URI scheme of `path` ('s3', 'gs', ...), or None for a local path."""
    m = _URI.match(path or "")
    return m.group(1).lower() if m else None


def is_uri(path: Optional[str]) -> bool:
    """True for a path on remote storage (`s3://`, `gs://`, `hdfs://`); False for a local or NFS path."""
    return scheme(path) in SCHEMES


def unsupported_scheme(path: Optional[str]) -> Optional[str]:
    """The scheme of a `x://` path that is not one we read or write (say so in one line), else None."""
    s = scheme(path)
    return s if s is not None and s not in SCHEMES else None


def join(base: str, *parts: str) -> str:
    """`base`/part/...: a URI keeps its `scheme://`, a local path joins as os.path.join does."""
    if not is_uri(base):
        return os.path.join(base, *parts)
    out = base.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


def absolute(path: str) -> str:
    """A URI as it is (without a trailing slash); a local path made absolute."""
    return path.rstrip("/") if is_uri(path) else os.path.abspath(path)


def relative(uri: str, base: str) -> str:
    """`uri` relative to `base` (both URIs, or both local paths); a URI not under `base` is a ValueError."""
    if not is_uri(base):
        return os.path.relpath(uri, base)
    root = base.rstrip("/")
    if uri.rstrip("/") == root:
        return ""
    if not uri.startswith(root + "/"):  # 's3://b/xy' is not under 's3://b/x'
        raise ValueError(f"'{redact(uri)}' is not under '{redact(base)}'")
    return uri[len(root):].strip("/")


def split(uri: str) -> tuple[str, str, str]:
    """(scheme, authority, key): 's3://bucket/a/b' -> ('s3', 'bucket', 'a/b'). A password in the authority (an
    hdfs://user:secret@host) is kept here, for the filesystem; `redact` drops it for anything written out."""
    parts = urllib.parse.urlsplit(uri)
    return parts.scheme.lower(), parts.netloc, parts.path.strip("/")


def key_of(uri: str) -> str:
    """A short stable name for `uri`, for node-local cache and staging directories (no credentials in it)."""
    return hashlib.sha256(absolute(uri).encode()).hexdigest()[:16]


def redact(path: Optional[str]) -> Optional[str]:
    """`path` as it may appear in a log line, config.yaml or a report: a user or password in a URI and
    credential-like query parameters replaced by '***' (coati_ray/utils/redact.py); a local path unchanged."""
    if not path or scheme(path) is None:
        return path
    from coati_ray.utils.redact import redact_url

    return redact_url(path)
