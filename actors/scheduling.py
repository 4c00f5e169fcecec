"""How the makers are fed during one PPO step: tickets, admission control, and failing fast.

Batch ids are tickets handed out in order; step `s` trains on tickets `[s*k, (s+1)*k)` (k = maker
batches per step), which the replay buffer enforces. A ticket is only started when the experience
it will hold cannot be too stale when consumed:

    ticket t is consumed in step t // k, by trainers at version t // k; a maker holding version v
    makes it with staleness t // k - v, so it may start t only if t < (v + max_staleness + 1) * k

and when the buffer can hold it with everything admitted before it (capacity // maker batch items
past the current step's first ticket). Sync mode is the same schedule with max_staleness = 0: a
step's tickets need the weights of the step before, so makers wait while trainers train. Async mode
lets makers run up to max_staleness steps ahead instead of throwing stale experience away.

While waiting, the scheduler watches the trainer groups' refs too: a rank that dies while makers
generate ends the run at once with one line, not after a buffer timeout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import ray

from actors.maker_pool import Batch, MakerPool
from actors.ppo_trainer_groups import PPOTrainerGroups
from actors.transports.object_store import RETRY_S
from coati_ray.errors import WorkerLost

QUEUE_DEPTH = 2  # batches sent to a maker at once: the next one starts without a driver round trip


@dataclass
class StepResult:
    results: dict                                   # role -> rank 0's metrics of the update
    makes: list = field(default_factory=list)       # statistics of the maker batches that landed
    generate_wall: float = 0.0                      # seconds from the step's start until its last batch landed


class StepScheduler:
    def __init__(self, pool: MakerPool, groups: PPOTrainerGroups, buffer, prompts, items_per_step: int,
                 max_staleness: int, capacity_items: int, last_ticket: int, first_step: int = 0,
                 wait: Optional[Callable[[list], list]] = None):
        """`wait(refs, timeout=None)`: the refs of `refs` that finished, at least one unless `timeout` seconds
        passed first (the job's watchdog, which ends a step that stops making progress); plain ray.wait by
        default."""
        self.pool, self.groups, self.buffer, self.prompts = pool, groups, buffer, prompts
        self.wait = wait or (lambda refs, timeout=None: ray.wait(refs, num_returns=1, timeout=timeout)[0])
        self.lost_ref = buffer.wait_lost.remote()  # answers when trainers report experience lost with a node
        self.remade_lost = 0
        self.k, self.max_staleness, self.capacity_items = items_per_step, max_staleness, capacity_items
        self.last_ticket = last_ticket              # tickets of steps past max_steps are never started
        self.next_ticket = first_step * items_per_step
        self.stuck_since: Optional[float] = None    # since when no maker could work (check_not_deadlocked)

    def limit(self, step: int, maker_version: int) -> int:
        """First ticket a maker holding `maker_version` may not start while trainers are on `step`."""
        staleness_bound = (maker_version + self.max_staleness + 1) * self.k
        capacity_bound = step * self.k + max(self.capacity_items, self.k)
        return min(staleness_bound, capacity_bound, self.last_ticket)

    def feed(self, step: int) -> None:
        """Give the admissible tickets (orphans first) to the makers with the fewest queued batches; a maker
        is sent weights only when a batch follows, and one that cannot have them yet is passed over."""
        version = max(self.pool.newest, step)  # makers get the newest weights before their next batch
        while self.pool.orphans or self.next_ticket < self.limit(step, version):
            free = sorted((i for i in self.pool.makers if self.pool.queued(i) < QUEUE_DEPTH),
                          key=lambda i: (self.pool.queued(i), i))
            index = next((i for i in free if self.pool.can_take(i)), None)
            if index is None:
                return
            batch = self.pool.take_orphan()
            if batch is None:
                batch = Batch(self.next_ticket, self.prompts.batch(self.next_ticket))
                self.next_ticket += 1
            self.pool.submit(index, batch)

    def check_not_deadlocked(self, step: int) -> None:
        """End the run in one line when no maker can work: work is waiting, nothing is in flight, and every
        maker waits for a consistent export (the trainer groups at different steps, or one updating while it
        waits for experience only a maker can make) for longer than weight_sync.timeout_s."""
        every_maker_waits = bool(self.pool.makers) and all(i in self.pool.awaiting for i in self.pool.makers)
        work_waits = self.pool.orphans or self.next_ticket < self.limit(step, max(self.pool.newest, step))
        stuck = not self.pool.running and every_maker_waits and work_waits
        if not stuck:
            self.stuck_since = None
            return
        now = time.monotonic()
        self.stuck_since = self.stuck_since or now
        if now - self.stuck_since > self.pool.cfg.weight_sync.timeout_s:
            waiting = ", ".join(str(i) for i in sorted(self.pool.awaiting) if i in self.pool.makers)
            raise WorkerLost(
                f"run error: weight sync: no maker can make the batches the trainers wait for: maker(s) "
                f"{waiting} came back without weights, and the trainer "
                f"groups (steps {self.pool.sync.uneven}) have not allowed a consistent export for "
                f"{now - self.stuck_since:.0f}s under weight_sync.transport=collective; use weight_sync.transport=object_store "
                "(which keeps each published version) or more than one maker")

    def remake_lost(self, batch_ids: list[int]) -> None:
        """Batches whose experience was lost with its node: made again first (same prompts, id and seed)."""
        for batch_id in batch_ids:
            self.pool.orphans.append(Batch(batch_id, self.prompts.batch(batch_id)))
            self.pool.info(f"batch {batch_id} was lost with its node's object store; making it again")
        self.remade_lost += len(batch_ids)
        self.lost_ref = self.buffer.wait_lost.remote()

    def run(self, step: int) -> StepResult:
        """Train step `step`: start every rank's update, keep the makers fed, move landed batches into the
        buffer, and return when every rank has finished."""
        t0 = time.perf_counter()
        train = self.groups.train(self.buffer, self.k, step)
        pending = {ref for refs in train.values() for ref in refs}
        out = StepResult(results={})
        last_landed = t0
        while pending:
            self.feed(step)
            refs = list(pending) + self.pool.refs() + [self.lost_ref]
            if self.pool.awaiting:  # a maker waits for weights the trainers cannot export yet: ask again soon
                self.check_not_deadlocked(step)
                done = self.wait(refs, timeout=RETRY_S)
                if not done:
                    continue
                ref = done[0]
            else:
                ref = self.wait(refs)[0]
            if ref == self.lost_ref:
                self.remake_lost(ray.get(ref))
                continue
            if ref in pending:
                self.groups.get([ref])  # raises at once if a trainer rank failed
                pending.discard(ref)
                continue
            stats = self.pool.on_ready(ref)
            if stats is not None and stats.get("accepted", True):  # a refused copy produced nothing new
                out.makes.append(stats)
                last_landed = time.perf_counter()
        out.results = {role: self.groups.get(refs)[0] for role, refs in train.items()}
        out.generate_wall = last_landed - t0
        return out
