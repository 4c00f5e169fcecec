"""Training reward sources: the reward model, a Python function, an HTTP service, your own kind, weighted.

    rewards = RewardSources(cfg.rewards, reward_model)             # in a maker (or a colocated actor rank)
    scores, parts = rewards(sequences, mask, prompts, responses, rows)

`rewards.sources` lists them (`[{kind, weight, ...}]`, any number of each kind); the older keys
(`rewards.function`, `rewards.http_url`, the reward model of `reward_model.path`) are shorthand for that list.
Each kind is registered in `REWARD_KINDS` (`register_reward_kind`), or named as `module:factory` of the
user's own (docs/extending.md). A function is `module:function(prompts, responses, rows) -> list[float]`:
prompts and responses are texts, rows the prompt data rows (every field of the prompt file, e.g. a
reference answer); an HTTP service is coati_ray/experience/reward_http.py. The gold scorer
(`data.gold_task`) is not a source: it only judges held-out answers.
"""

from __future__ import annotations

import inspect
import numbers
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from coati_ray.errors import ConfigError, RewardError
from coati_ray.experience.reward_http import SHORTHAND_KEYS, HttpReward, env_headers  # noqa: F401 (re-exported)

SHORTHAND = "rewards"  # the key of the shorthand sources (rewards.function, rewards.http_url, the reward model)

RewardFunction = Callable[[list, list, list], list]


def load_reward_function(spec: str, key: str = "rewards.function") -> RewardFunction:
    """Import `module:function`; a ConfigError (one line) when the path or the signature is wrong."""
    from coati_ray.utils.plugins import load_callable

    fn = load_callable(spec, key, "coati_ray.tasks.sorting:reward")
    try:
        inspect.signature(fn).bind(["p"], ["r"], [{}])
    except (TypeError, ValueError):  # ValueError: no signature to read (some builtins)
        raise ConfigError(f"config error: {key}: {spec} cannot be called as function(prompts, responses, rows); "
                          "give it those three parameters") from None
    return fn


def check_reward_function(spec: str, key: str = "rewards.function") -> None:
    load_reward_function(spec, key)


@dataclass
class RewardSource:
    """One built source: `score(sequences, attention_mask, prompts, responses, rows)` -> B rewards (a tensor
    or a list of numbers); `needs_text`: it reads decoded responses (the maker decodes them once for all)."""

    name: str
    weight: float
    score: Callable
    needs_text: bool
    shown: str  # how error lines name it
    checked: bool = True  # its answers go through _as_scores (numbers, one per response, finite)


def _model_source(spec, key: str, reward_model) -> RewardSource:
    if reward_model is None:
        raise ConfigError(f"config error: {key}.kind=model needs the reward model; set reward_model.path")
    return RewardSource("", spec.weight, lambda seqs, mask, *texts: reward_model(seqs, mask).float().cpu(),
                        needs_text=False, shown="the reward model", checked=False)


def _function_source(spec, key: str, reward_model) -> RewardSource:
    if not spec.function:
        raise ConfigError(f"config error: {key}.function: kind function needs 'module:function'; "
                          "e.g. coati_ray.tasks.sorting:reward")
    fn = load_reward_function(spec.function, f"{key}.function")
    return RewardSource("", spec.weight, lambda seqs, mask, prompts, responses, rows: fn(prompts, responses, rows),
                        needs_text=True, shown=spec.function)


def _http_source(spec, key: str, reward_model) -> RewardSource:
    service = http_service(spec, key)
    return RewardSource("", spec.weight, lambda seqs, mask, prompts, responses, rows: service(prompts, responses, rows),
                        needs_text=True, shown=service.shown)


def http_service(spec, key: str) -> HttpReward:
    if not spec.url:
        raise ConfigError(f"config error: {key}.url: kind http needs the service's URL; e.g. http://127.0.0.1:8000/reward")
    keys = SHORTHAND_KEYS if key == SHORTHAND else {k: f"{key}.{k}" for k in ("url", "timeout_s", "max_response_bytes",
                                                                             "headers_env")}
    return HttpReward(spec.url, spec.timeout_s, spec.retries, spec.headers_env, spec.max_response_bytes, keys)


REWARD_KINDS: dict[str, Callable] = {"model": _model_source, "function": _function_source, "http": _http_source}


def register_reward_kind(kind: str, build: Callable) -> None:
    """`build(spec, key, reward_model) -> RewardSource` for `rewards.sources[i].kind: <kind>`."""
    REWARD_KINDS[kind] = build


def _factory_source(spec, key: str, reward_model) -> RewardSource:
    """`kind: module:factory`: factory(**options) -> a callable (prompts, responses, rows) -> list of numbers."""
    from coati_ray.utils.plugins import load_callable

    factory = load_callable(spec.kind, f"{key}.kind", "my_pkg.rewards:make_scorer")
    try:
        scorer = factory(**spec.options)
    except Exception as e:  # the user's code: one line that names it
        raise ConfigError(f"config error: {key}: {spec.kind}(**options) raised {type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0][:200]}; fix the factory or {key}.options") from None
    if not callable(scorer):
        raise ConfigError(f"config error: {key}.kind: {spec.kind}(**options) returned {type(scorer).__name__}, not a "
                          "callable (prompts, responses, rows) -> list of rewards")
    return RewardSource("", spec.weight, lambda seqs, mask, prompts, responses, rows: scorer(prompts, responses, rows),
                        needs_text=True, shown=spec.kind)


def check_factory_options(spec, key: str) -> None:
    """`module:factory` imports and accepts `options` as keyword arguments (one line when not)."""
    import inspect

    from coati_ray.utils.plugins import load_callable

    factory = load_callable(spec.kind, f"{key}.kind", "my_pkg.rewards:make_scorer")
    try:
        inspect.signature(factory).bind(**spec.options)
    except TypeError as e:
        raise ConfigError(f"config error: {key}.options: {spec.kind} cannot take {dict(spec.options)} ({e}); "
                          f"match {key}.options to its parameters") from None
    except ValueError:  # no signature to read (a builtin): calling it will tell
        pass


def build_source(spec, key: str, reward_model=None) -> RewardSource:
    """The source of one `rewards.sources` entry (`key` names it in error lines)."""
    if spec.kind in REWARD_KINDS:
        return REWARD_KINDS[spec.kind](spec, key, reward_model)
    if ":" in spec.kind:
        return _factory_source(spec, key, reward_model)
    raise ConfigError(f"config error: {key}.kind: unknown reward kind '{spec.kind}'; use one of: "
                      f"{', '.join(REWARD_KINDS)}, or 'module:factory' of your own")


class RewardSources:
    """The weighted sum of the configured sources; `needs_text` tells the maker to decode responses."""

    def __init__(self, cfg, reward_model=None):
        self.cfg, self.reward_model = cfg, reward_model
        specs = cfg.specs(reward_model is not None)
        self.sources = [build_source(spec, key, reward_model) for key, spec in specs]
        for source, name in zip(self.sources, unique_names([spec.name or default_name(spec) for _, spec in specs])):
            source.name = name

    @property
    def needs_text(self) -> bool:
        return any(s.needs_text for s in self.sources)

    def __call__(self, sequences: torch.Tensor, attention_mask: torch.Tensor, prompts: Optional[list] = None,
                 responses: Optional[list] = None, rows: Optional[list] = None) -> tuple[torch.Tensor, dict]:
        """sequences, attention_mask: (B, T) -> (scores (B,) float32, {source name: (B,)} before weighting)."""
        B = sequences.size(0)
        parts: dict[str, torch.Tensor] = {}
        total = torch.zeros(B, dtype=torch.float32)
        for source in self.sources:
            try:
                values = source.score(sequences, attention_mask, prompts, responses, rows)
            except RewardError:
                raise
            except Exception as e:  # the user's code: one line that names it, not a traceback through Ray
                if not source.needs_text:
                    raise
                raise RewardError(f"reward error: {source.shown} raised {type(e).__name__}: "
                                  f"{(str(e).splitlines() or [''])[0][:200]}; fix the function (it is called with "
                                  "lists of prompts, responses and rows)") from None
            value = _as_scores(values, B, source.shown) if source.checked else values
            parts[source.name] = value
            total = total + source.weight * value
        return total.to(sequences.device), parts


def default_name(spec) -> str:
    return spec.kind.rsplit(":", 1)[-1] if ":" in spec.kind else spec.kind


def unique_names(names: list[str]) -> list[str]:
    """Names as given, a repeated one numbered from its second use: [http, http] -> [http, http_2]."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def _number(value) -> float:
    """A reward: a real number (int, float, numpy scalar, a one-element tensor); never a string or a bool."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype == torch.bool:
        return float(value.item())
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise TypeError(type(value).__name__)


def _as_scores(values, count: int, source: str) -> torch.Tensor:
    try:
        out = torch.tensor([_number(v) for v in values], dtype=torch.float32)
    except TypeError as e:
        raise RewardError(f"reward error: {source} returned a reward of type {e} where a number belongs; return one "
                          "number per response (not a string or a boolean)") from None
    if out.numel() != count:
        raise RewardError(f"reward error: {source} returned {out.numel()} rewards for {count} responses; return one "
                          "per response")
    if not torch.isfinite(out).all():
        raise RewardError(f"reward error: {source} returned a NaN or infinite reward; return finite numbers")
    return out


def check_reward_sources(cfg) -> None:
    """What can only be checked by trying, before Ray starts: every reward service answers, and a factory of
    one's own takes its options (its signature; the factory itself is first called in the makers, where its
    models belong)."""
    for key, spec in cfg.specs(True):
        if spec.kind not in REWARD_KINDS and ":" in spec.kind:
            check_factory_options(spec, key)
        if spec.kind == "http":
            try:
                env_headers(spec.headers_env, f"{key}.headers_env" if key != SHORTHAND else "rewards.http_headers_env")
            except RewardError as e:
                raise ConfigError(f"config error: {str(e).split(': ', 1)[1]}") from None
            http_service(spec, key).check()
