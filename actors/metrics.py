"""Ray metrics (`ray.util.metrics`) for the dashboard and Prometheus: every series is named `coati_*`
and tagged with the actor's `role` (maker, actor_trainer, critic_trainer, replay_buffer, driver)
and `index` (maker index or rank).

Ray's Prometheus export prefixes them with `ray_` (e.g. `ray_coati_buffer_fill_samples`) on each
node's metrics port (`ray.nodes()[i]["MetricsExportPort"]`); the dashboard's Metrics view shows
them once Prometheus and Grafana are attached (README: "Watching a run").
"""

from __future__ import annotations

from typing import Optional

TAG_KEYS = ("role", "index")

# name -> (kind, description). One table, so a series means the same thing from every actor.
SERIES = {
    "experiences_per_second": ("gauge", "samples a maker produced per second of its last batch"),
    "generated_tokens_per_second": ("gauge", "response tokens a maker generated per second of its last batch"),
    "experiences_total": ("counter", "samples a maker has put in the buffer"),
    "generated_tokens_total": ("counter", "response tokens a maker has generated"),
    "reward_mean": ("gauge", "mean reward-model score of the last batch"),
    "kl_mean": ("gauge", "mean per-token KL to the initial policy of the last batch"),
    "buffer_wait_seconds": ("gauge", "seconds a maker batch waited for buffer space (full buffer: trainers are the bottleneck)"),
    "weight_sync_seconds": ("gauge", "seconds a maker spent loading the newest weights"),
    "weight_sync_bytes": ("gauge", "bytes a maker loaded in its last weight sync"),
    "buffer_fill_samples": ("gauge", "samples held in the replay buffer"),
    "buffer_capacity_samples": ("gauge", "replay-buffer capacity in samples"),
    "buffer_dropped_total": ("counter", "buffer items made but never trained on (left when the run closed)"),
    "buffer_lost_total": ("counter", "buffer items whose experience was lost with its node (each is made again)"),
    "consumed_staleness": ("gauge", "policy versions between an experience and the trainer that consumed it"),
    "policy_loss": ("gauge", "PPO policy loss of the last update"),
    "value_loss": ("gauge", "critic value loss of the last update"),
    "clip_fraction": ("gauge", "fraction of clipped ratios (actor) or values (critic) in the last update"),
    "trainer_tokens_per_second": ("gauge", "tokens a trainer group processed per second of its last update"),
    "tflops": ("gauge", "estimated TFLOP/s (2N per token for inference, 6N for training)"),
    "episode_turns": ("gauge", "multi-turn rollouts: policy turns per episode of the last batch"),
    "episode_tool_calls": ("gauge", "multi-turn rollouts: environment (tool) answers per episode of the last batch"),
    "episode_tool_errors": ("gauge", "multi-turn rollouts: tool errors per episode of the last batch (the "
                                     "environment's info tool_error)"),
    "episode_env_errors_total": ("counter", "multi-turn rollouts: episodes ended by an environment error"),
    "episode_trained_tokens": ("gauge", "multi-turn rollouts: policy tokens (trained) per episode of the last batch"),
    "episode_context_tokens": ("gauge", "multi-turn rollouts: environment tokens (context, never trained) per "
                                        "episode of the last batch"),
    "trainer_restarts_total": ("counter", "times the job's actors were restarted from the last checkpoint after a "
                                          "trainer rank was lost (<role>_trainer.max_restarts)"),
    "stage_seconds": ("gauge", "seconds of one stage of the last step (tag stage=generate, ref, update_actor, ...)"),
}


class WorkerMetrics:
    """The `coati_*` series of one actor; create it inside the actor (metrics live in its process)."""

    def __init__(self, role: str, index: int = 0):
        self.tags = {"role": role, "index": str(index)}
        self._series: dict[str, object] = {}

    def _get(self, name: str):
        if name not in self._series:
            from ray.util.metrics import Counter, Gauge

            kind, description = SERIES[name]
            keys = TAG_KEYS + (("stage",) if name == "stage_seconds" else ())
            cls = Counter if kind == "counter" else Gauge
            self._series[name] = cls(f"coati_{name}", description=description, tag_keys=keys)
        return self._series[name]

    def set(self, name: str, value: Optional[float], stage: Optional[str] = None) -> None:
        if value is None:
            return
        tags = dict(self.tags, **({"stage": stage} if stage else {}))
        self._get(name).set(float(value), tags=tags)

    def inc(self, name: str, value: float) -> None:
        if value > 0:
            self._get(name).inc(float(value), tags=self.tags)

    def stages(self, timings: dict) -> None:
        """`timing/<stage>` entries of a metrics dict -> coati_stage_seconds{stage=<stage>}."""
        for key, value in timings.items():
            if key.startswith("timing/") and isinstance(value, (int, float)):
                self.set("stage_seconds", value, stage=key.split("/", 1)[1])
