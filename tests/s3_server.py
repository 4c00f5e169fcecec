"""A real S3-compatible server on loopback for tests: moto's server in its own process (not moto's in-process
mock, which patches boto but not pyarrow's C++ client). Independent of pytest:

    server = S3Server().start()
    os.environ.update(server.env)       # or pass server.env to a subprocess
    server.create_bucket("runs")
    ...
    server.stop()

tests/conftest.py wraps it in the module-scoped `s3_server` fixture.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Optional

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (bound, read, closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(endpoint: str) -> dict[str, str]:
    """What an S3 client (pyarrow, boto3, the aws CLI) needs to talk to the server at `endpoint`."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION}


class S3Server:
    """moto's S3 server as a child process on 127.0.0.1 and a free port.

    `server_env`: extra environment for the server process (e.g. {"INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    to make it check request signatures, refusing unsigned requests)."""

    def __init__(self, server_env: Optional[dict[str, str]] = None, start_timeout_s: float = 30.0):
        self.port: Optional[int] = None
        self.proc: Optional[subprocess.Popen] = None
        self._log = None  # the server's output (a file, not a pipe: moto logs every request and would block)
        self._server_env = server_env or {}
        self._start_timeout_s = start_timeout_s

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return client_env(self.endpoint)

    def start(self) -> "S3Server":
        env = {**os.environ, **self._server_env}
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):  # the server must not think it is a client of one
            env.pop(name, None)
        for attempt in range(3):  # a free port can be taken between free_port() and the server's bind
            self.port = free_port()
            self._log = tempfile.TemporaryFile()
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=self._log, stderr=subprocess.STDOUT, env=env)
            if self._wait_ready():
                atexit.register(self.stop)  # an interrupted test run leaves no server behind
                return self
            err = self._kill()
            if attempt == 2:
                raise RuntimeError(f"moto S3 server did not answer on {self.endpoint}: {err[-2000:]}")
        return self

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1):
                    return True
            except urllib.error.HTTPError:  # it answered (with an HTTP error): it is up
                return True
            except OSError:
                time.sleep(0.1)
        return False

    def _kill(self) -> str:
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.seek(0)
        err = self._log.read().decode(errors="replace")
        self._log.close()
        self.proc = self._log = None
        return err

    def stop(self) -> None:
        self._kill()

    def boto3_client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def create_bucket(self, name: str) -> str:
        """Create bucket `name` (us-east-1: no location constraint); returns 's3://name'."""
        self.boto3_client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def reset(self) -> None:
        """Forget every bucket and object (moto's reset API)."""
        req = urllib.request.Request(self.endpoint + "/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def check_signatures(self, on: bool) -> None:
        """Make the server check every request's signature against its IAM users (`on`; it has none, so every
        request is refused: unsigned ones with a 500, signed ones as an unknown access key) or accept any
        request as it does by default (moto's reset-auth API). Turn it off again: it holds for the server."""
        req = urllib.request.Request(self.endpoint + "/moto-api/reset-auth", data=b"0" if on else b"inf",
                                     method="POST", headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=10):
            pass

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
