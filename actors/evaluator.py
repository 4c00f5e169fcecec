"""Held-out evaluation during PPO, run on a maker's live models without stalling the pipeline.

Sync mode waits for each evaluation (the makers are idle between steps). Async mode submits it
and collects it at a later step: a maker blocked on a full buffer would otherwise hold the driver,
which is the one that frees the buffer. Each result is logged as its own metrics.jsonl record at
the policy version it scored, so the curves are exact even when the record arrives late.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import ray

SAMPLES_FILE = "eval_samples.jsonl"  # one line per evaluation: {"version", "samples"}
EVAL_KEYS = ("gold_score", "reward", "kl_to_initial", "response_length")


class PolicyEvaluator:
    def __init__(self, items: list[dict], greedy: bool, seed: int, samples_per_prompt: int, logger):
        self.items, self.greedy, self.seed, self.logger = items, greedy, seed, logger
        self.samples_per_prompt = samples_per_prompt
        self.pending: list = []
        self.results: list[dict] = []

    @property
    def enabled(self) -> bool:
        return bool(self.items)

    def submit(self, maker, block: bool) -> None:
        if not self.enabled:
            return
        self.pending.append(maker.evaluate.remote(self.items, self.greedy, self.seed, self.samples_per_prompt))
        if block:
            self.collect(block=True)

    def collect(self, block: bool) -> None:
        if not self.pending:
            return
        if block:
            done, self.pending = self.pending, []
        else:
            done, self.pending = ray.wait(self.pending, num_returns=len(self.pending), timeout=0)
        results = []
        for ref in done:
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayActorError:  # its maker died; the next evaluation covers it
                self.logger.info("an evaluation was lost with its maker (it is restarted); skipping it")
        for result in sorted(results, key=lambda r: r["version"]):
            self._record(result)

    def _record(self, result: dict) -> None:
        metrics = {f"eval/{k}": result[k] for k in EVAL_KEYS if result.get(k) is not None}
        metrics.update({f"eval/{k}": v for k, v in (result.get("extra") or {}).items() if v is not None})
        metrics["timing/eval"] = result["seconds"]
        self.results.append({"version": result["version"], "metrics": metrics, "samples": result["samples"]})
        self.logger.record(result["version"], metrics)
        if self.logger.enabled:
            with open(os.path.join(self.logger.run_dir, SAMPLES_FILE), "a", encoding="utf-8") as f:
                f.write(json.dumps({"version": result["version"], "samples": result["samples"]}) + "\n")
        shown = "  ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        self.logger.info(f"eval at version {result['version']}: {shown}")

    def drop_pending(self) -> None:
        """Evaluations in flight dropped (a trainer restart: they score weights past the checkpoint). Not
        cancelled (see MakerPool.drop_in_flight): a kept maker runs them out before its rewind."""
        self.pending = []

    def restore(self, up_to_version: int) -> None:
        """On resume: the evaluations already logged (metrics.jsonl, eval_samples.jsonl) up to the
        checkpoint, so the summary's first evaluation is still the policy before PPO. After a trainer restart, the
        same: what this process had recorded past the checkpoint is dropped with it (and what was in flight)."""
        from coati_ray.reporting.curves import read_metrics

        self.pending = []  # what was in flight is remade after the step it belongs to, or lost with its maker
        self.results = [r for r in self.results if r["version"] <= up_to_version]
        known = {r["version"] for r in self.results}

        run_dir = self.logger.run_dir
        samples = {}
        path = os.path.join(run_dir, SAMPLES_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    samples[row["version"]] = row["samples"]
            with open(path, "w", encoding="utf-8") as f:  # drop evaluations past the checkpoint
                f.writelines(json.dumps({"version": v, "samples": s}) + "\n"
                             for v, s in sorted(samples.items()) if v <= up_to_version)
        for record in read_metrics(run_dir):
            if "eval/response_length" in record and record["step"] <= up_to_version and record["step"] not in known:
                metrics = {k: v for k, v in record.items() if k.startswith("eval/") or k == "timing/eval"}
                self.results.append({"version": record["step"], "metrics": metrics,
                                     "samples": samples.get(record["step"], [])})
        self.results.sort(key=lambda r: r["version"])

    def summary(self) -> dict:
        """First and last evaluation: metrics and sample generations (before/after PPO)."""
        if not self.results:
            return {}
        first, last = self.results[0], self.results[-1]
        out: dict = {"eval_prompts": len(self.items),
                     "eval_first": {"version": first["version"], **first["metrics"]},
                     "eval_last": {"version": last["version"], **last["metrics"]},
                     "samples_first": first["samples"], "samples_last": last["samples"]}
        return out

    def last_version(self) -> Optional[int]:
        return self.results[-1]["version"] if self.results else None
