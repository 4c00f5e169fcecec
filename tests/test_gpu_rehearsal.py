"""A rehearsal on CPU of the GPU issue's runs, end to end: benchmarks.gpu_ppo's own main and run (separate with the
per-step weight watch, and colocated) under a real Ray job, its --out file filed by benchmarks.gpu_results into
RESULTS.json and RESULTS.md. Only the GPU parts are swapped: the tiny model instead of OPT shapes, ddp instead of
ZeRO-2/Gemini (they assert CUDA), no GPU fractions. A crash in the row a run returns would otherwise cost a loan.
Its own module: gpu_ppo.main starts and stops its own Ray."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

CPU = ("maker.num_gpus=0", "maker.num_cpus=0.5", "maker.torch_threads=1", "maker.batch_size=16",
       "generation.max_new_tokens=6", "buffer.timeout_s=120",
       *(f"{g}.resources.{k}" for g in ("actor_trainer", "critic_trainer") for k in (
           "num_gpus_per_rank=0", "num_cpus_per_rank=0.5", "torch_threads=1")))


def test_gpu_ppo_runs_separate_with_the_watch_and_colocated_and_its_file_is_filed(tiny_llama, reward_dir, tmp_path,
                                                                                 monkeypatch):
    from benchmarks import common, gpu_ppo, report
    from benchmarks.gpu_results import main as file_results

    monkeypatch.setattr(common, "RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(common, "RESULTS_JSON", str(tmp_path / "RESULTS.json"))
    monkeypatch.setattr(report, "PATH", str(tmp_path / "RESULTS.md"))
    on_gpu = gpu_ppo.job_config

    def on_cpu(path, rm, name, strategy, steps, transport, placement="separate", extra=()):
        cfg = on_gpu(tiny_llama, reward_dir, name, strategy, steps, transport, placement, tuple(extra) + CPU)
        cfg.output_dir = str(tmp_path / f"run-{placement}")
        return cfg

    monkeypatch.setattr(gpu_ppo, "build", lambda name: (tiny_llama, reward_dir))
    monkeypatch.setattr(gpu_ppo, "job_config", on_cpu)
    out = tmp_path / "call" / "diagnose_zero2.json"
    out.parent.mkdir()
    gpu_ppo.main(["--sizes", "opt-1.3b", "--strategies", "ddp", "--placements", "separate", "colocated",
                  "--repeats", "1", "--steps", "3", "--per-step", "--tag", "lr1e-6",
                  "--set", "actor_trainer.optim.lr=1e-6", "algorithm.behaviour_correction=measure",
                  "--section", "gpu_diagnose_zero2", "--out", str(out)])

    written = json.loads(out.read_text())
    separate, colocated = written["rows"]
    assert "error" not in separate and "error" not in colocated, written["rows"]
    assert written["measured_at"] and written["command"].startswith("python -m benchmarks.gpu_ppo")
    assert separate["steps"] == colocated["steps"] == 3 and separate["samples_per_s_per_gpu"] > 0
    assert colocated["placement"] == "colocated" and colocated["transport"] == "none" and colocated["sync_bytes"] == 0
    steps = separate["per_step"]
    assert [s["sync/maker_version"] for s in steps] == [1, 2, 3] and all(s["sync/max_abs_delta"] == 0 for s in steps)
    # lr 1e-6 in fp32: the weights move, by about lr per step (Adam)
    assert steps[0].get("actor/max_abs_update") is None and 0 < steps[1]["actor/max_abs_update"] < 1e-4
    assert all("watch_seconds" in s and "kl" in s and "behaviour/log_ratio_abs_mean" in s for s in steps)
    assert "sync/max_abs_delta" not in colocated["per_step"][0]  # no maker to compare with
    assert colocated["per_step"][1]["actor/max_abs_update"] > 0

    file_results([str(out.parent)])
    data = json.loads((tmp_path / "RESULTS.json").read_text())
    assert data["gpu_diagnose_zero2"]["rows"] == written["rows"]
    assert set(data["gpu"]["gemini_1p3b_tokens_per_s"]) == {"ddp lr 1e-6"}
    assert "| ddp [lr1e-6] | 3 |" in (tmp_path / "RESULTS.md").read_text()
