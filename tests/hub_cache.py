"""Hugging Face hubs built by the tests themselves, so hub ids are resolved the way a user's are.

A cache, laid out exactly as huggingface_hub writes it on a user's machine (read offline, HF_HUB_OFFLINE=1):

    models--<org>--<name>/snapshots/<commit>/<files>     refs/<branch or tag> (holds the commit)
    datasets--<org>--<name>/snapshots/<commit>/<files>   refs/...             (datasets reads hub data from here)

and a hub (`FakeHub`): an HTTP server on loopback answering the part of the Hub's HTTP API that huggingface_hub's
`repo_info`, `hf_hub_download` and `snapshot_download` use (repo info with its file list, HEAD / GET of a file at
a revision, the X-Repo-Commit / ETag headers and the X-Error-Code of a missing repo, revision or file). A process
started with HF_ENDPOINT pointing at it downloads from it exactly as it would from huggingface.co, so what lands
in its cache is what our code asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Union
from urllib.parse import unquote, urlsplit


def fake_commit(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _repo_dir(cache: str, repo_id: str, repo_type: str = "model") -> str:
    return os.path.join(cache, f"{repo_type}s--" + repo_id.replace("/", "--"))


def add_model_snapshot(cache: str, repo_id: str, source_dir: str, commit: str = None, ref: str = "main") -> str:
    """Copy `source_dir` into the hub cache as `repo_id` at `commit` and point `refs/<ref>` at it."""
    commit = commit or fake_commit(repo_id + source_dir)
    shutil.copytree(source_dir, os.path.join(_repo_dir(cache, repo_id), "snapshots", commit), dirs_exist_ok=True)
    point_ref(cache, repo_id, commit, ref)
    return commit


def point_ref(cache: str, repo_id: str, commit: str, ref: str = "main", repo_type: str = "model") -> None:
    refs = os.path.join(_repo_dir(cache, repo_id, repo_type), "refs")
    os.makedirs(refs, exist_ok=True)
    with open(os.path.join(refs, ref), "w") as f:
        f.write(commit)


def add_dataset_snapshot(cache: str, repo_id: str, files: dict, commit: str = None, ref: str = "main") -> str:
    """Put a dataset repo's files ({path in repo: local file to copy, or bytes / str content}) into the hub cache
    as `repo_id` at `commit` (derived from the files when None) and point `refs/<ref>` at it: as a user's cache
    holds a dataset downloaded by huggingface-cli or by an earlier `load_dataset` while online."""
    blobs = {path: _content(src) for path, src in files.items()}
    digests = {path: hashlib.sha1(content).hexdigest() for path, content in sorted(blobs.items())}
    commit = commit or fake_commit(repo_id + json.dumps(digests))
    root = os.path.join(_repo_dir(cache, repo_id, "dataset"), "snapshots", commit)
    for path, content in blobs.items():
        os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
        with open(os.path.join(root, path), "wb") as f:
            f.write(content)
    if ref is not None:
        point_ref(cache, repo_id, commit, ref, "dataset")
    return commit


def _content(src: Union[str, bytes]) -> bytes:
    if isinstance(src, bytes):
        return src
    if os.path.isfile(src):
        with open(src, "rb") as f:
            return f.read()
    return src.encode()


def dir_files(path: str) -> dict:
    """{relative path: bytes} of every file under `path` (a model directory to serve from the hub)."""
    out = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            out[os.path.relpath(full, path)] = _content(full)
    return out


def snapshot_files(snapshot: str) -> set:
    """The files a snapshot directory holds, as repo paths."""
    return set(dir_files(snapshot))


class FakeHub:
    """Repos served over HTTP on 127.0.0.1 the way the Hub serves them (see the module docstring).

    `add(repo_id, files, repo_type, ref)` adds a commit holding exactly `files` ({path: bytes}) and moves `ref`
    to it; `requests` records every (method, path) asked for, so a test sees what was downloaded."""

    def __init__(self):
        self.repos: dict = {}  # (repo_type, repo_id) -> {"commits": {sha: files}, "refs": {name: sha}}
        self.requests: list = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, repo_id: str, files: dict, repo_type: str = "model", ref: str = "main") -> str:
        repo = self.repos.setdefault((repo_type, repo_id), {"commits": {}, "refs": {}})
        blobs = {path: _content(src) for path, src in files.items()}
        commit = fake_commit(repo_type + repo_id + str(len(repo["commits"])) +
                             json.dumps({p: hashlib.sha1(b).hexdigest() for p, b in sorted(blobs.items())}))
        repo["commits"][commit] = blobs
        repo["refs"][ref] = commit
        return commit

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def downloaded(self, repo_id: str, repo_type: str = "model") -> set:
        """The files of `repo_id` fetched with GET (a HEAD only asks for metadata)."""
        prefix = ("/datasets/" if repo_type == "dataset" else "/") + repo_id + "/resolve/"
        return {path[len(prefix):].split("/", 1)[1] for method, path in self.requests
                if method == "GET" and path.startswith(prefix)}

    def _answer(self, handler, body: bool) -> None:
        path = unquote(urlsplit(handler.path).path)
        self.requests.append((handler.command, path))
        parts = path.strip("/").split("/")
        if parts[0] == "api":  # /api/{models|datasets}/{org}/{name}[/revision/{rev}]
            repo_type, repo_id = parts[1][:-1], "/".join(parts[2:4])
            revision = parts[5] if len(parts) > 5 and parts[4] == "revision" else "main"
            repo, commit = self._resolve(handler, repo_type, repo_id, revision, body)
            if repo is None:
                return
            info = {"id": repo_id, "sha": commit, "private": False,
                    "siblings": [{"rfilename": p} for p in sorted(repo["commits"][commit])]}
            return self._send(handler, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        repo_type = "dataset" if parts[0] == "datasets" else "model"
        parts = parts[1:] if repo_type == "dataset" else parts
        if len(parts) < 5 or parts[2] != "resolve":  # {org}/{name}/resolve/{rev}/{path...}
            return self._send(handler, 404, b"not found", {}, body)
        repo, commit = self._resolve(handler, repo_type, "/".join(parts[:2]), parts[3], body)
        if repo is None:
            return
        name = "/".join(parts[4:])
        content = repo["commits"][commit].get(name)
        if content is None:
            return self._send(handler, 404, b"entry not found", {"X-Error-Code": "EntryNotFound"}, body)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(content).hexdigest()}"',
                   "Content-Type": "application/octet-stream"}
        self._send(handler, 200, content, headers, body)

    def _resolve(self, handler, repo_type: str, repo_id: str, revision: str, body: bool):
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            self._send(handler, 404, b"repository not found", {"X-Error-Code": "RepositoryNotFound"}, body)
            return None, None
        commit = repo["refs"].get(revision, revision if revision in repo["commits"] else None)
        if commit is None:
            self._send(handler, 404, b"revision not found", {"X-Error-Code": "RevisionNotFound"}, body)
            return None, None
        return repo, commit

    @staticmethod
    def _send(handler, status: int, content: bytes, headers: dict, body: bool) -> None:
        handler.send_response(status)
        for k, v in headers.items():
            handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        if body:
            handler.wfile.write(content)
