"""A trainer group: N Ray actors forming their own torch.distributed world.

Rank 0 reports its node IP and a free port; every rank then joins that address. The driver's
address is never used, so a group works wherever Ray places it. Actors are named
`<name>-<rank>` in the `coati` namespace so the dashboard reads clearly, and sit in one
placement group that is removed (with the actors) however the run ends.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Callable, Optional

import ray
from ray.util.placement_group import remove_placement_group


@ray.remote
class RankWorker:
    """One rank: holds nothing but a torch thread setting; runs whatever rank function it is given."""

    def __init__(self, torch_threads: Optional[int] = None, cpu_cores: Optional[list] = None, nice: int = 0):
        import torch

        from coati_ray.utils.cpu import place_threads

        place_threads(cpu_cores, nice, "resources")
        if torch_threads:
            torch.set_num_threads(torch_threads)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def run(self, fn: Callable, *args, rendezvous=None, secret: str = "", **kwargs) -> Any:
        """fn(*args, **kwargs), with `store=` the group's rendezvous (a RendezvousStore) when one is given; the
        rank's gloo connections listen on the interface Ray uses on this node."""
        if rendezvous is not None:
            from actors.rendezvous import RendezvousStore, bind_gloo_to, node_bind_ip

            bind_gloo_to(node_bind_ip())
            kwargs["store"] = RendezvousStore(rendezvous, secret)
        return fn(*args, **kwargs)


class TrainerGroup:
    """Creates the actors and placement group.

    `run(fn, ...)` calls fn(..., rank=, world_size=, store=) on every rank, `store` the group's rendezvous
    (actors/rendezvous.py: no port is opened for it).
    """

    def __init__(self, name: str, num_ranks: int, num_cpus_per_rank: float = 1.0, num_gpus_per_rank: float = 0.0,
                 torch_threads: Optional[int] = None, pg_timeout_s: float = 60.0, cpu_cores: Optional[list] = None,
                 nice: int = 0):
        from actors.placement import place_ranks

        self.name, self.num_ranks = name, num_ranks
        threads = torch_threads or max(1, int(num_cpus_per_rank))

        def unplaceable(bundle):
            return RuntimeError(f"cluster cannot host {num_ranks} x {bundle} for '{name}' within {pg_timeout_s:.0f}s; "
                                f"cluster has {ray.cluster_resources()}")

        self.pg, self.workers = place_ranks(RankWorker, name, num_ranks, num_cpus_per_rank, num_gpus_per_rank,
                                            pg_timeout_s, unplaceable, lambda rank: (threads, cpu_cores, nice))

    def run(self, fn: Callable, *args, **kwargs) -> list:
        from actors.rendezvous import new_rendezvous, new_secret

        rendezvous, secret = new_rendezvous(), new_secret()
        try:
            refs = [w.run.remote(fn, *args, rank=rank, world_size=self.num_ranks, rendezvous=rendezvous, secret=secret,
                                 **kwargs) for rank, w in enumerate(self.workers)]
            return get_or_fail_fast(refs)
        finally:
            ray.kill(rendezvous)

    def check_shared_output(self, output_dir: str) -> None:
        """Every rank's node sees `output_dir` (see actors.cluster.check_shared_output)."""
        from actors.cluster import check_shared_output

        check_shared_output({f"{self.name}-{rank}": w for rank, w in enumerate(self.workers)}, output_dir)

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w, no_restart=True)
        remove_placement_group(self.pg)

    def __enter__(self) -> "TrainerGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def get_or_fail_fast(refs: list) -> list:
    """ray.get on every ref, but raise as soon as any one fails (its peers may block in a collective)."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done[0])  # raises the rank's exception immediately
    return ray.get(refs)


def unwrap_error(err: BaseException) -> BaseException:
    """The user-facing exception inside a RayTaskError/RayActorError, if there is one. An actor whose
    constructor raised comes back as an ActorDiedError holding only the text of its traceback: a
    CoatiError named on its last line is rebuilt from it (e.g. a core list the actor's node lacks)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return cause
    if getattr(err, "actor_init_failed", False):
        import coati_ray.errors

        # the exception that ended the constructor: the last unindented line of the traceback
        final = [line for line in str(getattr(err, "error_msg", "")).splitlines() if line.strip() and not line[0].isspace()]
        match = re.match(r"coati_ray\.errors\.(\w+): (.+)$", final[-1].strip()) if final else None
        cls = getattr(coati_ray.errors, match.group(1), None) if match else None
        if isinstance(cls, type) and issubclass(cls, coati_ray.errors.CoatiError):
            return cls(match.group(2))
    return err


@contextlib.contextmanager
def user_errors():
    """Re-raise a CoatiError raised inside an actor as itself, so the launcher prints its one line."""
    from coati_ray.errors import CoatiError

    try:
        yield
    except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as e:
        inner = unwrap_error(e)
        if isinstance(inner, CoatiError):
            raise inner from None
        raise
