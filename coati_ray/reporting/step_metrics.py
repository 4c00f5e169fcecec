"""One PPO step's metrics record, from what each part of the system reported (no Ray here).

The names are stable (verl style): `timing/*` seconds of each stage, `throughput/*`, `tflops/*`, `mfu/*` (on a
GPU of known peak: coati_ray/utils/flops.py), the trainers' `actor/*` and `critic/*`, `experience/*`, `buffer/*`,
`sync/*`.
"""

from __future__ import annotations

from coati_ray.utils.flops import tflops

MAKER_MEANS = ("reward", "kl", "response_length", "timing/generate", "timing/ref", "timing/reward", "timing/values")


def step_metrics(*, updates: dict[str, dict], makes: list[dict], sync: dict, loads: list[dict],
                 step_seconds: float, buffer: dict, version: int, makers: int, maker_restarts: int) -> dict:
    """Merge one step's reports into the metrics.jsonl record.

    updates: role -> rank 0's update metrics (averaged over its group; `flops/<role>`, `consumed`);
    makes: statistics of every maker batch that landed during the step (async: possibly none);
    sync: what WeightSync.publish reported ({export_seconds, bytes, transport});
    loads: object-store loads reported by makers since the last step; buffer: the buffer's stats().
    """
    m = {k: v for role_m in updates.values() for k, v in role_m.items()
         if k != "consumed" and not k.startswith(("flops/", "peak_tflops/"))}
    for role, role_m in updates.items():
        # Each group's estimated FLOPs over the step's wall time: the groups and makers add up to the job's rate.
        m[f"tflops/{role}_trainer"] = tflops(role_m[f"flops/{role}"], step_seconds)
        if role_m.get(f"peak_tflops/{role}"):  # a GPU of known peak: groups sharing one GPU add up to its use
            m[f"mfu/{role}_trainer"] = m[f"tflops/{role}_trainer"] / role_m[f"peak_tflops/{role}"]
    if makes:
        # The fixed keys, each reward source's mean (reward/<source>) and the makers' experience/* (group spread,
        # truncated answers, dynamic sampling's dropped groups and rounds).
        # multi-turn episodes: rollout/* per episode (environment errors: counted over the step's batches)
        keys = list(MAKER_MEANS) + sorted({k for s in makes for k in s if k.startswith(("reward/", "experience/",
                                                                                       "rollout/"))})
        for key in keys:
            if key == "kl" and not all("kl" in s for s in makes):  # kl_coef 0: no reference pass, no KL to report
                continue
            # an environment's own counts (rollout/<info key>) are in a batch only if one of its episodes
            # reported them: absent, that batch's episodes all had 0
            values = [s.get(key, 0.0) if key.startswith("rollout/") else s[key] for s in makes]
            m[key] = sum(values) / (1 if key == "rollout/env_errors" else len(makes))
        m["throughput/samples_per_s"] = sum(s["samples"] for s in makes) / max(step_seconds, 1e-9)
        m["throughput/generated_tokens_per_s"] = sum(s["generated_tokens"] for s in makes) / max(step_seconds, 1e-9)
        m["tflops/makers"] = tflops(sum(s["flops"] for s in makes), step_seconds)
        if all("peak_tflops" in s for s in makes):  # each GPU the step's batches were made on, counted once
            peak = sum({s["device"]: s["peak_tflops"] for s in makes}.values())
            m["mfu/makers"] = m["tflops/makers"] / peak
        m["memory/makers_peak_gb"] = max(s.get("memory/peak_gb", 0.0) for s in makes)
    else:  # async: no maker batch landed during this step, so nothing was produced in it
        m.update({key: 0.0 for key in MAKER_MEANS if key.startswith("timing/")})
        m.update({"throughput/samples_per_s": 0.0, "throughput/generated_tokens_per_s": 0.0, "tflops/makers": 0.0})
    if m.get("kl") != m.get("kl") and "actor/kl_loss" in m:  # NaN: makers skipped their log-probs
        m["kl"] = m["actor/kl_loss"]  # the trainer's k3 estimate on the same samples
    m["experience/batches"] = len(makes)
    # which tokens each batch sampled, by batch id: runs that should sample alike can be compared exactly
    m["experience/digests"] = [s["digest"] for s in sorted(makes, key=lambda s: s["batch_id"]) if "digest" in s]
    consumed = next(iter(updates.values()))["consumed"]
    m["experience/max_staleness"] = max(consumed["staleness"]) if consumed["staleness"] else 0
    m["experience/versions"] = consumed["versions"]
    # publish (export; a broadcast's whole transfer) plus the slowest object-store load that followed
    m["timing/sync"] = sync["export_seconds"] + (max(x["seconds"] for x in loads) if loads else 0.0)
    m["sync/bytes"] = sync["bytes"]
    m["sync/collective"] = int(sync["transport"] == "collective")
    m["sync/ipc"] = int(sync["transport"] == "ipc")
    m["sync/cast_tensors"] = max([sync.get("cast_tensors", 0)] + [x.get("cast_tensors", 0) for x in loads])
    m["timing/step"] = step_seconds
    waits = [role_m.get(f"timing/wait_{role}", 0.0) for role, role_m in updates.items()]
    # The share of the step the trainers spent waiting for experience (the slower-fed group's).
    m["trainer/idle_fraction"] = max(waits) / max(step_seconds, 1e-9) if waits else 0.0
    m["throughput/trainer_tokens_per_s"] = sum(m.get(f"throughput/{role}_tokens_per_s", 0.0) for role in updates)
    m["version"] = version
    m["makers"] = makers
    m["maker_restarts"] = maker_restarts
    m["buffer/held_samples"] = buffer["held_samples"]
    m["buffer/capacity"] = buffer["capacity"]
    m["buffer/dropped"] = buffer["dropped"]
    m["consumed"] = {role: role_m["consumed"] for role, role_m in updates.items()}
    return m
