"""Credentials never leave the process that needs them: what may be written (config.yaml, reports, W&B, error
lines) goes through here first."""

from __future__ import annotations

import urllib.parse
from typing import Any, Optional

SECRET_QUERY_KEYS = ("token", "key", "apikey", "api_key", "access_token", "auth", "secret", "password", "sig",
                     "signature", "credential")


def redact_url(url: Optional[str]) -> Optional[str]:
    """`url` as it may be written anywhere (config.yaml, reports, error lines): a password or user in it, and
    query parameters that look like credentials, replaced by '***'."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if any(any(s in k.lower() for s in SECRET_QUERY_KEYS) for k, _ in query):
        query = [(k, "***" if any(s in k.lower() for s in SECRET_QUERY_KEYS) else v) for k, v in query]
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, urllib.parse.urlencode(query, safe="*"),
                                        parts.fragment))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_config(data: Any) -> Any:
    """A config mapping (to_dict) with every URL credential redacted (keys `url` or ending in `_url`)."""
    if isinstance(data, dict):
        return {k: redact_url(v) if isinstance(k, str) and (k == "url" or k.endswith("_url")) and isinstance(v, str)
                else redact_config(v) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_config(v) for v in data]
    return data
