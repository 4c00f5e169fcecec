"""Stage 3 end to end on a local Ray: makers, trainer groups, buffer accounting, weight sync, modes,
scaling, algorithms and rewards, metrics, and clean shutdown (weight sync through a job: test_ppo_weight_sync.py;
resume: test_resume.py). One Ray instance serves the whole module."""

import os
import shutil

import pytest
import torch

from tests.conftest import data_path
from tests.ppo_helpers import assert_books_balance, assert_no_leaks, local_ray, metrics, ppo_config  # noqa: F401

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def sync_run(local_ray, tiny_llama, reward_dir, tmp_path_factory):
    """2 makers, ddp actor group of 2 ranks, critic group of 1, sync mode, checkpoint every 2 steps."""
    from actors.driver import RLJob
    from coati_ray.errors import ModelError

    out = tmp_path_factory.mktemp("ppo") / "sync"
    cfg = ppo_config(tiny_llama, reward_dir, out, "algorithm.max_steps=4", "algorithm.save_every=2")
    checks = []

    def after_step(job, step, m):
        makers = [ray.get(mk.weights.remote()) for mk in job.makers.values()]
        trainer_actor = ray.get(job.groups["actor"][0].weights.remote())
        trainer_actor_1 = ray.get(job.groups["actor"][1].weights.remote())
        trainer_critic = ray.get(job.groups["critic"][0].weights.remote())
        same = all(torch.equal(w["actor"][k], trainer_actor[k]) for w in makers for k in trainer_actor) and \
            all(torch.equal(w["critic"][k], trainer_critic[k]) for w in makers for k in trainer_critic)
        ranks_equal = all(torch.equal(trainer_actor[k], trainer_actor_1[k]) for k in trainer_actor)
        refused = None
        if step == 1:  # a deliberately mismatched state dict must be refused by a live maker
            bad = {k: v for k, v in trainer_actor.items()}
            bad.pop(next(iter(bad)))
            maker = next(iter(job.makers.values()))
            from coati_ray.models.weight_layout import to_numpy

            arrays, dtypes = to_numpy(bad)
            handle = {"version": 99, "roles": {"actor": {"ref": [ray.put(arrays)], "dtypes": dtypes}}}
            try:
                ray.get(maker.load_weights.remote(handle))
                refused = False
            except ray.exceptions.RayTaskError as e:
                refused = isinstance(e.cause, ModelError) and ray.get(maker.weights.remote())["version"] == step
        checks.append({"step": step, "versions": [w["version"] for w in makers], "same": same,
                       "ranks_equal": ranks_equal, "refused": refused, "consumed": m["consumed"]})
        if step == 4:  # every actor is still alive: read the node's Prometheus export as a scraper would
            scraped["text"] = scrape_coati_metrics(REQUIRED_SERIES)

    scraped = {}
    summary = RLJob(cfg, log=True).run(on_step=after_step)
    return {"cfg": cfg, "out": out, "summary": summary, "checks": checks, "scraped": scraped.get("text", "")}


# (series, role) pairs a dashboard user needs, as Ray's Prometheus export names them (`ray_` + name).


REQUIRED_SERIES = [
    ("ray_coati_experiences_per_second", "maker"), ("ray_coati_generated_tokens_per_second", "maker"),
    ("ray_coati_reward_mean", "maker"), ("ray_coati_kl_mean", "maker"), ("ray_coati_weight_sync_seconds", "maker"),
    ("ray_coati_weight_sync_bytes", "maker"), ("ray_coati_tflops", "maker"),
    ("ray_coati_buffer_fill_samples", "replay_buffer"), ("ray_coati_buffer_capacity_samples", "replay_buffer"),
    ("ray_coati_consumed_staleness", "replay_buffer"),
    ("ray_coati_policy_loss", "actor_trainer"), ("ray_coati_clip_fraction", "actor_trainer"),
    ("ray_coati_value_loss", "critic_trainer"), ("ray_coati_tflops", "critic_trainer"),
    ("ray_coati_stage_seconds", "maker"), ("ray_coati_stage_seconds", "actor_trainer"),
]


def scrape_coati_metrics(required, timeout_s: float = 60.0) -> str:
    """GET /metrics on every node's export port until every (series, role) shows up (Ray exports
    every few seconds); returns the coati lines seen."""
    import time
    import urllib.request

    deadline = time.time() + timeout_s
    lines: list[str] = []
    while time.time() < deadline:
        lines = []
        for node in ray.nodes():
            port = node.get("MetricsExportPort")
            if not node.get("Alive") or not port:
                continue
            try:
                text = urllib.request.urlopen(f"http://{node['NodeManagerAddress']}:{port}/metrics", timeout=5).read()
            except OSError:
                continue
            lines += [line for line in text.decode().splitlines() if line.startswith("ray_coati_")]
        if all(any(line.startswith(name + "{") and f'role="{role}"' in line for line in lines)
               for name, role in required):
            break
        time.sleep(2)
    return "\n".join(lines)


def test_sync_run_completes_and_books_balance(sync_run):
    s = sync_run["summary"]
    assert s["steps"] == 4
    assert_books_balance(s["buffer"])
    assert s["buffer"]["produced"] == 4 * 2 and s["buffer"]["dropped"] == 0
    rows = metrics(sync_run["out"])
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("actor/loss", "critic/loss", "reward", "kl") + STEP_KEYS:
        assert all(isinstance(r.get(key), (int, float)) for r in rows), key
    assert all(r["tflops/makers"] > 0 and r["tflops/actor_trainer"] > 0 for r in rows)
    events = list((sync_run["out"] / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0  # TensorBoard gets the same scalars
    final = sync_run["out"] / "checkpoints" / "final"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(final / "actor" / "model")
    from coati_ray.models import Critic

    Critic.from_pretrained(str(final / "critic" / "model"), require_head=True)
    assert_no_leaks()


# Stable names every PPO step has in metrics.jsonl (and TensorBoard).


STEP_KEYS = ("timing/generate", "timing/ref", "timing/reward", "timing/values", "timing/update_actor",
             "timing/update_critic", "timing/sync", "timing/step", "throughput/samples_per_s",
             "throughput/generated_tokens_per_s", "throughput/trainer_tokens_per_s", "throughput/actor_tokens_per_s",
             "throughput/critic_tokens_per_s", "tflops/makers", "tflops/actor_trainer", "tflops/critic_trainer")


def test_prometheus_export_has_coati_series_tagged_by_role(sync_run):
    text = sync_run["scraped"]
    for name, role in REQUIRED_SERIES:
        assert any(line.startswith(name + "{") and f'role="{role}"' in line for line in text.splitlines()), \
            (name, role, sorted({(ln.split("{")[0], ln.split("role=\"")[1].split("\"")[0]) for ln in text.splitlines() if "role=" in ln}))
    # index tags tell the two makers and the two actor-trainer ranks apart
    assert 'index="1"' in text and 'stage="generate"' in text and 'stage="update_actor"' in text


def test_report_command_on_a_real_ppo_run(sync_run, tmp_path):
    from launch.report import main

    run = tmp_path / "copy"
    shutil.copytree(sync_run["out"], run, ignore=shutil.ignore_patterns("checkpoints"))
    assert main([str(run)]) == 0
    for name in ("report.md", "plots/curves.png", "plots/timing.png", "plots/throughput.png"):
        assert (run / name).stat().st_size > 0, name
    report = (run / "report.md").read_text()
    assert "`timing/update_actor`" in report and "`timing/generate`" in report and "## Config" in report


def test_makers_equal_trainers_bit_for_bit_after_every_sync(sync_run):
    checks = sync_run["checks"]
    assert [c["step"] for c in checks] == [1, 2, 3, 4]
    for c in checks:
        assert c["same"] and c["ranks_equal"] and c["versions"] == [c["step"]] * 2, c
    assert checks[0]["refused"] is True


def test_sync_mode_is_on_policy(sync_run):
    for c in sync_run["checks"]:
        for role in ("actor", "critic"):
            consumed = c["consumed"][role]
            assert consumed["versions"] == [c["step"] - 1] * 2 and max(consumed["staleness"]) == 0


def test_grpo_job_runs_multi_turn_episodes_in_an_environment(local_ray, tiny_llama, tmp_path):
    """rollout.environment on Ray: every sample is an episode (call, tool answer, copied answer) made by the
    makers, rewarded by the environment alone (no rewards.* source), grouped by prompt for GRPO and trained; the
    held-out evaluation runs episodes with the tool and without it (rollout.baseline_options)."""
    from actors.driver import RLJob
    from coati_ray.config import load_config
    from coati_ray.config.rl import RLConfig
    from tests.conftest import REPO

    cfg = load_config(RLConfig, os.path.join(REPO, "configs", "grpo_tiny.yaml"), [
        f"actor.path={tiny_llama}", f"data.prompt_path={data_path('calc', 'prompts.jsonl')}",
        f"data.eval_prompt_path={data_path('calc', 'eval.jsonl')}", "data.eval_max_samples=8", "data.gold_task=calc",
        "rewards.function=null", "rollout.environment=coati_ray.tasks.calc:CalcEnvironment",
        "rollout.baseline_options={tools: false}", "rollout.max_total_tokens=64", "rollout.max_turns=3",
        "generation.backend=tests.episode_fixtures:oracle_half_wrong", "generation.max_new_tokens=24",
        "algorithm.max_steps=2", "algorithm.eval_every=2", "algorithm.eval_greedy=true"], output_dir=str(tmp_path / "tools"))
    cfg.validate()
    seen = []
    summary = RLJob(cfg).run(on_step=lambda job, step, m: seen.append(m))
    assert summary["steps"] == 2
    for m in seen:
        assert m["rollout/turns"] == 2 and m["rollout/tool_calls"] == 1 and m["rollout/env_errors"] == 0
        assert m["reward"] == pytest.approx(m["reward/env"]) and 0 < m["reward"] < 1
        assert m["experience/groups_all_equal"] < 1 and m["actor/kl_loss"] >= 0
        assert 0 < m["rollout/context_tokens"] < m["rollout/trained_tokens"]
    evals = [r for r in metrics(tmp_path / "tools") if "eval/gold_score" in r]
    assert len(evals) == 2
    for r in evals:  # the oracle copies a wrong answer half the time; without the tool it never answers
        assert 0 < r["eval/gold_score"] < 1 and r["eval/baseline/gold_score"] == 0
        # refused, the oracle calls again until the 64-token budget ends the episode (a second refusal won't fit)
        assert r["eval/rollout/tool_calls"] == 1 and r["eval/baseline/rollout/turns"] == 2
    assert_books_balance(summary["buffer"])
    assert_no_leaks()


@pytest.mark.slow
def test_async_mode_respects_staleness_and_scaling_1_3_1(local_ray, tiny_llama, reward_dir, tmp_path):
    from actors.driver import RLJob

    # Makers pinned to the first core, trainers to the last (the same core on a 1-core machine); the
    # makers and the actor group niced, each to its own value, the critic group left as it starts.
    maker_core, trainer_core = min(os.sched_getaffinity(0)), max(os.sched_getaffinity(0))
    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / "async", "algorithm.mode=async", "algorithm.max_staleness=1",
                     "algorithm.max_steps=5", "maker.num_makers=1", "buffer.capacity=16", "weight_sync.transport=collective",
                     f"data.eval_prompt_path={data_path('prompts', 'eval.jsonl')}", "data.eval_max_samples=4",
                     "data.gold_task=sorting", "algorithm.eval_every=2", f"maker.cpu_cores=[{maker_core}]",
                     f"actor_trainer.resources.cpu_cores=[{trainer_core}]",
                     f"critic_trainer.resources.cpu_cores=[{trainer_core}]", "maker.nice=3",
                     "actor_trainer.resources.nice=7")
    plan = {1: 3, 3: 1}
    seen, masks, nice = [], {}, {}

    def thread_masks(actor):
        return ray.get(actor.__ray_call__.remote(lambda self: sorted(
            {tuple(sorted(os.sched_getaffinity(int(t)))) for t in os.listdir("/proc/self/task")})))

    def thread_nice(actor):
        return ray.get(actor.__ray_call__.remote(lambda self: sorted(
            {os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")})))

    def after_step(job, step, m):
        seen.append((step, m["makers"], m["consumed"]))
        if step == 2:  # the 3 makers (2 of them added by scaling) and every trainer rank, each thread
            masks["makers"] = [thread_masks(mk) for mk in job.pool.makers.values()]
            masks["trainers"] = [thread_masks(r) for ranks in job.groups.values() for r in ranks]
            nice["makers"] = [thread_nice(mk) for mk in job.pool.makers.values()]
            nice.update({role: [thread_nice(r) for r in ranks] for role, ranks in job.groups.items()})
        if step in plan:
            job.scale_makers(plan[step])

    summary = RLJob(cfg).run(on_step=after_step)
    assert summary["steps"] == 5
    assert [n for _, n, _ in seen] == [1, 3, 3, 1, 1]
    assert masks["makers"] == [[(maker_core,)]] * 3, masks
    assert masks["trainers"] == [[(trainer_core,)]] * 3, masks  # actor group of 2 ranks, critic of 1
    # every thread at least at the value asked, added makers too: the lowest (Ray's io threads, at 0
    # before) shows it; Ray's compute threads start at 15 and keep it, being nicer than asked
    assert [min(n) for n in nice["makers"]] == [3] * 3 and [min(n) for n in nice["actor"]] == [7] * 2, nice
    assert min(nice["critic"][0]) < 3, nice
    for step, _, consumed in seen:
        for role in ("actor", "critic"):
            assert max(consumed[role]["staleness"]) <= 1, (step, consumed)
            # the version an update trains on is never more than max_staleness behind the trainer's
            assert all(step - 1 - v <= 1 for v in consumed[role]["versions"]), (step, consumed)
    acc = summary["buffer"]
    assert_books_balance(acc)
    assert max(acc["max_staleness_delivered"].values()) <= 1
    # A broadcast that lands while older batches are queued waits for them: no maker is taken for behind.
    assert summary["maker_restarts"] == 0 and summary["maker_batches_regenerated"] == 0
    # Staleness is bounded where batches start: nothing was made only to be thrown away, and makers
    # really ran ahead of the trainers (an async run that behaved like sync mode would show only 0).
    assert acc["dropped"] == 0 and acc["over_staleness"] == 0
    assert acc["staleness_counts"].get("1", 0) > 0, acc["staleness_counts"]
    # Evaluation never blocks an async run on a busy maker; the first scores the initial policy and
    # the last the final one, each logged at the version it actually scored.
    assert summary["eval_first"]["version"] == 0 and summary["eval_last"]["version"] == 5
    evals = [r for r in metrics(cfg.output_dir) if "eval/gold_score" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 5 and len(evals) >= 2
    assert all(0.0 <= r["eval/gold_score"] <= 1.0 and "eval/kl_to_initial" in r for r in evals)
    assert len(summary["samples_last"]) == 4
    train_rows = [r for r in metrics(cfg.output_dir) if "timing/step" in r]
    assert len(train_rows) == 5
    for key in STEP_KEYS:  # async steps too, even one in which no maker batch finished
        assert all(isinstance(r.get(key), (int, float)) for r in train_rows), key
    assert_no_leaks()


def test_a_core_the_node_lacks_ends_the_run_in_one_line_naming_the_key(local_ray, tiny_llama, reward_dir, tmp_path):
    """Only the node knows its cores: the maker refuses them first thing, and its constructor's error
    reaches the driver as the ConfigError itself, not as a dead actor's traceback."""
    from actors.driver import RLJob
    from coati_ray.errors import ConfigError

    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / "cores", "maker.num_makers=1", "maker.cpu_cores=[4096]",
                     "actor_trainer.resources.num_ranks=1", "actor_trainer.strategy.name=naive")
    with pytest.raises(ConfigError) as e:
        RLJob(cfg, log=False).run()
    assert "maker.cpu_cores" in str(e.value) and "[4096]" in str(e.value) and "\n" not in str(e.value)
    assert_no_leaks()


def test_failed_run_releases_every_actor_and_placement_group(local_ray, tiny_llama, reward_dir, tmp_path):
    from actors.driver import RLJob

    cfg = ppo_config(tiny_llama, reward_dir, tmp_path / "fail", "maker.num_makers=1",
                     "actor_trainer.resources.num_ranks=1", "actor_trainer.strategy.name=naive")

    def explode(job, step, m):
        raise RuntimeError("user callback failed")

    with pytest.raises(RuntimeError, match="user callback failed"):
        RLJob(cfg).run(on_step=explode)
    assert_no_leaks()
    assert ray.is_initialized()  # the job did not own this Ray, so it left it running


def test_grpo_job_builds_no_critic_and_trains_on_function_and_http_rewards(local_ray, tiny_llama, tmp_path):
    """GRPO (critic-free): no critic model in the makers and no critic trainer group exist; the training
    reward is the sorting verifier plus an HTTP service on 127.0.0.1, weighted; groups of 4 stay whole."""
    from actors.driver import RLJob
    from coati_ray.config import load_config
    from coati_ray.config.rl import RLConfig
    from tests.conftest import REPO
    from tests.test_algorithms import RewardServer

    server = RewardServer()
    try:
        cfg = load_config(RLConfig, os.path.join(REPO, "configs", "grpo_tiny.yaml"), [
            f"actor.path={tiny_llama}", f"data.prompt_path={data_path('prompts', 'train.jsonl')}",
            "generation.max_new_tokens=6", "algorithm.max_steps=2", f"rewards.http_url={server.url}",
            "rewards.http_weight=0.5"], output_dir=str(tmp_path / "grpo"))
        cfg.validate()
        seen = []

        def after_step(job, step, m):
            names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                     if isinstance(a, dict) and a.get("namespace") == "coati"}
            maker = ray.get(next(iter(job.makers.values())).weights.remote())
            trainer = ray.get(job.groups["actor"][0].weights.remote())
            seen.append({"names": names, "metrics": m, "critic_in_maker": "critic" in maker,
                         "same": all(torch.equal(maker["actor"][k], v) for k, v in trainer.items())})

        summary = RLJob(cfg).run(on_step=after_step)
    finally:
        server.close()
    assert summary["steps"] == 2
    for s in seen:
        assert {"maker-0", "maker-1", "actor-trainer-0", "actor-trainer-1", "replay-buffer"} <= s["names"], s["names"]
        assert not any("critic" in name for name in s["names"]) and not s["critic_in_maker"] and s["same"]
        m = s["metrics"]
        assert "critic/loss" not in m and "timing/update_critic" not in m
        assert m["actor/kl_loss"] >= 0 and 0 <= m["experience/groups_all_equal"] <= 1
        assert m["reward"] == pytest.approx(m["reward/function"] + 0.5 * m["reward/http"], abs=1e-5)
        assert set(m["consumed"]) == {"actor"}
    # each maker batch (8 samples = 2 prompts x 4) went to the service as one request
    assert len(server.requests) >= 2 * 2 + 1 and all(len(r["responses"]) == 8 for r in server.requests[1:])
    assert all(r["rows"][0]["prompt"].startswith("sort:") for r in server.requests[1:])
    assert_books_balance(summary["buffer"])
    assert_no_leaks()


@pytest.mark.slow
def test_rlvr_options_run_in_a_job_dynamic_sampling_packing_and_overlong(local_ray, tiny_llama, tmp_path):
    """algorithm.filter_groups (spare prompts through the driver, groups refilled in the makers), packed updates
    and the overlong filter, together in a 2-step GRPO job: each batch keeps its size and the books balance."""
    from actors.driver import RLJob
    from coati_ray.config import load_config
    from coati_ray.config.rl import RLConfig
    from tests.conftest import REPO

    cfg = load_config(RLConfig, os.path.join(REPO, "configs", "grpo_tiny.yaml"), [
        f"actor.path={tiny_llama}", f"data.prompt_path={data_path('prompts', 'train.jsonl')}",
        "generation.max_new_tokens=6", "algorithm.max_steps=2", "algorithm.filter_groups=true", "algorithm.max_sampling_rounds=2",
        "algorithm.micro_batch_tokens=64", "algorithm.overlong_filter=true"], output_dir=str(tmp_path / "rlvr"))
    cfg.validate()
    seen = []
    summary = RLJob(cfg).run(on_step=lambda job, step, m: seen.append(m))
    assert summary["steps"] == 2
    for m in seen:
        assert 1 <= m["experience/sampling_rounds"] <= 2 and 0 <= m["experience/dropped_groups"] <= 1
        assert m["actor/micro_batches"] >= 1 and 0 <= m["experience/truncated"] <= 1
    assert_books_balance(summary["buffer"])


@pytest.mark.slow
def test_a_reward_function_that_raises_ends_the_run_in_one_line(local_ray, tiny_llama, tmp_path, capsys):
    from launch.ppo import main
    from tests.conftest import REPO

    code = main(["--config", os.path.join(REPO, "configs", "grpo_tiny.yaml"), "--output-dir", str(tmp_path / "r"),
                 f"actor.path={tiny_llama}", f"data.prompt_path={data_path('prompts', 'train.jsonl')}",
                 "generation.max_new_tokens=4", "algorithm.max_steps=2", "rewards.function=tests.reward_fixtures:raises"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1, err
    assert "tests.reward_fixtures:raises raised ZeroDivisionError" in err[0]
    assert_no_leaks()
