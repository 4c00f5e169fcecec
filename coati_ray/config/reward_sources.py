"""Where the training reward comes from: the `rewards` section (sources and their weights)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from coati_ray.config.checks import _fail
from coati_ray.config.schema import opt


@dataclass
class RewardSourceSpec:
    """One training reward source of `rewards.sources`."""

    kind: str = opt("model", "model (the reward model of reward_model.path), function, http, or 'module:factory' of your "
                             "own: factory(**options) -> callable(prompts, responses, rows) -> list of numbers")
    weight: float = opt(1.0, "its weight in the training reward")
    name: Optional[str] = opt(None, "metrics name reward/<name> (default: the kind; a second of a kind gets _2)")
    function: Optional[str] = opt(None, "kind function: 'module:function' called as function(prompts, responses, "
                                        "rows) -> list of floats")
    url: Optional[str] = opt(None, "kind http: POST {prompts, responses, rows} as JSON, answered by {rewards: "
                                   "[...]}; credentials in it are redacted wherever it is written")
    headers_env: dict[str, str] = opt({}, "kind http: request headers whose values are read from environment "
                                          "variables (never written anywhere)")
    timeout_s: float = opt(30.0, "kind http: seconds one whole request may take")
    max_response_bytes: int = opt(4 << 20, "kind http: largest answer accepted, in bytes")
    retries: int = opt(2, "kind http: retries of a failed request before the run stops")
    options: dict[str, Any] = opt({}, "kind module:factory: the factory's keyword arguments")

    def validate(self, key: str, has_reward_model: bool) -> None:
        if self.kind == "model" and not has_reward_model:
            _fail(f"{key}.kind", "model needs the reward model", "set reward_model.path, or use another kind")
        if self.kind == "function":
            if not self.function:
                _fail(f"{key}.function", "kind function needs 'module:function'", "e.g. coati_ray.tasks.sorting:reward")
            from coati_ray.experience.reward_sources import check_reward_function

            check_reward_function(self.function, f"{key}.function")
        if self.kind == "http":
            check_http(key, self.url, self.max_response_bytes, self.timeout_s, self.retries, "url", "")
        if self.kind not in ("model", "function", "http"):
            from coati_ray.experience.reward_sources import REWARD_KINDS

            if self.kind not in REWARD_KINDS and ":" not in self.kind:
                _fail(f"{key}.kind", f"unknown reward kind '{self.kind}'",
                      f"use one of: {', '.join(REWARD_KINDS)}, or 'module:factory' of your own (a module of yours "
                      "that registers one by name goes in plugins: [...])")
            if ":" in self.kind and self.kind not in REWARD_KINDS:
                from coati_ray.utils.plugins import load_callable

                load_callable(self.kind, f"{key}.kind", "my_pkg.rewards:make_scorer")


def check_http(key: str, url: Optional[str], max_bytes: int, timeout_s: float, retries: int, url_name: str,
               prefix: str) -> None:
    """The checks of an HTTP source that need no network (`prefix`: '' for a sources entry, 'http_' shorthand)."""
    if not url:
        _fail(f"{key}.{url_name}", "kind http needs the service's URL", "e.g. http://127.0.0.1:8000/reward")
    if not url.startswith(("http://", "https://")):
        from coati_ray.utils.redact import redact_url

        _fail(f"{key}.{url_name}", f"'{redact_url(url)}' is not an http(s) URL", "e.g. http://127.0.0.1:8000/reward")
    if max_bytes < 1024:
        _fail(f"{key}.{prefix}max_response_bytes", f"must be >= 1024, got {max_bytes}", "e.g. 4194304")
    if timeout_s <= 0 or retries < 0:
        _fail(key, f"{prefix}timeout_s must be > 0 and {prefix}retries >= 0",
              f"e.g. {prefix}timeout_s=30 {prefix}retries=2")


@dataclass
class RewardSourcesConfig:
    """Where the training reward comes from: weighted sum of the reward model, a Python function and an
    HTTP service (any of them). The gold scorer (data.gold_task) only judges and is never one of these."""

    model_weight: float = opt(1.0, "weight of the reward model's score (used when reward_model.path is set)")
    function: Optional[str] = opt(None, "'module:function' called as function(prompts, responses, rows) -> list "
                                        "of floats, e.g. coati_ray.tasks.sorting:reward")
    function_weight: float = opt(1.0, "weight of the function's rewards")
    http_url: Optional[str] = opt(None, "POST {prompts, responses, rows} as JSON, answered by {rewards: [...]}; "
                                        "credentials in it are redacted wherever it is written (use http_headers_env)")
    http_headers_env: dict[str, str] = opt({}, "request headers whose values are read from environment variables, e.g. "
                                               "{Authorization: REWARD_API_TOKEN}: the value is never written anywhere")
    http_weight: float = opt(1.0, "weight of the HTTP service's rewards")
    http_timeout_s: float = opt(30.0, "seconds one whole request may take (connect, send, every byte of the answer)")
    http_max_response_bytes: int = opt(4 << 20, "largest answer accepted, in bytes")
    http_retries: int = opt(2, "retries of a failed request before the run stops")
    sources: list[RewardSourceSpec] = opt([], "the sources as a list, any number of each kind: [{kind: model | "
                                              "function | http | module:factory, weight, ...}] (the keys above are "
                                              "shorthand for it; set one or the other)")

    def specs(self, has_reward_model: bool) -> list[tuple[str, RewardSourceSpec]]:
        """(config key, spec) of every source: `sources`, or what the shorthand keys say (reward model first)."""
        if self.sources:
            return [(f"rewards.sources[{i}]", spec) for i, spec in enumerate(self.sources)]
        out = []
        if has_reward_model:
            out.append(("rewards", RewardSourceSpec(kind="model", weight=self.model_weight)))
        if self.function:
            out.append(("rewards", RewardSourceSpec(kind="function", weight=self.function_weight,
                                                    function=self.function)))
        if self.http_url:
            out.append(("rewards", RewardSourceSpec(kind="http", weight=self.http_weight, url=self.http_url,
                                                    headers_env=dict(self.http_headers_env),
                                                    timeout_s=self.http_timeout_s, retries=self.http_retries,
                                                    max_response_bytes=self.http_max_response_bytes)))
        return out

    def validate(self, has_reward_model: bool, key: str = "rewards", has_environment: bool = False) -> None:
        """`has_environment`: rollout.environment rewards the episodes, so no source of these is needed."""
        if self.sources:
            self._validate_sources(has_reward_model, key)
            return
        if not (has_reward_model or self.function or self.http_url or has_environment):
            _fail(key, "no training reward: no reward model (reward_model.path), function or http_url",
                  f"set reward_model.path, {key}.function (e.g. coati_ray.tasks.sorting:reward) or {key}.http_url")
        if self.function:
            from coati_ray.experience.reward_sources import check_reward_function

            check_reward_function(self.function, f"{key}.function")
        if self.http_url and not self.http_url.startswith(("http://", "https://")):
            from coati_ray.utils.redact import redact_url

            _fail(f"{key}.http_url", f"'{redact_url(self.http_url)}' is not an http(s) URL",
                  "e.g. http://127.0.0.1:8000/reward")
        if self.http_max_response_bytes < 1024:
            _fail(f"{key}.http_max_response_bytes", f"must be >= 1024, got {self.http_max_response_bytes}", "e.g. 4194304")
        if self.http_timeout_s <= 0 or self.http_retries < 0:
            _fail(key, "http_timeout_s must be > 0 and http_retries >= 0", "e.g. http_timeout_s=30 http_retries=2")

    def _validate_sources(self, has_reward_model: bool, key: str) -> None:
        defaults = RewardSourcesConfig()
        shorthand = [f.name for f in dataclasses.fields(self)
                     if f.name != "sources" and getattr(self, f.name) != getattr(defaults, f.name)]
        if shorthand:
            _fail(f"{key}.{shorthand[0]}", "is shorthand for a source, and rewards.sources is set too",
                  f"list every source in {key}.sources (e.g. {{kind: function, function: ..., weight: 1.0}})")
        kinds = [spec.kind for spec in self.sources]
        if has_reward_model and "model" not in kinds:
            _fail(f"{key}.sources", "reward_model.path is set but no source has kind: model",
                  "add {kind: model, weight: 1.0}, or remove reward_model.path")
        for i, spec in enumerate(self.sources):
            spec.validate(f"{key}.sources[{i}]", has_reward_model)

