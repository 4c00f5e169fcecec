"""Tasks with a programmatic gold score: used only to *judge* a policy, never to train it.

A gold scorer maps (prompt text, response text) -> float in [0, 1]. PPO optimises the learned
reward model; the gold score tells whether that helped the task or merely fooled the RM.
"""

from __future__ import annotations

from typing import Callable

from coati_ray.tasks import calc, sorting

GoldScorer = Callable[[str, str], float]


def _sorting(prompt: str, response: str) -> float:
    return sorting.gold_score(sorting.parse_prompt(prompt), response)


def _calc(prompt: str, response: str) -> float:
    return calc.gold_score(*calc.parse_prompt(prompt), response)


GOLD_SCORERS: dict[str, GoldScorer] = {"sorting": _sorting, "calc": _calc}


def gold_scorer(name: str) -> GoldScorer:
    from coati_ray.errors import ConfigError

    if name not in GOLD_SCORERS:
        raise ConfigError(f"config error: unknown gold task '{name}'; known tasks: {', '.join(GOLD_SCORERS)}")
    return GOLD_SCORERS[name]
