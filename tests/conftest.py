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
