"""One placement for every trainer group (SFT/RM/pretrain's TrainerGroup, PPO's PPOTrainerGroups): its ranks packed
into one placement group, one named actor per bundle, in the `coati` namespace so the dashboard reads clearly."""

from __future__ import annotations

from typing import Callable

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.cluster import NAMESPACE


def place_ranks(worker_cls, name: str, num_ranks: int, num_cpus: float, num_gpus: float, timeout_s: float,
                unplaceable: Callable[[dict], Exception], args_of: Callable[[int], tuple]) -> tuple:
    """(placement group, [actor per rank]): `<name>-pg` holding `num_ranks` bundles of {CPU, GPU}, rank r's actor
    `<name>-<r>` built with `args_of(r)` in bundle r. A group that cannot be placed within `timeout_s` is removed
    and `unplaceable(bundle)` raised (each caller says it its own way)."""
    bundle = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {})}
    pg = placement_group([dict(bundle) for _ in range(num_ranks)], strategy="PACK", name=f"{name}-pg")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise unplaceable(bundle)
    handles = [worker_cls.options(name=f"{name}-{rank}", namespace=NAMESPACE, num_cpus=num_cpus, num_gpus=num_gpus,
                                 scheduling_strategy=PlacementGroupSchedulingStrategy(pg, rank)).remote(*args_of(rank))
               for rank in range(num_ranks)]
    return pg, handles
