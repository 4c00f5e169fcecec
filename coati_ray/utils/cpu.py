"""Placing a process's threads on a node's cores (Linux): pinning them to cores, and their nice
value, for actors that share a node's cores.

On a node where makers and trainers run side by side, the scheduler time-slices whichever threads
are runnable, so the slower stage (the one that sets the pipeline's pace) loses a share of its core
whenever the other stage is busy. Giving each stage its own cores, or the other stage a lower
priority, keeps it near full speed: on the 2-core benchmark machine (39M llama, async PPO), 1 maker
pinned to core 0 and the trainers to core 1 take the job from 0.76 to 0.89 of its physical bound;
2 makers with the trainers at nice 19 reach 0.995, against 0.94 without (benchmarks/RESULTS.md,
section 2).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence


def available_cores() -> set[int]:
    """The cores this process may run on (its affinity mask, which a container or taskset may narrow)."""
    if not hasattr(os, "sched_getaffinity"):
        from coati_ray.errors import ConfigError

        raise ConfigError("config error: cpu_cores: pinning threads to cores needs Linux (sched_setaffinity); "
                          "leave cpu_cores unset on this platform")
    return set(os.sched_getaffinity(0))


def check_cores(cores: Sequence[int], available: set[int], key: str) -> None:
    """Raise one line naming `key` when `cores` asks for a core outside `available`. Only the node an
    actor lands on knows its cores, so this runs in the actor, first thing, before any model loads;
    as a ConfigError it reaches the launcher as that one line."""
    from coati_ray.errors import ConfigError

    missing = sorted(set(cores) - available)
    if missing:
        raise ConfigError(f"config error: {key}: core(s) {missing} do not exist on the node the actor runs on "
                          f"(it has cores {sorted(available)}); list that node's cores, or leave it unset")


def _each_thread(apply) -> None:
    """Call apply(tid) on every thread of this process, listing /proc/self/task again until no thread is
    new (one started meanwhile by a thread not yet handled); a thread that ended since is skipped."""
    done: set[str] = set()
    while True:
        new = set(os.listdir("/proc/self/task")) - done
        if not new:
            return
        for tid in new:
            try:
                apply(int(tid))
            except ProcessLookupError:
                pass
        done |= new


def pin_threads(cores: Optional[Sequence[int]], key: str = "cpu_cores") -> Optional[list[int]]:
    """Pin every thread this process has to `cores`; threads started later inherit the mask from the
    thread that starts them, which is pinned too. None: leave scheduling to the OS. Returns the cores
    pinned to (None when nothing was done).

    Linux applies affinity per thread, so pinning only the process id would leave the threads that
    compute (torch's, Ray's executor threads) free: each of /proc/self/task is pinned instead."""
    if not cores:
        return None
    check_cores(cores, available_cores(), key)
    wanted = sorted(set(cores))
    _each_thread(lambda tid: os.sched_setaffinity(tid, wanted))
    return wanted


def lower_priority(nice: int, key: str = "nice") -> Optional[int]:
    """Give every thread of this process the Linux nice value `nice` (1..19; 0: leave it), or keep a
    thread's own when that is higher already. Threads started later inherit it from the thread that
    starts them. Returns the nice value set (None when nothing was done).

    Raising nice needs no privilege; lowering it does, so a thread already nicer keeps its value. Ray
    starts an actor's compute threads at nice 15 (its worker niceness): in an actor, only 16-19 change
    anything. Where makers and trainers share cores, trainers at 19 against makers at 15 get a core both
    want in CFS weights 15 : 36 (about 30 : 70) and still use every cycle the makers leave: the stage that
    sets the pace (the makers, usually) keeps most of its cores without pinning either stage to a fixed
    share of them. Like affinity, nice is per thread on Linux, so each of /proc/self/task is set."""
    if not nice:
        return None
    if not os.path.isdir("/proc/self/task"):
        from coati_ray.errors import ConfigError

        raise ConfigError(f"config error: {key}: a per-thread nice value needs Linux; leave {key} at 0 on "
                          "this platform")
    _each_thread(lambda tid: os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid))))
    return nice


def place_threads(cores: Optional[Sequence[int]], nice: int, prefix: str) -> None:
    """An actor's first step: pin its threads to `cores` and set their nice value, the config keys
    being `<prefix>.cpu_cores` and `<prefix>.nice` (for the one line an error gives)."""
    pin_threads(cores, f"{prefix}.cpu_cores")
    lower_priority(nice, f"{prefix}.nice")
