"""Data layouts, loss masks, padding sides, and bad rows named by file and row."""

import json

import pytest

from coati_ray.algo.losses import IGNORE_INDEX
from coati_ray.data import (
    build_preference_dataset,
    build_prompt_dataset,
    build_sft_dataset,
    collate_pairs,
    collate_prompts,
    collate_sft,
    load_rows,
)
from coati_ray.errors import DataError
from tests.conftest import data_path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_sft_loss_only_on_assistant_tokens(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [
        {"from": "human", "content": "sort: 3 1 2"}, {"from": "assistant", "content": "1 2 3"},
        {"from": "human", "content": "sort: 5 4"}, {"from": "assistant", "content": "4 5"}]}])
    items, report = build_sft_dataset(path, tokenizer, max_length=128)
    ids, labels = items[0]["input_ids"], items[0]["labels"]
    learned = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    # the whole text's tokens: the space after "Assistant:" is the reply's first token's (" 1")
    answer1 = tokenizer(" 1 2 3", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    answer2 = tokenizer(" 4 5", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert learned == answer1 + answer2
    assert tokenizer.decode([t for t, lab in zip(ids, labels) if lab == IGNORE_INDEX]).count("sort:") == 2
    assert report.rows == 1 and report.skipped_bad == 0


def test_instruction_layout_matches_messages(tokenizer, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Sort.", "input": "3 1", "output": "1 3"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"messages": [{"from": "human", "content": "Sort.\n3 1"},
                                                          {"from": "assistant", "content": "1 3"}]}])
    assert build_sft_dataset(a, tokenizer, 64)[0] == build_sft_dataset(b, tokenizer, 64)[0]


def test_sft_collate_right_pads_with_ignored_labels(tokenizer):
    items, _ = build_sft_dataset(data_path("sft", "train.jsonl"), tokenizer, 64, max_samples=4)
    batch = collate_sft(items, tokenizer.pad_token_id)
    lengths = [len(it["input_ids"]) for it in items]
    assert batch["input_ids"].shape == (4, max(lengths))
    for row, n in enumerate(lengths):
        assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()


def test_bad_row_names_file_and_row(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                                   {"prompt": "p", "chosen": "a", "rejected": "c"},
                                                   {"prompt": "p", "chosen": "a"}])
    with pytest.raises(DataError) as e:
        build_preference_dataset(path, tokenizer, 64)
    msg = str(e.value)
    assert "pairs.jsonl row 3" in msg and "missing field 'rejected'" in msg and "on_bad_row=skip" in msg


def test_bad_rows_skipped_and_counted_when_asked(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                                   {"prompt": "p", "chosen": "a"},
                                                   {"prompt": "p", "chosen": 3, "rejected": "b"}])
    items, report = build_preference_dataset(path, tokenizer, 64, fmt="pairs", on_bad_row="skip")
    assert len(items) == 1 and report.skipped_bad == 2


def test_hh_rlhf_layout_splits_at_last_assistant_turn(tokenizer, tmp_path):
    ctx = "\n\nHuman: sort: 2 1\n\nAssistant: 1 2\n\nHuman: and 4 3?\n\nAssistant:"
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": ctx + " 3 4", "rejected": ctx + " 4 3"}])
    items, _ = build_preference_dataset(path, tokenizer, 128)
    chosen, rejected = items[0]["chosen_ids"], items[0]["rejected_ids"]
    common = 0
    while chosen[common] == rejected[common]:
        common += 1
    assert tokenizer.decode(chosen[:common]).endswith("Assistant: ") or \
        tokenizer.decode(chosen[:common]).endswith("Assistant:")
    assert tokenizer.decode(chosen[common:-1]).strip() in ("3 4", "4")
    bad = write_jsonl(tmp_path / "hh_bad.jsonl", [{"chosen": ctx + " 3 4", "rejected": "\n\nHuman: other\n\nAssistant: x"}])
    with pytest.raises(DataError, match="row 1.*do not share"):
        build_preference_dataset(bad, tokenizer, 128)


def test_rm_static_layout(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "rs.jsonl", [{"prompt": "sort: 2 1", "response": "1 2", "chosen": "1 2",
                                                 "rejected": "2 1"}])
    items, _ = build_preference_dataset(path, tokenizer, 64)
    batch = collate_pairs(items, tokenizer.pad_token_id)
    assert tokenizer.decode(batch["chosen_ids"][0]).endswith("1 2</s>")
    assert tokenizer.decode(batch["rejected_ids"][0]).endswith("2 1</s>")


def test_prompts_left_padded(tokenizer):
    items, report = build_prompt_dataset(data_path("prompts", "train.jsonl"), tokenizer, 64, max_samples=5)
    batch = collate_prompts(items, tokenizer.pad_token_id)
    assert report.rows == 5
    assert batch["attention_mask"][:, -1].all()  # every prompt ends at the right edge
    assert tokenizer.decode(items[0]["input_ids"]).endswith("Assistant:")  # the reply writes the space


@pytest.mark.parametrize("kind", ["parquet", "arrow_file", "save_to_disk", "json"])
def test_local_file_formats(tokenizer, tmp_path, kind):
    import datasets

    rows = [{"prompt": "sort: 2 1", "chosen": "1 2", "rejected": "2 1"}] * 3
    ds = datasets.Dataset.from_list(rows)
    if kind == "parquet":
        path = str(tmp_path / "d.parquet")
        ds.to_parquet(path)
    elif kind == "json":
        path = str(tmp_path / "d.json")
        (tmp_path / "d.json").write_text(json.dumps(rows))
    elif kind == "save_to_disk":
        path = str(tmp_path / "d")
        ds.save_to_disk(path)
    else:
        ds.save_to_disk(str(tmp_path / "d"))
        import glob

        path = glob.glob(str(tmp_path / "d" / "*.arrow"))[0]
    items, report = build_preference_dataset(path, tokenizer, 64)
    assert report.rows == 3


def test_empty_missing_malformed_and_non_utf8(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_rows(str(empty))
    with pytest.raises(DataError, match="does not exist"):
        load_rows(str(tmp_path / "none.jsonl"))
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(DataError, match="b.jsonl line 2 is not a JSON object .*data.on_bad_row=skip"):
        load_rows(str(broken))
    latin = tmp_path / "l.jsonl"
    latin.write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="l.jsonl line 1 .*not valid UTF-8"):
        load_rows(str(latin))
    with pytest.raises(DataError, match="extension '.tsv'"):
        (tmp_path / "x.tsv").write_text("a\n1\n")
        load_rows(str(tmp_path / "x.tsv"))


def test_reply_truncated_away_is_dropped_and_counted(tokenizer, tmp_path):
    long_prompt = "sort: " + " ".join(["7"] * 40)
    path = write_jsonl(tmp_path / "t.jsonl", [
        {"messages": [{"from": "human", "content": long_prompt}, {"from": "assistant", "content": "7"}]},
        {"messages": [{"from": "human", "content": "sort: 2 1"}, {"from": "assistant", "content": "1 2"}]}])
    items, report = build_sft_dataset(path, tokenizer, max_length=16)
    assert len(items) == 1 and report.dropped_empty == 1 and report.truncated == 1


def test_format_not_detectable(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "hello"}])
    with pytest.raises(DataError, match="cannot tell the SFT layout"):
        build_sft_dataset(path, tokenizer, 64)


def test_lines_that_are_not_json_are_skipped_and_counted_when_asked(tokenizer, tmp_path):
    """on_bad_row=skip also covers a line the JSON reader cannot parse (it used to stop the run)."""
    from coati_ray.data import build_prompt_dataset

    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "sort: 3 1"}\n{"prompt": \n["a list"]\n{"prompt": "sort: 2 9"}\n{"question": "x"}\n')
    items, report = build_prompt_dataset(str(path), tokenizer, 32, on_bad_row="skip")
    assert [it["prompt"] for it in items] == ["sort: 3 1", "sort: 2 9"]
    assert report.skipped_bad == 3  # two lines that are not JSON objects, one row without its field
    with pytest.raises(DataError, match="p.jsonl line 2 is not a JSON object"):
        build_prompt_dataset(str(path), tokenizer, 32)
