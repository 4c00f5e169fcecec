"""Weights & Biases beside TensorBoard: the same series, read back from wandb's own offline run file."""

import glob
import json
import os
import struct

import pytest

from tests.conftest import REPO, data_path

pytest.importorskip("wandb")


def wandb_history(run_dir: str) -> list[dict]:
    """The history rows of the offline run under `run_dir`/wandb: its .wandb file is a LevelDB-style log (32 KiB
    blocks of records with a 7-byte header: crc32, length, type) of wandb's protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, rows, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # block padding
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_wandb_offline_gets_the_metrics_jsonl_series(tiny_llama, tmp_path, monkeypatch):
    from launch import sft

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "sft"
    assert sft.main(["--config", os.path.join(REPO, "configs", "sft_tiny.yaml"), f"model.path={tiny_llama}",
                     f"data.train_path={data_path('sft', 'train.jsonl')}", "data.eval_path=null", "trainer.max_steps=3",
                     "logging.wandb.project=coati-test", "--output-dir", str(out)]) == 0
    local = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = {row["_step"]: row for row in wandb_history(str(out))}
    assert sorted(logged) == [r["step"] for r in local] == [1, 2, 3]
    for record in local:
        row = logged[record["step"]]
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                assert row[key] == pytest.approx(value), key
    assert (out / "wandb" / "run_id").is_file()


def test_wandb_online_without_a_key_is_refused_before_training(tiny_llama, tmp_path, monkeypatch, capsys):
    from launch import sft

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert sft.main(["--config", os.path.join(REPO, "configs", "sft_tiny.yaml"), f"model.path={tiny_llama}",
                     "logging.wandb.project=coati-test", "--output-dir", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "logging.wandb.mode" in err[0] and "WANDB_API_KEY" in err[0], err
