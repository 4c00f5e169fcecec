"""Both ends of a weight sync, held inside the actors: a trainer rank 0 sends, every maker receives.

Sender (`WeightSender`, in a PPO trainer rank): the tensors a maker needs (every weight, or the LoRA
adapters only), read live from the model (Gemini gathers them on rank 0 first). Over the object
store they are put once as numpy views; over the collective they go one bucket at a time, so the
sender holds one bucket beyond its model; over ipc (a maker on the same node, between steps) the
maker maps them where they are (shared memory on CPU, CUDA IPC on GPU) and copies them into its model.

Receiver (`WeightReceiver`, in a maker): an object-store handle is loaded between batches (one copy
into the model); broadcast buckets are received on the maker's `weights` thread while it may be
generating, one bucket at a time into a staging copy on the host (device memory: one bucket), and
swapped into the models between batches (`swap`), never during a generation. Keys and shapes are
strict; floating tensors are cast to the maker's dtype and counted.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

import ray
import torch

from actors.broadcast_group import WeightBroadcastGroup
from coati_ray.models.weight_layout import DTYPES, flatten, plan_buckets, to_numpy, unflatten


class WeightSender:
    def __init__(self, strategy, model, lora_only: bool, gathers: bool):
        self.strategy, self.model, self.lora_only, self.gathers = strategy, model, lora_only, gathers
        self.group: Optional[WeightBroadcastGroup] = None
        self.shared: set[str] = set()  # /dev/shm files ipc moved weights into (unlinked by release_shared)

    def state(self) -> dict:
        """name -> tensor of what makers load, without a copy where the strategy allows (rank 0; {} elsewhere,
        but every rank must call it under Gemini, whose gather is a collective)."""
        from coati_ray.models.weights import is_lora_synced, lora_state

        if self.gathers:
            state = self.strategy.full_state_dict(self.model)
            return {k: v for k, v in state.items() if not self.lora_only or is_lora_synced(k)}
        if not self.strategy.is_rank0:
            return {}
        module = self.strategy.unwrap(self.model)
        return lora_state(module) if self.lora_only else module.state_dict()

    def export(self) -> Optional[dict]:
        """Object store: every tensor as a numpy view, put once. Returns {ref: [ObjectRef], dtypes} on rank 0."""
        state = self.state()
        if not self.strategy.is_rank0:
            return None
        arrays, dtypes = to_numpy(state)
        return {"ref": [ray.put(arrays)], "dtypes": dtypes, "bytes": sum(a.nbytes for a in arrays.values())}

    def export_ipc(self) -> Optional[dict]:
        """Same node, between steps: a blob one maker opens to map these tensors (coati_ray/models/shared_tensors.py) instead
        of a copy through the object store; rank 0 only. One blob per receiver (each holds one reference)."""
        import shutil

        from coati_ray.models.shared_tensors import share, state_nbytes

        state = self.state()
        if not self.strategy.is_rank0:
            return None
        # On CPU the tensors move into shared memory (once): refuse rather than fill a small /dev/shm (a
        # container's 64 MB default), and the maker loads through the object store instead.
        unshared = sum(t.numel() * t.element_size() for t in state.values()
                       if t.device.type == "cpu" and not t.is_shared())
        free = shutil.disk_usage("/dev/shm").free - _object_store_bytes() if unshared else 0
        if unshared and unshared > 0.8 * free:
            return {"refused": f"/dev/shm has {free / 2**20:.0f} MiB free for {unshared / 2**20:.0f} MiB of weights"}
        blob = share(state)
        from coati_ray.models.shared_tensors import shared_files

        self.shared |= shared_files(state)
        return {"ipc": blob, "bytes": state_nbytes(state)}

    def release_shared(self) -> int:
        """Unlink the shared-memory files ipc made (torch leaves them behind, even when this process exits);
        the weights stay mapped here until it does. Bytes freed."""
        from coati_ray.models.shared_tensors import unlink_shared

        freed, self.shared = unlink_shared(self.shared), set()
        return freed

    def plan(self, bucket_bytes: int) -> list:
        """The bucket layout of this sender's state (rank 0): what receivers allocate and expect."""
        return plan_buckets(self.state(), bucket_bytes)

    def join(self, meeting: tuple, rank: int, size: int, backend: str, timeout_s: float) -> None:
        self.leave()
        self.group = WeightBroadcastGroup(meeting, rank, size, backend, timeout_s)

    def send(self, buckets: list, export: bool = False) -> dict:
        """Broadcast `buckets` of the current weights from rank 0 of the sync group, one flat bucket at a time
        (built on the group's device: one bucket of memory). With `export`, also put them in the object
        store, from the same state: a strategy that gathers (Gemini) must not gather again mid-step for a
        maker that catches up later."""
        state = self.state()
        if not self.strategy.is_rank0:
            return {}
        t, sent = time.perf_counter(), 0
        for bucket in buckets:
            flat = flatten(state, bucket, device=self.group.device)
            self.group.broadcast(flat, root=0)
            sent += flat.numel() * flat.element_size()
            del flat
        out = {"seconds": time.perf_counter() - t, "bytes": sent}
        if export:
            arrays, dtypes = to_numpy(state)
            out["export"] = {"ref": [ray.put(arrays)], "dtypes": dtypes, "bytes": sum(a.nbytes for a in arrays.values())}
        return out

    def leave(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None


def _object_store_bytes() -> int:
    """This node's Ray object store capacity: it usually lives in /dev/shm, sparse, so the free space counts room
    the store will take as it fills."""
    if not ray.is_initialized():  # outside Ray (a test, a tool): asking would start one
        return 0
    node = ray.get_runtime_context().get_node_id()
    return int(next((n["Resources"].get("object_store_memory", 0) for n in ray.nodes() if n["NodeID"] == node), 0))


class WeightReceiver:
    def __init__(self, modules: dict, lora_only: dict, metrics=None):
        """`modules`: role -> the maker's model that role's sender updates ('actor', 'critic')."""
        self.modules, self.lora_only, self.metrics = modules, lora_only, metrics
        self.version = 0                               # what the models hold now
        self.groups: dict[str, WeightBroadcastGroup] = {}
        self.staging: dict[str, tuple] = {}            # role -> (buckets, one flat host buffer per bucket)
        self.staged: dict[str, int] = {}               # role -> version fully received into staging
        self.changed = threading.Condition()

    # ---------------------------------------------------------------- object store (between batches)

    def load(self, handle: dict) -> dict:
        """Load a handle {version, roles: {role: part}} between batches: each part read by the reader of its kind
        (actors/transports: the object store's arrays, ipc's mapped tensors, ...), one copy into each model."""
        from actors.transports import read_part
        from coati_ray.models.weights import load_weights

        t, moved, casts, kinds = time.perf_counter(), 0, 0, set()
        for role, part in handle["roles"].items():
            state = read_part(part)
            casts += load_weights(self.modules[role], state, self.lora_only[role])
            moved += sum(v.numel() * v.element_size() for v in state.values())
            kinds.add(part.get("kind", "object_store"))
            del state  # unmap (ipc) before the sender may change them
        with self.changed:
            self.version = handle["version"]
            self.changed.notify_all()
        return self._report(time.perf_counter() - t, moved, casts, "+".join(sorted(kinds)) or "object_store")

    # ---------------------------------------------------------------- collective (on the weights thread)

    def join(self, role: str, buckets: list, meeting: tuple, rank: int, size: int, backend: str,
             timeout_s: float) -> None:
        """Check the sender's bucket layout against this maker's model (strict names and shapes), then join."""
        from coati_ray.models.weights import check_compatible

        module = self.modules[role]
        layout = {name: torch.empty(shape, dtype=DTYPES[b.dtype], device="meta")
                  for b in buckets for name, shape in b.shapes.items()}
        check_compatible(module, layout, self.lora_only[role])
        self.leave(role)
        self.groups[role] = WeightBroadcastGroup(meeting, rank, size, backend, timeout_s)

    def leave(self, role: Optional[str] = None) -> None:
        for r in [role] if role else list(self.groups):
            group = self.groups.pop(r, None)
            if group is not None:
                group.close()
        with self.changed:  # a batch waiting for a broadcast from these groups stops waiting (swap)
            self.changed.notify_all()

    @torch.no_grad()
    def receive(self, role: str, buckets: list, version: int) -> dict:
        """Receive one sync of `role` into staging in host memory, bucket by bucket: over gloo straight into
        the staging buffers (no copy), over NCCL through one device bucket. Staging is what lets the maker
        go on generating meanwhile; `swap` copies it into the models between batches."""
        group = self.groups[role]
        t = time.perf_counter()
        with self.changed:
            self.staged.pop(role, None)  # a swap must not take a half-received state
        staging = self.staging.get(role)
        if staging is None or [b.numel for b in staging[0]] != [b.numel for b in buckets]:
            staging = self.staging[role] = (buckets, [torch.empty(b.numel, dtype=DTYPES[b.dtype]) for b in buckets])
        device_buffer = None
        for bucket, flat in zip(*staging):
            if group.device.type == "cpu":
                group.broadcast(flat, root=0)
            else:
                if device_buffer is None or device_buffer.numel() < bucket.numel or device_buffer.dtype != flat.dtype:
                    device_buffer = torch.empty(max(b.numel for b in buckets), dtype=flat.dtype, device=group.device)
                view = device_buffer[:bucket.numel]
                group.broadcast(view, root=0)
                flat.copy_(view)
        with self.changed:
            self.staged[role] = version
            self.changed.notify_all()
        return {"seconds": time.perf_counter() - t, "bytes": sum(b.nbytes for b in buckets), "role": role,
                "cast_tensors": self._casts(role, buckets)}

    def _casts(self, role: str, buckets: list) -> int:
        """How many tensors a swap of these buckets casts into the model's dtypes."""
        own = self._own(role)
        return len({p.name for b in buckets for p in b.pieces if own[p.name].dtype != DTYPES[b.dtype]})

    def _own(self, role: str) -> dict:
        from coati_ray.models.weights import lora_state

        module = self.modules[role]
        return lora_state(module) if self.lora_only[role] else module.state_dict()

    # ---------------------------------------------------------------- between batches

    @torch.no_grad()
    def swap(self, expected: Optional[int] = None, timeout_s: float = 0.0) -> Optional[dict]:
        """Between batches: copy fully staged weights into the models. With `expected` (the version a batch
        was promised), the models keep a version >= `expected` they already hold, so a broadcast of a newer
        version that lands while older batches are queued waits for them; a version still arriving is
        waited for up to `timeout_s`. Returns the report of a swap, else None."""
        with self.changed:
            if expected is not None and self.version >= expected:
                return None
            # Wait only when a broadcast can still bring it: a member of every role's group (a restarted
            # maker has joined none, and must be told it is behind at once).
            if expected is not None and set(self.groups) >= set(self.modules):
                self.changed.wait_for(lambda: (self._staged_version() or -1) >= expected or
                                      not set(self.groups) >= set(self.modules), timeout=timeout_s)
            version = self._staged_version()
            if version is None or version <= self.version:
                return None
            t, moved, casts = time.perf_counter(), 0, 0
            for role in self.modules:
                buckets, flats = self.staging[role]
                own = self._own(role)
                for bucket, flat in zip(buckets, flats):
                    for piece, view in unflatten(flat, bucket):
                        own[piece.name].view(-1)[piece.start:piece.start + piece.numel].copy_(view)
                    moved += bucket.nbytes
                casts += self._casts(role, buckets)
            self.version = version
            return self._report(time.perf_counter() - t, moved, casts, "collective")

    def rewind(self) -> None:
        """The trainers went back to a checkpoint (a trainer restart that keeps the makers): the models' version
        and anything staged no longer count, so the next load or swap is taken whatever its version; the
        broadcast groups of the old trainer ranks are left."""
        self.leave()
        with self.changed:
            self.version = -1
            self.staged.clear()
            self.changed.notify_all()

    def _staged_version(self) -> Optional[int]:
        """The version every role's staging holds, when they hold the same one: a swap takes a consistent set
        (the actor of version 6 never goes in beside the critic of version 5 under either label)."""
        versions = {self.staged.get(role) for role in self.modules}
        return versions.pop() if len(versions) == 1 and None not in versions else None

    def _report(self, seconds: float, moved: int, casts: int, transport: str) -> dict:
        if self.metrics is not None:
            self.metrics.set("weight_sync_seconds", seconds)
            self.metrics.set("weight_sync_bytes", moved)
        return {"seconds": seconds, "bytes": moved, "version": self.version, "cast_tensors": casts,
                "transport": transport}
