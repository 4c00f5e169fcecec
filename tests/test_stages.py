"""Stages 1 and 2 through their command-line entry points: learning, run directory, resume, ddp on Ray."""

import json
import os
import shutil

import pytest
import torch

from tests.conftest import REPO, data_path


def run(stage: str, out_dir, *overrides, resume=None) -> int:
    import importlib

    main = importlib.import_module(f"launch.{stage}").main
    argv = ["--config", os.path.join(REPO, "configs", f"{stage}_tiny.yaml"), "--output-dir", str(out_dir),
            "ray.dashboard=false", *overrides]
    if resume is not None:
        argv += ["--resume"] + ([resume] if resume != "latest" else [])
    return main(argv)


def data_overrides(stage: str, model: str) -> list[str]:
    sub = "sft" if stage == "sft" else "pref"
    return [f"model.path={model}", f"data.train_path={data_path(sub, 'train.jsonl')}",
            f"data.eval_path={data_path(sub, 'eval.jsonl')}"]


def metrics(out_dir) -> list[dict]:
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def summary(out_dir) -> dict:
    with open(os.path.join(out_dir, "summary.json")) as f:
        return json.load(f)


def weights(model_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(model_dir, "model.safetensors"))


def test_sft_loss_falls_and_run_dir_is_complete(tiny_llama, tmp_path):
    out = tmp_path / "sft"
    assert run("sft", out, *data_overrides("sft", tiny_llama), "trainer.max_steps=40", "trainer.save_every=20") == 0
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert all({"loss", "lr", "grad_norm", "timing/step", "throughput/tokens_per_s"} <= set(r) for r in rows)
    first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert last < first * 0.7, (first, last)
    s = summary(out)
    assert s["steps"] == 40 and s["eval/loss"] < rows[0]["loss"]
    assert os.path.isfile(out / "config.yaml")
    assert os.path.isfile(out / "checkpoints" / "step_000020" / "trainer_state.json")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = out / "checkpoints" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    assert model.config.vocab_size >= len(tok)


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_a_finished_run_is_never_replaced_or_mixed_without_overwrite(stage, tiny_llama, tmp_path, capsys):
    out = tmp_path / stage
    keep = tmp_path / "mine.txt"  # a user's file beside the run: --overwrite removes run artefacts only
    assert run(stage, out, *data_overrides(stage, tiny_llama), "trainer.max_steps=6", "trainer.save_every=3") == 0
    shutil.copy(os.path.join(REPO, "README.md"), out / "notes.md")
    before = (out / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert run(stage, out, *data_overrides(stage, tiny_llama), "trainer.max_steps=4") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a run" in err[0] and "--overwrite" in err[0], err
    assert (out / "metrics.jsonl").read_bytes() == before and (out / "checkpoints" / "step_000003").is_dir()
    keep.write_text("x")
    assert run(stage, out, *data_overrides(stage, tiny_llama), "trainer.max_steps=4", "trainer.save_every=null",
               "--overwrite") == 0
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]  # the new run's lines only
    assert not (out / "checkpoints" / "step_000003").exists() and summary(out)["steps"] == 4
    assert (out / "notes.md").is_file() and keep.read_text() == "x"


@pytest.fixture(scope="module")
def sft_model(tiny_llama, tmp_path_factory) -> str:
    """The tiny llama after configs/sft_tiny.yaml (600 steps, ~20 s): what an RM starts from, as in Coati."""
    out = tmp_path_factory.mktemp("sft") / "sft"
    assert run("sft", out, *data_overrides("sft", tiny_llama), "trainer.save_every=null") == 0
    return str(out / "checkpoints" / "final")


@pytest.mark.slow
def test_rm_reaches_90_percent_on_held_out_pairs(sft_model, tmp_path):
    """Graded pairs (two flawed answers ranked by gold, near-ties skipped) need the SFT model's
    knowledge of the task. The reply's first number is one token as in the prompt (' 14', since 658a038),
    which took 800 steps at lr 1e-3 to reach 0.92 (400 at 2e-3: 0.845)."""
    out = tmp_path / "rm"
    assert run("rm", out, *data_overrides("rm", sft_model)) == 0
    s = summary(out)
    assert s["eval/acc"] >= 0.9, s
    assert s["final_loss"] < s["first_loss"]
    from coati_ray.models import RewardModel

    rm = RewardModel.from_pretrained(str(out / "checkpoints" / "final"), require_head=True)
    assert rm.value_head.weight.abs().sum() > 0


def test_resume_reaches_same_weights_as_uninterrupted_run(tiny_llama, tmp_path):
    common = [*data_overrides("sft", tiny_llama), "trainer.max_steps=8", "trainer.save_every=4",
              "trainer.keep_checkpoints=5", "data.eval_path=null"]
    full = tmp_path / "full"
    assert run("sft", full, *common) == 0
    # A second run directory that "crashed" right after its step-4 checkpoint.
    crashed = tmp_path / "crashed"
    os.makedirs(crashed / "checkpoints")
    shutil.copytree(full / "checkpoints" / "step_000004", crashed / "checkpoints" / "step_000004")
    with open(crashed / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in metrics(full)[:6])  # two lines past the checkpoint
    assert run("sft", crashed, *common, resume="latest") == 0
    resumed_rows = metrics(crashed)
    assert [r["step"] for r in resumed_rows] == list(range(1, 9))  # stale lines past step 4 were replaced
    for a, b in zip(metrics(full)[4:], resumed_rows[4:]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    wa, wb = weights(full / "checkpoints" / "final"), weights(crashed / "checkpoints" / "final")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def test_resume_without_checkpoint_is_one_line_error(tiny_llama, tmp_path, capsys):
    assert run("sft", tmp_path / "empty", *data_overrides("sft", tiny_llama), resume="latest") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no complete checkpoint" in err[0]


def test_bad_row_stops_before_training(tiny_llama, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"from": "human", "content": "hi"}, {"from": "assistant", "content": "yo"}]}\n'
                   '{"messages": [{"from": "robot", "content": "hi"}]}\n')
    out = tmp_path / "run"
    assert run("sft", out, f"model.path={tiny_llama}", f"data.train_path={bad}", "data.eval_path=null") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.jsonl row 2" in err[0] and "robot" in err[0]
    assert not out.exists()


def test_lora_sft_exports_merged_model_and_adapter_checkpoints(tiny_llama, tmp_path):
    out = tmp_path / "lora"
    assert run("sft", out, *data_overrides("sft", tiny_llama), "model.lora_rank=4", "trainer.max_steps=4",
               "trainer.save_every=2", "data.eval_path=null") == 0
    assert os.path.isfile(out / "checkpoints" / "step_000002" / "model" / "adapter_config.json")
    final = out / "checkpoints" / "final"
    assert not os.path.exists(final / "adapter_config.json")
    base, tuned = weights(tiny_llama), weights(final)
    assert base.keys() == tuned.keys()
    assert any(not torch.equal(base[k], tuned[k]) for k in base)  # adapters were merged in


@pytest.mark.slow
def test_ddp_on_ray_two_ranks_matches_single_process(tiny_llama, tmp_path):
    common = [*data_overrides("sft", tiny_llama), "trainer.max_steps=4", "data.eval_path=null",
              "resources.num_cpus_per_rank=0.5", "resources.torch_threads=1"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert run("sft", single, *common) == 0
    assert run("sft", ddp, *common, "strategy.name=ddp", "resources.num_ranks=2") == 0
    assert summary(ddp)["num_ranks"] == 2
    wa, wb = weights(single / "checkpoints" / "final"), weights(ddp / "checkpoints" / "final")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    import ray

    assert not ray.is_initialized()  # the embedded Ray was shut down with the job
