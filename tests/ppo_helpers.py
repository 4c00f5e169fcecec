"""What the Ray PPO test modules share: one local Ray per module, a tiny PPO config, the checks."""

import json
import os

import pytest

from coati_ray.config import load_config
from coati_ray.config.rl import RLConfig
from tests.conftest import REPO, data_path

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, namespace="coati", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


def ppo_config(tiny_llama, reward_dir, out_dir, *overrides) -> RLConfig:
    cfg = load_config(RLConfig, os.path.join(REPO, "configs", "ppo_tiny.yaml"), [
        f"actor.path={tiny_llama}", f"critic.path={tiny_llama}", f"reward_model.path={reward_dir}",
        f"data.prompt_path={data_path('prompts', 'train.jsonl')}", "generation.max_new_tokens=6",
        "buffer.timeout_s=120", *overrides], output_dir=str(out_dir))
    cfg.validate()
    return cfg


def assert_books_balance(acc: dict) -> None:
    for group, delivered in acc["delivered"].items():
        assert acc["produced"] == delivered + acc["dropped"], (group, acc)
    assert acc["held_items"] == 0 and acc["peak_samples"] <= acc["capacity"]


def assert_no_leaks(grace_s: float = 10.0) -> None:
    """No named actor or placement group of the job is left. The GCS releases a killed actor's name
    asynchronously, so a name still resolvable is looked up again for up to `grace_s`."""
    import time

    from ray.util import placement_group_table

    deadline = time.monotonic() + grace_s
    for name in ("maker-0", "maker-1", "actor-trainer-0", "actor-trainer-1", "critic-trainer-0", "replay-buffer"):
        while True:
            try:
                ray.get_actor(name, namespace="coati")
            except ValueError:
                break
            assert time.monotonic() < deadline, f"actor {name} outlived its job"
            time.sleep(0.2)
    assert all(pg["state"] == "REMOVED" for pg in placement_group_table().values())


def metrics(out_dir) -> list[dict]:
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]
