"""Parallel training strategies over ColossalAI's Booster."""

from coati_ray.strategies.strategy import Strategy, make_strategy, seed_everything

__all__ = ["Strategy", "make_strategy", "seed_everything"]
