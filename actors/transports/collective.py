"""collective: one torch.distributed group per synced role, {that group's rank 0, every maker}, formed inside the
actors with its own TCPStore (gloo on CPU, nccl on GPU, the same code). Rank 0 broadcasts bucket by bucket; makers
receive on their `weights` thread into staging and swap in between batches (WeightReceiver.receive / swap). The group
is re-formed at the next sync when makers join, leave or restart; a maker that joins or restarts catches up from
the object store first. A group that does not form within weight_sync.timeout_s is TransportDown (auto: the object store
from then on; chosen by name: the run ends with one line naming the peer); a broadcast that breaks because a
member failed is TransportBroke (that version goes through the object store, the group re-forms next sync)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray

from actors.broadcast_group import abandon, missing_members
from actors.transports import Published, TransportBroke, TransportDown, WeightTransport, register_transport
from actors.transports.object_store import store_handle
from coati_ray.errors import WorkerLost


@dataclass
class _Group:
    role: str
    members: dict          # maker index -> incarnation it joined as
    meeting: tuple         # (rendezvous, secret): where it formed
    buckets: list
    backend: str


@register_transport("collective")
class Collective(WeightTransport):
    def __init__(self, sync):
        super().__init__(sync)
        self.groups: dict[str, _Group] = {}

    def publish(self, version: int) -> Published:
        received, sent, casts = self._broadcast(version)
        return Published(received, sent, casts)

    def close(self) -> None:
        """Leave the collective groups (best effort: members may be gone)."""
        sync = self.sync
        for group in self.groups.values():
            handles = [sync.trainers.ranks[group.role][0]] + [sync.pool.makers[i] for i in group.members
                                                         if i in sync.pool.makers]
            for h in handles:
                h.leave_sync.remote()  # fire and forget: a dead member needs nothing
        self.groups.clear()

    def _broadcast(self, version: int) -> tuple[set, int, int]:
        """(makers that received `version`, bytes sent, most tensors a maker cast) of one broadcast per role."""
        sync = self.sync
        members = {i: sync.pool.incarnation[i] for i in sorted(sync.pool.makers)}
        if any(g.members != members for g in self.groups.values()) or set(self.groups) != set(sync.roles):
            self.close()
            for role in sync.roles:
                self.groups[role] = self._form(role, members)
        senders, receivers = {}, {}
        export = any(sync.gathers(role) for role in sync.roles)
        for role, group in self.groups.items():
            for rank, r in enumerate(sync.trainers.ranks[role]):
                senders[r.send_weights.remote(group.buckets, export)] = (role, rank)
            for index in group.members:
                receivers[sync.pool.makers[index].receive_weights.remote(role, group.buckets, version)] = (role, index)
        results = _wait_all({**senders, **receivers}, sync.cfg.weight_sync.timeout_s)
        for ref, out in results.items():  # a failure first: its peers' unfinished calls follow from it
            if not isinstance(out, Exception):
                continue
            if ref in senders:
                role, rank = senders[ref]
                if isinstance(out, ray.exceptions.RayActorError):
                    raise sync.trainers.lost(out, f"{role}-trainer-{rank}")
                raise TransportBroke(f"the broadcast of version {version} from {role}-trainer-{rank} broke "
                                     f"({_last_line(out)})")
            role, index = receivers[ref]
            raise TransportBroke(f"maker-{index} failed receiving version {version} of the {role} ({_last_line(out)})")
        timeout = f"within weight_sync.timeout_s={sync.cfg.weight_sync.timeout_s:g}s"
        for ref, (role, rank) in senders.items():  # then what hangs: senders before the receivers they feed
            if ref not in results:
                raise WorkerLost(f"run error: weight sync: {role}-trainer-{rank} did not finish broadcasting version "
                                 f"{version} {timeout}; see its log, or use weight_sync.transport=object_store")
        for ref, (role, index) in receivers.items():
            if ref not in results:
                raise WorkerLost(f"run error: weight sync: maker-{index} did not receive version {version} of the "
                                 f"{role} {timeout}; see its log, or use weight_sync.transport=object_store")
        casts: dict[int, int] = {}
        for ref, (role, index) in receivers.items():
            casts[index] = casts.get(index, 0) + results[ref]["cast_tensors"]
        sent, exports = 0, {}
        for ref, (role, rank) in senders.items():
            out = results[ref] or {}
            sent += out.get("bytes", 0)
            if "export" in out:
                exports[role] = out["export"]
        if exports and len(exports) == len(sync.roles):
            sync.store.handle = store_handle(version, exports)
        return set(members), sent, max(casts.values(), default=0)

    def _form(self, role: str, members: dict) -> _Group:
        """Every maker of `members` and the role's rank 0 join one group; a timeout names who did not."""
        from actors.rendezvous import new_secret

        sync = self.sync
        ranks = sync.trainers.ranks[role]
        meeting = (sync.trainers.rendezvous, new_secret())  # a fresh secret per formation: old members cannot meet
        bucket_bytes = int(sync.cfg.weight_sync.bucket_mb * 2**20)
        plans = sync.trainers.get([r.sync_plan.remote(bucket_bytes) for r in ranks])  # all ranks: Gemini gathers
        buckets, size = plans[0], 1 + len(members)
        backend = self._backend()
        timeout = sync.cfg.weight_sync.timeout_s
        # Members give up a little after the driver, which reads who never marked itself joined and then tells
        # the rest to leave.
        member_timeout = timeout + 10
        refs = {ranks[0].join_sync.remote(meeting, 0, size, backend, member_timeout): f"{role}-trainer-0"}
        for rank, index in enumerate(members, start=1):
            refs[sync.pool.makers[index].join_sync.remote(role, buckets, meeting, rank, size, backend,
                                                         member_timeout)] = f"maker-{index}"
        results = _wait_all(refs, timeout)
        failed = {ref: out for ref, out in results.items() if isinstance(out, Exception)}
        if failed or len(results) < len(refs):
            # members that did join would otherwise wait in the rendezvous (their actor blocked) until timeout
            missing = missing_members(meeting, size) if not failed else []
            abandon(meeting)
        for ref, out in failed.items():
            if isinstance(out, ray.exceptions.RayActorError) and refs[ref].startswith("maker-"):
                # it died or is restarting: membership changed, so the next sync forms the group again
                raise TransportBroke(f"{refs[ref]} died while joining the {role} group ({_last_line(out)})")
            # one that failed at once (e.g. a model that does not match) says why
            raise TransportDown(f"weight sync: {refs[ref]} could not join the {role} group ({_last_line(out)})")
        if len(results) < len(refs):
            names = list(refs.values())
            if missing is None:
                who = "the group's rendezvous (it did not answer)"
            elif missing:
                who = ", ".join(names[r] for r in missing)
            else:
                who = "no one is missing, but the rendezvous of " + ", ".join(
                    refs[r] for r in refs if r not in results) + " did not finish"
            raise TransportDown(f"weight sync: {who} did not join the {role} group ({backend}) within "
                                f"weight_sync.timeout_s={timeout:g}s; check that every node can reach the others on the "
                                "interface Ray uses, or use weight_sync.transport=object_store")
        sync.info(f"weight sync: {role} group formed ({backend}, {size} members, {len(buckets)} bucket(s))")
        return _Group(role, dict(members), meeting, buckets, backend)

    def _backend(self) -> str:
        """nccl only when every member owns whole GPUs: NCCL refuses two ranks on one device, which is what
        fractional num_gpus means; gloo otherwise (CPU tensors)."""
        sync = self.sync
        b = sync.cfg.weight_sync.backend
        if b != "auto":
            return b
        senders = all(getattr(sync.cfg, f"{r}_trainer").resources.num_gpus_per_rank >= 1 for r in sync.roles)
        return "nccl" if senders and sync.cfg.maker.num_gpus >= 1 else "gloo"


def _wait_all(refs: dict, timeout_s: float) -> dict:
    """ref -> result or the exception it raised, for the refs done within `timeout_s`; returns as soon as
    every ref is done or one has failed (its peers may then never finish)."""
    deadline = time.monotonic() + timeout_s
    pending, out = list(refs), {}
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            break
        try:
            out[done[0]] = ray.get(done[0])
        except ray.exceptions.RayError as e:
            out[done[0]] = e
            break
    return out


def _last_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__)[:200]
