"""A reward service is bounded in time and size, answers with numbers only, and its credentials never reach a
file or an error line (tokens in the URL are redacted; rewards.http_headers_env reads header values from the
environment where the request is made)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from coati_ray.errors import ConfigError, RewardError
from coati_ray.experience.reward_sources import HttpReward, check_reward_sources


class Service:
    """A local service whose answer `reply(handler, body)` writes; it records each request's headers."""

    def __init__(self, reply):
        self.seen = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.seen.append(dict(self.headers))
                reply(self, body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/reward"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def answer(payload: bytes, drip_s: float = 0.0):
    def reply(handler, body):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        try:
            if drip_s:
                for i in range(len(payload)):  # one byte at a time: each read is quick, the whole is not
                    handler.wfile.write(payload[i:i + 1])
                    handler.wfile.flush()
                    time.sleep(drip_s)
            else:
                handler.wfile.write(payload)
        except OSError:  # the client gave up
            pass
    return reply


def test_a_slow_drip_cannot_outlast_the_requests_timeout():
    with Service(answer(json.dumps({"rewards": [0.5] * 8}).encode(), drip_s=0.2)) as service:
        start = time.monotonic()
        with pytest.raises(RewardError, match="no complete answer within 1s"):
            HttpReward(service.url, timeout_s=1.0, retries=0)(["p"], ["r"], [{}])
        assert time.monotonic() - start < 3.0  # ~20 s of dripping, each byte well inside a per-read timeout


def test_an_answer_past_the_size_limit_is_refused():
    huge = json.dumps({"rewards": [0.5], "pad": "x" * 300_000}).encode()
    with Service(answer(huge)) as service:
        with pytest.raises(RewardError, match="larger than rewards.http_max_response_bytes=65536"):
            HttpReward(service.url, timeout_s=5, retries=0, max_response_bytes=65536)(["p"], ["r"], [{}])


@pytest.mark.parametrize("rewards, kind", [(["1.0"], "str"), ([True], "bool"), ([None], "NoneType")])
def test_rewards_must_be_numbers(rewards, kind):
    from coati_ray.config.rl import RewardSourcesConfig
    from coati_ray.experience.reward_sources import RewardSources

    import torch

    with Service(answer(json.dumps({"rewards": rewards}).encode())) as service:
        sources = RewardSources(RewardSourcesConfig(http_url=service.url, http_retries=0))
        with pytest.raises(RewardError, match=f"a reward of type {kind} where a number belongs"):
            sources(torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2), ["p"], ["r"], [{}])


def test_credentials_in_the_url_are_sent_but_never_shown_or_written(tmp_path):
    from coati_ray.config import load_config, save_config
    from coati_ray.config.rl import RLConfig

    with Service(lambda handler, body: handler.send_error(503)) as service:
        url = service.url.replace("http://", "http://alice:pa55word@") + "?token=t0ps3cret&model=a"
        with pytest.raises(RewardError) as e:
            HttpReward(url, timeout_s=5, retries=0)(["p"], ["r"], [{}])
        assert "pa55word" not in str(e.value) and "t0ps3cret" not in str(e.value) and "HTTP 503" in str(e.value)
        assert "***@127.0.0.1" in str(e.value) and "token=***" in str(e.value) and "model=a" in str(e.value)
        assert service.seen[0]["Authorization"] == "Basic YWxpY2U6cGE1NXdvcmQ="  # alice:pa55word, sent
    cfg = load_config(RLConfig, None, ["actor.path=m", f"rewards.http_url={url}"])
    save_config(cfg, str(tmp_path / "config.yaml"))
    written = (tmp_path / "config.yaml").read_text()
    assert "pa55word" not in written and "t0ps3cret" not in written and "/reward?token=" in written


def test_headers_from_environment_variables_are_sent_and_never_written(tmp_path, monkeypatch):
    from coati_ray.config import load_config, save_config
    from coati_ray.config.rl import RLConfig, RewardSourcesConfig

    monkeypatch.setenv("REWARD_API_TOKEN", "Bearer s3cr3t-value")
    with Service(answer(json.dumps({"rewards": [0.25]}).encode())) as service:
        cfg = RewardSourcesConfig(http_url=service.url, http_headers_env={"Authorization": "REWARD_API_TOKEN"})
        check_reward_sources(cfg)  # the empty batch before Ray starts carries it too
        assert HttpReward(service.url, headers_env=cfg.http_headers_env)(["p"], ["r"], [{}]) == [0.25]
        assert [seen["Authorization"] for seen in service.seen] == ["Bearer s3cr3t-value"] * 2
    job = load_config(RLConfig, None, ["actor.path=m", f"rewards.http_url={service.url}",
                                        "rewards.http_headers_env={Authorization: REWARD_API_TOKEN}"])
    save_config(job, str(tmp_path / "config.yaml"))
    written = (tmp_path / "config.yaml").read_text()
    assert "REWARD_API_TOKEN" in written and "s3cr3t" not in written
    monkeypatch.delenv("REWARD_API_TOKEN")
    with pytest.raises(ConfigError, match="REWARD_API_TOKEN, not set"):
        check_reward_sources(cfg)
