"""Soak: a long tiny PPO run in async mode while makers are killed on a seeded schedule, with every
actor's memory sampled at every step.

    python -m benchmarks.soak [--steps 1000] [--kill-every 50] [--seed 0]

Every `--kill-every` steps (jittered by the seed) one maker, chosen by the seed, is killed either by
`ray.kill` (Ray restarts it) or by SIGKILL of its process. Reports restarts, batches made again, drops,
whether the buffer's books balance, each actor's resident memory after warm-up and at the end, and
whether a steady growth remains in the second half of the run (a leak) or only in the first (caches and
allocator pools filling). Writes runs/bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import time

from benchmarks.common import OUT, ppo_config, save

ACTOR_CLASSES = ("ExperienceMaker", "PPOTrainerRank", "ReplayBuffer")


def actor_memory() -> dict[str, float]:
    """RSS in MB of every live actor process on this node, keyed 'Class:pid' (from Ray's process titles)."""
    import psutil

    out = {}
    for p in psutil.process_iter(["cmdline", "memory_info"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].startswith("ray::") and p.info["memory_info"] is not None:
            cls = cmd[0][5:].split(".")[0].split()[0]
            if cls in ACTOR_CLASSES:
                out[f"{cls}:{p.pid}"] = p.info["memory_info"].rss / 2**20
    return out


def kill_schedule(steps: int, every: int, seed: int) -> dict[int, tuple[int, str]]:
    """{step: (maker index, "ray.kill" | "SIGKILL")}: one kill per `every` steps on average, at a step drawn
    in each window (none in the first or last window: warm-up, and a restart that has time to finish)."""
    if every <= 0:
        return {}
    rng = random.Random(seed)
    return {start + rng.randrange(every): (rng.randrange(2), rng.choice(("ray.kill", "SIGKILL")))
            for start in range(every, steps - every, every)}


def growth_by_half(series: list[float]) -> dict:
    """Growth (MB) over the first and second half of an actor's post-warm-up RSS series, and whether it
    still grows steadily in the second half: a leak grows at the same rate throughout; caches and
    allocator pools filling grow early and level off."""
    mid = len(series) // 2
    first, second = series[mid] - series[0], series[-1] - series[mid]
    per_step = second / max(len(series) - mid, 1)
    return {"growth_first_half_mb": round(first, 1), "growth_second_half_mb": round(second, 1),
            "second_half_mb_per_100_steps": round(100 * per_step, 2),
            "steady_growth": bool(second > 2.0 and second > 0.5 * max(first, 0.0))}


def main(argv=None) -> dict:
    import ray

    from actors.driver import RLJob

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--kill-every", type=int, default=50, help="steps between maker kills on average (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seeds the kill schedule: which maker, when, and how")
    args = p.parse_args(argv)
    kills = kill_schedule(args.steps, args.kill_every, args.seed)
    cfg = ppo_config(os.path.join(OUT, "soak"), "algorithm.mode=async", "algorithm.max_staleness=1", f"algorithm.max_steps={args.steps}",
                     "maker.num_makers=2", "buffer.capacity=32", "algorithm.log_every=50", "generation.max_new_tokens=8",
                     "algorithm.rollout_batch_size=8", "algorithm.train_batch_size=8", f"maker.max_restarts={len(kills) + 1}")
    samples, fills, driver_rss, idle, stale, killed = [], [], [], [], [], []
    import psutil

    def on_step(job, step, m):
        if step in kills:
            index, how = kills[step]
            handle = job.makers[sorted(job.makers)[index % len(job.makers)]]
            if how == "SIGKILL":
                os.kill(ray.get(handle.pid.remote()), signal.SIGKILL)
            else:
                ray.kill(handle, no_restart=False)
            killed.append({"step": step, "maker": index, "how": how})
        samples.append(actor_memory())
        fills.append(m["buffer/held_samples"])
        idle.append(m["trainer/idle_fraction"])
        stale.append(m["experience/max_staleness"])
        driver_rss.append(psutil.Process().memory_info().rss / 2**20)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="coati")
    t = time.time()
    try:
        summary = RLJob(cfg, overwrite=True).run(on_step=on_step)
    finally:
        ray.shutdown()
    warm = max(1, len(samples) // 10)  # after warm-up: allocator pools and caches are full
    actors = {}
    for key in samples[-1]:
        series = [s[key] for s in samples[warm:] if key in s]
        if len(series) < 2:
            continue
        actors[key] = {"steps_alive": len(series), "rss_mb_after_warmup": round(series[0], 1),
                       "rss_mb_end": round(series[-1], 1), "rss_mb_max": round(max(series), 1),
                       "growth_mb": round(series[-1] - series[0], 1), **growth_by_half(series)}
    acc = summary["buffer"]
    result = {"steps": summary["steps"], "wall_seconds": round(time.time() - t, 1), "mode": "async",
              "kill_every": args.kill_every, "seed": args.seed, "kills": killed,
              "kills_by_how": {how: sum(k["how"] == how for k in killed) for how in ("ray.kill", "SIGKILL")},
              "maker_restarts": summary["maker_restarts"],
              "maker_batches_regenerated": summary["maker_batches_regenerated"],
              "makers_dropped": summary["makers_dropped"], "duplicates_refused": acc["duplicates_refused"],
              "warmup_steps": warm, "actors": actors,
              "max_actor_growth_mb": max(a["growth_mb"] for a in actors.values()),
              "driver_growth_mb": round(driver_rss[-1] - driver_rss[warm], 1),
              "buffer_capacity": acc["capacity"], "buffer_peak_samples": acc["peak_samples"],
              "buffer_max_fill_seen": max(fills), "produced": acc["produced"], "delivered": acc["delivered"],
              "dropped": acc["dropped"], "dropped_fraction": acc["dropped"] / max(acc["produced"], 1),
              "max_staleness": cfg.algorithm.max_staleness, "staleness_counts": acc["staleness_counts"],
              "over_staleness": acc["over_staleness"], "trainer_idle_fraction": round(sum(idle) / len(idle), 4),
              "steps_with_stale_experience": sum(s > 0 for s in stale),
              "books_balance": all(acc["produced"] == d + acc["dropped"] for d in acc["delivered"].values())}
    save("soak", result)
    return result


def run_and_report(argv=None) -> dict:
    """`make soak`: the soak, then RESULTS.md rewritten from RESULTS.json (other sections as they were)."""
    from benchmarks import report

    result = main(argv)
    report.write()
    return result


if __name__ == "__main__":
    run_and_report()
