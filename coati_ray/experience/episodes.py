"""Multi-turn episodes: the policy writes a turn, the environment answers, until done (no Ray here).

One batch of episodes runs turn by turn: every episode still going generates its next turn in one batched
`generate` call (so episodes run concurrently), the environments' calls run concurrently on threads, and
each answer is appended as a `tool` turn rendered by the chat template. The episode then becomes one sample
of the usual layout, so the replay buffer, the estimators and the trainers take it as they take a response:

    sequences (B, P + A): the left-padded prompt, then every turn and every tool turn, right-padded
    action_mask (B, A):   1 on the policy's tokens (each turn up to and including its end-of-turn token),
                          0 on the environment's (tool output and the template's text around it): context,
                          never trained and outside the KL, which is masked by the same tensor
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from coati_ray.experience.environments import EnvironmentCalls, EnvironmentFailed, as_step_result

_REPLY = "\u2063REPLY\u2063"  # a policy turn no template rewrites, to cut the text around it
_OBSERVATION = "\u2063OBSERVATION\u2063"


@dataclass(frozen=True)
class ToolTurnFormat:
    """What the chat template writes between a policy turn and the next: the turn's closing, the `tool` turn
    holding the environment's answer, the next generation prompt. Rendered for each answer (a template may
    quote or escape it: Llama-3.1 writes a tool's text as JSON) after the conversation [user, assistant], in
    which the template renders the assistant turn as it renders any turn followed by a tool's answer.
    """

    chat: object  # the ChatFormat

    @classmethod
    def of(cls, tokenizer) -> "ToolTurnFormat":
        """Raises ValueError when the template has no tool turn."""
        from coati_ray.data.template import ChatFormat

        fmt = cls(ChatFormat.of(tokenizer))
        text, _, closed = fmt._cut(_OBSERVATION)
        if _OBSERVATION not in text[closed:]:
            raise ValueError("the chat template does not render a `tool` turn's content after an assistant turn "
                             "(give data.chat_template a template with a tool role)")
        return fmt

    def _cut(self, observation: str) -> tuple[str, int, int]:
        """(text, after the reply, after its end-of-turn token) of [user, assistant, tool] with the next
        generation prompt."""
        chat = self.chat
        messages = [{"role": "user", "content": "1"}, {"role": "assistant", "content": _REPLY},
                    {"role": "tool", "content": observation}]
        try:
            text = chat.generation_prompt(messages)
        except ValueError as e:
            raise ValueError(f"the chat template has no `tool` turn ({e}); give data.chat_template a template with "
                             "a tool role") from None
        at = text.find(_REPLY)
        if at < 0:
            raise ValueError("the chat template does not render an assistant turn followed by a tool turn")
        at += len(_REPLY)
        eot = chat.end_of_turn
        closed = text.find(eot, at) + len(eot) if eot and eot in text[at:] else at
        return text, at, closed

    def context(self, observation: str, ended_by_end_of_turn: bool) -> str:
        """The text between a policy turn and the next: the turn's closing (its end-of-turn token too when the
        turn ended at a `rollout.stop` string), the tool turn, the generation prompt."""
        text, at, closed = self._cut(observation)
        return text[closed if ended_by_end_of_turn else at:]


def check_tool_turns(tokenizer, key: str = "data.chat_template") -> None:
    """Before Ray: the chat template renders a tool turn after an assistant turn (else one line naming the key)."""
    from coati_ray.errors import ConfigError

    try:
        ToolTurnFormat.of(tokenizer)
    except ValueError as e:
        raise ConfigError(f"config error: {key}: rollout.environment needs tool turns, but {e}") from None


@dataclass
class Episodes:
    """A batch of finished episodes in the sample layout (module docstring); B episodes, A response tokens.

    env_reward (B,): each episode's environment rewards summed; truncated (B,) bool: ended by max_turns,
    max_total_tokens or a turn cut at generation.max_new_tokens, not by the environment; failed (B,) bool:
    ended by an environment error (its action_mask is all 0: nothing of it trains); errors: their messages.
    """

    sequences: torch.Tensor
    mask: torch.Tensor
    action_mask: torch.Tensor
    prompt_length: int
    env_reward: torch.Tensor
    truncated: torch.Tensor
    failed: torch.Tensor
    errors: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    final_texts: list = field(default_factory=list)  # each episode's last policy turn (its answer), as text


@dataclass
class _Episode:
    prompt: list
    env: object = None
    tokens: list = field(default_factory=list)
    trained: list = field(default_factory=list)
    reward: float = 0.0
    turns: int = 0
    tool_calls: int = 0
    info: dict = field(default_factory=dict)
    last_text: str = ""
    done: bool = False
    truncated: bool = False
    turn_cut: bool = False  # the last policy turn was cut by a length limit before it ended (no step was taken)
    error: Optional[str] = None

    def add(self, ids: list, trained: bool) -> None:
        self.tokens += ids
        self.trained += [int(trained)] * len(ids)


def _stop_ids(tokenizer, stop: list) -> list:
    """The ids of the rollout.stop strings that are one token: generation stops on them (every stop string is
    also looked for in the decoded turn, `_cut_at_stop`)."""
    ids = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in stop]
    return [i[0] for i in ids if len(i) == 1]


def _cut_at_stop(tokenizer, ids: list, stops: list) -> Optional[int]:
    """The length of the shortest prefix of `ids` whose text contains one of `stops` (None: none does)."""
    if not stops or not any(s in tokenizer.decode(ids) for s in stops):
        return None
    for k in range(1, len(ids) + 1):
        if any(s in tokenizer.decode(ids[:k]) for s in stops):
            return k
    return None


def _turn_text(text: str, lead: str) -> str:
    """A policy turn's text as the environment reads it: without the space the template's layout puts before a
    reply (the generation prompt's, which the reply's first token carries)."""
    return text[len(lead):] if lead and text.startswith(lead) else text


_SAID_TURN_CUT: list = []


def _say_turn_cut(max_new_tokens: int, max_total_tokens: int) -> None:
    """Once per process: a policy turn reached its length limit before it ended, so the environment never saw it
    (a tool call without its closing tag is lost); rollout/turn_truncated counts them."""
    if _SAID_TURN_CUT:
        return
    _SAID_TURN_CUT.append(True)
    import logging

    logging.getLogger("coati_ray").warning(
        f"a policy turn was cut at {max_new_tokens} new tokens (generation.max_new_tokens, or what is left of "
        f"rollout.max_total_tokens={max_total_tokens}) before its end-of-turn token or a rollout.stop string: its "
        "episode ends as truncated and the environment never sees that turn (a tool call cut before its closing "
        "tag is lost); rollout/turn_truncated counts them; raise generation.max_new_tokens if they are many")


def run_episodes(actor, tokenizer, items: list[dict], gen, cfg, make_env: Callable, calls: EnvironmentCalls,
                 episode_ids: list[str], device: torch.device, max_prompt_length: Optional[int] = None) -> Episodes:
    """Run one episode per prompt item (`input_ids`, `row`) to its end. `gen` a GenerationConfig (each turn gets
    `max_new_tokens`), `cfg` a RolloutConfig, `make_env(episode_id)` a fresh environment; a first user message
    from `reset` is cut to `max_prompt_length` tokens from the left, as prompts are."""
    from coati_ray.data.datasets import collate_prompts
    from coati_ray.data.template import ChatFormat

    fmt, turn_fmt = ChatFormat.of(tokenizer), ToolTurnFormat.of(tokenizer)
    end_ids = actor.eos_token_ids(tokenizer)
    # the template's own end of turn; another end id (ChatML's <|endoftext|>) ends the turn too, and then the
    # template's closing follows as context, as after a stop string
    end_of_turn = tokenizer.convert_tokens_to_ids(fmt.end_of_turn) if fmt.end_of_turn else None
    single_stops = _stop_ids(tokenizer, cfg.stop)
    stop_set = set(end_ids) | set(single_stops)

    episodes = [_Episode(prompt=list(it["input_ids"])) for it in items]

    def fail(ep, message):
        ep.error, ep.done = message, True

    made = calls.map([(lambda e=e: make_env(e)) for e in episode_ids])
    for ep, env in zip(episodes, made):
        (fail(ep, str(env)) if isinstance(env, EnvironmentFailed) else setattr(ep, "env", env))
    live = [(ep, it.get("row") or {"prompt": it.get("prompt", "")}) for ep, it in zip(episodes, items) if not ep.done]
    for (ep, _), obs in zip(live, calls.map([(lambda ep=ep, row=row: ep.env.reset(row)) for ep, row in live])):
        if isinstance(obs, EnvironmentFailed):
            fail(ep, str(obs))
        elif isinstance(obs, str) and obs:
            ep.prompt = fmt.prompt_ids([{"role": "user", "content": obs}])[-(max_prompt_length or 0):]
        elif obs is not None and not isinstance(obs, str):
            fail(ep, f"reset returned {type(obs).__name__}, not a string or None")

    while True:
        active = [ep for ep in episodes if not ep.done]
        if not active:
            break
        room = [cfg.max_total_tokens - len(ep.tokens) for ep in active]
        turn_gen = dataclasses.replace(gen, max_new_tokens=max(1, min(gen.max_new_tokens, max(room))))
        batch = collate_prompts([{"input_ids": ep.prompt + ep.tokens} for ep in active], tokenizer.pad_token_id)
        seqs, _, action_mask = actor.generate_with(turn_gen, batch["input_ids"].to(device),
                                                   batch["attention_mask"].to(device), tokenizer,
                                                   eos_token_id=sorted(stop_set))
        P = batch["input_ids"].size(1)
        stepping, texts = [], []
        for ep, row, keep, space in zip(active, seqs[:, P:].tolist(), action_mask.tolist(), room):
            ids = [t for t, k in zip(row, keep) if k]
            cut = _cut_at_stop(tokenizer, ids, cfg.stop)  # a one-token stop may also sit inside a merged token
            ended = cut is not None or (ids and ids[-1] in stop_set)
            ids = ids[:cut] if cut is not None else ids
            if len(ids) > space:
                ids, ended = ids[:space], False
            ep.add(ids, trained=True)
            ep.turns += 1
            by_end_of_turn = bool(ids) and ids[-1] == end_of_turn
            text_ids = ids[:-1] if ids and ids[-1] in end_ids else ids
            ep.last_text = _turn_text(tokenizer.decode(text_ids, skip_special_tokens=False), fmt.probe.reply_lead)
            if not ended:  # cut by generation.max_new_tokens or max_total_tokens: no complete turn to answer
                ep.truncated = ep.done = ep.turn_cut = True
                _say_turn_cut(turn_gen.max_new_tokens, cfg.max_total_tokens)
                continue
            stepping.append((ep, by_end_of_turn))
            texts.append(ep.last_text)
        answers = calls.map([(lambda ep=ep, t=t: ep.env.step(t)) for (ep, _), t in zip(stepping, texts)])
        for (ep, by_end_of_turn), answer in zip(stepping, answers):
            try:
                if isinstance(answer, EnvironmentFailed):
                    raise answer
                result = as_step_result(answer)
            except EnvironmentFailed as e:
                fail(ep, str(e))
                continue
            ep.reward += result.reward
            for k, v in result.info.items():
                ep.info[k] = ep.info.get(k, 0.0) + v
            if result.done:
                ep.done = True
                continue
            context = fmt.ids(turn_fmt.context(result.observation or "", by_end_of_turn))
            if ep.turns >= cfg.max_turns or len(ep.tokens) + len(context) >= cfg.max_total_tokens:
                ep.truncated = ep.done = True
                continue
            ep.add(context, trained=False)
            ep.tool_calls += 1
    return _assemble(episodes, tokenizer.pad_token_id, end_ids)


def _assemble(episodes: list, pad_id: int, end_ids: list) -> Episodes:
    from coati_ray.data.datasets import pad_left

    P = max(len(ep.prompt) for ep in episodes)
    A = max(1, max(len(ep.tokens) for ep in episodes))
    prompts = pad_left([ep.prompt for ep in episodes], pad_id)
    B = len(episodes)
    response = torch.full((B, A), pad_id, dtype=torch.long)
    action_mask = torch.zeros(B, A, dtype=torch.long)
    mask = torch.zeros(B, P + A, dtype=torch.long)
    for i, ep in enumerate(episodes):
        n = len(ep.tokens)
        response[i, :n] = torch.tensor(ep.tokens, dtype=torch.long)
        if ep.error is None:
            action_mask[i, :n] = torch.tensor(ep.trained, dtype=torch.long)
        mask[i, P - len(ep.prompt):P + n] = 1
    failed = torch.tensor([ep.error is not None for ep in episodes])
    trained = action_mask.sum(1).float()
    total = torch.tensor([len(ep.tokens) for ep in episodes], dtype=torch.float)
    stats = {"rollout/turns": _mean([ep.turns for ep in episodes]),
             "rollout/tool_calls": _mean([ep.tool_calls for ep in episodes]),
             "rollout/turn_truncated": _mean([ep.turn_cut for ep in episodes]),
             "rollout/env_errors": float(failed.float().sum()),
             "rollout/trained_tokens": float(trained.mean()),
             "rollout/context_tokens": float((total - trained).mean()),
             "rollout/episodes": float(B)}
    for key in sorted({k for ep in episodes for k in ep.info}):  # the environment's own counts, never over ours
        name = f"rollout/{key}" if f"rollout/{key}" not in stats else f"rollout/env_{key}"
        stats[name] = _mean([ep.info.get(key, 0.0) for ep in episodes])
    return Episodes(sequences=torch.cat([prompts, response], dim=1), mask=mask, action_mask=action_mask,
                    prompt_length=P, env_reward=torch.tensor([ep.reward for ep in episodes], dtype=torch.float32),
                    truncated=torch.tensor([ep.truncated for ep in episodes]), failed=failed,
                    errors=[ep.error for ep in episodes if ep.error is not None], stats=stats,
                    final_texts=[ep.last_text.strip() for ep in episodes])


def episode_ids(tag: str, n: int) -> list[str]:
    """Ids unique across batches, remade batches, evaluations and runs (an HTTP environment keys its state on
    them): `<tag>-<random>-<i>`."""
    import uuid

    run = uuid.uuid4().hex[:12]
    return [f"{tag}-{run}-{i}" for i in range(n)]


def _mean(xs: list) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


class EpisodeRunner:
    """What a rollout worker holds for `rollout.environment`: the environment factory, the threads its calls run
    on, and the count of episodes that ended in an environment error (more than `max_env_error_fraction` of
    them, over at least 32 episodes' worth, ends the run in one line naming the environment)."""

    def __init__(self, cfg, workers: int = 64, max_prompt_length: Optional[int] = None):
        from coati_ray.experience.environments import environment_factory

        self.cfg, self.max_prompt_length = cfg, max_prompt_length
        self.make_env = environment_factory(cfg)
        self.calls = EnvironmentCalls(cfg.timeout_s, workers=max(64, workers))
        self.episodes = self.failures = 0

    def __call__(self, actor, tokenizer, items: list[dict], gen, device, batch_id: int) -> Episodes:
        out = run_episodes(actor, tokenizer, items, gen, self.cfg, self.make_env, self.calls,
                           episode_ids(f"b{batch_id}", len(items)), device, self.max_prompt_length)
        self.count(out)
        return out

    def play(self, actor, tokenizer, items: list[dict], gen, device, tag: str, options: Optional[dict] = None):
        """Episodes for evaluation: not counted against max_env_error_fraction; `options` override the
        environment's (e.g. {tools: false} for rollout.baseline_options)."""
        make_env = self.make_env
        if options:
            from coati_ray.experience.environments import environment_factory

            make_env = environment_factory(dataclasses.replace(self.cfg, options={**self.cfg.options, **options}))
        return run_episodes(actor, tokenizer, items, gen, self.cfg, make_env, self.calls,
                            episode_ids(tag, len(items)), device, self.max_prompt_length)

    def count(self, out: Episodes) -> None:
        from coati_ray.errors import RolloutError
        from coati_ray.utils.redact import redact_url

        self.episodes += int(out.failed.numel())
        self.failures += int(out.failed.sum())
        if self.failures > self.cfg.max_env_error_fraction * max(self.episodes, 32):
            shown = f"http {redact_url(self.cfg.url)}" if self.cfg.environment == "http" else self.cfg.environment
            raise RolloutError(f"rollout error: environment {shown} failed in {self.failures} of {self.episodes} "
                               f"episodes, more than rollout.max_env_error_fraction={self.cfg.max_env_error_fraction:g}"
                               f" allows; the last: {out.errors[-1] if out.errors else '?'}; fix the environment")
