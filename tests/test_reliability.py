"""Reliability past a dead maker process: a stalled step is reported (watchdog), run on a Ray that serves
the state API (dashboard on), as users' clusters do."""

import json
import os
import re
import time

import pytest

from tests.conftest import data_path
from tests.ppo_helpers import assert_no_leaks, ppo_config

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_with_dashboard():
    from actors.cluster import free_port

    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(8300),
             namespace="coati", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


def flagged_prompts(tmp_path) -> tuple[str, str]:
    """The prompt file with every row naming a flag file: once it exists, the reward function hangs."""
    flag = str(tmp_path / "hang")
    path = tmp_path / "prompts.jsonl"
    with open(data_path("prompts", "train.jsonl")) as src, open(path, "w") as dst:
        for line in src:
            dst.write(json.dumps({**json.loads(line), "hang_flag": flag}) + "\n")
    return str(path), flag


@pytest.mark.slow
def test_a_maker_hanging_inside_make_is_reported_within_the_bound(ray_with_dashboard, tiny_llama, reward_dir,
                                                                  tmp_path):
    """After step 2 the maker's reward function sleeps forever inside `make`. The run ends within the derived
    bound (3 x the slowest step, at least 4 s) with one line naming maker-0 and the method it is stuck in
    (from Ray's state API), and its Python stack is written to <run>/stall/."""
    from actors.driver import RLJob
    from coati_ray.errors import RunStalled

    prompts, flag = flagged_prompts(tmp_path)
    out = tmp_path / "run"
    cfg = ppo_config(tiny_llama, reward_dir, out, "actor_trainer.resources.num_ranks=1",
                     "actor_trainer.strategy.name=naive", "maker.num_makers=1", "algorithm.max_steps=10",
                     f"data.prompt_path={prompts}", "rewards.function=tests.reward_fixtures:hangs_when_flagged",
                     "watchdog.min_stall_s=4", "watchdog.factor=3")

    def after_step(job, step, m):
        if step == 2:
            open(flag, "w").close()

    with pytest.raises(RunStalled) as e:
        RLJob(cfg).run(on_step=after_step)
    ended = time.time()
    msg = str(e.value)
    started = float(open(flag + ".started").read())
    bound = float(re.search(r"no progress for (\d+)s", msg).group(1))
    print(msg)
    assert "\n" not in msg and msg.startswith("run error: step 3 made no progress")
    assert "maker-0 (running ExperienceMaker.make)" in msg, msg
    assert "actor-trainer-0 (running PPOTrainerRank.train_step, waiting on ReplayBuffer.get)" in msg
    assert 4 <= bound and ended - started <= bound + 10, (ended - started, bound)  # pings and stacks: seconds
    stack = out / "stall" / "maker-0.txt"
    assert stack.is_file() and str(out / "stall") in msg
    text = stack.read_text()
    assert text.startswith("py-spy could not") or "hangs_when_flagged" in text, text[:500]
    assert_no_leaks()
