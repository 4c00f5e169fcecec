"""Evaluation maths, gold scorers and the report's files (no Ray, no training)."""

import json

import pytest
import torch

from coati_ray.evaluation.policy import decode_responses, sequence_kl
from coati_ray.reporting.curves import plot_panels, read_metrics, series
from coati_ray.reporting.pipeline import format_table, pipeline_summary
from coati_ray.tasks import gold_scorer
from coati_ray.tasks.sorting import answer_text, corrupt, gold_score


def test_sequence_kl_sums_masked_log_ratio():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    ref = torch.tensor([[-1.5, -2.0, -1.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert sequence_kl(lp, ref, mask).tolist() == pytest.approx([0.5, 1.0 - 8.0])


def test_decode_responses_drops_eos_and_padding(tokenizer):
    ids = tokenizer("1 2 3")["input_ids"]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    actions = torch.tensor([ids + [eos, pad], ids + [eos, eos]])
    mask = torch.tensor([[1] * len(ids) + [1, 0], [1] * len(ids) + [1, 0]])
    assert decode_responses(tokenizer, actions, mask) == ["1 2 3", "1 2 3"]


def test_gold_scorer_reads_chat_wrapped_prompts():
    score = gold_scorer("sorting")
    assert score("Human: sort: 3 1 2\nAssistant: ", "1 2 3") == 1.0
    assert score("sort: 3 1 2", "3 2 1") == 0.0
    assert 0 < score("sort: 3 1 2", "1 2") < 1
    # a reasoning model's think block (Qwen3's, even empty) is not the answer: what follows it is judged
    assert score("sort: 3 1 2", "<think>\n\n</think>\n\n1 2 3") == 1.0
    assert gold_scorer("calc")("add: 2 + 3", "<think>2 and 3 make 5</think>The sum is 5") == 1.0


def test_replace_flaw_looks_sorted_but_scores_below_one():
    """The flaw that taught the RM to check content: still in order, but with a foreign number."""
    import random

    rng = random.Random(0)
    seen = 0
    for _ in range(300):
        nums = [rng.randint(0, 30) for _ in range(5)]
        text = corrupt(nums, rng, severity=1)
        assert text != answer_text(nums) and gold_score(nums, text) < 1.0
        values = [int(t) for t in text.split()]
        if values == sorted(values) and len(values) == len(nums):
            seen += 1  # sorted, same length, yet wrong: only a content check catches it
    assert seen > 30


def test_summary_and_table_from_stage_summaries():
    stages = {"sft": {"eval/loss": 0.3}, "rm": {"eval/acc": 0.95},
              "ppo": {"steps": 10, "eval_first": {"eval/gold_score": 0.6, "eval/reward": 1.0},
                      "eval_last": {"eval/gold_score": 0.7, "eval/reward": 2.0, "eval/kl_to_initial": 0.4},
                      "samples_first": [{"prompt": "p", "response": "a", "gold_score": 0.5}],
                      "samples_last": [{"prompt": "p", "response": "b", "gold_score": 1.0}]}}
    s = pipeline_summary(stages, {"sft": 1.0, "rm": 2.0, "ppo": 3.0}, 7.5, seed=3, eval_info={"task": "sorting"})
    assert s["gold_gain"] == pytest.approx(0.1) and s["rm_accuracy"] == 0.95 and s["kl_to_initial"] == 0.4
    table = format_table(s)
    assert "| gold_score_ppo" in table and "0.7000" in table and "7.5" in table
    json.dumps(s)  # summary.json must be serialisable


def test_curves_skip_partial_lines_and_plot(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "reward": 0.5, "kl": 0.1}\n{"step": 0, "eval/gold_score": 0.4}\n'
        '{"step": 2, "reward": 0.7}\n{"step": 3, "rew')  # killed mid-write
    records = read_metrics(str(tmp_path))
    assert len(records) == 3
    assert series(records, "reward") == ([1, 2], [0.5, 0.7])
    png = plot_panels(records, [("r", ["reward"]), ("g", ["eval/gold_score"]), ("none", ["missing"])],
                      str(tmp_path / "p.png"))
    assert png and open(png, "rb").read(4) == b"\x89PNG"
    assert plot_panels(records, [("none", ["missing"])], str(tmp_path / "q.png")) is None


def test_progress_line_from_last_complete_record(tmp_path):
    from coati_ray.utils.progress import MetricsTail, last_record

    path = tmp_path / "metrics.jsonl"
    assert last_record(str(path)) is None
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5, "lr": 0.001}\n{"step": 3, "lo')
    record = last_record(str(path))
    assert record == {"step": 2, "loss": 1.5, "lr": 0.001}
    line = MetricsTail(str(tmp_path), "sft", 10, ("loss", "lr")).line(record, elapsed=4.0)
    assert line == "[sft] step 2/10  loss=1.5  lr=0.001  (4s, eta 16s)"


def test_report_command_on_a_stage_dir(tmp_path, capsys):
    from launch.report import main

    run = tmp_path / "ppo"
    run.mkdir()
    lines = [{"step": s, "reward": 0.1 * s, "kl": 0.01 * s, "timing/generate": 0.2, "timing/ref": 0.05,
              "timing/reward": 0.03, "timing/values": 0.03, "timing/update_actor": 0.3,
              "timing/update_critic": 0.2, "timing/sync": 0.01, "timing/step": 0.6,
              "throughput/samples_per_s": 50.0} for s in range(1, 6)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (run / "summary.json").write_text(json.dumps({"steps": 5, "buffer": {"produced": 3}}))
    (run / "config.yaml").write_text("ppo:\n  max_steps: 5\n")
    assert main([str(run)]) == 0
    for name in ("report.md", "plots/curves.png", "plots/timing.png", "plots/throughput.png"):
        assert (run / name).stat().st_size > 0, name
    report = (run / "report.md").read_text()
    assert "| `timing/generate` | 0.2000 |" in report and "max_steps: 5" in report and "| `steps` | 5 |" in report


def test_report_command_refuses_a_dir_without_metrics(tmp_path, capsys):
    from launch.report import main

    assert main([str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_evaluator_restores_earlier_evaluations_on_resume(tmp_path):
    """After --resume the report still compares against the policy before PPO (version 0)."""
    from actors.evaluator import SAMPLES_FILE, PolicyEvaluator
    from coati_ray.utils.run_dir import RunLogger

    logger = RunLogger(str(tmp_path), stage="ppo")
    for v in (0, 2, 4):
        logger.record(v, {"eval/gold_score": 0.5 + 0.1 * v, "eval/response_length": 5.0, "timing/eval": 1.0})
        logger.record(v + 1, {"reward": 1.0, "timing/step": 0.5})
    (tmp_path / SAMPLES_FILE).write_text("".join(
        json.dumps({"version": v, "samples": [{"prompt": "p", "response": str(v), "gold_score": 1.0}]}) + "\n"
        for v in (0, 2, 4)))
    ev = PolicyEvaluator([{"prompt": "p"}], greedy=False, seed=0, samples_per_prompt=1, logger=logger)
    ev.restore(up_to_version=2)
    assert [r["version"] for r in ev.results] == [0, 2]
    s = ev.summary()
    assert s["eval_first"]["eval/gold_score"] == 0.5 and s["samples_first"][0]["response"] == "0"
    assert [json.loads(x)["version"] for x in (tmp_path / SAMPLES_FILE).read_text().splitlines()] == [0, 2]
