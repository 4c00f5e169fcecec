"""The weight-broadcast process group, formed inside Ray actors beside their trainer worlds.

A trainer rank 0 (the sender) and every maker form a torch.distributed group of their own: a standalone
`ProcessGroupGloo` (CPU) or `ProcessGroupNCCL` (GPU) built on the driver's rendezvous actor
(actors/rendezvous.py: no listening store, keys under the group's secret, reached only through Ray), so it
never touches a trainer group's default world; gloo's connections listen on the interface Ray uses on each
member's node. Each member marks `joined/<rank>` in the store before the group's rendezvous, so when a peer
never turns up the driver can read who is missing instead of waiting forever, and members wait for each
other by polling those marks, so a driver that gives up on a group (a member died while joining) sets
`abandoned` and every member still waiting leaves at once instead of blocking its actor for the whole timeout.

A meeting place is (rendezvous handle, secret): what the driver hands every member of one formation.
"""

from __future__ import annotations

import datetime
import time
from typing import Optional

import torch
import torch.distributed as dist


ABANDONED = "abandoned"


class GroupAbandoned(RuntimeError):
    """The driver gave up on forming this group; a member that was waiting for the others leaves."""


class WeightBroadcastGroup:
    def __init__(self, meeting: tuple, rank: int, size: int, backend: str, timeout_s: float):
        from actors.rendezvous import RendezvousStore, node_bind_ip

        timeout = datetime.timedelta(seconds=timeout_s)
        self.rank, self.size, self.backend = rank, size, backend
        rendezvous, secret = meeting
        self.store = RendezvousStore(rendezvous, secret, timeout_s)
        self.store.set(f"joined/{rank}", "1")
        self._wait_for_members(timeout_s)
        if backend == "nccl":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self.pg = dist.ProcessGroupNCCL(self.store, rank, size, options)
        else:
            options = dist.ProcessGroupGloo._Options()
            options._timeout = timeout
            options._devices = [dist.ProcessGroupGloo.create_device(hostname=node_bind_ip())]
            self.pg = dist.ProcessGroupGloo(self.store, rank, size, options)
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def _wait_for_members(self, timeout_s: float) -> None:
        """Until every member has marked itself joined (the group's own rendezvous then completes at once), or
        the driver abandoned the group, or `timeout_s` passed."""
        deadline, marks = time.monotonic() + timeout_s, [f"joined/{r}" for r in range(self.size)]
        while not self.store.check(marks):
            if self.store.check([ABANDONED]):
                raise GroupAbandoned("the driver abandoned this weight-broadcast group: a member did not join")
            if time.monotonic() > deadline:
                raise TimeoutError(f"weight-broadcast group: not every member joined within {timeout_s:g}s")
            time.sleep(0.05)

    def broadcast(self, tensor: torch.Tensor, root: int = 0) -> None:
        options = dist.BroadcastOptions()
        options.rootRank = root
        self.pg.broadcast([tensor], options).wait()

    def close(self) -> None:
        self.pg = None
        self.store = None


def missing_members(meeting: tuple, size: int) -> Optional[list[int]]:
    """Ranks that never marked `joined/<rank>` at the meeting place, or None when its rendezvous is gone."""
    import ray

    rendezvous, secret = meeting
    try:
        return [r for r in range(size) if not ray.get(rendezvous.check.remote([f"{secret}/joined/{r}"]), timeout=10)]
    except (ray.exceptions.RayError, TimeoutError):
        return None


def abandon(meeting: tuple) -> None:
    """Tell every member still waiting at the meeting place to leave (best effort)."""
    import ray

    rendezvous, secret = meeting
    try:
        ray.get(rendezvous.set.remote(f"{secret}/{ABANDONED}", b"1"), timeout=10)
    except (ray.exceptions.RayError, TimeoutError):
        pass
