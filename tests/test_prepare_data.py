"""launch.prepare_data: Colossal-LLaMA's jsonl -> tokenized Arrow, spliced per category, in bins."""

from __future__ import annotations

import json
import os

import pytest

from coati_ray.algo.losses import IGNORE_INDEX
from coati_ray.data.prepare import contiguous_bins, splice
from launch.prepare_data import main


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def pretrain_rows(category: str, n: int, offset: int = 0):
    return [{"source": f"sort: {i} {i + 3}" if i % 2 else "", "target": f"{i} {i + 3} and {category} {i}",
             "category": category} for i in range(offset, offset + n)]


@pytest.fixture
def inputs(tmp_path):
    write_jsonl(tmp_path / "in1" / "a.jsonl", pretrain_rows("math", 30))
    write_jsonl(tmp_path / "in2" / "b.jsonl", pretrain_rows("news", 20) + pretrain_rows("math", 10, offset=30))
    return f"{tmp_path / 'in1'},{tmp_path / 'in2'}"


def args(inputs, tokenizer_dir, out, *extra):
    return ["--mode", "pretrain", "--data_input_dirs", inputs, "--tokenizer_dir", tokenizer_dir,
            "--data_output_dirs", str(out), "--max_length", "64", "--num_spliced_dataset_bins", "3", *extra]


def test_splice_keeps_whole_samples_within_the_length_and_bins_are_contiguous():
    samples = [{"input_ids": [i] * n, "labels": [i] * n} for i, n in enumerate([3, 4, 2, 6, 1])]
    out = splice(samples, 7)
    assert [len(s["input_ids"]) for s in out] == [7, 2, 7]  # 3+4 | 2 (6 does not fit) | 6+1
    assert sum((s["input_ids"] for s in out), []) == sum((s["input_ids"] for s in samples), [])
    assert contiguous_bins(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert contiguous_bins([1], 3) == [[1], [], []]


def test_pretrain_parts_are_spliced_per_category_with_loss_on_targets_only(inputs, tiny_llama, tmp_path, capsys):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    out = tmp_path / "out"
    assert main(args(inputs, tiny_llama, out)) == 0
    manifest = json.loads((out / "prepared.json").read_text())
    assert manifest["rows"] == 60 and manifest["categories"] == 2 and len(manifest["parts"]) == 6
    assert [(p["category"], p["bin"]) for p in manifest["parts"]] == [("math", b) for b in range(3)] + \
        [("news", b) for b in range(3)]
    from coati_ray.data.prepare import joint_tokens

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    target_tokens = {"math": 0, "news": 0}
    for category, n, offset in (("math", 30, 0), ("news", 20, 0), ("math", 10, 30)):
        for r in pretrain_rows(category, n, offset):
            _, tokens, source_tokens = joint_tokens(tok, r["source"], r["target"])  # source + target as one text
            target_tokens[category] += len(tokens) - source_tokens + 1  # + EOS
    seen = {"math": 0, "news": 0}
    for i, part in enumerate(manifest["parts"]):
        ds = load_from_disk(str(out / "arrow" / f"part-{i:05d}"))
        assert set(ds["category"]) == {part["category"]} and set(ds["bin"]) == {part["bin"]}
        for row in ds:
            assert len(row["input_ids"]) == len(row["labels"]) <= 64
            kept = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
            assert kept == [label for label in row["labels"] if label != IGNORE_INDEX]
            seen[part["category"]] += len(kept)
        lines = (out / "jsonl" / f"part-{i:05d}.jsonl").read_text().splitlines()
        assert [json.loads(line)["input_ids"] for line in lines] == ds["input_ids"]
    assert seen == target_tokens  # every target token once, no source token in the loss
    assert manifest["samples"] < 60  # samples were spliced

    again = tmp_path / "again"
    assert main(args(inputs, tiny_llama, again)) == 0  # deterministic for a seed
    assert (again / "jsonl" / "part-00000.jsonl").read_bytes() == (out / "jsonl" / "part-00000.jsonl").read_bytes()
    capsys.readouterr()
    assert main(args(inputs, tiny_llama, out)) == 0
    assert "nothing to do" in capsys.readouterr().out
    os.remove(out / "prepared.json")  # as if interrupted after the cache was written
    (out / "prepared.partial").write_text("x")
    assert main(args(inputs, tiny_llama, out)) == 0
    assert "reusing the tokenized cache" in capsys.readouterr().out and (out / "prepared.json").exists()
    assert main(args(inputs, tiny_llama, out, "--seed", "7")) == 2  # other settings: refused, not overwritten
    assert "prepared from other inputs" in capsys.readouterr().err


def test_sft_rows_are_not_spliced_and_learn_only_assistant_turns(tiny_llama, tmp_path):
    from datasets import load_from_disk

    rows = [{"messages": [{"from": "human", "content": f"sort: {i} 1"}, {"from": "assistant", "content": f"1 {i}"}]}
            for i in range(2, 12)]
    write_jsonl(tmp_path / "sft" / "a.jsonl", rows)
    out = tmp_path / "out"
    assert main(["--mode", "sft", "--data_input_dirs", str(tmp_path / "sft"), "--tokenizer_dir", tiny_llama,
                 "--data_output_dirs", str(out), "--max_length", "64", "--num_spliced_dataset_bins", "2"]) == 0
    manifest = json.loads((out / "prepared.json").read_text())
    assert manifest["samples"] == 10 and [p["category"] for p in manifest["parts"]] == ["unknown", "unknown"]
    ds = load_from_disk(str(out / "arrow" / "part-00000"))
    assert all(row["labels"][0] == IGNORE_INDEX and row["labels"][-1] != IGNORE_INDEX for row in ds)


@pytest.mark.parametrize("line, expected", [
    ("not json", "is not valid JSON"),
    ('{"source": "", "category": "x"}', "field 'target' must be a string"),
    ('{"source": "", "target": "", "category": "x"}', "'target' is empty"),
])
def test_a_bad_row_names_its_file_and_line(line, expected, tiny_llama, tmp_path, capsys):
    path = tmp_path / "in" / "rows.jsonl"
    write_jsonl(path, pretrain_rows("math", 2))
    with open(path, "a") as f:
        f.write(line + "\n")
    assert main(args(str(tmp_path / "in"), tiny_llama, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}:3" in err[0] and expected in err[0], err


def test_a_file_that_is_not_utf8_names_its_line(tiny_llama, tmp_path, capsys):
    path = tmp_path / "in" / "rows.jsonl"
    write_jsonl(path, pretrain_rows("math", 2))
    with open(path, "ab") as f:
        f.write(b'{"source": "", "target": "caf\xe9", "category": "x"}\n')
    assert main(args(str(tmp_path / "in"), tiny_llama, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 3" in err[0] and "UTF-8" in err[0], err


def test_an_output_with_foreign_folders_is_refused(inputs, tiny_llama, tmp_path, capsys):
    (tmp_path / "out" / "arrow").mkdir(parents=True)
    (tmp_path / "out" / "arrow" / "mine").write_text("x")
    assert main(args(inputs, tiny_llama, tmp_path / "out")) == 2
    assert "did not write" in capsys.readouterr().err and (tmp_path / "out" / "arrow" / "mine").read_text() == "x"


def test_the_bilingual_samples_prepare_in_both_layouts(tiny_llama, tmp_path):
    """data/ ships Colossal-LLaMA's layouts in English and Chinese: pretrain rows per category, SFT messages."""
    from tests.conftest import REPO

    for mode, source, categories in (("pretrain", "pretrain", {"counting", "sorting", "sorting_zh"}),
                                     ("sft", "sft_bilingual", {"en", "zh"})):
        out = tmp_path / mode
        assert main(["--mode", mode, "--data_input_dirs", os.path.join(REPO, "data", source), "--tokenizer_dir",
                     tiny_llama, "--data_output_dirs", str(out), "--max_length", "64",
                     "--num_spliced_dataset_bins", "2"]) == 0
        manifest = json.loads((out / "prepared.json").read_text())
        assert {p["category"] for p in manifest["parts"]} == categories and manifest["truncated"] == 0


def test_source_and_target_are_one_text_and_a_cut_off_target_is_skipped_and_counted(tiny_llama, tmp_path, capsys):
    """A target that continues the source's last word is tokenized as the text reads (the joint merge), the
    straddling token is the target's; a row whose target is past max_length is skipped and counted, not fatal."""
    from transformers import AutoTokenizer

    from coati_ray.data.prepare import joint_tokens, pretrain_sample

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    text, tokens, first = joint_tokens(tok, "sort: 19 2 1", "6 7")  # "16" is one number across the boundary
    assert tokens == tok("sort: 19 2 16 7", add_special_tokens=False)["input_ids"]
    assert tok.decode(tokens[first:]).startswith("16") or tok.decode(tokens[first:]).startswith(" 16")
    sample = pretrain_sample({"source": "sort: 19 2 1", "target": "6 7", "category": "c"}, "x", tok, 64)
    assert sample["input_ids"] == [tok.bos_token_id] + tokens + [tok.eos_token_id]
    assert sample["labels"][1 + first:] == tokens[first:] + [tok.eos_token_id]

    long_source = " ".join(["sort: 1 2 3"] * 40)
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"source": long_source, "target": "1 2 3", "category": "c"}] +
                pretrain_rows("c", 4))
    out = tmp_path / "out"
    assert main(args(str(tmp_path / "in"), tiny_llama, out)) == 0
    manifest = json.loads((out / "prepared.json").read_text())
    assert manifest["rows"] == 4 and manifest["dropped_target_cut_off"] == 1
    assert "1 skipped: their target was cut off entirely" in capsys.readouterr().out


def test_max_samples_takes_every_category_in_proportion_across_its_bins():
    from coati_ray.trainers.pretrain import sample_by_category

    by = {"a": [("a", b) for b in range(10)], "b": [("b", b) for b in range(30)], "c": [("c", b) for b in range(60)]}
    out = sample_by_category(by, 10)
    assert {c: len(v) for c, v in out.items()} == {"a": 1, "b": 3, "c": 6}
    assert [b for _, b in out["c"]] == [0, 10, 20, 30, 40, 50]  # spread over the category, not its first rows
    assert sample_by_category(by, 1000) == by
