"""launch.expand_vocab: new pieces become single tokens, new rows start at the mean, old behaviour is kept."""

from __future__ import annotations

import json

import pytest
import torch

from launch.expand_vocab import main

OLD_TEXT = "sort: 19 2 16 7"


def write_pieces(path, pieces):
    path.write_text("".join(json.dumps({"piece": p}, ensure_ascii=False) + "\n" for p in pieces), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gpt2"])  # untied and tied embeddings
def test_new_pieces_are_single_tokens_whose_rows_are_the_mean_and_old_behaviour_is_unchanged(family, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.conftest import REPO

    source = f"{REPO}/assets/models/{family}"
    old_tok = AutoTokenizer.from_pretrained(source)
    present = old_tok.decode([old_tok.encode(OLD_TEXT, add_special_tokens=False)[0]])  # one token already
    new_pieces = ["quokka", "人工智能", "zebra!"]
    pieces = write_pieces(tmp_path / "pieces.jsonl", [new_pieces[0], present, new_pieces[1], new_pieces[0], new_pieces[2]])
    out = tmp_path / "expanded"
    assert main(["--source_model_and_tokenizer_path", source, "--expand_tokens_file", pieces,
                 "--target_model_path", str(out)]) == 0

    tok = AutoTokenizer.from_pretrained(out)
    report = json.loads((out / "expand_vocab.json").read_text())
    assert (report["added"], report["already_present"], report["repeated"]) == (3, 1, 1)
    old_vocab = len(old_tok)
    assert {k: v for k, v in tok.get_vocab().items() if v < old_vocab} == old_tok.get_vocab()  # old ids unchanged
    new_ids = [tok.encode(p, add_special_tokens=False) for p in new_pieces]
    assert new_ids == [[old_vocab], [old_vocab + 1], [old_vocab + 2]]  # each one token, after the old ones
    assert tok.encode(OLD_TEXT) == old_tok.encode(OLD_TEXT)

    old = AutoModelForCausalLM.from_pretrained(source).eval()
    new = AutoModelForCausalLM.from_pretrained(out).eval()
    assert new.config.tie_word_embeddings == old.config.tie_word_embeddings
    for get in ("get_input_embeddings", "get_output_embeddings"):
        before, after = getattr(old, get)().weight, getattr(new, get)().weight
        assert after.shape[0] == old_vocab + 3
        assert torch.equal(after[:old_vocab], before)  # old rows bit-equal
        mean = before.float().mean(dim=0).to(before.dtype)
        assert all(torch.equal(after[i], mean) for i in range(old_vocab, old_vocab + 3))
    ids = torch.tensor([old_tok.encode(OLD_TEXT)])
    with torch.no_grad():
        assert torch.allclose(new(ids).logits[..., :old_vocab], old(ids).logits, atol=1e-6)


def test_bad_input_is_one_line_and_nothing_is_overwritten(tmp_path, capsys):
    from tests.conftest import REPO

    source = f"{REPO}/assets/models/tiny-llama"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"piece": "ok"}\n{"text": "no piece"}\n')
    assert main(["--source", source, "--pieces", str(bad), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}:2" in err[0] and "piece" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]  # nothing written

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    good = write_pieces(tmp_path / "good.jsonl", ["quokka"])
    assert main(["--source", source, "--pieces", good, "--output", str(existing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists" in err[0] and (existing / "keep.txt").read_text() == "x"

    assert main(["--source", str(tmp_path), "--pieces", good, "--output", str(tmp_path / "o2")]) == 2
    assert "config.json" in capsys.readouterr().err


def test_spare_rows_are_kept_and_missing_old_rows_start_at_the_mean():
    """A model with more rows than its tokenizer (padded vocabularies) keeps its spare rows beyond the new
    ids; one with fewer gets the old tokens it lacked set to the mean too."""
    from transformers import AutoModelForCausalLM

    from coati_ray.models.vocab import Expansion, expand_model
    from tests.conftest import REPO

    source = f"{REPO}/assets/models/tiny-llama"
    expansion = Expansion(first_id=353, added=["a", "b", "c"])
    padded = AutoModelForCausalLM.from_pretrained(source)
    padded.resize_token_embeddings(360, mean_resizing=False)
    before = padded.get_input_embeddings().weight.detach().clone()
    expand_model(padded, expansion)
    after = padded.get_input_embeddings().weight
    assert after.shape[0] == 360 and torch.equal(after[356:], before[356:]) and torch.equal(after[:353], before[:353])
    assert torch.equal(after[353], before[:353].mean(dim=0))

    short = AutoModelForCausalLM.from_pretrained(source)
    short.resize_token_embeddings(350, mean_resizing=False)
    before = short.get_output_embeddings().weight.detach().clone()
    expand_model(short, expansion)
    after = short.get_output_embeddings().weight
    assert after.shape[0] == 356 and torch.equal(after[:350], before)
    assert all(torch.equal(after[i], before.mean(dim=0)) for i in range(350, 356))
