"""ipc (sync mode): a maker on the node of every trainer group's rank 0 maps rank 0's tensors where they are
(coati_ray/models/shared_tensors.py: shared memory on CPU, CUDA IPC handles on GPU, the same code) and copies them into its
model, between steps while the trainers wait. Each maker gets a blob of its own (each holds one reference). A
maker on another node or device kind, a Gemini group (its export gathers on every rank) and a catch-up mid-step
go through the object store; a /dev/shm too small for the weights refuses it (TransportDown)."""

from __future__ import annotations

from typing import Optional

import ray

from actors.transports import Published, TransportDown, WeightTransport, register_reader, register_transport


@register_transport("ipc")
class Ipc(WeightTransport):
    lazy = True

    def __init__(self, sync):
        super().__init__(sync)
        self.places: dict = {}       # (maker index, incarnation) -> {node, device, gpus}
        self.trainer_places: Optional[dict] = None  # role -> {node, gpus} of its rank 0
        self.refused = False

    def publish(self, version: int) -> Published:
        self.mapped = 0  # makers map as they load (handle_for)
        return Published()

    def handle_for(self, index: int, wait: bool = True) -> Optional[dict]:
        """Between steps (`wait`), a blob of maker `index`'s own when it shares rank 0's node and device kind."""
        if not wait or self.refused or not self.reaches(index):
            return None
        parts = self.sync.rank0("export_ipc")
        refused = [p["refused"] for p in parts.values() if "refused" in p]
        if refused:
            self.refused = True
            raise TransportDown(f"weight sync: ipc refused ({refused[0]})", fatal=False)
        versions = {p["version"] for p in parts.values()}
        if len(versions) != 1 or versions.pop() < self.sync.version:
            return None
        size = sum(p["bytes"] for p in parts.values())
        self.mapped = max(self.mapped, size)
        return {"version": parts[self.sync.roles[0]]["version"], "bytes": size,
                "roles": {role: {"kind": "ipc", "ipc": p["ipc"]} for role, p in parts.items()}}

    def applies(self) -> bool:
        """Sync mode and no group whose export gathers on every rank (Gemini)."""
        sync = self.sync
        return sync.cfg.algorithm.mode == "sync" and not any(sync.gathers(role) for role in sync.roles)

    def reaches(self, index: int) -> bool:
        """Maker `index` runs on the node of every trainer group's rank 0, on the same kind of device (on GPU: the
        same GPUs, the only ones whose IPC handles it can open)."""
        sync = self.sync
        if not self.applies() or index not in sync.pool.makers:
            return False
        key = (index, sync.pool.incarnation.get(index, 0))
        if key not in self.places:
            try:
                self.places[key] = ray.get(sync.pool.makers[index].node.remote(), timeout=sync.cfg.weight_sync.timeout_s)
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                return False  # it died or hangs: the object store, and its recovery, deal with it
        if self.trainer_places is None:
            places = ray.get([sync.trainers.ranks[role][0].__ray_call__.remote(_place_of) for role in sync.roles])
            self.trainer_places = dict(zip(sync.roles, places))
        place = self.places[key]
        for role, trainer in self.trainer_places.items():
            if place["node"] != trainer["node"]:
                return False
            if getattr(sync.cfg, f"{role}_trainer").resources.num_gpus_per_rank > 0:  # CUDA IPC: that very GPU
                if place["device"] != "cuda" or not place["gpus"] or place["gpus"] != trainer["gpus"]:
                    return False
            elif place["device"] != "cpu":  # a CPU sender's shared memory opens anywhere, but stay like with like
                return False
        return True

    def reaches_every_maker(self) -> bool:
        makers = self.sync.pool.makers
        return not self.refused and bool(makers) and all(self.reaches(i) for i in makers)


def _place_of(worker) -> dict:
    """Run inside an actor (through __ray_call__): its node and GPUs."""
    return {"node": ray.get_runtime_context().get_node_id(), "gpus": sorted(str(g) for g in ray.get_gpu_ids())}


@register_reader("ipc")
def read(part: dict) -> dict:
    """In the maker: the sender's tensors, mapped (no copy until the model's own)."""
    from coati_ray.models.shared_tensors import open_shared

    return open_shared(part["ipc"])
