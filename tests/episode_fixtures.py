"""Environments and a scripted policy for the multi-turn tests (importable by makers: the repo is on their path).

`oracle` is a generation backend (`generation.backend: tests.episode_fixtures:oracle`) that writes what a
perfect calc policy writes: the call when the context has no tool answer yet, else the tool's answer copied
out. `oracle_half_wrong` copies a wrong answer half the time, drawn from torch's generator (seeded per batch), so
a group's rewards differ.
"""

from __future__ import annotations

import re
import time

import torch

from coati_ray.data.template import ChatFormat
from coati_ray.tasks import calc


def oracle_half_wrong(actor, gen, input_ids, attention_mask, tokenizer, eos_token_id=None, **extra):
    return oracle(actor, gen, input_ids, attention_mask, tokenizer, eos_token_id, wrong=0.5)


def oracle(actor, gen, input_ids, attention_mask, tokenizer, eos_token_id=None, wrong: float = 0.0, **extra):
    end = actor.eos_token_ids(tokenizer)[0]
    turns = []
    for row, keep in zip(input_ids.tolist(), attention_mask.tolist()):
        context = tokenizer.decode([t for t, k in zip(row, keep) if k], skip_special_tokens=False)
        answers = re.findall(r"= (-?\d+)", context)  # the tool's answers (calc.observation_text)
        if answers:
            value = int(answers[-1])
            if wrong and float(torch.rand(())) < wrong:
                value += 1
            text = calc.answer_text(value)
        else:
            text = calc.call_text(*calc.parse_prompt(context))
        # as a policy trained on the template writes it: the generation prompt's trailing space is its first token's
        ids = tokenizer(ChatFormat.of(tokenizer).probe.reply_lead + text, add_special_tokens=False)["input_ids"] + [end]
        turns.append(ids[:gen.max_new_tokens])
    A = max(len(t) for t in turns)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    actions = torch.tensor([t + [pad] * (A - len(t)) for t in turns], dtype=torch.long, device=input_ids.device)
    sequences = torch.cat([input_ids, actions], dim=1)
    return actor._masks(sequences, input_ids, attention_mask, eos_token_id or [end])


class NeverDone:
    """Answers every turn, rewards each 0.25, never ends the episode."""

    def reset(self, row):
        return None

    def step(self, text):
        return "again", 0.25, False


class Raises:
    def __init__(self, when: str = "step"):
        self.when = when

    def reset(self, row):
        if self.when == "reset":
            raise KeyError("no such row")
        return None

    def step(self, text):
        raise ZeroDivisionError("the tool divided by zero")


class Sleeps:
    def __init__(self, seconds: float = 5.0):
        self.seconds = seconds

    def reset(self, row):
        return None

    def step(self, text):
        time.sleep(self.seconds)
        return None, 1.0, True


class AnswersWrongly:
    def reset(self, row):
        return None

    def step(self, text):
        return "not a tuple"


class NoStep:
    def reset(self, row):
        return None
