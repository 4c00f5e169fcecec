"""Environments a policy acts in over several turns (`rollout.environment`; no Ray here).

An environment is one instance per episode, made by `Class(**rollout.options)`:

    reset(row) -> observation or None
        `row` is the prompt's data row (every field of the prompt file). A string is the episode's first user
        message instead of the row's prompt; None keeps the prompt.
    step(text) -> (observation, reward, done) or (observation, reward, done, info)
        `text` is the policy's turn (its end-of-turn token left out). `observation` (a string, or None) is
        what the environment answers, rendered as a `tool` turn; `reward` adds to the episode's return (each
        turn's, summed: per-turn and final rewards alike); `done` ends the episode; `info` is a dict of
        numbers summed into the metrics as rollout/<key> (e.g. {"tool_error": 1}).

`rollout.environment: http` is the same over HTTP: POST {"episode", "row", "options"} to <url>/reset answered by
{"observation"}, POST {"episode", "text"} to <url>/step answered by {"observation", "reward", "done", "info"}.
The URL's query string is kept (<url>?token=... posts to <url>/step?token=...), credentials in it are sent as
Basic auth, and a redirect is an error, never followed (give the final URL).
A call that raises, times out (`rollout.timeout_s`) or answers wrongly ends its episode as an error.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Optional

from coati_ray.errors import ConfigError


class EnvironmentFailed(Exception):
    """One episode's environment call failed (raised, timed out, or answered wrongly): the episode ends there."""


@dataclass
class EnvironmentStep:
    observation: Optional[str]
    reward: float
    done: bool
    info: dict = field(default_factory=dict)


def load_environment_class(spec: str, key: str = "rollout.environment") -> Callable:
    """Import `module:Class` and check it has reset and step; a ConfigError (one line) otherwise."""
    from coati_ray.utils.plugins import load_callable

    cls = load_callable(spec, key, "coati_ray.tasks.calc:CalcEnvironment")
    missing = [m for m in ("reset", "step") if not callable(getattr(cls, m, None))]
    if missing:
        raise ConfigError(f"config error: {key}: {spec} has no {' and no '.join(missing)} method; an environment has "
                          "reset(row) -> observation and step(text) -> (observation, reward, done)")
    return cls


def environment_factory(cfg) -> Callable[[str], object]:
    """`cfg` a RolloutConfig -> make(episode_id) -> a fresh environment for one episode."""
    if cfg.environment == "http":
        options = dict(cfg.options)
        return lambda episode: HttpEnvironment(cfg.url, episode, cfg.timeout_s, options)
    cls = load_environment_class(cfg.environment)
    options = dict(cfg.options)
    return lambda episode: cls(**options)


def check_environment_options(cfg, key: str = "rollout") -> None:
    """rollout.options and rollout.baseline_options against the class's signature: a ConfigError (one line)
    naming the key, before any episode runs."""
    if cfg.environment == "http":
        return
    cls = load_environment_class(cfg.environment, f"{key}.environment")
    for name, options in (("options", cfg.options), ("baseline_options", {**cfg.options, **cfg.baseline_options})):
        try:
            inspect.signature(cls).bind(**options)
        except TypeError as e:
            raise ConfigError(f"config error: {key}.{name}: {cfg.environment}(**{name}) cannot take them ({e}); "
                              "give the class's keyword arguments") from None
        except ValueError:  # no signature to read
            return


def as_step_result(answer) -> EnvironmentStep:
    """What step returned -> EnvironmentStep; EnvironmentFailed naming what is wrong."""
    if not isinstance(answer, (tuple, list)) or len(answer) not in (3, 4):
        raise EnvironmentFailed(f"step returned {type(answer).__name__}, not (observation, reward, done[, info])")
    observation, reward, done = answer[:3]
    info = answer[3] if len(answer) == 4 else {}
    if observation is not None and not isinstance(observation, str):
        raise EnvironmentFailed(f"step's observation is {type(observation).__name__}, not a string or None")
    if not isinstance(reward, numbers.Real) or isinstance(reward, bool) or not math.isfinite(reward):
        raise EnvironmentFailed(f"step's reward is {reward!r}, not a finite number")
    if not isinstance(done, (bool, int)):
        raise EnvironmentFailed(f"step's done is {done!r}, not a bool")
    if not isinstance(info, dict):
        raise EnvironmentFailed(f"step's info is {type(info).__name__}, not a dict")
    return EnvironmentStep(observation, float(reward), bool(done), {k: float(v) for k, v in info.items()
                                                             if isinstance(v, numbers.Real)})


class EnvironmentCalls:
    """Runs the episodes' environment calls concurrently, each bounded by `timeout_s` (a call past it is left to
    finish on its own thread and its episode ends as an error)."""

    def __init__(self, timeout_s: float, workers: int = 64):
        """`workers`: at least the largest batch of episodes, so that no call waits in the queue (its time
        there would count against its timeout)."""
        self.timeout_s = timeout_s
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="environment")

    def map(self, calls: list[Callable]) -> list:
        """Each call's value, or an EnvironmentFailed in its place."""
        import time

        futures = [self.pool.submit(c) for c in calls]
        deadline = time.monotonic() + self.timeout_s
        out = []
        for f in futures:
            try:
                out.append(f.result(timeout=max(0.0, deadline - time.monotonic())))
            except concurrent.futures.TimeoutError:
                out.append(EnvironmentFailed(f"no answer within rollout.timeout_s={self.timeout_s:g} s"))
            except Exception as e:  # the user's code: its first line, counted, never a traceback through Ray
                out.append(EnvironmentFailed(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"))
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class HttpEnvironment:
    """An environment served over HTTP (`rollout.environment: http`), one episode per instance. Each call is one
    POST (coati_ray/utils/http.py): `rollout.url`'s query string kept after /reset and /step, its credentials
    sent as Basic auth and redacted in every error, a redirect never followed, the whole call bounded by
    `rollout.timeout_s`."""

    MAX_ANSWER_BYTES = 4 << 20

    def __init__(self, url: str, episode: str, timeout_s: float = 30.0, options: dict = None):
        self.url, self.episode, self.timeout_s = url, episode, timeout_s
        self.options = dict(options or {})

    def _post(self, path: str, payload: dict) -> dict:
        from coati_ray.utils.http import BadUrl, endpoint, post

        try:
            data = post(endpoint(self.url, path), json.dumps(payload).encode(), {"Content-Type": "application/json"},
                        self.timeout_s, self.MAX_ANSWER_BYTES, url_key="rollout.url")
        except BadUrl as e:  # its own words: what to fix in rollout.url
            raise EnvironmentFailed(str(e)) from None
        answer = json.loads(data)
        if not isinstance(answer, dict):
            raise EnvironmentFailed(f"{path} answered {type(answer).__name__}, not a JSON object")
        return answer

    def reset(self, row: dict):
        return self._post("reset", {"episode": self.episode, "row": row, "options": self.options}).get("observation")

    def step(self, text: str):
        a = self._post("step", {"episode": self.episode, "text": text})
        return a.get("observation"), a.get("reward", 0.0), a.get("done", False), a.get("info") or {}
