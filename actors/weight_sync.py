"""Weight sync: where it starts (`publish`, after every update) and which transport carries it to the makers.

    sync = WeightSync(cfg, trainers, pool, info)
    stats = sync.publish(version)          # the trainers' weights of `version` on their way to every maker

The transports are actors/transports/ (one file each): object_store, collective, ipc, or one of your own
(`weight_sync.transport: module:Class`). This file is the policy over them:

  object_store  the transport of last resort: every other one falls back to it for a maker it cannot serve
                (a maker that joins or restarts, a catch-up mid-step, a maker on another node).
  collective    a group that does not form ends the run with one line naming the peer; a broadcast that breaks
                because a member failed (a maker died mid-sync) is not a hang: that version goes through the
                object store and the group re-forms at the next sync.
  ipc           makers it cannot reach, and all of them once /dev/shm refuses, load from the object store.
  auto          ipc where it reaches every maker (sync mode, one node, one device kind, no Gemini), else the
                collective when its group forms, else the object store (said once in the log).
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from actors.transports import TransportBroke, TransportDown, WeightTransport, transport_class
from coati_ray.errors import WorkerLost

AUTO_ORDER = ("ipc", "collective", "object_store")  # what auto tries, best first


class WeightSync:
    def __init__(self, cfg, trainers, pool, info: Callable[[str], None]):
        self.cfg, self.trainers, self.pool, self.info = cfg, trainers, pool, info
        self.version = 0
        self.auto = cfg.weight_sync.transport == "auto"
        names = AUTO_ORDER if self.auto else (cfg.weight_sync.transport, "object_store")
        self.transports: dict[str, WeightTransport] = {}
        for name in names:
            if name not in self.transports:
                self.transports[name] = transport_class(name)(self)
        self.store = self.transports["object_store"]
        # auto starts on the collective; the first publish moves to ipc if it reaches every maker (_pick)
        self.active: WeightTransport = self.transports["collective" if self.auto else cfg.weight_sync.transport]
        pool.sync = self

    @property
    def transport(self) -> str:
        """The transport in use now."""
        return self.active.name

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.trainers.ranks)

    @property
    def groups(self) -> dict:
        """The collective's groups (role -> members), {} under another transport."""
        collective = self.transports.get("collective")
        return collective.groups if collective is not None else {}

    @property
    def uneven(self) -> dict:
        """role -> steps its weights had seen at the last consistency probe (why no export could be had)."""
        return self.store.uneven

    def gathers(self, role: str) -> bool:
        """A strategy whose export is a collective of the whole trainer group (Gemini): never run mid-step."""
        strategy = getattr(getattr(self.cfg, f"{role}_trainer", None), "strategy", None)
        return getattr(strategy, "name", "").startswith("colossalai_gemini")

    # ---------------------------------------------------------------- the sync

    def publish(self, version: int) -> dict:
        """The trainers' weights of `version` to every maker: pushed now, or made loadable (handle_for)."""
        t = time.perf_counter()
        self.version = version
        self.store.handle = None
        self._pick()
        chosen, published = self.active, None
        if chosen is not self.store and (chosen.lazy or self.pool.makers):
            try:
                published = chosen.publish(version)
            except TransportDown as e:
                self._down(e)
            except TransportBroke as e:
                chosen.close()
                self.info(f"weight sync: {e}; version {version} goes through the object store and the group "
                          "re-forms at the next sync")
        lazy = chosen.lazy and published is not None
        if published is None:
            published = self.store.publish(version)
        self.pool.published(version, published.received)
        # the transport in use (a broken broadcast's version went through the object store, still "collective")
        transport, sent = self.active.name, published.bytes
        if lazy:  # what one maker pulled, plus an object-store copy if some maker needed one
            stored = self.store.handle is not None and self.store.handle["version"] >= version
            sent = chosen.mapped + (self.store.handle["bytes"] if stored else 0)
            transport = chosen.name if chosen.mapped else "object_store"
        return {"export_seconds": time.perf_counter() - t, "bytes": sent, "transport": transport,
                "cast_tensors": published.casts}

    def handle_for(self, index: int, wait: bool = True) -> Optional[dict]:
        """What maker `index` loads the newest weights from: the transport in use's handle when it serves that
        maker (ipc: a blob of its own that maps the trainers' tensors), else the object store's."""
        if self.active is not self.store:
            try:
                handle = self.active.handle_for(index, wait)
            except TransportDown as e:
                self._down(e)
                handle = None
            except TransportBroke as e:  # this maker's load only: the object store's handle
                self.info(f"weight sync: {e}; maker-{index} loads version {self.version} from the object store")
                handle = None
            if handle is not None:
                return handle
        return self.store.handle_for(index, wait)

    def object_store_handle(self, wait: bool = True) -> Optional[dict]:
        return self.store.handle_for(-1, wait)

    def close(self) -> None:
        """Release every transport's setup (leave the collective groups; best effort: members may be gone)."""
        for transport in self.transports.values():
            transport.close()

    # ---------------------------------------------------------------- choosing

    def _pick(self) -> None:
        """auto: ipc once it reaches every maker (a scale-down left only those on the trainers' node); off ipc
        again when a maker is elsewhere."""
        if not self.auto:
            return
        ipc = self.transports["ipc"]
        if self.active is not ipc and ipc.reaches_every_maker():
            self.active.close()  # the makers now share the trainers' node: no broadcast
            self.active = ipc
            self.info("weight sync: every maker is on the trainers' node; mapping their tensors (ipc)")
        elif self.active is ipc and not ipc.reaches_every_maker():
            self.active = self.transports["collective"]  # a maker elsewhere: the collective (or the object store)

    def _down(self, e: TransportDown) -> None:
        """The transport in use cannot serve this job: under auto the next one in AUTO_ORDER, chosen by name the
        object store (or, `fatal`, the end of the run)."""
        self.active.close()
        if not self.auto:
            if e.fatal:
                raise WorkerLost(f"run error: {e}") from None
            self.active = self.store
            self.info(f"{e}; using the object store")
            return
        if self.active is self.store:
            raise WorkerLost(f"run error: {e}") from None  # nothing left to fall back on
        following = AUTO_ORDER[AUTO_ORDER.index(self.active.name) + 1]
        self.active = self.transports[following]
        self.info(f"{e}; " + ("using the object store from now on (weight_sync.transport=auto)" if following == "object_store"
                              else f"the {following} or the object store from the next sync"))

    # ---------------------------------------------------------------- the trainer ranks

    def rank0(self, method: str) -> dict:
        """Call `method` on rank 0 of every group (not a collective: never for a gathering strategy)."""
        roles = list(self.roles)
        out = self.trainers.get([getattr(self.trainers.ranks[role][0], method).remote() for role in roles])
        return dict(zip(roles, out))

    def each_role(self, method: str, **kwargs) -> dict:
        """Call `method` on every rank of every group (Gemini gathers on all); rank 0's answer per role."""
        refs = {role: [getattr(r, method).remote(**kwargs) for r in ranks]
                for role, ranks in self.trainers.ranks.items()}
        out = self.trainers.get([ref for role_refs in refs.values() for ref in role_refs])
        result, i = {}, 0
        for role, role_refs in refs.items():
            result[role] = out[i]
            i += len(role_refs)
        return result
