"""One prompt batch becomes experience, the same way wherever it runs (no Ray here).

A separate maker (actors/maker.py) and a colocated actor-group rank (actors/colocated.py) both hold a
`RolloutWorker`: the models, the reward sources and the rule that makes a batch's sampling depend only
on (seed, batch id, weights). That rule is what lets a colocated job generate exactly the tokens a
separate job does for the same seed and rollout layout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Optional

import torch

from coati_ray.experience.make import ExperienceModels, ScoredRollout, finish_experience, make_experience, score_rollout


def batch_seed(seed: int, batch_id: int) -> int:
    """The sampling seed of maker batch `batch_id` (whichever process makes it)."""
    return seed * 1000003 + batch_id


@contextlib.contextmanager
def seeded(seed: Optional[int]):
    """Run the body under `seed` (None: as it is) and give the caller's random state back afterwards (a trainer
    rank that also generates keeps its own stream for dropout and data order)."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def inference_mode(models: list):
    """Eval mode for the body, each model's own mode restored after (a trainer's model goes back to training)."""
    modes = [(m, m.training) for m in models if m is not None]
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)


class RolloutWorker:
    def __init__(self, cfg, models: ExperienceModels, tokenizer, rewards, device: torch.device, index: int):
        """`cfg` a RLConfig; `rewards` a RewardSources; `index` names the worker in each Experience (`maker`)."""
        from coati_ray.utils.flops import num_params

        self.cfg, self.models, self.tokenizer, self.rewards = cfg, models, tokenizer, rewards
        self.device, self.index = device, index
        self.n_params = {name: num_params(getattr(models, name)) if getattr(models, name) is not None else 0
                         for name in ("actor", "reward", "critic")}
        self.episodes = None
        if cfg.rollout.multi_turn:  # each sample an episode in the environment (experience/episodes.py)
            from coati_ray.experience.episodes import EpisodeRunner

            self.episodes = EpisodeRunner(cfg.rollout, workers=max(cfg.maker.batch_size, 32),
                                          max_prompt_length=cfg.data.max_prompt_length)

    def make(self, prompt_items: list[dict], batch_id: int, version: int,
             defer_values: bool = False) -> tuple[object, dict]:
        """(Experience, statistics) of one batch; with `defer_values` (the critic lives elsewhere) a
        ScoredRollout instead, finished by `finish_with_values` where the critic is."""
        from coati_ray.trainers.ppo import peak_device_memory_gb
        from coati_ray.utils.flops import experience_flops

        cfg, p = self.cfg, self.cfg.algorithm
        kwargs = dict(version=version, maker=self.index, batch_id=batch_id, device=self.device,
                      behaviour_log_probs=not cfg.trainer_log_probs_are_behaviour, episodes=self.episodes)
        t0 = time.perf_counter()

        def make(items):
            if defer_values:
                scored = score_rollout(self.models, self.tokenizer, items, cfg.generation, p, self.rewards, **kwargs)
                return scored.cpu(), scored.stats
            return make_experience(self.models, self.tokenizer, items, cfg.generation, p, self.rewards, **kwargs)

        with seeded(batch_seed(p.seed, batch_id)), inference_mode(self.models.all()):
            if p.filter_groups:  # prompt_items carry spare rounds: sample until the batch's groups carry signal
                from coati_ray.experience.dynamic_sampling import make_filtered_experience

                out, stats = make_filtered_experience(make, prompt_items, cfg.prompts_per_batch,
                                                      p.n_samples_per_prompt, p.max_sampling_rounds)
            else:
                out, stats = make(prompt_items)
        busy = time.perf_counter() - t0
        reward = out.score if isinstance(out, ScoredRollout) else out.reward
        mask = out.mask if isinstance(out, ScoredRollout) else out.attention_mask
        stats = dict(stats)
        stats.update({"timing/make": busy, "reward": float(reward.mean()), "samples": int(mask.size(0)),
                      "digest": digest(out.sequences),
                      "version": version, "maker": self.index, "batch_id": batch_id,
                      "memory/peak_gb": peak_device_memory_gb(), **device_peak(self.models.actor),
                      "flops": experience_flops(self.n_params["actor"], self.n_params["reward"],
                                                self.n_params["critic"], float(mask.sum()),
                                                int(stats.get("experience/actor_passes", 3)))})
        return out, stats

    def evaluate(self, prompt_items: list[dict], greedy: bool, seed: int, samples_per_prompt: int,
                 version: int) -> dict:
        """Score held-out prompts with the live policy: gold score (if a task is set), RM score, KL."""
        from coati_ray.evaluation import evaluate_policy
        from coati_ray.tasks import gold_scorer

        t = time.perf_counter()
        gen = dataclasses.replace(self.cfg.generation, do_sample=not greedy)
        task = self.cfg.data.gold_task
        if self.episodes is not None:
            return self._evaluate_episodes(prompt_items, gen, greedy, seed, samples_per_prompt, version, t)
        with seeded(None), inference_mode(self.models.all()):  # evaluate_policy seeds each batch
            result = evaluate_policy(self.models.actor, self.tokenizer, prompt_items, gen, initial=self.models.initial,
                                     reward_model=self.models.reward, gold=gold_scorer(task) if task else None,
                                     batch_size=max(self.cfg.maker.batch_size, 32), seed=seed, device=self.device,
                                     samples_per_prompt=1 if greedy else samples_per_prompt)
        out = dataclasses.asdict(result)
        out.update(version=version, seconds=time.perf_counter() - t)
        return out


    def _evaluate_episodes(self, prompt_items, gen, greedy, seed, samples_per_prompt, version, t) -> dict:
        """Held-out episodes in the environment, and with rollout.baseline_options (e.g. without the tool) when
        set, logged as eval/baseline/*."""
        from coati_ray.evaluation.policy import evaluate_episodes
        from coati_ray.tasks import gold_scorer

        task = self.cfg.data.gold_task
        kwargs = dict(gold=gold_scorer(task) if task else None, batch_size=max(self.cfg.maker.batch_size, 32),
                      seed=seed, device=self.device, samples_per_prompt=1 if greedy else samples_per_prompt)
        baseline = self.cfg.rollout.baseline_options
        with seeded(None), inference_mode(self.models.all()):
            result = evaluate_episodes(self.episodes, self.models.actor, self.tokenizer, prompt_items, gen,
                                       initial=self.models.initial, **kwargs)
            if baseline:
                other = evaluate_episodes(self.episodes, self.models.actor, self.tokenizer, prompt_items, gen,
                                          options=baseline, **kwargs)
                result.extra.update({f"baseline/{k}": v for k, v in
                                     {"gold_score": other.gold_score, **other.extra}.items()})
        out = dataclasses.asdict(result)
        out.update(version=version, seconds=time.perf_counter() - t)
        return out


def device_peak(model: torch.nn.Module) -> dict:
    """{peak_tflops, device} of the GPU that generates with `model` (in the dtype of its weights), for the makers'
    MFU: `device` names the physical GPU (host and visible device), so makers sharing one count its peak once.
    {} on CPU or on a GPU coati_ray.utils.flops does not know."""
    import os
    import socket

    from coati_ray.utils.flops import device_peak_tflops

    peak = device_peak_tflops(str(next(model.parameters()).dtype).replace("torch.", ""))
    if peak is None:
        return {}
    where = os.environ.get("CUDA_VISIBLE_DEVICES", "") or str(torch.cuda.current_device()
                                                               if torch.cuda.is_available() else "cpu")
    return {"peak_tflops": peak, "device": f"{socket.gethostname()}:{where}"}


def digest(sequences: torch.Tensor) -> str:
    """A short fingerprint of a batch's tokens: two runs sampled the same tokens when their digests agree."""
    import hashlib

    return hashlib.sha1(sequences.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def finish_with_values(critic: torch.nn.Module, scored: ScoredRollout, ppo, stats: dict) -> tuple:
    """A ScoredRollout made by a worker without the critic -> (Experience, statistics) with the critic's values:
    the same Experience make_experience would have made with this critic beside the actor."""
    from coati_ray.experience.make import critic_values
    from coati_ray.utils.flops import inference_flops, num_params

    t = time.perf_counter()
    with inference_mode([critic]):
        critic.eval()
        values = critic_values(critic, scored)
    exp, _ = finish_experience(scored, values, ppo)
    seconds = time.perf_counter() - t
    stats = {**stats, "timing/values": seconds, "timing/make": stats["timing/make"] + seconds,
             "flops": stats["flops"] + inference_flops(num_params(critic), float(scored.mask.sum()))}
    return exp, stats
