"""Judging a policy on held-out prompts: gold score, reward-model score and KL to the initial policy.

No Ray here: the pipeline calls it in-process on checkpoints, and the maker actor calls it on its
live models for `algorithm.eval_every`. Sampling is seeded per batch, so two policies are compared on
the same prompts with the same random stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class PolicyEval:
    """Means over every (prompt, sample); `samples` keeps the first few generations for reading."""

    gold_score: Optional[float]
    reward: Optional[float]
    kl_to_initial: Optional[float]
    response_length: float
    num_samples: int
    samples: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # logged as eval/<key> too (multi-turn: rollout/turns, baseline/...)


def sequence_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """KL(policy || initial) of each sampled response, summed over its tokens (k1 estimator).

    log_probs, ref_log_probs, action_mask: (B, A) -> (B,). The mean over samples drawn from the
    policy is an unbiased estimate of the sequence-level KL.
    """
    return ((log_probs - ref_log_probs) * action_mask).sum(dim=1)


@torch.no_grad()
def evaluate_policy(actor, tokenizer, prompt_items: list[dict], gen, *, initial=None, reward_model=None,
                    gold=None, batch_size: int = 16, samples_per_prompt: int = 1, seed: int = 0,
                    keep_samples: int = 8, device: Optional[torch.device] = None) -> PolicyEval:
    """Generate for every prompt item (`input_ids`, `prompt`) and score the responses.

    `gen` is a GenerationConfig (do_sample=False gives greedy decoding); `gold` is a scorer
    (prompt, response) -> float; `initial` (an Actor) enables the KL, `reward_model` the RM score.
    """
    from coati_ray.data.datasets import collate_prompts

    device = device or next(actor.parameters()).device
    was_training = actor.training
    actor.eval()
    gold_scores, rewards, kls, lengths, kept = [], [], [], [], []
    items = [it for it in prompt_items for _ in range(samples_per_prompt)]
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = collate_prompts(chunk, tokenizer.pad_token_id)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        torch.manual_seed(seed * 1000003 + start)
        seqs, full_mask, action_mask = actor.generate_with(gen, ids, mask, tokenizer)
        A = action_mask.size(1)
        responses = decode_responses(tokenizer, seqs[:, ids.size(1):], action_mask)
        lengths.extend(action_mask.sum(1).float().tolist())
        if initial is not None:
            temperature = gen.temperature if gen.do_sample else 1.0  # the distributions the answers came from
            kl = sequence_kl(actor.log_probs(seqs, full_mask, A, temperature),
                             initial.log_probs(seqs, full_mask, A, temperature), action_mask)
            kls.extend(kl.tolist())
        if reward_model is not None:
            rewards.extend(reward_model(seqs, full_mask).float().tolist())
        for j, (item, response) in enumerate(zip(chunk, responses)):
            score = gold(item["prompt"], response) if gold is not None else None
            if score is not None:
                gold_scores.append(score)
            if len(kept) < keep_samples:
                kept.append({"prompt": item["prompt"], "response": response, "gold_score": score,
                             "reward": rewards[start + j] if reward_model is not None else None})
    actor.train(was_training)
    mean = lambda xs: float(sum(xs) / len(xs)) if xs else None  # noqa: E731
    return PolicyEval(gold_score=mean(gold_scores), reward=mean(rewards), kl_to_initial=mean(kls),
                      response_length=mean(lengths) or 0.0, num_samples=len(items), samples=kept)


def decode_responses(tokenizer, actions: torch.Tensor, action_mask: torch.Tensor) -> list[str]:
    """(B, A) token ids and mask -> response texts without their end-of-turn / EOS token or padding."""
    from coati_ray.data.template import ChatFormat

    stops = set(ChatFormat.of(tokenizer).stop_token_ids)
    out = []
    for row, m in zip(actions.tolist(), action_mask.tolist()):
        ids = [t for t, keep in zip(row, m) if keep and t not in stops]
        out.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return out


@torch.no_grad()
def evaluate_episodes(runner, actor, tokenizer, prompt_items: list[dict], gen, *, initial=None, gold=None,
                      batch_size: int = 16, samples_per_prompt: int = 1, seed: int = 0, keep_samples: int = 8,
                      device: Optional[torch.device] = None, options: Optional[dict] = None) -> PolicyEval:
    """evaluate_policy for multi-turn episodes (`runner` an EpisodeRunner): the gold scorer judges each episode's
    final answer (its last turn); without one the environment's reward stands for it. `options` override the
    environment's (rollout.baseline_options)."""
    device = device or next(actor.parameters()).device
    was_training = actor.training
    actor.eval()
    gold_scores, kls, lengths, kept, stats = [], [], [], [], []
    items = [it for it in prompt_items for _ in range(samples_per_prompt)]
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        torch.manual_seed(seed * 1000003 + start)
        played = runner.play(actor, tokenizer, chunk, gen, device, f"eval{start}", options)
        seqs, mask, action_mask = (x.to(device) for x in (played.sequences, played.mask, played.action_mask))
        A = action_mask.size(1)
        lengths.extend(action_mask.sum(1).float().tolist())
        stats.append(played.stats)
        if initial is not None:
            temperature = gen.temperature if gen.do_sample else 1.0
            kls.extend(sequence_kl(actor.log_probs(seqs, mask, A, temperature),
                                   initial.log_probs(seqs, mask, A, temperature), action_mask).tolist())
        transcripts = decode_responses(tokenizer, seqs[:, played.prompt_length:], mask[:, played.prompt_length:])
        for j, (item, answer) in enumerate(zip(chunk, played.final_texts)):
            score = gold(item["prompt"], answer) if gold is not None else float(played.env_reward[j])
            gold_scores.append(score)
            if len(kept) < keep_samples:
                kept.append({"prompt": item["prompt"], "response": transcripts[j], "gold_score": score,
                             "reward": float(played.env_reward[j])})
    actor.train(was_training)
    mean = lambda xs: float(sum(xs) / len(xs)) if xs else None  # noqa: E731
    # a chunk carries an environment's own count only if one of its episodes reported it: absent, 0 there
    extra = {k: (sum if k == "rollout/env_errors" else mean)([s.get(k, 0.0) for s in stats])
             for k in sorted({k for s in stats for k in s}) if k != "rollout/episodes"}
    return PolicyEval(gold_score=mean(gold_scores), reward=None, kl_to_initial=mean(kls),
                      response_length=mean(lengths) or 0.0, num_samples=len(items), samples=kept, extra=extra)
