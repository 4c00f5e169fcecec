"""A reward service over HTTP: one POST per batch, bounded in time and size, with retries (no Ray here).

The service is POSTed `{"prompts": [...], "responses": [...], "rows": [...]}` as JSON and answers
`{"rewards": [...]}`; it must also answer an empty batch, which is how the job checks it before Ray starts.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from typing import Optional

from coati_ray.errors import ConfigError, RewardError
from coati_ray.utils.http import BadUrl, TooLarge
from coati_ray.utils.http import post as http_post
from coati_ray.utils.redact import redact_url

# the config keys named in error lines for the shorthand `rewards.http_*` keys
SHORTHAND_KEYS = {"url": "rewards.http_url", "timeout_s": "rewards.http_timeout_s",
                  "max_response_bytes": "rewards.http_max_response_bytes", "headers_env": "rewards.http_headers_env"}


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
                 max_response_bytes: int = 4 << 20, keys: Optional[dict] = None):
        """`keys`: the config keys to name in error lines ({url, timeout_s, max_response_bytes, headers_env})."""
        self.url, self.timeout_s, self.retries = url, timeout_s, retries
        self.headers_env, self.max_response_bytes = dict(headers_env or {}), max_response_bytes
        self.keys = keys or SHORTHAND_KEYS
        self.shown = redact_url(url)

    def __call__(self, prompts: list, responses: list, rows: list) -> list:
        try:
            body = json.dumps({"prompts": prompts, "responses": responses, "rows": rows}).encode()
        except (TypeError, ValueError) as e:
            raise RewardError(f"reward error: the batch for {self.shown} is not JSON ({e}); keep prompt rows to "
                              "JSON types") from None
        headers = {"Content-Type": "application/json", **env_headers(self.headers_env, self.keys["headers_env"])}
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
            except BadUrl as e:  # a redirect, ambiguous credentials: the URL to fix, not a failure to retry
                raise RewardError(f"reward error: {e}") from None
            except (OSError, ValueError, http.client.HTTPException) as e:
                last = str(e) if isinstance(e, TooLarge) else f"{type(e).__name__}: {e}"
        raise RewardError(f"reward error: POST {self.shown} failed {self.retries + 1} time(s) ({last}); check that "
                          f"the reward service runs and answers within {self.keys['timeout_s']}")

    def _post(self, body: bytes, headers: dict) -> bytes:
        """One request (coati_ray/utils/http.py): bounded as a whole by timeout_s and by max_response_bytes,
        the URL's query kept and its credentials sent as Basic auth, a redirect never followed."""
        return http_post(self.url, body, headers, self.timeout_s, self.max_response_bytes,
                         self.keys["max_response_bytes"], self.keys["url"])

    def check(self) -> None:
        """Before Ray starts: the service answers an empty batch (one try, at most 10 seconds)."""
        try:
            HttpReward(self.url, min(self.timeout_s, 10.0), 0, self.headers_env, self.max_response_bytes,
                       self.keys)([], [], [])
        except RewardError as e:
            raise ConfigError(f"config error: {self.keys['url']}: {str(e).split(': ', 1)[1]}") from None
