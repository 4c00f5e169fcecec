"""Pipeline efficiency and maker scaling, on the workload of benchmarks/common.py.

    python -m benchmarks.bench_pipeline [--steps 8] [--workload tiny|medium]

1. A maker alone (makers generate K steps' worth of experience into an idle buffer), then the
   trainer groups alone (they train on that experience with every maker idle): two rates in
   samples/s, and the CPU time each stage's processes spent per sample (core-seconds, read from
   /proc for the actors' pids). The bound is physics: cores / (generation + training core-seconds
   per sample), what the machine could train if every core did useful work all the time and
   nothing else (Ray calls, sync, the buffer, idle waits) cost anything. The slower stage's
   standalone rate is kept beside it: it is the bound only if the stages had cores to themselves.
2. The full job in sync and async mode: samples trained per second as a fraction of the bound, and
   where each step's wall time went (the `timing/*` keys), and where the cores' time went: what the
   makers and trainers used per sample inside the job against standalone, and how much stood idle.
   Each mode runs in the configurations a user of this node would pick from, and the fastest of each
   is the one compared: sync with 1 maker of 2 torch threads or 2 makers of 1 (either way generation
   has both cores while the trainers wait); async with 1 maker as the OS schedules it, 1 maker pinned
   to its own core (maker.cpu_cores / *_trainer.resources.cpu_cores: the stage that sets the pace is
   never time-sliced by the other), 2 makers, and 2 makers with the trainers at nice 19
   (*_trainer.resources.nice: against the makers at Ray's 15, a core both want goes mostly to the makers).
3. Maker scaling: 1, 2 and 4 makers (1 torch thread each, trainers idle) make the same batches, all
   sent at once and spread evenly: experience produced per second, as speed-up over 1 maker. (Not
   measured inside the async job: there the makers finish the run's few batches within its first
   steps and the trainers set the pace, so a per-step rate reads 0 in the later steps.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import ray

from benchmarks.common import OUT, ROLLOUT, WORKLOADS, niced_overrides, pinned_overrides, ppo_config, save, steady, workload_model


CORES = os.cpu_count() or 2  # what Ray is given here, and what the bound divides


def connect() -> None:
    ray.init(num_cpus=CORES, include_dashboard=False, log_to_driver=False, namespace="coati")


def make_tickets(job, tickets: range) -> list[dict]:
    """Batches `tickets` sent at once, round robin over the makers, and waited for until all are in the
    buffer, with the trainers idle; their makers' statistics."""
    from actors.maker_pool import Batch

    makers = sorted(job.pool.makers)
    for j, ticket in enumerate(tickets):
        job.pool.submit(makers[j % len(makers)], Batch(ticket, job.prompts.batch(ticket)))
    landed = []
    while len(landed) < len(tickets):
        done, _ = ray.wait(job.pool.refs(), num_returns=1)
        stats = job.pool.on_ready(done[0])
        if stats is not None:
            landed.append(stats)
    return landed


def make_step(job, step: int) -> list[dict]:
    """Step `step`'s batches made and put in the buffer, with the trainers idle; their statistics."""
    k = job.items_per_step
    return make_tickets(job, range(step * k, (step + 1) * k))


def maker_rate(makers: int, steps: int, workload: str = "tiny") -> dict:
    """Experience samples/s of `makers` makers (1 torch thread, 0.25 CPU each) making 4 x (steps - 1)
    batches at once (as many on each maker for 1, 2 and 4), after one warm-up batch each; with the
    core-seconds per sample the makers used and the rest of the machine used meanwhile (driver, buffer,
    raylet): benchmarks/scaling_model.py predicts the other counts from the 1-maker run's."""
    from actors.driver import RLJob

    cfg = ppo_config(os.path.join(OUT, f"scaling_{makers}"), f"algorithm.max_steps={4 * steps}",
                     f"maker.num_makers={makers}", "maker.num_cpus=0.25",
                     f"buffer.capacity={ROLLOUT * 4 * steps}", workload=workload)
    job = RLJob(cfg, log=False, overwrite=True)
    try:
        job.start()
        pids = worker_pids(list(job.pool.makers.values()))
        make_tickets(job, range(makers))  # each maker's first batch: warm-up
        timed = range(makers, makers + 4 * (steps - 1))
        t, c, busy = time.perf_counter(), cpu_seconds(pids), busy_core_seconds()
        make_tickets(job, timed)
        seconds = time.perf_counter() - t
        maker_cs, all_cs = cpu_seconds(pids) - c, busy_core_seconds() - busy
    finally:
        job.shutdown()
    samples = len(timed) * job.cfg.maker.batch_size
    return {"produced_samples_per_s": samples / seconds, "maker_core_seconds_per_sample": maker_cs / samples,
            "other_core_seconds_per_sample": max(all_cs - maker_cs, 0.0) / samples}


def busy_core_seconds() -> float:
    """CPU time the whole machine has spent not idle (every process, kernel included)."""
    import psutil

    t = psutil.cpu_times()  # guest time is already inside user/nice; steal is not this machine's work
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def worker_pids(workers) -> list[int]:
    return ray.get([w.__ray_call__.remote(lambda self: os.getpid()) for w in workers])


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes (all their threads) have used so far."""
    import psutil

    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def standalone(steps: int, workload: str = "tiny", *overrides: str, name: str = "standalone") -> dict:
    """Maker rate and trainer rate, each measured with the other stage idle, on the real actors, with the
    core-seconds per sample each stage's processes used (`overrides`: config keys of the job)."""
    from actors.driver import RLJob

    cfg = ppo_config(os.path.join(OUT, name), f"algorithm.max_steps={steps}",
                     f"buffer.capacity={ROLLOUT * (steps + 1)}", *overrides, workload=workload)
    job = RLJob(cfg, log=False, overwrite=True)
    try:
        job.start()
        makers = worker_pids(list(job.pool.makers.values()))
        trainers = worker_pids([r for ranks in job.groups.values() for r in ranks])
        made = make_step(job, 0)  # warm-up, consumed below
        t, c = time.perf_counter(), cpu_seconds(makers)
        for step in range(1, steps):
            made += make_step(job, step)
        maker_s = (time.perf_counter() - t) / (steps - 1)
        maker_cs = (cpu_seconds(makers) - c) / ((steps - 1) * ROLLOUT)
        times, cores, padding = [], [], []
        for step in range(steps):
            t, c = time.perf_counter(), cpu_seconds(trainers)
            results = ray.get([r.train_step.remote(job.buffer, job.items_per_step, step)
                               for ranks in job.groups.values() for r in ranks])
            padding.append(results[0].get("actor/padding_fraction", float("nan")))
            times.append(time.perf_counter() - t)
            cores.append((cpu_seconds(trainers) - c) / ROLLOUT)
        trainer_s = steady(times, skip=1)
    finally:
        job.shutdown()
    waste = {k: statistics.mean(s[f"experience/{k}"] for s in made) for k in ("finished_row_fraction",
                                                                               "padding_fraction")}
    return {"maker_samples_per_s": ROLLOUT / maker_s, "trainer_samples_per_s": ROLLOUT / trainer_s,
            "maker_step_seconds": maker_s, "trainer_step_seconds": trainer_s,
            "generation_core_seconds_per_sample": maker_cs, "training_core_seconds_per_sample": steady(cores, skip=1),
            **waste, "training_padding_fraction": statistics.mean(padding),
            "response_length": statistics.mean(s["response_length"] for s in made)}


def full_job(mode: str, steps: int, *overrides: str, workload: str = "tiny", name: str = "") -> dict:
    """The job's steady steps: their rate, where each step's wall time went (timing/*), and where the
    cores' time went between the end of warm-up and the last step (CPU time of the makers' processes per
    sample they made, of the trainers' per sample trained, and the machine's idle cores, from /proc)."""
    import psutil

    from actors.driver import RLJob

    cfg = ppo_config(os.path.join(OUT, f"job_{name or mode}"), f"algorithm.mode={mode}", f"algorithm.max_steps={steps}",
                     "algorithm.log_every=100", *overrides, workload=workload)
    rows, marks, pids = [], [], {}

    def on_step(job, step, m):
        rows.append(m)
        if not pids:
            pids["makers"] = worker_pids(list(job.pool.makers.values()))
            pids["trainers"] = worker_pids([r for ranks in job.groups.values() for r in ranks])
        idle = psutil.cpu_times()
        marks.append((time.perf_counter(), cpu_seconds(pids["makers"]), cpu_seconds(pids["trainers"]),
                      idle.idle + idle.iowait))

    RLJob(cfg, log=False, overwrite=True).run(on_step=on_step)
    step_s = steady([r["timing/step"] for r in rows])
    produced = steady([r["throughput/samples_per_s"] for r in rows])
    timing = {k[len("timing/"):]: steady([r.get(k, 0.0) for r in rows]) for k in sorted(rows[-1])
              if k.startswith("timing/") and k != "timing/step"}
    first = min(1, len(marks) - 1)
    (t0, m0, r0, i0), (t1, m1, r1, i1) = marks[first], marks[-1]
    trained = ROLLOUT * max(len(marks) - 1 - first, 1)
    # makers are charged per sample they made in the window (async makers make no batch in the last step)
    made = cfg.maker.batch_size * sum(r.get("experience/batches", 0) for r in rows[first + 1:]) or trained
    cores = {"maker_core_seconds_per_sample": (m1 - m0) / made,
             "trainer_core_seconds_per_sample": (r1 - r0) / trained,
             "idle_cores": (i1 - i0) / max(t1 - t0, 1e-9)}
    return {"mode": mode, "step_seconds": step_s, "trained_samples_per_s": ROLLOUT / step_s,
            "produced_samples_per_s": produced, "timing_seconds": timing, "cores": cores,
            "overrides": list(overrides)}


def job_configurations() -> dict[str, tuple[str, list[str]]]:
    """name -> (mode, overrides): the ways to run one node's cores that the module docstring lists."""
    return {"sync_maker_2_threads": ("sync", ["maker.torch_threads=2", "maker.num_cpus=1"]),
            "sync_2_makers": ("sync", ["maker.num_makers=2"]),
            "async": ("async", []),
            "async_pinned": ("async", pinned_overrides()),
            "async_2_makers": ("async", ["maker.num_makers=2"]),
            "async_2_makers_nice": ("async", ["maker.num_makers=2", *niced_overrides()])}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="tiny")
    p.add_argument("--scaling", action=argparse.BooleanOptionalAction, default=True, help="measure 1, 2, 4 makers")
    args = p.parse_args(argv)
    connect()
    try:
        alone = standalone(args.steps, args.workload)
        stage_bound = min(alone["maker_samples_per_s"], alone["trainer_samples_per_s"])
        core_s = alone["generation_core_seconds_per_sample"] + alone["training_core_seconds_per_sample"]
        bound = CORES / core_s
        jobs = {name: full_job(mode, args.steps, *overrides, workload=args.workload, name=name)
                for name, (mode, overrides) in job_configurations().items()}
        for j in jobs.values():
            j["fraction_of_bound"] = j["trained_samples_per_s"] / bound
            j["fraction_of_stage_bound"] = j["trained_samples_per_s"] / stage_bound
        sync, async_ = (max((k for k in jobs if jobs[k]["mode"] == mode), key=lambda k: jobs[k]["trained_samples_per_s"])
                        for mode in ("sync", "async"))
        scaling = {}
        for n in (1, 2, 4) if args.scaling else ():
            scaling[n] = maker_rate(n, args.steps, args.workload)
        for n in scaling:
            scaling[n]["speedup"] = scaling[n]["produced_samples_per_s"] / scaling[1]["produced_samples_per_s"]
    finally:
        ray.shutdown()
    result = {"standalone": alone, "cores": CORES, "core_seconds_per_sample": core_s, "bound_samples_per_s": bound,
              "stage_bound_samples_per_s": stage_bound,
              "bound_stage": "maker" if alone["maker_samples_per_s"] <= alone["trainer_samples_per_s"] else "trainer",
              "sync_fraction_of_bound": jobs[sync]["fraction_of_bound"], "sync_job": sync,
              "async_fraction_of_bound": jobs[async_]["fraction_of_bound"], "async_job": async_,
              "async_over_sync": jobs[async_]["trained_samples_per_s"] / jobs[sync]["trained_samples_per_s"],
              "jobs": jobs, "maker_scaling": scaling, "steps": args.steps,
              "workload": {"name": args.workload, "model": os.path.basename(workload_model(args.workload)),
                           "new_tokens": WORKLOADS[args.workload]["new_tokens"], "rollout": ROLLOUT},
              "command": "python -m benchmarks.bench_pipeline " + " ".join(sys.argv[1:] if argv is None else argv)}
    if scaling:
        from benchmarks.scaling_model import check, cluster_table, costs_from

        result["scaling_model"] = {"check": check(result), "cluster": cluster_table(costs_from(result))}
    save("pipeline" if args.workload == "tiny" else f"pipeline_{args.workload}", result)
    return result


if __name__ == "__main__":
    main()
