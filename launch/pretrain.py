"""Continual pretraining (Colossal-LLaMA): python -m launch.pretrain --config configs/pretrain_tiny.yaml [overrides].

Trains a causal LM on `launch.prepare_data` output (data.train_path: prepared folders, comma-separated),
loss on target tokens, batches in bucket order. `load_checkpoint` takes a step checkpoint (resumes
everything) or a model folder (weights only, for the next stage). Colossal-LLaMA's train.py flags (--pretrained,
--dataset A B, --plugin, --save_dir, --use_neft, ...) are taken as typed: launch/seed_flags.py's PRETRAIN table.
"""

import os
import sys
from typing import Optional

from coati_ray.config.pretrain import PretrainConfig
from coati_ray.errors import ConfigError
from coati_ray.trainers.pretrain import PretrainTrainer, run_pretrain
from launch.common import run_supervised_stage


def starting_point(cfg, resume_from: Optional[str]) -> Optional[str]:
    """load_checkpoint: a complete step checkpoint is resumed; a model folder replaces model.path's weights."""
    if cfg.load_checkpoint is None or resume_from is not None:  # --resume: the run's own checkpoint goes on
        return resume_from
    inside = os.path.abspath(cfg.load_checkpoint).startswith(os.path.abspath(cfg.output_dir) + os.sep)
    if inside:
        raise ConfigError(f"config error: load_checkpoint '{cfg.load_checkpoint}' lies inside this run's output_dir, "
                          "which a new run clears; use --resume to continue this run, or another --output-dir")
    if os.path.isfile(os.path.join(cfg.load_checkpoint, "trainer_state.json")):
        return cfg.load_checkpoint
    cfg.model.path, cfg.model.revision = cfg.load_checkpoint, None  # weights only ("modelling"); starts at step 0
    return resume_from


def main(argv=None) -> int:
    return run_supervised_stage("pretrain", PretrainConfig, run_pretrain, PretrainTrainer, __doc__, argv,
                                starting_point=starting_point)


if __name__ == "__main__":
    sys.exit(main())
