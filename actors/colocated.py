"""placement: colocated — the actor group's ranks generate with their own weights; no policy weight moves.

Each step (sync mode only): the step's maker batches (tickets `[s*k, (s+1)*k)`, the same prompts and
seeds a separate job's makers get) are dealt round-robin to the actor group's ranks; a rank makes a
batch as a maker would (coati_ray/experience/rollout_worker.py: its own weights as the policy, a reference
model and the reward sources it holds itself). Under gae the scored batch goes on to a critic rank,
which adds its values and the advantages. The finished Experience goes into the replay buffer by
reference, as a maker's does, and then both groups train on the step as in the separate placement.
So for the same seed and rollout layout (a maker's batch = what a rank makes at once) a colocated job
generates the same tokens as a separate sync job and trains the same policy.

The rank's side is `ColocatedRollout` (actors/colocated_rank.py), mixed into PPOTrainerRank; the driver's side
is `ColocatedSource`.
"""

from __future__ import annotations

import time
from typing import Callable

import ray

from actors.experience_source import ExperienceSource
from actors.scheduling import StepResult


class ColocatedSource(ExperienceSource):
    name = "colocated"

    def __init__(self, job):
        self.job = job
        self.watchdog = None
        self.activity_now: dict[str, str] = {}

    def start(self, setup_trainers: Callable[[], None]) -> None:
        setup_trainers()

    def _wait(self, refs: list) -> list:
        if self.watchdog is not None:
            return self.watchdog.wait(refs)
        return ray.wait(refs, num_returns=1)[0]

    def run(self, step: int) -> StepResult:
        """Make the step's batches on the actor ranks (values on the critic ranks), put them in the buffer in
        the order they finish, then train both groups on them."""
        job = self.job
        trainers, k = job.trainers, job.items_per_step
        actors = trainers.ranks["actor"]
        critics = trainers.ranks.get("critic")
        t0 = time.perf_counter()
        pending: dict = {}  # stats ref -> (batch id, experience ref, what it is, the rank working on it)
        for j, batch_id in enumerate(range(step * k, (step + 1) * k)):
            rank = j % len(actors)
            stats_ref, out_ref = actors[rank].make.remote(job.prompts.batch(batch_id), batch_id)
            pending[stats_ref] = (batch_id, out_ref, "scored" if critics else "experience", f"actor-trainer-{rank}")
        t_sent = time.perf_counter()
        makes, puts = [], []
        while pending:
            age = time.perf_counter() - t_sent
            self.activity_now = {}
            for b, _, what, name in pending.values():  # what each rank still has to do (the watchdog's report)
                self.activity_now[name] = self.activity_now.get(name, "") + f"batch {b} ({what}) since {age:.0f}s; "
            ref = self._wait(list(pending))[0]
            batch_id, out_ref, what, _ = pending.pop(ref)
            stats = trainers.get([ref])[0]  # raises at once if a rank failed (a dead one is named)
            if what == "scored":
                rank = batch_id % len(critics)
                stats_ref, exp_ref = critics[rank].add_values.remote(stats, out_ref)
                pending[stats_ref] = (batch_id, exp_ref, "experience", f"critic-trainer-{rank}")
                continue
            puts.append(job.buffer.put.remote([out_ref], stats["samples"], stats["version"], stats["maker"],
                                              batch_id))
            makes.append(stats)
        self.activity_now = {}
        ray.get(puts)
        generate_wall = time.perf_counter() - t0
        train = trainers.train(job.buffer, k, step)
        refs = [ref for role_refs in train.values() for ref in role_refs]
        left = list(refs)
        while left:  # through the watchdog, so a hung update ends the run instead of hanging it
            done = self._wait(left)
            left = [r for r in left if r not in done]
        trainers.get(refs)
        results = {role: trainers.get(role_refs)[0] for role, role_refs in train.items()}
        return StepResult(results=results, makes=makes, generate_wall=generate_wall)

    def publish(self, version: int) -> dict:
        # Nothing to publish: the ranks that trained are the ones that generate next.
        return {"export_seconds": 0.0, "bytes": 0, "transport": "colocated"}

    def evaluation_target(self):
        return self.job.trainers.ranks["actor"][0]

    def activity(self) -> dict[str, str]:
        return dict(self.activity_now)

    def summary(self) -> dict:
        return {"makers": 0, "maker_restarts": 0, "maker_batches_regenerated": 0, "maker_batches_behind": 0,
                "makers_dropped": 0, "batches_lost_with_a_node": 0}

