"""Storage checked before anything heavy: one line, naming the URI (redacted), before any model loads or Ray
resource is taken. The same probe runs on every node of a cluster (actors/cluster.py) so a node without
credentials or without the shared mount is found before the run starts, not at its first checkpoint."""

from __future__ import annotations

import os
import socket
import uuid

from coati_ray.storage.fs import StorageError, explain, filesystem
from coati_ray.storage.uri import is_uri, join, redact, unsupported_scheme

PROBE_DIR = ".storage-probe"


def check_scheme(key: str, path: str) -> None:
    scheme = unsupported_scheme(path)
    if scheme is not None:
        from coati_ray.errors import ConfigError

        raise ConfigError(f"config error: {key}: '{redact(path)}' has scheme '{scheme}://', which coati_ray "
                          "cannot read or write; use s3://, gs://, hdfs:// or a local (or NFS) path")
    if is_uri(path):  # a secret in the URI would travel into config.yaml, logs and every actor's arguments
        import urllib.parse

        from coati_ray.errors import ConfigError

        parts = urllib.parse.urlsplit(path)
        userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
        if parts.query or ":" in userinfo or (userinfo and parts.scheme.lower() not in ("hdfs", "viewfs")):
            raise ConfigError(f"config error: {key}: '{redact(path)}' carries credentials or a query string; name "
                              "the bucket and path only and give the credentials in the environment (AWS_* / "
                              "GOOGLE_APPLICATION_CREDENTIALS, or the Hadoop client's configuration)")


def check_writable(uri: str, key: str = "output_dir") -> None:
    """Write, read back and delete a probe object under `uri`: an unreachable endpoint, a missing bucket,
    missing credentials or a prefix they may not write each end here in one line."""
    check_scheme(key, uri)
    fs, path = filesystem(uri)
    probe_dir = f"{path}/{PROBE_DIR}"
    probe = f"{probe_dir}/{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    token = uuid.uuid4().hex.encode()
    made = []  # local directories this check created (removed again: a check leaves nothing behind)
    doing = "cannot write"
    try:
        if not is_uri(uri):  # a local file is not opened in a directory that is not there (an object store has none)
            parent = probe_dir
            while not os.path.exists(parent):
                made.append(parent)
                parent = os.path.dirname(parent)
            fs.create_dir(probe_dir, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(token)
        doing = "cannot read back what was written to"
        with fs.open_input_stream(probe) as f:
            back = f.read()
        doing = "cannot delete from"
        fs.delete_file(probe)
    except OSError as e:
        raise StorageError(explain(e, uri, doing, key)) from None
    finally:
        for d in made:  # deepest first; only if empty (another node's probe may be in it)
            try:
                os.rmdir(d)
            except OSError:
                pass
    if back != token:
        raise StorageError(f"storage error: {key}: '{redact(uri)}' returned other bytes than were written to it; "
                           "check the store (an S3-compatible server that does not keep what it is sent?)")


def check_readable(uri: str, key: str) -> None:
    """`uri` exists and can be read from here (a model, tokenizer or dataset named by URI)."""
    import pyarrow.fs as pafs

    check_scheme(key, uri)
    fs, path = filesystem(uri)
    try:
        found = fs.get_file_info(path)
    except OSError as e:
        raise StorageError(explain(e, uri, "cannot read", key)) from None
    if found.type == pafs.FileType.NotFound:
        raise StorageError(f"storage error: {key}: '{redact(uri)}' does not exist; check the URI (and that the run "
                           "that writes it has finished)")


def probe_here(uri: str, name: str, token: str) -> dict:
    """On one node: write `<uri>/.storage-probe/<name>` holding `token` (a local path or a URI). Returns where it
    ran and the error (one line), if it could not."""
    report = {"name": name, "host": socket.gethostname(), "path": join(uri, PROBE_DIR, name), "error": None}
    try:
        if is_uri(uri):
            from coati_ray.storage.fs import write_text

            write_text(report["path"], token)
        else:
            os.makedirs(os.path.dirname(report["path"]), exist_ok=True)
            with open(report["path"], "w") as f:
                f.write(token)
    except StorageError as e:
        report["error"] = str(e)
    except OSError as e:
        report["error"] = f"{type(e).__name__}: {e}"
    return report


def read_probe(report: dict, token: str) -> bool:
    """On the driver's node: the probe a node wrote is there with its token (removed once read)."""
    path = report["path"]
    try:
        if is_uri(path):
            from coati_ray.storage.fs import delete, exists, read_text

            ok = report["error"] is None and exists(path) and read_text(path) == token
            delete(path)
        else:
            with open(path) as f:
                ok = report["error"] is None and f.read() == token
            os.remove(path)
    except (OSError, StorageError):
        ok = False
    return ok
