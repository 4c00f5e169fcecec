"""Pinning an actor's threads to cores and niceing them (coati_ray/utils/cpu.py): every thread, those
started before and after, and a core the node lacks refused in one line. Run in a child process, so
that pytest's own threads stay unpinned and at their priority."""

import ast
import os
import subprocess
import sys

import pytest

from coati_ray.utils.cpu import check_cores, lower_priority, pin_threads

CHILD = r"""
import os, sys, threading, time
from coati_ray.utils.cpu import pin_threads
before = threading.Thread(target=time.sleep, args=(2,)); before.start()
time.sleep(0.1)
pinned = pin_threads([int(sys.argv[1])])
after = threading.Thread(target=time.sleep, args=(1,)); after.start()
time.sleep(0.1)
masks = {tuple(sorted(os.sched_getaffinity(int(t)))) for t in os.listdir("/proc/self/task")}
print(len(os.listdir("/proc/self/task")), sorted(masks), pinned)
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux affinity and 2 cores, so that pinning to one of them narrows the mask")
def test_every_thread_is_pinned_those_started_before_and_after():
    core = max(os.sched_getaffinity(0))  # the last allowed core, so that the mask really narrows on >1 core
    out = subprocess.run([sys.executable, "-c", CHILD, str(core)], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.split(maxsplit=1)
    threads, rest = int(out[0]), out[1]
    assert threads >= 3  # main, the one started before, the one started after
    assert rest.strip() == f"[({core},)] [{core}]"


def test_a_core_the_node_lacks_is_refused_in_one_line():
    from coati_ray.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        check_cores([0, 4096], {0, 1}, "maker.cpu_cores")
    msg = str(e.value)
    assert "\n" not in msg and "maker.cpu_cores" in msg and "[4096]" in msg and "[0, 1]" in msg
    assert pin_threads(None) is None and pin_threads([]) is None  # unset: the OS schedules


NICE_CHILD = r"""
import os, sys, threading, time
os.nice(int(sys.argv[2]))  # the nice value the process starts at
from coati_ray.utils.cpu import lower_priority
before = threading.Thread(target=time.sleep, args=(2,)); before.start()
time.sleep(0.1)
lower_priority(int(sys.argv[1]))
after = threading.Thread(target=time.sleep, args=(1,)); after.start()
time.sleep(0.1)
tids = os.listdir("/proc/self/task")
print(len(tids), sorted({os.getpriority(os.PRIO_PROCESS, int(t)) for t in tids}))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread nice values need Linux")
def test_every_thread_is_niced_those_started_before_and_after():
    base = os.getpriority(os.PRIO_PROCESS, 0)  # the children start here; os.nice counts from it
    if base > 9:
        pytest.skip(f"this process runs at nice {base}: no room above it for the values the test sets")

    def nice_of_threads(asked: int, start: int) -> list:
        out = subprocess.run([sys.executable, "-c", NICE_CHILD, str(asked), str(start)], capture_output=True,
                             text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.split(maxsplit=1)
        assert int(out[0]) >= 3  # main, the one started before, the one started after
        return ast.literal_eval(out[1])

    assert nice_of_threads(base + 5, 0) == [base + 5]
    assert nice_of_threads(base + 5, 10) == [base + 10]  # a thread nicer than asked keeps its value
    assert lower_priority(0) is None  # 0: priorities left as they are
