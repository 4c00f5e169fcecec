"""The calculator task: "add: 482 + 903" -> "The sum is 1385", with a `calc` tool.

Numbers of three digits are more than the tiny models can add in their heads, but a tool call is within their
reach: copy the numbers into "<calc> 482 + 903</calc>", read the tool's answer ("= 1385"), copy it out.
Every number is written after a space, wherever it appears, so a byte-level BPE cuts it into the same tokens
in the prompt, the call, the tool's answer and the final answer: copying is copying tokens. The environment
(`rollout.environment: coati_ray.tasks.calc:CalcEnvironment`) runs the tool and gives the final answer's gold
score as the episode's reward; with `tools=False` every call is refused, which measures the policy without
its tool.
"""

from __future__ import annotations

import random
import re

PROMPT_PREFIX = "add:"
CALL = re.compile(r"<calc>(.*?)</calc>", re.S)
EXPRESSION = re.compile(r"^\s*(\d{1,12})\s*([+\-*])\s*(\d{1,12})\s*$")


def sample_operands(rng: random.Random, digits: int = 3) -> tuple[int, int]:
    low, high = 10 ** (digits - 1), 10 ** digits - 1
    return rng.randint(low, high), rng.randint(low, high)


def prompt_text(a: int, b: int) -> str:
    return f"{PROMPT_PREFIX} {a} + {b}"


def parse_prompt(prompt: str) -> tuple[int, int]:
    """The operands of a prompt (the prompt may be wrapped in a chat template); ValueError when it has none."""
    found = re.search(r"add:\s*(\d+)\s*\+\s*(\d+)", prompt)
    if not found:
        raise ValueError(f"not a calc prompt: {prompt[:60]!r}")
    return int(found.group(1)), int(found.group(2))


def call_text(a: int, b: int) -> str:
    return f"<calc> {a} + {b}</calc>"


def observation_text(value: int) -> str:
    return f"= {value}"


def answer_text(value: int) -> str:
    return f"The sum is {value}"


def evaluate(expression: str) -> int:
    """The tool: 'a+b', 'a-b' or 'a*b' of integers; ValueError for anything else (no eval of user text)."""
    found = EXPRESSION.match(expression)
    if not found:
        raise ValueError(f"cannot compute {expression.strip()[:40]!r}")
    a, op, b = int(found.group(1)), found.group(2), int(found.group(3))
    return a + b if op == "+" else a - b if op == "-" else a * b


def gold_score(a: int, b: int, answer: str) -> float:
    """1.0 when the final answer is the sum (the answer's only number), else 0.0; a reasoning block
    (`<think>...</think>`) before it is not the answer."""
    from coati_ray.tasks.sorting import final_answer

    answer = final_answer(answer)
    numbers = re.findall(r"-?\d+", answer)
    return float(len(numbers) == 1 and int(numbers[0]) == a + b and "<calc>" not in answer)


class CalcEnvironment:
    """One episode: a turn with a `<calc>...</calc>` call gets the tool's answer (or an error observation, counted
    as rollout/tool_error); any other turn is the final answer, rewarded with its gold score.

    `tools=False`: every call is answered "the calculator is unavailable" (the policy must add by itself)."""

    def __init__(self, tools: bool = True):
        self.tools = tools
        self.operands = (0, 0)

    def reset(self, row: dict):
        text = row.get("prompt") or " ".join(str(m.get("content", "")) for m in row.get("messages", []))
        self.operands = parse_prompt(text)
        return None

    def step(self, text: str):
        call = CALL.search(text)
        if call is None:
            return None, gold_score(*self.operands, text), True, {}
        if not self.tools:
            return "the calculator is unavailable", 0.0, False, {"tool_error": 0}
        try:
            return observation_text(evaluate(call.group(1))), 0.0, False, {"tool_error": 0}
        except ValueError as e:
            return f"error: {e}", 0.0, False, {"tool_error": 1}


def demonstration(rng: random.Random, flawed: bool, digits: int = 3) -> dict:
    """An SFT row of `messages`: the call, the tool's answer, the answer copied out. A flawed one has a wrong
    digit in the call (the tool answers the wrong sum, which is copied), a wrong digit in the copied answer, or
    no call and a guessed sum."""
    a, b = sample_operands(rng, digits)
    call_a, answer = a, None
    kind = rng.choice(["call", "copy", "guess"]) if flawed else "none"
    if kind == "call":
        call_a = _one_digit_off(a, rng)
    result = call_a + b
    if kind == "copy":
        answer = answer_text(_one_digit_off(result, rng))
    messages = [{"role": "user", "content": prompt_text(a, b)}]
    if kind == "guess":
        messages.append({"role": "assistant", "content": answer_text(_one_digit_off(a + b, rng))})
        return {"messages": messages}
    messages += [{"role": "assistant", "content": call_text(call_a, b)},
                 {"role": "tool", "content": observation_text(result)},
                 {"role": "assistant", "content": answer or answer_text(result)}]
    return {"messages": messages}


def _one_digit_off(n: int, rng: random.Random) -> int:
    s = list(str(n))
    i = rng.randrange(len(s))
    s[i] = rng.choice([d for d in "0123456789" if d != s[i] and not (i == 0 and d == "0")])
    return int("".join(s))


def reward(prompts: list[str], responses: list[str], rows: list[dict]) -> list[float]:
    """The gold score of a single-turn answer (a `rewards.function`), for a policy trained without the tool."""
    return [gold_score(*parse_prompt(p), r) for p, r in zip(prompts, responses)]
