"""The replay-buffer actor: bounded, exact, and never touches a tensor.

It holds ObjectRefs to experiences stored once in the object store (a maker's `make` returns
them; the driver hands the refs over). Every item is delivered once to each consumer group, as one
shard per rank of that group (ranks of a group receive the same items in the same order).

Delivery follows the step plan: batch ids are tickets handed out in order, and step `s` trains on
exactly the tickets `[s * k, (s + 1) * k)` (k = items per step). A group's next item is the first
arrived item of its current step's window, in arrival order, so a slow maker never holds up a
window that has its items already, and the driver's admission control (it starts no ticket whose
maker version would be more than `max_staleness` behind the step that consumes it) bounds staleness
at the source: nothing has to be made and then thrown away. A batch id the buffer has already
accepted is refused and counted (a batch made again after its maker died must never reach a trainer
twice).

An experience lives in the object store of the node whose maker made it. When that node is lost, a rank
that cannot fetch it reports the item (`lost`); the driver, waiting on `wait_lost`, has the batch made
again (same prompts, batch id and seed) and its `put` refills the *same* item: ranks that had fetched the
experience keep it, the others get the remake, so no rank sees the batch twice and the books stay exact.
The accounting always satisfies, per group:

    produced == delivered[group] + dropped + (items still held that the group has not finished)
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

import ray


@dataclass
class _Item:
    item_id: int
    ref: list               # [ObjectRef]: wrapped so Ray hands the ref around instead of resolving it
    num_samples: int
    version: int
    maker: int
    batch_id: int
    assigned: set = field(default_factory=set)                 # groups that have started on it
    taken: dict = field(default_factory=dict)                  # group -> ranks that fetched their shard
    delivered_to: set = field(default_factory=set)             # groups it has been counted as delivered to
    lost: bool = False                                         # its object is gone with its node: awaiting a remake


DEDUP_WINDOW = 4096  # batch ids remembered for refusing a regenerated copy
GONE_WINDOW = 256    # finished items remembered (without their refs): the last taker may report one lost


class BufferTimeout(RuntimeError):
    pass


@ray.remote(num_cpus=0)
class ReplayBuffer:
    def __init__(self, capacity: int, groups: dict[str, int], items_per_step: int, first_step: int = 0,
                 max_staleness: Optional[int] = None, timeout_s: float = 600.0):
        self.capacity, self.groups, self.k = capacity, dict(groups), items_per_step
        self.first_step, self.max_staleness, self.timeout_s = first_step, max_staleness, timeout_s
        self.items: list[_Item] = []
        self.sequence: dict[str, list[int]] = {g: [] for g in groups}       # item ids in delivery order
        self.cursor: dict[tuple[str, int], int] = {(g, r): 0 for g, n in groups.items() for r in range(n)}
        self.by_id: dict[int, _Item] = {}
        self.ids = itertools.count()
        self.version = first_step
        self.held_samples = 0
        self.produced = 0
        self.delivered = {g: 0 for g in groups}
        self.delivered_samples = {g: 0 for g in groups}
        self.dropped_at_close = 0
        self.duplicates_refused = 0
        self.over_staleness = 0  # delivered beyond max_staleness: admission control failed (must stay 0)
        self.accepted_batches: set[int] = set()
        self.gone: OrderedDict[int, _Item] = OrderedDict()  # recently finished items, refs dropped
        self.awaiting_remake: dict[int, _Item] = {}         # batch id -> the lost item its remake refills
        self.to_remake: list[int] = []                      # lost batch ids not yet handed to the driver
        self.lost = 0                                       # items reported lost (node gone)
        self.remade = 0                                     # lost items refilled by a remake
        self.max_staleness_delivered = {g: 0 for g in groups}
        self.staleness_counts: dict[int, int] = {}
        self.peak_samples = 0
        self.closed = False
        self.changed = asyncio.Condition()
        from actors.metrics import WorkerMetrics

        self.metrics = WorkerMetrics("replay_buffer", 0)
        self._publish_fill()

    # ------------------------------------------------------------------ producers

    async def put(self, ref: list, num_samples: int, version: int, maker: int, batch_id: int,
                  timeout_s: Optional[float] = None) -> int:
        """Add one experience (ref wrapped in a list). Waits while it would overflow the capacity, unless
        a group needs it for the step it is on (admission control keeps the wait from happening at all).

        Returns the item id, or -1 when `batch_id` was already accepted (the copy is refused).
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        async with self.changed:
            lost = self.awaiting_remake.pop(batch_id, None)
            if lost is not None:  # the remake of an experience lost with its node refills the same item
                lost.ref, lost.version, lost.maker, lost.lost = ref, version, maker, False
                self.remade += 1
                self.changed.notify_all()
                return lost.item_id
            if self._is_duplicate(batch_id):
                return -1
            ok = await self._wait(lambda: self.closed or self.held_samples == 0 or self._needed_now(batch_id)
                                  or self.held_samples + num_samples <= self.capacity, timeout_s)
            if self.closed:
                raise RuntimeError("replay buffer is closed")
            if self._is_duplicate(batch_id):  # the other copy landed while this one waited for space
                return -1
            if not ok:
                raise BufferTimeout(f"replay buffer full for {timeout_s:.0f}s ({self.held_samples}/{self.capacity} "
                                    "samples): trainers are not consuming; check the trainer actors' logs")
            item = _Item(next(self.ids), ref, num_samples, version, maker, batch_id)
            self._remember(batch_id)
            self.items.append(item)
            self.by_id[item.item_id] = item
            self.held_samples += num_samples
            self.peak_samples = max(self.peak_samples, self.held_samples)
            self._publish_fill()
            self.produced += 1
            self.changed.notify_all()
            return item.item_id

    # ------------------------------------------------------------------ consumers

    async def get(self, group: str, rank: int, timeout_s: Optional[float] = None) -> dict:
        """The next item for `rank` of `group`: {ref: [ObjectRef], rank, world_size, version, ...}."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        if group not in self.groups or not 0 <= rank < self.groups[group]:
            raise ValueError(f"unknown consumer {group}[{rank}]; groups are {self.groups}")
        async with self.changed:
            k = self.cursor[(group, rank)]
            deadline = time.monotonic() + timeout_s
            while True:
                if k < len(self.sequence[group]):
                    if not self.by_id[self.sequence[group][k]].lost:
                        break
                    # lost with its node: the remake refills this item (the driver is making it)
                    ok = await self._wait(lambda: self.closed or not self.by_id[self.sequence[group][k]].lost,
                                          max(0.0, deadline - time.monotonic()))
                    if not self.by_id[self.sequence[group][k]].lost:
                        break
                    if self.closed:
                        raise RuntimeError("replay buffer is closed")
                    if not ok:
                        raise BufferTimeout(f"replay buffer: batch {self.by_id[self.sequence[group][k]].batch_id} "
                                            f"was lost with its node and not made again within {timeout_s:.0f}s")
                    continue
                item = self._next_in_window(group, k)
                if item is not None:
                    item.assigned.add(group)
                    self.sequence[group].append(item.item_id)
                    self.changed.notify_all()  # group-mates waiting for this position can go on
                    continue
                # Wake when an item of this window arrives *or* a group-mate assigned the one this rank needs.
                ok = await self._wait(lambda: self.closed or k < len(self.sequence[group])
                                      or self._next_in_window(group, k) is not None,
                                      max(0.0, deadline - time.monotonic()))
                if k < len(self.sequence[group]) or self._next_in_window(group, k) is not None:
                    continue
                if self.closed:
                    raise RuntimeError("replay buffer is closed")
                if not ok:
                    lo, hi = self._window(k)
                    raise BufferTimeout(f"replay buffer had no batch {lo}-{hi - 1} for {timeout_s:.0f}s while "
                                        f"{group}[{rank}] waited for experience: makers are not producing; check "
                                        "the maker actors' logs")
            item = self.by_id[self.sequence[group][k]]
            ref = item.ref  # read before the item may be let go below
            self.cursor[(group, rank)] = k + 1
            staleness = self.version - item.version
            ranks = item.taken.setdefault(group, set())
            ranks.add(rank)
            if len(ranks) == self.groups[group]:
                if group not in item.delivered_to:  # once, even when a rank took it again after a loss
                    item.delivered_to.add(group)
                    self._delivered(group, item, staleness)
                if all(len(item.taken.get(g, ())) == n for g, n in self.groups.items()):
                    self._remove(item)
                    self.changed.notify_all()
            return {"ref": ref, "rank": rank, "world_size": self.groups[group], "version": item.version,
                    "staleness": staleness, "maker": item.maker, "batch_id": item.batch_id,
                    "item_id": item.item_id}

    async def lost(self, group: str, rank: int, item_id: int) -> None:
        """`rank` of `group` could not fetch item `item_id`'s experience: its object went with its node. The
        rank gets the same item again once the driver's remake refills it (see `wait_lost`)."""
        async with self.changed:
            item = self.by_id.get(item_id)
            if item is None:  # this rank was the last to take it, so it had been let go: hold it again
                item = self.gone.pop(item_id)
                self.items.append(item)
                self.by_id[item_id] = item
                self.held_samples += item.num_samples
            item.taken.get(group, set()).discard(rank)
            self.cursor[(group, rank)] = self.sequence[group].index(item_id)
            if not item.lost:
                item.lost, item.ref = True, None
                self.lost += 1
                self.awaiting_remake[item.batch_id] = item
                self.to_remake.append(item.batch_id)
                self.metrics.inc("buffer_lost_total", 1)
            self.changed.notify_all()

    async def wait_lost(self) -> list[int]:
        """The batch ids reported lost since the last call, once there are some (or [] once closed): the
        driver keeps one call outstanding and has each batch made again."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.closed or self.to_remake)
            out, self.to_remake = self.to_remake, []
            return out

    # ------------------------------------------------------------------ control and accounting

    async def set_version(self, version: int) -> None:
        async with self.changed:
            self.version = version
            self.changed.notify_all()

    async def close(self) -> dict:
        """Stop accepting work; items no group has started are dropped (and counted) so the books close."""
        async with self.changed:
            for item in list(self.items):
                if not item.assigned:
                    self._remove(item)
                    self.dropped_at_close += 1
                    self.metrics.inc("buffer_dropped_total", 1)
            self.closed = True
            self.changed.notify_all()
        return self.stats()

    def stats(self) -> dict:
        return {"produced": self.produced, "delivered": dict(self.delivered),
                "delivered_samples": dict(self.delivered_samples), "dropped_stale": 0,
                "dropped_at_close": self.dropped_at_close, "duplicates_refused": self.duplicates_refused,
                "dropped": self.dropped_at_close, "over_staleness": self.over_staleness,
                "lost": self.lost, "remade": self.remade, "awaiting_remake": len(self.awaiting_remake),
                "held_items": len(self.items), "held_samples": self.held_samples, "capacity": self.capacity,
                "peak_samples": self.peak_samples, "version": self.version,
                "max_staleness_delivered": dict(self.max_staleness_delivered),
                "staleness_counts": {str(s): n for s, n in sorted(self.staleness_counts.items())}}

    # ------------------------------------------------------------------ internals

    def _window(self, position: int) -> tuple[int, int]:
        """Batch ids a group consumes at its `position`-th item: the tickets of that item's step."""
        step = self.first_step + position // self.k
        return step * self.k, (step + 1) * self.k

    def _next_in_window(self, group: str, position: int) -> Optional[_Item]:
        lo, hi = self._window(position)
        for item in self.items:  # arrival order
            if group not in item.assigned and lo <= item.batch_id < hi:
                return item
        return None

    def _needed_now(self, batch_id: int) -> bool:
        """A group is consuming the step this batch belongs to: holding it back would stall training."""
        return any(lo <= batch_id < hi for lo, hi in (self._window(len(self.sequence[g])) for g in self.groups))

    def _delivered(self, group: str, item: _Item, staleness: int) -> None:
        self.delivered[group] += 1
        self.delivered_samples[group] += item.num_samples
        self.max_staleness_delivered[group] = max(self.max_staleness_delivered[group], staleness)
        self.staleness_counts[staleness] = self.staleness_counts.get(staleness, 0) + 1
        if self.max_staleness is not None and staleness > self.max_staleness:
            self.over_staleness += 1
        self.metrics.set("consumed_staleness", staleness)

    def _is_duplicate(self, batch_id: int) -> bool:
        if batch_id not in self.accepted_batches:
            return False
        self.duplicates_refused += 1
        return True

    def _remember(self, batch_id: int) -> None:
        # A copy can only race the batches in flight (about one per maker), so ids far behind the
        # newest are forgotten and a days-long run keeps a bounded set.
        self.accepted_batches.add(batch_id)
        if len(self.accepted_batches) > 2 * DEDUP_WINDOW:
            newest = max(self.accepted_batches)
            self.accepted_batches = {b for b in self.accepted_batches if b > newest - DEDUP_WINDOW}

    def _remove(self, item: _Item) -> None:
        # Called when every group has every shard, or for an item no group started: either way
        # no cursor will point at it again.
        self.items.remove(item)
        self.by_id.pop(item.item_id, None)
        self.held_samples -= item.num_samples
        item.ref = None  # the object store may free the experience now
        self.gone[item.item_id] = item
        if len(self.gone) > GONE_WINDOW:
            self.gone.popitem(last=False)
        self._publish_fill()

    def _publish_fill(self) -> None:
        # Ray forgets a gauge that is not set for ~30 s, so capacity is re-sent with every change.
        self.metrics.set("buffer_fill_samples", self.held_samples)
        self.metrics.set("buffer_capacity_samples", self.capacity)

    async def _wait(self, predicate, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self.changed.wait_for(predicate), timeout=timeout_s)
            return True
        except asyncio.TimeoutError:
            return predicate()
