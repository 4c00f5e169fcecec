"""`make serve`'s command end to end: `python -m launch.serve` as a user starts it (its own embedded Ray), the
README's curl and openai examples against it, then Ctrl-C stops it and its Ray."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")


@pytest.mark.slow
def test_launch_serve_answers_the_readmes_examples_and_stops_on_ctrl_c(tiny_llama, tmp_path):
    from actors.cluster import free_port

    port = free_port(18600)
    url = f"http://127.0.0.1:{port}/v1"
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "launch.serve", "--model", tiny_llama, "--served-model-name",
                               "coati-demo", "--port", str(port), "--no-dashboard", "--num-cpus", "0.5"],
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        else:
            pytest.fail("launch.serve did not come up: " + (tmp_path / "serve.log").read_text()[-2000:])
        body = '{"model": "coati-demo", "messages": [{"role": "user", "content": "sort: 9 3 7 1"}], "temperature": 0}'
        if shutil.which("curl"):
            reply = subprocess.run(["curl", "-s", f"{url}/chat/completions", "-H", "Content-Type: application/json",
                                    "-d", body], capture_output=True, text=True, timeout=60)
            assert '"object":"chat.completion"' in reply.stdout.replace(" ", ""), reply.stdout
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        answer = client.chat.completions.create(model="coati-demo", temperature=0, max_tokens=8,
                                                messages=[{"role": "user", "content": "sort: 9 3 7 1"}])
        assert answer.usage.completion_tokens >= 1
        chunks = list(client.chat.completions.create(model="coati-demo", stream=True, n=2, seed=1, max_tokens=8,
                                                     messages=[{"role": "user", "content": "sort: 12 5 30 8"}]))
        assert {c.index for chunk in chunks for c in chunk.choices} == {0, 1}
        assert "serving 'coati-demo' at " + url in (tmp_path / "serve.log").read_text()
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = server.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            raise
    assert code == 0, (tmp_path / "serve.log").read_text()[-2000:]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
