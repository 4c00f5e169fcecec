"""The step watchdog: a PPO step that stops making progress ends the run with one line, not a silent hang.

Progress is anything the driver waits on finishing: a maker batch landing, a trainer rank's update, a
weight load. When none does for the bound (watchdog.stall_s, or derived from recent step times), every
actor of the job is pinged; those that do not answer (a synchronous actor stuck inside a call cannot)
are named with the method they are running, from Ray's state API when the cluster serves it (it needs
the dashboard) and from the driver's own record of the calls it sent otherwise. Their Python stacks go
to `<run>/stall/<actor>.txt` through py-spy (installed with ray[default]) for actors on this node.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import deque
from typing import Callable, Optional

import ray

from coati_ray.errors import RunStalled

PING_S = 3.0          # an actor that cannot answer a no-op call this fast is busy or hung
STATE_API_S = 5.0     # Ray's state API may be slow or absent; the report must not hang on it
RECENT_STEPS = 10


class Watchdog:
    def __init__(self, cfg, run_dir: str, workers: Callable[[], dict], activity: Callable[[], dict]):
        """`workers()`: {name: handle} of every actor of the job; `activity()`: {name: what the driver last
        asked it to do, e.g. 'make (batch 12) for 40s'}."""
        self.cfg, self.run_dir, self.workers, self.activity = cfg, run_dir, workers, activity
        self.recent: deque[float] = deque(maxlen=RECENT_STEPS)
        self.step = 0
        self.last_progress = time.monotonic()
        self.where: dict[str, ray.ObjectRef] = {}  # name -> ref of (pid, node id), for the stacks

    def locate(self) -> None:
        """Ask every actor for its pid and node, without waiting: a hung actor cannot answer later, so the
        driver calls this at start-up and whenever the set of processes changed (a maker restarted)."""
        self.where = {name: handle.__ray_call__.remote(_where) for name, handle in self.workers().items()}

    def bound(self) -> float:
        """Seconds without progress that end the run."""
        w = self.cfg
        if w.stall_s is not None:
            return w.stall_s
        return max(w.min_stall_s, w.factor * max(self.recent, default=0.0))

    def begin_step(self, step: int) -> None:
        self.step, self.last_progress = step, time.monotonic()

    def end_step(self, seconds: float) -> None:
        self.recent.append(seconds)

    def wait(self, refs: list, timeout: Optional[float] = None) -> list:
        """ray.wait for one of `refs`, ending the run if nothing has finished for the bound; [] once `timeout`
        seconds pass without one (the caller has something to retry)."""
        give_up = None if timeout is None else time.monotonic() + timeout
        while True:
            left = self.last_progress + self.bound() - time.monotonic()
            if left <= 0:
                raise self.stalled()
            if give_up is not None:
                left = min(left, max(0.0, give_up - time.monotonic()))
            done, _ = ray.wait(refs, num_returns=1, timeout=left)
            if done:
                self.last_progress = time.monotonic()
                return done
            if give_up is not None and time.monotonic() >= give_up:
                return []

    def wait_all(self, refs: list) -> None:
        """Every one of `refs` finished, each counting as progress (their errors are left to the caller)."""
        pending = list(refs)
        while pending:
            done = self.wait(pending)
            pending = [r for r in pending if r not in done]

    # ------------------------------------------------------------------ the report

    def stalled(self) -> RunStalled:
        bound = self.bound()
        workers = self.workers()
        silent = unresponsive(workers)
        running = running_methods(workers, silent)
        record = self.activity()
        parts = []
        for name in silent:
            doing = running.get(name) or record.get(name) or "no call from the driver"
            parts.append(f"{name} ({doing})")
        stacks = self.write_stacks({name: workers[name] for name in silent}) if self.cfg.stacks and silent else None
        how = "derived from recent steps; set watchdog.stall_s" if self.cfg.stall_s is None else "watchdog.stall_s"
        line = (f"run error: step {self.step + 1} made no progress for {bound:.0f}s ({how}); "
                + (f"not responding: {', '.join(parts)}" if parts else "every actor answers, so the driver waits "
                   "on work that never finishes (a lost object or a dead node?)"))
        if stacks:
            line += f"; their Python stacks: {stacks}"
        line += ("; raise watchdog.stall_s if a step can legitimately take this long, else see the actors' logs "
                 "(`ray logs actor --id <id>`, or the dashboard's Actors page)")
        return RunStalled(line)

    def write_stacks(self, workers: dict) -> Optional[str]:
        """py-spy dumps of `workers` that run on this node into <run>/stall/; the directory, or None."""
        spy = shutil.which("py-spy") or _beside_python("py-spy")
        if spy is None:
            return None
        info = self.processes(workers)
        here = ray.get_runtime_context().get_node_id()
        out = os.path.join(self.run_dir, "stall")
        os.makedirs(out, exist_ok=True)
        wrote = False
        for name, (pid, node) in info.items():
            if node != here or pid is None:
                continue
            try:
                r = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
                text = r.stdout if r.returncode == 0 else f"py-spy could not read pid {pid}: {r.stderr.strip()}"
            except (OSError, subprocess.TimeoutExpired) as e:
                text = f"py-spy could not read pid {pid}: {e}"
            with open(os.path.join(out, f"{name}.txt"), "w", encoding="utf-8") as f:
                f.write(text)
            wrote = True
        return out if wrote else None


    def processes(self, workers: dict) -> dict[str, tuple[Optional[int], Optional[str]]]:
        """{name: (pid, node id)} of `workers` as they answered `locate` (None, None when they never did)."""
        out = {}
        for name in workers:
            ref = self.where.get(name)
            found = ref is not None and ray.wait([ref], timeout=0)[0]
            try:
                out[name] = ray.get(ref) if found else (None, None)
            except ray.exceptions.RayError:
                out[name] = (None, None)
        return out


def _where(worker) -> tuple[int, str]:
    """Run inside an actor (through __ray_call__): its process id and node id."""
    return os.getpid(), ray.get_runtime_context().get_node_id()


def unresponsive(workers: dict) -> list[str]:
    """Names of `workers` that do not answer a no-op call within PING_S (busy in a call, hung, or dead)."""
    refs = {handle.__ray_ready__.remote(): name for name, handle in workers.items()}
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=PING_S)
    answered = set()
    for ref in ready:
        try:
            ray.get(ref)
            answered.add(refs[ref])
        except ray.exceptions.RayError:
            pass
    return [name for name in workers if name not in answered]


def _state_api():
    """Ray's state API `list_tasks` and the dashboard's address, or None when the cluster has no dashboard
    (the state API is served by it)."""
    try:
        from ray._private import ray_constants
        from ray.experimental import internal_kv
        from ray.util.state import list_tasks

        url = internal_kv._internal_kv_get(ray_constants.DASHBOARD_ADDRESS,
                                           namespace=ray_constants.KV_NAMESPACE_DASHBOARD)
        if not url:
            return None
        return list_tasks, f"http://{url.decode()}"
    except Exception:  # an older or newer Ray without these internals: fall back to the driver's record
        return None


def running_methods(workers: dict, silent: list[str]) -> dict[str, str]:
    """{name: 'running ExperienceMaker.make'} for the `silent` actors, with what each waits on when that is a
    call into another of `workers` ('waiting on ReplayBuffer.get'), from Ray's state API ({} when unavailable)."""
    api = _state_api()
    if api is None or not silent:
        return {}
    list_tasks, url = api
    by_id = {handle._actor_id.hex(): name for name, handle in workers.items()}
    try:
        tasks = list_tasks(address=url, filters=[("state", "=", "RUNNING")], timeout=STATE_API_S,
                           raise_on_missing_output=False)
    except Exception:
        return {}
    running: dict[str, list[str]] = {}
    owner = {}  # task id -> the actor name running it
    for t in tasks:
        name = by_id.get(t.actor_id or "")
        if name is not None:
            running.setdefault(name, []).append(t.func_or_class_name or t.name)
            owner[t.task_id] = name
    # A call made from inside an actor may name as its parent the actor's creation task (16 f's, then the
    # actor id) rather than the method running: either way it names the caller.
    owner.update({"f" * 16 + actor_id: name for actor_id, name in by_id.items()})
    waiting: dict[str, list[str]] = {}
    for t in tasks:
        parent = owner.get(t.parent_task_id or "")
        if parent is not None and by_id.get(t.actor_id or "") != parent:
            waiting.setdefault(parent, []).append(t.func_or_class_name or t.name)
    out = {}
    for name in silent:
        if name in running:
            out[name] = "running " + ", ".join(running[name]) + (
                f", waiting on {', '.join(waiting[name])}" if name in waiting else "")
    return out


def _beside_python(tool: str) -> Optional[str]:
    """A console script installed in this interpreter's environment (a venv not on PATH)."""
    import sys

    path = os.path.join(os.path.dirname(sys.executable), tool)
    return path if os.path.isfile(path) else None
