"""Where a run's files live: a local (or NFS) path as always, or object storage named by URI (s3://, gs://,
hdfs://) through `pyarrow.fs`.

pyarrow.fs rather than fsspec: pyarrow is already a dependency (datasets reads through it), its S3, GCS and
HDFS filesystems ship in the wheel (fsspec needs s3fs/gcsfs and their aiobotocore stack), it copies files in
native threads without the GIL, and Ray Train's own cloud checkpointing goes through it.

    uri.py        parsing, joining, redacting                 fs.py          the operations, one-line errors
    staging.py    node-local staging of writes                checkpoint.py  directories complete only when sealed
    mirror.py     a run directory mirrored and pushed         cache.py       reads downloaded once per node and version
    preflight.py  checks before any model or Ray resource
"""

from __future__ import annotations


def readable_path(path: str, key: str = "path") -> str:
    """A path this process can open: `path` itself when local, else its copy in this node's storage cache
    (downloaded once per node and version; `key` names the setting in the one-line error)."""
    from coati_ray.storage.uri import is_uri

    if not is_uri(path):
        return path
    from coati_ray.storage.cache import local_copy

    return local_copy(path, key)
