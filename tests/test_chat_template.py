"""Conversations in the model's own chat template: the trained tokens are exactly the assistant turns and
their end-of-turn token, for Coati's layout (token for token as before templates), ChatML and Llama-3."""

import json
import os

import pytest
import torch

from coati_ray.algo.losses import IGNORE_INDEX
from coati_ray.data.datasets import build_preference_dataset, build_prompt_dataset, build_sft_dataset
from coati_ray.data.formats import preference_pair, prompt_only, sft_messages
from coati_ray.data.template import COATI_TEMPLATE, ChatFormat, use_chat_template
from coati_ray.errors import ConfigError, DataError
from coati_ray.models.loading import load_tokenizer
from tests.conftest import SYSTEM

TWO_TURNS = [{"role": "system", "content": "Sort numbers."}, {"role": "user", "content": "sort: 3 1 2"},
             {"role": "assistant", "content": "1 2 3"}, {"role": "user", "content": "sort: 9 7"},
             {"role": "assistant", "content": "7 9"}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_coati_template_trains_the_replies_as_the_whole_text_tokenizes(tokenizer):
    """BOS, "Human: <u>\\nAssistant:" as context, " <a>" + EOS trained (the space before a reply is its first
    token's, as byte-level BPE writes " 1"), "\\nHuman: ..." before later turns; the ids are the rendered text's."""
    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    rows = [{"from": "human", "content": "sort: 3 1 2"}, {"from": "gpt", "content": "1 2 3"},
            {"from": "human", "content": "sort: 9 7"}, {"from": "assistant", "content": "7 9"}]
    messages = sft_messages({"messages": rows}, "messages")["messages"]
    text = "Human: sort: 3 1 2\nAssistant: 1 2 3</s>\nHuman: sort: 9 7\nAssistant: 7 9</s>"
    context1 = [tokenizer.bos_token_id] + ids("Human: sort: 3 1 2\nAssistant:")
    reply1 = ids(" 1 2 3") + [tokenizer.eos_token_id]
    context2 = ids("\nHuman: sort: 9 7\nAssistant:")
    reply2 = ids(" 7 9") + [tokenizer.eos_token_id]
    chat = ChatFormat.of(tokenizer)
    assert chat.template == COATI_TEMPLATE and chat.stop_token_ids == [tokenizer.eos_token_id]
    got_ids, got_labels = chat.tokenize(messages)
    assert got_ids == [tokenizer.bos_token_id] + ids(text) == context1 + reply1 + context2 + reply2
    assert got_labels == [IGNORE_INDEX] * len(context1) + reply1 + [IGNORE_INDEX] * len(context2) + reply2
    assert chat.prompt_ids(messages[:1]) == context1  # generation continues where the context ends


def test_chatml_trains_exactly_the_assistant_turns_and_their_end_of_turn(tiny_chatml):
    tok = load_tokenizer(tiny_chatml)
    chat = ChatFormat.of(tok)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert chat.end_of_turn == "<|im_end|>" and chat.stop_token_ids == [end]
    ids, labels = chat.tokenize(TWO_TURNS)
    assert chat.trained_spans(ids, labels) == ["1 2 3<|im_end|>", "7 9<|im_end|>"]
    assert chat.decode(ids).startswith("<|im_start|>system\nSort numbers.<|im_end|>\n<|im_start|>user\n")
    assert ids[-1] == end and labels[-1] == end  # nothing after the last reply's end of turn
    prompt = chat.decode(chat.prompt_ids(TWO_TURNS[:2]))
    assert prompt.endswith("<|im_start|>user\nsort: 3 1 2<|im_end|>\n<|im_start|>assistant\n")
    # without a system turn, the template's own default system turn is rendered (context, never trained)
    ids, labels = chat.tokenize(TWO_TURNS[1:3])
    assert "You are a helpful assistant." in chat.decode(ids)
    assert chat.trained_spans(ids, labels) == ["1 2 3<|im_end|>"]
    # a system turn later in the conversation is the template's business: ChatML renders it as context
    ids, labels = chat.tokenize(TWO_TURNS[:3] + [{"role": "system", "content": "Now descending."}] + TWO_TURNS[3:])
    assert chat.trained_spans(ids, labels) == ["1 2 3<|im_end|>", "7 9<|im_end|>"]


def test_llama3_template_trims_contents_and_ends_turns_with_eot(tiny_llama3):
    tok = load_tokenizer(tiny_llama3)
    assert tok.pad_token == tok.eos_token == "<|eot_id|>"  # no pad token of its own: padded with EOS
    chat = ChatFormat.of(tok)
    messages = [dict(m) for m in TWO_TURNS]
    messages[2]["content"] = "  1 2 3 \n"
    ids, labels = chat.tokenize(messages)
    assert chat.trained_spans(ids, labels) == ["1 2 3<|eot_id|>", "7 9<|eot_id|>"]
    assert chat.decode(ids).startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert chat.stop_token_ids[0] == tok.convert_tokens_to_ids("<|eot_id|>")


def test_role_and_from_rows_are_one_layout_and_bad_roles_name_the_message():
    by_from = {"messages": [{"from": "human", "content": "a"}, {"from": "gpt", "content": "b"}]}
    by_role = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    assert sft_messages(by_from, "messages") == sft_messages(by_role, "messages")
    with_system = {"messages": [{"role": "system", "content": "s"}] + by_role["messages"]}
    assert sft_messages(with_system, "messages")["messages"][0] == {"role": "system", "content": "s"}
    with pytest.raises(ValueError, match=r"messages\[1\].role is 'narrator'; use system, user, assistant or tool"):
        sft_messages({"messages": [by_role["messages"][0], {"role": "narrator", "content": "x"}]}, "messages")
    with_tool = {"messages": by_role["messages"] + [{"role": "tool", "content": "= 3"},
                                                    {"from": "gpt", "content": "c"}]}  # multi-turn tool use
    assert [m["role"] for m in sft_messages(with_tool, "messages")["messages"]] == ["user", "assistant", "tool",
                                                                                   "assistant"]
    with pytest.raises(ValueError, match=r"messages\[0\] needs 'role'"):
        sft_messages({"messages": [{"content": "x"}]}, "messages")
    assert prompt_only(with_system, "messages") == {"prompt": "a", "messages": with_system["messages"][:2]}


def test_a_template_refusing_a_row_names_the_row_and_one_rewriting_history_trains_every_turn(tokenizer, tmp_path):
    late_system = write_jsonl(tmp_path / "s.jsonl", [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                      {"role": "assistant", "content": "b"}]}])
    with pytest.raises(DataError, match=r"s.jsonl row 2: .*system turn only at the start"):
        build_sft_dataset(late_system, tokenizer, 64)
    rewrites = tmp_path / "rewrites.jinja"  # the last turn is rendered differently from the same turn later on
    rewrites.write_text("{% for m in messages %}{% if m['role'] == 'user' %}U: {{ m['content'] }}\n{% elif loop.last %}"
                        "A: (final) {{ m['content'] }}{{ eos_token }}\n{% else %}A: {{ m['content'] }}{{ eos_token }}\n"
                        "{% endif %}{% endfor %}{% if add_generation_prompt %}A:{% endif %}")
    tok = load_tokenizer(tokenizer.name_or_path)
    use_chat_template(tok, str(rewrites))
    two = write_jsonl(tmp_path / "two.jsonl", [{"messages": TWO_TURNS[1:]}])
    chat = ChatFormat.of(tok)
    items, report = build_sft_dataset(two, tok, 64)  # per_turn: each turn with its history as rendered then
    assert report.rows == 2
    assert [chat.trained_spans(it["input_ids"], it["labels"]) for it in items] == [[" (final) 1 2 3</s>"],
                                                                                   [" (final) 7 9</s>"]]
    assert chat.decode(items[1]["input_ids"]).startswith("U: sort: 3 1 2\nA: 1 2 3</s>\nU: sort: 9 7\nA:")
    items, _ = build_sft_dataset(two, tok, 64, rewritten_history="last_turn")
    assert [chat.trained_spans(it["input_ids"], it["labels"]) for it in items] == [[" (final) 7 9</s>"]]


def test_a_template_without_an_end_of_turn_token_trains_eos_after_the_reply(tokenizer, tmp_path):
    plain = tmp_path / "plain.jinja"
    plain.write_text("{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }}\n"
                     "{% else %}A: {{ m['content'] }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}A: "
                     "{% endif %}")
    tok = load_tokenizer(tokenizer.name_or_path)
    use_chat_template(tok, str(plain))
    chat = ChatFormat.of(tok)
    assert chat.end_of_turn is None and chat.stop_token_ids == [tok.eos_token_id]
    ids, labels = chat.tokenize(TWO_TURNS[1:])
    assert chat.trained_spans(ids, labels) == [" 1 2 3</s>", " 7 9</s>"]  # the reply's space is its own


def test_generation_stops_at_and_strips_the_templates_end_of_turn(tiny_chatml):
    from coati_ray.evaluation.policy import decode_responses
    from coati_ray.models import Actor
    from coati_ray.models.actor import response_mask

    tok = load_tokenizer(tiny_chatml)
    actor = Actor.from_pretrained(tiny_chatml)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    stops = actor.eos_token_ids(tok)
    assert end in stops
    a, b = tok("1 2", add_special_tokens=False)["input_ids"][:2]
    actions = torch.tensor([[a, end, b, b], [a, b, b, b]])
    mask = response_mask(actions, stops)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert decode_responses(tok, actions, mask)[0] == tok.decode([a]).strip()


def test_preference_rows_become_conversations_ending_at_the_replys_end_of_turn(tiny_chatml, tmp_path):
    tok = load_tokenizer(tiny_chatml)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    hh = {"chosen": "\n\nHuman: sort: 2 1\n\nAssistant: 1 2\n\nHuman: again: 4 3\n\nAssistant: 3 4",
          "rejected": "\n\nHuman: sort: 2 1\n\nAssistant: 1 2\n\nHuman: again: 4 3\n\nAssistant: 4 3"}
    pair = preference_pair(hh, "hh_rlhf")
    assert pair["prompt"] == [{"role": "user", "content": "sort: 2 1"}, {"role": "assistant", "content": "1 2"},
                              {"role": "user", "content": "again: 4 3"}]
    assert (pair["chosen"], pair["rejected"]) == ("3 4", "4 3")
    conversational = {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "sort: 2 1"}],
                      "chosen": [{"role": "assistant", "content": "1 2"}],
                      "rejected": [{"role": "assistant", "content": "2 1"}]}
    items, _ = build_preference_dataset(write_jsonl(tmp_path / "p.jsonl", [conversational, conversational]), tok, 128)
    chat = ChatFormat.of(tok)
    assert items[0]["chosen_ids"][-1] == end and items[0]["rejected_ids"][-1] == end  # the reward is read there
    assert chat.decode(items[0]["chosen_ids"]).endswith("<|im_start|>assistant\n1 2<|im_end|>")
    assert SYSTEM in chat.decode(items[0]["chosen_ids"])


def test_prompts_from_csv_and_role_messages_keep_system_turns(tiny_chatml, tmp_path):
    """The seeds' prompts.csv (awesome-chatgpt-prompts' act,prompt columns) and role rows with a system turn."""
    tok = load_tokenizer(tiny_chatml)
    csv = tmp_path / "prompts.csv"
    csv.write_text('act,prompt\nSorter,"sort: 3 1, 2"\nSorter,sort: 9 8\n')
    items, report = build_prompt_dataset(str(csv), tok, 64)
    assert [it["prompt"] for it in items] == ["sort: 3 1, 2", "sort: 9 8"] and report.rows == 2
    rows = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "sort: 5 4"}]}]
    items, _ = build_prompt_dataset(write_jsonl(tmp_path / "m.jsonl", rows), tok, 64)
    text = ChatFormat.of(tok).decode(items[0]["input_ids"])
    assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>") and text.endswith("<|im_start|>assistant\n")
    assert items[0]["prompt"] == "sort: 5 4"


def test_inspect_data_shows_what_each_stage_trains_on(tiny_chatml, chat_data, tmp_path, capsys):
    """--inspect-data on the ChatML model with a system turn: the trained spans are each assistant content
    followed by <|im_end|>, nothing else; RM shows both conversations, PPO the rendered prompt."""
    from launch import ppo, rm, sft
    from tests.conftest import REPO

    with open(chat_data["sft_train"]) as f:
        first = [json.loads(line) for line in f][:3]
    assert sft.main(["--config", os.path.join(REPO, "configs", "sft_tiny.yaml"), f"model.path={tiny_chatml}",
                     f"data.train_path={chat_data['sft_train']}", "data.eval_path=null", "data.max_length=128",
                     "--inspect-data", "3", "--output-dir", str(tmp_path / "never")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 3
    for shown, row in zip(lines, first):
        assert shown["trained"] == [row["messages"][-1]["content"] + "<|im_end|>"]
        assert shown["text"].startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n")
    assert not (tmp_path / "never").exists()  # nothing trained, nothing written

    assert rm.main(["--config", os.path.join(REPO, "configs", "rm_tiny.yaml"), f"model.path={tiny_chatml}",
                    f"data.train_path={chat_data['pref_train']}", "data.eval_path=null", "--inspect-data", "2",
                    "--output-dir", str(tmp_path / "never")]) == 0
    pairs = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(pairs) == 2 and all(p["chosen"].endswith("<|im_end|>") and SYSTEM in p["rejected"] for p in pairs)

    assert ppo.main(["--config", os.path.join(REPO, "configs", "grpo_tiny.yaml"), f"actor.path={tiny_chatml}",
                     f"data.prompt_path={chat_data['prompts_train']}", "--inspect-data", "2",
                     "--output-dir", str(tmp_path / "never")]) == 0
    prompts = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(prompts) == 2 and all(p["text"].endswith("<|im_start|>assistant\n") for p in prompts)


def test_dialogue_text_prompts_multi_turn_prompts_and_prompt_completion_rows():
    """rm-static's hh-style prompt text becomes turns (the template renders them, not the literal markers);
    a conversation used as a prompt keeps its history less a trailing reply; TRL's prompt/completion rows."""
    rm_static = {"prompt": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: sort: 2 1\n\nAssistant:", "response": "1 2",
                 "chosen": "1 2", "rejected": "2 1"}
    assert preference_pair(rm_static, "rm_static")["prompt"] == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "sort: 2 1"}]
    history = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                            {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
                            {"role": "assistant", "content": "d"}]}
    assert prompt_only(history, "messages") == {"prompt": "c", "messages": history["messages"][:4]}
    assert sft_messages({"prompt": "q", "completion": "a"}, "prompt_completion")["messages"] == [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    conversational = {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]}
    assert sft_messages(conversational, "prompt_completion") == sft_messages({"prompt": "q", "completion": "a"},
                                                                             "prompt_completion")


def test_flash_attention_is_refused_where_it_cannot_run():
    from coati_ray.config.checks import check_flash_attn_precision
    from coati_ray.config.schema import ModelConfig, StrategyConfig

    with pytest.raises(ConfigError, match="model.use_flash_attn: FlashAttention-2 computes in bf16"):
        check_flash_attn_precision(ModelConfig(path="m", use_flash_attn=True), StrategyConfig(name="ddp"), "model")
    check_flash_attn_precision(ModelConfig(path="m", use_flash_attn=True, dtype="bfloat16"),
                               StrategyConfig(name="ddp"), "model")


def test_template_variables_and_a_default_system_turn_travel_with_the_checkpoint(tmp_path):
    """data.chat_template_kwargs (Qwen3's enable_thinking) and data.system_prompt are rendered in every stage and
    saved in the tokenizer, so the next stage (and launch.generate) renders as this one did; a conversation's own
    system turn is kept; an empty value clears them."""
    from coati_ray.models.tiny_chat import family_tokenizer

    tok = family_tokenizer("qwen3")
    use_chat_template(tok, "auto", {"enable_thinking": False}, "Be brief.")
    chat = ChatFormat.of(tok)
    ids, labels = chat.tokenize(TWO_TURNS[1:3])
    assert chat.decode(ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert chat.trained_spans(ids, labels) == ["1 2 3<|im_end|>"]  # no thinking: the prompt holds the empty block
    assert chat.decode(chat.prompt_ids(TWO_TURNS[1:2])).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert "Sort numbers." in chat.decode(chat.tokenize(TWO_TURNS[:3])[0])  # its own system turn wins
    assert "Be brief." not in chat.decode(chat.tokenize(TWO_TURNS[:3])[0])
    tok.save_pretrained(tmp_path / "ckpt")
    again = load_tokenizer(str(tmp_path / "ckpt"))
    use_chat_template(again, "auto")  # the next stage, its data section silent on both
    assert ChatFormat.of(again).prompt_ids(TWO_TURNS[1:2]) == chat.prompt_ids(TWO_TURNS[1:2])
    use_chat_template(again, "auto", {}, "")
    assert "Be brief." not in ChatFormat.of(again).decode(ChatFormat.of(again).prompt_ids(TWO_TURNS[1:2]))
