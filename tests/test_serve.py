"""launch.serve's endpoint, tested with the official `openai` client against Ray Serve on loopback: chat with and
without streaming, n > 1 with a seed, 32 concurrent requests answered in batches (the server's /stats says the
batch sizes), completions with logprobs checked against the model itself, a LoRA checkpoint behind a bearer token,
bad requests answered 4xx in OpenAI's shape while the server keeps serving, and loopback binding by default."""

import json
import os
import threading
import time

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

SERVED = "tiny"
KEY_ENV = "COATI_TEST_SERVE_KEY"
PROMPT = "sort: 9 3 7 1"


def serve_config(model, port, *overrides):
    from coati_ray.config import load_config
    from coati_ray.config.serve import ServeConfig

    cfg = load_config(ServeConfig, None, [f"model={model}", f"port={port}", "num_cpus=0.25", "torch_threads=1",
                                          "batch_wait_timeout_s=0.25", "max_body_bytes=20000", *overrides])
    cfg.validate()
    return cfg


@pytest.fixture(scope="module")
def lora_dir(tiny_llama, tmp_path_factory):
    """LoRA adapters on the tiny llama, saved as peft saves them, with B set away from 0 so they change answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=1.0)
    out = str(tmp_path_factory.mktemp("lora") / "adapters")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def servers(tiny_llama, lora_dir):
    """One Ray and one Serve application for the module: the tiny llama with LoRA adapters (a LoRA run's
    checkpoint), behind a bearer token, on loopback."""
    import ray
    from ray import serve

    from actors.cluster import connect, free_port
    from actors.serve import start_server

    os.environ[KEY_ENV] = "s3cret-token-for-tests"
    connect(num_cpus=2, dashboard=False)
    port = free_port(18300)
    url = start_server(serve_config(tiny_llama, port, f"lora={lora_dir}", f"served_model_name={SERVED}",
                                    f"api_key_env={KEY_ENV}"))
    yield {"base": url, "port": port}
    serve.shutdown()
    ray.shutdown()


@pytest.fixture
def client(servers):
    return openai.OpenAI(base_url=servers["base"], api_key=os.environ[KEY_ENV], max_retries=0, timeout=120)


def policy(model, lora=None, max_new_tokens=6):
    """What launch.generate loads for the same flags: the answers the server must give."""
    from coati_ray.config import load_config
    from coati_ray.config.generate import GenerateConfig
    from coati_ray.inference import Policy

    cfg = load_config(GenerateConfig, None, [f"model={model}", "generation.do_sample=false",
                                             f"generation.max_new_tokens={max_new_tokens}",
                                             *([f"lora={lora}"] if lora else [])])
    cfg.validate()
    return Policy.load(cfg)


def stats(servers):
    return httpx.get(f"http://127.0.0.1:{servers['port']}/stats", timeout=30,
                     headers={"Authorization": f"Bearer {os.environ[KEY_ENV]}"}).json()


def test_models_and_greedy_chat_as_in_training(client, tiny_llama, lora_dir):
    """The answer is launch.generate's greedy answer (the same LoRA checkpoint) to the prompt rendered with the
    model's template; without the adapters the answer differs (they are on)."""
    from coati_ray.inference import render_prompt

    assert [m.id for m in client.models.list().data] == [SERVED]
    out = client.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": PROMPT}],
                                         max_tokens=6, temperature=0)
    adapted = policy(tiny_llama, lora_dir)
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content.strip() == adapted.generate([PROMPT])[0][0].response
    assert out.choices[0].message.content.strip() != policy(tiny_llama).generate([PROMPT])[0][0].response
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens == len(render_prompt(adapted.tokenizer, PROMPT))
    assert 1 <= out.usage.completion_tokens <= 6
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_streaming_matches_the_whole_answer(client):
    kwargs = dict(model=SERVED, messages=[{"role": "user", "content": PROMPT}], max_tokens=8, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # streamed, not sent at once
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_n_seed_top_p_and_stop(client):
    kwargs = dict(model=SERVED, messages=[{"role": "user", "content": PROMPT}], max_tokens=10, temperature=1.0,
                  top_p=0.9, n=3, seed=7)
    first, again = client.chat.completions.create(**kwargs), client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]  # seeded
    assert len({c.message.content for c in first.choices}) > 1  # n independent samples
    assert 3 <= first.usage.completion_tokens <= 30
    text = first.choices[0].message.content
    cut = next((ch for ch in text[1:] if ch.strip()), None)
    if cut:  # a stop sequence taken from the answer itself ends it there, and is not returned
        stopped = client.chat.completions.create(**{**kwargs, "n": 1, "stop": [cut]})
        assert cut not in stopped.choices[0].message.content
        assert stopped.choices[0].finish_reason == "stop"


def test_32_concurrent_requests_are_answered_in_batches(client, servers):
    before = stats(servers)
    answers, errors, latencies = [None] * 32, [], []

    def ask(i):
        t = time.time()
        try:
            answers[i] = client.chat.completions.create(
                model=SERVED, messages=[{"role": "user", "content": f"sort: {i} {31 - i} 5"}], max_tokens=8,
                temperature=0.7, seed=i)
        except Exception as e:  # noqa: BLE001 (collected, then asserted empty)
            errors.append(e)
        latencies.append(time.time() - t)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(32)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    wall = time.time() - t0
    assert not errors and all(a is not None and a.choices[0].message.content is not None for a in answers)
    after = stats(servers)
    sequences, batches = after["sequences"] - before["sequences"], after["batches"] - before["batches"]
    assert sequences == 32
    assert batches <= 8, after  # decoded together, not one by one
    assert after["max_batch_size_seen"] >= 8, after
    print(f"\n32 concurrent requests: {batches} batches, sizes {after['batch_sizes']}, wall {wall:.2f}s, "
          f"latency mean {sum(latencies) / len(latencies):.2f}s max {max(latencies):.2f}s")


def test_completions_logprobs_are_the_models(client, tiny_llama, lora_dir):
    """echo + logprobs (what lm-eval's local-completions sends for multiple choice): each token's log-probability
    equals the model's own, computed here with transformers + peft."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = [1, 40, 81, 123, 197]
    out = client.completions.create(model=SERVED, prompt=ids, max_tokens=1, echo=True, logprobs=1, temperature=0)
    lp = out.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) + 1 and lp.token_logprobs[0] is None
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), lora_dir).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
    for pos in range(1, len(ids)):
        assert lp.token_logprobs[pos] == pytest.approx(float(logp[pos - 1, ids[pos]]), abs=1e-4)
    greedy = int(logp[-1].argmax())
    assert lp.token_logprobs[-1] == pytest.approx(float(logp[-1, greedy]), abs=1e-4)
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == 1
    text = client.completions.create(model=SERVED, prompt=PROMPT, max_tokens=4, temperature=0)
    assert text.choices[0].finish_reason in ("stop", "length") and text.object == "text_completion"


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(client, servers):
    good = dict(model=SERVED, messages=[{"role": "user", "content": PROMPT}], max_tokens=2)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(**{**good, "model": "gpt-4o"})
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**{**good, "messages": [{"role": "wizard", "content": "hi"}]})
    assert e.value.body["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**{**good, "messages": [{"role": "user"}]})
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**{**good, "max_tokens": 100_000})
    assert e.value.body["code"] == "context_length_exceeded" and "maximum context length is 512" in e.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(**{**good, "temperature": 5})
    url, auth = servers["base"] + "/chat/completions", {"Authorization": f"Bearer {os.environ[KEY_ENV]}"}
    big = httpx.post(url, json={**good, "messages": [{"role": "user", "content": "x" * 30000}]}, timeout=30,
                     headers=auth)
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    broken = httpx.post(url, content=b"{not json", headers={"content-type": "application/json", **auth}, timeout=30)
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    missing = httpx.get(servers["base"] + "/nothing", timeout=30)
    assert missing.status_code == 404 and "error" in missing.json()
    assert client.chat.completions.create(**good).choices[0].message.content is not None  # still serving


def test_bearer_token_is_required(servers):
    kwargs = dict(model=SERVED, messages=[{"role": "user", "content": PROMPT}], max_tokens=2)
    for key in ("wrong", ""):
        anonymous = openai.OpenAI(base_url=servers["base"], api_key=key or "x", max_retries=0, timeout=60,
                                  default_headers={} if key else {"Authorization": ""})
        with pytest.raises(openai.AuthenticationError) as e:
            anonymous.chat.completions.create(**kwargs)
        assert e.value.body["code"] == "invalid_api_key"
    assert httpx.get(servers["base"] + "/models", timeout=30).status_code == 401
    assert httpx.get(f"http://127.0.0.1:{servers['port']}/health", timeout=30).status_code == 200


def test_binds_loopback_only(servers):
    import psutil

    from coati_ray.config.serve import ServeConfig

    assert ServeConfig.__dataclass_fields__["host"].default == "127.0.0.1"
    listening = [c.laddr.ip for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == servers["port"]]
    assert listening and all(ip == "127.0.0.1" for ip in listening), listening


@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0"], "reachable from other machines and no bearer token is set"),
    (["--api-key-env", "COATI_SURELY_UNSET_VAR"], "COATI_SURELY_UNSET_VAR is unset or empty"),
    (["--max-replicas", "2", "--min-replicas", "3"], "min_replicas (3) <= max_replicas (2)"),
    (["--reward-model", "x"], "unrecognized arguments"),
])
def test_cli_refuses_bad_settings_before_ray(tiny_llama, args, message, capsys, monkeypatch):
    import actors.cluster

    monkeypatch.delenv("COATI_SURELY_UNSET_VAR", raising=False)
    monkeypatch.setattr(actors.cluster, "connect", lambda *a, **k: pytest.fail("Ray was reached"))
    from launch.serve import main

    try:
        rc = main(["--model", tiny_llama, *args])
    except SystemExit as e:  # argparse's own refusals
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_request_checks_alone():
    """The wire-format checks without a server: what each bad field is answered."""
    from coati_ray.serving import openai_api as api

    with pytest.raises(api.APIError) as e:
        api.parse_chat({"model": "m", "messages": [{"role": "user", "content": "a"}], "stop": ["1"] * 5}, "m", 4, 64)
    assert e.value.param == "stop"
    with pytest.raises(api.APIError) as e:
        api.parse_chat({"model": "m", "messages": [{"role": "user", "content": "a"}], "n": 9}, "m", 4, 64)
    assert e.value.param == "n"
    req = api.parse_chat({"model": "m", "messages": [{"role": "developer", "content": [{"type": "text",
                                                                                         "text": "be brief"}]},
                                                       {"role": "user", "content": "a"}], "stop": "\n"}, "m", 4, 64)
    assert req.messages[0] == {"role": "system", "content": "be brief"} and req.sampling.stop == ["\n"]
    assert api.resolve_max_tokens(10, None, 64, 256, "messages") == 54
    with pytest.raises(api.APIError) as e:
        api.resolve_max_tokens(60, 10, 64, 256, "messages")
    assert e.value.code == "context_length_exceeded"
    assert json.loads(api.sse({"a": 1})[6:]) == {"a": 1}


def test_engine_rows_keep_their_own_sampling_and_streams(tiny_llama):
    """The batched decode alone: a greedy row is the training generator's answer whatever shares its batch, a
    seeded row's answer does not depend on its batch either, and a stop sequence ends a row without its text."""
    from coati_ray.data.template import ChatFormat
    from coati_ray.inference import render_prompt
    from coati_ray.serving.engine import Engine, Row

    def run(rows):
        texts, reasons = [""] * len(rows), [None] * len(rows)
        for step in engine.steps(rows):
            for i, s in enumerate(step):
                if s is not None:
                    texts[i] += s.text
                    reasons[i] = s.finish_reason or reasons[i]
        return texts, reasons

    plain = policy(tiny_llama, max_new_tokens=8)
    engine = Engine(plain.actor.model, plain.tokenizer, ChatFormat.of(plain.tokenizer).stop_token_ids, plain.device)
    long_ids, short_ids = render_prompt(plain.tokenizer, PROMPT), render_prompt(plain.tokenizer, "sort: 1")
    greedy = Row(long_ids, 8, temperature=0.0, strip_lead=True)
    seeded = Row(short_ids, 8, temperature=0.9, top_p=0.8, seed=5, strip_lead=True)
    alone_greedy, alone_seeded = run([greedy])[0][0], run([seeded])[0][0]
    together, reasons = run([seeded, Row(long_ids, 3, temperature=1.0, seed=9), greedy])
    assert together[2] == alone_greedy and alone_greedy.strip() == plain.generate([PROMPT])[0][0].response
    assert together[0] == alone_seeded and reasons[1] == "length"
    cut = next((ch for ch in alone_greedy[1:] if ch.strip()), None)
    if cut:
        text, reason = run([Row(long_ids, 8, temperature=0.0, stop=(cut,), strip_lead=True)])
        assert text[0] == alone_greedy[:alone_greedy.index(cut, 1)] and reason == ["stop"]
