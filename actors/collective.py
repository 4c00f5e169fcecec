"""The weight-sync process group, formed inside Ray actors beside their trainer worlds.

A trainer rank 0 (the sender) and every maker form a torch.distributed group of their own: a
`TCPStore` that the sender hosts on a free port, and a standalone `ProcessGroupGloo` (CPU) or
`ProcessGroupNCCL` (GPU) over it, so it never touches a trainer group's default world. Each member
marks `joined/<rank>` in the store before the group's rendezvous, so when a peer never turns up the
driver can read who is missing instead of waiting forever.
"""

from __future__ import annotations

import datetime
from typing import Optional

import torch
import torch.distributed as dist


class SyncGroup:
    def __init__(self, host: str, port: int, rank: int, size: int, backend: str, timeout_s: float):
        timeout = datetime.timedelta(seconds=timeout_s)
        self.rank, self.size, self.backend = rank, size, backend
        self.store = dist.TCPStore(host, port, is_master=rank == 0, timeout=timeout, wait_for_workers=False)
        self.store.set(f"joined/{rank}", "1")
        if backend == "nccl":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self.pg = dist.ProcessGroupNCCL(self.store, rank, size, options)
        else:
            self.pg = dist.ProcessGroupGloo(self.store, rank, size, timeout)
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

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
