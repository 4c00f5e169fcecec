"""Coati's README SFT command, exactly as typed (colossalai_zero2 and all), with local paths for its model and
data: it trains on one GPU and leaves the model in --save_path."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO
from tests.test_seed_flags import alpaca_json, seed_sft_command

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs CUDA: the command asks for colossalai_zero2 (run by `make gpu-check`)")


def test_the_seeds_sft_command_as_typed_trains_with_zero2(assets, tmp_path):
    data = alpaca_json(tmp_path / "data.json")
    save = tmp_path / "Coati-7B"
    cmd = [sys.executable, "-m", "launch.sft", *seed_sft_command(os.path.join(assets, "models", "tiny-llama"), data,
                                                                   str(save))]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((save / "summary.json").read_text())
    assert summary["strategy"] == "colossalai_zero2" and summary["steps"] == 16
    assert (save / "checkpoints" / "final" / "config.json").is_file()
