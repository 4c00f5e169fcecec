"""How a conversation becomes tokens: the model's own chat template, in every stage.

A template is Jinja, rendered exactly as `tokenizer.apply_chat_template` renders it. `data.chat_template`
picks it: `auto` (the tokenizer's own when it has one, else Coati's), `coati` (Coati's 2023 layout,
"Human: ... \\nAssistant: ...", written below as a template), or a `.jinja` file. The tokenizer then carries
the template into every checkpoint it is saved with, so the next stage (and `launch.generate`) renders the
same way.

Which tokens train is found by rendering incrementally, never from `{% generation %}` tags (few templates
have them): for each assistant turn i, the conversation up to turn i with the generation prompt is the
context, and the text the turn adds after it, up to and including the template's end-of-turn token, is
trained. Each piece is tokenized on its own, so the split between prompt and reply is the one generation
sees (the prompt ends with the generation prompt; the model writes the reply and its end-of-turn token),
and that end-of-turn token stops generation.
"""

from __future__ import annotations

import os
from typing import Optional

from coati_ray.algo.losses import IGNORE_INDEX

ROLES = ("system", "user", "assistant", "tool")
# Coati's and Colossal-LLaMA's `from` names, and the HF / OpenAI `role` names, onto one vocabulary
ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
                "system": "system", "tool": "tool", "observation": "tool", "function": "tool", "ipython": "tool"}

# Coati's layout as a template: BOS, an optional system text, "Human: <u>", then "\nAssistant: <a></s>", and
# "\n" before every later human turn; a tool's answer (multi-turn rollouts) is "\nTool: <t>". It renders, token for token, what coati_ray's stages trained on before
# templates (each reply followed by EOS), so checkpoints of either kind read the same.
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


def use_chat_template(tokenizer, spec: str) -> None:
    """Make `tokenizer` carry the template a stage renders with (saved with it into every checkpoint)."""
    text = read_template(spec)
    tokenizer.chat_template = text or tokenizer_template(tokenizer) or COATI_TEMPLATE


def normalize_messages(messages, field: str = "messages") -> list[dict]:
    """Rows' `messages` ({role|from, content}) -> [{"role": system|user|assistant, "content": str}].

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
        if not isinstance(m["content"], str):
            raise ValueError(f"{field}[{j}].content must be a string")
        out.append({"role": role, "content": m["content"]})
    return out


class ChatFormat:
    """Renders and tokenizes conversations with one template; `of(tokenizer)` is the tokenizer's."""

    def __init__(self, tokenizer, template: str):
        self.tokenizer, self.template = tokenizer, template
        self._special = sorted({t for t in tokenizer.all_special_tokens if t}
                               | {t.content for t in tokenizer.added_tokens_decoder.values() if t.special},
                               key=len, reverse=True)
        self.end_of_turn = self._probe_end_of_turn()

    @classmethod
    def of(cls, tokenizer) -> "ChatFormat":
        """The format of the template `tokenizer` carries (Coati's when it has none), built once per template."""
        template = tokenizer_template(tokenizer) or COATI_TEMPLATE
        cached = getattr(tokenizer, "_coati_chat_format", None)
        if cached is None or cached.template != template:
            cached = cls(tokenizer, template)
            tokenizer._coati_chat_format = cached
        return cached

    # ------------------------------------------------------------------ text

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        except Exception as e:  # the template's raise_exception, or a role it does not know
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"the chat template cannot render this conversation ({first})") from None

    def _end_of_turn_in(self, reply: str) -> Optional[tuple[int, str]]:
        """(end offset, token) of the first special token in a rendered reply: the template's end of turn."""
        best = None
        for token in self._special:
            at = reply.find(token)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, token)
        return None if best is None else (best[0] + len(best[1]), best[1])

    def _probe_end_of_turn(self) -> Optional[str]:
        try:
            messages = [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}]
            reply = self.render(messages)[len(self.render(messages[:1], add_generation_prompt=True)):]
        except ValueError:
            return None
        found = self._end_of_turn_in(reply)
        return found[1] if found else None

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end a reply: the template's end-of-turn token and the tokenizer's EOS."""
        ids = []
        if self.end_of_turn is not None:
            ids.append(self.tokenizer.convert_tokens_to_ids(self.end_of_turn))
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def segments(self, messages: list[dict]) -> list[tuple[str, bool]]:
        """(text, trained) pieces of a conversation up to the end of its last assistant turn.

        Each assistant turn's trained piece is what the turn adds after the generation prompt, up to and
        including the end-of-turn token (a template without one: the reply, trailing whitespace cut, and
        the EOS token appended); the rest is context. Raises ValueError when the template does not render
        the conversation turn by turn (a later turn rewrites earlier text)."""
        full = self.render(messages)
        out: list[tuple[str, bool]] = []
        pos = 0
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            context = self.render(messages[:i], add_generation_prompt=True)
            with_turn = self.render(messages[:i + 1])
            if not (with_turn.startswith(context) and full.startswith(with_turn) and len(context) >= pos):
                raise ValueError(f"the chat template does not render this conversation turn by turn (messages[{i}] "
                                 "changes the text before it), so its trained tokens cannot be told apart")
            out.append((full[pos:len(context)], False))
            reply = with_turn[len(context):]
            found = self._end_of_turn_in(reply)
            if found is None:
                trained = reply.rstrip()
                out.append((trained + (self.tokenizer.eos_token or ""), True))
            else:
                trained = reply[:found[0]]
                out.append((trained, True))
            pos = len(context) + len(trained)
        if not out:
            raise ValueError("no assistant message, so nothing to learn from")
        return out

    # ------------------------------------------------------------------ tokens

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """A prompt ready for generation: the conversation, then the generation prompt."""
        return self.ids(self.render(messages, add_generation_prompt=True))

    def tokenize(self, messages: list[dict], max_length: Optional[int] = None) -> tuple[list[int], list[int]]:
        """(input_ids, labels): labels are IGNORE_INDEX except on the assistant turns' trained tokens."""
        input_ids: list[int] = []
        labels: list[int] = []
        for text, trained in self.segments(messages):
            ids = self.ids(text)
            input_ids += ids
            labels += ids if trained else [IGNORE_INDEX] * len(ids)
        if max_length is not None:
            return input_ids[:max_length], labels[:max_length]
        return input_ids, labels

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
