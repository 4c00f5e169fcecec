"""coati_ray/storage against a real S3-compatible server (moto's, its own process on loopback: tests/s3_server.py),
through pyarrow's own S3 client: URIs, the filesystem operations, staged writes, sealed checkpoints, the node
cache and the run-directory mirror (the preflight checks: tests/test_storage_preflight.py). No Ray, no models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from coati_ray.storage import cache, checkpoint, fs, mirror, staging
from coati_ray.storage.checkpoint import MANIFEST, Checkpoint, is_complete, manifest_bytes, remove, written_whole
from coati_ray.storage.fs import StorageError
from coati_ray.storage.uri import absolute, is_uri, join, key_of, redact, relative, split, unsupported_scheme

SECRET = "wJalrXUtnFEMI-s3cr3t-value-K7MDENG"  # the secret key the storage tests run with: it must show nowhere


def one_line(err: BaseException) -> str:
    text = str(err)
    assert text and "\n" not in text and "\r" not in text, text
    assert SECRET not in text and "hunter2" not in text, text
    return text


@pytest.fixture(autouse=True)
def _fresh(s3_server, tmp_path, monkeypatch):
    """Each test: the node cache and staging under tmp_path, a secret key worth hiding, filesystems built anew
    from the environment as the test leaves it, and no URI resolved by an earlier test."""
    monkeypatch.setenv("COATI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # moto takes any secret while it checks no signatures
    fs.reset()
    cache.forget()
    yield
    fs.reset()
    cache.forget()


@pytest.fixture
def bucket(s3_server) -> str:
    return s3_server.create_bucket(f"coati-{uuid.uuid4().hex[:12]}")


def write_tree(root, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def read_tree(root) -> dict[str, bytes]:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.relpath(os.path.join(d, n), root)] = f.read()
    return out


TREE = {"a.txt": b"alpha\n", "sub/b.bin": bytes(range(256)) * 40, "sub/deeper/c.json": b'{"c": 3}'}


# ---------------------------------------------------------------------------------------------------------- uri


def test_uri_join_absolute_relative_split():
    assert join("s3://bkt/run/", "checkpoints", "/step_000001/") == "s3://bkt/run/checkpoints/step_000001"
    assert join("gs://bkt", "a/b") == "gs://bkt/a/b"
    assert join("/tmp/run", "x") == "/tmp/run/x"
    assert absolute("s3://b/x/") == "s3://b/x"  # the scheme's '//' survives (os.path.abspath would fold it)
    assert absolute("hdfs://nn:8020/runs/") == "hdfs://nn:8020/runs"
    assert absolute("rel/dir") == os.path.join(os.getcwd(), "rel", "dir")
    assert relative("s3://bkt/run/a/b.txt", "s3://bkt/run/") == "a/b.txt"
    assert relative("s3://bkt/run/", "s3://bkt/run") == ""
    with pytest.raises(ValueError):
        relative("s3://bkt/runx/a", "s3://bkt/run")  # a sibling that shares the prefix is not under it
    assert relative("/a/b/c", "/a") == os.path.join("b", "c")
    assert split("s3://bkt/a/b/") == ("s3", "bkt", "a/b")
    assert split("hdfs://nn:8020/x") == ("hdfs", "nn:8020", "x")
    assert is_uri("s3://b/x") and is_uri("GS://b") and not is_uri("/data/x") and not is_uri("ftp://h/x")
    assert unsupported_scheme("ftp://h/x") == "ftp" and unsupported_scheme("s3://b") is None
    assert unsupported_scheme("/local") is None
    assert key_of("s3://b/x/") == key_of("s3://b/x") != key_of("s3://b/y")


def test_redact_drops_credentials():
    uri = "s3://AKIAUSERNAME:hunter2pass@bkt/run?X-Amz-Signature=deadbeef1234&X-Amz-Expires=3600"
    out = redact(uri)
    assert out.startswith("s3://***@bkt/run?"), out
    for secret in ("AKIAUSERNAME", "hunter2pass", "deadbeef1234"):
        assert secret not in out
    assert "X-Amz-Expires=3600" in out and "X-Amz-Signature=***" in out
    assert redact("hdfs://user:pw@nn:8020/x") == "hdfs://***@nn:8020/x"
    assert redact("s3://bkt/plain") == "s3://bkt/plain"
    assert redact("/local/with:colon@at") == "/local/with:colon@at"
    assert redact(None) is None
    assert "hunter2pass" not in key_of(uri)


# ---------------------------------------------------------------------------------------------------------- fs


def test_fs_text_and_tree_round_trip(bucket, tmp_path):
    note = join(bucket, "run", "notes", "a.txt")
    fs.write_text(note, "héllo wörld")
    assert fs.read_text(note) == "héllo wörld"
    assert fs.exists(note) and not fs.is_dir(note)
    assert fs.is_dir(join(bucket, "run", "notes")) and fs.exists(join(bucket, "run"))
    assert not fs.exists(join(bucket, "run", "absent.txt"))
    with pytest.raises(StorageError) as e:
        fs.read_text(join(bucket, "run", "absent.txt"))
    assert f"'{join(bucket, 'run', 'absent.txt')}'" in one_line(e.value)

    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, TREE)
    tree = join(bucket, "run", "tree")
    assert sorted(fs.upload(str(src), tree)) == sorted(TREE)
    listing = fs.list_files(tree)
    assert {k: v[0] for k, v in listing.items()} == {k: len(v) for k, v in TREE.items()}
    assert all(mtime > 0 for _, mtime in listing.values())
    assert fs.list_dir(tree) == ["a.txt", "sub"]
    assert fs.list_dir(join(tree, "sub")) == ["b.bin", "deeper"]
    fs.download(tree, str(dst), sorted(listing))
    assert read_tree(dst) == TREE
    fs.download(join(tree, "sub", "b.bin"), str(tmp_path / "one" / "b.bin"))  # one object, to a new directory
    assert (tmp_path / "one" / "b.bin").read_bytes() == TREE["sub/b.bin"]
    assert fs.upload(str(src / "a.txt"), join(bucket, "run", "single.txt")) == ["a.txt"]
    assert fs.read_bytes(join(bucket, "run", "single.txt")) == TREE["a.txt"]
    assert fs.upload(str(src), join(bucket, "run", "some"), ["sub/deeper/c.json"]) == ["sub/deeper/c.json"]
    assert list(fs.list_files(join(bucket, "run", "some"))) == ["sub/deeper/c.json"]

    fs.delete(join(tree, "sub"))
    assert list(fs.list_files(tree)) == ["a.txt"]
    fs.delete(join(tree, "a.txt"))
    assert fs.list_files(tree) == {}
    fs.delete(join(tree, "never-was"))  # absent: nothing to do, no error
    assert fs.list_files(join(bucket, "nothing")) == {} and fs.list_dir(join(bucket, "nothing")) == []
    assert fs.read_text(note) == "héllo wörld"  # deleting the tree left its neighbours alone


def test_fs_delete_refuses_a_bare_bucket(bucket):
    fs.write_text(join(bucket, "keep.txt"), "x")
    for uri in (bucket, bucket + "/"):
        with pytest.raises(StorageError) as e:
            fs.delete(uri)
        assert "whole bucket" in one_line(e.value) and bucket in str(e.value)
    assert fs.read_text(join(bucket, "keep.txt")) == "x"


# ----------------------------------------------------------------------------------------------------- staging


def test_staged_writes_upload_under_the_target_then_clean_up(bucket, tmp_path):
    target = join(bucket, "run", "part")
    with staging.staged_writes(target) as out:
        assert out != target and os.path.isdir(out) and not is_uri(out)
        assert os.path.dirname(out) == staging.staging_root() == str(tmp_path / "cache" / "staging")
        write_tree(out, TREE)
        assert fs.list_files(target) == {}  # nothing is uploaded before the block ends
    assert {k: v[0] for k, v in fs.list_files(target).items()} == {k: len(v) for k, v in TREE.items()}
    assert fs.read_bytes(join(target, "sub", "b.bin")) == TREE["sub/b.bin"]
    assert not os.path.exists(out) and os.listdir(staging.staging_root()) == []


def test_staged_writes_upload_nothing_when_the_block_fails(bucket):
    target = join(bucket, "run", "failed")
    with pytest.raises(RuntimeError, match="writer died"):
        with staging.staged_writes(target) as out:
            write_tree(out, TREE)
            raise RuntimeError("writer died")
    assert fs.list_files(target) == {} and not fs.exists(target)
    assert not os.path.exists(out) and os.listdir(staging.staging_root()) == []


def test_staged_writes_to_a_local_target_write_in_place(tmp_path):
    with staging.staged_writes(str(tmp_path / "here")) as out:
        assert out == str(tmp_path / "here")
    assert not os.path.exists(staging.staging_root())


def test_staging_of_a_dead_process_is_swept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root = staging.staging_root()
    stale = os.path.join(root, f"part-0123456789abcdef-{dead.pid}-deadbeef")
    mine = os.path.join(root, f"part-0123456789abcdef-{os.getpid()}-cafecafe")
    os.makedirs(stale)
    os.makedirs(mine)
    fresh = staging.new_staging("part", "s3://bkt/x")
    assert not os.path.exists(stale) and os.path.isdir(mine) and os.path.isdir(fresh)


# -------------------------------------------------------------------------------------------------- checkpoint


def test_checkpoint_is_complete_only_once_sealed(bucket):
    target = join(bucket, "run", "checkpoints", "step_000001")
    ckpt = Checkpoint(target)
    ckpt.begin()
    assert ckpt.path == target
    with staging.staged_writes(ckpt.path) as out:
        write_tree(out, TREE)
    assert len(fs.list_files(target)) == len(TREE)  # every file is there ...
    assert not is_complete(target) and manifest_bytes(target) is None  # ... but it is not complete yet
    assert ckpt.seal({"trainer_state.json": '{"step": 1}'}, meta={"step": 1}) == target
    assert is_complete(target)
    manifest = json.loads(manifest_bytes(target))
    assert manifest["files"] == {**{k: len(v) for k, v in TREE.items()}, "trainer_state.json": len('{"step": 1}')}
    assert manifest["step"] == 1
    assert fs.read_text(join(target, "trainer_state.json")) == '{"step": 1}'


def test_written_whole_seals_on_success_only(bucket):
    good, bad = join(bucket, "run", "final"), join(bucket, "run", "broken")
    with written_whole(good) as out:
        write_tree(out, TREE)
        assert not is_complete(good)
    assert is_complete(good) and sorted(json.loads(manifest_bytes(good))["files"]) == sorted(TREE)
    with pytest.raises(RuntimeError):
        with written_whole(bad) as out:
            write_tree(out, TREE)
            raise RuntimeError("save failed")
    assert not is_complete(bad) and fs.list_files(bad) == {}


def test_begin_removes_an_old_incomplete_upload(bucket, tmp_path):
    target = join(bucket, "run", "checkpoints", "step_000003")
    write_tree(tmp_path / "old", {"stale.bin": b"old", "model/weights.bin": b"half"})
    fs.upload(str(tmp_path / "old"), target)  # a run killed mid-upload: files, no manifest
    assert len(fs.list_files(target)) == 2 and not is_complete(target)
    ckpt = Checkpoint(target)
    ckpt.begin()
    assert fs.list_files(target) == {}
    with staging.staged_writes(ckpt.path) as out:
        write_tree(out, {"new.bin": b"new"})
    ckpt.seal()
    assert json.loads(manifest_bytes(target))["files"] == {"new.bin": 3}


def test_remove_deletes_the_manifest_first(bucket, monkeypatch):
    target = join(bucket, "run", "checkpoints", "step_000004")
    with written_whole(target) as out:
        write_tree(out, TREE)
    seen = []
    real_delete = checkpoint.delete

    def delete(uri):
        real_delete(uri)
        seen.append((uri, is_complete(target), len(fs.list_files(target))))

    monkeypatch.setattr(checkpoint, "delete", delete)
    remove(target)
    assert seen[0] == (join(target, MANIFEST), False, len(TREE))  # incomplete while its files are still there
    assert seen[-1][1:] == (False, 0) and not fs.exists(target)


# ------------------------------------------------------------------------------------------------------- cache


def counting_downloads(monkeypatch) -> list:
    calls = []
    real = cache.download

    def download(uri, local, files=None):
        calls.append(uri)
        return real(uri, local, files)

    monkeypatch.setattr(cache, "download", download)
    return calls


def entries() -> list[str]:
    return sorted(n for n in os.listdir(cache.cache_dir()) if not n.startswith("."))


def test_local_copy_downloads_a_sealed_checkpoint_once_per_version(bucket, monkeypatch):
    calls = counting_downloads(monkeypatch)
    ckpt = join(bucket, "run", "checkpoints", "final")
    with written_whole(ckpt) as out:
        write_tree(out, TREE)
    first = cache.local_copy(ckpt, "actor.path")
    got = read_tree(first)
    assert got.pop(".coati-source.json") and got.pop(MANIFEST) and got == TREE
    assert calls == [ckpt] and entries() == [os.path.basename(first)]
    stamp = os.stat(first).st_mtime_ns

    assert cache.local_copy(ckpt + "/", "actor.path") == first  # this process resolved it already
    cache.forget()
    assert cache.local_copy(ckpt, "actor.path") == first  # resolved anew: same version, already on this node
    assert calls == [ckpt] and entries() == [os.path.basename(first)] and os.stat(first).st_mtime_ns == stamp

    with written_whole(ckpt) as out:  # the same name saved again, other content
        write_tree(out, {"a.txt": b"second version"})
    assert cache.local_copy(ckpt) == first  # a process keeps the version it resolved
    cache.forget()
    second = cache.local_copy(ckpt)
    assert second != first and len(calls) == 2 and len(entries()) == 2
    assert (open(os.path.join(second, "a.txt"), "rb").read() == b"second version"
            and not os.path.exists(os.path.join(second, "sub")))
    assert read_tree(first).get("a.txt") == TREE["a.txt"]  # the old entry is left as it was


def test_local_copy_of_a_path_inside_a_checkpoint(bucket):
    ckpt = join(bucket, "run", "checkpoints", "step_000010")
    with written_whole(ckpt) as out:
        write_tree(out, TREE)
    one = cache.local_copy(join(ckpt, "sub", "b.bin"))
    assert os.path.basename(one) == "b.bin" and open(one, "rb").read() == TREE["sub/b.bin"]
    sub = cache.local_copy(join(ckpt, "sub"))
    got = read_tree(sub)
    assert got.pop(".coati-source.json")
    assert got == {"b.bin": TREE["sub/b.bin"], "deeper/c.json": TREE["sub/deeper/c.json"]}
    with pytest.raises(StorageError) as e:
        cache.local_copy(join(ckpt, "nope"), "actor.path")
    assert "does not exist" in one_line(e.value) and "actor.path" in str(e.value)


def test_local_copy_refuses_an_unsealed_checkpoint(bucket, tmp_path, monkeypatch):
    calls = counting_downloads(monkeypatch)
    ckpt = join(bucket, "run", "checkpoints", "step_000002")
    write_tree(tmp_path / "half", TREE)
    fs.upload(str(tmp_path / "half"), ckpt)  # uploaded, never sealed
    for uri in (ckpt, join(ckpt, "a.txt")):
        with pytest.raises(StorageError) as e:
            cache.local_copy(uri, "actor.path")
        text = one_line(e.value)
        assert f"actor.path: '{ckpt}' is not a complete checkpoint" in text and MANIFEST in text
    assert calls == []
    assert not os.path.exists(cache.cache_dir()) or entries() == []


def test_a_failed_download_leaves_nothing_in_the_cache(bucket, monkeypatch):
    uri = join(bucket, "data", "x.txt")
    fs.write_text(uri, "x")

    def broken(uri, local, files=None):
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with open(local, "w") as f:
            f.write("half")
        raise StorageError("storage error: the connection dropped")

    real = cache.download
    monkeypatch.setattr(cache, "download", broken)
    with pytest.raises(StorageError, match="connection dropped"):
        cache.local_copy(uri)
    assert os.listdir(cache.cache_dir()) == [".locks"]  # no entry, no half-written .partial-<pid>
    monkeypatch.setattr(cache, "download", real)
    assert open(cache.local_copy(uri)).read() == "x"


def test_local_copy_of_a_plain_file_follows_its_changes(bucket):
    uri = join(bucket, "data", "train.jsonl")
    fs.write_text(uri, '{"x": 1}\n')
    first = cache.local_copy(uri, "data.path")
    assert os.path.basename(first) == "train.jsonl" and open(first).read() == '{"x": 1}\n'
    fs.write_text(uri, '{"x": 1}\n{"x": 2}\n')
    cache.forget()
    second = cache.local_copy(uri, "data.path")
    assert second != first and open(second).read() == '{"x": 1}\n{"x": 2}\n'


def test_local_copy_of_a_missing_uri_says_so_in_one_line(bucket, s3_server):
    for uri in (join(bucket, "nope", "model"), "s3://coati-no-such-bucket/model"):
        with pytest.raises(StorageError) as e:
            cache.local_copy(uri, "actor.path")
        text = one_line(e.value)
        assert text.startswith(f"storage error: actor.path: '{uri}' does not exist"), text
    assert not os.path.exists(cache.cache_dir()) or entries() == []


# ------------------------------------------------------------------------------------------------------ mirror


def test_mirror_pushes_only_what_changed(bucket, monkeypatch):
    target = join(bucket, "runs", "r1")
    uploads = []
    real_upload = fs.upload
    monkeypatch.setattr(fs, "upload",
                        lambda local, uri, files=None: uploads.append(files) or real_upload(local, uri, files))
    m = mirror.Mirror(target)
    assert m.local != target and os.path.isdir(m.local)
    write_tree(m.local, {"metrics.jsonl": b'{"step": 1}\n', "summary.json": b"{}", "tensorboard/ev.1": b"tb",
                         "checkpoints/step_1/model.bin": b"big", "config.yaml.tmp": b"half"})
    assert m.push() == ["metrics.jsonl", "summary.json", "tensorboard/ev.1"]
    assert sorted(fs.list_files(target)) == ["metrics.jsonl", "summary.json", "tensorboard/ev.1"]
    assert m.push() == [] and len(uploads) == 1  # nothing changed: nothing sent
    with open(os.path.join(m.local, "metrics.jsonl"), "a") as f:
        f.write('{"step": 2}\n')
    assert m.push() == ["metrics.jsonl"] and uploads[-1] == ["metrics.jsonl"]
    assert fs.read_text(join(target, "metrics.jsonl")) == '{"step": 1}\n{"step": 2}\n'
    monkeypatch.setenv(mirror.SYNC_ENV, "3600")
    with open(os.path.join(m.local, "metrics.jsonl"), "a") as f:
        f.write('{"step": 3}\n')
    assert m.push(force=False) == []  # not due yet
    assert m.shown(os.path.join(m.local, "plots", "a.png")) == join(target, "plots", "a.png")
    local = m.local
    m.close()  # pushes what is left
    assert not os.path.exists(local)
    assert fs.read_text(join(target, "metrics.jsonl")).endswith('{"step": 3}\n')


def test_mirror_pulls_small_files_not_checkpoints(bucket, tmp_path):
    target = join(bucket, "runs", "r2")
    write_tree(tmp_path / "remote", {"metrics.jsonl": b"m\n", "wandb_id": b"abc", "tensorboard/ev.1": b"tb",
                                     "checkpoints/step_1/model.bin": b"big", "checkpoints/step_1/manifest.json": b"{}"})
    fs.upload(str(tmp_path / "remote"), target)
    m = mirror.Mirror(target)
    assert sorted(m.pull()) == ["metrics.jsonl", "wandb_id"]
    assert read_tree(m.local) == {"metrics.jsonl": b"m\n", "wandb_id": b"abc"}
    assert m.pull() == []  # already here
    assert m.push() == []  # what was pulled is not sent back
    local = m.local
    m.close()
    assert not os.path.exists(local)


def test_mirror_of_a_local_run_directory_is_the_directory(tmp_path):
    m = mirror.Mirror(str(tmp_path / "run"))
    assert m.local == str(tmp_path / "run") and m.pull() == [] and m.push() == []
