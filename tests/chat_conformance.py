"""The chat-template conformance suite: every family of data/chat_templates (the models' own templates,
verbatim), each with a tokenizer of its kind built here, through every stage's formatting.

What each stage trains is checked against an independent computation, never against ChatFormat itself: the
template is rendered with `tokenizer.apply_chat_template`, each assistant turn's trained text (written below by
hand from reading the template: `Expect.reply`) is located in the rendered text, and a token trains when the
tokenizer's offset mapping puts it over one of those character spans. The ids must be the tokenization of the
whole rendered text.

`results()` runs every check and gives the table docs/guides/chat-templates.md shows (a test keeps the two equal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from coati_ray.algo.losses import IGNORE_INDEX

SYSTEM = {"role": "system", "content": "You sort numbers."}
TURNS = [{"role": "user", "content": "sort: 3 1 2"}, {"role": "assistant", "content": "1 2 3"},
         {"role": "user", "content": "sort: 9 7 8"}, {"role": "assistant", "content": "7 8 9"}]
TOOL_CALL, OBSERVATION, ANSWER = "<calc> 12 + 30</calc>", "= 42", "The sum is 42"


@dataclass(frozen=True)
class Expect:
    """What reading the template says.

    reply:    an assistant turn's trained text, from its content, as the model writes it after the generation
              prompt (header excluded, end-of-turn included)
    eot:      the end-of-turn token, which must be a stop id
    rewrites: the template renders an earlier turn differently once later turns follow (each turn trains as
              its own sample, its history as the template renders it then)
    system:   'rendered', 'refused' (the template raises), 'dropped' (not rendered when an assistant turn is last)
    tools:    None when tool episodes work, else why not (the one line the run gives is checked to say so)
    eos_appended: the template has no end-of-turn token: EOS is inserted after each reply
    prompt_departs: the generation prompt holds text no rendered turn holds (R1-distill's "<think>\\n")
    kwargs:   template variables (Qwen3's enable_thinking)
    """

    reply: Callable[[str], str]
    eot: str
    rewrites: bool = False
    system: str = "rendered"
    tools: Optional[str] = None
    eos_appended: bool = False
    prompt_departs: bool = False
    kwargs: dict = field(default_factory=dict)
    note: str = ""


def _plain(eot: str, lead: str = "", tail: str = "") -> Callable[[str], str]:
    return lambda content: lead + content + tail + eot


NO_TOOL_ROLE = "the template has no tool role"
FAMILIES: dict[str, Expect] = {
    "qwen3": Expect(lambda c: "<think>\n\n</think>\n\n" + c + "<|im_end|>", "<|im_end|>", rewrites=True,
                    note="thinking on (default): each turn trains with its empty `<think></think>` block; the "
                         "template drops earlier turns' blocks, so each turn is its own sample"),
    "qwen3 (enable_thinking=false)": Expect(_plain("<|im_end|>"), "<|im_end|>", rewrites=True,
                                            kwargs={"enable_thinking": False},
                                            note="the generation prompt holds the empty `<think></think>` block"),
    "qwen2.5": Expect(_plain("<|im_end|>"), "<|im_end|>"),
    "deepseek-r1-distill": Expect(_plain("<｜end▁of▁sentence｜>"), "<｜end▁of▁sentence｜>", prompt_departs=True,
                                  note="the generation prompt ends in `<think>\\n`, which rendered turns never "
                                       "hold: SFT trains the turn as the template renders it"),
    "llama3.1": Expect(_plain("<|eot_id|>"), "<|eot_id|>"),
    "llama3.2": Expect(_plain("<|eot_id|>"), "<|eot_id|>"),
    "smollm3": Expect(_plain("<|im_end|>"), "<|im_end|>"),
    "mistral-nemo": Expect(_plain("</s>"), "</s>", system="dropped",
                           tools="a tool turn needs a tool_call_id of 9 characters",
                           note="the system turn is rendered only before a final user turn"),
    "mistral-v0.3": Expect(_plain("</s>", " ", " "), "</s>", system="dropped",
                           tools="a tool turn needs a tool_call_id", note="this revision drops system turns"),
    "phi3": Expect(_plain("<|end|>"), "<|end|>", tools=NO_TOOL_ROLE),
    "phi4": Expect(_plain("<|im_end|>"), "<|im_end|>", tools=NO_TOOL_ROLE),
    "phi4-mini": Expect(_plain("<|end|>"), "<|end|>"),
    "gemma2": Expect(_plain("<end_of_turn>"), "<end_of_turn>", system="refused", tools=NO_TOOL_ROLE),
    "gemma3": Expect(_plain("<end_of_turn>"), "<end_of_turn>", tools=NO_TOOL_ROLE,
                     note="the system turn is folded into the first user turn"),
    "olmo2": Expect(_plain("<|endoftext|>"), "<|endoftext|>", tools=NO_TOOL_ROLE),
    "glm4": Expect(_plain("", "\n"), "<|endoftext|>", eos_appended=True,
                   tools="tool results are GLM's 'observation' role",
                   note="no end-of-turn token (the next turn's header ends one): EOS is trained after each reply"),
    "gpt-oss": Expect(lambda c: "<|channel|>final<|message|>" + c + "<|return|>", "<|return|>", rewrites=True,
                      tools="a tool turn answers a named function call (tool_calls)",
                      note="the last turn ends in `<|return|>`, earlier ones in `<|end|>`: each turn is its own sample"),
    "llama2": Expect(_plain("</s>", " ", " "), "</s>", tools=NO_TOOL_ROLE),
    "llama3-original": Expect(_plain("<|eot_id|>"), "<|eot_id|>",
                              note="no `add_generation_prompt` block: the assistant header follows every "
                                   "conversation, an assistant turn's too"),
    "merlinite": Expect(_plain("<|endoftext|>"), "<|endoftext|>", tools=NO_TOOL_ROLE,
                        note="no `add_generation_prompt` block: generation continues after the `<|assistant|>` "
                             "header its turns start with (a special token, never taken for the end of turn)"),
}


def family_of(name: str) -> str:
    return name.split(" ")[0]


# ---------------------------------------------------------------------------------------------- expectations

def _render(tok, messages, exp: Expect, generation: bool = False) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation, **exp.kwargs)


def expected_sample(tok, messages: list[dict], trained_turns: list[int], exp: Expect) -> tuple[list, list]:
    """(ids, labels) computed independently: `messages` rendered by the tokenizer, the hand-written trained text
    of each assistant turn in `trained_turns` located in it (in order), the text cut after the last one (EOS
    inserted after each where the template has no end of turn), tokenized whole, a token labelled when its
    offsets overlap a located span."""
    text = _render(tok, messages, exp)
    spans, pos = [], 0
    for i in trained_turns:
        want = exp.reply(messages[i]["content"])
        at = text.find(want, pos)
        assert at >= 0, f"{want!r} not in the rendered text {text!r}"
        spans.append((at, at + len(want)))
        pos = at + len(want)
    text = text[:pos]
    if exp.eos_appended:
        pieces, shifted, prev, shift = [], [], 0, 0
        for a, b in spans:
            pieces += [text[prev:b], tok.eos_token]
            shifted.append((a + shift, b + shift + len(tok.eos_token)))
            shift += len(tok.eos_token)
            prev = b
        text, spans = "".join(pieces), shifted
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [t if any(a < e and b > s for s, e in spans) else IGNORE_INDEX
              for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])]
    return list(enc["input_ids"]), labels


def _assistant_turns(messages: list[dict]) -> list[int]:
    return [i for i, m in enumerate(messages) if m["role"] == "assistant"]


def expected_sft(tok, messages: list[dict], exp: Expect) -> list[tuple[list, list]]:
    turns = _assistant_turns(messages)
    if exp.rewrites:
        return [expected_sample(tok, messages[:i + 1], [i], exp) for i in turns]
    return [expected_sample(tok, messages, turns, exp)]


# ---------------------------------------------------------------------------------------------- the checks

@dataclass
class Cell:
    ok: bool
    why: str = ""

    def show(self) -> str:
        return "✓" + (f" ({self.why})" if self.why else "") if self.ok else f"✗ {self.why}"


def _chat(tok, exp: Expect):
    from coati_ray.data.template import ChatFormat, use_chat_template

    use_chat_template(tok, "auto", exp.kwargs)
    return ChatFormat.of(tok)


def _system(exp: Expect) -> list[dict]:
    return [] if exp.system == "refused" else [SYSTEM]


def check_sft(tok, exp: Expect, turns: int) -> Cell:
    chat = _chat(tok, exp)
    messages = _system(exp) + TURNS[:2 * turns]
    got = chat.samples(messages)
    want = expected_sft(tok, messages, exp)
    assert got == want, (f"samples differ: got {[chat.trained_spans(*g) for g in got]}, "
                         f"want {[chat.trained_spans(*w) for w in want]}")
    for ids, labels in got:
        assert ids[-1] == tok.convert_tokens_to_ids(exp.eot if not exp.eos_appended else tok.eos_token)
        assert labels[-1] == ids[-1]  # nothing the template adds after the end of turn
    return Cell(True, _system_note(exp))


def _system_note(exp: Expect) -> str:
    return {"refused": "no system turn: the template refuses one, and a row with one is refused in one line",
            "dropped": "the template drops the system turn here"}.get(exp.system, "")


def check_system_refusal(tok, exp: Expect) -> None:
    """A template that refuses system turns: a row with one is refused in one line naming the row."""
    import pytest

    from coati_ray.data.datasets import sft_items

    chat = _chat(tok, exp)
    with pytest.raises(ValueError, match="cannot render this conversation"):
        sft_items({"messages": [SYSTEM] + TURNS[:2]}, tok, 256)
    assert chat.samples(TURNS[:2])


def check_rm(tok, exp: Expect) -> Cell:
    from coati_ray.data.datasets import preference_item

    _chat(tok, exp)
    prompt = _system(exp) + TURNS[:1]
    item = preference_item({"prompt": prompt, "chosen": "1 2 3", "rejected": "3 2 1"}, tok, 4096)
    for side, reply in (("chosen", "1 2 3"), ("rejected", "3 2 1")):
        messages = prompt + [{"role": "assistant", "content": reply}]
        ids, _ = expected_sample(tok, messages, [len(messages) - 1], exp)
        assert item[f"{side}_ids"] == ids, side
    return Cell(True)


def check_prompts(tok, exp: Expect) -> Cell:
    """PPO prompts: the template's generation prompt, spaces it ends with left to the reply; generation then
    continues exactly where SFT's context ends (but where the template's prompt departs from its turns)."""
    from coati_ray.data.datasets import prompt_item

    chat = _chat(tok, exp)
    for prompt in (_system(exp) + TURNS[:1], _system(exp) + TURNS[:3]):
        item = prompt_item({"prompt": prompt[-1]["content"], "messages": prompt}, tok, 4096)
        text = _render(tok, prompt, exp, generation=True)
        if text == _render(tok, prompt, exp):  # no generation-prompt block: the header a turn starts with
            text += chat.probe.header
        assert item["input_ids"] == tok(text.rstrip(" "), add_special_tokens=False)["input_ids"]
    if exp.prompt_departs:
        return Cell(True, "the generation prompt departs from the rendered turns (see notes)")
    messages = [m for m in _system(exp) + TURNS[:2] if exp.system == "rendered" or m["role"] != "system"]
    ids, labels = expected_sft(tok, messages, exp)[-1]
    context = ids[:next(k for k, label in enumerate(labels) if label != IGNORE_INDEX)]
    prompt_ids = prompt_item({"prompt": "", "messages": messages[:-1]}, tok, 4096)["input_ids"]
    assert prompt_ids == context, "generation does not continue where SFT's context ends"
    return Cell(True)


def check_stops(tok, exp: Expect) -> Cell:
    chat = _chat(tok, exp)
    eot = tok.convert_tokens_to_ids(exp.eot)
    assert chat.stop_token_ids[0] == eot and eot != tok.unk_token_id
    return Cell(True, tok.convert_ids_to_tokens(chat.stop_token_ids[0]))


def check_tools(tok, exp: Expect) -> Cell:
    """Tool episodes: the text between a policy turn and the next is the template's own, rendered around the
    environment's answer (the assistant turn's end of turn, the tool turn, the next generation prompt)."""
    from coati_ray.experience.episodes import ToolTurnFormat

    _chat(tok, exp)
    try:
        fmt = ToolTurnFormat.of(tok)
    except ValueError as e:
        assert exp.tools is not None, f"tool turns refused: {e}"
        assert "tool" in str(e)  # the one line says it is the tool turn
        return Cell(False, exp.tools)
    if exp.tools is not None:  # the template renders a `tool` turn, but not as the model's tool role
        return Cell(False, exp.tools)
    messages = [TURNS[0], {"role": "assistant", "content": TOOL_CALL}, {"role": "tool", "content": OBSERVATION}]
    text = _render(tok, messages, exp, generation=True)
    if text == _render(tok, messages, exp):
        text += fmt.chat.probe.header
    closed = text.index(exp.eot, text.index(TOOL_CALL)) + len(exp.eot)
    assert fmt.context(OBSERVATION, True) == text[closed:].rstrip(" ")
    assert OBSERVATION in fmt.context(OBSERVATION, True)
    return Cell(True)


COLUMNS = ("SFT 1 turn", "SFT 2 turns", "RM pairs", "PPO prompts", "tool episodes", "stop id")


def results(names=None) -> dict[str, dict[str, Cell]]:
    """Every check for every family (a check that fails raises: the suite stops there)."""
    from coati_ray.models.tiny_chat import family_tokenizer

    out = {}
    for name in names or FAMILIES:
        exp, tok = FAMILIES[name], family_tokenizer(family_of(name))
        if exp.system == "refused":
            check_system_refusal(tok, exp)
        out[name] = dict(zip(COLUMNS, (check_sft(tok, exp, 1), check_sft(tok, exp, 2), check_rm(tok, exp),
                                       check_prompts(tok, exp), check_tools(tok, exp), check_stops(tok, exp))))
    return out


def table(res: dict) -> str:
    """The markdown table of docs/guides/chat-templates.md."""
    from coati_ray.models.tiny_chat import TEMPLATE_FAMILIES, template_sources

    lines = ["| family | template source | tokenizer | " + " | ".join(COLUMNS) + " | notes |",
             "|" + "---|" * (len(COLUMNS) + 4)]
    for name, cells in res.items():
        family = family_of(name)
        src = template_sources()[family]
        source = f"{src['model']} (copied from {src['source']} `{src['path']}` @ {src['commit'][:10]})"
        row = [name, source, TEMPLATE_FAMILIES[family][0], *(cells[c].show() for c in COLUMNS), FAMILIES[name].note]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m tests.chat_conformance: the table docs/guides/chat-templates.md shows
    print(table(results()), end="")
