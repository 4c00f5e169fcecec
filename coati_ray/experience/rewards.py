"""Training reward sources: the reward model, a Python function, an HTTP service, and their weighted sum.

    rewards = RewardSources(cfg.rewards, reward_model)             # in a maker
    scores, parts = rewards(sequences, mask, prompts, responses, rows)

A function is `module:function(prompts, responses, rows) -> list[float]`: prompts and responses are
texts, rows the prompt data rows (every field of the prompt file, e.g. a reference answer). An HTTP
service is POSTed `{"prompts": [...], "responses": [...], "rows": [...]}` as JSON and answers
`{"rewards": [...]}`; it must also answer an empty batch, which is how the job checks it before Ray
starts. The gold scorer (`data.gold_task`) is not a source: it only judges held-out answers.
"""

from __future__ import annotations

import http.client
import importlib
import inspect
import json
import numbers
import os
import socket
import threading
import time
import urllib.parse
from typing import Callable, Optional

import torch

from coati_ray.errors import ConfigError, RewardError
from coati_ray.utils.redact import redact_url

RewardFunction = Callable[[list, list, list], list]


def load_reward_function(spec: str, key: str = "rewards.function") -> RewardFunction:
    """Import `module:function`; a ConfigError (one line) when the path or the signature is wrong."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ConfigError(f"config error: {key}='{spec}' is not 'module:function'; e.g. coati_ray.tasks.sorting:reward")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"config error: {key}: cannot import '{module_name}' ({e}); put the module on the "
                          "Python path (the job's working directory is)") from None
    except Exception as e:  # the module itself fails (a syntax error, an exception at import time)
        raise ConfigError(f"config error: {key}: importing '{module_name}' raised {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}; fix the module") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"config error: {key}: '{module_name}' has no function '{name}'; check the name after ':'")
    try:
        inspect.signature(fn).bind(["p"], ["r"], [{}])
    except (TypeError, ValueError):  # ValueError: no signature to read (some builtins)
        raise ConfigError(f"config error: {key}: {spec} cannot be called as function(prompts, responses, rows); "
                          "give it those three parameters") from None
    return fn


def check_reward_function(spec: str, key: str = "rewards.function") -> None:
    load_reward_function(spec, key)


def env_headers(headers_env: dict, where: str = "rewards.http_headers_env") -> dict:
    """{header: environment variable} -> {header: its value}, read here and now (never stored or written)."""
    missing = [var for var in headers_env.values() if var not in os.environ]
    if missing:
        raise RewardError(f"reward error: {where} names environment variable(s) {', '.join(missing)}, not set in "
                          f"this process (on {socket.gethostname()}); export them where the job and its makers run")
    return {header: os.environ[var] for header, var in headers_env.items()}


class HttpReward:
    """A reward service: one POST per batch, bounded in time (the whole request, not each socket read) and in
    size, with retries; header values from environment variables; one line naming the URL (credentials
    redacted) when it fails."""

    def __init__(self, url: str, timeout_s: float = 30.0, retries: int = 2, headers_env: Optional[dict] = None,
                 max_response_bytes: int = 4 << 20):
        self.url, self.timeout_s, self.retries = url, timeout_s, retries
        self.headers_env, self.max_response_bytes = dict(headers_env or {}), max_response_bytes
        self.shown = redact_url(url)

    def __call__(self, prompts: list, responses: list, rows: list) -> list:
        try:
            body = json.dumps({"prompts": prompts, "responses": responses, "rows": rows}).encode()
        except (TypeError, ValueError) as e:
            raise RewardError(f"reward error: the batch for {self.shown} is not JSON ({e}); keep prompt rows to "
                              "JSON types") from None
        headers = {"Content-Type": "application/json", **env_headers(self.headers_env)}
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(2.0 ** (attempt - 1), 10.0))
            try:
                answer = json.loads(self._post(body, headers))
                rewards = answer.get("rewards") if isinstance(answer, dict) else None
                if not isinstance(rewards, list):
                    raise RewardError(f"reward error: {self.shown} answered without a 'rewards' list; it must answer "
                                      "{\"rewards\": [one number per response]}")
                return rewards
            except RewardError:
                raise
            except (OSError, ValueError, http.client.HTTPException) as e:
                last = str(e) if isinstance(e, _TooLarge) else f"{type(e).__name__}: {e}"
        raise RewardError(f"reward error: POST {self.shown} failed {self.retries + 1} time(s) ({last}); check that "
                          "the reward service runs and answers within rewards.http_timeout_s")

    def _post(self, body: bytes, headers: dict) -> bytes:
        """One request; the connection is shut at the deadline whatever it is doing, so a service that drips
        its answer a byte at a time still ends within timeout_s; a body past max_response_bytes is refused."""
        parts = urllib.parse.urlsplit(self.url)
        if parts.username or parts.password:
            import base64

            user = urllib.parse.unquote(parts.username or "") + ":" + urllib.parse.unquote(parts.password or "")
            headers = {**headers, "Authorization": "Basic " + base64.b64encode(user.encode()).decode()}
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname, parts.port, timeout=self.timeout_s)
        held: list = []  # the socket, kept: http.client hands it to the response and forgets it
        fired = threading.Event()  # set before the socket is shut, so a read cut short always sees it
        timer = threading.Timer(self.timeout_s, _shut, args=(conn, held, fired))
        timer.start()
        try:
            conn.connect()
            held.append(conn.sock)
            path = parts.path or "/"
            conn.request("POST", path + (f"?{parts.query}" if parts.query else ""), body=body, headers=headers)
            response = conn.getresponse()
            if response.status >= 400:
                raise http.client.HTTPException(f"HTTP {response.status} {response.reason}")
            data = response.read(self.max_response_bytes + 1)
            if len(data) > self.max_response_bytes:
                raise _TooLarge(f"the answer is larger than rewards.http_max_response_bytes="
                                f"{self.max_response_bytes}")
            if fired.is_set():
                raise TimeoutError(f"no complete answer within {self.timeout_s:g}s")
            return data
        except (OSError, http.client.HTTPException) as e:  # a read cut short: IncompleteRead, reset, ...
            if fired.is_set():
                raise TimeoutError(f"no complete answer within {self.timeout_s:g}s") from None
            raise e
        finally:
            timer.cancel()
            conn.close()

    def check(self) -> None:
        """Before Ray starts: the service answers an empty batch (one try, at most 10 seconds)."""
        try:
            HttpReward(self.url, min(self.timeout_s, 10.0), 0, self.headers_env, self.max_response_bytes)([], [], [])
        except RewardError as e:
            raise ConfigError(f"config error: rewards.http_url: {str(e).split(': ', 1)[1]}") from None


class _TooLarge(ValueError):
    pass


def _shut(conn, held: list, fired: threading.Event) -> None:
    """At the deadline: end the connection under a blocked connect or read (which then fails at once, or
    returns what it has: `fired` is set first, so the caller knows it was cut short)."""
    fired.set()
    for sock in held or [getattr(conn, "sock", None)]:
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class RewardSources:
    """The weighted sum of the configured sources; `needs_text` tells the maker to decode responses."""

    def __init__(self, cfg, reward_model=None):
        self.cfg, self.reward_model = cfg, reward_model
        self.function = load_reward_function(cfg.function) if cfg.function else None
        self.http = HttpReward(cfg.http_url, cfg.http_timeout_s, cfg.http_retries, cfg.http_headers_env,
                               cfg.http_max_response_bytes) if cfg.http_url else None

    @property
    def needs_text(self) -> bool:
        return self.function is not None or self.http is not None

    def __call__(self, sequences: torch.Tensor, attention_mask: torch.Tensor, prompts: Optional[list] = None,
                 responses: Optional[list] = None, rows: Optional[list] = None) -> tuple[torch.Tensor, dict]:
        """sequences, attention_mask: (B, T) -> (scores (B,) float32, {source: (B,)} before weighting)."""
        B = sequences.size(0)
        parts: dict[str, torch.Tensor] = {}
        if self.reward_model is not None:
            parts["model"] = self.reward_model(sequences, attention_mask).float().cpu()
        if self.function is not None:
            try:
                values = self.function(prompts, responses, rows)
            except Exception as e:  # the user's code: one line that names it, not a traceback through Ray
                raise RewardError(f"reward error: {self.cfg.function} raised {type(e).__name__}: "
                                  f"{(str(e).splitlines() or [''])[0][:200]}; fix the function (it is called with "
                                  "lists of prompts, responses and rows)") from None
            parts["function"] = _as_scores(values, B, self.cfg.function)
        if self.http is not None:
            parts["http"] = _as_scores(self.http(prompts, responses, rows), B, self.http.shown)
        weights = {"model": self.cfg.model_weight, "function": self.cfg.function_weight, "http": self.cfg.http_weight}
        total = sum(weights[name] * value for name, value in parts.items())
        return total.to(sequences.device), parts


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
    """What can only be checked by trying, before Ray starts: the reward service answers."""
    if cfg.http_url:
        try:
            env_headers(cfg.http_headers_env)
        except RewardError as e:
            raise ConfigError(f"config error: {str(e).split(': ', 1)[1]}") from None
        HttpReward(cfg.http_url, cfg.http_timeout_s, cfg.http_retries, cfg.http_headers_env,
                   cfg.http_max_response_bytes).check()
