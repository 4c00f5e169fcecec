"""Algorithms and rewards as plug-ins, without Ray: every estimator against hand-computed values, where
the KL goes, group statistics, and the reward sources (reward model, function, HTTP service)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from coati_ray.algo.advantages import REGISTRY, AdvantageInputs, algorithm, discounted_returns
from coati_ray.errors import ConfigError, RewardError

T = torch.tensor


def inputs(scores, mask=None, n=2, kl=None, gamma=1.0):
    scores = T(scores, dtype=torch.float32)
    mask = torch.ones(len(scores), 3, dtype=torch.long) if mask is None else T(mask)
    kl = torch.zeros(mask.shape) if kl is None else T(kl, dtype=torch.float32)
    return AdvantageInputs(scores=scores, kl_rewards=kl, action_mask=mask, group_size=n, gamma=gamma)


def estimate(name, x):
    adv, returns = algorithm(name).estimate(x)
    return adv, returns


def test_the_config_takes_every_registered_estimator_and_refuses_others_in_one_line():
    from coati_ray.config import from_dict
    from coati_ray.config.rl import RLConfig

    assert [n for n, s in REGISTRY.items() if s.needs_critic] == ["gae"]
    assert algorithm("gae").trainer_roles == ("actor", "critic") and algorithm("grpo").trainer_roles == ("actor",)
    assert {n for n, s in REGISTRY.items() if s.group_relative} == {"grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"}
    with pytest.raises(KeyError, match="unknown advantage estimator 'ppo2'"):
        algorithm("ppo2")
    with pytest.raises(KeyError, match="'grpoo'; did you mean 'grpo'"):
        algorithm("grpoo")
    from coati_ray.config.pipeline import prepare_pipeline_dict

    with pytest.raises(ConfigError, match=r"^config error: ppo.algorithm.advantage_estimator: unknown advantage estimator "
                                          r"'grpoo'; did you mean 'grpo'"):  # a pipeline says it before any stage
        prepare_pipeline_dict({"ppo": {"ppo": {"advantage_estimator": "grpoo"}}})
    from coati_ray.config.ppo_checks import check_algorithm

    cfg = from_dict(RLConfig, {"actor": {"path": "any"}})
    for name in REGISTRY:  # the registry is the list of choices: nothing to keep in step by hand
        cfg.algorithm.advantage_estimator = name
        assert cfg.estimator.name == name
    cfg.algorithm.advantage_estimator = "ppo2"
    with pytest.raises(ConfigError, match=r"^config error: algorithm.advantage_estimator: unknown advantage estimator "
                                          r"'ppo2'; use one of: gae, grpo.*module:function"):
        check_algorithm(cfg)


def test_grpo_normalises_within_each_group():
    # groups (1, 0): mean .5, unbiased std .7071 -> +-.7071 ; (3, 3): equal rewards -> no signal
    adv, returns = estimate("grpo", inputs([1.0, 0.0, 3.0, 3.0], mask=[[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]]))
    s = 0.5 / (0.5 ** 0.5 + 1e-6)
    assert returns is None
    assert torch.allclose(adv, T([[s, s, 0.0], [-s, -s, -s], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), atol=1e-6)


def test_a_group_of_one_has_no_signal():
    for name in ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"):
        adv, _ = estimate(name, inputs([5.0, -1.0], n=1))
        assert torch.equal(adv, torch.zeros(2, 3)), name


def test_dr_grpo_centres_without_the_std():
    adv, _ = estimate("dr_grpo", inputs([4.0, 0.0, 1.0, 1.0, 1.0, 4.0], n=3))
    assert torch.allclose(adv[:, 0], T([7 / 3, -5 / 3, -2 / 3, -1.0, -1.0, 2.0]))


def test_rloo_uses_the_mean_of_the_others():
    adv, _ = estimate("rloo", inputs([3.0, 0.0, 0.0], n=3, mask=[[1, 1, 1], [1, 1, 0], [1, 0, 0]]))
    assert torch.allclose(adv, T([[3.0, 3.0, 3.0], [-1.5, -1.5, 0.0], [-1.5, 0.0, 0.0]]))


def test_reinforce_pp_is_the_return_to_go_of_per_token_rewards():
    kl = [[-0.1, -0.2, -0.3], [-0.5, 0.0, 0.0]]
    x = inputs([1.0, 2.0], mask=[[1, 1, 1], [1, 0, 0]], kl=kl, n=1, gamma=0.5)
    adv, _ = estimate("reinforce_pp", x)
    # sample 0: rewards (-.1, -.2, -.3 + 1) -> G = (-.1 + .5 * (-.2 + .5 * .7), -.2 + .5 * .7, .7)
    assert torch.allclose(adv[0], T([-0.1 + 0.5 * 0.15, 0.15, 0.7]))
    assert torch.allclose(adv[1], T([1.5, 0.0, 0.0]))  # the last token of a 1-token answer carries the score
    assert algorithm("reinforce_pp").whiten and not algorithm("grpo").whiten


def test_reinforce_pp_baseline_subtracts_the_group_mean_score():
    adv, _ = estimate("reinforce_pp_baseline", inputs([2.0, 0.0, 5.0, 7.0], n=2))
    assert torch.allclose(adv[:, 0], T([1.0, -1.0, -1.0, 1.0]))


def test_group_estimators_add_the_kl_penalty_as_returns_to_go_when_it_is_in_the_reward():
    kl = [[-0.1, -0.1, 0.0], [0.0, -0.2, -0.2]]
    adv, _ = estimate("dr_grpo", inputs([1.0, 0.0], n=2, kl=kl, mask=[[1, 1, 0], [1, 1, 1]]))
    assert torch.allclose(adv, T([[0.5 - 0.2, 0.5 - 0.1, 0.0], [-0.5 - 0.4, -0.5 - 0.4, -0.5 - 0.2]]))


def test_gae_needs_values_and_gives_returns():
    x = inputs([1.0, 0.0], n=1)
    with pytest.raises(ValueError, match="critic"):
        estimate("gae", x)
    x.values = torch.zeros(2, 3)
    adv, returns = estimate("gae", x)
    assert torch.allclose(adv[0], T([0.95 ** 2, 0.95, 1.0])) and torch.allclose(returns, adv)  # lam 0.95, V = 0


def test_discounted_returns_stop_at_padding():
    r = discounted_returns(T([[1.0, 1.0, 9.0]]), T([[1, 1, 0]]), gamma=0.9)
    assert torch.allclose(r, T([[1.9, 1.0, 0.0]]))


def test_kl_loss_is_the_masked_k3_and_pulls_towards_the_reference():
    from coati_ray.algo import kl_loss

    logp = T([[-1.0, -2.0, -3.0]], requires_grad=True)
    ref = T([[-1.5, -2.0, -1.0]])
    mask = T([[1, 1, 0]])
    loss = kl_loss(logp, ref, mask)
    r = T([-0.5, 0.0])
    assert torch.allclose(loss, (torch.expm1(r) - r).mean())
    loss.backward()
    assert logp.grad[0, 0] > 0 and logp.grad[0, 1] == 0 and logp.grad[0, 2] == 0  # lower logp where it exceeds ref


def test_group_stats_spread_and_equal_groups():
    from coati_ray.experience.make import group_stats

    s = group_stats(T([1.0, 1.0, 0.0, 2.0]), 2)
    assert s["experience/groups_all_equal"] == 0.5
    assert s["experience/group_reward_std"] == pytest.approx((0.0 + 2 ** 0.5) / 2)
    assert group_stats(T([1.0, 2.0]), 1) == {}


# ---------------------------------------------------------------- where the KL goes, end to end without Ray


@pytest.fixture(scope="module")
def grpo_models(tiny_llama):
    from coati_ray.experience import ExperienceModels
    from coati_ray.models import Actor

    actor, initial = Actor.from_pretrained(tiny_llama), Actor.from_pretrained(tiny_llama)
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # a policy that has moved away from the reference
    return ExperienceModels(actor=actor, initial=initial)


def grpo_cfg(tiny_llama, tmp_path, *overrides):
    import os

    from coati_ray.config import load_config
    from coati_ray.config.rl import RLConfig
    from tests.conftest import REPO, data_path

    cfg = load_config(RLConfig, os.path.join(REPO, "configs", "grpo_tiny.yaml"), [
        f"actor.path={tiny_llama}", f"data.prompt_path={data_path('prompts', 'train.jsonl')}",
        "actor_trainer.strategy.name=naive", "actor_trainer.resources.num_ranks=1", "algorithm.kl_coef=0.5",
        *overrides], output_dir=str(tmp_path))
    cfg.validate()
    return cfg


@pytest.mark.parametrize("where", ["reward", "sequence", "loss"])
def test_kl_in_the_reward_or_in_the_loss(grpo_models, tokenizer, tiny_llama, tmp_path, where):
    from coati_ray.experience import make_experience
    from coati_ray.experience.prompts import read_prompt_data
    from coati_ray.experience.reward_sources import RewardSources
    from coati_ray.strategies import make_strategy
    from coati_ray.trainers.ppo import make_group_trainer

    cfg = grpo_cfg(tiny_llama, tmp_path, f"algorithm.kl_penalty={where}")
    items, _, _ = read_prompt_data(cfg.data, tokenizer)
    torch.manual_seed(0)
    exp, stats = make_experience(grpo_models, tokenizer, items[:2], cfg.generation, cfg.algorithm,
                                 RewardSources(cfg.rewards))
    assert exp.num_samples == 8 and exp.values is None and exp.returns is None
    assert "experience/group_reward_std" in stats and "reward/function" in stats
    per_sample_constant = all(
        torch.allclose(a[m.bool()], a[m.bool()][0].expand(int(m.sum()))) for a, m in zip(exp.advantages,
                                                                                         exp.action_mask))
    strategy = make_strategy(cfg.actor_trainer.strategy)
    strategy.setup_distributed()
    trainer = make_group_trainer("actor", cfg, strategy)
    for p, q in zip(trainer.model.parameters(), grpo_models.actor.parameters()):
        p.data.copy_(q.data)
    loss, m = trainer.micro_loss(exp.select(slice(0, 4)))
    if where == "reward":  # the penalty shapes the advantages token by token; the loss has no KL term
        assert not per_sample_constant and "kl_loss" not in m
        assert loss.item() == pytest.approx(m["policy_loss"], abs=1e-6)
    elif where == "sequence":  # Coati's: one penalty per sample, kl_coef x its mean KL, on all its tokens alike
        from coati_ray.algo import masked_mean, sequence_kl_penalty
        from coati_ray.algo.advantages import AdvantageInputs, algorithm

        penalty = sequence_kl_penalty(exp.action_log_probs, exp.ref_log_probs, exp.action_mask, 0.5)
        plain, _ = algorithm("grpo").estimate(AdvantageInputs(
            scores=exp.reward, kl_rewards=torch.zeros_like(exp.advantages), action_mask=exp.action_mask,
            group_size=cfg.algorithm.n_samples_per_prompt))
        assert per_sample_constant and "kl_loss" not in m and float(penalty.min()) > 0
        assert torch.allclose(exp.advantages[:, 0], plain[:, 0] - penalty, atol=1e-5)
        assert stats["kl"] == pytest.approx(float(penalty.mean()) / 0.5, rel=1e-4)
        assert float(masked_mean(exp.kl, exp.action_mask, dim=1).mean()) == pytest.approx(stats["kl"], rel=1e-5)
        assert loss.item() == pytest.approx(m["policy_loss"], abs=1e-6)
    else:  # GRPO: advantages constant per sample, kl_coef * k3 added to the loss
        assert per_sample_constant and m["kl_loss"] > 0
        assert loss.item() == pytest.approx(m["policy_loss"] + 0.5 * m["kl_loss"], rel=1e-5)


# ---------------------------------------------------------------- reward sources


def sources(**keys):
    from coati_ray.config import from_dict
    from coati_ray.config.rl import RewardSourcesConfig

    return from_dict(RewardSourcesConfig, keys)


class RewardServer:
    """A reward service on 127.0.0.1: rewards = len(response) / 10; `fail_first` requests answer 500."""

    def __init__(self, fail_first=0):
        self.requests, self.fail_first = [], fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                if len(outer.requests) <= outer.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                out = json.dumps({"rewards": [len(r) / 10 for r in body["responses"]]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/reward"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_sorting_verifier_is_a_reward_function():
    from coati_ray.experience.reward_sources import load_reward_function

    fn = load_reward_function("coati_ray.tasks.sorting:reward")
    assert fn(["sort: 3 1 2", "sort: 3 1 2"], ["1 2 3", "3 1 2"], [{}, {}]) == [1.0, 0.5]


@pytest.mark.parametrize("spec,needle", [
    ("coati_ray.tasks.sorting", "is not 'module:function'"),
    ("no_such_module_xyz:reward", "cannot import 'no_such_module_xyz'"),
    ("coati_ray.tasks.sorting:no_such", "has no function 'no_such'"),
    ("coati_ray.tasks.sorting:gold_score", "cannot be called as function(prompts, responses, rows)"),
])
def test_bad_reward_function_is_one_line(spec, needle):
    from coati_ray.experience.reward_sources import load_reward_function

    with pytest.raises(ConfigError) as e:
        load_reward_function(spec)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_http_reward_with_retries_and_weights(tiny_llama, reward_dir):
    from coati_ray.experience.reward_sources import RewardSources
    from coati_ray.models import RewardModel

    server = RewardServer(fail_first=1)  # the first request fails: the retry answers
    try:
        rm = RewardModel.from_pretrained(reward_dir)
        rs = RewardSources(sources(http_url=server.url, http_weight=2.0, function="coati_ray.tasks.sorting:reward",
                                   function_weight=0.5, http_retries=1, model_weight=1.0), rm)
        seqs, mask = torch.randint(4, 100, (2, 6)), torch.ones(2, 6, dtype=torch.long)
        total, parts = rs(seqs, mask, ["sort: 2 1", "sort: 2 1"], ["1 2", "2 1 0 7"], [{"x": 1}, {"x": 2}])
        assert parts["http"].tolist() == pytest.approx([0.3, 0.7]) and parts["function"].tolist() == pytest.approx([1.0, 1 / 6])
        assert torch.allclose(total, parts["model"] + 2.0 * parts["http"] + 0.5 * parts["function"])
        assert server.requests[-1]["rows"] == [{"x": 1}, {"x": 2}] and len(server.requests) == 2
    finally:
        server.close()


def test_failing_or_unreachable_reward_service_is_one_line_naming_the_url():
    from coati_ray.experience.reward_sources import HttpReward, check_reward_sources

    server = RewardServer(fail_first=100)
    try:
        with pytest.raises(RewardError) as e:
            HttpReward(server.url, timeout_s=5, retries=1)(["p"], ["r"], [{}])
        assert server.url in str(e.value) and "failed 2 time(s)" in str(e.value) and "\n" not in str(e.value)
    finally:
        server.close()
    with pytest.raises(ConfigError) as e:
        check_reward_sources(sources(http_url=server.url, http_retries=0, http_timeout_s=2))
    assert server.url in str(e.value) and str(e.value).startswith("config error: rewards.http_url")


def test_a_raising_reward_function_is_one_line():
    from coati_ray.experience.reward_sources import RewardSources

    rs = RewardSources(sources(function="tests.reward_fixtures:raises"))
    with pytest.raises(RewardError) as e:
        rs(torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2), ["sort: 1"], ["1"], [{}])
    assert "tests.reward_fixtures:raises raised ZeroDivisionError" in str(e.value) and "\n" not in str(e.value)


def test_trl_benchmark_scores_with_the_same_verifier():
    """benchmarks/trl_grpo.py carries its own copy of the sorting score (its venv has no coati_ray)."""
    import importlib.util
    import os
    import random

    from coati_ray.tasks import sorting
    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("trl_grpo", os.path.join(REPO, "benchmarks", "trl_grpo.py"))
    trl_grpo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trl_grpo)
    rng = random.Random(0)
    for _ in range(200):
        numbers = sorting.sample_numbers(rng)
        prompt = "<s>Human: " + sorting.prompt_text(numbers) + "\nAssistant: "
        response = rng.choice([sorting.answer_text(numbers), sorting.corrupt(numbers, rng, rng.randint(1, 3)), "x 3"])
        assert trl_grpo.gold_score(prompt, response) == sorting.gold_score(numbers, response)
