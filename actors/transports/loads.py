"""Handle loads into the makers, coalesced: what the object store and ipc transports deliver.

A handle (an object-store ref, or an ipc blob that maps the trainers' tensors) is loaded by a maker between
batches (`ExperienceMaker.load_weights`). Loads are coalesced: a maker is never sent a version it holds or
already awaits, and a busy maker is sent the newest handle only just before its next batch, so a slow maker
skips the versions it could not use; a load's ref is kept only until its result is collected, so the object
store releases a superseded export as soon as the load that used it has run.

The maker pool owns one `MakerLoads` and tells it what happens to its makers (added, removed, restarted); the
job's `WeightSync` (`pool.sync`) says which version is newest and gives each maker its handle.
"""

from __future__ import annotations

import time

import ray


class MakerLoads:
    def __init__(self, pool):
        self.pool = pool
        self.version: dict[int, int] = {}            # the newest version each maker holds or awaits
        self.pending: dict[int, ray.ObjectRef] = {}  # the newest load sent to each maker, not yet collected
        self.superseded: list[tuple[int, ray.ObjectRef]] = []  # (maker, load) still queued when a newer one was sent
        self.awaiting: dict[int, float] = {}         # makers waiting for a consistent export, since when
        self.finished: list[dict] = []               # load results not yet reported

    @property
    def newest(self) -> int:
        sync = self.pool.sync
        return sync.version if sync is not None else 0

    # ---------------------------------------------------------------- sending

    def send_newest(self, index: int, wait: bool = True) -> bool:
        """Queue the newest weights (a handle) on maker `index` unless it holds or awaits them; True when it
        holds or awaits them now. Without `wait` (mid-step) it is False while no consistent export can be had
        (see ObjectStore.handle_for): the maker then takes no batch until one can."""
        sync = self.pool.sync
        if sync is None or self.version[index] >= sync.version:
            self.awaiting.pop(index, None)
            return True
        handle = sync.handle_for(index, wait=wait)
        if handle is None:
            self.awaiting.setdefault(index, time.monotonic())
            return False
        self.awaiting.pop(index, None)
        previous = self.pending.get(index)
        if previous is not None and not self.collect(previous, block=False):
            self.superseded.append((index, previous))  # still queued behind a batch: collected later
        self.pending[index] = self.pool.makers[index].load_weights.remote(handle)
        self.version[index] = handle["version"]
        return True

    def received(self, version: int, makers: set) -> None:
        """`makers` got `version` another way (a broadcast they swap in before their next batch)."""
        for index in makers:
            if index in self.pool.makers:
                self.version[index] = version

    # ---------------------------------------------------------------- collecting

    def collect(self, ref, block: bool) -> bool:
        """Move a finished load's result to `finished`; True when it has run (or its maker died)."""
        if not block and not ray.wait([ref], timeout=0)[0]:
            return False
        try:
            self.finished.append(ray.get(ref))
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError):
            pass  # its maker (or the export's owner) died: the next batch finds it behind and recovers it
        return True

    def _collect_superseded(self, block: bool) -> None:
        self.superseded = [(i, ref) for i, ref in self.superseded if not self.collect(ref, block)]

    def wait_loaded(self) -> list[dict]:
        """Every maker holds the newest export: send it where missing, block until loaded; a maker that died
        meanwhile is recovered by the pool (and reloaded)."""
        pool = self.pool
        for index in list(pool.makers):
            self.send_newest(index)
        if pool.wait_all is not None:
            pool.wait_all(self.refs())
        self._collect_superseded(block=True)
        for index, ref in list(self.pending.items()):
            try:
                self.finished.append(ray.get(ref))
            except ray.exceptions.RayActorError:
                if index in pool.makers:
                    # between steps: it reloads for certain; a maker gone for good leaves the pool
                    pool.recover(index, pool.incarnation[index], mid_step=False)
        self.pending.clear()
        return self.take_finished()

    def take_finished(self) -> list[dict]:
        """Load results that have come back since the last call, without waiting."""
        self._collect_superseded(block=False)
        for index, ref in list(self.pending.items()):
            if self.collect(ref, block=False):
                self.pending.pop(index)
        out, self.finished = self.finished, []
        return out

    def refs(self) -> list:
        return list(self.pending.values()) + [ref for _, ref in self.superseded]

    def busy(self) -> list[int]:
        """Makers with a load not yet collected (the watchdog's report)."""
        return list(self.pending) + [i for i, _ in self.superseded]

    # ---------------------------------------------------------------- what happens to makers

    def added(self, index: int) -> None:
        self.version[index] = 0

    def removed(self, index: int) -> None:
        """Maker `index` left the pool; a load it had not run is still collected (its result reported)."""
        load = self.pending.pop(index, None)
        if load is not None and not self.collect(load, block=False):
            self.superseded.append((index, load))

    def lost(self, index: int) -> None:
        """Maker `index` is gone for good: its queued load went with it."""
        self.pending.pop(index, None)

    def behind(self, index: int, held: int) -> None:
        """Maker `index` says it holds `held`, older than promised: the next send reloads it."""
        self.version[index] = min(self.version[index], held)

    def restarted(self, index: int, mid_step: bool) -> None:
        """Ray restarted maker `index` with the base weights: reload the newest into it, at once between steps,
        mid-step only if a consistent export can be had now (else before its next batch)."""
        self.pending.pop(index, None)  # loads queued before the death went with the old process
        self.version[index] = 0
        if self.newest > 0 and self.send_newest(index, wait=not mid_step):
            try:
                self.finished.append(ray.get(self.pending.pop(index)))
            except ray.exceptions.RayActorError:  # it died again while reloading: the next batch recovers it
                self.version[index] = 0

    def forget(self) -> None:
        """A trainer restart: the loads sent so far are of weights past the checkpoint; none is waited for or
        reported (each maker runs them before its rewind)."""
        self.pending.clear()
        self.superseded.clear()
        self.awaiting.clear()
        self.finished.clear()

    def drain(self) -> None:
        """Wait for every load still queued (shutdown)."""
        for ref in self.refs():
            try:
                ray.get(ref)
            except ray.exceptions.RayError:
                pass
        self.pending.clear()
        self.superseded.clear()

