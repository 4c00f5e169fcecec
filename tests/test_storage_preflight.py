"""coati_ray/storage's preflight checks against a real S3-compatible server (tests/s3_server.py) and local paths:
what an unreachable endpoint, a missing bucket, missing or refused credentials, a path without permission and a
URI carrying credentials each say, in one line that never shows a secret. No Ray, no models."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from coati_ray.errors import ConfigError
from coati_ray.storage import fs, preflight
from coati_ray.storage.fs import StorageError
from coati_ray.storage.uri import join, split
from tests.s3_server import free_port
from tests.test_storage import _fresh, bucket, one_line  # noqa: F401 (fixtures and the one-line check, shared)

def test_check_writable_on_a_good_bucket_leaves_nothing(bucket, tmp_path):
    preflight.check_writable(join(bucket, "run"))
    assert fs.list_files(join(bucket, "run")) == {}
    local = tmp_path / "new" / "run"
    preflight.check_writable(str(local))
    assert not os.path.exists(tmp_path / "new")  # a check creates nothing it leaves behind
    (tmp_path / "there").mkdir()
    preflight.check_writable(str(tmp_path / "there"))
    assert os.listdir(tmp_path / "there") == []


def test_check_writable_unreachable_endpoint(s3_server, monkeypatch):
    port = free_port()  # bound and closed: nothing answers there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    fs.reset()
    start = time.monotonic()
    with pytest.raises(StorageError) as e:
        preflight.check_writable("s3://coati-bkt/run", "output_dir")
    took = time.monotonic() - start
    text = one_line(e.value)
    assert text.startswith("storage error: output_dir: cannot write 's3://coati-bkt/run'"), text
    assert f"the S3 endpoint http://127.0.0.1:{port} (AWS_ENDPOINT_URL) cannot be reached" in text
    assert took < 10, took


@pytest.mark.parametrize("uri", ["s3://coati-bkt/run?X-Amz-Signature=sekrit99", "s3://AKIA:sekrit99@coati-bkt/run",
                                 "hdfs://alice:sekrit99@nn:8020/run"])
def test_a_uri_carrying_credentials_or_a_query_is_refused_redacted(uri):
    """Credentials come from the environment: one in the URI would reach config.yaml, logs and actor arguments."""
    with pytest.raises(ConfigError) as e:
        preflight.check_writable(uri, "output_dir")
    text = one_line(e.value)
    assert "carries credentials or a query string" in text and "sekrit99" not in text


def test_check_writable_missing_bucket(s3_server):
    uri = f"s3://coati-missing-{uuid.uuid4().hex[:8]}/run"
    with pytest.raises(StorageError) as e:
        preflight.check_writable(uri, "output_dir")
    text = one_line(e.value)
    bucket = split(uri)[1]
    assert text.startswith(f"storage error: output_dir: cannot write '{uri}'"), text
    assert f"bucket '{bucket}' does not exist on the S3 endpoint {s3_server.endpoint}" in text
    assert f"`aws s3 mb s3://{bucket} --endpoint-url $AWS_ENDPOINT_URL`" in text


def no_credentials(monkeypatch, tmp_path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "home"
    empty.mkdir()
    monkeypatch.setenv("HOME", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups (seconds each) here
    fs.reset()


def refused_while_signatures_checked(s3_server, uri: str) -> str:
    """check_writable(uri)'s one line while the server checks request signatures (it knows no access key)."""
    s3_server.check_signatures(True)
    try:
        with pytest.raises(StorageError) as e:
            preflight.check_writable(uri, "output_dir")
    finally:
        s3_server.check_signatures(False)
    return one_line(e.value)


def test_check_writable_without_credentials(bucket, s3_server, monkeypatch, tmp_path):
    no_credentials(monkeypatch, tmp_path)
    assert not fs.credentials_found("s3")
    # The SDK then sends unsigned requests. moto takes them while it checks no signatures (but keeps an unsigned
    # upload's aws-chunked framing as the object's bytes, so the probe's read-back would differ): make it check
    # them, as a private bucket on S3 would. Nothing refuses a run up front for credentials it cannot see (an
    # instance role): only the store's answer does.
    text = refused_while_signatures_checked(s3_server, join(bucket, "run"))
    assert text.startswith(f"storage error: output_dir: cannot write '{join(bucket, 'run')}'"), text
    assert "no AWS credentials were found in this environment" in text
    assert f"the S3 endpoint {s3_server.endpoint} (AWS_ENDPOINT_URL) did not accept the request" in text


def test_check_writable_with_unknown_credentials(bucket, s3_server):
    text = refused_while_signatures_checked(s3_server, join(bucket, "run"))  # it knows no access key: ours
    assert "does not accept the credentials in this environment" in text and "AWS_SECRET_ACCESS_KEY" in text
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"


def test_check_writable_local_without_permission(tmp_path):
    """A directory this user may not write: made read-only (0o500) for an ordinary user; as root, who writes
    whatever the permissions say, the check runs with the effective uid of `nobody` under a root-owned 0o555."""
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if as_root:
        import pwd
        import shutil
        import tempfile

        try:
            nobody = pwd.getpwnam("nobody").pw_uid
        except KeyError:
            pytest.skip("running as root, and there is no user 'nobody' to check permissions as")
        top = tempfile.mkdtemp()  # not under tmp_path: pytest's base directory is 0o700, closed to `nobody`
        os.chmod(top, 0o755)
    else:
        top = str(tmp_path)
    ro = os.path.join(top, "ro")
    os.mkdir(ro)
    os.chmod(ro, 0o555 if as_root else 0o500)
    preflight.check_writable(os.path.join(top, "warm"))  # every import done while we may still read the venv
    try:
        if as_root:
            os.seteuid(nobody)
        with pytest.raises(StorageError) as e:
            preflight.check_writable(os.path.join(ro, "run"), "output_dir")
    finally:
        if as_root:
            os.seteuid(0)
        os.chmod(ro, 0o700)
        if as_root:
            shutil.rmtree(top)
    text = one_line(e.value)
    run = os.path.join(ro, "run")
    assert text.startswith(f"storage error: output_dir: cannot write '{run}' (PermissionError"), text
    assert "Permission denied" in text and "written by this user" in text


def test_check_writable_local_under_a_file(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError) as e:
        preflight.check_writable(str(blocker / "run"), "output_dir")
    text = one_line(e.value)
    assert text.startswith(f"storage error: output_dir: cannot write '{blocker / 'run'}' ("), text
    assert "this user on this node" in text and blocker.read_text() == "not a directory"


def test_check_scheme_refuses_what_it_cannot_write(tmp_path):
    for path in ("ftp://x", "ftp://user:hunter2@host/run?token=abc"):
        with pytest.raises(ConfigError) as e:
            preflight.check_scheme("output_dir", path)
        text = one_line(e.value)
        assert "scheme 'ftp://'" in text and text.startswith("config error: output_dir: 'ftp://")
        assert "abc" not in text.split("?")[-1]
    with pytest.raises(ConfigError):
        preflight.check_writable("ftp://x/run")
    preflight.check_scheme("output_dir", "s3://b/run")
    preflight.check_scheme("output_dir", str(tmp_path))


def test_check_readable(bucket):
    fs.write_text(join(bucket, "m", "config.json"), "{}")
    preflight.check_readable(join(bucket, "m"), "actor.path")
    with pytest.raises(StorageError) as e:
        preflight.check_readable(join(bucket, "absent"), "actor.path")
    text = one_line(e.value)
    assert "does not exist" in text and join(bucket, "absent") in text and "actor.path" in text


def test_an_sdk_error_never_echoes_a_uri_password():
    err = OSError("Failed on hdfs://alice:hunter2pw@nn:8020/x: refused")
    text = fs.explain(err, "hdfs://alice:hunter2pw@nn:8020/x", "cannot write", "output_dir")
    assert "hunter2pw" not in text and "\n" not in text and "'hdfs://***@nn:8020/x'" in text
