"""Run a plug-in of your own in a tiny job, in this process: a test of yours in five lines.

    from actors.testing import tiny_job

    def test_my_estimator():
        run = tiny_job("algorithm.advantage_estimator=my_pkg.estimators:centred", steps=2)
        assert run.metrics[-1]["reward"] is not None

`tiny_job` runs GRPO (`algorithm="grpo"`: the sorting task's verifier as the reward, no critic) or PPO
(`algorithm="ppo"`: a reward model and a critic) on tiny models built once for the process (a 2-layer llama
and the repo's tokenizer, seconds on a CPU), with the overrides you give, exactly as `python -m launch.ppo`
would take them. It uses the Ray this process is connected to, or starts an embedded 2-CPU one (and stops it):
Ray's workers are given this process's `sys.path`, so a module your test put on the path imports in the makers
and the trainers too. Bad input is refused before Ray starts, as in a real job.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Optional

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
_MODELS: dict[str, str] = {}


@dataclass
class JobRun:
    """What a tiny job left: its summary.json, every step's metrics, its config and run directory."""

    summary: dict
    metrics: list
    config: object
    output_dir: str


def tiny_models(root: Optional[str] = None) -> dict:
    """{'actor': a tiny llama, 'reward': a reward model on it (random value head)}, built once per process."""
    if _MODELS:
        return _MODELS
    import torch

    from coati_ray.models import RewardModel
    from coati_ray.models.tiny import build_assets

    root = root or tempfile.mkdtemp(prefix="coati-tiny-")
    actor = build_assets(root, families=["llama"], chat=[])["llama"]
    torch.manual_seed(0)
    reward = os.path.join(root, "reward")
    RewardModel.from_pretrained(actor, trust_remote_code=False).save_pretrained(reward)  # built here: no custom code
    _MODELS.update(actor=actor, reward=reward)
    return _MODELS


def tiny_config(*overrides: str, algorithm: str = "grpo", steps: int = 2, output_dir: Optional[str] = None):
    """The validated RLConfig of a tiny job (configs/grpo_tiny.yaml or ppo_tiny.yaml on the tiny models)."""
    from coati_ray.config import load_config
    from coati_ray.config.rl import RLConfig

    if algorithm not in ("grpo", "ppo"):
        raise ValueError(f"algorithm must be 'grpo' or 'ppo', not {algorithm!r}")
    models = tiny_models()
    base = [f"actor.path={models['actor']}", f"data.prompt_path={os.path.join(REPO, 'data', 'prompts', 'train.jsonl')}",
            f"algorithm.max_steps={steps}", "generation.max_new_tokens=6", "buffer.timeout_s=120"]
    if algorithm == "ppo":
        base += [f"critic.path={models['actor']}", f"reward_model.path={models['reward']}"]
    cfg = load_config(RLConfig, os.path.join(REPO, "configs", f"{algorithm}_tiny.yaml"), base + list(overrides),
                      output_dir=output_dir or tempfile.mkdtemp(prefix=f"coati-{algorithm}-"))
    cfg.validate()
    return cfg


def tiny_job(*overrides: str, algorithm: str = "grpo", steps: int = 2, output_dir: Optional[str] = None) -> JobRun:
    """Run a tiny job with `overrides` (e.g. 'generation.backend=my_pkg.gen:generate', 'plugins=[my_pkg.plugins]')
    and return what it left (JobRun)."""
    import json

    import ray

    from actors.driver import RLJob

    cfg = tiny_config(*overrides, algorithm=algorithm, steps=steps, output_dir=output_dir)
    job = RLJob(cfg, log=True, overwrite=True)  # data and plug-ins checked here, before Ray
    started = not ray.is_initialized()
    if started:
        paths = os.pathsep.join(p for p in sys.path if p)
        ray.init(num_cpus=2, include_dashboard=False, namespace="coati", log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": paths, "TOKENIZERS_PARALLELISM": "false"}})
    try:
        summary = job.run()
    finally:
        if started:
            ray.shutdown()
    with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return JobRun(summary, [r for r in rows if "step" in r], cfg, cfg.output_dir)
