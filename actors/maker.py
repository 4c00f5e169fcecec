"""The experience-maker actor: its models, one prompt batch at a time.

Weights arrive through a `WeightReceiver` (actors/weight_endpoints.py) and are swapped in between
batches, never during one: an object-store handle is loaded by a call queued behind the running
`make` (Ray runs the default group's methods one at a time); broadcast buckets are received on the
actor's own `weights` thread while it generates and swapped in before the next batch. A batch's
Experience is the task's second return value: it is stored once in the object store, owned by the
driver, and the buffer only ever sees its ObjectRef.
"""

from __future__ import annotations

import os
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


@ray.remote(concurrency_groups={"weights": 1})
class ExperienceMaker:
    def __init__(self, index: int, cfg_dict: dict, torch_threads: Optional[int] = None,
                 cpu_cores: Optional[list] = None, nice: int = 0):
        import torch

        from coati_ray.config import from_dict
        from coati_ray.config.rl import RLConfig
        from coati_ray.seams import import_plugins
        from coati_ray.utils.cpu import place_threads
        from coati_ray.experience.make import build_experience_models
        from coati_ray.experience.reward_sources import RewardSources
        from coati_ray.experience.rollout_worker import RolloutWorker
        from coati_ray.models.loading import tokenizer_for

        place_threads(cpu_cores, nice, "maker")
        if torch_threads:
            torch.set_num_threads(torch_threads)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.index = index
        self.cfg = cfg = from_dict(RLConfig, cfg_dict)
        import_plugins(self.cfg.plugins)  # the user's registrations, in this process too
        self.device = torch.device("cuda" if torch.cuda.is_available() and cfg.maker.num_gpus > 0 else "cpu")
        # the prompts' chat template: its end-of-turn token ends a response
        self.tokenizer = tokenizer_for(cfg.actor, cfg.data)
        # Makers infer in their own dtype (maker.dtype); weight syncs cast the trainers' weights to it.
        self.models = build_experience_models(cfg, self.device)
        self.worker = RolloutWorker(cfg, self.models, self.tokenizer, RewardSources(cfg.rewards, self.models.reward),
                                    self.device, index)
        self.batches_made = 0
        from actors.metrics import WorkerMetrics
        from actors.weight_endpoints import WeightReceiver

        self.metrics = WorkerMetrics("maker", index)
        roles = {"actor": self.models.actor, **({"critic": self.models.critic} if self.models.critic is not None else {})}
        lora = {"actor": cfg.actor.lora_rank > 0, "critic": cfg.critic is not None and cfg.critic.lora_rank > 0}
        self.receiver = WeightReceiver(roles, lora, self.metrics)

    def ready(self) -> int:
        return self.index

    def node(self) -> dict:
        """Where this maker runs: its node, device kind and GPUs (weight sync: ipc needs the trainer's node, and
        on GPU the trainer's own GPUs)."""
        return {"node": ray.get_runtime_context().get_node_id(), "device": self.device.type,
                "gpus": sorted(str(g) for g in ray.get_gpu_ids())}

    def pid(self) -> int:
        """The process id (fault-injection tests kill it with SIGKILL)."""
        return os.getpid()

    @property
    def version(self) -> int:
        return self.receiver.version

    def load_weights(self, handle: dict) -> dict:
        """An object-store handle from the driver's WeightSync: loaded now (this call runs between batches)."""
        return {**self.receiver.load(handle), "maker": self.index}

    @ray.method(concurrency_group="weights")
    def join_sync(self, role: str, buckets: list, meeting: tuple, rank: int, size: int, backend: str,
                  timeout_s: float) -> int:
        """Join the weight-broadcast group of `role` (on the weights thread: a running batch goes on)."""
        self.receiver.join(role, buckets, meeting, rank, size, backend, timeout_s)
        return rank

    @ray.method(concurrency_group="weights")
    def receive_weights(self, role: str, buckets: list, version: int) -> dict:
        """Receive one broadcast into staging while generation may go on; swapped in before the next batch."""
        return {**self.receiver.receive(role, buckets, version), "maker": self.index}

    @ray.method(concurrency_group="weights")
    def leave_sync(self) -> None:
        self.receiver.leave()

    def rewind(self) -> None:
        """A trainer restart kept this maker: the weights it holds are past the checkpoint the trainers went back
        to, so it takes the next ones it is sent whatever their version (actors/trainer_restart.py). Between
        batches, after any load queued before it."""
        self.receiver.rewind()

    def _current(self, expected: Optional[int] = None) -> None:
        """Between batches: swap in weights that have fully arrived (waiting for `expected` if promised)."""
        self.receiver.swap(expected, timeout_s=self.cfg.weight_sync.timeout_s if expected is not None else 0.0)

    @ray.method(num_returns=2)
    def make(self, prompt_items: list[dict], batch_id: int, expected_version: Optional[int] = None) -> tuple:
        """Generate from `prompt_items` and score them: returns (statistics, Experience).

        The Experience is a task return, so it is owned by the driver that asked for it, not by this
        process: experience already made survives this maker. The driver hands its ref to the buffer.
        `expected_version` is the policy version the driver last sent this maker; a maker holding
        another one (restarted, its loads lost) refuses rather than generate with stale weights.
        """
        self._current(expected_version)
        # A newer version than promised is fine (a broadcast can land between the submit and the batch);
        # an older one means this process lost weights it was sent (it was restarted).
        if expected_version is not None and self.version < expected_version:
            raise MakerBehind(self.index, self.version, expected_version,
                              ray.get_runtime_context().was_current_actor_reconstructed)
        # Sampling depends only on (seed, batch id, weights), not on which maker runs it.
        exp, stats = self.worker.make(prompt_items, batch_id, self.version)
        self.batches_made += 1
        publish_make_metrics(self.metrics, stats)
        return stats, exp

    def evaluate(self, prompt_items: list[dict], greedy: bool, seed: int, samples_per_prompt: int = 1) -> dict:
        """Score held-out prompts with the live policy: gold score (if a task is set), RM score, KL."""
        self._current()
        return self.worker.evaluate(prompt_items, greedy, seed, samples_per_prompt, self.version)

    def weights(self, merged: bool = False) -> dict:
        """The maker's current actor (and critic) weights (for tests and checks; staged weights first swap in).
        `merged`: LoRA folded into the (dequantized) base, as an export would write them."""
        from coati_ray.models.weights import export_view

        self._current()
        out = {"actor": export_view(self.models.actor, merged), "version": self.version}
        if self.models.critic is not None:
            out["critic"] = export_view(self.models.critic, merged)
        return out


def publish_make_metrics(m, stats: dict) -> None:
    """One batch's `coati_*` series of whoever made it (a maker or a colocated actor rank)."""
    from coati_ray.utils.flops import tflops

    busy = stats["timing/make"]
    m.set("experiences_per_second", stats["samples"] / max(busy, 1e-9))
    m.set("generated_tokens_per_second", stats["generated_tokens"] / max(busy, 1e-9))
    m.inc("experiences_total", stats["samples"])
    m.inc("generated_tokens_total", stats["generated_tokens"])
    m.set("reward_mean", stats["reward"])
    kl = stats.get("kl", float("nan"))  # none at kl_coef 0 (no reference pass)
    if kl == kl:  # not NaN (makers that skip their log-probs have no KL of their own)
        m.set("kl_mean", kl)
    m.set("tflops", tflops(stats["flops"], busy))
    if "rollout/turns" in stats:  # multi-turn episodes (rollout.environment)
        for key in ("turns", "tool_calls", "trained_tokens", "context_tokens"):
            m.set(f"episode_{key}", stats[f"rollout/{key}"])
        m.inc("episode_env_errors_total", stats["rollout/env_errors"])
        if "rollout/tool_error" in stats:  # an environment that reports its tool's errors in `info`
            m.set("episode_tool_errors", stats["rollout/tool_error"])
    m.stages({k: v for k, v in stats.items() if k in ("timing/generate", "timing/ref", "timing/reward",
                                                       "timing/values")})
