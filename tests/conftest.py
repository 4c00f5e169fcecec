"""Shared fixtures: the tiny tokenizer/models (built once, from the repo's text) and quiet, 1-thread torch."""

from __future__ import annotations

import os
import warnings

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")


def data_path(*parts: str) -> str:
    return os.path.join(REPO, "data", *parts)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    import torch

    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> str:
    """Directory with tokenizer/ and models/tiny-<family>/: the repo's (from `make assets`) or built now."""
    repo_assets = os.path.join(REPO, "assets")
    if os.path.isfile(os.path.join(repo_assets, ".built")):
        return repo_assets
    from coati_ray.models.tiny import build_assets

    out = str(tmp_path_factory.mktemp("assets"))
    build_assets(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama(assets) -> str:
    return os.path.join(assets, "models", "tiny-llama")


@pytest.fixture(scope="session")
def tiny_chatml(assets) -> str:
    """A tiny qwen2 with ChatML's special tokens and Qwen2-Instruct's template (a default system turn)."""
    return os.path.join(assets, "models", "tiny-qwen2-chatml")


@pytest.fixture(scope="session")
def tiny_llama3(assets) -> str:
    """A tiny llama with Llama-3-Instruct's header template, <|eot_id|> as EOS and no pad token."""
    return os.path.join(assets, "models", "tiny-llama3")


SYSTEM = "You sort numbers from smallest to largest."


@pytest.fixture(scope="session")
def chat_data(tmp_path_factory) -> dict:
    """The sorting task in HF/OpenAI role layout with a system turn: sft (messages), pref (TRL's conversational
    prompt/chosen/rejected), prompts (messages), each a train and an eval file."""
    import json

    out = tmp_path_factory.mktemp("chat_data")
    paths = {}

    def rows(kind, split):
        with open(data_path(kind, f"{split}.jsonl"), encoding="utf-8") as f:
            return [json.loads(line) for line in f][:200]

    def system_user(text):
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]

    for split in ("train", "eval"):
        made = {
            "sft": [{"messages": system_user(r["messages"][0]["content"]) +
                     [{"role": "assistant", "content": r["messages"][1]["content"]}]} for r in rows("sft", split)],
            "pref": [{"prompt": system_user(r["prompt"]), "chosen": [{"role": "assistant", "content": r["chosen"]}],
                      "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows("pref", split)],
            "prompts": [{"messages": system_user(r["prompt"])} for r in rows("prompts", split)],
        }
        for kind, items in made.items():
            path = out / f"{kind}_{split}.jsonl"
            path.write_text("".join(json.dumps(item) + "\n" for item in items))
            paths[f"{kind}_{split}"] = str(path)
    return paths


@pytest.fixture(scope="session")
def tokenizer(tiny_llama):
    from coati_ray.models.loading import load_tokenizer

    return load_tokenizer(tiny_llama)


@pytest.fixture(scope="session")
def reward_dir(tiny_llama, tmp_path_factory) -> str:
    """A reward model (tiny llama backbone + a seeded random head) laid out as the RM stage saves it."""
    import torch

    from coati_ray.models import RewardModel

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("rm") / "final")
    RewardModel.from_pretrained(tiny_llama).save_pretrained(path)
    return path


# AWS settings that would send an S3 client elsewhere than the test server (or sign with other credentials)
_S3_CLIENT_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                   "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION")


@pytest.fixture(scope="module")
def s3_server():
    """A real S3-compatible server (moto, its own process) on 127.0.0.1 for this module's tests, with
    os.environ pointing every S3 client at it (AWS_ENDPOINT_URL, test credentials, AWS_REGION); the previous
    environment is restored afterwards. Yields tests/s3_server.py's S3Server: .endpoint, .env,
    .create_bucket(name) -> 's3://name'."""
    from coati_ray.storage import fs as storage_fs
    from tests.s3_server import S3Server

    server = S3Server().start()
    saved = {name: os.environ.get(name) for name in _S3_CLIENT_VARS}
    try:
        for name in _S3_CLIENT_VARS:
            os.environ.pop(name, None)
        os.environ.update(server.env)
        storage_fs.reset()  # filesystems built for another endpoint or other credentials
        yield server
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        storage_fs.reset()
        server.stop()
