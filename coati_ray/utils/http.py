"""One POST to a user's service (a reward service, an HTTP environment), as both need it (no Ray here).

The URL is the user's, whole: its query string is kept (`http://host/env?token=...` posts to
`/env/reset?token=...`), and credentials in it (`http://user:pass@host/...`) are sent as an
`Authorization: Basic` header, never on the request line, and shown redacted in every error. The request is
bounded in time as a whole (a service that drips its answer a byte at a time still ends at the deadline) and
in size. A redirect is never followed: a 3xx is an error naming where it pointed, so that the user gives the
final URL (following it would send the body and the credentials wherever the service points, and a 302 or
303 turns a POST into a GET without its body, whose answer would be taken as the step or the rewards).
"""

from __future__ import annotations

import base64
import http.client
import socket
import threading
import urllib.parse
from typing import Optional

from coati_ray.utils.redact import redact_url


class BadUrl(ValueError):
    """The URL is what to fix (it redirects, or its credentials clash with a header): not a failure to retry."""


class Redirected(BadUrl):
    """The service answered a 3xx."""


class TooLarge(ValueError):
    """The answer is larger than the limit."""


def endpoint(url: str, path: str) -> str:
    """`url` with `path` appended to its path, its query string kept and its fragment dropped:
    endpoint('http://h/env?token=t', 'step') == 'http://h/env/step?token=t'."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/" + path.lstrip("/"),
                                    parts.query, ""))


def basic_auth(url: str) -> dict:
    """{'Authorization': 'Basic ...'} from the user and password in `url` (percent-decoded), or {}."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return {}
    user = urllib.parse.unquote(parts.username or "") + ":" + urllib.parse.unquote(parts.password or "")
    return {"Authorization": "Basic " + base64.b64encode(user.encode()).decode()}


def post(url: str, body: bytes, headers: dict, timeout_s: float, max_bytes: int,
         size_key: Optional[str] = None, url_key: str = "the URL") -> bytes:
    """POST `body` to `url`; the answer's bytes when it is a 2xx within `timeout_s` (the whole request) and at
    most `max_bytes`. Raises BadUrl (a 3xx: Redirected; credentials in the URL and an Authorization header),
    http.client.HTTPException (another status), TooLarge, TimeoutError or OSError, each one line with the URL
    redacted. `size_key` / `url_key`: the config keys the errors name."""
    parts = urllib.parse.urlsplit(url)
    headers = _with_credentials(url, headers)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, parts.port, timeout=timeout_s)
    held: list = []  # the socket, kept: http.client hands it to the response and forgets it
    fired = threading.Event()  # set before the socket is shut, so a read cut short always sees it
    timer = threading.Timer(timeout_s, _shut, args=(conn, held, fired))
    timer.daemon = True
    timer.start()
    try:
        conn.connect()
        held.append(conn.sock)
        conn.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body=body,
                     headers=headers)
        response = conn.getresponse()
        _check_status(response, url, url_key)
        data = response.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise TooLarge(f"the answer is larger than {f'{size_key}=' if size_key else ''}{max_bytes} bytes")
        if fired.is_set():
            raise TimeoutError(f"no complete answer within {timeout_s:g}s")
        return data
    except (OSError, http.client.HTTPException) as e:  # a read cut short: IncompleteRead, reset, ...
        if fired.is_set():
            raise TimeoutError(f"no complete answer within {timeout_s:g}s") from None
        raise e
    finally:
        timer.cancel()
        conn.close()


def _with_credentials(url: str, headers: dict) -> dict:
    """`headers` plus the URL's credentials as Basic auth; both at once is ambiguous, so an error."""
    auth = basic_auth(url)
    if auth and any(h.lower() == "authorization" for h in headers):
        raise BadUrl(f"{redact_url(url)} has credentials in it and an Authorization header is set too; give "
                     "one of them")
    return {**headers, **auth}


def _check_status(response, url: str, url_key: str) -> None:
    """A 3xx -> Redirected naming the status and where it points (resolved, redacted); 4xx/5xx -> HTTPException."""
    if 300 <= response.status < 400:
        location = response.getheader("Location")
        where = redact_url(urllib.parse.urljoin(url, location.strip()))[:150] if location else "no Location"
        raise Redirected(f"redirected (HTTP {response.status}) to {where}, not followed: give the final URL in "
                         f"{url_key} (POST {redact_url(url)})")
    if not 200 <= response.status < 300:
        raise http.client.HTTPException(f"HTTP {response.status} {response.reason}")


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
