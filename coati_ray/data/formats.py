"""Row layouts users bring, normalised to three canonical shapes whose conversations are role messages
([{"role": system|user|assistant, "content": str}], see coati_ray.data.template.normalize_messages).

SFT      -> {"messages": [...]} from `messages` (HF/OpenAI `role`, or Coati's / Colossal-LLaMA's `from`;
            system turns, several turns), `instruction`/`input`/`output` (Alpaca) or `prompt`/`completion` (TRL,
            text or messages).
pairs    -> {"prompt": [...messages], "chosen": str, "rejected": str} from `prompt`/`chosen`/`rejected`
            (strings, or TRL's conversational lists), hh-rlhf (`chosen`/`rejected` whole dialogues, text or
            message lists) or rm-static (`prompt`/`response`/`chosen`/`rejected`).
prompts  -> {"prompt": str, "messages": [...]} from `prompt` (text or messages), `instruction`(+`input`) or
            `messages` (the whole history, less a trailing assistant reply); `prompt` is the last user turn's
            text, what reward functions and gold scorers read.

Each normaliser raises ValueError with a short reason; the loader adds file and row.
"""

from __future__ import annotations

from coati_ray.data.template import normalize_messages

HH_ASSISTANT = "\n\nAssistant:"
HH_HUMAN = "\n\nHuman:"


def _text(row: dict, key: str) -> str:
    if key not in row or row[key] is None:
        present = ", ".join(k for k, v in row.items() if v is not None) or "none"
        raise ValueError(f"missing field '{key}' (has: {present})")
    value = row[key]
    if not isinstance(value, str):
        raise ValueError(f"field '{key}' must be a string, got {type(value).__name__}")
    return value


def detect_format(columns: list[str], stage: str) -> str:
    cols = set(columns)
    if stage == "sft":
        if "messages" in cols:
            return "messages"
        if "instruction" in cols or "output" in cols:
            return "instruction"
        if {"prompt", "completion"} <= cols:
            return "prompt_completion"
        raise ValueError(f"cannot tell the SFT layout from columns {sorted(cols)}; "
                         "expected 'messages', 'instruction'/'input'/'output' or 'prompt'/'completion'")
    if stage == "pairs":
        if {"prompt", "response", "chosen", "rejected"} <= cols:
            return "rm_static"
        if {"prompt", "chosen", "rejected"} <= cols:
            return "pairs"
        if {"chosen", "rejected"} <= cols:
            return "hh_rlhf"
        raise ValueError(f"cannot tell the preference layout from columns {sorted(cols)}; "
                         "expected 'prompt'/'chosen'/'rejected' or hh-rlhf 'chosen'/'rejected'")
    if stage == "prompt":
        for layout in ("prompt", "instruction", "messages"):
            if layout in cols:
                return layout
        raise ValueError(f"cannot find prompts in columns {sorted(cols)}; expected 'prompt', 'instruction' or 'messages'")
    raise ValueError(f"unknown stage '{stage}'")


def _instruction(row: dict) -> str:
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise ValueError(f"field 'input' must be a string, got {type(extra).__name__}")
    return _text(row, "instruction") + ("\n" + extra if extra else "")


def sft_messages(row: dict, fmt: str) -> dict:
    if fmt == "instruction":
        return {"messages": [{"role": "user", "content": _instruction(row)},
                             {"role": "assistant", "content": _text(row, "output")}]}
    if fmt == "prompt_completion":  # TRL's layout: text, or prompt messages and the completion's messages
        prompt, completion = row.get("prompt"), row.get("completion")
        if isinstance(prompt, list) and isinstance(completion, list):
            messages = normalize_messages(prompt, "prompt") + normalize_messages(completion, "completion")
        else:
            messages = text_prompt(_text(row, "prompt")) + [{"role": "assistant", "content": _text(row, "completion")}]
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError("the completion has no assistant message, so nothing to learn from")
        return {"messages": messages}
    messages = normalize_messages(row.get("messages"))
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant message, so nothing to learn from")
    return {"messages": messages}


def preference_pair(row: dict, fmt: str) -> dict:
    if fmt in ("pairs", "rm_static"):
        prompt = row.get("prompt")
        if isinstance(prompt, list):  # TRL's conversational layout: prompt messages, replies as messages
            pair = {"prompt": normalize_messages(prompt, "prompt"), "chosen": _reply(row, "chosen"),
                    "rejected": _reply(row, "rejected")}
        else:  # text: one user turn, or an hh-style dialogue (rm-static's prompts)
            pair = {"prompt": text_prompt(_text(row, "prompt")), "chosen": _reply(row, "chosen"),
                    "rejected": _reply(row, "rejected")}
    elif fmt == "hh_rlhf":
        pair = split_dialogues(row.get("chosen"), row.get("rejected"))
    else:
        raise ValueError(f"'{fmt}' is not a preference layout")
    if pair["chosen"] == pair["rejected"]:
        raise ValueError("chosen and rejected are identical, so the pair carries no preference")
    return pair


def _reply(row: dict, key: str) -> str:
    """A reply given as text, or as a list holding one assistant message."""
    value = row.get(key)
    if isinstance(value, list):
        messages = normalize_messages(value, key)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise ValueError(f"'{key}' must be one assistant message when 'prompt' holds the conversation")
        return messages[0]["content"]
    return _text(row, key)


def split_dialogues(chosen, rejected) -> dict:
    """hh-rlhf rows hold two whole dialogues that differ in the last assistant turn: as text
    ("\\n\\nHuman: ... \\n\\nAssistant: ...") or as message lists. The prompt is the dialogue before the
    last assistant turn, which both must share."""
    if isinstance(chosen, list) and isinstance(rejected, list):
        c, r = normalize_messages(chosen, "chosen"), normalize_messages(rejected, "rejected")
    elif isinstance(chosen, str) and isinstance(rejected, str):
        c, r = hh_messages(chosen, "chosen"), hh_messages(rejected, "rejected")
    else:
        raise ValueError("hh-rlhf 'chosen' and 'rejected' must both be dialogue text or both message lists")
    for name, dialogue in (("chosen", c), ("rejected", r)):
        if dialogue[-1]["role"] != "assistant":
            raise ValueError(f"hh-rlhf '{name}' does not end with an assistant turn")
    if c[:-1] != r[:-1]:
        raise ValueError("hh-rlhf 'chosen' and 'rejected' do not share the dialogue before the last reply")
    if not c[:-1]:
        raise ValueError("hh-rlhf dialogues have no turn before the last reply to use as the prompt")
    return {"prompt": c[:-1], "chosen": c[-1]["content"], "rejected": r[-1]["content"]}


def hh_messages(text: str, name: str) -> list[dict]:
    """Anthropic's "\\n\\nHuman: ...\\n\\nAssistant: ..." dialogue text -> role messages."""
    markers = {HH_HUMAN: "user", HH_ASSISTANT: "assistant"}
    if not text.startswith(HH_HUMAN):
        if text.startswith(HH_HUMAN.lstrip("\n")):
            text = "\n\n" + text
        else:
            raise ValueError(f"hh-rlhf '{name}' does not start with '\\n\\nHuman:'")
    cuts = sorted((i, m) for m in markers for i in _find_all(text, m))
    if not any(markers[m] == "assistant" for _, m in cuts):
        raise ValueError(f"hh-rlhf '{name}' has no '\\n\\nAssistant:' turn")
    out = []
    for k, (start, marker) in enumerate(cuts):
        end = cuts[k + 1][0] if k + 1 < len(cuts) else len(text)
        out.append({"role": markers[marker], "content": text[start + len(marker):end].strip()})
    return out


def text_prompt(text: str) -> list[dict]:
    """A prompt given as text: Anthropic-style dialogue text ("\n\nHuman: ...\n\nAssistant:", as in
    Dahoas/rm-static) becomes its turns, less the open assistant turn it ends with; anything else is one
    user turn. The model's template then renders the turns (not the literal markers)."""
    if text.lstrip("\n").startswith(HH_HUMAN.strip("\n")) and HH_ASSISTANT in text:
        messages = hh_messages(text.rstrip(), "prompt")
        while messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
            messages = messages[:-1]
        if messages and messages[-1]["role"] == "user":
            return messages
    return [{"role": "user", "content": text}]


def _find_all(text: str, needle: str) -> list[int]:
    out, at = [], text.find(needle)
    while at >= 0:
        out.append(at)
        at = text.find(needle, at + 1)
    return out


def prompt_only(row: dict, fmt: str) -> dict:
    if fmt == "prompt":
        if isinstance(row.get("prompt"), list):
            messages = normalize_messages(row["prompt"], "prompt")
        else:
            messages = text_prompt(_text(row, "prompt"))
    elif fmt == "instruction":
        messages = [{"role": "user", "content": _instruction(row)}]
    elif fmt == "messages":
        messages = normalize_messages(row.get("messages"))
        while messages and messages[-1]["role"] == "assistant":  # the history up to the last user turn
            messages = messages[:-1]
    else:
        raise ValueError(f"'{fmt}' is not a prompt layout")
    users = [m["content"] for m in messages if m["role"] == "user"]
    if not users:
        raise ValueError("the prompt has no user turn")
    return {"prompt": users[-1], "messages": messages}
