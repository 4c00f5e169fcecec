"""launch.pretrain: continual pretraining on launch.prepare_data output, Colossal-LLaMA's switches."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.conftest import REPO


def prepare(tiny_llama, out, bins=4) -> str:
    from launch.prepare_data import main

    assert main(["--mode", "pretrain", "--data_input_dirs", os.path.join(REPO, "data", "pretrain"),
                 "--tokenizer_dir", tiny_llama, "--data_output_dirs", str(out), "--max_length", "64",
                 "--num_spliced_dataset_bins", str(bins)]) == 0
    return str(out)


def pretrain(out_dir, *overrides) -> int:
    from launch.pretrain import main

    return main(["--config", os.path.join(REPO, "configs", "pretrain_tiny.yaml"), "--output-dir", str(out_dir),
                 "ray.dashboard=false", *overrides])


def rows(out_dir) -> list[dict]:
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def prepared(tiny_llama, tmp_path_factory) -> str:
    return prepare(tiny_llama, tmp_path_factory.mktemp("prep") / "prepared")


def test_bucket_order_walks_the_bins_in_order_shuffled_within():
    from coati_ray.trainers.pretrain import bucket_order

    bins = [1, 0, 2, 0, 1, 2, 0]
    order = bucket_order(bins, torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(7)) and [bins[i] for i in order] == [0, 0, 0, 1, 1, 2, 2]


def test_loss_falls_warmup_is_2_5_percent_and_the_final_model_loads(prepared, tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    assert pretrain(out, f"data.train_path={prepared}", f"model.path={tiny_llama}", "trainer.max_steps=80",
                    "trainer.max_epochs=20", "trainer.save_every=40") == 0
    m = rows(out)
    assert len(m) == 80 and sum(r["loss"] for r in m[-10:]) < 0.7 * sum(r["loss"] for r in m[:10])
    # 2.5 % of 80 steps: 2 steps of linear warm-up (1/2, then the peak), where optim.warmup_steps is 0
    assert [r["lr"] for r in m[:2]] == pytest.approx([1.5e-3, 3e-3])
    AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "final")


def test_load_checkpoint_resumes_a_step_or_takes_a_model_folders_weights_only(prepared, tiny_llama, tmp_path):
    base = (f"data.train_path={prepared}", f"model.path={tiny_llama}", "trainer.max_steps=6", "trainer.save_every=3")
    first = tmp_path / "first"
    assert pretrain(first, *base) == 0
    resumed = tmp_path / "resumed"
    assert pretrain(resumed, *base, f"load_checkpoint={first / 'checkpoints' / 'step_000003'}") == 0
    full, again = rows(first), rows(resumed)
    assert [r["step"] for r in again] == [4, 5, 6]  # the optimiser, schedule and data position went on
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in full[3:]], rel=1e-5)
    stage2 = tmp_path / "stage2"
    assert pretrain(stage2, *base, f"load_checkpoint={first / 'checkpoints' / 'final'}") == 0
    assert [r["step"] for r in rows(stage2)][0] == 1  # weights only: a new run from step 1
    assert rows(stage2)[0]["loss"] < full[0]["loss"]  # ... starting from the trained weights


def test_freeze_non_embeds_trains_only_the_embeddings(prepared, tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "frozen"
    assert pretrain(out, f"data.train_path={prepared}", f"model.path={tiny_llama}", "trainer.max_steps=3",
                    "model.freeze_non_embeds_params=true") == 0
    before = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "final").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"model.embed_tokens.weight", "lm_head.weight"}


def test_benchmark_trains_on_random_sequences_without_data(tiny_llama, tmp_path):
    out = tmp_path / "bench"
    assert pretrain(out, "data.train_path=", "data.benchmark=true", "data.num_samples=32", f"model.path={tiny_llama}",
                    "trainer.max_steps=2") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["path"] == "random (data.benchmark)" and summary["data"]["rows"] == 32


def test_flash_attn_without_the_package_is_one_line(prepared, tiny_llama, tmp_path, capsys):
    assert pretrain(tmp_path / "fa", f"data.train_path={prepared}", f"model.path={tiny_llama}",
                    "model.use_flash_attn=true") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.use_flash_attn" in err[0] and "flash-attn" in err[0], err


def test_use_neft_also_noises_pretraining(prepared, tiny_llama, tmp_path):
    base = (f"data.train_path={prepared}", f"model.path={tiny_llama}", "trainer.max_steps=1")
    assert pretrain(tmp_path / "a", *base) == 0 and pretrain(tmp_path / "b", *base) == 0
    assert pretrain(tmp_path / "n", *base, "use_neft=true") == 0
    plain, again, neft = (rows(tmp_path / d)[0]["loss"] for d in "abn")
    assert plain == again and neft != plain


def test_half_written_or_wrongly_tokenized_data_and_a_checkpoint_inside_the_run_are_refused(prepared, tiny_llama,
                                                                                             tmp_path, capsys):
    import shutil

    half = tmp_path / "half"
    shutil.copytree(prepared, half)
    (half / "prepared.json").unlink()
    assert pretrain(tmp_path / "a", f"data.train_path={half}", f"model.path={tiny_llama}") == 2
    assert "half-written" in capsys.readouterr().err

    big = tmp_path / "big"  # data tokenized with a larger (expanded) vocabulary than model.path's
    from datasets import Dataset

    Dataset.from_dict({"input_ids": [[5, 400, 7]] * 20, "labels": [[5, 400, 7]] * 20}).save_to_disk(str(big / "part-00000"))
    assert pretrain(tmp_path / "b", f"data.train_path={big}", f"model.path={tiny_llama}") == 2
    err = capsys.readouterr().err
    assert "token id 400" in err and "expanded" in err

    run = tmp_path / "run"
    assert pretrain(run, f"data.train_path={prepared}", f"model.path={tiny_llama}", "trainer.max_steps=2",
                    "trainer.save_every=1") == 0
    assert pretrain(run, f"data.train_path={prepared}", f"model.path={tiny_llama}",
                    f"load_checkpoint={run / 'checkpoints' / 'step_000001'}", "--overwrite") == 2
    assert "lies inside this run's output_dir" in capsys.readouterr().err
    assert (run / "checkpoints" / "step_000001").is_dir()  # nothing was cleared
