"""The TRL side by side's plumbing, timing nothing: the configurations each side runs, the interleaving, one
step rule for both sides, the ratio and its range, and how RESULTS.md reports them."""

import importlib.util
import os
import statistics

import pytest
import torch

from benchmarks import side_by_side as sbs
from benchmarks.bench_trl import OURS_SETUPS, our_configs, trl_command, trl_timing

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports nothing of TRL at module level: its venv is not ours
    return module


def test_trl_is_tried_in_every_layout_fp32_and_bf16_only_where_the_cpu_has_it():
    names = [lay.name for lay in sbs.trl_layouts(2, native_bf16=False)]
    assert names == ["1p x 2t fp32", "1p x 1t fp32", "2p x 1t fp32"]
    with_bf16 = sbs.trl_layouts(2, native_bf16=True)
    assert with_bf16[-1] == sbs.TrlLayout(1, 2, "bf16") and len(with_bf16) == 4
    assert [lay.name for lay in sbs.trl_layouts(1, native_bf16=False)] == ["1p x 1t fp32"]  # no duplicates
    assert not sbs.cpu_has_native_bf16(["avx2", "fma", "avx512f"])
    assert sbs.cpu_has_native_bf16(["avx2", "avx512_bf16"]) and sbs.cpu_has_native_bf16(["amx_bf16"])


def test_trl_ppo_runs_fp32_unless_told_stops_at_eos_and_splits_the_rollout_between_processes():
    ppo = _script("trl_ppo")
    w = {"rollout": 16, "micro": 4, "epochs": 1, "maker_batch": 8, "new_tokens": 16, "kl_coef": 0.05, "lr": 1e-5}
    one = ppo.config_kwargs(w, world=1, steps=12, precision="fp32", gpu=False, output_dir="x")
    assert one["bf16"] is False and one["fp16"] is False and one["stop_token"] == "eos" and one["use_cpu"]
    assert one["per_device_train_batch_size"] * one["gradient_accumulation_steps"] == 16
    assert one["total_episodes"] == 16 * 12
    two = ppo.config_kwargs(w, world=2, steps=12, precision="bf16", gpu=True, output_dir="x")
    assert two["bf16"] is True and not two["use_cpu"]
    assert two["per_device_train_batch_size"] * two["gradient_accumulation_steps"] * 2 == 16
    with pytest.raises(SystemExit, match="does not split into 3 processes"):
        ppo.config_kwargs(w, world=3, steps=12, precision="fp32", gpu=False, output_dir="x")


def test_trl_grpo_makes_the_whole_batch_per_step_on_any_number_of_processes():
    grpo = _script("trl_grpo")
    w = {"rollout": 64, "group": 4, "micro": 8, "new_tokens": 16, "kl_coef": 0.04, "lr": 1e-5}
    for world in (1, 2):
        kw = grpo.config_kwargs(w, world=world, steps=12, precision="fp32", output_dir="x")
        assert kw["per_device_train_batch_size"] * kw["gradient_accumulation_steps"] * world == 64
        assert kw["bf16"] is False and kw["max_steps"] == 12 and kw["num_generations"] == 4


def test_a_trl_run_of_several_processes_goes_through_accelerate_with_its_threads_and_precision():
    single = trl_command("py", "trl_ppo.py", sbs.TrlLayout(1, 2), ["--steps", "12"])
    assert single[0] == "py" and single[1].endswith("benchmarks/trl_ppo.py")
    assert single[-4:] == ["--threads", "2", "--precision", "fp32"]
    multi = trl_command("py", "trl_grpo.py", sbs.TrlLayout(2, 1, "bf16"), ["--steps", "12"])
    assert multi[:3] == ["py", "-m", "accelerate.commands.launch"]
    assert multi[multi.index("--num_processes") + 1] == "2" and "--multi_gpu" in multi
    assert multi[-4:] == ["--threads", "1", "--precision", "bf16"]


def test_the_runs_interleave_both_sides_and_alternate_who_starts():
    order = sbs.interleave(["sync", "async"], ["a", "b", "c"], repeats=3)
    assert order[:5] == [("ours", "sync", 0), ("trl", "a", 0), ("ours", "async", 0), ("trl", "b", 0), ("trl", "c", 0)]
    assert order[5:10] == [("trl", "a", 1), ("ours", "sync", 1), ("trl", "b", 1), ("ours", "async", 1), ("trl", "c", 1)]
    assert order[10][:2] == ("ours", "sync")
    for config in ("sync", "async", "a", "b", "c"):  # every configuration once per round
        assert sorted(rnd for _, c, rnd in order if c == config) == [0, 1, 2]
    with pytest.raises(ValueError):
        sbs.interleave(["sync"], ["a"], repeats=0)


def test_one_step_rule_for_both_sides_between_consecutive_step_ends_after_warmup():
    ends = [10.0, 11.0, 13.0, 16.0, 20.0]  # steps of 1 (from start, unseen), 2, 3, 4 seconds
    assert sbs.steady_step_seconds(ends, warmup=2) == [2.0, 3.0, 4.0]
    assert sbs.steady_step_seconds(ends, warmup=1) == [1.0, 2.0, 3.0, 4.0]
    rate = sbs.run_rate(ends, samples_per_step=16, warmup=2)
    assert rate["steady_steps"] == 3 and rate["step_seconds"] == pytest.approx(3.0)
    assert rate["samples_per_s"] == pytest.approx(16 / 3.0)
    assert (rate["step_seconds_min"], rate["step_seconds_max"]) == (2.0, 4.0)
    twelve = [float(i) for i in range(12)]
    assert sbs.run_rate(twelve, 16)["steady_steps"] == sbs.MIN_STEADY_STEPS  # the default run has 10 steady steps
    with pytest.raises(ValueError, match="no steady step"):
        sbs.run_rate([1.0, 2.0], 16, warmup=2)


def _run(side, config, rnd, rate):
    return {"side": side, "config": config, "round": rnd, "samples_per_s": rate}


def test_the_ratio_is_ours_best_over_theirs_best_round_by_round_with_its_range():
    runs = [_run("ours", "sync", 0, 10.0), _run("ours", "async", 0, 12.0), _run("trl", "1x2", 0, 8.0),
            _run("trl", "2x1", 0, 6.0), _run("trl", "bf16", 0, 100.0),
            _run("ours", "sync", 1, 11.0), _run("ours", "async", 1, 14.0), _run("trl", "1x2", 1, 10.0),
            _run("trl", "2x1", 1, 20.0), _run("trl", "bf16", 1, 100.0),
            _run("ours", "sync", 2, 9.0), _run("ours", "async", 2, 10.0), _run("trl", "1x2", 2, 9.0),
            _run("trl", "2x1", 2, 5.0), {"side": "trl", "config": "bf16", "round": 2, "error": "exit 1"}]
    s = sbs.summarize(runs, uncounted=["bf16"])
    # ours: async (median 12) beats sync (10); theirs: 1x2 (median 9) beats 2x1 (6); bf16 is never the ratio's
    assert s["best"] == {"ours": "async", "trl": "1x2"}
    assert s["ratios"] == pytest.approx([12 / 8, 14 / 10, 10 / 9])
    assert s["ratio"] == pytest.approx(1.4) and s["ratio_range"] == pytest.approx([10 / 9, 1.5])
    assert s["configs"]["trl"]["2x1"] == {"median": 6.0, "min": 5.0, "max": 20.0, "n": 3}
    assert s["configs"]["trl"]["bf16"]["n"] == 2 and s["failed"] == [
        {"side": "trl", "config": "bf16", "round": 2, "error": "exit 1"}]
    only_ours = sbs.summarize([_run("ours", "sync", 0, 1.0), {**_run("trl", "x", 0, 0), "error": "boom"}])
    assert only_ours["ratio"] is None and only_ours["ratio_range"] is None


def test_results_md_reports_the_median_ratio_its_range_and_every_configuration():
    from benchmarks import report

    runs = [_run("ours", "sync", r, 10.0 + r) for r in range(3)] + [_run("trl", "0.19.1 1p x 2t fp32", r, 8.0)
                                                                   for r in range(3)]
    for r in runs:
        r.update(step_seconds=16 / r["samples_per_s"], steady_steps=10)
    found = {"runs": runs, "summary": sbs.summarize(runs), "uncounted": []}
    result = {"workload": {"model": "m", "rollout": 16, "micro": 4, "epochs": 1, "new_tokens": 16, "maker_batch": 8},
              "grpo_workload": {"rollout": 64, "group": 4, "micro": 8, "new_tokens": 16, "kl_coef": 0.04,
                                "reward": "sorting verifier"},
              "protocol": {"steps": 12, "warmup_steps": 2, "repeats": 3, "trl_versions": ["0.19.1"],
                           "trl_layouts": ["1p x 2t fp32"]},
              "cpu": {"native_bf16": False, "flags": ["avx2"]}, "command": "python -m benchmarks.bench_trl",
              "ppo": found, "ppo_ratio": found["summary"]["ratio"], "ppo_ratio_range": found["summary"]["ratio_range"],
              "previous": {"measured_at": "2026-11-26", "ppo_ratio": 2.83, "grpo_ratio": 0.91}}
    text = "\n".join(report.trl_section(result))
    assert "**1.38×** (1.25–1.50)" in text  # median of 11/8, range 10/8..12/8
    assert "0.19.1 1p x 2t fp32" in text and "3 interleaved rounds" in text
    assert "no native bf16" in text
    assert "the earlier protocol (measured 2026-11-26) gave PPO 2.83×" in text and "now PPO 1.38× (GRPO not yet re-measured)" in text
    legacy = "\n".join(report.trl_section({"measured_at": "2026-11-26", "ppo_ratio": 2.83, "grpo_ratio": 0.91}))
    assert "superseded" in legacy and "2.83×" in legacy


def test_the_gpu_table_takes_medians_over_rounds_and_compares_equal_precisions():
    from benchmarks import report

    def ours(strategy, precision, rnd, rate):
        return {"model": "opt-125m", "strategy": strategy, "transport": "object_store", "precision": precision,
                "round": rnd, "step_seconds": 32 / rate, "samples_per_s_per_gpu": rate}

    def trl(precision, rnd, rate):
        return {"model": "opt-125m", "strategy": f"trl-{precision}", "precision": precision, "round": rnd,
                "trl": "0.19.1", "step_seconds": 32 / rate, "samples_per_s": rate, "samples_per_s_per_gpu": rate}

    rows = [ours("ddp", "fp32", r, 20.0 + r) for r in range(3)] + [trl("fp32", r, 10.0) for r in range(3)] + \
        [ours("colossalai_zero2", "bf16", r, 30.0) for r in range(3)] + [trl("bf16", r, 20.0) for r in range(3)]
    text = "\n".join(report.gpu_section({"measured_at": "now", "gpu": "H200", "command": "gpu_ppo --trl",
                                         "rows": rows}))
    assert "| opt-125m | ddp | 1.52 | 21.0 |" in text and "2.10× (fp32)" in text  # median of 20, 21, 22 over 10
    assert "1.50× (bf16)" in text and "TRL 0.19.1 PPOTrainer (bf16)" in text and "Medians over" in text
    # the GPU issue's runs: colocated, ipc and tagged diagnosis rows each keep a line of their own
    extra = [{**ours("colossalai_zero2", "bf16", 0, 40.0), "placement": "colocated", "transport": "none"},
             {**ours("colossalai_zero2", "bf16", 0, 35.0), "placement": "separate", "transport": "ipc"},
             {**ours("colossalai_gemini", "bf16", 0, 5.0), "tag": "lr0"},
             {"model": "opt-125m", "strategy": "colossalai_gemini", "round": 0, "tag": "lr1e-6", "error": "boom"}]
    text = "\n".join(report.gpu_section({"measured_at": "now", "gpu": "H200", "command": "c", "rows": rows + extra}))
    assert "| opt-125m | colossalai_zero2 colocated |" in text and "| opt-125m | colossalai_zero2 ipc |" in text
    assert "| opt-125m | colossalai_zero2 |" in text and "| opt-125m | colossalai_gemini [lr0] |" in text
    assert "| opt-125m | colossalai_gemini [lr1e-6] | boom" in text and "2.00× (bf16)" in text  # colocated 40 / 20


def test_a_run_of_one_algorithm_keeps_the_other_algorithms_rows_with_their_own_stamp():
    from benchmarks.bench_trl import carry_unmeasured
    before = {"protocol": {}, "commit": "aaa", "measured_at": "then", "command": "bench --algos ppo",
              "ppo": {"runs": [1], "summary": {}}, "ppo_ratio": 0.9, "ppo_ratio_range": [0.8, 1.0]}
    result = {"grpo": {"runs": [2], "commit": "bbb"}, "grpo_ratio": 0.7}
    carry_unmeasured(result, before, ["grpo"])
    assert result["ppo"]["runs"] == [1] and result["ppo"]["commit"] == "aaa"
    assert result["ppo"]["measured_at"] == "then" and result["ppo_ratio"] == 0.9
    assert result["ppo_ratio_range"] == [0.8, 1.0] and result["grpo"]["commit"] == "bbb"
    fresh = {"ppo": {"runs": [3]}}
    carry_unmeasured(fresh, before, ["ppo", "grpo"])  # what was run now is never overwritten
    assert fresh["ppo"]["runs"] == [3] and "ppo_ratio" not in fresh
    old = {}
    carry_unmeasured(old, {"ppo_ratio": 2.8}, ["grpo"])  # the earlier protocol's figures are not carried
    assert old == {}


def test_the_colocated_placement_is_paired_with_trls_best_round_by_round():
    runs = [{"side": "ours", "config": "colocated", "round": 0, "samples_per_s": 3.0},
            {"side": "ours", "config": "colocated", "round": 1, "samples_per_s": 2.0},
            {"side": "ours", "config": "sync", "round": 1, "samples_per_s": 9.0},
            {"side": "trl", "config": "t 2p", "round": 0, "samples_per_s": 2.0},
            {"side": "trl", "config": "t 2p", "round": 1, "samples_per_s": 2.0},
            {"side": "trl", "config": "t 2p", "round": 2, "error": "boom"}]
    assert sbs.config_ratio(runs, "colocated", "t 2p") == {"ratio": 1.25, "ratio_range": [1.0, 1.5]}
    assert sbs.config_ratio(runs, "async", "t 2p") == {"ratio": None, "ratio_range": None}
    assert set(OURS_SETUPS["ppo"]) == set(OURS_SETUPS["grpo"]) == {"sync", "async", "colocated"}


def test_ours_runs_the_named_configurations_in_setup_order_and_the_report_says_which():
    from benchmarks import report

    assert our_configs("grpo", None) == list(OURS_SETUPS["grpo"])
    assert our_configs("ppo", ["colocated", "sync"]) == ["sync", "colocated"]
    with pytest.raises(ValueError, match="--ours: no ppo configuration"):
        our_configs("ppo", ["hybrid"])
    result = {"workload": {"model": "m", "rollout": 8, "micro": 4, "epochs": 1, "new_tokens": 8, "maker_batch": 8},
              "protocol": {"steps": 12, "warmup_steps": 2, "repeats": 1, "trl_versions": ["0.19.1"],
                           "trl_layouts": ["2p x 1t fp32"], "ours": ["sync", "colocated"]},
              "cpu": {"native_bf16": False, "flags": ["avx2"]}, "command": "python -m benchmarks.bench_trl"}
    assert "Ours run in: sync, colocated (`--ours`)." in "\n".join(report.trl_section(result))


def test_the_efficiency_summary_takes_medians_per_setting_and_the_fraction_of_the_baseline_left():
    from benchmarks import report
    from benchmarks.bench_efficiency import settings, summarize

    def run(setting, rnd, gen, train):
        return {"setting": setting, "round": rnd, "generation_core_seconds_per_sample": gen,
                "training_core_seconds_per_sample": train}

    runs = [run("baseline", 0, 0.6, 0.4), run("baseline", 1, 0.8, 0.4), run("baseline", 2, 0.7, 0.5),
            run("efficient", 0, 0.4, 0.3), run("efficient", 1, 0.5, 0.3), run("efficient", 2, 0.6, 0.2)]
    s = summarize(runs)
    assert s["baseline_core_seconds_per_sample"] == pytest.approx(1.2)  # median of 1.0, 1.2, 1.2
    assert s["core_seconds_per_sample"] == pytest.approx(0.8)  # median of 0.7, 0.8, 0.8
    assert s["fraction_of_baseline"] == pytest.approx(0.8 / 1.2)
    assert s["generation_fraction"] == pytest.approx(0.5 / 0.7) and s["training_fraction"] == pytest.approx(0.3 / 0.4)
    assert "fraction_of_baseline" not in summarize(runs[:3])  # one setting alone: nothing to compare
    over = settings("medium")
    assert over["baseline"] == ["generation.backend=hf"]
    assert "generation.backend=compact" in over["efficient"] and any(
        o.startswith("algorithm.micro_batch_tokens=") for o in over["efficient"])
    text = "\n".join(report.efficiency_section({**s, "settings_overrides": over, "repeats": 3, "steps": 8,
                                                "command": "python -m benchmarks.bench_efficiency"}))
    assert "**0.67** of the baseline" in text and "| efficient |" in text and "maker stage 0.71" in text
    assert "Not measured" in report.efficiency_section(None)[0]
    assert "best_case_fraction" not in s  # runs that did not measure the batches: no bound


def test_the_efficiency_bound_comes_from_the_baselines_own_batches():
    from benchmarks import report
    from benchmarks.bench_efficiency import summarize
    from coati_ray.experience.waste import best_case_fraction, finished_row_fraction, padding_fraction

    # rows of 2, 4 and 8 tokens decoded to the longest: 24 row-steps, 14 of them real
    assert finished_row_fraction(torch.tensor([2, 4, 8])) == pytest.approx(1 - 14 / 24)
    assert finished_row_fraction(torch.tensor([8, 8])) == 0.0 and finished_row_fraction(torch.tensor([0, 0])) == 0.0
    assert padding_fraction(torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])) == pytest.approx(0.25)
    # 0.6 core-s of decode-bound generation with 30% finished rows, 0.4 of updates with 10% padding
    assert best_case_fraction(0.6, 0.4, 0.3, 0.1) == pytest.approx((0.6 * 0.7 + 0.4 * 0.9) / 1.0)
    with pytest.raises(ValueError):
        best_case_fraction(0.0, 0.0, 0.1, 0.1)

    def run(setting, rnd, gen, train, rows, pad):
        return {"setting": setting, "round": rnd, "generation_core_seconds_per_sample": gen,
                "training_core_seconds_per_sample": train, "finished_row_fraction": rows, "padding_fraction": pad}

    runs = [run("baseline", 0, 1.2, 0.8, 0.10, 0.20), run("baseline", 1, 1.4, 0.6, 0.12, 0.10),
            run("efficient", 0, 1.1, 0.8, 0.0, 0.0)]
    s = summarize(runs)
    assert s["finished_row_fraction"] == pytest.approx(0.11) and s["padding_fraction"] == pytest.approx(0.15)
    assert s["best_case_fraction"] == pytest.approx(statistics.median(
        [(1.2 * 0.9 + 0.8 * 0.8) / 2.0, (1.4 * 0.88 + 0.6 * 0.9) / 2.0]))
    text = "\n".join(report.efficiency_section({**s, "settings_overrides": {"baseline": [], "efficient": []},
                                                "repeats": 1, "steps": 8, "command": "c",
                                                "cpu": {"model": "Xeon", "native_bf16": False,
                                                        "flags": ["avx", "avx2", "fma"]}}))
    assert "11.0% of its decode's row-steps" in text and f"**{s['best_case_fraction']:.2f}**" in text
    trained = [{**r, "training_padding_fraction": 0.5} for r in runs]  # the trainers' merged batches, measured
    assert summarize(trained)["padding_fraction"] == 0.5
    assert "on Xeon (no native bf16: avx, avx2;" in text  # the box is named: boxes of one kind differ ~2x


def test_a_run_of_some_of_ours_is_kept_beside_the_full_run_and_the_report_shows_both():
    from benchmarks import report
    from benchmarks.bench_trl import carry_unmeasured, keep_full_run

    def row(side, config, rate):
        return {"side": side, "config": config, "round": 0, "samples_per_s": rate, "step_seconds": 16 / rate}

    full = {"protocol": {"steps": 12, "warmup_steps": 2, "repeats": 3, "trl_versions": ["0.19.1"],
                         "trl_layouts": ["2p x 1t fp32"]},
            "workload": {"model": "m", "rollout": 16, "micro": 4, "epochs": 1, "new_tokens": 64, "maker_batch": 8},
            "cpu": {"native_bf16": False, "flags": ["avx2"]}, "command": "bench_trl --workload medium",
            "measured_at": "then", "ppo_ratio": 0.91, "ppo_ratio_range": [0.89, 0.96], "previous": None}
    runs = [row("ours", "colocated", 0.8), row("trl", "0.19.1 2p x 1t fp32", 0.9)]
    found = {"runs": runs, "summary": sbs.summarize(runs)}
    # as bench_trl.main builds it: no date of its own at the top (save() stamps the section it writes)
    partial = {k: v for k, v in full.items() if k != "measured_at"}
    partial.update(protocol={**full["protocol"], "repeats": 1, "ours": ["colocated"]},
                   command="bench_trl --ours colocated", ppo=found, ppo_ratio=found["summary"]["ratio"],
                   ppo_ratio_range=found["summary"]["ratio_range"], previous={"x": 1},
                   colocated={"ppo_ratio": 0.8 / 0.9, "ppo_ratio_range": [0.8 / 0.9] * 2})
    kept = keep_full_run(full, partial)
    assert kept["ppo_ratio"] == 0.91 and kept["measured_at"] == "then"  # the headline stays the full run's
    assert kept["colocated"]["ppo_ratio"] == pytest.approx(0.889, abs=1e-3)
    assert kept["colocated"]["run"]["measured_at"] != "then" and "previous" not in kept["colocated"]["run"]
    assert kept["colocated"]["run"]["ppo"]["cpu"] == {"native_bf16": False, "flags": ["avx2"]}
    text = "\n".join(report.trl_section(kept))
    assert "measured in a run of its own (2" in text and "1 round(s) of 12 steps; ours: colocated" in text
    assert "PPO **0.89×** (target ≥ 1.25× for both)" in text
    # a later run of GRPO alone keeps the PPO rows and ratio of the earlier one
    grpo = {**partial, "ppo": None, "grpo": found, "grpo_ratio": 1.0, "grpo_ratio_range": [1.0, 1.0],
            "colocated": {"grpo_ratio": 0.8 / 0.9, "grpo_ratio_range": [0.8 / 0.9] * 2}}
    del grpo["ppo"], grpo["ppo_ratio"], grpo["ppo_ratio_range"]
    grpo.update(cpu={"native_bf16": True, "flags": ["amx_bf16"]}, measured_at="later", commit="abc")
    both = keep_full_run(kept, grpo)
    run = both["colocated"]["run"]  # the stamp is the later run's; each algorithm keeps the box it ran on
    assert run["measured_at"] == "later" and run["commit"] == "abc" and run["grpo"]["cpu"]["native_bf16"]
    assert run["ppo"]["cpu"] == {"native_bf16": False, "flags": ["avx2"]}
    both_text = "\n".join(report.trl_section(both))  # the note heads the rows of the algorithm that ran elsewhere
    assert "GRPO (on another box than the run above, native bf16: amx_bf16: compare" in both_text
    assert "\nPPO:\n" in both_text
    assert "on another box" not in text  # the first partial run ran on the full run's box
    assert both["colocated"]["ppo_ratio"] == pytest.approx(0.889, abs=1e-3) and "ppo" in both["colocated"]["run"]
    assert both["colocated"]["grpo_ratio"] == pytest.approx(0.889, abs=1e-3) and "grpo" in both["colocated"]["run"]
    # a full run of PPO alone later carries the GRPO colocated rows along with their ratio
    fresh = {"ppo": {"runs": []}}
    carry_unmeasured(fresh, {**both, "grpo": {"runs": []}}, ["ppo"])
    assert fresh["colocated"]["grpo_ratio"] == pytest.approx(0.889, abs=1e-3) and "grpo" in fresh["colocated"]["run"]


def test_a_partial_run_leaves_the_files_machine_as_the_full_runs(tmp_path, monkeypatch):
    """save(stamp_machine=False), as a run of some of ours saves: its rows name their CPU, RESULTS.json's machine
    and versions (RESULTS.md's Machine line) stay those of the runs measured before."""
    import json

    from benchmarks import common

    monkeypatch.setattr(common, "RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(common, "RESULTS_JSON", str(tmp_path / "RESULTS.json"))
    (tmp_path / "RESULTS.json").write_text(json.dumps({"machine": {"cpu": "the full run's box"},
                                                       "versions": {"torch": "x"}}))
    common.save("vs_trl_medium", {"ppo_ratio": 1.0}, stamp_machine=False)
    data = json.loads((tmp_path / "RESULTS.json").read_text())
    assert data["machine"] == {"cpu": "the full run's box"} and data["versions"] == {"torch": "x"}
    assert data["vs_trl_medium"]["ppo_ratio"] == 1.0
    common.save("vs_trl_medium", {"ppo_ratio": 2.0})  # a full run stamps the box it ran on
    assert json.loads((tmp_path / "RESULTS.json").read_text())["machine"]["cpu"] != "the full run's box"


def test_the_gpu_sweep_runs_colocated_without_a_transport_and_every_override_reaches_the_config(tiny_llama,
                                                                                                reward_dir):
    """benchmarks.gpu_ppo's plumbing, which a short GPU loan cannot afford to debug: which runs a sweep makes,
    and that each run's config validates (ddp here: ZeRO-2 and Gemini assert CUDA) with its overrides."""
    from benchmarks.gpu_ppo import job_config, our_runs

    runs = our_runs(["colossalai_zero2", "colossalai_gemini"], ["separate", "colocated"], ["object_store", "ipc"])
    assert runs == [("colossalai_zero2", "separate", "object_store"), ("colossalai_zero2", "separate", "ipc"),
                    ("colossalai_zero2", "colocated", "none"), ("colossalai_gemini", "separate", "object_store"),
                    ("colossalai_gemini", "separate", "ipc"), ("colossalai_gemini", "colocated", "none")]
    diagnose = ("actor_trainer.optim.lr=0", "algorithm.behaviour_correction=measure")
    separate = job_config(tiny_llama, reward_dir, "tiny", "ddp", 3, "ipc", "separate", diagnose)
    assert separate.weight_sync.transport == "ipc" and separate.maker.num_gpus == 0.3 and separate.maker.dtype == "float32"
    assert separate.actor_trainer.optim.lr == 0 and separate.algorithm.behaviour_correction == "measure"
    assert not separate.trainer_log_probs_are_behaviour  # the makers send their log-probs, to be measured
    colocated = job_config(tiny_llama, reward_dir, "tiny", "ddp", 3, "none", "colocated")
    assert colocated.placement == "colocated" and colocated.maker.num_gpus == 0
    assert colocated.actor_trainer.resources.num_gpus_per_rank == 0.45


def test_the_gpu_sweeps_zero2_and_gemini_configs_validate_as_a_gpu_machine_would(tiny_llama, reward_dir,
                                                                                 monkeypatch):
    """The exact configurations of check.sh's GPU-issue phases, validated as on a GPU machine (ZeRO-2 and Gemini
    check for CUDA): a refusal there would end the run in its first second of a short loan."""
    from benchmarks.gpu_ppo import job_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    diagnose = ("algorithm.behaviour_correction=measure",)
    for strategy, lr in (("colossalai_gemini", "0"), ("colossalai_gemini", "1e-6"), ("colossalai_zero2", "1e-6")):
        cfg = job_config(tiny_llama, reward_dir, "tiny", strategy, 6, "object_store", "separate",
                         diagnose + (f"actor_trainer.optim.lr={lr}",))
        assert cfg.actor_trainer.strategy.precision == "bf16" and cfg.maker.dtype == "bfloat16"
    for transport in ("object_store", "ipc"):
        assert job_config(tiny_llama, reward_dir, "tiny", "colossalai_zero2", 8, transport).weight_sync.transport == transport
    offload = job_config(tiny_llama, reward_dir, "tiny", "colossalai_zero2", 8, "none", "colocated",
                         ("colocated.offload_optimizer=true",))
    assert offload.colocated.offload_optimizer and offload.maker.dtype == "auto"


def test_the_gpu_generation_sweep_times_every_backend_and_compares_their_tokens(tiny_llama, tmp_path):
    """benchmarks.gpu_generate on CPU with the tiny model (its GPU run has no time to be debugged): a row per
    backend, every row run to the full length, and greedy tokens equal across hf, compact and static."""
    import json

    from benchmarks.gpu_generate import main

    out = tmp_path / "gen.json"
    result = main(["--model", tiny_llama, "--device", "cpu", "--dtype", "float32", "--batches", "3",
                   "--new-tokens", "5", "--repeats", "1", "--out", str(out), "--no-save"])
    rows = result["rows"]
    assert [r["backend"] for r in rows] == ["hf", "compact", "static"] and all("error" not in r for r in rows)
    assert all(r["tokens_per_s"] > 0 and r["batch"] == 3 and r["same_tokens_as_first_backend"] for r in rows)
    assert json.loads(out.read_text())["device"] == "cpu"


def test_the_gpu_checks_runs_of_the_gpu_issue_parse_and_plan_what_they_say():
    """scripts/gpu/check.sh's phases for the GPU issue, their gpu_ppo arguments as the script writes them: they
    parse, plan the runs the issue asks for (Gemini first: a loan cut short must not spend itself on the
    control) and write sections of their own (a typo would cost a GPU loan)."""
    import re
    import shlex

    from benchmarks.gpu_ppo import parse_args, plan
    from tests.conftest import REPO

    script = open(os.path.join(REPO, "scripts", "gpu", "check.sh")).read().replace("\\\n", " ")
    commands = []
    for m in re.findall(r"python3 -m benchmarks\.gpu_ppo (--[^\n]*)", script):  # not the bench phase's
        for lr in (("0", "1e-6") if "$lr" in m else ("",)):
            commands.append(shlex.split(m.split("2>&1")[0].replace('"$OUT', '"/tmp').replace("$lr", lr)))
    plans = {parse_args(c).section: (parse_args(c), plan(parse_args(c))) for c in commands}
    assert sorted(plans) == ["gpu_colocated", "gpu_diagnose_lr0", "gpu_diagnose_lr1e-6", "gpu_diagnose_zero2",
                             "gpu_offload", "gpu_separate"]
    lr0, runs = plans["gpu_diagnose_lr0"]
    assert lr0.set == ["actor_trainer.optim.lr=0", "algorithm.behaviour_correction=measure"] and lr0.per_step
    assert lr0.tag == "lr0" and runs == [("opt-1.3b", "ours", "colossalai_gemini/separate/object_store", 0)]
    assert plans["gpu_diagnose_lr1e-6"][0].set[0] == "actor_trainer.optim.lr=1e-6"
    assert [r[2] for r in plans["gpu_diagnose_zero2"][1]] == ["colossalai_zero2/separate/object_store"]
    assert [r[2] for r in plans["gpu_colocated"][1]] == ["colossalai_zero2/colocated/none", "bf16"]
    assert [r[2] for r in plans["gpu_separate"][1]] == ["colossalai_zero2/separate/object_store",
                                                       "colossalai_zero2/separate/ipc"]
    assert plans["gpu_offload"][0].set == ["colocated.offload_optimizer=true"]
    assert [r[2] for r in plans["gpu_offload"][1]] == ["colossalai_zero2/colocated/none"]
    from benchmarks.gpu_results import PHASES  # what reads the files back expects each where check.sh writes it

    assert {os.path.basename(a.out): a.section for a, _ in plans.values()} == {
        k: v for k, v in PHASES.items() if k != "generate.json"}
    assert '--out "$OUT/generate.json"' in script
    phases = script.split("# and the runs of the GPU issue")[1].split("# Logs and JSON")[0]
    assert phases.index("diagnose_gemini") < phases.index("colocated ") < phases.index("diagnose_zero2")

def test_trls_phases_are_averaged_over_the_steady_steps_and_the_rest_is_its_update():
    """Steps 1 and 2 warm up (their phases are left out); the update is the mean step less the timed phases."""
    phases = [{"generate": 50.0, "ref": 9.0}, {"generate": 40.0}, {"generate": 10.0, "ref": 4.0},
              {"generate": 12.0, "ref": 2.0}]
    rate = sbs.run_rate([1.0, 2.0, 22.0, 44.0], 64)  # steady steps 3 and 4: 20 s and 22 s
    timing = trl_timing(phases, rate)
    assert timing == pytest.approx({"generate": 11.0, "ref": 3.0, "update_actor": 21.0 - 14.0})
    with pytest.raises(ValueError, match="phases of 3 steps"):
        trl_timing(phases[:3], rate)


def test_the_phase_table_gives_each_sides_median_per_phase_and_a_dash_where_a_side_has_no_timer():
    from benchmarks.report_trl import phase_rows

    def run(side, config, rnd, **timing):
        return {"side": side, "config": config, "round": rnd, "samples_per_s": 1.0, "timing": timing}

    runs = [run("ours", "colocated", r, generate=g, ref=2.0, update_actor=u) for r, (g, u) in
            enumerate([(5.0, 9.0), (7.0, 8.0), (6.0, 30.0)])]
    runs += [run("trl", "2p", r, generate=g, ref=3.0, update_actor=10.0) for r, g in enumerate([8.0, 9.0, 10.0])]
    rows = phase_rows({"runs": runs, "summary": {"best": {"ours": "colocated", "trl": "2p"}}})
    assert "| generate | 6.00 | 9.00 |" in rows and "| update_actor | 9.00 | 10.00 |" in rows
    runs[-1]["timing"] = runs[-2]["timing"] = runs[-3]["timing"] = None  # TRL's PPO has no timers
    rows = phase_rows({"runs": runs, "summary": {"best": {"ours": "colocated", "trl": "2p"}}})
    assert "| ref | 2.00 | — |" in rows
