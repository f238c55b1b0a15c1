"""How many CPU threads a process computes with, so that jobs sharing a machine never oversubscribe it.

torch's default takes every core whoever else is running, and its OpenMP threads spin while they
wait for each other: beside one busy core, a 2-thread model fit ran 3-11x slower than on 1 thread.
`set_threads("auto")` (the run command's default, `threads=auto`) starts from the cores this
process may use (CPU affinity, capped by its cgroup CPU quota) minus those other processes keep
busy, and `adapt()`, called at safe points of a run (every step, every fit minibatch), follows the
load as other jobs come and go. `set_threads(n)` fixes the count at n. `defer_to_foreground()`
makes a background worker (a real-time controller's planner or learner) yield to the thread it
shares a core with instead of preempting it on waking; `run_realtime(priority)` does the opposite
for a control loop's thread (SCHED_FIFO).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from worldmodel.allocator import keep_freed_memory

_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
ADAPT_EVERY_S = 1.0  # how often adapt() re-reads the load
BUSY_CORE = 0.2  # others using more than this much of a core take it (system noise stays below)


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by its cgroup CPU quota (at least 1)."""
    cores = len(_affinity()) if _affinity() else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(cores, 1)


def resolve_threads(threads: int | str | None) -> int | None:
    """A fixed count for `threads` (an int >= 1, or its string), or None for "auto"/None.

    More threads than available cores is refused: each extra thread only waits for a core.
    """
    if threads is None or threads == "auto":
        return None
    if isinstance(threads, bool) or (isinstance(threads, float) and not threads.is_integer()):
        count = None
    else:
        try:
            count = int(threads)
        except (TypeError, ValueError):
            count = None
    if count is None or count < 1:
        raise ValueError(f"threads must be 'auto' or a whole number >= 1, got {threads!r}")
    if count > available_cores():
        raise ValueError(f"threads={count}, but this process may use {available_cores()} core(s) "
                         "(CPU affinity and cgroup quota): more threads would only wait for each other")  # fmt: skip
    return count


class _Budget:
    """The process's thread policy: fixed, or auto (following the other processes' load)."""

    def __init__(self):
        self.auto = False
        self.count = torch.get_num_threads()
        self._last: tuple[float, int, int] | None = None  # (wall time, busy ticks of our cores, our ticks)

    def others_busy(self) -> float | None:
        """Cores that other processes kept busy since the last call (None on the first call)."""
        now, busy, ours = time.monotonic(), *_cpu_ticks()
        last, self._last = self._last, (now, busy, ours)
        if last is None or now - last[0] < 1e-3 or busy < 0:
            return None
        return max(0.0, (busy - last[1]) - (ours - last[2])) / _CLOCK_TICKS / (now - last[0])

    def target(self, others: float) -> int:
        """Threads to use when others keep `others` cores (of our affinity set) busy: the available
        cores (affinity, capped by a cgroup quota) less theirs. Under a quota smaller than the
        affinity set, whether the others share it cannot be told, so they count against it: one
        thread too few costs less than one too many."""
        return max(1, available_cores() - math.ceil(others - BUSY_CORE))


_BUDGET = _Budget()
_FIXED = threading.local()  # .count: this thread's own fixed count (fix_this_thread)


def set_threads(threads: int | str | None = "auto") -> int:
    """Set this process's torch threads; returns the count now in use.

    "auto" (or None): the available cores less those other processes keep busy (sampled for
    0.1 s), then adjusted by `adapt()`; an explicit OMP_NUM_THREADS in the environment is
    honoured as a fixed count. An int fixes the count. Every learning command calls this first, so
    it also sets the rest of a computing process up: glibc keeps freed memory
    (`worldmodel.allocator`), and one inter-op thread.
    """
    keep_freed_memory()
    fixed = resolve_threads(threads)
    if fixed is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        fixed = max(1, min(int(os.environ["OMP_NUM_THREADS"]), available_cores()))
    _BUDGET.auto = fixed is None
    if fixed is None:
        _BUDGET.others_busy()
        time.sleep(0.1)
        count = _BUDGET.target(_BUDGET.others_busy() or 0.0)
    else:
        count = fixed
    _apply(count)
    try:
        torch.set_num_interop_threads(1)  # the engine runs no inter-op parallel work
    except RuntimeError:  # settable once, before any inter-op work; it then keeps its value
        pass
    return count


def fix_this_thread(count: int) -> None:
    """This thread computes with `count` threads whatever the process's policy (a planning or
    learning thread beside others in one process): adapt() leaves it alone."""
    _FIXED.count = count
    torch.set_num_threads(count)


def defer_to_foreground() -> bool:
    """Make the calling thread a background one (Linux's SCHED_BATCH): waking up, it waits for the
    scheduler tick instead of preempting the thread on the core, so a planning or learning
    worker woken by a control loop's act() does not take act()'s core in mid-call (a 3 ms policy plan
    that did so made act()'s p99 3-4 ms on 2 cores, docs/benchmarks.md). Threads it starts later
    inherit it. Returns whether it applied (False where the OS has no SCHED_BATCH)."""
    if not hasattr(os, "SCHED_BATCH"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # (0: this thread, on Linux)
    except OSError:
        return False
    return True


def check_priority(priority, name: str = "priority") -> None:
    """Refuse a SCHED_FIFO priority that is not an integer in 1-99 (ValueError naming `name`)."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= 99:
        raise ValueError(f"{name} must be an integer in 1-99 (SCHED_FIFO), got {priority!r}")


def realtime_remedy(priority: int) -> str:
    """What a user does to be allowed SCHED_FIFO at `priority`."""
    return (f"give python CAP_SYS_NICE (root has it, except in a container started without `--cap-add "
            f"SYS_NICE`; or `setcap cap_sys_nice+ep <python>`), or an rtprio limit of at least {priority} "
            f"(/etc/security/limits.conf: `<user> - rtprio {priority}`, then log in again; `ulimit -r {priority}` "
            "where the hard limit allows it); under cgroup v1 real-time group scheduling the cgroup needs a "
            "cpu.rt_runtime_us too (docker run --cpu-rt-runtime)")


def run_realtime(priority: int) -> Callable[[], None]:
    """Run the calling thread under Linux's SCHED_FIFO at `priority` (1-99), as robot control loops
    do: waking up, it takes a core at once from any ordinary thread, and no ordinary thread
    preempts it, so no busy worker process delays it. Neither the threads nor the processes it
    starts inherit it (SCHED_RESET_ON_FORK: they start under ordinary scheduling). A thread already
    under SCHED_FIFO or SCHED_RR at `priority` or above is left as it is. Returns a function that
    puts the thread back under its previous policy (callable from any thread; nothing once the
    thread has ended). Raises PermissionError saying what to do where the user may not, and OSError
    off Linux."""
    check_priority(priority)
    if sys.platform != "linux":
        raise OSError("SCHED_FIFO for one thread is Linux's: leave the priority unset on this OS")
    thread, tid = threading.current_thread(), threading.get_native_id()  # (Linux's calls take a thread's id)
    policy, param = os.sched_getscheduler(tid), os.sched_getparam(tid)
    if policy & ~os.SCHED_RESET_ON_FORK in (os.SCHED_FIFO, os.SCHED_RR) and param.sched_priority >= priority:
        return lambda: None  # (a nested controller, or a thread started under `chrt -f` higher)
    try:
        os.sched_setscheduler(tid, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except PermissionError:
        raise PermissionError(f"SCHED_FIFO priority {priority} is not allowed to this user: "
                              f"{realtime_remedy(priority)}; or leave the priority unset") from None  # fmt: skip

    def restore() -> None:
        if thread.is_alive():  # (an ended thread's id may name another one by now)
            with contextlib.suppress(ProcessLookupError):
                os.sched_setscheduler(tid, policy, param)

    return restore


def check_realtime(priority: int) -> None:
    """Raise what run_realtime(priority) would raise here (tried on a short-lived thread of its own)."""
    failed: list[BaseException] = []

    def attempt() -> None:
        try:
            run_realtime(priority)
        except (OSError, ValueError) as e:
            failed.append(e)

    probe = threading.Thread(target=attempt, name="rt-probe")
    probe.start()
    probe.join()
    if failed:
        raise failed[0]


def realtime_allowed(priority: int) -> bool:
    """Whether run_realtime(priority) would succeed here."""
    try:
        check_realtime(priority)
    except OSError:
        return False
    return True


def adapt() -> int:
    """Under "auto", follow the load: use the cores others leave free (re-read at most once a
    second; cheap to call often). Call from the thread that computes. Returns the count in use
    (a thread's own fixed count, see fix_this_thread)."""
    if (fixed := getattr(_FIXED, "count", None)) is not None:
        return fixed
    if _BUDGET.auto and (_BUDGET._last is None or time.monotonic() - _BUDGET._last[0] >= ADAPT_EVERY_S):
        others = _BUDGET.others_busy()
        if others is not None:
            _apply(_BUDGET.target(others))
    return _BUDGET.count


def current() -> dict:
    """The policy in force: {"mode": "auto" | "fixed", "threads": n, "available_cores": m}."""
    return {"mode": "auto" if _BUDGET.auto else "fixed", "threads": _BUDGET.count, "available_cores": available_cores()}


def _apply(count: int) -> None:
    if count != torch.get_num_threads():
        torch.set_num_threads(count)
    _BUDGET.count = count


def _affinity() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()


def _cgroup_quota() -> float | None:
    """The cgroup's CPU quota in cores (cgroup v2 cpu.max or v1 cfs quota/period), None if unlimited."""
    try:
        if _CGROUP_V2.is_file():
            quota, period = _CGROUP_V2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota_file, period_file = _CGROUP_V1
        if quota_file.is_file() and period_file.is_file():
            quota = int(quota_file.read_text())
            return None if quota <= 0 else quota / int(period_file.read_text())
    except (OSError, ValueError):
        pass
    return None


def _cpu_ticks() -> tuple[int, int]:
    """(busy clock ticks summed over the cores we may use, this process's own CPU ticks); (-1, 0)
    where /proc is not there (adapt() then keeps the count)."""
    try:
        cores = _affinity()
        busy = 0
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *values = line.split()
                if cores and int(name[3:]) not in cores:
                    continue
                user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in values[:8])
                busy += user + nice + system + irq + softirq + steal
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ours = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the full line)
        return busy, ours
    except (OSError, ValueError, IndexError):
        return -1, 0

