"""The experience-maker actor: four models, one prompt batch at a time.

Weights arrive between batches (Ray runs one method of an actor at a time, so a `load_weights`
queued behind a `make` runs when that batch is done) and are loaded with strict key and shape
checks. A batch's Experience is the task's second return value: it is stored once in the object
store, owned by the driver, and the buffer only ever sees its ObjectRef.
"""

from __future__ import annotations

import os
import time
from typing import Optional

import ray


class MakerBehind(RuntimeError):
    """A maker asked to generate with a policy version it does not hold (it was restarted and has
    not reloaded the current weights yet): the driver reloads them and sends the batch again."""


@ray.remote
class ExperienceMaker:
    def __init__(self, index: int, cfg_dict: dict, torch_threads: Optional[int] = None):
        import torch

        from coati_ray.config import from_dict
        from coati_ray.config.ppo import PPOConfig
        from coati_ray.experience.maker import build_experience_models
        from coati_ray.models import load_tokenizer

        if torch_threads:
            torch.set_num_threads(torch_threads)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.index = index
        self.cfg = cfg = from_dict(PPOConfig, cfg_dict)
        self.device = torch.device("cuda" if torch.cuda.is_available() and cfg.maker.num_gpus > 0 else "cpu")
        self.tokenizer = load_tokenizer(cfg.actor.tokenizer_path or cfg.actor.path, cfg.actor.trust_remote_code)
        # Makers infer in their own dtype (maker.dtype); weight syncs cast the trainers' weights to it.
        self.models = build_experience_models(cfg, self.device)
        self.version = 0
        self.batches_made = 0
        from actors.metrics import ActorMetrics
        from coati_ray.utils.flops import num_params

        self.metrics = ActorMetrics("maker", index)
        self.n_params = {name: num_params(getattr(self.models, name)) for name in ("actor", "reward", "critic")}

    def ready(self) -> int:
        return self.index

    def pid(self) -> int:
        """The process id (fault-injection tests kill it with SIGKILL)."""
        return os.getpid()

    def load_weights(self, actor_ref: list, critic_ref: Optional[list], version: int, lora_only: bool) -> dict:
        """Load weights exported by the trainers (refs wrapped in lists): strict keys and shapes; floating
        tensors are cast to this maker's dtype and counted."""
        from coati_ray.models.weights import load_weights, state_bytes

        t = time.perf_counter()
        actor_state = ray.get(actor_ref[0])
        casts = load_weights(self.models.actor, actor_state, lora_only)
        moved = state_bytes(actor_state)
        if critic_ref is not None:
            critic_state = ray.get(critic_ref[0])
            casts += load_weights(self.models.critic, critic_state, lora_only=False)
            moved += state_bytes(critic_state)
        self.version = version
        seconds = time.perf_counter() - t
        self.metrics.set("weight_sync_seconds", seconds)
        self.metrics.set("weight_sync_bytes", moved)
        return {"seconds": seconds, "bytes": moved, "version": version, "cast_tensors": casts, "maker": self.index}

    @ray.method(num_returns=2)
    def make(self, prompt_items: list[dict], batch_id: int, expected_version: Optional[int] = None) -> tuple:
        """Generate from `prompt_items` and score them: returns (statistics, Experience).

        The Experience is a task return, so it is owned by the driver that asked for it, not by this
        process: experience already made survives this maker. The driver hands its ref to the buffer.
        `expected_version` is the policy version the driver last sent this maker; a maker holding
        another one (restarted, its loads lost) refuses rather than generate with stale weights.
        """
        import torch

        if expected_version is not None and expected_version != self.version:
            raise MakerBehind(f"maker-{self.index} holds policy version {self.version}, expected {expected_version}")
        from coati_ray.algo.functional import masked_mean
        from coati_ray.data.datasets import collate_prompts
        from coati_ray.experience import make_experience
        from coati_ray.utils.flops import experience_flops

        t0 = time.perf_counter()
        batch = collate_prompts(prompt_items, self.tokenizer.pad_token_id)
        # Sampling depends only on (seed, batch id, weights), not on which maker runs it.
        torch.manual_seed(self.cfg.ppo.seed * 1000003 + batch_id)
        exp, timings = make_experience(self.models, self.tokenizer, batch["input_ids"].to(self.device),
                                       batch["attention_mask"].to(self.device), self.cfg.generation, self.cfg.ppo,
                                       version=self.version, maker=self.index, batch_id=batch_id)
        busy = time.perf_counter() - t0
        self.batches_made += 1
        stats = {**timings, "timing/make": busy, "reward": float(exp.reward.mean()),
                 "kl": float(masked_mean(exp.kl, exp.action_mask, dim=1).mean()),
                 "response_length": float(exp.action_mask.sum(1).float().mean()), "samples": exp.num_samples,
                 "version": exp.version, "maker": self.index, "batch_id": batch_id,
                 "flops": experience_flops(self.n_params["actor"], self.n_params["reward"], self.n_params["critic"],
                                           float(exp.attention_mask.sum()))}
        self._publish(stats, busy)
        return stats, exp

    def _publish(self, stats: dict, busy: float) -> None:
        from coati_ray.utils.flops import tflops

        m = self.metrics
        m.set("experiences_per_second", stats["samples"] / max(busy, 1e-9))
        m.set("generated_tokens_per_second", stats["generated_tokens"] / max(busy, 1e-9))
        m.inc("experiences_total", stats["samples"])
        m.inc("generated_tokens_total", stats["generated_tokens"])
        m.set("reward_mean", stats["reward"])
        m.set("kl_mean", stats["kl"])
        m.set("tflops", tflops(stats["flops"], busy))
        m.stages({k: v for k, v in stats.items() if k in ("timing/generate", "timing/ref", "timing/reward",
                                                           "timing/values")})

    def evaluate(self, prompt_items: list[dict], greedy: bool, seed: int, samples_per_prompt: int = 1) -> dict:
        """Score held-out prompts with the live policy: gold score (if a task is set), RM score, KL."""
        import dataclasses

        from coati_ray.evaluation import evaluate_policy
        from coati_ray.tasks import gold_scorer

        t = time.perf_counter()
        gen = dataclasses.replace(self.cfg.generation, do_sample=not greedy)
        task = self.cfg.data.gold_task
        result = evaluate_policy(self.models.actor, self.tokenizer, prompt_items, gen, initial=self.models.initial,
                                 reward_model=self.models.reward, gold=gold_scorer(task) if task else None,
                                 batch_size=max(self.cfg.maker.batch_size, 32), seed=seed, device=self.device,
                                 samples_per_prompt=1 if greedy else samples_per_prompt)
        out = dataclasses.asdict(result)
        out.update(version=self.version, seconds=time.perf_counter() - t)
        return out

    def weights(self) -> dict:
        """The maker's current actor and critic weights (for tests and checks)."""
        return {"actor": {k: v.clone() for k, v in self.models.actor.state_dict().items()},
                "critic": {k: v.clone() for k, v in self.models.critic.state_dict().items()},
                "version": self.version}

