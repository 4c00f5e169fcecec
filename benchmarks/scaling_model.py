"""A small model of how a PPO job scales with experience makers, from measured costs.

    python -m benchmarks.scaling_model            # predictions from benchmarks/RESULTS.json

Every figure it needs is measured by benchmarks.bench_pipeline on the real actors:

    g   core-seconds per sample in the makers' processes (generation and scoring, 1 torch thread each)
    h   core-seconds per sample everywhere else while makers run (driver, replay buffer, raylet, GCS)
    t   core-seconds per sample in the trainer groups' processes
    s   seconds of weight sync per step (exposed: makers apply between batches, trainers wait for it)

A maker with one thread makes at most 1/g samples/s; on a node of C cores the makers together can
use at most C - (what else runs there) cores. So M makers sharing C cores with nothing else make

    rate(M, C) = min(M / g, C / (g + h))                       (1)

and a cluster of N nodes, makers spread evenly, trainers on their own node(s) training at 1/t
samples/s per core they are given, trains in async mode at

    rate = min(makers' rate, trainers' rate) * step / (step + s)   with step = rollout / rate     (2)

Oversubscribing cores (M > C) gains nothing in (1); what it costs (time slices, caches) the model
leaves out, and `check` shows how much that is on the 2-core machine. The checks use only the
1-maker run's costs, so the 2- and 4-maker rows are predictions, not fits.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass


@dataclass
class Costs:
    generation: float          # g: maker core-seconds per sample
    other: float               # h: core-seconds per sample outside the makers while they run
    training: float            # t: trainer core-seconds per sample (actor + critic groups)
    sync_seconds: float = 0.0  # s: exposed weight sync per step
    rollout: int = 16          # samples per step


def makers_rate(costs: Costs, makers: int, cores: float) -> float:
    """(1): samples/s of `makers` one-thread makers sharing `cores` cores with nothing but the driver
    and the buffer."""
    return min(makers / costs.generation, cores / (costs.generation + costs.other))


def cluster_rate(costs: Costs, makers: int, cores_per_node: float, maker_nodes: int, trainer_cores: float) -> dict:
    """(2): async samples/s of a cluster: `makers` makers spread over `maker_nodes` nodes of
    `cores_per_node` cores, trainer groups using `trainer_cores` cores of their own (1/t samples/s per
    core: data parallel ranks scale the update). Returns the rate and which stage bounds it."""
    per_node = [makers // maker_nodes + (1 if i < makers % maker_nodes else 0) for i in range(maker_nodes)]
    make = sum(makers_rate(costs, m, cores_per_node) for m in per_node if m)
    train = trainer_cores / costs.training
    rate = min(make, train)
    step = costs.rollout / rate
    return {"samples_per_s": rate * step / (step + costs.sync_seconds), "makers_rate": make, "trainers_rate": train,
            "bound_by": "makers" if make <= train else "trainers"}


def costs_from(pipeline: dict) -> Costs:
    """The model's inputs from a bench_pipeline result (RESULTS.json's `pipeline` section): g and h from
    the 1-maker scaling run, t from the trainers alone, s from the sync job's steps."""
    one = pipeline["maker_scaling"]["1"] if "1" in pipeline["maker_scaling"] else pipeline["maker_scaling"][1]
    return Costs(generation=one["maker_core_seconds_per_sample"], other=one["other_core_seconds_per_sample"],
                 training=pipeline["standalone"]["training_core_seconds_per_sample"],
                 sync_seconds=pipeline["jobs"][pipeline.get("sync_job", "sync")]["timing_seconds"].get("sync", 0.0),
                 rollout=pipeline["workload"]["rollout"])


def check(pipeline: dict) -> list[dict]:
    """Predicted against measured maker rates for every maker count bench_pipeline measured, on its
    machine's cores, from the 1-maker run's costs alone."""
    costs, cores = costs_from(pipeline), pipeline["cores"]
    rows = []
    for n, measured in sorted(pipeline["maker_scaling"].items(), key=lambda kv: int(kv[0])):
        predicted = makers_rate(costs, int(n), cores)
        rows.append({"makers": int(n), "predicted": predicted, "measured": measured["produced_samples_per_s"],
                     "error": predicted / measured["produced_samples_per_s"] - 1})
    return rows


def cluster_table(costs: Costs, cores_per_node: float = 2, trainer_cores: float = 2,
                  makers: tuple = (1, 2, 4, 8, 16)) -> list[dict]:
    """Predicted async rates with one maker per node (each maker its own node of `cores_per_node`)."""
    return [{"makers": m, **cluster_rate(costs, m, cores_per_node, m, trainer_cores)} for m in makers]


def main(argv=None) -> None:
    from benchmarks.common import load

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cores-per-node", type=float, default=2)
    p.add_argument("--trainer-cores", type=float, default=2)
    p.add_argument("--section", default="pipeline", help="RESULTS.json section: pipeline, or pipeline_medium when "
                                                         "bench_pipeline ran the medium workload with scaling")
    args = p.parse_args(argv)
    pipeline = load(args.section)
    if not pipeline or not pipeline.get("maker_scaling"):
        raise SystemExit(f"error: no maker scaling in benchmarks/RESULTS.json section {args.section!r}; run "
                         "`python -m benchmarks.bench_pipeline` (with scaling) first")
    print(json.dumps({"check": check(pipeline), "cluster": cluster_table(costs_from(pipeline), args.cores_per_node,
                                                                        args.trainer_cores)}, indent=2))


if __name__ == "__main__":
    main()
