"""Weight sync: where it starts (`publish`, after every update) and where it ends (the makers' models).

    sync = WeightSync(cfg, trainers, pool, info)
    stats = sync.publish(version)          # the trainers' weights of `version` on their way to every maker

The transports, chosen by `sync.transport`:

  object_store  trainer rank 0 of each group puts its weights once as numpy views; makers receive an
                opaque handle and load it between batches (one copy into the model), the newest only.
  collective    one torch.distributed group per synced role: {that group's rank 0, every maker},
                formed inside the actors with its own TCPStore (gloo on CPU, nccl on GPU, the same
                code). Rank 0 broadcasts bucket by bucket; makers receive on their `sync` thread into
                staging and swap in between batches. The group is re-formed at the next sync when
                makers join, leave or restart; a maker that joins or restarts catches up from the
                object store first. A group that does not form, or a broadcast that does not finish,
                within sync.timeout_s ends the run with one line naming the peer.
  ipc           sync mode, makers on the node of each trainer group's rank 0: a maker maps rank 0's tensors
                where they are (coati_ray/models/ipc.py: shared memory on CPU, CUDA IPC handles on GPU, the
                same code) and copies them into its model, between steps while the trainers wait. A maker on
                another node or device kind, a Gemini group (its export gathers on every rank) and a catch-up
                mid-step go through the object store.
  auto          ipc where it applies to every maker (sync mode, one node, one device kind, no Gemini), else
                collective when the group forms, else the object store (said once in the log).

A broadcast that breaks because a member failed (a maker died mid-sync) is not a hang: that version
goes through the object store and the group re-forms at the next sync, on either setting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import ray

from actors.collective import abandon, missing_members
from coati_ray.errors import WorkerLost

RETRY_S = 0.5  # how often a maker waiting for a consistent export asks the trainer groups again


@dataclass
class _Group:
    role: str
    members: dict          # maker index -> incarnation it joined as
    meeting: tuple         # (rendezvous, secret): where it formed
    buckets: list
    backend: str


class _CannotForm(RuntimeError):
    """The collective group did not form: `auto` uses the object store from now on, `collective` stops."""


class _Broke(RuntimeError):
    """A member failed during a broadcast (e.g. a maker died): this version goes through the object
    store and the group re-forms at the next sync."""


class WeightSync:
    def __init__(self, cfg, trainers, pool, info: Callable[[str], None]):
        self.cfg, self.trainers, self.pool, self.info = cfg, trainers, pool, info
        self.transport = cfg.sync.transport
        self.version = 0
        self.handle: Optional[dict] = None
        self.groups: dict[str, _Group] = {}
        self.uneven: dict = {}       # role -> steps its weights have seen, at the last probe
        self._next_probe = 0.0
        self.places: dict = {}       # (maker index, incarnation) -> {node, device, gpus}: where ipc reaches
        self.trainer_places: Optional[dict] = None  # role -> {node, gpus} of its rank 0
        self.ipc_bytes = 0           # what one maker mapped at this publish (0: none took the ipc path)
        self.ipc_refused = False
        pool.sync = self

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.trainers.ranks)

    def gathers(self, role: str) -> bool:
        """A strategy whose export is a collective of the whole trainer group (Gemini): never run mid-step."""
        strategy = getattr(getattr(self.cfg, f"{role}_trainer", None), "strategy", None)
        return getattr(strategy, "name", "").startswith("colossalai_gemini")

    # ---------------------------------------------------------------- the sync

    def publish(self, version: int) -> dict:
        """The trainers' weights of `version` to every maker: broadcast now, or put once for makers to load."""
        t = time.perf_counter()
        self.version, self.handle = version, None
        received, sent, casts = set(), 0, 0
        if self.cfg.sync.transport == "auto" and self.transport != "ipc" and self.ipc_reaches_every_maker():
            self.close()  # the makers now share the trainers' node (a scale-down left only those): no broadcast
            self.transport = "ipc"
            self.info("weight sync: every maker is on the trainers' node; mapping their tensors (ipc)")
        elif self.cfg.sync.transport == "auto" and self.transport == "ipc" and not self.ipc_reaches_every_maker():
            self.transport = "auto"  # a maker elsewhere: the collective (or the object store) again
        collective = self.transport in ("collective", "auto") and bool(self.pool.makers)
        if collective:
            try:
                received, sent, casts = self._broadcast(version)
                self.transport = "collective"
            except _CannotForm as e:
                self.close()
                if self.cfg.sync.transport == "collective":
                    raise WorkerLost(f"run error: {e}") from None
                self.info(f"{e}; using the object store from now on (sync.transport=auto)")
                self.transport, collective = "object_store", False
            except _Broke as e:
                self.close()
                self.info(f"weight sync: {e}; version {version} goes through the object store and the group "
                          "re-forms at the next sync")
                collective = False
        if not collective and self.transport != "ipc":
            sent = self.object_store_handle()["bytes"]
        self.ipc_bytes = 0
        self.pool.published(version, received)
        transport = self.transport
        if transport == "ipc":  # what one maker mapped, plus an object-store copy if some maker needed one
            stored = self.handle is not None and self.handle["version"] >= version
            sent = self.ipc_bytes + (self.handle["bytes"] if stored else 0)
            transport = "ipc" if self.ipc_bytes else "object_store"
        return {"export_seconds": time.perf_counter() - t, "bytes": sent, "transport": transport,
                "cast_tensors": casts}

    def handle_for(self, index: int, wait: bool = True) -> Optional[dict]:
        """What maker `index` loads the newest weights from: under ipc, between steps (`wait`), a blob of its
        own that maps the trainers' tensors when it shares their node and device kind; else the object store
        handle (object_store_handle)."""
        if self.transport == "ipc" and wait and not self.ipc_refused and self.ipc_reaches(index):
            parts = self._rank0("export_ipc")
            refused = [p["refused"] for p in parts.values() if "refused" in p]
            if refused:  # said once; auto tries the collective at the next sync, ipc keeps the object store
                self.ipc_refused = True
                if self.cfg.sync.transport == "auto":
                    self.transport = "auto"
                self.info(f"weight sync: ipc refused ({refused[0]}); "
                          + ("the collective or the object store from the next sync" if self.transport == "auto"
                             else "using the object store"))
                return self.object_store_handle(wait)
            versions = {p["version"] for p in parts.values()}
            if len(versions) == 1 and versions.pop() >= self.version:
                self.ipc_bytes = max(self.ipc_bytes, sum(p["bytes"] for p in parts.values()))
                return {"version": parts[self.roles[0]]["version"], "bytes": sum(p["bytes"] for p in parts.values()),
                        "roles": {role: {"ipc": p["ipc"]} for role, p in parts.items()}}
        return self.object_store_handle(wait)

    def ipc_applies(self) -> bool:
        """Sync mode and no group whose export gathers on every rank (Gemini)."""
        return self.cfg.ppo.mode == "sync" and not any(self.gathers(role) for role in self.roles)

    def ipc_reaches(self, index: int) -> bool:
        """Maker `index` runs on the node of every trainer group's rank 0, on the same kind of device (on GPU: the
        same GPUs, the only ones whose IPC handles it can open)."""
        if not self.ipc_applies() or index not in self.pool.makers:
            return False
        key = (index, self.pool.incarnation.get(index, 0))
        if key not in self.places:
            try:
                self.places[key] = ray.get(self.pool.makers[index].node.remote(), timeout=self.cfg.sync.timeout_s)
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                return False  # it died or hangs: the object store, and its recovery, deal with it
        if self.trainer_places is None:
            places = ray.get([self.trainers.ranks[role][0].__ray_call__.remote(_place_of) for role in self.roles])
            self.trainer_places = dict(zip(self.roles, places))
        place = self.places[key]
        for role, trainer in self.trainer_places.items():
            if place["node"] != trainer["node"]:
                return False
            if getattr(self.cfg, f"{role}_trainer").resources.num_gpus_per_rank > 0:  # CUDA IPC: that very GPU
                if place["device"] != "cuda" or not place["gpus"] or place["gpus"] != trainer["gpus"]:
                    return False
            elif place["device"] != "cpu":  # a CPU sender's shared memory opens anywhere, but stay like with like
                return False
        return True

    def ipc_reaches_every_maker(self) -> bool:
        return not self.ipc_refused and bool(self.pool.makers) and all(self.ipc_reaches(i) for i in self.pool.makers)

    def _rank0(self, method: str) -> dict:
        """Call `method` on rank 0 of every group (not a collective: never for a gathering strategy)."""
        roles = list(self.roles)
        out = self.trainers.get([getattr(self.trainers.ranks[role][0], method).remote() for role in roles])
        return dict(zip(roles, out))

    def object_store_handle(self, wait: bool = True) -> Optional[dict]:
        """The newest weights in the object store, put once per version. Under the collective it is made on
        demand for a maker that joined or restarted: the trainers export on their sync thread after the
        update in progress (so it may be a version newer than the last sync); a gathering strategy exported
        it at the sync already, so it never gathers mid-step.

        The export must be a consistent set: every trainer group's weights past the same steps. Mid-step the
        groups can differ for as long as one waits for experience (a batch remade after a node loss) that only
        the driver can hand out, and a rank mid-update holds its weights until the update ends, which may
        itself wait for that experience (its peer ranks do). So without `wait` this never blocks: it returns
        None while the groups differ or one is updating (asking them at most every RETRY_S, by a cheap probe,
        then an export that answers "busy" rather than wait) and the caller tries again later. With `wait`
        (between steps, when every group is idle) it retries up to sync.timeout_s."""
        if self.handle is not None and self.handle["version"] >= self.version:
            return self.handle
        if not wait and any(self.gathers(role) for role in self.roles):
            return None  # a gather is a collective of every rank: never mid-step (sync exported it already)
        deadline = time.monotonic() + self.cfg.sync.timeout_s
        while True:
            if wait or time.monotonic() >= self._next_probe:
                probe = self._each_role("steps_trained")
                self.uneven = {role: p["steps"] for role, p in probe.items()}
                idle = wait or not any(p["busy"] for p in probe.values())
                if idle and len(set(self.uneven.values())) == 1:
                    parts = self._each_role("export_weights", block=wait)
                    if not any(p.get("busy") for p in parts.values()):
                        self.uneven = {role: p["version"] for role, p in parts.items()}
                        if len(set(self.uneven.values())) == 1:  # none stepped between the probe and the export
                            self.handle = _handle(parts[self.roles[0]]["version"], parts)
                            return self.handle
                self._next_probe = time.monotonic() + RETRY_S
            if not wait:
                return None
            if time.monotonic() > deadline:
                raise WorkerLost(f"run error: weight sync: the trainer groups stayed at different steps "
                                 f"{self.uneven} for sync.timeout_s={self.cfg.sync.timeout_s:g}s; see the trainer "
                                 "actors' logs")
            time.sleep(RETRY_S)

    def close(self) -> None:
        """Leave the collective groups (best effort: members may be gone)."""
        for group in self.groups.values():
            handles = [self.trainers.ranks[group.role][0]] + [self.pool.makers[i] for i in group.members
                                                              if i in self.pool.makers]
            for h in handles:
                h.leave_sync.remote()  # fire and forget: a dead member needs nothing
        self.groups.clear()

    # ---------------------------------------------------------------- collective

    def _broadcast(self, version: int) -> tuple[set, int, int]:
        """(makers that received `version`, bytes sent, most tensors a maker cast) of one broadcast per role."""
        members = {i: self.pool.incarnation[i] for i in sorted(self.pool.makers)}
        if any(g.members != members for g in self.groups.values()) or set(self.groups) != set(self.roles):
            self.close()
            for role in self.roles:
                self.groups[role] = self._form(role, members)
        senders, receivers = {}, {}
        export = any(self.gathers(role) for role in self.roles)
        for role, group in self.groups.items():
            for rank, r in enumerate(self.trainers.ranks[role]):
                senders[r.send_weights.remote(group.buckets, export)] = (role, rank)
            for index in group.members:
                receivers[self.pool.makers[index].receive_weights.remote(role, group.buckets, version)] = (role, index)
        results = _wait_all({**senders, **receivers}, self.cfg.sync.timeout_s)
        for ref, out in results.items():  # a failure first: its peers' unfinished calls follow from it
            if not isinstance(out, Exception):
                continue
            if ref in senders:
                role, rank = senders[ref]
                if isinstance(out, ray.exceptions.RayActorError):
                    raise WorkerLost(self.trainers.lost_message(out, f"{role}-trainer-{rank}"))
                raise _Broke(f"the broadcast of version {version} from {role}-trainer-{rank} broke ({_last_line(out)})")
            role, index = receivers[ref]
            raise _Broke(f"maker-{index} failed receiving version {version} of the {role} ({_last_line(out)})")
        timeout = f"within sync.timeout_s={self.cfg.sync.timeout_s:g}s"
        for ref, (role, rank) in senders.items():  # then what hangs: senders before the receivers they feed
            if ref not in results:
                raise WorkerLost(f"run error: weight sync: {role}-trainer-{rank} did not finish broadcasting version "
                                 f"{version} {timeout}; see its log, or use sync.transport=object_store")
        for ref, (role, index) in receivers.items():
            if ref not in results:
                raise WorkerLost(f"run error: weight sync: maker-{index} did not receive version {version} of the "
                                 f"{role} {timeout}; see its log, or use sync.transport=object_store")
        casts: dict[int, int] = {}
        for ref, (role, index) in receivers.items():
            casts[index] = casts.get(index, 0) + results[ref]["cast_tensors"]
        sent, exports = 0, {}
        for ref, (role, rank) in senders.items():
            out = results[ref] or {}
            sent += out.get("bytes", 0)
            if "export" in out:
                exports[role] = out["export"]
        if exports and len(exports) == len(self.roles):
            self.handle = _handle(version, exports)
        return set(members), sent, max(casts.values(), default=0)

    def _form(self, role: str, members: dict) -> _Group:
        """Every maker of `members` and the role's rank 0 join one group; a timeout names who did not."""
        from actors.rendezvous import new_secret

        ranks = self.trainers.ranks[role]
        meeting = (self.trainers.rendezvous, new_secret())  # a fresh secret per formation: old members cannot meet
        bucket_bytes = int(self.cfg.sync.bucket_mb * 2**20)
        plans = self.trainers.get([r.sync_plan.remote(bucket_bytes) for r in ranks])  # all ranks: Gemini gathers
        buckets, size = plans[0], 1 + len(members)
        backend = self._backend()
        timeout = self.cfg.sync.timeout_s
        # Members give up a little after the driver, which reads who never marked itself joined and then tells
        # the rest to leave.
        member_timeout = timeout + 10
        refs = {ranks[0].join_sync.remote(meeting, 0, size, backend, member_timeout): f"{role}-trainer-0"}
        for rank, index in enumerate(members, start=1):
            refs[self.pool.makers[index].join_sync.remote(role, buckets, meeting, rank, size, backend,
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
                raise _Broke(f"{refs[ref]} died while joining the {role} group ({_last_line(out)})")
            # one that failed at once (e.g. a model that does not match) says why
            raise _CannotForm(f"weight sync: {refs[ref]} could not join the {role} group ({_last_line(out)})")
        if len(results) < len(refs):
            names = list(refs.values())
            if missing is None:
                who = "the group's rendezvous (it did not answer)"
            elif missing:
                who = ", ".join(names[r] for r in missing)
            else:
                who = "no one is missing, but the rendezvous of " + ", ".join(
                    refs[r] for r in refs if r not in results) + " did not finish"
            raise _CannotForm(f"weight sync: {who} did not join the {role} group ({backend}) within "
                              f"sync.timeout_s={timeout:g}s; check that every node can reach the others on the "
                              "interface Ray uses, or use sync.transport=object_store")
        self.info(f"weight sync: {role} group formed ({backend}, {size} members, {len(buckets)} bucket(s))")
        return _Group(role, dict(members), meeting, buckets, backend)

    def _backend(self) -> str:
        """nccl only when every member owns whole GPUs: NCCL refuses two ranks on one device, which is what
        fractional num_gpus means; gloo otherwise (CPU tensors)."""
        b = self.cfg.sync.backend
        if b != "auto":
            return b
        senders = all(getattr(self.cfg, f"{r}_trainer").resources.num_gpus_per_rank >= 1 for r in self.roles)
        return "nccl" if senders and self.cfg.maker.num_gpus >= 1 else "gloo"

    # ---------------------------------------------------------------- helpers

    def _each_role(self, method: str, **kwargs) -> dict:
        """Call `method` on every rank of every group (Gemini gathers on all); rank 0's answer per role."""
        refs = {role: [getattr(r, method).remote(**kwargs) for r in ranks]
                for role, ranks in self.trainers.ranks.items()}
        out = self.trainers.get([ref for role_refs in refs.values() for ref in role_refs])
        result, i = {}, 0
        for role, role_refs in refs.items():
            result[role] = out[i]
            i += len(role_refs)
        return result


def _place_of(actor) -> dict:
    """Run inside an actor (through __ray_call__): its node and GPUs."""
    return {"node": ray.get_runtime_context().get_node_id(), "gpus": sorted(str(g) for g in ray.get_gpu_ids())}


def _handle(version: int, parts: dict) -> dict:
    return {"version": version, "roles": {role: {"ref": p["ref"], "dtypes": p["dtypes"]} for role, p in parts.items()},
            "bytes": sum(p["bytes"] for p in parts.values())}


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
