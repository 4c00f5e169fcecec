"""The run directory: metrics.jsonl (one JSON object per step), summary.json, checkpoints/.

Checkpoints are written into `<name>.tmp` and renamed when complete, so a crash mid-save never
leaves a directory that looks like a finished checkpoint. A run directory may be a URI (s3://, gs://,
hdfs://): its files are written into a node-local mirror and uploaded (coati_ray/storage/mirror.py), and a
remote checkpoint is complete when its manifest, written last, is there (coati_ray/storage/checkpoint.py).
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import sys
import time
import uuid
from typing import Optional

from coati_ray.errors import CoatiError
from coati_ray.storage.uri import is_uri, join

STEP_DIR = re.compile(r"^step_(\d+)$")
COMPLETE_MARKER = "trainer_state.json"


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLogger:
    """Appends step metrics to metrics.jsonl and TensorBoard (`<run_dir>/tensorboard`), and shows
    progress: a bar (step, ETA, chosen metrics) on a terminal, a line every `log_every` steps in a
    log file or under `ray job submit`. Does nothing where not `enabled` (ranks other than 0)."""

    def __init__(self, run_dir: str, enabled: bool = True, stage: str = "", log_every: int = 1,
                 show: Optional[tuple[str, ...]] = None, wandb=None, config: Optional[dict] = None):
        """`show`: the keys of the progress line (None: every scalar except timings); `wandb`: a WandbConfig
        (its series are the TensorBoard ones), `config`: the run's resolved config for its config panel.

        `run_dir` may be a URI: then `self.run_dir` is this process's node-local mirror of it, where every file
        of the run is written and from where it is uploaded (after a record at most every COATI_SYNC_EVERY_S
        seconds, at each checkpoint and at the end); `self.target` is the URI."""
        from coati_ray.storage.mirror import Mirror

        self.target, self.enabled, self.stage, self.log_every = run_dir, enabled, stage, log_every
        self.mirror = Mirror(run_dir) if enabled else None
        self.run_dir = self.mirror.local if enabled else run_dir
        self.show = show
        self.start = time.time()
        self._tb = None  # SummaryWriter, opened on the first record
        self._wandb = WandbRun(self.run_dir, wandb, config, stage, target=run_dir) if enabled and wandb is not None and wandb.enabled \
            else None
        self._bar = None  # tqdm bar on a terminal
        if enabled:
            os.makedirs(self.run_dir, exist_ok=True)

    def log(self, step: int, total: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self.record(step, metrics)
        keys = self.show if self.show is not None else [k for k in metrics if not k.startswith("timing/")]
        values = {k: metrics[k] for k in keys if isinstance(metrics.get(k), (int, float))}
        if sys.stdout.isatty():
            from tqdm import tqdm

            if self._bar is None:
                self._bar = tqdm(total=total, initial=step - 1, desc=self.stage, dynamic_ncols=True)
            self._bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in values.items()}, refresh=False)
            self._bar.update(1)
            if step >= total:
                self._bar.close()
                self._bar = None
        elif step % self.log_every == 0 or step == total:
            shown = "  ".join(f"{k}={v:.4g}" for k, v in values.items())
            elapsed = time.time() - self.start
            eta = elapsed / max(step, 1) * (total - step)
            print(f"[{self.stage}] step {step}/{total}  {shown}  ({elapsed:.0f}s, eta {eta:.0f}s)", flush=True)

    def record(self, step: int, metrics: dict) -> None:
        """A metrics.jsonl record without a progress line (e.g. an evaluation at `step`)."""
        if not self.enabled:
            return
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        with open(os.path.join(self.run_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        writer = self._writer()
        if writer is not None:
            for key, value in scalars.items():
                writer.add_scalar(key, value, step)
            writer.flush()  # once per step: cheap, and nothing is lost if the run is killed
        if self._wandb is not None:
            self._wandb.log(step, scalars)
        try:
            self.mirror.push(force=False)
        except (OSError, CoatiError) as e:  # a passing storage error must not end a long run: next push retries
            warn(f"metrics not uploaded this time ({e}); trying again at the next record")

    def sync(self) -> None:
        """Upload what changed in the run directory now (before a checkpoint; a remote run directory only)."""
        if self.enabled:
            if self._tb:
                self._tb.flush()
            self.mirror.push()

    def continue_from(self, step: int) -> None:
        """A resumed run: fetch the run's small files (a remote run directory) and drop the metric lines past
        `step`, the checkpoint's, so the resumed run does not duplicate them."""
        if self.enabled:
            self.mirror.pull()
            truncate_metrics(self.run_dir, step)

    def shown(self, path: str) -> str:
        """A file of the run as the user finds it: its URI for a remote run directory."""
        return self.mirror.shown(path) if self.enabled else path

    def _writer(self):
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: metrics.jsonl still has everything
                self._tb = False
                return None
            self._tb = SummaryWriter(os.path.join(self.run_dir, "tensorboard"), flush_secs=10)
        return self._tb or None

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(f"[{self.stage}] {message}")
        else:
            print(f"[{self.stage}] {message}", flush=True)

    def close(self) -> None:
        """Flush TensorBoard and end the progress bar (write_summary calls it)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
        if self.mirror is not None:
            self.mirror.push()

    def discard(self) -> None:
        """At the end, failed or not: a remote run directory's files are uploaded (the metrics up to a failure)
        and its local mirror removed; a failed upload is a warning here, never the error the run ends with. A
        local run directory: nothing to do."""
        if self.mirror is None or not self.mirror.remote:
            return
        try:
            if self._tb:
                self._tb.flush()
            self.mirror.push()
        except (OSError, CoatiError) as e:
            warn(f"the run's last files were not uploaded to {self.mirror.shown(self.run_dir)}: {e}")
        finally:
            self.mirror.discard()
            self.enabled = False

    def write_summary(self, summary: dict) -> None:
        if not self.enabled:
            return
        if self._wandb is not None:
            self._wandb.summary(summary)
        self.close()
        path = os.path.join(self.run_dir, "summary.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump({k: _jsonable(v) for k, v in summary.items()}, f, indent=2)
        os.replace(path + ".tmp", path)
        self.mirror.close()  # uploaded, and the node-local mirror of a remote run directory removed


class WandbRun:
    """One W&B run per run directory, opened on the first record; a resumed run continues it (its id is kept
    in <run_dir>/wandb/run_id). The API key stays wandb's business (WANDB_API_KEY or ~/.netrc)."""

    def __init__(self, run_dir: str, cfg, config: Optional[dict], stage: str, target: Optional[str] = None):
        """`target`: the run directory as the user named it (a URI, where `run_dir` is its local mirror)."""
        self.run_dir, self.cfg, self.config, self.stage = run_dir, cfg, config, stage
        self.name = os.path.basename(target.rstrip("/")) if target and is_uri(target) else \
            os.path.basename(os.path.abspath(run_dir))
        self.run = None

    def _open(self):
        if self.run is None:
            import wandb

            folder = os.path.join(self.run_dir, "wandb")
            os.makedirs(folder, exist_ok=True)
            id_file = os.path.join(folder, "run_id")
            run_id = uuid.uuid4().hex[:8]
            if os.path.isfile(id_file):
                with open(id_file) as f:
                    run_id = f.read().strip()
            c = self.cfg
            self.run = wandb.init(project=c.project, name=c.name or self.name,
                                  entity=c.entity, group=c.group, job_type=self.stage or None, dir=self.run_dir,
                                  mode=c.resolved_mode(), config=self.config, id=run_id, resume="allow")
            with open(id_file, "w") as f:
                f.write(run_id)
        return self.run

    def log(self, step: int, scalars: dict) -> None:
        self._open().log(scalars, step=step)

    def summary(self, summary: dict) -> None:
        self._open().summary.update({k: v for k, v in summary.items()
                                     if isinstance(v, (int, float, str)) and not isinstance(v, bool)})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def truncate_metrics(run_dir: str, after_step: int) -> None:
    """On resume, drop metric lines past the checkpoint so the resumed run does not duplicate them."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= after_step]
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(keep)
    os.replace(path + ".tmp", path)


def checkpoint_dir(run_dir: str, step: int) -> str:
    return join(run_dir, "checkpoints", f"step_{step:06d}")


def _step_dirs(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every checkpoints/step_* directory, complete or not, oldest first."""
    root = join(run_dir, "checkpoints")
    if is_uri(run_dir):
        from coati_ray.storage.fs import list_dir

        names = list_dir(root)
    else:
        names = [os.path.basename(p) for p in glob.glob(os.path.join(root, "step_*"))]
    return sorted((int(m.group(1)), join(root, n)) for n in names if (m := STEP_DIR.match(n)))


def is_complete_checkpoint(path: str) -> bool:
    """A local checkpoint with its marker, a remote one with its manifest (both written last)."""
    if is_uri(path):
        from coati_ray.storage.checkpoint import is_complete

        return is_complete(path)
    return os.path.isfile(os.path.join(path, COMPLETE_MARKER))


def latest_checkpoint(run_dir: str) -> Optional[str]:
    """The newest complete step checkpoint under `run_dir/checkpoints`, or None."""
    for _, path in reversed(_step_dirs(run_dir)):
        if is_complete_checkpoint(path):
            return path
    return None


def prune_checkpoints(run_dir: str, keep: int) -> None:
    """Keep the newest `keep` step checkpoints (remote ones too: each removed manifest first)."""
    from coati_ray.storage.checkpoint import remove

    found = _step_dirs(run_dir)
    if is_uri(run_dir):  # an unfinished upload holds no slot (locally it is a step_N.tmp, never matched)
        found = [(step, path) for step, path in found if is_complete_checkpoint(path)]
    for _, path in found[: max(0, len(found) - keep)]:
        remove(path)


# What a run writes into its directory; --overwrite removes these and nothing else (a run directory may
# sit inside a user's own folder, so nothing unknown is ever deleted).
RUN_ARTEFACTS = ("metrics.jsonl", "summary.json", "checkpoints", "tensorboard", "config.yaml", "stall")


def previous_run(run_dir: str) -> list[str]:
    """The results of an earlier run in `run_dir` (metrics, summary, checkpoints), [] when there are none.
    A config.yaml alone (a run that stopped before its first step) is not a result."""
    if is_uri(run_dir):
        from coati_ray.storage.fs import list_dir, list_files

        names = set(list_dir(run_dir))
        return [n for n in ("metrics.jsonl", "summary.json", "checkpoints")
                if n in names and (n != "checkpoints" or list_files(join(run_dir, n)))]
    found = []
    for name in ("metrics.jsonl", "summary.json", "checkpoints"):
        path = os.path.join(run_dir, name)
        if os.path.isfile(path) and os.path.getsize(path) > 0 or os.path.isdir(path) and os.listdir(path):
            found.append(name)
    return found


def check_run_dir(run_dir: str, resume: bool, overwrite: bool, key: str = "--output-dir") -> None:
    """Refuse (CoatiError, one line) to start a run in a directory holding another run's results unless
    it is resumed or explicitly overwritten. Call before anything heavy; `clear_run_dir` does the overwrite."""
    from coati_ray.errors import CoatiError

    if resume and overwrite:
        raise CoatiError("run error: --resume and --overwrite contradict each other; pass one of them")
    found = previous_run(run_dir)
    if found and not (resume or overwrite):
        raise CoatiError(f"run error: '{run_dir}' already holds a run ({', '.join(found)}); pass --resume to continue "
                         f"it, --overwrite to replace it, or choose another {key}")


def clear_run_dir(run_dir: str) -> None:
    """Remove an earlier run's artefacts from `run_dir` (only those: see RUN_ARTEFACTS)."""
    if is_uri(run_dir):
        from coati_ray.storage.fs import delete

        for name in RUN_ARTEFACTS:
            delete(join(run_dir, name))
        return
    for name in RUN_ARTEFACTS:
        path = os.path.join(run_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
