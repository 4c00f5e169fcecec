"""object_store: each trainer group's rank 0 puts its weights once per version as numpy views; a maker loads the
handle between batches (one copy into its model). Every other transport falls back to it: a maker that joins or
restarts, a catch-up mid-step, a maker ipc cannot reach, a broadcast that broke."""

from __future__ import annotations

import time
from typing import Optional

import ray

from actors.transports import Published, WeightTransport, register_reader, register_transport
from coati_ray.errors import WorkerLost

RETRY_S = 0.5  # how often a maker waiting for a consistent export asks the trainer groups again


@register_transport("object_store")
class ObjectStore(WeightTransport):
    def __init__(self, sync):
        super().__init__(sync)
        self.handle: Optional[dict] = None
        self.uneven: dict = {}       # role -> steps its weights have seen, at the last probe
        self._next_probe = 0.0

    def publish(self, version: int) -> Published:
        return Published(bytes=self.handle_for(-1)["bytes"])

    def handle_for(self, index: int, wait: bool = True) -> Optional[dict]:
        """The newest weights in the object store, put once per version (for every maker alike). Under the
        collective it is made on demand for a maker that joined or restarted: the trainers export on their sync
        thread after the update in progress (so it may be a version newer than the last sync); a gathering
        strategy exported it at the sync already, so it never gathers mid-step.

        The export must be a consistent set: every trainer group's weights past the same steps. Mid-step the
        groups can differ for as long as one waits for experience (a batch remade after a node loss) that only
        the driver can hand out, and a rank mid-update holds its weights until the update ends, which may
        itself wait for that experience (its peer ranks do). So without `wait` this never blocks: it returns
        None while the groups differ or one is updating (asking them at most every RETRY_S, by a cheap probe,
        then an export that answers "busy" rather than wait) and the caller tries again later. With `wait`
        (between steps, when every group is idle) it retries up to weight_sync.timeout_s."""
        sync = self.sync
        if self.handle is not None and self.handle["version"] >= sync.version:
            return self.handle
        if not wait and any(sync.gathers(role) for role in sync.roles):
            return None  # a gather is a collective of every rank: never mid-step (sync exported it already)
        deadline = time.monotonic() + sync.cfg.weight_sync.timeout_s
        while True:
            if wait or time.monotonic() >= self._next_probe:
                probe = sync.each_role("steps_trained")
                self.uneven = {role: p["steps"] for role, p in probe.items()}
                idle = wait or not any(p["busy"] for p in probe.values())
                if idle and len(set(self.uneven.values())) == 1:
                    parts = sync.each_role("export_weights", block=wait)
                    if not any(p.get("busy") for p in parts.values()):
                        self.uneven = {role: p["version"] for role, p in parts.items()}
                        if len(set(self.uneven.values())) == 1:  # none stepped between the probe and the export
                            self.handle = store_handle(parts[sync.roles[0]]["version"], parts)
                            return self.handle
                self._next_probe = time.monotonic() + RETRY_S
            if not wait:
                return None
            if time.monotonic() > deadline:
                raise WorkerLost(f"run error: weight sync: the trainer groups stayed at different steps "
                                 f"{self.uneven} for weight_sync.timeout_s={sync.cfg.weight_sync.timeout_s:g}s; see the trainer "
                                 "actors' logs")
            time.sleep(RETRY_S)


def store_handle(version: int, parts: dict) -> dict:
    """A handle of every role's export ({ref, dtypes, bytes} from each group's rank 0)."""
    return {"version": version, "bytes": sum(p["bytes"] for p in parts.values()),
            "roles": {role: {"kind": "object_store", "ref": p["ref"], "dtypes": p["dtypes"]}
                      for role, p in parts.items()}}


@register_reader("object_store")
def read(part: dict) -> dict:
    """In the maker: the put numpy arrays, as tensors (views where the dtype allows)."""
    from coati_ray.models.weight_layout import from_numpy

    return from_numpy(ray.get(part["ref"][0]), part["dtypes"])
