"""Multi-turn episodes (coati_ray/experience/episodes.py): masks, turns, budgets and environment failures.

The policy here is `tests.episode_fixtures:oracle`, a scripted generation backend, so every token of an
episode is known in advance and the masks can be checked by hand; the log-probs and KL come from a real
tiny model.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from coati_ray.algo.losses import IGNORE_INDEX
from coati_ray.tasks import calc

A, B = 12345, 54321
PROMPT = calc.prompt_text(A, B)


def _setup(path):
    from transformers import AutoTokenizer

    from coati_ray.data.template import use_chat_template
    from coati_ray.models import Actor

    tok = AutoTokenizer.from_pretrained(path)
    use_chat_template(tok, "auto")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok, Actor.from_pretrained(path).eval()


def _items(tok, n=2, prompt=PROMPT):
    from coati_ray.data.template import ChatFormat

    ids = ChatFormat.of(tok).prompt_ids([{"role": "user", "content": prompt}])
    return [{"input_ids": ids, "prompt": prompt, "row": {"prompt": prompt}} for _ in range(n)]


def _run(tok, actor, environment, items=None, **rollout):
    from coati_ray.config.loader import from_dict
    from coati_ray.config.rl import GenerationConfig
    from coati_ray.config.rollout import RolloutConfig
    from coati_ray.experience.episodes import EpisodeRunner

    cfg = from_dict(RolloutConfig, {"environment": environment, **rollout})
    gen = from_dict(GenerationConfig, {"max_new_tokens": 32, "backend": "tests.episode_fixtures:oracle"})
    runner = EpisodeRunner(cfg)
    return runner(actor, tok, items or _items(tok), gen, torch.device("cpu"), 0), runner


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_chatml", "tiny_llama3"])
def test_an_episode_is_the_conversation_sft_trains_on_with_the_same_trained_tokens(model, request):
    """The call, the tool's answer, the answer copied out: the episode's tokens and action mask are exactly
    ChatFormat.tokenize's ids and trained labels for the same messages (Coati's layout, ChatML, Llama-3)."""
    from coati_ray.data.template import ChatFormat

    tok, actor = _setup(request.getfixturevalue(model))
    out, _ = _run(tok, actor, "coati_ray.tasks.calc:CalcEnvironment")
    messages = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": calc.call_text(A, B)},
                {"role": "tool", "content": calc.observation_text(A + B)},
                {"role": "assistant", "content": calc.answer_text(A + B)}]
    ids, labels = ChatFormat.of(tok).tokenize(messages)
    P = out.prompt_length
    real = out.mask[0].bool()
    assert out.sequences[0][real].tolist() == ids
    trained = [int(label != IGNORE_INDEX) for label in labels]
    response = out.mask[0, P:].bool()
    assert out.action_mask[0][response].tolist() == trained[len(ids) - int(response.sum()):]
    assert out.env_reward.tolist() == [1.0, 1.0] and not out.truncated.any() and not out.failed.any()
    assert out.stats["rollout/turns"] == 2 and out.stats["rollout/tool_calls"] == 1
    n_response, n_trained = int(response.sum()), sum(trained[len(ids) - int(response.sum()):])
    assert out.stats["rollout/trained_tokens"] == n_trained  # both episodes alike: the mean is one episode's
    assert out.stats["rollout/context_tokens"] == n_response - n_trained > 0


def test_tool_tokens_are_context_outside_the_kl_and_the_loss(tiny_llama):
    """Through make_experience with a real actor and a different reference: the KL and the advantages are 0 on
    every tool token, and the hand-built mask (1 on the two turns, 0 on the tool turn between) is the one used."""
    from coati_ray.config.loader import from_dict
    from coati_ray.config.rl import GenerationConfig, AlgorithmConfig
    from coati_ray.config.rollout import RolloutConfig
    from coati_ray.experience.episodes import EpisodeRunner
    from coati_ray.experience.make import ExperienceModels, make_experience
    from coati_ray.models import Actor

    tok, actor = _setup(tiny_llama)
    initial = Actor.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        for p in initial.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ppo = from_dict(AlgorithmConfig, {"advantage_estimator": "grpo", "n_samples_per_prompt": 2, "kl_coef": 0.1})
    gen = from_dict(GenerationConfig, {"max_new_tokens": 32, "backend": "tests.episode_fixtures:oracle"})
    runner = EpisodeRunner(from_dict(RolloutConfig, {"environment": "coati_ray.tasks.calc:CalcEnvironment"}))
    exp, stats = make_experience(ExperienceModels(actor=actor, initial=initial), tok, _items(tok, 1), gen, ppo,
                                 episodes=runner)
    call = tok(" " + calc.call_text(A, B), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    tool = tok(f"\nTool: = {A + B}\nAssistant:", add_special_tokens=False)["input_ids"]
    answer = tok(f" The sum is {A + B}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    expected = [1] * len(call) + [0] * len(tool) + [1] * len(answer)
    assert exp.action_mask[0].tolist() == expected
    context = exp.action_mask == 0
    assert exp.kl[context].abs().max() == 0 and exp.kl[~context].abs().max() > 0
    assert exp.advantages[context].abs().max() == 0
    assert stats["reward/env"] == 1.0 and stats["rollout/tool_calls"] == 1.0


def test_max_turns_and_max_total_tokens_end_an_episode_as_truncated(tiny_llama):
    tok, actor = _setup(tiny_llama)
    out, _ = _run(tok, actor, "tests.episode_fixtures:NeverDone", max_turns=3)
    assert out.stats["rollout/turns"] == 3 and out.truncated.all()
    assert out.env_reward.tolist() == [0.75, 0.75]  # every turn's reward, summed
    assert out.stats["rollout/tool_calls"] == 2  # the third turn's answer is never appended
    out, _ = _run(tok, actor, "tests.episode_fixtures:NeverDone", max_turns=10, max_total_tokens=30)
    assert out.truncated.all() and int(out.mask[0, out.prompt_length:].sum()) <= 30


@pytest.mark.parametrize("environment, message", [
    ("tests.episode_fixtures:Raises", "ZeroDivisionError: the tool divided by zero"),
    ("tests.episode_fixtures:AnswersWrongly", "step returned str, not (observation, reward, done[, info])"),
])
def test_an_environment_that_fails_ends_the_episode_untrained_and_too_many_end_the_run(tiny_llama, environment,
                                                                                       message):
    from coati_ray.errors import RolloutError

    tok, actor = _setup(tiny_llama)
    out, runner = _run(tok, actor, environment, max_env_error_fraction=0.1)  # 2 failures: within 0.1 of 32
    assert out.failed.all() and runner.failures == 2
    with pytest.raises(RolloutError) as e:  # 8 of 8: past it
        _run(tok, actor, environment, items=_items(tok, 8), max_env_error_fraction=0.1)
    line = str(e.value)
    assert "\n" not in line and environment in line and message in line and "8 of 8 episodes" in line
    out, runner = _run(tok, actor, environment, max_env_error_fraction=1.0)
    assert out.failed.all() and out.action_mask.sum() == 0 and out.stats["rollout/env_errors"] == 2
    assert runner.failures == 2 and out.errors[0] == message


def test_a_slow_environment_times_out_and_a_failing_reset_is_counted(tiny_llama):
    import time

    tok, actor = _setup(tiny_llama)
    t = time.perf_counter()
    out, _ = _run(tok, actor, "tests.episode_fixtures:Sleeps", timeout_s=0.5, max_env_error_fraction=1.0,
                  options={"seconds": 3})
    assert time.perf_counter() - t < 2.5 and out.failed.all()
    assert out.errors[0] == "no answer within rollout.timeout_s=0.5 s"
    out, _ = _run(tok, actor, "tests.episode_fixtures:Raises", options={"when": "reset"}, max_env_error_fraction=1.0)
    assert out.failed.all() and out.errors[0] == "KeyError: 'no such row'"


def test_the_config_names_a_bad_environment_in_one_line():
    from coati_ray.config.loader import from_dict
    from coati_ray.config.rollout import RolloutConfig
    from coati_ray.errors import ConfigError

    for env, expected in [("tests.episode_fixtures:NoStep", "has no step method"),
                          ("tests.episode_fixtures:Sleeps", "rollout.options: tests.episode_fixtures:Sleeps(**options)"
                                                            " cannot take them"),
                          ("tests.episode_fixtures:Missing", "has no function 'Missing'"),
                          ("http", "rollout.url: environment http needs an http(s) URL")]:
        with pytest.raises(ConfigError) as e:
            from_dict(RolloutConfig, {"environment": env, "options": {"minutes": 1}}).validate()
        assert expected in str(e.value) and "\n" not in str(e.value)


class _CalcService(BaseHTTPRequestHandler):
    episodes: dict = {}

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/reset":
            env = calc.CalcEnvironment()
            env.reset(body["row"])
            self.episodes[body["episode"]] = env
            answer = {"observation": None}
        else:
            obs, reward, done, info = self.episodes[body["episode"]].step(body["text"])
            answer = {"observation": obs, "reward": reward, "done": done, "info": info}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_an_environment_served_over_http_plays_the_same_episode(tiny_llama):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CalcService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tok, actor = _setup(tiny_llama)
        local, _ = _run(tok, actor, "coati_ray.tasks.calc:CalcEnvironment")
        served, _ = _run(tok, actor, "http", url=f"http://127.0.0.1:{server.server_port}")
        assert torch.equal(local.sequences, served.sequences) and torch.equal(local.action_mask, served.action_mask)
        assert served.env_reward.tolist() == [1.0, 1.0] and len(_CalcService.episodes) == 2
        assert all(e.startswith("b0-") for e in _CalcService.episodes)  # batch 0, unique per call
    finally:
        server.shutdown()


def test_a_stop_string_ends_the_turn_and_the_template_closes_it_as_context(tiny_llama):
    """rollout.stop: the call's turn ends at '</calc>' (the tokens after it dropped), the environment answers
    it, and the end-of-turn token the policy did not write is appended as context (mask 0), not as its token."""
    tok, actor = _setup(tiny_llama)
    out, _ = _run(tok, actor, "coati_ray.tasks.calc:CalcEnvironment", stop=["</calc>"])
    call = tok(" " + calc.call_text(A, B), add_special_tokens=False)["input_ids"]
    close = tok(f"</s>\nTool: = {A + B}\nAssistant:", add_special_tokens=False)["input_ids"]
    answer = tok(" " + calc.answer_text(A + B), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    P = out.prompt_length
    assert out.sequences[0, P:].tolist() == call + close + answer
    assert out.action_mask[0].tolist() == [1] * len(call) + [0] * len(close) + [1] * len(answer)
    assert out.env_reward.tolist() == [1.0, 1.0]


def test_a_failed_episode_moves_neither_its_groups_mean_nor_another_groups():
    from coati_ray.experience.make import neutral_scores

    scores = torch.tensor([1.0, 0.0, 1.0, 5.0, 2.0, 2.0, 2.0, 2.0, 0.0, 1.0, 0.0, 1.0])
    failed = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0]).bool()
    out = neutral_scores(scores, failed, 4)
    assert out[:4].tolist() == pytest.approx([1.0, 0.0, 1.0, 2 / 3]) and out[:4].mean() == pytest.approx(2 / 3)
    assert out[4:8].tolist() == [0.0] * 4 and torch.equal(out[8:], scores[8:])


@pytest.mark.parametrize("answer, message", [
    (("ok", float("inf"), True), "step's reward is inf, not a finite number"),
    (("ok", 1.0, "false"), "step's done is 'false', not a bool"),
    ((7, 1.0, True), "step's observation is int, not a string or None"),
])
def test_an_answer_of_the_wrong_kind_is_an_environment_error(answer, message):
    from coati_ray.experience.environments import EnvironmentFailed, as_step_result

    with pytest.raises(EnvironmentFailed, match=message):
        as_step_result(answer)


def test_an_environment_count_reported_by_one_batch_only_is_averaged_over_every_batch():
    """`rollout/<info key>` is in a batch's stats only when one of its episodes reported it (here maker 0's, a
    tool error): the step's mean counts the other batch as 0 instead of failing on the missing key."""
    from coati_ray.reporting.step_metrics import MAKER_MEANS, step_metrics

    def batch(**rollout):
        return {**{k: 0.0 for k in MAKER_MEANS}, "samples": 8, "generated_tokens": 80, "flops": 0.0, "batch_id": 0,
                "rollout/turns": 2.0, "rollout/env_errors": 1.0, **{f"rollout/{k}": v for k, v in rollout.items()}}

    update = {"consumed": {"staleness": [0], "versions": [0]}, "flops/actor": 0.0}
    m = step_metrics(updates={"actor": update}, makes=[batch(tool_error=0.5), batch()],
                     sync={"export_seconds": 0.0, "bytes": 0, "transport": "ipc"}, loads=[], step_seconds=1.0,
                     buffer={"held_samples": 0, "capacity": 16, "dropped": 0}, version=1, makers=2, maker_restarts=0)
    assert m["rollout/tool_error"] == 0.25 and m["rollout/turns"] == 2.0 and m["rollout/env_errors"] == 2.0


def test_a_tool_call_cut_by_max_new_tokens_is_counted_and_said_once(tiny_llama, caplog):
    """The call is longer than generation.max_new_tokens: it never reaches the environment, the episode ends as
    truncated, rollout/turn_truncated counts it, and the log says so once (not per episode)."""
    import logging

    from coati_ray.config.loader import from_dict
    from coati_ray.config.rl import GenerationConfig
    from coati_ray.config.rollout import RolloutConfig
    from coati_ray.experience import episodes as episodes_module
    from coati_ray.experience.episodes import EpisodeRunner

    episodes_module._SAID_TURN_CUT.clear()
    tok, actor = _setup(tiny_llama)
    runner = EpisodeRunner(from_dict(RolloutConfig, {"environment": "coati_ray.tasks.calc:CalcEnvironment"}))
    gen = from_dict(GenerationConfig, {"max_new_tokens": 6, "backend": "tests.episode_fixtures:oracle"})
    with caplog.at_level(logging.WARNING, logger="coati_ray"):
        out = runner(actor, tok, _items(tok), gen, torch.device("cpu"), 0)
    assert out.truncated.all() and out.stats["rollout/turn_truncated"] == 1.0
    assert out.stats["rollout/tool_calls"] == 0 and out.env_reward.tolist() == [0.0, 0.0]
    assert caplog.text.count("a policy turn was cut at 6 new tokens") == 1
    full, _ = _run(tok, actor, "coati_ray.tasks.calc:CalcEnvironment")
    assert full.stats["rollout/turn_truncated"] == 0.0
