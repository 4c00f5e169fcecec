"""One `pyarrow.fs` filesystem per storage URI, the few operations a run needs, and one-line errors.

Credentials and endpoints come from the environment only, as every S3 / GCS tool reads them:
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE (~/.aws), a web-identity token
(EKS IRSA) or the instance role; AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for an S3-compatible store (MinIO,
Ceph, moto); AWS_REGION / AWS_DEFAULT_REGION; GOOGLE_APPLICATION_CREDENTIALS (or the node's service account)
for gs://; the Hadoop client's configuration (HADOOP_HOME, CLASSPATH, Kerberos) for hdfs://. Nothing here
writes a credential anywhere: error lines name the URI (redacted), the endpoint and which variable to set.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from coati_ray.errors import CoatiError
from coati_ray.storage.uri import absolute, is_uri, redact, split

TRANSFER_THREADS = 8  # files copied at once (pyarrow releases the GIL; S3 multipart parts go in parallel too)
_FILESYSTEMS: dict = {}
_LOCK = threading.Lock()


class StorageError(CoatiError):
    """A storage URI that cannot be reached, read or written: what, where (redacted), and how to fix it."""


def endpoint() -> Optional[str]:
    """The S3 endpoint override from the environment (AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL), if any."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def filesystem(path: str):
    """(pyarrow FileSystem, path inside it) for a URI or a local path; one filesystem per scheme and authority
    in a process (they hold connection pools)."""
    import pyarrow.fs as pafs

    if not is_uri(path):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    scheme, authority, key = split(path)
    # hdfs: one per namenode; s3 without an endpoint or a region set: one per bucket (its region is looked up)
    per_bucket = scheme == "s3" and not endpoint() and not (os.environ.get("AWS_REGION")
                                                            or os.environ.get("AWS_DEFAULT_REGION"))
    cache_key = (scheme, authority if scheme in ("hdfs", "viewfs") or per_bucket else "", endpoint())
    with _LOCK:
        fs = _FILESYSTEMS.get(cache_key)
        if fs is None:
            fs = _FILESYSTEMS[cache_key] = _make(scheme, authority, path)
    if scheme in ("hdfs", "viewfs"):
        return fs, "/" + key
    return fs, f"{authority}/{key}".rstrip("/")


def reset() -> None:
    """Drop the cached filesystems: the next use builds them from the environment as it is then (credentials or
    an endpoint changed in this process, as tests do)."""
    with _LOCK:
        _FILESYSTEMS.clear()


def _make(scheme: str, authority: str, uri: str):
    import pyarrow.fs as pafs

    try:
        if scheme == "s3":
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            if endpoint():  # an S3-compatible store: its address, path-style requests, any region it accepts
                return pafs.S3FileSystem(endpoint_override=endpoint(), region=region or "us-east-1")
            return pafs.S3FileSystem(region=region or pafs.resolve_s3_region(authority))
        if scheme in ("gs", "gcs"):
            return pafs.GcsFileSystem()
        return pafs.FileSystem.from_uri(uri.split("?")[0])[0]  # hdfs / viewfs: libhdfs and the Hadoop config
    except (OSError, ValueError, ImportError) as e:
        raise StorageError(explain(e, uri, "cannot open")) from None


def credentials_found(scheme: str) -> bool:
    """Whether the environment names credentials the way the SDKs look for them (an instance role or a GKE
    service account cannot be seen from here: then this says False and the messages say so)."""
    env = os.environ
    if scheme == "s3":
        files = [env.get("AWS_SHARED_CREDENTIALS_FILE", os.path.expanduser("~/.aws/credentials"))]
        return bool(env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_PROFILE") or env.get("AWS_WEB_IDENTITY_TOKEN_FILE")
                    or env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
                    or any(os.path.isfile(f) for f in files))
    if scheme in ("gs", "gcs"):
        adc = os.path.expanduser("~/.config/gcloud/application_default_credentials.json")
        return bool(env.get("GOOGLE_APPLICATION_CREDENTIALS")) or os.path.isfile(adc)
    return True


def explain(err: BaseException, uri: str, doing: str, key: Optional[str] = None) -> str:
    """One line for a failed storage operation: the config key, the URI (redacted), what went wrong, how to
    fix it."""
    scheme, authority, _ = split(uri) if is_uri(uri) else ("file", "", "")
    bucket = authority.rsplit("@", 1)[-1]  # never a user or password, should a URI carry one
    text = _scrub(str(err), uri)
    upper = text.upper()
    first = (text.strip().splitlines() or [type(err).__name__])[0][:240]
    cause = f"{type(err).__name__}: {first}"
    where = f"storage error: {key + ': ' if key else ''}{doing} '{redact(uri)}'"
    if scheme == "s3":
        var = "AWS_ENDPOINT_URL_S3" if os.environ.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"
        store = f"the S3 endpoint {redact(endpoint())} ({var})" if endpoint() else "S3"
        if any(s in upper for s in ("NETWORK_CONNECTION", "CURLCODE", "COULD NOT CONNECT", "COULD NOT RESOLVE")):
            return (f"{where}: {store} cannot be reached; check the address (AWS_ENDPOINT_URL for an S3-compatible "
                    "store, unset for AWS) and that this node can reach it")
        if "NO_SUCH_BUCKET" in upper or "NOSUCHBUCKET" in upper or "BUCKET DOES NOT EXIST" in upper:
            return (f"{where}: bucket '{bucket}' does not exist on {store}; create it (`aws s3 mb s3://{bucket}"
                    + (f" --endpoint-url ${var}" if endpoint() else "") + "`) or correct the URI")
        if not credentials_found("s3"):  # the SDK found none we can see: the request went unsigned or by a role
            return (f"{where}: no AWS credentials were found in this environment (AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, a web-identity token; an instance role cannot be seen from "
                    f"here) and {store} did not accept the request ({cause}); export them on every node (KubeRay: "
                    "from a Secret, envFrom) or run where an instance role grants access")
        if any(s in upper for s in ("INVALID_ACCESS_KEY_ID", "INVALIDACCESSKEYID", "SIGNATURE_DOES_NOT_MATCH",
                                    "SIGNATUREDOESNOTMATCH", "INVALIDCLIENTTOKENID", "EXPIRED_TOKEN", "EXPIREDTOKEN")):
            return (f"{where}: {store} does not accept the credentials in this environment (an unknown access key, "
                    "a wrong secret or an expired session token); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
                    "AWS_SESSION_TOKEN or AWS_PROFILE on every node")
        if any(s in upper for s in ("ACCESS_DENIED", "ACCESSDENIED", "FORBIDDEN", "HTTP STATUS 403")):
            return (f"{where}: {store} denied it to the credentials in this environment (AWS_ACCESS_KEY_ID / "
                    "AWS_PROFILE); grant them s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on "
                    f"'{bucket}', or use a prefix they may write")
    if scheme in ("gs", "gcs") and not credentials_found(scheme) and ("401" in text or "403" in text
                                                                      or "CREDENTIAL" in upper):
        return (f"{where}: no Google credentials were found; set GOOGLE_APPLICATION_CREDENTIALS to a service "
                "account key file on every node, or run with a service account that may use the bucket")
    if scheme == "file":
        return (f"{where} ({cause}); check that the directory can be created and written by this user on this node "
                "(a shared mount present on every node), or choose another one")
    return f"{where} ({cause}); check the URI, the credentials and the network"


def _scrub(text: str, uri: str) -> str:
    """`text` (an SDK's error) without the user and password of `uri`, should it carry them and the SDK echo them."""
    if not is_uri(uri):
        return text
    import urllib.parse

    authority = split(uri)[1]
    if "@" in authority:
        userinfo = authority.rsplit("@", 1)[0]
        password = userinfo.partition(":")[2]
        for secret in (userinfo, password, urllib.parse.unquote(password)):
            if secret:
                text = text.replace(secret, "***")
    return text


def info(uri: str):
    fs, path = filesystem(uri)
    try:
        return fs.get_file_info(path)
    except OSError as e:
        raise StorageError(explain(e, uri, "cannot read")) from None


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    return info(uri).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    import pyarrow.fs as pafs

    return info(uri).type == pafs.FileType.Directory


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except (OSError, FileNotFoundError) as e:
        raise StorageError(explain(e, uri, "cannot read")) from None


def write_bytes(uri: str, data: bytes) -> None:
    """One object (a local file: written beside and renamed, so a reader never sees half of it)."""
    fs, path = filesystem(uri)
    try:
        if not is_uri(uri):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "wb") as f:
                f.write(data)
            os.replace(path + ".tmp", path)
            return
        with fs.open_output_stream(path) as f:
            f.write(data)
    except OSError as e:
        raise StorageError(explain(e, uri, "cannot write")) from None


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def list_files(uri: str) -> dict[str, tuple[int, int]]:
    """{path relative to `uri`: (size, mtime in ns)} of every file under the directory `uri` ({} when absent)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except OSError as e:
        raise StorageError(explain(e, uri, "cannot list")) from None
    root = path.rstrip("/") + "/"
    return {i.path[len(root):]: (i.size, i.mtime_ns or 0) for i in infos
            if i.type == pafs.FileType.File and i.path.startswith(root)}


def list_dir(uri: str) -> list[str]:
    """Names of the entries directly under the directory `uri` ([] when absent)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    except OSError as e:
        raise StorageError(explain(e, uri, "cannot list")) from None
    return sorted(i.base_name for i in infos)


def delete(uri: str) -> None:
    """Remove a file or a whole directory; nothing when it is absent."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if is_uri(uri) and not split(uri)[2]:
        raise StorageError(f"storage error: refusing to delete the whole bucket '{redact(uri)}'; name a prefix in it")
    try:
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif kind == pafs.FileType.File:
            fs.delete_file(path)
    except OSError as e:
        raise StorageError(explain(e, uri, "cannot delete")) from None


def _copy(pairs: list[tuple[str, str]], src_fs, dst_fs, uri: str, doing: str) -> None:
    import pyarrow.fs as pafs

    def one(pair):
        src, dst = pair
        if isinstance(dst_fs, pafs.LocalFileSystem):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
        pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs, use_threads=False)

    try:
        with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
            list(pool.map(one, pairs))
    except OSError as e:
        raise StorageError(explain(e, uri, doing)) from None


def upload(local: str, uri: str, files: Optional[list[str]] = None) -> list[str]:
    """Copy the file `local`, or the files under the directory `local` (`files`: only these, relative to it), to
    `uri`. Returns the relative paths copied."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    here = pafs.LocalFileSystem()
    if os.path.isfile(local):
        _copy([(os.path.abspath(local), path)], here, fs, uri, "cannot write")
        return [os.path.basename(local)]
    if files is None:
        files = [os.path.relpath(os.path.join(d, n), local) for d, _, names in os.walk(local) for n in names]
    _copy([(os.path.join(os.path.abspath(local), f), f"{path}/{f}") for f in files], here, fs, uri, "cannot write")
    return files


def download(uri: str, local: str, files: Optional[list[str]] = None) -> None:
    """Copy the object `uri` to the file `local`, or (`files`: paths relative to the directory `uri`) those files
    under the directory `local`."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    here = pafs.LocalFileSystem()
    if files is None:
        _copy([(path, os.path.abspath(local))], fs, here, uri, "cannot read")
        return
    _copy([(f"{path}/{f}", os.path.join(os.path.abspath(local), f)) for f in files], fs, here, uri, "cannot read")


def display(path: str) -> str:
    """A path or URI as log lines show it (a URI redacted, a local path absolute)."""
    return redact(path) if is_uri(path) else absolute(path)
