"""The services the job calls (an HTTP environment, an HTTP reward) against real servers on loopback: a redirect is
an error naming where it points, never followed; the URL's query string and credentials reach the service (the
credentials as Basic auth) and never an error line; the whole call is bounded in time. And the rendezvous
store the groups meet through stays exact when its threaded actor serves many members at once."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from coati_ray.errors import ConfigError, RewardError
from coati_ray.experience.environments import EnvironmentCalls, EnvironmentFailed, HttpEnvironment
from coati_ray.experience.reward_http import HttpReward

SECRETS = ("pa55word", "t0ps3cret", "hunter2", "zzz")
STEP = {"observation": "taken from the redirect", "reward": 1.0, "done": True, "info": {}}


class Server:
    """A service on loopback: POST answers `post(path) -> (status, headers, body)`; a GET (where a followed
    302 or 303 lands) answers STEP, so following one would look like a success. Every request is recorded as
    (method, path, headers)."""

    def __init__(self, post):
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status, headers, body):
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append(("POST", self.path, dict(self.headers)))
                self._answer(*post(self.path))

            def do_GET(self):
                outer.requests.append(("GET", self.path, dict(self.headers)))
                self._answer(200, {}, json.dumps({**STEP, "rewards": [1.0]}).encode())

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def ok(payload: dict):
    return lambda path: (200, {"Content-Type": "application/json"}, json.dumps(payload).encode())


def redirect(status: int, location: str):
    return lambda path: (status, {"Location": location}, b"")


def first_line(call) -> str:
    """What an episode's error line says when `call` fails (EnvironmentCalls: type, first line)."""
    calls = EnvironmentCalls(timeout_s=10)
    try:
        [out] = calls.map([call])
    finally:
        calls.close()
    assert isinstance(out, EnvironmentFailed), f"the call succeeded: {out}"
    return str(out)


# ---- the HTTP environment -------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_an_environment_that_redirects_is_an_error_naming_where_never_followed(status):
    with Server(redirect(status, "/elsewhere?token=zzz")) as server:
        env = HttpEnvironment(server.base.replace("http://", "http://alice:hunter2@") + "/env", "e0", timeout_s=5)
        line = first_line(lambda: env.step("1 + 1"))
        assert f"redirected (HTTP {status}) to http://***@127.0.0.1:" in line and "/elsewhere?token=***" in line
        assert "give the final URL in rollout.url" in line and "\n" not in line
        assert not any(s in line for s in SECRETS)
        assert [(m, p) for m, p, _ in server.requests] == [("POST", "/env/step")]  # nothing went to /elsewhere


def test_an_environments_query_string_and_credentials_reach_it_as_the_url_and_basic_auth():
    with Server(ok(STEP)) as server:
        url = server.base.replace("http://", "http://alice:pa55word@") + "/env/?token=t0ps3cret&v=2"
        env = HttpEnvironment(url, "e0", timeout_s=5)
        env.reset({"prompt": "p"})
        assert env.step("x") == ("taken from the redirect", 1.0, True, {})
        assert [(m, p) for m, p, _ in server.requests] == [("POST", "/env/reset?token=t0ps3cret&v=2"),
                                                           ("POST", "/env/step?token=t0ps3cret&v=2")]
        assert {h["Authorization"] for _, _, h in server.requests} == {"Basic YWxpY2U6cGE1NXdvcmQ="}


def test_an_environments_credentials_never_show_in_a_failure_or_config_yaml(tmp_path):
    from coati_ray.config import load_config, save_config
    from coati_ray.config.rl import RLConfig

    with Server(lambda path: (503, {}, b"down")) as server:
        url = server.base.replace("http://", "http://alice:pa55word@") + "/env?token=t0ps3cret"
        line = first_line(lambda: HttpEnvironment(url, "e0", timeout_s=5).step("x"))
        assert "HTTP 503" in line and not any(s in line for s in SECRETS)
    cfg = load_config(RLConfig, None, ["actor.path=m", "rollout.environment=http", f"rollout.url={url}"])
    save_config(cfg, str(tmp_path / "config.yaml"))
    written = (tmp_path / "config.yaml").read_text()
    assert "***@127.0.0.1" in written and "/env?token=***" in written and not any(s in written for s in SECRETS)


def test_an_environment_that_drips_its_answer_ends_at_the_timeout():
    """rollout.timeout_s bounds the whole call, not each socket read (a thread left dripping would hold a
    worker of the pool for as long as the service likes)."""
    def drip(handler):
        body = json.dumps(STEP).encode()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        try:
            for i in range(len(body)):
                handler.wfile.write(body[i:i + 1])
                handler.wfile.flush()
                time.sleep(0.2)
        except OSError:  # the client gave up
            pass

    class Dripping(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            drip(self)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Dripping)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="no complete answer within 1s"):
            HttpEnvironment(f"http://127.0.0.1:{server.server_port}", "e0", timeout_s=1.0).step("x")
        assert time.monotonic() - start < 3.0  # ~20 s of dripping
    finally:
        server.shutdown()
        server.server_close()


# ---- the HTTP reward ------------------------------------------------------------------------------------------

def test_a_reward_service_that_redirects_is_one_clear_error_neither_followed_nor_retried():
    with Server(redirect(302, "http://bob:hunter2@127.0.0.1:9/rewards?key=zzz")) as server:
        url = server.base.replace("http://", "http://alice:pa55word@") + "/reward?token=t0ps3cret"
        with pytest.raises(RewardError) as e:
            HttpReward(url, timeout_s=5, retries=2)(["p"], ["r"], [{}])
        line = str(e.value)
        assert "redirected (HTTP 302) to http://***@127.0.0.1:9/rewards?key=***" in line
        assert "give the final URL in rewards.http_url" in line and "\n" not in line
        assert not any(s in line for s in SECRETS)
        assert [(m, p) for m, p, _ in server.requests] == [("POST", "/reward?token=t0ps3cret")]  # once, not followed
        with pytest.raises(ConfigError, match=r"config error: rewards.http_url: redirected \(HTTP 302\)"):
            HttpReward(url, timeout_s=5).check()  # before Ray starts


def test_a_reward_urls_query_string_and_credentials_reach_the_service():
    with Server(ok({"rewards": [0.5]})) as server:
        url = server.base.replace("http://", "http://alice:pa55word@") + "/reward?token=t0ps3cret"
        assert HttpReward(url, timeout_s=5, retries=0)(["p"], ["r"], [{}]) == [0.5]
        [(method, path, headers)] = server.requests
        assert (method, path, headers["Authorization"]) == ("POST", "/reward?token=t0ps3cret",
                                                            "Basic YWxpY2U6cGE1NXdvcmQ=")


def test_credentials_in_the_url_and_an_authorization_header_at_once_are_one_error(monkeypatch):
    monkeypatch.setenv("REWARD_API_TOKEN", "Bearer abc")
    with Server(ok({"rewards": [0.5]})) as server:
        url = server.base.replace("http://", "http://alice:pa55word@") + "/reward"
        with pytest.raises(RewardError, match="credentials in it and an Authorization header") as e:
            reward = HttpReward(url, timeout_s=5, retries=2, headers_env={"authorization": "REWARD_API_TOKEN"})
            reward(["p"], ["r"], [{}])
        assert "pa55word" not in str(e.value) and server.requests == []


# ---- the rendezvous store -------------------------------------------------------------------------------------

@pytest.fixture
def switch_often():
    """Threads switch every microsecond (not every 5 ms), so that a read-modify-write without its lock loses
    updates within milliseconds, as a busy actor's threads do over a long run."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def hammer(n_threads: int, work) -> list:
    """work(i) on n threads released at once; their results (the first exception raised in one, raised here)."""
    start, results = threading.Barrier(n_threads), [None] * n_threads

    def run(i):
        start.wait()
        try:
            results[i] = work(i)
        except Exception as e:  # noqa: BLE001 (re-raised below, in the test's thread)
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


def test_the_rendezvous_adds_exactly_under_concurrent_members(switch_often):
    """torch numbers a group's members by what `add` returns: N x M adds sum exactly, each value handed out
    once."""
    from actors.rendezvous import KeyValues

    store, N, M = KeyValues(), 8, 2000
    seen = hammer(N, lambda i: [store.add("s/count", 1) for _ in range(M)])
    assert int(store.get("s/count")) == N * M
    assert sorted(v for values in seen for v in values) == list(range(1, N * M + 1))


def test_the_rendezvous_compare_set_has_one_winner(switch_often):
    from actors.rendezvous import KeyValues

    store, N = KeyValues(), 16
    for k in range(200):
        won = hammer(N, lambda i: store.compare_set(f"s/{k}", b"", f"member{i}".encode()) == f"member{i}".encode())
        assert sum(won) == 1, f"key {k}: {sum(won)} winners"
        assert store.compare_set(f"s/{k}", b"other", b"late") == store.get(f"s/{k}")  # not expected: unchanged


def test_the_rendezvous_counts_and_forgets_while_members_set(switch_often):
    from actors.rendezvous import KeyValues

    store = KeyValues()

    def work(i):
        if i == 0:
            return [store.count("s/") for _ in range(300)] + [store.forget("t/") for _ in range(300)]
        return [store.set(f"s/{i}/{j}", b"1") or store.set(f"t/{i}/{j}", b"1") for j in range(3000)]

    hammer(4, work)  # a walk over the keys while they change raised "dictionary changed size during iteration"
    assert store.count("s/") == 3 * 3000
