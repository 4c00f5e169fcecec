"""How a conversation becomes tokens: the model's own chat template, in every stage.

A template is Jinja, rendered exactly as `tokenizer.apply_chat_template` renders it (with the stage's
`data.chat_template_kwargs`, e.g. Qwen3's `enable_thinking`). `data.chat_template` picks it: `auto` (the
tokenizer's own when it has one, else Coati's), `coati` (Coati's 2023 layout, "Human: ... \\nAssistant: ...",
written below as a template), or a `.jinja` file. The tokenizer then carries the template (and its kwargs) into
every checkpoint it is saved with, so the next stage (and `launch.generate`) renders the same way.

Which characters train is found by rendering, never from `{% generation %}` tags (few templates have them):
assistant turn i starts where the rendered conversation leaves the generation prompt that precedes it (the
template's own, or, for a template without an `add_generation_prompt` block, the assistant header its turns
render), and ends with the template's end-of-turn token (found by a probe: the first special token after an
assistant message's content). Spaces that end a generation prompt belong to the reply, whose first token
carries them (SentencePiece's `▁answer`, byte-level BPE's ` 1`), so prompts for generation end before them.

The whole rendered text is tokenized once and a token trains when its characters (the tokenizer's offset
mapping) overlap a trained span: the ids are exactly the tokenization of the text generation continues.

A template that rewrites earlier turns (Qwen3 and DeepSeek-R1-distill drop earlier turns' reasoning; a
template that renders the last turn differently) cannot train all turns in one sequence: each assistant turn
then becomes its own sample, with the history as the template renders it at that point (`per_turn`, the
default of `data.rewritten_history`), or only the final turn trains (`last_turn`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from coati_ray.algo.losses import IGNORE_INDEX

ROLES = ("system", "user", "assistant", "tool")
# Coati's and Colossal-LLaMA's `from` names, and the HF / OpenAI `role` names, onto one vocabulary
ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
                "system": "system", "tool": "tool", "observation": "tool", "function": "tool", "ipython": "tool"}
# message fields beside role and content that templates read (tool calls, reasoning, a tool's name)
EXTRA_FIELDS = ("tool_calls", "reasoning_content", "name", "tool_call_id")

# Coati's layout as a template: BOS, an optional system text, "Human: <u>", then "\nAssistant: <a></s>", and
# "\n" before every later human turn; a tool's answer (multi-turn rollouts) is "\nTool: <t>".
COATI_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if not loop.first %}{{ raise_exception(\"Coati's layout has a system turn only at the start\") }}{% endif %}"
    "{{ message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{% if not loop.first and messages[loop.index0 - 1]['role'] != 'system' %}{{ '\\n' }}{% endif %}"
    "{{ 'Human: ' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '\\nAssistant: ' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'tool' %}"
    "{{ '\\nTool: ' + message['content'] }}"
    "{% else %}{{ raise_exception(\"Coati's layout has no '\" + message['role'] + \"' role\") }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\nAssistant: ' }}{% endif %}"
)

TEMPLATE_CHOICES = ("auto", "coati")
REWRITTEN_HISTORY = ("per_turn", "last_turn")
KWARGS_KEY = "coati_chat_template_kwargs"  # where a saved tokenizer_config.json keeps data.chat_template_kwargs
SYSTEM_KEY = "coati_system_prompt"  # ... and data.system_prompt

_REPLY = "\u2063REPLY\u2063"  # an assistant content no template rewrites, to find what a template puts around it


def read_template(spec: str) -> Optional[str]:
    """The template text a `data.chat_template` value names: None for `auto` (decided per tokenizer),
    Coati's for `coati`, else the contents of the .jinja file. Raises ValueError with the reason."""
    if spec == "auto":
        return None
    if spec == "coati":
        return COATI_TEMPLATE
    if not os.path.isfile(spec):
        raise ValueError(f"'{spec}' is neither auto, coati nor an existing .jinja file")
    with open(spec, encoding="utf-8") as f:
        text = f.read()
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        _compile_jinja_template(text)
    except Exception as e:  # jinja2.TemplateSyntaxError and friends
        raise ValueError(f"'{spec}' is not a valid Jinja template ({str(e).splitlines()[0]})") from None
    return text


def tokenizer_template(tokenizer) -> Optional[str]:
    """The tokenizer's own template as text (a tokenizer with several named ones: its default)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template or None


def template_kwargs(tokenizer) -> dict:
    """The extra template variables the tokenizer carries (data.chat_template_kwargs, kept in checkpoints)."""
    return dict(getattr(tokenizer, "init_kwargs", {}).get(KWARGS_KEY) or {})


def system_prompt(tokenizer) -> str:
    """The system turn the tokenizer carries for conversations without one (data.system_prompt), or ""."""
    return getattr(tokenizer, "init_kwargs", {}).get(SYSTEM_KEY) or ""


def use_chat_template(tokenizer, spec: str, kwargs: Optional[dict] = None, system: Optional[str] = None) -> None:
    """Make `tokenizer` carry the template a stage renders with, the variables it is rendered with (`kwargs`)
    and a system turn for conversations without one (`system`); None keeps what the tokenizer carries, an empty
    value clears it. All are saved with it into every checkpoint, so the next stage renders the same way."""
    text = read_template(spec)
    tokenizer.chat_template = text or tokenizer_template(tokenizer) or COATI_TEMPLATE
    for key, value in ((KWARGS_KEY, dict(kwargs) if kwargs is not None else None), (SYSTEM_KEY, system)):
        if value:
            tokenizer.init_kwargs[key] = value
        elif value is not None:
            tokenizer.init_kwargs.pop(key, None)


def normalize_messages(messages, field: str = "messages") -> list[dict]:
    """Rows' `messages` ({role|from, content}) -> [{"role": system|user|assistant|tool, "content": str, ...}]
    keeping the fields templates read (tool_calls, reasoning_content, name, tool_call_id).

    Raises ValueError naming the message at fault."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"missing field '{field}' (a non-empty list of {{role, content}})")
    out = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or "content" not in m or not ("role" in m or "from" in m):
            raise ValueError(f"{field}[{j}] needs 'role' (or Coati's 'from') and 'content'")
        name = "role" if "role" in m else "from"
        role = ROLE_ALIASES.get(str(m[name]).lower())
        if role is None:
            raise ValueError(f"{field}[{j}].{name} is '{m[name]}'; use system, user, assistant or tool "
                             "(or Coati's human / assistant)")
        content = m["content"]
        if content is None and role == "assistant" and m.get("tool_calls"):
            content = ""  # OpenAI's layout: a turn that only calls tools
        if not isinstance(content, str):
            raise ValueError(f"{field}[{j}].content must be a string")
        message = {"role": role, "content": content}
        for extra in EXTRA_FIELDS:
            if m.get(extra) is not None:
                message[extra] = m[extra]
        out.append(message)
    return out


@dataclass(frozen=True)
class Conversation:
    """A rendered conversation and the characters of it that train: `text[start:end]` for each span."""

    text: str
    spans: tuple


@dataclass(frozen=True)
class TemplateProbe:
    """What rendering [user, assistant] once tells about a template.

    end_of_turn:  the first special token after the assistant's content (None: the template has none)
    header:       for a template without an `add_generation_prompt` block, the text its assistant turns start
                  with (generation continues after it); "" otherwise
    problem:      why the template cannot mark assistant turns, or None
    reply_lead:   the spaces the generation prompt ends with, which a reply's first token carries (Coati's
                  "Assistant: " -> " "): a reply's text as the model writes it starts with them
    lead_in:      what an assistant turn holds before its content after the generation prompt (those spaces,
                  Qwen3's empty <think></think> block, gpt-oss's channel): the model writes it, so it trains
    """

    end_of_turn: Optional[str]
    header: str
    problem: Optional[str]
    reply_lead: str = ""
    lead_in: str = ""


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ChatFormat:
    """Renders and tokenizes conversations with one template; `of(tokenizer)` is the tokenizer's."""

    def __init__(self, tokenizer, template: str, kwargs: Optional[dict] = None, system: str = ""):
        self.tokenizer, self.template, self.kwargs, self.system = tokenizer, template, dict(kwargs or {}), system
        self._special = sorted({t for t in tokenizer.all_special_tokens if t}
                               | {t.content for t in tokenizer.added_tokens_decoder.values() if t.special},
                               key=len, reverse=True)
        self.probe = self._probe()
        self.end_of_turn = self.probe.end_of_turn

    @classmethod
    def of(cls, tokenizer) -> "ChatFormat":
        """The format of the template `tokenizer` carries (Coati's when it has none), built once per template."""
        template = tokenizer_template(tokenizer) or COATI_TEMPLATE
        kwargs, system = template_kwargs(tokenizer), system_prompt(tokenizer)
        cached = getattr(tokenizer, "_coati_chat_format", None)
        if cached is None or cached.template != template or cached.kwargs != kwargs or cached.system != system:
            cached = cls(tokenizer, template, kwargs, system)
            tokenizer._coati_chat_format = cached
        return cached

    # ------------------------------------------------------------------ text

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The template's text, exactly as `apply_chat_template` writes it (with data.system_prompt as the
        system turn of a conversation that has none)."""
        if self.system and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.system}] + list(messages)
        try:
            return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt, **self.kwargs)
        except Exception as e:  # the template's raise_exception, or a role it does not know
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"the chat template cannot render this conversation ({first})") from None

    def generation_prompt(self, messages: list[dict]) -> str:
        """The text a reply to `messages` follows: the conversation and the template's generation prompt (a
        template without one: the header its assistant turns start with), less the spaces it ends with,
        which the reply's first token carries."""
        return (self.render(messages, add_generation_prompt=True) + self.probe.header).rstrip(" ")

    def _first_special(self, text: str) -> Optional[tuple[int, str]]:
        """(offset, token) of the first special token in `text`."""
        best = None
        for token in self._special:
            at = text.find(token)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, token)
        return best

    def _probe(self) -> TemplateProbe:
        user = [{"role": "user", "content": "1"}]
        try:
            history, prompt = self.render(user), self.render(user, add_generation_prompt=True)
            text = self.render(user + [{"role": "assistant", "content": _REPLY}])
        except ValueError as e:
            return TemplateProbe(None, "", str(e))
        at = text.find(_REPLY)
        if at < 0:
            return TemplateProbe(None, "", "the chat template does not render an assistant message's content")
        header = "" if prompt != history else text[_common_prefix(history, text):at]
        found = self._first_special(text[at + len(_REPLY):])
        lead = prompt + header
        lead_in = text[min(at, _common_prefix(lead.rstrip(" "), text)):at]
        return TemplateProbe(found[1] if found else None, header, None, lead[len(lead.rstrip(" ")):], lead_in)

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end a reply: the template's end-of-turn token and the tokenizer's EOS."""
        ids = []
        if self.end_of_turn is not None:
            ids.append(self.tokenizer.convert_tokens_to_ids(self.end_of_turn))
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def _turn_start(self, messages: list[dict], i: int, text: str) -> int:
        """Where assistant turn i's written part starts in `text` (the conversation through it): before its
        content by the template's lead-in, found by rendering the same conversation with a marker for the
        content (a template may render history differently when a user turn is last, as Mistral-Nemo places
        the system turn); where the turn's own content changes the text before it (reasoning the template
        renders apart from the generation prompt), where the text departs from the generation prompt."""
        marked = self.render(messages[:i] + [{**messages[i], "content": _REPLY}])
        at = marked.find(_REPLY) - len(self.probe.lead_in)
        if at >= 0 and marked[at:].startswith(self.probe.lead_in + _REPLY) and text[:at] == marked[:at]:
            return at
        return _common_prefix(self.generation_prompt(messages[:i]), text)

    def _turn(self, messages: list[dict], i: int) -> tuple[str, int, int]:
        """(text, start, end): the conversation through assistant turn i, rendered with that turn last, and
        the turn's trained characters text[start:end] (up to and including its end-of-turn token)."""
        text = self.render(messages[:i + 1])
        start = self._turn_start(messages, i, text)
        if self.end_of_turn is None:
            return text, start, max(start, len(text.rstrip()))
        at = text.find(self.end_of_turn, start)
        if at < 0:
            raise ValueError(f"the chat template renders messages[{i}] without its end-of-turn token "
                             f"{self.end_of_turn!r}, so where the reply ends cannot be told")
        return text, start, at + len(self.end_of_turn)

    def conversations(self, messages: list[dict], rewritten_history: str = "per_turn") -> list[Conversation]:
        """The samples a conversation trains as: one, whose spans are every assistant turn, when the template
        renders the conversation turn by turn; else (the template rewrites earlier turns) one per assistant
        turn (`per_turn`) or the final turn alone (`last_turn`). Raises ValueError naming the problem."""
        if self.probe.problem:
            raise ValueError(f"{self.probe.problem}, so its trained tokens cannot be found; give data.chat_template "
                             "a template that renders each message's content")
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not turns:
            raise ValueError("no assistant message, so nothing to learn from")
        rendered = [self._turn(messages, i) for i in turns]
        full = rendered[-1][0]
        spans, previous_end = [], 0
        for text, start, end in rendered:
            if not full.startswith(text[:end]) or start < previous_end:
                break
            spans.append((start, end))
            previous_end = end
        else:
            return [Conversation(full[:previous_end], tuple(spans))]
        if rewritten_history == "last_turn":
            rendered = rendered[-1:]
        return [Conversation(text[:end], ((start, end),)) for text, start, end in rendered]

    # ------------------------------------------------------------------ tokens

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """A prompt ready for generation: the conversation, then the generation prompt."""
        return self.ids(self.generation_prompt(messages))

    def encode(self, conversation: Conversation) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of a rendered conversation: the ids are its text's tokenization, and a token is
        labelled (trained) when its characters overlap a trained span; IGNORE_INDEX elsewhere. A template
        without an end-of-turn token gets the tokenizer's EOS after each span, so the model learns to stop."""
        text, spans = conversation.text, list(conversation.spans)
        if self.end_of_turn is None and self.tokenizer.eos_token:
            text, spans = _with_eos(text, spans, self.tokenizer.eos_token)
        if not getattr(self.tokenizer, "is_fast", False):
            return self._encode_by_pieces(text, spans)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        labels = [token if _overlaps(a, b, spans) else IGNORE_INDEX
                  for token, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])]
        return list(enc["input_ids"]), labels

    def _encode_by_pieces(self, text: str, spans: list) -> tuple[list[int], list[int]]:
        """A slow tokenizer has no offsets: each trained span and the context between them tokenized alone."""
        ids, labels, pos = [], [], 0
        for start, end in spans:
            context, trained = self.ids(text[pos:start]), self.ids(text[start:end])
            ids += context + trained
            labels += [IGNORE_INDEX] * len(context) + trained
            pos = end
        return ids, labels

    def samples(self, messages: list[dict], max_length: Optional[int] = None,
                rewritten_history: str = "per_turn") -> list[tuple[list[int], list[int]]]:
        """(input_ids, labels) of each sample the conversation trains as (`conversations`), cut to max_length."""
        out = []
        for conversation in self.conversations(messages, rewritten_history):
            ids, labels = self.encode(conversation)
            out.append((ids[:max_length], labels[:max_length]) if max_length is not None else (ids, labels))
        return out

    def tokenize(self, messages: list[dict], max_length: Optional[int] = None) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of the conversation through its last assistant turn, as one sequence: every
        turn trains when the template renders turn by turn, else the final turn (its history as context)."""
        return self.samples(messages, max_length, "last_turn")[-1]

    def trained_spans(self, input_ids: list[int], labels: list[int]) -> list[str]:
        """The text of each run of trained tokens, in order (what `--inspect-data` shows)."""
        spans, run = [], []
        for token, label in zip(input_ids, labels):
            if label != IGNORE_INDEX:
                run.append(token)
            elif run:
                spans.append(self.decode(run))
                run = []
        if run:
            spans.append(self.decode(run))
        return spans

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _overlaps(a: int, b: int, spans: list) -> bool:
    """Whether characters [a, b) (a zero-width token: the position a) overlap one of the spans."""
    if a == b:
        return any(s <= a < e for s, e in spans)
    return any(a < e and b > s for s, e in spans)


def _with_eos(text: str, spans: list, eos: str) -> tuple[str, list]:
    """`text` with `eos` inserted after each span (the spans widened to hold it)."""
    out, shifted, pos, shift = [], [], 0, 0
    for start, end in spans:
        out += [text[pos:end], eos]
        shifted.append((start + shift, end + shift + len(eos)))
        shift += len(eos)
        pos = end
    out.append(text[pos:])
    return "".join(out), shifted
