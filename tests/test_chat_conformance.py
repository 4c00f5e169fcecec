"""The chat templates of the families people train (data/chat_templates, verbatim from the models' repositories)
through every stage's formatting, each with a tokenizer of its kind (tests/chat_conformance.py says how the
expected tokens are computed independently of ChatFormat)."""

import os

import pytest
import torch

from tests import chat_conformance as cc
from tests.conftest import REPO


@pytest.mark.parametrize("name", list(cc.FAMILIES))
def test_every_stage_trains_what_the_model_generates(name):
    """SFT (one and two turns, with a system turn), RM pairs, PPO prompts, tool episodes and stop ids."""
    cells = cc.results([name])[name]
    assert cells["SFT 1 turn"].ok and cells["SFT 2 turns"].ok and cells["PPO prompts"].ok


def test_the_docs_table_is_what_the_suite_finds():
    """docs/guides/chat-templates.md shows the suite's own results (regenerate: python -m tests.chat_conformance)."""
    with open(os.path.join(REPO, "docs", "guides", "chat-templates.md"), encoding="utf-8") as f:
        doc = f.read()
    assert cc.table(cc.results()) in doc


def test_qwen3_trains_every_turn_each_with_the_history_the_template_renders_then():
    """Qwen3 drops earlier turns' reasoning: two turns are two samples, the first turn's with its own empty
    <think></think> block, the second's with the first as the template renders history (no block); never a
    refusal. last_turn trains the final turn alone."""
    from coati_ray.data.template import ChatFormat
    from coati_ray.models.tiny_chat import family_tokenizer

    tok = family_tokenizer("qwen3")
    chat = ChatFormat.of(tok)
    messages = [cc.SYSTEM] + cc.TURNS
    samples = chat.samples(messages)
    assert [chat.trained_spans(*s) for s in samples] == [["<think>\n\n</think>\n\n1 2 3<|im_end|>"],
                                                         ["<think>\n\n</think>\n\n7 8 9<|im_end|>"]]
    assert "assistant\n1 2 3<|im_end|>" in chat.decode(samples[1][0])  # history as rendered at turn 2
    assert [chat.trained_spans(*s) for s in chat.samples(messages, rewritten_history="last_turn")] == [
        ["<think>\n\n</think>\n\n7 8 9<|im_end|>"]]


def test_llama2_sentencepiece_trains_no_spurious_word_start_token():
    """Each reply tokenized alone got a lone '▁' before its first word (SentencePiece prepends one to a text);
    the rendered text tokenized whole has none: the first trained token is '▁1'."""
    from coati_ray.data.template import ChatFormat
    from coati_ray.models.tiny_chat import family_tokenizer

    tok = family_tokenizer("llama2")
    chat = ChatFormat.of(tok)
    ids, labels = chat.tokenize(cc.TURNS)
    trained = [tok.convert_ids_to_tokens(t) for t, label in zip(ids, labels) if label != -100]
    assert trained[0] == "▁1" and trained.count("▁") == 2  # the " " before each </s>, as Llama-2 writes it
    assert ids == tok(tok.apply_chat_template(cc.TURNS, tokenize=False), add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("family", ["qwen3", "llama3.1"])
def test_a_tool_episode_runs_in_the_families_own_tool_turns(family, tmp_path):
    """An episode on a tiny model of the family: the call, the tool turn the template writes around the answer,
    the answer copied out; every policy token trained, every template/tool token context."""
    from coati_ray.config.loader import from_dict
    from coati_ray.config.rl import GenerationConfig
    from coati_ray.config.rollout import RolloutConfig
    from coati_ray.data.template import ChatFormat
    from coati_ray.experience.episodes import EpisodeRunner
    from coati_ray.models import Actor, load_tokenizer
    from coati_ray.models.tiny_chat import build_family_model
    from coati_ray.tasks import calc

    path = build_family_model(family, str(tmp_path / family), hidden=32, layers=1)
    tok, actor = load_tokenizer(path), Actor.from_pretrained(path).eval()
    chat = ChatFormat.of(tok)
    prompt = calc.prompt_text(12, 30)
    items = [{"input_ids": chat.prompt_ids([{"role": "user", "content": prompt}]), "prompt": prompt,
              "row": {"prompt": prompt}}]
    runner = EpisodeRunner(from_dict(RolloutConfig, {"environment": "coati_ray.tasks.calc:CalcEnvironment"}))
    gen = from_dict(GenerationConfig, {"max_new_tokens": 64, "backend": "tests.episode_fixtures:oracle"})
    out = runner(actor, tok, items, gen, torch.device("cpu"), 0)
    assert out.env_reward.tolist() == [1.0] and not out.failed.any() and out.stats["rollout/tool_calls"] == 1
    P = out.prompt_length
    tokens = out.sequences[0, P:][out.mask[0, P:].bool()].tolist()
    trained = out.action_mask[0][out.mask[0, P:].bool()].tolist()
    policy = tok.decode([t for t, k in zip(tokens, trained) if k], skip_special_tokens=False)
    context = tok.decode([t for t, k in zip(tokens, trained) if not k], skip_special_tokens=False)
    assert calc.call_text(12, 30) in policy and calc.answer_text(42) in policy and "= 42" not in policy
    assert calc.observation_text(42) in context and not context.startswith(chat.end_of_turn)  # the policy's eot
    assert policy.count(chat.end_of_turn) == 2  # each policy turn ends with its end-of-turn token, trained


def test_a_template_without_a_generation_prompt_block_trains_whole_replies_and_stops_at_its_end_of_turn():
    """merlinite's template has no add_generation_prompt block and starts assistant turns with a special token:
    the header is not the end of turn (one trained token per reply, `<|assistant|>` a stop id); generation
    continues after it."""
    from coati_ray.data.template import ChatFormat
    from coati_ray.models.tiny_chat import family_tokenizer

    tok = family_tokenizer("merlinite")
    chat = ChatFormat.of(tok)
    assert chat.stop_token_ids == [tok.convert_tokens_to_ids("<|endoftext|>")]
    ids, labels = chat.tokenize(cc.TURNS)
    assert chat.trained_spans(ids, labels) == ["1 2 3<|endoftext|>", "7 8 9<|endoftext|>"]
    prompt = chat.prompt_ids(cc.TURNS[:1])
    assert tok.convert_tokens_to_ids("<|assistant|>") in prompt[-3:]  # the header, then its newline
    ids, labels = chat.tokenize(cc.TURNS[:2])
    assert ids[:len(prompt)] == prompt and set(labels[:len(prompt)]) == {-100} and labels[len(prompt)] != -100
