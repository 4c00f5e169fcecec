"""The trainer rank's side of placement: colocated (actors/colocated.py): it makes batches with its own weights."""

from __future__ import annotations

import ray


class ColocatedRollout:
    """Methods of a PPOTrainerRank under placement: colocated (the rank's `self.trainer`, `self.cfg`, ...)."""

    rollout = None  # the actor rank's RolloutWorker, built on first use

    def _rollout(self):
        if self.rollout is None:
            from coati_ray.experience.make import build_reference_models
            from coati_ray.experience.reward_sources import RewardSources
            from coati_ray.experience.rollout_worker import RolloutWorker
            from coati_ray.models.loading import tokenizer_for

            from coati_ray.experience.rollout_worker import seeded

            actor = self.strategy.unwrap(self.trainer.model)
            device = next(actor.parameters()).device
            with seeded(None):  # building them must not move this rank's random stream either
                models = build_reference_models(self.cfg, actor, device)
            tokenizer = tokenizer_for(self.cfg.actor, self.cfg.data)
            self.rollout = RolloutWorker(self.cfg, models, tokenizer, RewardSources(self.cfg.rewards, models.reward),
                                         device, index=-1 - self.rank)  # not a maker: actor rank r shows as -1 - r
        return self.rollout

    @ray.method(num_returns=2)
    def make(self, prompt_items: list[dict], batch_id: int) -> tuple:
        """(statistics, Experience) of one batch made with this rank's weights — a ScoredRollout instead when
        the critic group adds the values (gae). Runs between updates (the default group runs one call at a
        time), so the weights are those of a whole number of steps."""
        from actors.maker import publish_make_metrics

        import torch

        out, stats = self._rollout().make(prompt_items, batch_id, self.steps_done,
                                          defer_values=self.cfg.estimator.needs_critic)
        if torch.cuda.is_available():  # the KV cache and activations go back before the update needs the memory
            torch.cuda.empty_cache()
        publish_make_metrics(self._make_metrics(), stats)
        return stats, out

    @ray.method(num_returns=2)
    def add_values(self, stats: dict, scored) -> tuple:
        """A critic rank: (statistics, Experience) of a ScoredRollout with this rank's values."""
        from coati_ray.experience.rollout_worker import finish_with_values

        exp, stats = finish_with_values(self.strategy.unwrap(self.trainer.model), scored, self.cfg.algorithm, stats)
        return stats, exp

    def evaluate(self, prompt_items: list[dict], greedy: bool, seed: int, samples_per_prompt: int = 1) -> dict:
        """Score held-out prompts with this rank's live policy (as a maker's `evaluate`)."""
        return self._rollout().evaluate(prompt_items, greedy, seed, samples_per_prompt, self.steps_done)

    def _make_metrics(self):
        from actors.metrics import WorkerMetrics

        if getattr(self, "_rollout_metrics", None) is None:
            self._rollout_metrics = WorkerMetrics("colocated_maker", self.rank)
        return self._rollout_metrics
