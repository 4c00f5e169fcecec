"""Multi-turn rollouts: the `rollout` section (an environment the policy acts in over several turns)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from coati_ray.config.checks import _fail
from coati_ray.config.schema import opt


@dataclass
class RolloutConfig:
    """Without `environment` a sample is one response to its prompt. With one, a sample is an episode: the policy
    writes a turn, the environment answers (a tool's output, rendered as a `tool` turn by the chat template) and
    the policy goes on until the environment says done, `max_turns` or `max_total_tokens`."""

    environment: Optional[str] = opt(None, "'module:Class' (Class(**options) with reset(row) -> observation or None "
                                           "and step(text) -> (observation, reward, done[, info])), or http (a "
                                           "service at url); one instance per episode")
    options: dict[str, Any] = opt({}, "the environment class's keyword arguments")
    url: Optional[str] = opt(None, "environment http: POST {episode, row, options} to <url>/reset and {episode, "
                                   "text} to <url>/step, answered as the class's methods return (JSON)")
    timeout_s: float = opt(30.0, "seconds one reset or step may take; past it the episode ends as an error")
    max_turns: int = opt(4, "policy turns per episode at most (generation.max_new_tokens each)")
    max_total_tokens: int = opt(256, "response tokens per episode at most, the policy's and the environment's "
                                     "together (what follows the prompt)")
    stop: list[str] = opt([], "strings that also end a turn (e.g. '</call>'), besides the template's end of turn")
    reward_weight: float = opt(1.0, "weight of the environment's rewards (every turn's, summed) in the training "
                                    "reward; rewards.* sources, when set, score the whole transcript beside it")
    baseline_options: dict[str, Any] = opt({}, "environment options of a second held-out evaluation beside each "
                                               "eval (e.g. {tools: false}: the policy without its tool), as "
                                               "eval/baseline/*")
    max_env_error_fraction: float = opt(0.1, "a maker whose episodes end in an environment error (a raise, a "
                                             "timeout, a bad answer) more often than this ends the run in one line")

    @property
    def multi_turn(self) -> bool:
        return self.environment is not None

    def validate(self, key: str = "rollout") -> None:
        if self.environment is None:
            return
        if self.max_turns < 1:
            _fail(f"{key}.max_turns", f"must be >= 1, got {self.max_turns}", "e.g. 4")
        if self.max_total_tokens < 1:
            _fail(f"{key}.max_total_tokens", f"must be >= 1, got {self.max_total_tokens}", "e.g. 256")
        if self.timeout_s <= 0:
            _fail(f"{key}.timeout_s", f"must be > 0, got {self.timeout_s}", "e.g. 30")
        if not 0 <= self.max_env_error_fraction <= 1:
            _fail(f"{key}.max_env_error_fraction", f"must be in [0, 1], got {self.max_env_error_fraction}", "e.g. 0.1")
        if any(not s for s in self.stop):
            _fail(f"{key}.stop", "an empty stop string would end every turn at once", "remove it")
        if self.environment == "http":
            if not (self.url or "").startswith(("http://", "https://")):
                from coati_ray.utils.redact import redact_url

                _fail(f"{key}.url", f"environment http needs an http(s) URL, got '{redact_url(self.url or '')}'",
                      "e.g. http://127.0.0.1:8001")
            return
        from coati_ray.experience.environments import check_environment_options

        check_environment_options(self, key)
