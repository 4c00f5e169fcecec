"""The experience makers of one PPO job: membership, batches in flight, weight loads, recovery.

A maker that dies (`ray.kill`, a killed process, a lost node) is restarted by Ray up to
`maker.max_restarts` times. A restarted maker comes back with the base weights, so the pool never
lets it generate before it has reloaded the current ones: every `make` carries the policy version
the pool sent that maker, and a maker that holds another version refuses the batch (`MakerBehind`).
On either signal, a dead maker or a refusal, the pool waits for the restart, reloads the newest
weights and submits the *same* batch again (same prompts, batch id and sampling seed). One death is
one recovery: each batch remembers the maker's incarnation it was sent to, so the other batches
queued on the same dead process are simply sent again. A batch's Experience is the `make` task's
return value, owned by the driver, and the pool puts it in the buffer only once the maker has
returned it: a maker's death loses at most the batches it had not finished, never one already made.

Weight loads (object store and ipc handles) are the pool's `MakerLoads` (actors/transports/loads.py), which
coalesces them; the pool tells it when makers join, leave, restart or turn out behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import ray

from actors.cluster import NAMESPACE
from actors.group import unwrap_error
from actors.maker import ExperienceMaker, MakerBehind
from actors.transports.loads import MakerLoads
from coati_ray.errors import ConfigError, MakerUnplaced, WorkerLost

RESTART_TIMEOUT_S = 300.0


@dataclass
class Batch:
    """One maker batch on its way: generating on a maker, then being put in the buffer by the driver."""

    batch_id: int
    items: list
    maker: int = -1
    incarnation: int = 0                 # the maker's incarnation it was sent to
    stats_ref: Optional[ray.ObjectRef] = None
    exp_ref: Optional[ray.ObjectRef] = None
    put_ref: Optional[ray.ObjectRef] = None
    stats: Optional[dict] = None
    t_made: float = 0.0
    t_sent: float = 0.0                  # when it was sent to its maker (the watchdog's report)

    @property
    def waiting_on(self) -> ray.ObjectRef:
        return self.stats_ref if self.put_ref is None else self.put_ref


class MakerPool:
    def __init__(self, cfg, cfg_dict: dict, buffer, info: Callable[[str], None]):
        self.cfg, self.cfg_dict, self.buffer, self.info = cfg, cfg_dict, buffer, info
        self.makers: dict[int, object] = {}
        self.incarnation: dict[int, int] = {}        # recoveries so far, per maker
        self.loads = MakerLoads(self)                # weight loads sent to makers, coalesced
        self.sync = None                             # the job's WeightSync: newest version, each maker's handle
        self.running: dict[ray.ObjectRef, Batch] = {}  # batches not yet in the buffer, by the ref they wait on
        self.retiring: dict[int, object] = {}        # removed makers finishing their batches
        self.orphans: list[Batch] = []               # batches whose maker left before finishing them
        self.wait_all: Optional[Callable[[list], None]] = None  # the job's watchdog: waits, ends a stalled run
        self.next_index = 0
        self.restarts = 0
        self.regenerated = 0                         # batches made again after their maker died or fell behind
        self.behind = 0                              # batches a live maker refused for lacking its weights
        self.dropped = 0                             # makers taken out past their restarts (on_exhausted_restarts=drop)
        self._dropped_reported = 0

    def __len__(self) -> int:
        return len(self.makers)

    # ------------------------------------------------------------------ membership

    def check_fits(self, target: int) -> None:
        """Refuse to grow to `target` makers when the cluster has not got the free CPUs/GPUs for them
        (Ray would otherwise queue the actors forever)."""
        extra = target - len(self.makers)
        m = self.cfg.maker
        if extra <= 0 or m.autoscale is not None:  # autoscaled: a maker that does not fit asks Ray for a node
            return
        free = ray.available_resources()
        need = {"CPU": extra * m.num_cpus, "GPU": extra * m.num_gpus,
                **{name: extra * amount for name, amount in m.resources.items()}}
        short = {k: v for k, v in need.items() if v > free.get(k, 0.0) + 1e-9}
        if short:
            have = ", ".join(f"{free.get(k, 0.0):g} {k}" for k in short)
            raise ConfigError(f"config error: scale_makers({target}): {extra} more maker(s) need "
                              f"{', '.join(f'{v:g} {k}' for k, v in short.items())} but the cluster has {have} free; "
                              "ask for fewer makers, lower maker.num_cpus / num_gpus, or add nodes")

    def scale_to(self, target: int, wait: bool = True) -> None:
        """Add or remove makers. Added ones are waited for (`wait`; see wait_ready) and start from the
        newest weights; a removed one with batches in flight finishes them first."""
        m = self.cfg.maker
        added = []
        if target > len(self.makers):
            self.check_fits(target)
        while len(self.makers) < target:
            index = self.next_index
            self.next_index += 1
            self.makers[index] = ExperienceMaker.options(
                name=f"maker-{index}", namespace=NAMESPACE, num_cpus=m.num_cpus, num_gpus=m.num_gpus,
                resources=dict(m.resources) or None, max_restarts=m.max_restarts).remote(index, self.cfg_dict, m.torch_threads,
                                                                     m.cpu_cores, m.nice)
            self.loads.added(index)
            self.incarnation[index] = 0
            added.append(index)
            self.info(f"maker-{index} added ({len(self.makers)} makers)")
        if added:
            if wait:
                self.wait_ready(added)
            for index in added:  # a maker that joins mid-run starts from the current policy
                self.loads.send_newest(index)
        while len(self.makers) > target:
            index = max(self.makers)
            maker = self.makers.pop(index)
            self.loads.removed(index)
            if self._batches_on(index):
                self.retiring[index] = maker  # killed once its batches are made (nothing in flight is lost)
            else:
                ray.kill(maker, no_restart=True)
            self.info(f"maker-{index} removed ({len(self.makers)} makers)")

    def wait_ready(self, indices: Optional[list[int]] = None) -> None:
        """Every maker in `indices` (default all) constructed; a maker Ray cannot place or start within
        maker.start_timeout_s ends the run with one line naming it and what it waits for."""
        indices = list(self.makers) if indices is None else indices
        refs = {self.makers[i].ready.remote(): i for i in indices}
        timeout = self.cfg.maker.start_timeout_s
        ready, waiting = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        for ref in ready:
            ray.get(ref)  # a constructor that raised fails here, with its own message
        if waiting:
            names = ", ".join(f"maker-{refs[r]}" for r in waiting)
            m = self.cfg.maker
            free = ray.available_resources()
            raise MakerUnplaced(f"run error: {names} did not start within maker.start_timeout_s={timeout:g}s: not "
                             f"placed (each needs {m.num_cpus:g} CPU / {m.num_gpus:g} GPU{_custom(m.resources)}; the "
                             f"cluster has {free.get('CPU', 0):g} CPU / {free.get('GPU', 0):g} GPU"
                             f"{_custom(m.resources, free)} free) or still loading its "
                             "models; lower maker.num_makers or the per-maker resources, add nodes, or raise "
                             "maker.start_timeout_s for large models")

    def first(self):
        """The maker with the lowest index (the one evaluations run on), or None."""
        return self.makers[min(self.makers)] if self.makers else None

    def idle(self) -> list[int]:
        return [i for i in self.makers if not self._batches_on(i)]

    def queued(self, index: int) -> int:
        return len(self._batches_on(index))

    def _batches_on(self, index: int) -> list[Batch]:
        return [b for b in self.running.values() if b.maker == index]

    # ------------------------------------------------------------------ weights

    @property
    def newest(self) -> int:
        return self.loads.newest

    @property
    def awaiting(self) -> dict[int, float]:
        """Makers waiting for a consistent export (mid-step), since when."""
        return self.loads.awaiting

    def published(self, version: int, received: set) -> None:
        """Version `version` is out: makers in `received` got it by broadcast (they swap it in before their
        next batch); idle others load it now, busy ones just before their next batch."""
        self.loads.received(version, received)
        for index in self.idle():
            self.loads.send_newest(index)

    def can_take(self, index: int) -> bool:
        """Maker `index` holds, or has been sent, the newest weights, so a batch can follow (mid-step: never
        blocks)."""
        return self.loads.send_newest(index, wait=False)

    def wait_loads(self) -> list[dict]:
        """Every maker holds the newest export (blocks); the load results since the last report."""
        return self.loads.wait_loaded()

    def finished_loads(self) -> list[dict]:
        """Load results that have come back since the last call, without waiting."""
        return self.loads.take_finished()

    # ------------------------------------------------------------------ batches

    def submit(self, index: int, batch: Batch) -> None:
        """Send `batch` to maker `index` (after the newest weights, which it loads first); a maker that cannot
        have them yet leaves the batch first in line for the next maker that can."""
        if not self.can_take(index):
            self.orphans.insert(0, batch)
            return
        batch.maker, batch.incarnation, batch.put_ref, batch.stats = index, self.incarnation[index], None, None
        batch.t_sent = time.perf_counter()
        batch.stats_ref, batch.exp_ref = self.makers[index].make.remote(batch.items, batch.batch_id,
                                                                        self.loads.version[index])
        self.running[batch.stats_ref] = batch

    def activity(self) -> dict[str, str]:
        """{maker name: what the driver has it doing}, for the watchdog's report."""
        now, out = time.perf_counter(), {}
        for batch in self.running.values():
            if batch.put_ref is None:
                name = f"maker-{batch.maker}"
                out[name] = out.get(name, "") + ("; " if name in out else "") + \
                    f"make of batch {batch.batch_id}, sent {now - batch.t_sent:.0f}s ago"
        for index in self.loads.busy():
            out.setdefault(f"maker-{index}", "load_weights")
        return out

    def refs(self) -> list:
        """What the scheduler waits on: each running batch's make or buffer put."""
        return list(self.running)

    def on_ready(self, ref) -> Optional[dict]:
        """`ref` (from refs()) is ready: move its batch on. Returns the batch's statistics once it is in
        the buffer, else None (it is now being put, or made again)."""
        batch = self.running.pop(ref)
        if batch.put_ref is not None:
            item_id = ray.get(batch.put_ref)  # a full buffer for buffer.timeout_s raises here
            batch.stats["timing/buffer_wait"] = time.perf_counter() - batch.t_made
            batch.stats["accepted"] = item_id >= 0  # -1: a copy of a batch the buffer already holds
            self._retire_if_done(batch.maker)
            return batch.stats
        try:
            batch.stats = ray.get(batch.stats_ref)
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
            if not _maker_lost(e):
                raise
            self._remake(batch, e)
            return None
        batch.t_made = time.perf_counter()
        s = batch.stats
        batch.put_ref = self.buffer.put.remote([batch.exp_ref], s["samples"], s["version"], s["maker"],
                                               batch.batch_id)
        self.running[batch.put_ref] = batch
        return None

    def _remake(self, batch: Batch, err: BaseException) -> None:
        index = batch.maker
        inner = unwrap_error(err)
        behind = isinstance(inner, MakerBehind) and not inner.restarted
        reason = "was behind" if isinstance(inner, MakerBehind) else "died"
        self.regenerated += 1
        if behind and index in self.makers and index not in self.retiring:
            self._catch_up(index, inner, batch)
            return
        if index in self.retiring:  # a member maker makes it instead
            if not self._batches_on(index):
                ray.kill(self.retiring.pop(index), no_restart=True)
            self.orphans.append(batch)
            return
        if index not in self.makers:  # dropped from the pool already: another maker makes it
            self.orphans.append(batch)
            return
        self.info(f"maker-{index} {reason} during batch {batch.batch_id}; making it again")
        if self.recover(index, batch.incarnation):
            self.submit(index, batch)
        else:
            self.orphans.append(batch)

    def _catch_up(self, index: int, behind: MakerBehind, batch: Batch) -> None:
        """A live maker without the weights it was promised (a load superseded, a broadcast that did not land
        in time): not a restart. It gets the newest weights through the object store and the batch again; its
        process and its place in the weight-broadcast groups stay as they are."""
        self.behind += 1
        self.info(f"maker-{index} was behind during batch {batch.batch_id} (holds version {behind.held}, "
                  f"expected {behind.expected}); loading the newest weights into it and making it again")
        self.loads.behind(index, behind.held)
        self.submit(index, batch)  # the newest weights first, then the batch

    def take_orphan(self) -> Optional[Batch]:
        return self.orphans.pop(0) if self.orphans else None

    def _retire_if_done(self, index: int) -> None:
        if index in self.retiring and not self._batches_on(index):
            ray.kill(self.retiring.pop(index), no_restart=True)

    # ------------------------------------------------------------------ recovery

    def recover(self, index: int, incarnation: int, mid_step: bool = True) -> bool:
        """Wait for Ray to restart maker `index` and reload the newest weights into it, once per death:
        a batch sent before an earlier recovery of this maker finds the work done and only resubmits.
        Mid-step the reload waits for nobody (see MakerLoads.send_newest); between steps it is certain.
        Returns False when the maker is gone for good and left the pool (maker.on_exhausted_restarts=drop);
        with `fail`, that ends the run."""
        if index not in self.makers:
            return False
        if incarnation < self.incarnation[index]:
            return True
        maker = self.makers[index]
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                ray.get(maker.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                break
            except ray.exceptions.ActorUnavailableError:  # restarting: not reachable yet
                if time.monotonic() > deadline:
                    return self._give_up(index, "it did not come back")
                time.sleep(0.5)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
                return self._give_up(index, type(e).__name__)
        self.restarts += 1
        self.incarnation[index] += 1
        self.loads.restarted(index, mid_step)  # it holds the base weights: the newest, now or before its next batch
        self.info(f"maker-{index} restarted ({self.restarts} restarts) and holds version {self.loads.version[index]}")
        return True

    def _give_up(self, index: int, why: str) -> bool:
        """Maker `index` cannot come back: drop it (its batches go to the others as they fail) or end the run."""
        if self.cfg.maker.on_exhausted_restarts != "drop":
            raise self._lost(index, why)
        if len(self.makers) == 1:
            raise self._lost(index, f"{why}; it was the last maker, so maker.on_exhausted_restarts=drop cannot go on")
        ray.kill(self.makers.pop(index), no_restart=True)  # dead already; this frees its name at once
        self.loads.lost(index)
        self.dropped += 1
        self.info(f"maker-{index} is gone for good ({why}, maker.max_restarts={self.cfg.maker.max_restarts}); "
                  f"it leaves the pool and the run goes on with {len(self.makers)} maker(s) "
                  "(maker.on_exhausted_restarts=drop)")
        return False

    def take_dropped(self) -> int:
        """Makers dropped since the last call (the driver lowers its target by as many)."""
        new, self._dropped_reported = self.dropped - self._dropped_reported, self.dropped
        return new

    def _lost(self, index: int, why: str) -> WorkerLost:
        maker = self.makers[index]
        return WorkerLost(f"run error: maker-{index} died and Ray could not restart it ({why}; maker.max_restarts="
                          f"{self.cfg.maker.max_restarts}, {self.restarts} restarts so far); see its log with "
                          f"`ray logs actor --id {maker._actor_id.hex()}`, raise maker.max_restarts, set "
                          "maker.on_exhausted_restarts=drop to go on without it, or resume with --resume")

    # ------------------------------------------------------------------ shutdown

    def drain(self) -> None:
        """Wait for batches still being made (the closed buffer refuses them) and weight loads."""
        for ref in list(self.running):
            try:
                ray.get(ref)
            except ray.exceptions.RayError:
                pass
        self.running.clear()
        self.loads.drain()
        for index in list(self.retiring):
            ray.kill(self.retiring.pop(index), no_restart=True)

    def drop_in_flight(self) -> None:
        """A trainer restart keeps the makers (actors/trainer_restart.py): the batches being made and the loads
        queued are dropped without waiting (their steps are made again after the checkpoint), and no weights are
        sent until the new trainers publish theirs (`sync` unset). Not cancelled: ray.cancel of an actor task
        queued on the caller's side leaves a gap in the actor's call order that stalls its next call for 30 s."""
        self.running.clear()
        self.orphans.clear()
        self.loads.forget()
        for index in list(self.retiring):
            ray.kill(self.retiring.pop(index), no_restart=True)
        self.sync = None

    def rewind(self, buffer, timeout_s: float = RESTART_TIMEOUT_S) -> None:
        """After drop_in_flight: every maker takes the next weights it is sent whatever their version (the
        trainers went back to older ones). A maker runs its calls in order, so its rewind runs once what it was
        making is done; one that does not answer within `timeout_s` (dead, or stuck) is restarted, which leaves
        it the base weights, never newer ones. Experience goes to `buffer`, the new buffer, from now on."""
        refs = {self.makers[i].rewind.remote(): i for i in self.makers}
        done, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        stuck = {refs[ref]: f"no answer within {timeout_s:g}s" for ref in late}
        for ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as e:
                stuck[refs[ref]] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        for index in self.makers:
            self.loads.version[index] = -1
        for index, why in sorted(stuck.items()):
            self.info(f"maker-{index} did not go back to the checkpoint's weights ({why}); restarting it")
            ray.kill(self.makers[index], no_restart=False)
            self.recover(index, self.incarnation[index], mid_step=False)
        self.buffer = buffer

    def kill_all(self) -> None:
        for maker in list(self.makers.values()) + list(self.retiring.values()):
            ray.kill(maker, no_restart=True)
        self.makers.clear()
        self.retiring.clear()


def _custom(resources: dict, free: Optional[dict] = None) -> str:
    """' / 1 inference' for a maker's custom resources (their free amounts when `free` is given)."""
    return "".join(f" / {(free.get(k, 0.0) if free is not None else v):g} {k}" for k, v in resources.items())


def _maker_lost(err: BaseException) -> bool:
    """A dead (or restarting) maker, or one that refused for holding other weights: recoverable.
    Any other error raised inside `make` is a real failure and ends the run."""
    return isinstance(err, ray.exceptions.RayActorError) or isinstance(unwrap_error(err), MakerBehind)
