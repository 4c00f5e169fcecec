"""Soak: a long tiny PPO run in async mode, with every actor's memory sampled at every step.

    python -m benchmarks.soak [--steps 300]

Reports each actor's resident memory after warm-up and at the end (growth in MB), and the
buffer's fill against its capacity at every step. Writes runs/bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import os
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


def main(argv=None) -> dict:
    import ray

    from actors.driver import PPOJob

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args(argv)
    cfg = ppo_config(os.path.join(OUT, "soak"), "ppo.mode=async", "ppo.max_staleness=1", f"ppo.max_steps={args.steps}",
                     "maker.num_makers=2", "buffer.capacity=32", "ppo.log_every=50", "generation.max_new_tokens=8",
                     "ppo.rollout_batch_size=8", "ppo.train_batch_size=8")
    samples, fills, driver_rss, idle, stale = [], [], [], [], []
    import psutil

    def on_step(job, step, m):
        samples.append(actor_memory())
        fills.append(m["buffer/held_samples"])
        idle.append(m["trainer/idle_fraction"])
        stale.append(m["experience/max_staleness"])
        driver_rss.append(psutil.Process().memory_info().rss / 2**20)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="coati")
    t = time.time()
    try:
        summary = PPOJob(cfg, overwrite=True).run(on_step=on_step)
    finally:
        ray.shutdown()
    warm = max(1, len(samples) // 10)  # after warm-up: allocator pools and caches are full
    actors = {}
    for key in samples[-1]:
        series = [s[key] for s in samples[warm:] if key in s]
        if len(series) < 2:
            continue
        actors[key] = {"rss_mb_after_warmup": round(series[0], 1), "rss_mb_end": round(series[-1], 1),
                       "rss_mb_max": round(max(series), 1), "growth_mb": round(series[-1] - series[0], 1)}
    acc = summary["buffer"]
    result = {"steps": summary["steps"], "wall_seconds": round(time.time() - t, 1), "mode": "async",
              "warmup_steps": warm, "actors": actors,
              "max_actor_growth_mb": max(a["growth_mb"] for a in actors.values()),
              "driver_growth_mb": round(driver_rss[-1] - driver_rss[warm], 1),
              "buffer_capacity": acc["capacity"], "buffer_peak_samples": acc["peak_samples"],
              "buffer_max_fill_seen": max(fills), "produced": acc["produced"], "delivered": acc["delivered"],
              "dropped": acc["dropped"], "dropped_fraction": acc["dropped"] / max(acc["produced"], 1),
              "max_staleness": cfg.ppo.max_staleness, "staleness_counts": acc["staleness_counts"],
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
