"""A trainer rank lost (its process or its node) does not end the run: the trainer groups and the replay buffer start
again from the last checkpoint the run completed (else the one it started from, else the initial weights), exactly
as `--resume` would start them: the same batches remade and trained, none skipped, none twice, on whichever nodes
fit. The makers stay, with their models loaded: what they were making is dropped and they load the checkpoint's
weights before their next batch (under placement: colocated the trainers are the generators, so all restart). The
driver, its Ray, its metrics and its run directory stay. `<role>_trainer.max_restarts` bounds the restarts charged
to each group; past it the run ends with the lost rank's line (which names the checkpoint to resume from).
"""

from __future__ import annotations

import time

import ray

from actors.cluster import NAMESPACE
from coati_ray.errors import TrainerLost, WorkerLost
from coati_ray.storage.uri import redact


def restart_after(job, lost: TrainerLost) -> None:
    """Restart `job` (an RLJob) after `lost`; a rank lost again while coming back is one more restart, counted."""
    while True:
        try:
            _restart(job, lost)
            return
        except TrainerLost as again:
            lost = again


def _restart(job, lost: TrainerLost) -> None:
    roles = lost.roles or job.roles
    limit = {r: job.trainers.group_cfg(r).max_restarts for r in roles}
    spent = [r for r in roles if job.restarts_by_group[r] >= limit[r]]
    if spent:
        raise WorkerLost(f"{lost} (trainer restarts used: " + ", ".join(
            f"{r}_trainer {job.restarts_by_group[r]} of max_restarts={limit[r]}" for r in spent) + ")") from None
    for role in roles:
        job.restarts_by_group[role] += 1
    t0 = time.monotonic()
    ckpt, step, version = job.restart_point  # no checkpoint yet: the initial weights, step 0
    redone = job.step - step
    keep = job.source is not None and job.source.keeps_workers()
    what = "the trainer groups (makers kept)" if keep else "the job's actors"
    job.logger.info(f"{', '.join(lost.names) or 'a trainer rank'} died at step {lost.step + 1}; restarting {what} "
                    f"from {redact(ckpt) if ckpt else 'the initial weights'} (step {step}, "
                    f"{redone} step(s) to redo; " + ", ".join(
                        f"{r}_trainer restart {job.restarts_by_group[r]} of {limit[r]}" for r in roles) + ")")
    job.evaluator.drop_pending()  # an evaluation in flight scores weights past the checkpoint
    with job.lock:  # the pool comes back at its starting size at most (a lost node took capacity); _scale grows it
        job.target_makers = min(job.target_makers, job.cfg.maker.num_makers)
    if keep:  # the makers stay, with their models (reference, reward, critic) loaded: only their weights go back
        job.source.pause()
    release_actors(job, keep_source=keep)
    job.resume_from, job.step, job.version = ckpt, step, version
    job.prompts = job._prompt_stream()
    if job.autoscaler is not None:
        job.autoscaler.restarted()
    job._start_actors(keep_source=keep)
    if ckpt is None:  # the resume path (metrics past the checkpoint dropped, evaluations) ran for a checkpoint
        job.logger.continue_from(step)
        job.evaluator.restore(step)
    seconds = time.monotonic() - t0
    job.trainer_restarts.append({"step": step, "lost": list(lost.names), "seconds": round(seconds, 1),
                                 "steps_redone": redone, "makers_kept": keep})
    job.logger.record(step, {"trainer/restarts": len(job.trainer_restarts), "trainer/restart_seconds": seconds,
                             "trainer/steps_redone": redone})
    job.metrics.inc("trainer_restarts_total", 1)
    job.logger.info(f"back in {seconds:.1f}s at step {step} (trainer restart {len(job.trainer_restarts)})")


def release_actors(job, keep_source: bool = False, timeout_s: float = 60.0) -> None:
    """Every actor and placement group of the job gone (but the source's, `keep_source`), and their names released
    (asynchronously, by the GCS), so that the new ones can take them."""
    names = (list(job.source.handles()) if job.source is not None and not keep_source else []) + \
        ([name for name, _ in job.trainers.names()] if job.trainers is not None else []) + \
        (["replay-buffer"] if job.buffer is not None else [])
    job.stop_actors(keep_source=keep_source)
    deadline = time.monotonic() + timeout_s
    for name in names:
        while time.monotonic() < deadline:
            try:
                ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                break
            time.sleep(0.1)
