"""The sorting task: "sort: 7 3 9 1" -> "1 3 7 9".

Small enough for a tiny model to learn on CPU, with a gold score that a program computes, so
the RLHF pipeline can be judged on something other than its own reward model.
"""

from __future__ import annotations

import random
from collections import Counter

PROMPT_PREFIX = "sort:"


def sample_numbers(rng: random.Random, min_len: int = 3, max_len: int = 6, max_value: int = 30) -> list[int]:
    return [rng.randint(0, max_value) for _ in range(rng.randint(min_len, max_len))]


def prompt_text(numbers: list[int]) -> str:
    return f"{PROMPT_PREFIX} " + " ".join(map(str, numbers))


def parse_prompt(prompt: str) -> list[int]:
    """Numbers of a prompt; the prompt may be wrapped in a chat template."""
    body = prompt.split(PROMPT_PREFIX, 1)[-1].split("\n", 1)[0]
    return [int(t) for t in body.split() if t.lstrip("-").isdigit()]


def final_answer(response: str) -> str:
    """The answer of a response: what follows its reasoning block (`<think>...</think>`, as Qwen3 and R1 write
    it), or the whole response."""
    return response.rsplit("</think>", 1)[-1] if "</think>" in response else response


def answer_text(numbers: list[int]) -> str:
    return " ".join(map(str, sorted(numbers)))


def gold_score(numbers: list[int], response: str) -> float:
    """1.0 for the sorted list; partial credit for order and content. Range [0, 1].

    order   = fraction of adjacent pairs in non-decreasing order among the response's integers
    content = |multiset(response) ∩ multiset(prompt)| / max(len(response), len(prompt))
    score   = order * content (a non-integer token counts as a wrong element).
    A reasoning model's `<think>...</think>` block is not the answer: what follows it is judged.
    """
    tokens = final_answer(response).split()
    values = [int(t) if t.lstrip("-").isdigit() else None for t in tokens]
    ints = [v for v in values if v is not None]
    if not numbers or not tokens:
        return 0.0
    pairs = list(zip(ints, ints[1:]))
    order = 1.0 if not pairs else sum(a <= b for a, b in pairs) / len(pairs)
    overlap = sum((Counter(ints) & Counter(numbers)).values())
    content = overlap / max(len(tokens), len(numbers))
    return order * content


def corrupt(numbers: list[int], rng: random.Random, severity: int = 1) -> str:
    """A flawed answer: the sorted list with `severity` edits.

    Edits: swap two neighbours, drop one, insert a stray number, or replace one by a number that is
    not in the prompt while keeping the order (so "looks sorted" is not the same as "correct").
    """
    out = sorted(numbers)
    for _ in range(severity):
        kind = rng.choice(["swap", "swap", "drop", "dup", "replace", "replace"])
        if kind == "replace" and out:
            i = rng.randrange(len(out))
            out[i] = rng.choice([v for v in range(31) if v not in numbers] or [31])
            out.sort()
            continue
        if kind == "swap" and len(out) >= 2:
            i = rng.randrange(len(out) - 1)
            if out[i] == out[i + 1]:
                out[i] += 1
            out[i], out[i + 1] = out[i + 1], out[i]
        elif kind == "drop" and len(out) >= 2:
            out.pop(rng.randrange(len(out)))
        else:
            out.insert(rng.randrange(len(out) + 1), rng.randint(0, 30))
    text = " ".join(map(str, out))
    if text == answer_text(numbers):  # an edit can cancel out; force a visible flaw
        text = " ".join(map(str, sorted(numbers, reverse=True))) if len(set(numbers)) > 1 else text + " 0"
    return text


def reward(prompts: list[str], responses: list[str], rows: list[dict]) -> list[float]:
    """The task's verifier as a training reward (RLVR): the gold score of each response, in [0, 1].

    A `rewards.function` (coati_ray.tasks.sorting:reward). When it trains, the same score that judges
    held-out prompts also shapes the policy, so the report says so; the RLHF demo never uses it.
    """
    return [gold_score(parse_prompt(p), r) for p, r in zip(prompts, responses)]
