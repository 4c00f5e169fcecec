"""The weight-sync process group, formed inside Ray actors beside their trainer worlds.

A trainer rank 0 (the sender) and every maker form a torch.distributed group of their own: a
`TCPStore` that the sender hosts on a free port, and a standalone `ProcessGroupGloo` (CPU) or
`ProcessGroupNCCL` (GPU) over it, so it never touches a trainer group's default world. Each member
marks `joined/<rank>` in the store before the group's rendezvous, so when a peer never turns up the
driver can read who is missing instead of waiting forever, and members wait for each other by polling those
marks, so a driver that gives up on a group (a member died while joining) sets `abandoned` and every member
still waiting leaves at once instead of blocking its actor for the whole timeout.
"""

from __future__ import annotations

import datetime
import time
from typing import Optional

import torch
import torch.distributed as dist


ABANDONED = "abandoned"
_ABANDONED_STORES: list = []  # the last abandoned group's store, hosted on until the next one is abandoned


class GroupAbandoned(RuntimeError):
    """The driver gave up on forming this group; a member that was waiting for the others leaves."""


class SyncGroup:
    def __init__(self, host: str, port: int, rank: int, size: int, backend: str, timeout_s: float):
        timeout = datetime.timedelta(seconds=timeout_s)
        self.rank, self.size, self.backend = rank, size, backend
        self.store = dist.TCPStore(host, port, is_master=rank == 0, timeout=timeout, wait_for_workers=False)
        self.store.set(f"joined/{rank}", "1")
        self._wait_for_members(timeout_s)
        if backend == "nccl":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self.pg = dist.ProcessGroupNCCL(self.store, rank, size, options)
        else:
            self.pg = dist.ProcessGroupGloo(self.store, rank, size, timeout)
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def _wait_for_members(self, timeout_s: float) -> None:
        """Until every member has marked itself joined (the group's own rendezvous then completes at once), or
        the driver abandoned the group, or `timeout_s` passed."""
        deadline, marks = time.monotonic() + timeout_s, [f"joined/{r}" for r in range(self.size)]
        while not self.store.check(marks):
            if self.store.check([ABANDONED]):
                if self.rank == 0:
                    # Keep hosting the store a while: a member whose join was still queued connects later
                    # and must find the mark too, not a dead port it would retry until its timeout.
                    _ABANDONED_STORES[:] = [self.store]
                raise GroupAbandoned("the driver abandoned this weight-sync group: a member did not join")
            if time.monotonic() > deadline:
                raise TimeoutError(f"weight-sync group: not every member joined within {timeout_s:g}s")
            time.sleep(0.05)

    def broadcast(self, tensor: torch.Tensor, root: int = 0) -> None:
        options = dist.BroadcastOptions()
        options.rootRank = root
        self.pg.broadcast([tensor], options).wait()

    def close(self) -> None:
        self.pg = None
        self.store = None


def missing_members(host: str, port: int, size: int, timeout_s: float = 5.0) -> Optional[list[int]]:
    """Ranks that never marked `joined/<rank>` in the store at host:port, or None when the store itself
    (hosted by rank 0) cannot be reached."""
    try:
        store = dist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=timeout_s),
                              wait_for_workers=False)
    except (RuntimeError, OSError, dist.DistStoreError):
        return None
    return [r for r in range(size) if not store.check([f"joined/{r}"])]


def abandon(host: str, port: int, timeout_s: float = 5.0) -> None:
    """Tell every member still waiting in the rendezvous of the group at host:port to leave (best effort:
    the store's host may be gone)."""
    try:
        store = dist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=timeout_s),
                              wait_for_workers=False)
        store.set(ABANDONED, "1")
    except (RuntimeError, OSError, dist.DistStoreError):
        pass
