"""Experiment tracking beyond metrics.jsonl and TensorBoard: Weights & Biases, with the same series."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Literal, Optional

from coati_ray.config.checks import _fail
from coati_ray.config.fields import opt


@dataclass
class WandbConfig:
    """Weights & Biases: every scalar of metrics.jsonl at its step, the run's config and its summary. The API
    key is read by wandb from WANDB_API_KEY or ~/.netrc, never from or into the config."""

    project: Optional[str] = opt(None, "W&B project; null: W&B is off")
    name: Optional[str] = opt(None, "run name; null: the run directory's name")
    entity: Optional[str] = opt(None, "team or user; null: the API key's default")
    group: Optional[str] = opt(None, "group of runs (a pipeline's stages share the pipeline's)")
    mode: Literal["auto", "online", "offline"] = opt(
        "auto", "auto: WANDB_MODE from the environment, else online; offline writes <output_dir>/wandb for "
                "`wandb sync`")

    @property
    def enabled(self) -> bool:
        return bool(self.project)

    def resolved_mode(self) -> str:
        return os.environ.get("WANDB_MODE", "online") if self.mode == "auto" else self.mode

    def validate(self, key: str = "logging.wandb") -> None:
        if not self.enabled:
            return
        if importlib.util.find_spec("wandb") is None:
            _fail(f"{key}.project", "the wandb package is not installed", "pip install wandb (or "
                  "coati_ray[wandb]), or remove logging.wandb.project")
        if self.resolved_mode() == "online" and not _has_api_key():
            _fail(f"{key}.mode", "W&B is online but no API key was found (WANDB_API_KEY or ~/.netrc)",
                  "export WANDB_API_KEY (or run `wandb login`), or set logging.wandb.mode=offline")


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        with open(netrc, encoding="utf-8") as f:
            return "api.wandb.ai" in f.read()
    except OSError:
        return False


@dataclass
class LoggingConfig:
    """Where a run's metrics go besides metrics.jsonl and <output_dir>/tensorboard."""

    wandb: WandbConfig = opt(None, "Weights & Biases (off unless logging.wandb.project is set)")

    def validate(self, key: str = "logging") -> None:
        self.wandb.validate(f"{key}.wandb")
