"""Row layouts users bring, normalised to three canonical shapes.

SFT      -> {"messages": [{"from": "human"|"assistant", "content": str}, ...]}
            from `messages` (Colossal-LLaMA) or `instruction`/`input`/`output` (Alpaca).
pairs    -> {"prompt": str, "chosen": str, "rejected": str}
            from `prompt`/`chosen`/`rejected`, hh-rlhf (`chosen`/`rejected` whole dialogues) or
            rm-static (`prompt`/`response`/`chosen`/`rejected`).
prompts  -> {"prompt": str}  from `prompt`, `instruction`(+`input`) or `messages` (its human turns).

Each normaliser raises ValueError with a short reason; the loader adds file and row.
"""

from __future__ import annotations

from coati_ray.data.template import ASSISTANT_ROLES, HUMAN_ROLES

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
        raise ValueError(f"cannot tell the SFT layout from columns {sorted(cols)}; "
                         "expected 'messages' or 'instruction'/'input'/'output'")
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


def sft_messages(row: dict, fmt: str) -> dict:
    if fmt == "instruction":
        instruction = _text(row, "instruction")
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise ValueError(f"field 'input' must be a string, got {type(extra).__name__}")
        human = instruction + ("\n" + extra if extra else "")
        return {"messages": [{"from": "human", "content": human}, {"from": "assistant", "content": _text(row, "output")}]}
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("missing field 'messages' (a non-empty list of {from, content})")
    out = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or "from" not in m or "content" not in m:
            raise ValueError(f"messages[{j}] needs 'from' and 'content'")
        role = str(m["from"]).lower()
        if role not in HUMAN_ROLES + ASSISTANT_ROLES:
            raise ValueError(f"messages[{j}].from is '{m['from']}'; use 'human' or 'assistant'")
        if not isinstance(m["content"], str):
            raise ValueError(f"messages[{j}].content must be a string")
        out.append({"from": "human" if role in HUMAN_ROLES else "assistant", "content": m["content"]})
    if not any(m["from"] == "assistant" for m in out):
        raise ValueError("no assistant message, so nothing to learn from")
    return {"messages": out}


def preference_pair(row: dict, fmt: str) -> dict:
    if fmt in ("pairs", "rm_static"):
        pair = {"prompt": _text(row, "prompt"), "chosen": _text(row, "chosen"), "rejected": _text(row, "rejected")}
    elif fmt == "hh_rlhf":
        pair = split_hh_dialogues(_text(row, "chosen"), _text(row, "rejected"))
    else:
        raise ValueError(f"'{fmt}' is not a preference layout")
    if pair["chosen"] == pair["rejected"]:
        raise ValueError("chosen and rejected are identical, so the pair carries no preference")
    return pair


def split_hh_dialogues(chosen: str, rejected: str) -> dict:
    """hh-rlhf rows hold two whole dialogues that differ in the last assistant turn.

    The prompt is everything up to and including the last "\\n\\nAssistant:" of `chosen`; it must
    be the start of `rejected` too.
    """
    cut = chosen.rfind(HH_ASSISTANT)
    if cut < 0:
        raise ValueError("hh-rlhf 'chosen' has no '\\n\\nAssistant:' turn")
    prefix = chosen[: cut + len(HH_ASSISTANT)]
    if not rejected.startswith(prefix):
        raise ValueError("hh-rlhf 'chosen' and 'rejected' do not share the dialogue before the last reply")
    return {"prompt": prefix, "chosen": chosen[len(prefix):].strip(), "rejected": rejected[len(prefix):].strip()}


def prompt_only(row: dict, fmt: str) -> dict:
    if fmt == "prompt":
        return {"prompt": _text(row, "prompt")}
    if fmt == "instruction":
        extra = row.get("input") or ""
        return {"prompt": _text(row, "instruction") + ("\n" + extra if extra else "")}
    if fmt == "messages":
        messages = row.get("messages")
        if not isinstance(messages, list):
            raise ValueError("missing field 'messages' (a list of {from, content})")
        human = [m.get("content") for m in messages if isinstance(m, dict)
                 and str(m.get("from", "")).lower() in HUMAN_ROLES and isinstance(m.get("content"), str)]
        if not human:
            raise ValueError("messages has no human turn to use as a prompt")
        return {"prompt": human[0]}
    raise ValueError(f"'{fmt}' is not a prompt layout")
