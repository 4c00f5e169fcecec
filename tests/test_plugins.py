"""The seams users extend without touching the package: an advantage estimator and a reward kind from a module
of their own (named `module:function` / `module:factory`), reward sources as a list, each in one line when wrong."""

import textwrap

import pytest
import torch

from coati_ray.errors import ConfigError
from tests.test_algorithms import RewardServer, grpo_cfg

USER_MODULE = '''
from coati_ray.algo.advantages import estimator


@estimator(group_relative=True)
def centred(x):
    """score minus the group mean, the same on every token"""
    g = x.scores.float().view(-1, x.group_size)
    return x.with_kl((g - g.mean(dim=1, keepdim=True)).flatten()), None


def length_bonus(scale=1.0):
    def score(prompts, responses, rows):
        return [scale * len(r) for r in responses]
    return score


def broken(**options):
    raise RuntimeError("no licence key")


calls = []


def traced_generate(actor, gen, input_ids, attention_mask, tokenizer=None, **extra):
    from coati_ray.models.generators import hf

    calls.append(int(input_ids.size(0)))
    return hf(actor, gen, input_ids, attention_mask, tokenizer, **extra)


def capped_generate(actor, gen, input_ids, attention_mask, tokenizer=None, **extra):
    """A served engine with a cap of its own: 2 new tokens, whatever generation.max_new_tokens says."""
    import dataclasses

    from coati_ray.models.generators import hf

    return hf(actor, dataclasses.replace(gen, max_new_tokens=2), input_ids, attention_mask, tokenizer, **extra)


def capped_and_says_so(actor, gen, input_ids, attention_mask, tokenizer=None, **extra):
    return capped_generate(actor, gen, input_ids, attention_mask, tokenizer, **extra) + ({"max_new_tokens": 2},)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """`my_rl_plugins`, a module outside the package, on the path as a job's working directory would be."""
    root = tmp_path / "user_code"
    root.mkdir()
    (root / "my_rl_plugins.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(root))
    return "my_rl_plugins"


def rewards_for(cfg, responses):
    from coati_ray.experience.reward_sources import RewardSources

    sources = RewardSources(cfg.rewards)
    seqs = torch.zeros(len(responses), 4, dtype=torch.long)
    return sources, sources(seqs, torch.ones_like(seqs), prompts=["sort: 3 1"] * len(responses),
                            responses=responses, rows=[{"prompt": "sort: 3 1"}] * len(responses))


def test_an_estimator_and_a_reward_kind_load_from_a_module_outside_the_package(user_module, tiny_llama, tmp_path):
    from coati_ray.algo.advantages import AdvantageInputs

    cfg = grpo_cfg(tiny_llama, tmp_path, f"algorithm.advantage_estimator={user_module}:centred", "rewards.function=null",
                   f"rewards.sources=[{{kind: '{user_module}:length_bonus', weight: 0.5, options: {{scale: 2.0}}}}, "
                   "{kind: function, function: 'coati_ray.tasks.sorting:reward'}]")
    spec = cfg.estimator
    assert spec.group_relative and not spec.needs_critic and cfg.roles == ("actor",)
    x = AdvantageInputs(scores=torch.tensor([1.0, 0.0, 2.0, 2.0]), kl_rewards=torch.zeros(4, 2),
                        action_mask=torch.ones(4, 2), group_size=2)
    adv, returns = spec.estimate(x)
    assert adv[:, 0].tolist() == [0.5, -0.5, 0.0, 0.0] and returns is None
    sources, (score, parts) = rewards_for(cfg, ["1 3", "31"])
    assert sources.needs_text and list(parts) == ["length_bonus", "function"]
    assert parts["length_bonus"].tolist() == [6.0, 4.0]  # scale 2 x characters
    assert score.tolist() == pytest.approx((0.5 * parts["length_bonus"] + parts["function"]).tolist())


def test_two_services_of_one_kind_each_weighted_and_named(tiny_llama, tmp_path):
    a, b = RewardServer(), RewardServer()
    try:
        cfg = grpo_cfg(tiny_llama, tmp_path, "rewards.function=null",
                       f"rewards.sources=[{{kind: http, url: '{a.url}?token=s3cret', weight: 1.0}}, "
                       f"{{kind: http, url: '{b.url}', weight: 2.0, name: judge}}, {{kind: http, url: '{b.url}'}}]")
        _, (score, parts) = rewards_for(cfg, ["12345", "1"])
    finally:
        a.close()
        b.close()
    assert list(parts) == ["http", "judge", "http_2"]
    assert score.tolist() == pytest.approx([0.5 * 4, 0.1 * 4])  # len / 10 from each, weights 1 + 2 + 1
    assert len(a.requests) == 1 and len(b.requests) == 2
    from coati_ray.config import to_dict
    from coati_ray.utils.redact import redact_config

    assert "s3cret" not in str(redact_config(to_dict(cfg)))  # a token in a source's url is never written


@pytest.mark.parametrize("overrides, needle", [
    (["rewards.sources=[{kind: function, function: 'coati_ray.tasks.sorting:reward'}]"],
     "rewards.function: is shorthand for a source, and rewards.sources is set too"),
    (["rewards.function=null", "rewards.sources=[{kind: judge}]"],
     "rewards.sources[0].kind: unknown reward kind 'judge'; use one of: model, function, http"),
    (["rewards.function=null", "rewards.sources=[{kind: model}]"], "rewards.sources[0].kind: model needs the reward"),
    (["rewards.function=null", "rewards.sources=[{kind: http, url: 'ftp://x'}]"],
     "rewards.sources[0].url: 'ftp://x' is not an http(s) URL"),
    (["rewards.function=null", "rewards.sources=[{kind: 'nowhere_module:f'}]"],
     "rewards.sources[0].kind: cannot import 'nowhere_module'"),
    (["algorithm.advantage_estimator=nowhere_module:adv"], "algorithm.advantage_estimator: cannot import 'nowhere_module'"),
])
def test_a_wrong_plugin_or_source_is_one_line_naming_its_key(tiny_llama, tmp_path, overrides, needle):
    with pytest.raises(ConfigError) as e:
        grpo_cfg(tiny_llama, tmp_path, *overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_factory_that_raises_is_one_line_naming_it(user_module, tiny_llama, tmp_path):
    cfg = grpo_cfg(tiny_llama, tmp_path, "rewards.function=null", f"rewards.sources=[{{kind: '{user_module}:broken'}}]")
    with pytest.raises(ConfigError, match=r"rewards.sources\[0\]: my_rl_plugins:broken\(\*\*options\) raised "
                                          "RuntimeError: no licence key"):
        rewards_for(cfg, ["1"])


def test_a_factory_given_options_it_does_not_take_is_one_line_before_ray(user_module, tiny_llama, tmp_path):
    from coati_ray.experience.reward_sources import check_reward_sources

    cfg = grpo_cfg(tiny_llama, tmp_path, "rewards.function=null",
                   f"rewards.sources=[{{kind: '{user_module}:length_bonus', options: {{scael: 2}}}}]")
    with pytest.raises(ConfigError) as e:
        check_reward_sources(cfg.rewards)  # the driver's preflight, before Ray starts
    assert "rewards.sources[0].options: my_rl_plugins:length_bonus cannot take {'scael': 2}" in str(e.value)
    assert "\n" not in str(e.value)
    good = grpo_cfg(tiny_llama, tmp_path, "rewards.function=null",
                    f"rewards.sources=[{{kind: '{user_module}:length_bonus', options: {{scale: 2}}}}]")
    check_reward_sources(good.rewards)


def test_a_generation_backend_of_ones_own_takes_the_generation_config_whole(user_module, tiny_llama, tokenizer):
    import dataclasses
    import importlib

    from coati_ray.config import from_dict
    from coati_ray.config.rl import GenerationConfig
    from coati_ray.models import Actor

    actor = Actor.from_pretrained(tiny_llama).eval()
    ids = torch.tensor([[0, 5, 6, 7], [8, 9, 10, 11]])
    mask = (ids != 0).long()
    gen = from_dict(GenerationConfig, {"backend": f"{user_module}:traced_generate", "max_new_tokens": 4,
                                       "do_sample": False})
    gen.validate()
    ours = actor.generate_with(gen, ids, mask, tokenizer)
    built_in = actor.generate_with(dataclasses.replace(gen, backend="compact"), ids, mask, tokenizer)
    assert importlib.import_module(user_module).calls == [2]
    assert all(torch.equal(a, b) for a, b in zip(ours, built_in))  # greedy: hf and compact agree token for token
    with pytest.raises(ConfigError, match="generation.backend: unknown backend 'vllm'; use one of: compact, hf"):
        dataclasses.replace(gen, backend="vllm").validate()


@pytest.mark.parametrize("backend", ["capped_generate", "capped_and_says_so"])
def test_truncation_and_the_overlong_penalty_follow_what_the_backend_produced(user_module, backend, tiny_llama, tmp_path,
                                                                               tokenizer, caplog):
    """A backend that stops responses at 2 tokens under generation.max_new_tokens=8: the cut responses count as
    truncated, the overlong penalty reaches its full -factor at 2 (the backend's limit), and the log says once
    that the limit differs (a backend may also say it: a fourth item {max_new_tokens: 2})."""
    import logging

    from coati_ray.experience import make_experience
    from coati_ray.experience.prompts import read_prompt_data
    from coati_ray.experience.make import ExperienceModels
    from coati_ray.experience.reward_sources import RewardSources
    from coati_ray.models import Actor

    cfg = grpo_cfg(tiny_llama, tmp_path, f"generation.backend={user_module}:{backend}", "generation.max_new_tokens=8",
                   "algorithm.overlong_penalty=1.0", "algorithm.overlong_buffer=1", "generation.do_sample=false")
    models = ExperienceModels(actor=Actor.from_pretrained(tiny_llama).eval(),
                              initial=Actor.from_pretrained(tiny_llama).eval())
    items = read_prompt_data(cfg.data, tokenizer)[0][:2]
    with caplog.at_level(logging.WARNING, logger="coati_ray"):
        exp, stats = make_experience(models, tokenizer, items, cfg.generation, cfg.algorithm, RewardSources(cfg.rewards))
    lengths = exp.action_mask.sum(1)
    assert int(lengths.max()) == 2 and stats["experience/max_new_tokens"] == 2.0
    cut = lengths == 2  # the tiny random model writes no end token in 2 tokens
    assert cut.all() and stats["experience/truncated"] == 1.0  # the config's 8 would call none of them cut
    assert stats["reward/overlong_penalty"] == pytest.approx(-1.0)  # at the backend's limit: the full factor
    if backend == "capped_generate":
        assert "cut responses at 2 tokens, fewer than generation.max_new_tokens=8" in caplog.text
