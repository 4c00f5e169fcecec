"""The experience-maker actor: its models, one prompt batch at a time.

Weights arrive through a `WeightReceiver` (actors/weight_endpoints.py) and are swapped in between
batches, never during one: an object-store handle is loaded by a call queued behind the running
`make` (Ray runs the default group's methods one at a time); broadcast buckets are received on the
actor's own `sync` thread while it generates and swapped in before the next batch. A batch's
Experience is the task's second return value: it is stored once in the object store, owned by the
driver, and the buffer only ever sees its ObjectRef.
"""

from __future__ import annotations

import os
import time
from typing import Optional

import ray


class MakerBehind(RuntimeError):
    """A maker asked to generate with a policy version it does not hold: restarted (Ray brought its process
    back with the base weights) or merely behind (a load or broadcast it was sent has not landed). The driver
    reloads the current weights into it and sends the batch again; only a restart counts as one."""

    def __init__(self, index: int, held: int, expected: int, restarted: bool):
        super().__init__(f"maker-{index} holds policy version {held}, expected {expected}"
                         + (" (restarted)" if restarted else ""))
        self.index, self.held, self.expected, self.restarted = index, held, expected, restarted

    def __reduce__(self):
        return MakerBehind, (self.index, self.held, self.expected, self.restarted)


@ray.remote(concurrency_groups={"sync": 1})
class ExperienceMaker:
    def __init__(self, index: int, cfg_dict: dict, torch_threads: Optional[int] = None,
                 cpu_cores: Optional[list] = None, nice: int = 0):
        import torch

        from coati_ray.utils.cpu import place_threads

        from coati_ray.config import from_dict
        from coati_ray.config.ppo import PPOConfig
        from coati_ray.experience.maker import build_experience_models
        from coati_ray.experience.rewards import RewardSources
        from coati_ray.models.loading import tokenizer_for

        place_threads(cpu_cores, nice, "maker")
        if torch_threads:
            torch.set_num_threads(torch_threads)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.index = index
        self.cfg = cfg = from_dict(PPOConfig, cfg_dict)
        self.device = torch.device("cuda" if torch.cuda.is_available() and cfg.maker.num_gpus > 0 else "cpu")
        # the prompts' chat template: its end-of-turn token ends a response
        self.tokenizer = tokenizer_for(cfg.actor, cfg.data.chat_template)
        # Makers infer in their own dtype (maker.dtype); weight syncs cast the trainers' weights to it.
        self.models = build_experience_models(cfg, self.device)
        self.rewards = RewardSources(cfg.rewards, self.models.reward)
        self.batches_made = 0
        from actors.metrics import ActorMetrics
        from actors.weight_endpoints import WeightReceiver
        from coati_ray.utils.flops import num_params

        self.metrics = ActorMetrics("maker", index)
        roles = {"actor": self.models.actor, **({"critic": self.models.critic} if self.models.critic is not None else {})}
        lora = {"actor": cfg.actor.lora_rank > 0, "critic": cfg.critic is not None and cfg.critic.lora_rank > 0}
        self.receiver = WeightReceiver(roles, lora, self.metrics)
        self.n_params = {name: num_params(getattr(self.models, name)) if getattr(self.models, name) is not None else 0
                         for name in ("actor", "reward", "critic")}

    def ready(self) -> int:
        return self.index

    def pid(self) -> int:
        """The process id (fault-injection tests kill it with SIGKILL)."""
        return os.getpid()

    @property
    def version(self) -> int:
        return self.receiver.version

    def load_weights(self, handle: dict) -> dict:
        """An object-store handle from the driver's WeightSync: loaded now (this call runs between batches)."""
        return {**self.receiver.load(handle), "maker": self.index}

    @ray.method(concurrency_group="sync")
    def join_sync(self, role: str, buckets: list, meeting: tuple, rank: int, size: int, backend: str,
                  timeout_s: float) -> int:
        """Join the collective weight-sync group of `role` (on the sync thread: a running batch goes on)."""
        self.receiver.join(role, buckets, meeting, rank, size, backend, timeout_s)
        return rank

    @ray.method(concurrency_group="sync")
    def receive_weights(self, role: str, buckets: list, version: int) -> dict:
        """Receive one broadcast into staging while generation may go on; swapped in before the next batch."""
        return {**self.receiver.receive(role, buckets, version), "maker": self.index}

    @ray.method(concurrency_group="sync")
    def leave_sync(self) -> None:
        self.receiver.leave()

    def _current(self, expected: Optional[int] = None) -> None:
        """Between batches: swap in weights that have fully arrived (waiting for `expected` if promised)."""
        self.receiver.swap(expected, timeout_s=self.cfg.sync.timeout_s if expected is not None else 0.0)

    @ray.method(num_returns=2)
    def make(self, prompt_items: list[dict], batch_id: int, expected_version: Optional[int] = None) -> tuple:
        """Generate from `prompt_items` and score them: returns (statistics, Experience).

        The Experience is a task return, so it is owned by the driver that asked for it, not by this
        process: experience already made survives this maker. The driver hands its ref to the buffer.
        `expected_version` is the policy version the driver last sent this maker; a maker holding
        another one (restarted, its loads lost) refuses rather than generate with stale weights.
        """
        import torch

        self._current(expected_version)
        # A newer version than promised is fine (a broadcast can land between the submit and the batch);
        # an older one means this process lost weights it was sent (it was restarted).
        if expected_version is not None and self.version < expected_version:
            raise MakerBehind(self.index, self.version, expected_version,
                              ray.get_runtime_context().was_current_actor_reconstructed)
        from coati_ray.experience import make_experience
        from coati_ray.trainers.ppo import peak_device_memory_gb
        from coati_ray.utils.flops import experience_flops

        t0 = time.perf_counter()
        # Sampling depends only on (seed, batch id, weights), not on which maker runs it.
        torch.manual_seed(self.cfg.ppo.seed * 1000003 + batch_id)
        def make(items):
            return make_experience(self.models, self.tokenizer, items, self.cfg.generation, self.cfg.ppo,
                                   self.rewards, version=self.version, maker=self.index, batch_id=batch_id,
                                   device=self.device, behaviour_log_probs=not self.cfg.trainer_log_probs_are_behaviour)

        p = self.cfg.ppo
        if p.filter_groups:  # prompt_items carry spare rounds: sample until the batch's groups carry signal
            from coati_ray.experience.dynamic_sampling import make_filtered_experience

            exp, stats = make_filtered_experience(make, prompt_items, self.cfg.prompts_per_batch,
                                                  p.n_samples_per_prompt, p.max_sampling_rounds)
        else:
            exp, stats = make(prompt_items)
        busy = time.perf_counter() - t0
        self.batches_made += 1
        stats.update({"timing/make": busy, "reward": float(exp.reward.mean()), "samples": exp.num_samples,
                      "version": exp.version, "maker": self.index, "batch_id": batch_id,
                      "memory/peak_gb": peak_device_memory_gb(),
                      "flops": experience_flops(self.n_params["actor"], self.n_params["reward"],
                                                self.n_params["critic"], float(exp.attention_mask.sum()))})
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
        if stats["kl"] == stats["kl"]:  # not NaN (makers that skip their log-probs have no KL of their own)
            m.set("kl_mean", stats["kl"])
        m.set("tflops", tflops(stats["flops"], busy))
        m.stages({k: v for k, v in stats.items() if k in ("timing/generate", "timing/ref", "timing/reward",
                                                           "timing/values")})

    def evaluate(self, prompt_items: list[dict], greedy: bool, seed: int, samples_per_prompt: int = 1) -> dict:
        """Score held-out prompts with the live policy: gold score (if a task is set), RM score, KL."""
        import dataclasses

        from coati_ray.evaluation import evaluate_policy
        from coati_ray.tasks import gold_scorer

        self._current()
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

    def weights(self, merged: bool = False) -> dict:
        """The maker's current actor (and critic) weights (for tests and checks; staged weights first swap in).
        `merged`: LoRA folded into the (dequantized) base, as an export would write them."""
        from coati_ray.models.weights import export_view

        self._current()
        out = {"actor": export_view(self.models.actor, merged), "version": self.version}
        if self.models.critic is not None:
            out["critic"] = export_view(self.models.critic, merged)
        return out

