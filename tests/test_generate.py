"""After training: launch.generate with a prompt, a prompt file, LoRA adapters, 8/4-bit layers, best of n
by a reward model, and an interactive session that streams; its bad input is one line."""

import io
import json
import os

import pytest
import torch

from tests.conftest import data_path


def run(argv, capsys):
    from launch.generate import main

    code = main(argv)
    return code, capsys.readouterr()


def test_one_prompt_n_candidates(tiny_llama, capsys):
    code, out = run(["--model", tiny_llama, "--prompt", "sort: 3 1 2", "--n", "3", "generation.max_new_tokens=5"],
                    capsys)
    assert code == 0 and len(out.out.strip().split("\n")) == 3


def test_one_prompt_best_of_n_prints_every_candidate_best_first(tiny_llama, reward_dir, capsys):
    code, out = run(["--model", tiny_llama, "--prompt", "sort: 3 1 2", "--n", "4", "--reward-model", reward_dir,
                     "generation.max_new_tokens=5"], capsys)
    scores = [float(line.rsplit("(score ", 1)[1].rstrip(")")) for line in out.out.strip().split("\n")]
    assert code == 0 and len(scores) == 4 and scores == sorted(scores, reverse=True)


def test_prompt_file_best_of_n_writes_every_candidate_and_keeps_the_best(tiny_llama, reward_dir, tmp_path, capsys):
    out_path = tmp_path / "answers.jsonl"
    code, printed = run(["--model", tiny_llama, "--input", data_path("prompts", "eval.jsonl"), "--output",
                         str(out_path), "--n", "4", "--reward-model", reward_dir, "generation.max_new_tokens=6",
                         "batch_size=8"], capsys)
    assert code == 0, printed.err
    rows = [json.loads(line) for line in out_path.read_text().splitlines()]
    n_prompts = sum(1 for _ in open(data_path("prompts", "eval.jsonl")))
    assert len(rows) == n_prompts and all(r["prompt"].startswith("sort:") for r in rows)
    for r in rows:
        scores = [c["score"] for c in r["candidates"]]
        assert len(scores) == 4 and r["score"] == max(scores)
        assert r["response"] == r["candidates"][0]["response"]
    # the scores are the reward model's on exactly those answers
    from coati_ray.inference import render_prompt
    from coati_ray.models import RewardModel, load_tokenizer

    tok, rm = load_tokenizer(tiny_llama), RewardModel.from_pretrained(reward_dir).eval()
    c = rows[0]["candidates"][1]
    ids = render_prompt(tok, rows[0]["prompt"]) + tok(c["response"], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        again = rm(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).item()
    assert again == pytest.approx(c["score"], abs=0.05)  # re-tokenising the text may split it differently


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_lora_adapters_on_a_quantized_base(tiny_llama, tmp_path, capsys, kind):
    from coati_ray.config import ModelConfig
    from coati_ray.models import build_actor, export_model

    actor = build_actor(ModelConfig(path=tiny_llama, lora_rank=4))
    export_model(actor, str(tmp_path / "adapters"), merge_lora=False)
    assert (tmp_path / "adapters" / "adapter_config.json").is_file()
    code, out = run(["--model", tiny_llama, "--lora", str(tmp_path / "adapters"), "--quantize", kind, "--prompt",
                     "sort: 5 4", "generation.max_new_tokens=4"], capsys)
    assert code == 0 and out.out.strip(), out.err


def test_interactive_streams_each_answer(tiny_llama, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("sort: 2 1\nsort: 9 8\n\n"))
    code, out = run(["--model", tiny_llama, "--interactive", "generation.max_new_tokens=4"], capsys)
    assert code == 0 and out.out.count("prompt:") == 2  # two answers streamed, then the empty line ends it


@pytest.mark.parametrize("extra,needle", [
    (["--input", "x.jsonl"], "--input needs --output"),
    (["--prompt", "a", "--n", "3", "generation.do_sample=false"], "greedy answers would all be the same"),
    (["--prompt", "a", "--reward-model", "/nonexistent"], "reward_model"),
    (["--prompt", "a", "generation.temperature=0"], "generation.temperature"),
])
def test_bad_input_is_one_line(tiny_llama, tmp_path, capsys, extra, needle):
    code, out = run(["--model", tiny_llama, *extra], capsys)
    err = out.err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err


def test_an_existing_output_is_never_overwritten(tiny_llama, tmp_path, capsys):
    existing = tmp_path / "done.jsonl"
    existing.write_text('{"keep": 1}\n')
    code, out = run(["--model", tiny_llama, "--input", data_path("prompts", "eval.jsonl"), "--output", str(existing)],
                    capsys)
    assert code == 2 and "exists" in out.err and existing.read_text() == '{"keep": 1}\n'
