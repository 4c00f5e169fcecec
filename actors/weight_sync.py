"""Weight sync: where it starts (`publish`, after every update) and where it ends (the makers' models).

    sync = WeightSync(cfg, trainers, pool, info)
    stats = sync.publish(version)          # the trainers' weights of `version` on their way to every maker

Two transports, chosen by `sync.transport`:

  object_store  trainer rank 0 of each group puts its weights once as numpy views; makers receive an
                opaque handle and load it between batches (one copy into the model), the newest only.
  collective    one torch.distributed group per synced role: {that group's rank 0, every maker},
                formed inside the actors with its own TCPStore (gloo on CPU, nccl on GPU, the same
                code). Rank 0 broadcasts bucket by bucket; makers receive on their `sync` thread into
                staging and swap in between batches. The group is re-formed at the next sync when
                makers join, leave or restart; a maker that joins or restarts catches up from the
                object store first. A group that does not form, or a broadcast that does not finish,
                within sync.timeout_s ends the run with one line naming the peer.
  auto          collective when the group forms, else the object store (said once in the log).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import ray

from actors.collective import missing_members
from coati_ray.errors import WorkerLost


@dataclass
class _Group:
    role: str
    members: dict          # maker index -> incarnation it joined as
    host: str
    port: int
    buckets: list
    backend: str


class WeightSync:
    def __init__(self, cfg, trainers, pool, info: Callable[[str], None]):
        self.cfg, self.trainers, self.pool, self.info = cfg, trainers, pool, info
        self.transport = cfg.sync.transport
        self.version = 0
        self.handle: Optional[dict] = None
        self.groups: dict[str, _Group] = {}
        pool.sync = self

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.trainers.ranks)

    # ---------------------------------------------------------------- the sync

    def publish(self, version: int) -> dict:
        """The trainers' weights of `version` to every maker: broadcast now, or put once for makers to load."""
        t = time.perf_counter()
        self.version, self.handle = version, None
        received, sent, casts = set(), 0, 0
        if self.transport in ("collective", "auto") and self.pool.makers:
            try:
                received, sent, casts = self._broadcast(version)
                self.transport = "collective"
            except _CannotForm as e:
                if self.transport == "collective":
                    raise WorkerLost(str(e)) from None
                self.info(f"weight sync: {e}; using the object store instead (sync.transport=auto)")
                self.transport = "object_store"
        if self.transport == "object_store":
            sent = self.object_store_handle()["bytes"]
        self.pool.published(version, received)
        return {"export_seconds": time.perf_counter() - t, "bytes": sent, "transport": self.transport,
                "cast_tensors": casts}

    def object_store_handle(self) -> dict:
        """The newest weights in the object store, put once per version (on demand under the collective: a
        maker that joined or restarted catches up from it, even mid-step: the trainers export on their
        sync thread after the update in progress, so the handle may be a version newer than the last sync)."""
        if self.handle is not None and self.handle["version"] >= self.version:
            return self.handle
        deadline = time.monotonic() + self.cfg.sync.timeout_s
        while True:
            parts = self._each_role("export_weights")
            versions = {p["version"] for p in parts.values()}
            if len(versions) == 1:  # every group's weights have seen the same steps
                break
            if time.monotonic() > deadline:
                raise WorkerLost(f"run error: weight sync: the trainer groups stayed at different steps {versions} "
                                 f"for sync.timeout_s={self.cfg.sync.timeout_s:g}s; see the trainer actors' logs")
            time.sleep(0.05)
        self.handle = {"version": versions.pop(), "roles": {role: {"ref": p["ref"], "dtypes": p["dtypes"]}
                                                            for role, p in parts.items()},
                       "bytes": sum(p["bytes"] for p in parts.values())}
        return self.handle

    def close(self) -> None:
        """Leave the collective groups (best effort: members may be gone)."""
        for group in self.groups.values():
            self._leave(group)
        self.groups.clear()

    # ---------------------------------------------------------------- collective

    def _broadcast(self, version: int) -> tuple[set, int, int]:
        """(makers that received `version`, bytes sent, most tensors a maker cast) of one broadcast per role."""
        members = self._members()
        if any(g.members != members for g in self.groups.values()) or set(self.groups) != set(self.roles):
            self.close()
            self.groups = {role: self._form(role, members) for role in self.roles}
        refs, makers = [], []
        for role, group in self.groups.items():
            refs += [r.send_weights.remote(group.buckets) for r in self.trainers.ranks[role]]
            for index in group.members:
                refs.append(self.pool.makers[index].receive_weights.remote(role, group.buckets, version))
                makers.append((refs[-1], index, role))
        done, waiting = ray.wait(refs, num_returns=len(refs), timeout=self.cfg.sync.timeout_s)
        received, failed, casts = set(members), [], {}
        for ref, index, role in makers:
            if ref in waiting:
                raise WorkerLost(f"run error: weight sync: maker-{index} did not receive version {version} of the "
                                 f"{role} within sync.timeout_s={self.cfg.sync.timeout_s:g}s; see its log, raise "
                                 "sync.timeout_s, or use sync.transport=object_store")
            try:
                casts[index] = casts.get(index, 0) + ray.get(ref)["cast_tensors"]
            except ray.exceptions.RayError:
                failed.append(index)
        if waiting:  # a sender did not finish though every maker did
            raise WorkerLost(f"run error: weight sync: a trainer rank did not finish broadcasting version {version} "
                             f"within sync.timeout_s={self.cfg.sync.timeout_s:g}s; see the trainer actors' logs")
        sent = 0
        for ref in refs:
            if ref not in {m[0] for m in makers}:
                try:
                    sent += (ray.get(ref) or {}).get("bytes", 0)
                except ray.exceptions.RayActorError:
                    raise WorkerLost(self.trainers.lost_message(RuntimeError("lost during weight sync"))) from None
                except ray.exceptions.RayTaskError:
                    failed.append(-1)  # the broadcast broke (a receiver died): redo it over the object store
        if failed:
            self.info(f"weight sync: the broadcast of version {version} broke ({len(failed)} peer(s) failed); the "
                      "makers load it from the object store and the group re-forms at the next sync")
            self.close()
            return set(), 0, 0
        return received, sent, max(casts.values(), default=0)

    def _members(self) -> dict:
        return {i: self.pool.incarnation[i] for i in sorted(self.pool.makers)}

    def _form(self, role: str, members: dict) -> _Group:
        """Every maker of `members` and the role's rank 0 join one group; timeouts name who did not."""
        ranks = self.trainers.ranks[role]
        host, port = ray.get(ranks[0].address.remote())
        bucket_bytes = int(self.cfg.sync.bucket_mb * 2**20)
        plans = self.trainers.get([r.sync_plan.remote(bucket_bytes) for r in ranks])  # all ranks: Gemini gathers
        buckets, size = plans[0], 1 + len(members)
        backend = self._backend()
        timeout = self.cfg.sync.timeout_s
        # Members wait longer than the driver, so the store (hosted by rank 0) is still up when the driver
        # reads who never marked itself joined.
        member_timeout = 2 * timeout + 30
        refs = {ranks[0].join_sync.remote(host, port, 0, size, backend, member_timeout): f"{role}-trainer-0"}
        for rank, index in enumerate(members, start=1):
            refs[self.pool.makers[index].join_sync.remote(role, buckets, host, port, rank, size, backend,
                                                          member_timeout)] = f"maker-{index}"
        done, waiting = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        names = list(refs.values())
        if waiting:
            missing = missing_members(host, port, size)
            who = ", ".join(names[r] for r in missing) if missing else f"{role}-trainer-0 (the store's host)"
            raise _CannotForm(f"run error: weight sync: {who} did not join the {role} group ({backend}, "
                              f"{host}:{port}) within sync.timeout_s={timeout:g}s; check that every node can reach "
                              f"{host}, or use sync.transport=object_store")
        for ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as e:
                raise _CannotForm(f"run error: weight sync: {refs[ref]} could not join the {role} group "
                                  f"({str(e).splitlines()[-1][:200]})") from None
        self.info(f"weight sync: {role} group formed ({backend}, {size} members, {len(buckets)} bucket(s))")
        return _Group(role, dict(members), host, port, buckets, backend)

    def _backend(self) -> str:
        b = self.cfg.sync.backend
        if b != "auto":
            return b
        senders_gpu = all(getattr(self.cfg, f"{r}_trainer").resources.num_gpus_per_rank > 0 for r in self.roles)
        return "nccl" if senders_gpu and self.cfg.maker.num_gpus > 0 else "gloo"

    def _leave(self, group: _Group) -> None:
        handles = [self.trainers.ranks[group.role][0]] + [self.pool.makers[i] for i in group.members
                                                          if i in self.pool.makers]
        for h in handles:
            h.leave_sync.remote()  # fire and forget: a dead member needs nothing

    # ---------------------------------------------------------------- helpers

    def _each_role(self, method: str) -> dict:
        """Call `method` on every rank of every group (Gemini gathers on all); rank 0's answer per role."""
        refs = {role: [getattr(r, method).remote() for r in ranks] for role, ranks in self.trainers.ranks.items()}
        out = self.trainers.get([ref for role_refs in refs.values() for ref in role_refs])
        result, i = {}, 0
        for role, role_refs in refs.items():
            result[role] = out[i]
            i += len(role_refs)
        return result


class _CannotForm(RuntimeError):
    pass
