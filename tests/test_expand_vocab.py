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
def test_new_pieces_are_single_tokens_whose_rows_are_the_mean_of_their_old_tokens(family, tmp_path):
    """Each new row is the mean of the old rows of the tokens its piece used to split into (Colossal-LLaMA's
    init_model); old rows, and the old tokens' logits on old text, are unchanged; the new LM-head rows do take
    some probability mass from the old tokens."""
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
        for i, piece in zip(range(old_vocab, old_vocab + 3), new_pieces):
            parts = old_tok.encode(piece, add_special_tokens=False)
            assert len(parts) > 1 and torch.equal(after[i], before[parts].float().mean(dim=0).to(before.dtype))
        assert not torch.equal(after[old_vocab], after[old_vocab + 1])  # one mean per piece, not one for all
    ids = torch.tensor([old_tok.encode(OLD_TEXT)])
    with torch.no_grad():
        new_logits, old_logits = new(ids).logits, old(ids).logits
        assert torch.allclose(new_logits[..., :old_vocab], old_logits, atol=1e-6)
        old_mass = new_logits.softmax(-1)[..., :old_vocab].sum(-1)
        assert (old_mass < 1 - 1e-6).all()  # the new rows' logits take some of it


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


def readme_lines():
    from tests.conftest import REPO

    with open(f"{REPO}/README.md", encoding="utf-8") as f:
        return [line for line in f.read().splitlines() if line.strip()]


def test_a_byte_level_piece_matches_only_as_a_whole_word_and_other_text_is_unchanged(tmp_path):
    """An added piece is not found inside a word ("rt: 3" in "sort: 3" stays as it was) and every line of
    text that does not hold a piece as a word tokenizes exactly as before."""
    from transformers import AutoTokenizer

    from tests.conftest import REPO

    source = f"{REPO}/assets/models/tiny-llama"
    pieces = write_pieces(tmp_path / "pieces.jsonl", ["rt: 3", "quokka", "人工智能"])
    out = tmp_path / "expanded"
    assert main(["--source", source, "--pieces", pieces, "--output", str(out)]) == 0
    old, new = AutoTokenizer.from_pretrained(source), AutoTokenizer.from_pretrained(out)
    rt, quokka, ai = (new.convert_tokens_to_ids(p) for p in ("rt: 3", "quokka", "人工智能"))
    assert new.encode("sort: 3") == old.encode("sort: 3")
    assert rt in new.encode("a rt: 3") and quokka in new.encode("one quokka.") and ai in new.encode("(人工智能)")
    assert ai not in new.encode("我爱人工智能")  # unspaced CJK: documented in expand_tokenizer
    for line in readme_lines():
        if not any(p in line for p in ("rt: 3", "quokka", "人工智能")):
            assert new.encode(line) == old.encode(line), line
    for line in ("sorted quokkas", "我爱人工智能技术", "Sort: 3, sort: 3"):  # inside words: as before
        assert new.encode(line) == old.encode(line), line


@pytest.fixture(scope="module")
def sentencepiece_llama(tmp_path_factory):
    """A Llama checkpoint whose tokenizer is a SentencePiece BPE model (as Llama-2's) trained on README text."""
    import io

    import sentencepiece as spm
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizerFast

    root = tmp_path_factory.mktemp("sp-llama")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(readme_lines()), model_writer=model, vocab_size=600,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, minloglevel=2)
    (root / "tokenizer.model").write_bytes(model.getvalue())
    tokenizer = LlamaTokenizerFast(vocab_file=str(root / "tokenizer.model"), legacy=False)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def test_a_sentencepiece_tokenizer_gets_ordinary_pieces_as_colossal_llama_does(sentencepiece_llama, tmp_path):
    """In a SentencePiece tokenizer a new piece joins the model (score 0), so segmentation reaches it by merging
    the two pieces that spell it; text without it tokenizes exactly as before; its row is the mean of those
    pieces' rows (no dummy-prefix "▁" among them); the slow and the fast tokenizer agree."""
    import sentencepiece as spm
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaTokenizer

    old = AutoTokenizer.from_pretrained(sentencepiece_llama)
    vocab = old.get_vocab()
    words = sorted({w for line in readme_lines() for w in line.split() if w.isalpha()})
    splits = (old.tokenize(w) for w in words)  # a word whose last two pieces are not yet one: join them
    left, right = next(t[-2:] for t in splits if len(t) > 2 and "\u2581" not in t[-2] + t[-1]
                       and t[-2] + t[-1] not in vocab)
    piece = left + right
    out = tmp_path / "expanded"
    assert main(["--source", str(sentencepiece_llama), "--pieces", str(write_pieces(tmp_path / "p.jsonl", [piece])),
                 "--output", str(out)]) == 0
    assert (out / "tokenizer.model").is_file()
    assert json.loads((out / "expand_vocab.json").read_text())["unreachable_pieces"] == []
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    new_id = len(old)
    assert sp.piece_to_id(piece) == new_id and sp.get_score(new_id) == 0.0
    fast, slow = AutoTokenizer.from_pretrained(out), LlamaTokenizer.from_pretrained(out, legacy=False)
    text = f"the {piece} again, and {left} {right} apart"
    assert new_id in fast.encode(text) and fast.encode(text) == slow.encode(text)
    for line in readme_lines():
        if piece not in line:
            assert fast.encode(line) == old.encode(line), line

    before = AutoModelForCausalLM.from_pretrained(sentencepiece_llama).get_input_embeddings().weight
    after = AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight
    parts = old.encode(piece, add_special_tokens=False)
    if old.convert_ids_to_tokens(parts[0]) == "\u2581":
        parts = parts[1:]  # the dummy prefix is not part of the piece
    assert len(parts) > 1 and torch.equal(after[new_id], before[parts].mean(dim=0))
    assert torch.equal(after[:new_id], before)


def test_a_sentencepiece_piece_no_merge_reaches_is_reported(sentencepiece_llama, tmp_path, capsys):
    """A phrase whose halves are not pieces is appended but never produced: expand_vocab says so."""
    out = tmp_path / "expanded"
    phrase = "请把这些数字从小到大排序"
    assert main(["--source", str(sentencepiece_llama), "--pieces", str(write_pieces(tmp_path / "p.jsonl", [phrase])),
                 "--output", str(out)]) == 0
    assert json.loads((out / "expand_vocab.json").read_text())["unreachable_pieces"] == [phrase]
    assert "1 added piece(s) are never produced" in capsys.readouterr().out
