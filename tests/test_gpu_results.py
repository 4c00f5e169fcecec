"""benchmarks.gpu_results: what a GPU loan's device calls bring back reaches RESULTS.json and RESULTS.md (a loan
leaves no time to do it by hand). The phase files are written as check.sh's phases write them: gpu_generate's for
real (on CPU, the tiny model), gpu_ppo's rows with the keys its `run` and `run_trl` return (they need a GPU)."""

from __future__ import annotations

import json

import pytest

VERSIONS_TXT = """gpu: NVIDIA H200 | torch 2.11.0+cu130 cuda 13.0 nccl 2.27.7
ray 2.60.0
colossalai 0.5.0
trl FAILED: ImportError: nope
import actors.driver: ok
"""


def ours(placement="colocated", transport="none", samples=8.0, **kw) -> dict:
    return {"model": "opt-1.3b", "strategy": "colossalai_zero2", "placement": placement, "transport": transport,
            "precision": "bf16", "steps": 8, "step_seconds": 32 / samples, "samples_per_s_per_gpu": samples,
            "generated_tokens_per_s": 40 * samples, "sync_seconds": 0.0 if placement == "colocated" else 1.2,
            "mfu_makers": 0.05, "mfu_actor_trainer": 0.1, "mfu_critic_trainer": 0.1, "round": 0, **kw}


def trl(samples=4.0) -> dict:
    return {"model": "opt-1.3b", "strategy": "trl-bf16", "precision": "bf16", "trl": "0.19.1", "round": 0,
            "step_seconds": 32 / samples, "samples_per_s": samples, "samples_per_s_per_gpu": samples,
            "generated_tokens_per_s": 100.0}


def diagnosis(strategy: str, tag: str, lengths: list) -> dict:
    return {**ours("separate", "object_store", samples=2.0, strategy=strategy, tag=tag,
                   overrides=[f"actor_trainer.optim.lr={tag[2:]}"]),
            "per_step": [{"response_length": n, "kl": 0.01 * i, "actor/grad_norm": 1.5, "behaviour/log_ratio_abs_mean":
                          1e-3, "sync/max_abs_delta": 0.0, **({"actor/max_abs_update": 0.0} if i else {})}
                         for i, n in enumerate(lengths)]}


def write(folder, name: str, result) -> None:
    """A phase's JSON, or a text file (versions.txt) as it is."""
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(result if isinstance(result, str) else json.dumps(result))


@pytest.fixture
def results(tmp_path, monkeypatch):
    """RESULTS.json/.md in tmp_path, with the earlier sweep's `gpu` section and an unrelated CPU section."""
    from benchmarks import common, report

    monkeypatch.setattr(common, "RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(common, "RESULTS_JSON", str(tmp_path / "RESULTS.json"))
    monkeypatch.setattr(report, "PATH", str(tmp_path / "RESULTS.md"))
    sweep = {"measured_at": "2026-11-01 10:00:00", "command": "python -m benchmarks.gpu_ppo", "device": "NVIDIA H100",
             "rows": [ours("separate", "object_store", samples=6.0, strategy="ddp", round=0)]}
    (tmp_path / "RESULTS.json").write_text(json.dumps({"gpu": sweep, "other": {"kept": True},
                                                       "machine": {"cpu": "the CPU box", "cores": 2, "memory_gb": 24,
                                                                   "os": "Linux", "python": "3.11"}}))
    return tmp_path


def test_the_phases_of_two_calls_become_sections_the_issues_keys_and_tables(results, tiny_llama):
    from benchmarks.gpu_generate import main as generate
    from benchmarks.gpu_results import main

    first, second = results / "call1", results / "call2"
    write(first, "versions.txt", VERSIONS_TXT)
    write(first, "diagnose_gemini_lr0.json", {"rows": [diagnosis("colossalai_gemini", "lr0", [64, 64, 63])]})
    write(first, "diagnose_gemini_lr1e-6.json", {"rows": [diagnosis("colossalai_gemini", "lr1e-6", [64, 2, 1])]})
    write(second, "colocated.json", {"rows": [ours(samples=9.0), trl(4.0)]})
    write(second, "colocated_separate.json", {"rows": [ours("separate", "object_store", samples=3.0),
                                                       ours("separate", "ipc", samples=4.5)]})
    generate(["--model", tiny_llama, "--device", "cpu", "--dtype", "float32", "--batches", "2", "--new-tokens", "3",
              "--repeats", "1", "--out", str(second / "generate.json"), "--no-save"])
    main([str(first), str(second)])

    data = json.loads((results / "RESULTS.json").read_text())
    gpu = data["gpu"]
    # the sweep stays as measured; the issue's keys join it
    assert gpu["measured_at"] == "2026-11-01 10:00:00" and len(gpu["rows"]) == 1 and data["other"] == {"kept": True}
    c = gpu["colocated_vs_trl"]
    assert c["ratio"] == pytest.approx(9.0 / 4.0) and c["target"] == 1.5 and c["trl_precision"] == "bf16"
    assert c["separate"]["ipc"]["vs_trl"] == pytest.approx(4.5 / 4.0)
    assert c["separate"]["object_store"]["colocated_vs_this"] == pytest.approx(3.0)
    assert set(gpu["gemini_1p3b_tokens_per_s"]) == {"colossalai_gemini lr 0", "colossalai_gemini lr 1e-6"}
    assert gpu["gemini_1p3b_diagnosis"]["colossalai_gemini lr 1e-6"]["response_length"] == [64, 2, 1]
    assert gpu["gemini_1p3b_diagnosis"]["colossalai_gemini lr 0"]["actor/max_abs_update"] == [None, 0.0, 0.0]
    rows = json.loads((second / "generate.json").read_text())["rows"]
    assert {b: gpu["generate_tokens_per_s"][rows[0]["model"]]["2"][b] for b in ("hf", "compact", "static")} == {
        r["backend"]: r["tokens_per_s"] for r in rows}
    # each phase is its own section, naming the GPU and the stack versions.txt reported
    lr0 = data["gpu_diagnose_lr0"]
    assert lr0["device"] == "NVIDIA H200" and lr0["versions"]["torch"] == "2.11.0+cu130"
    assert lr0["versions"]["ray"] == "2.60.0" and "trl" not in lr0["versions"] and "import" not in lr0["versions"]
    assert data["machine"]["cpu"] == "the CPU box"  # a GPU merge does not restamp the CPU box

    md = (results / "RESULTS.md").read_text()
    assert "Colocated against TRL (opt-1.3b, colossalai_zero2, TRL bf16): 2.25× samples/s (target 1.5×)" in md
    assert "| colossalai_gemini [lr1e-6] | 3 | 1 | 0.02 | 1.5 | 0.001 | 0 | 0 |" in md
    assert "| colossalai_zero2 separate ipc | 7.11 | 4.5 | 180 | 1.2 | 0.05 / 0.1 / 0.1 | 1.12× |" in md
    assert "| trl-bf16 |" in md and md.count("| static |") == 1 and "| yes |" in md


def test_a_later_call_replaces_only_its_phase_and_a_folder_without_phases_is_one_line(results):
    from benchmarks.gpu_results import main

    write(results / "a", "diagnose_zero2.json", {"rows": [diagnosis("colossalai_zero2", "lr1e-6", [64, 64])]})
    write(results / "a", "colocated.json", {"rows": [ours(samples=5.0), trl(4.0)]})
    main([str(results / "a")])
    write(results / "b", "colocated.json", {"rows": [ours(samples=6.0), {"model": "opt-1.3b", "strategy": "trl-bf16",
                                                                         "round": 0, "error": "OOM"}]})
    main([str(results / "b")])
    gpu = json.loads((results / "RESULTS.json").read_text())["gpu"]
    # TRL failed in the later call: no ratio from it, none kept from the call before; the diagnosis stays
    assert "colocated_vs_trl" not in gpu
    assert gpu["gemini_1p3b_tokens_per_s"] == {"colossalai_zero2 lr 1e-6": 80.0}
    assert "| trl-bf16 | OOM |" in (results / "RESULTS.md").read_text()
    with pytest.raises(SystemExit, match="no phase file .* in .*empty"):
        main([str(results / "empty")])


def test_a_run_cut_short_keeps_its_steps_a_later_calls_stack_names_its_own_and_the_sweep_keeps_its_notes(results):
    from benchmarks.common import read_results
    from benchmarks.gpu_results import main

    cut = {**diagnosis("colossalai_gemini", "lr1e-6", [64, 1]), "error": "RuntimeError: probability tensor | inf"}
    cut.pop("generated_tokens_per_s")
    write(results / "a", "versions.txt", VERSIONS_TXT)
    write(results / "a", "diagnose_gemini_lr1e-6.json", {"rows": [cut], "measured_at": "2026-12-24 09:00:00"})
    write(results / "b", "versions.txt", VERSIONS_TXT.replace("H200", "H100"))
    write(results / "b", "gpu.json", {"rows": [ours("separate", "object_store", samples=7.0, strategy="ddp")],
                                      "command": "python -m benchmarks.gpu_ppo --trl", "gpu": "NVIDIA H100"})
    data = read_results()
    data["gpu"]["bugs_fixed"] = ["a note written by hand"]
    (results / "RESULTS.json").write_text(json.dumps(data))
    main([str(results / "a"), str(results / "b")])

    data = read_results()
    lr = data["gpu_diagnose_lr1e-6"]
    assert lr["device"] == "NVIDIA H200" and lr["measured_at"] == "2026-12-24 09:00:00"  # when it ran, not merged
    gpu = data["gpu"]
    assert gpu["device"] == "NVIDIA H100" and gpu["bugs_fixed"] == ["a note written by hand"]
    assert gpu["rows"][0]["samples_per_s_per_gpu"] == 7.0 and gpu["command"] == "python -m benchmarks.gpu_ppo --trl"
    # no rate from a run that did not finish, but its steps and why it stopped
    assert "gemini_1p3b_tokens_per_s" not in gpu
    assert gpu["gemini_1p3b_diagnosis"]["colossalai_gemini lr 1e-6"]["response_length"] == [64, 1]
    assert gpu["gemini_1p3b_diagnosis"]["colossalai_gemini lr 1e-6"]["error"].startswith("RuntimeError")
    md = (results / "RESULTS.md").read_text()
    assert "| colossalai_gemini [lr1e-6] | 2 | 1 |" in md
    assert "did not finish: RuntimeError: probability tensor \\| inf" in md


def test_gpu_ppo_keeps_the_steps_of_a_run_that_fails_and_hands_each_to_progress(monkeypatch):
    """benchmarks.gpu_ppo.run's per-step bookkeeping, without the GPU its jobs need: a job that makes two steps and
    then fails (a diverging model) returns an error row with both steps' series; progress saw the row grow."""
    import types

    from benchmarks import gpu_ppo

    class Job:
        def __init__(self, cfg, **kw):
            pass

        def run(self, on_step):
            for step in (1, 2):
                on_step(self, step, {"kl": 0.1 * step, "response_length": 64 // step, "timing/sync": 1.0})
            raise RuntimeError("probability tensor contains inf")

    monkeypatch.setattr(gpu_ppo, "build", lambda name: ("policy", "rm"))
    monkeypatch.setattr(gpu_ppo, "job_config", lambda *a: types.SimpleNamespace(
        actor_trainer=types.SimpleNamespace(strategy=types.SimpleNamespace(precision="bf16"))))
    monkeypatch.setattr(gpu_ppo, "WeightWatch", lambda: lambda job: {"sync/max_abs_delta": 0.0})
    monkeypatch.setattr("actors.driver.RLJob", Job)
    seen = []
    row = gpu_ppo.run("opt-1.3b", "colossalai_gemini", 6, "object_store", extra=("actor_trainer.optim.lr=1e-6",),
                      per_step=True, progress=seen.append)
    assert row["error"] == "RuntimeError: probability tensor contains inf"
    assert [s["response_length"] for s in row["per_step"]] == [64, 32]
    assert all(s["sync/max_abs_delta"] == 0.0 and s["watch_seconds"] >= 0 for s in row["per_step"])
    assert [len(p["per_step"]) for p in seen] == [1, 2] and seen[-1]["error"] == "cut short after 2 of 6 steps"
    assert row["overrides"] == ["actor_trainer.optim.lr=1e-6"] and row["precision"] == "bf16"
    with pytest.raises(RuntimeError):  # a timing run (no per-step series) fails as before
        gpu_ppo.run("opt-1.3b", "colossalai_gemini", 6, "object_store")
