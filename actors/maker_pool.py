"""The experience makers of one PPO job: scaling, batches in flight, weight loads, and recovery.

A maker that dies (`ray.kill`, a killed process, a lost node) is restarted by Ray up to
`maker.max_restarts` times. A restarted maker comes back with the base weights, so the pool never
lets it generate before it has reloaded the current ones: every `make` carries the policy version
the pool last sent that maker, and a maker that holds another version refuses the batch
(`MakerBehind`). On either signal, a dead maker or a refusal, the pool waits for the restart,
reloads the newest weights and submits the *same* batch again (same prompts, same batch id, same
sampling seed). A batch's Experience is the `make` task's return value, owned by the driver, and
the pool puts it in the buffer only once the maker has returned it: a maker's death loses at most
the batch it was generating, never one already made. The buffer also refuses a batch id it has
accepted before, so no batch can be delivered twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import ray

from actors.cluster import NAMESPACE
from actors.group import unwrap_error
from actors.maker import ExperienceMaker, MakerBehind
from coati_ray.errors import WorkerLost

RESTART_TIMEOUT_S = 300.0


@dataclass
class Batch:
    """One maker batch on its way: generating on a maker, then being put in the buffer by the driver."""

    items: list
    batch_id: int
    maker: int = -1
    stats_ref: Optional[ray.ObjectRef] = None
    exp_ref: Optional[ray.ObjectRef] = None
    put_ref: Optional[ray.ObjectRef] = None
    stats: Optional[dict] = None
    t_made: float = 0.0

    @property
    def waiting_on(self) -> ray.ObjectRef:
        return self.stats_ref if self.put_ref is None else self.put_ref


class MakerPool:
    def __init__(self, cfg, cfg_dict: dict, buffer, next_batch: Callable[[], tuple[list, int]], lora_only: bool,
                 info: Callable[[str], None]):
        self.cfg, self.cfg_dict, self.buffer, self.next_batch = cfg, cfg_dict, buffer, next_batch
        self.lora_only, self.info = lora_only, info
        self.makers: dict[int, object] = {}
        self.sent_version: dict[int, int] = {}       # version of the last weights sent to each maker
        self.inflight: dict[int, Batch] = {}         # async mode: the batch each maker is working on
        self.retiring: dict[int, tuple] = {}         # removed makers still finishing their last batch
        self.orphans: list[Batch] = []               # batches whose maker left before finishing them
        self.pending_loads: list[tuple[int, ray.ObjectRef]] = []
        self.weights: Optional[tuple] = None         # (actor_ref, critic_ref, version) of the newest export
        self.next_index = 0
        self.restarts = 0
        self.regenerated = 0                         # batches made again after their maker died

    def __len__(self) -> int:
        return len(self.makers)

    # ------------------------------------------------------------------ membership

    def scale_to(self, target: int) -> None:
        m = self.cfg.maker
        while len(self.makers) < target:
            index = self.next_index
            self.next_index += 1
            self.makers[index] = ExperienceMaker.options(
                name=f"maker-{index}", namespace=NAMESPACE, num_cpus=m.num_cpus, num_gpus=m.num_gpus,
                max_restarts=m.max_restarts).remote(index, self.cfg_dict, m.torch_threads)
            self.sent_version[index] = 0
            if self.weights is not None:  # a maker that joins mid-run starts from the current policy
                self._send_weights(index)
            self.info(f"maker-{index} added ({len(self.makers)} makers)")
        while len(self.makers) > target:
            index = max(self.makers)
            maker = self.makers.pop(index)
            if index in self.inflight:
                # Its batch may be waiting for buffer space that only the coming train step frees:
                # retire it, and kill it once that batch has landed (nothing in flight is lost).
                self.retiring[index] = (maker, self.inflight.pop(index))
            else:
                ray.kill(maker, no_restart=True)
            self.info(f"maker-{index} removed ({len(self.makers)} makers)")

    def ready(self) -> None:
        ray.get([m.ready.remote() for m in self.makers.values()])

    def first(self):
        """The maker with the lowest index (the one evaluations run on), or None."""
        return self.makers[min(self.makers)] if self.makers else None

    # ------------------------------------------------------------------ weights

    def broadcast(self, weights: tuple) -> None:
        """Remember the newest export and queue it on every maker (loads run between batches)."""
        self.weights = weights
        for index in self.makers:
            self._send_weights(index)

    def _send_weights(self, index: int) -> None:
        actor_ref, critic_ref, version = self.weights
        ref = self.makers[index].load_weights.remote(actor_ref, critic_ref, version, self.lora_only)
        self.sent_version[index] = version
        self.pending_loads.append((index, ref))

    def wait_loads(self) -> list[dict]:
        """Block until every queued load has run; a maker that died meanwhile is recovered (and reloaded)."""
        loads, self.pending_loads = self.pending_loads, []
        results = []
        for index, ref in loads:
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayActorError:
                if index in self.makers:
                    results.append(self._recover(index))
        return [r for r in results if r is not None]

    def finished_loads(self) -> list[dict]:
        """The loads that have already run, without waiting. A maker that died during one is caught by
        its next batch (it will hold the wrong version and refuse it)."""
        if not self.pending_loads:
            return []
        refs = [ref for _, ref in self.pending_loads]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        done = set(done)
        results = []
        for ref in done:
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayActorError:
                pass
        self.pending_loads = [(i, r) for i, r in self.pending_loads if r not in done]
        return results

    # ------------------------------------------------------------------ batches

    def _take_batch(self) -> Batch:
        if self.orphans:
            return self.orphans.pop(0)
        items, batch_id = self.next_batch()
        return Batch(items, batch_id)

    def _start(self, index: int, batch: Batch) -> Batch:
        batch.maker, batch.put_ref, batch.stats = index, None, None
        batch.stats_ref, batch.exp_ref = self.makers[index].make.remote(batch.items, batch.batch_id,
                                                                        self.sent_version[index])
        return batch

    def _advance(self, batch: Batch, recover: bool = True) -> Optional[dict]:
        """Move `batch` on once what it waits for is ready. Returns its statistics when it has landed
        in the buffer; None while it is still on its way (now being put, or regenerated)."""
        if batch.put_ref is not None:
            item_id = ray.get(batch.put_ref)  # a full buffer for buffer.timeout_s raises here
            batch.stats["timing/buffer_wait"] = time.perf_counter() - batch.t_made
            batch.stats["accepted"] = item_id >= 0  # -1: a copy of a batch the buffer already holds
            return batch.stats
        try:
            batch.stats = ray.get(batch.stats_ref)
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
            if not recover or not _maker_lost(e):
                raise
            reason = "was behind" if isinstance(unwrap_error(e), MakerBehind) else "died"
            self.info(f"maker-{batch.maker} {reason} during batch {batch.batch_id}; recovering and regenerating it")
            self._recover(batch.maker)
            self.regenerated += 1
            self._start(batch.maker, batch)
            return None
        batch.t_made = time.perf_counter()
        s = batch.stats
        batch.put_ref = self.buffer.put.remote([batch.exp_ref], s["samples"], s["version"], s["maker"],
                                               batch.batch_id)
        return None

    def make_batches(self, count: int) -> list[dict]:
        """Sync mode: `count` batches spread round-robin over the makers; returns when all have landed."""
        indices = sorted(self.makers)
        running = [self._start(indices[j % len(indices)], self._take_batch()) for j in range(count)]
        stats = []
        while running:
            done, _ = ray.wait([b.waiting_on for b in running], num_returns=1)
            batch = next(b for b in running if b.waiting_on == done[0])
            result = self._advance(batch)
            if result is not None:
                running.remove(batch)
                stats.append(result)
        return stats

    def fill(self) -> None:
        """Async mode: give every idle maker its next batch (it generates with the weights it has)."""
        for index in self.makers:
            if index not in self.inflight:
                self.inflight[index] = self._start(index, self._take_batch())

    def refs(self) -> dict:
        """Refs the async driver waits on, mapped to ('inflight'|'retiring', maker index)."""
        out = {b.waiting_on: ("inflight", i) for i, b in self.inflight.items()}
        out.update({b.waiting_on: ("retiring", i) for i, (_, b) in self.retiring.items()})
        return out

    def landed(self, ref) -> Optional[dict]:
        """Async mode: `ref` (from refs()) is ready. Returns the batch's statistics once it is in the
        buffer, else None; a maker whose batch landed goes on with its next one (runs ahead)."""
        kind, index = self.refs()[ref]
        if kind == "retiring":
            maker, batch = self.retiring[index]
            generating = batch.put_ref is None
            try:
                result = self._advance(batch, recover=False)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                if not _maker_lost(e):
                    raise
                self.orphans.append(batch)  # a member maker makes it instead
                self.retiring.pop(index)
                ray.kill(maker, no_restart=True)
                return None
            if generating:  # its make returned: the experience is the driver's now, so the maker can go
                ray.kill(maker, no_restart=True)
            if result is not None:
                self.retiring.pop(index)
            return result
        batch = self.inflight[index]
        result = self._advance(batch)
        if result is not None:
            self.inflight[index] = self._start(index, self._take_batch())
        return result

    # ------------------------------------------------------------------ recovery

    def _recover(self, index: int) -> Optional[dict]:
        """Wait for Ray to restart maker `index`, then load the newest weights into it."""
        maker = self.makers[index]
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                ray.get(maker.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                break
            except ray.exceptions.ActorUnavailableError:  # restarting: not reachable yet
                if time.monotonic() > deadline:
                    raise self._lost(index, "it did not come back") from None
                time.sleep(0.5)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
                raise self._lost(index, type(e).__name__) from None
        self.restarts += 1
        result = None
        if self.weights is not None:
            actor_ref, critic_ref, version = self.weights
            result = ray.get(maker.load_weights.remote(actor_ref, critic_ref, version, self.lora_only))
            self.sent_version[index] = version
        # Loads queued before the death went with the old process; nothing else to wait for.
        self.pending_loads = [(i, r) for i, r in self.pending_loads if i != index]
        self.info(f"maker-{index} restarted ({self.restarts} restarts) and holds version "
                  f"{self.sent_version[index]}")
        return result

    def _lost(self, index: int, why: str) -> WorkerLost:
        maker = self.makers[index]
        return WorkerLost(f"run error: maker-{index} died and Ray could not restart it ({why}; maker.max_restarts="
                          f"{self.cfg.maker.max_restarts}, {self.restarts} restarts so far); see its log with "
                          f"`ray logs actor --id {maker._actor_id.hex()}`, raise maker.max_restarts, or resume "
                          "with --resume")

    # ------------------------------------------------------------------ shutdown

    def drain(self) -> None:
        """Wait for batches still being generated (the closed buffer refuses them) and weight loads."""
        refs = [b.waiting_on for b in self.inflight.values()] + [b.waiting_on for _, b in self.retiring.values()]
        for ref in refs + [r for _, r in self.pending_loads]:
            try:
                ray.get(ref)
            except ray.exceptions.RayError:
                pass
        self.inflight.clear()
        self.pending_loads = []

    def kill_all(self) -> None:
        for maker in list(self.makers.values()) + [m for m, _ in self.retiring.values()]:
            ray.kill(maker, no_restart=True)
        self.makers.clear()
        self.retiring.clear()


def _maker_lost(err: BaseException) -> bool:
    """A dead (or restarting) maker, or one that refused for holding other weights: recoverable.
    Any other error raised inside `make` is a real failure and ends the run."""
    return isinstance(err, ray.exceptions.RayActorError) or isinstance(unwrap_error(err), MakerBehind)
