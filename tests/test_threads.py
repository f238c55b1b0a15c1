"""worldmodel.threads: a thread count that never oversubscribes the cores a process may use."""

import os
import subprocess
import sys

import pytest
import torch

from worldmodel import threads


@pytest.mark.skipif(threads.available_cores() < 2, reason="needs 2 cores to tell a count from the default")
def test_a_fixed_count_sets_torch_threads():
    try:  # (the suite runs at 1 thread: 2 is a change torch must see)
        assert threads.set_threads(2) == 2 and torch.get_num_threads() == 2
        assert threads.current() == {"mode": "fixed", "threads": 2, "available_cores": threads.available_cores()}
    finally:
        threads.set_threads(1)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("bad, message", [
    (0, r"whole number >= 1, got 0"), ("two", r"got 'two'"), (1.5, r"got 1.5"), (True, r"got True"),
    (10_000, r"threads=10000, but this process may use \d+ core"),
])  # fmt: skip
def test_bad_counts_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        threads.resolve_threads(bad)


def _in_subprocess(code: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | env
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True).stdout


def test_available_cores_follow_the_cpu_affinity():
    code = "import os; os.sched_setaffinity(0, {0}); from worldmodel import threads; print(threads.available_cores())"
    assert _in_subprocess(code).strip() == "1"


@pytest.mark.parametrize("omp", ["1", "2"])
def test_auto_honours_an_explicit_omp_num_threads(omp):
    code = ("import torch; from worldmodel import threads; n = threads.set_threads('auto'); "
            "print(n, threads.current()['mode'], torch.get_num_threads())")  # fmt: skip
    assert _in_subprocess(code, OMP_NUM_THREADS=omp).split() == [omp, "fixed", omp]


# In a fresh process: `before` the busy process starts, then `after` (a second later); prints the count used.
BESIDE_A_BUSY_PROCESS = """
import subprocess, sys, time
from worldmodel import threads
{before}
burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
time.sleep(threads.ADAPT_EVERY_S + 0.3)
{after}
burner.kill()
print(n, threads.current()["mode"])
"""


@pytest.mark.skipif(threads.available_cores() < 2, reason="needs 2 cores to see another process take one")
@pytest.mark.parametrize("before, after", [
    ("", "n = threads.set_threads('auto')"),  # starting beside a busy process: the cores it leaves
    ("threads.set_threads('auto')", "n = threads.adapt()"),  # a busy process appears: adapt() gives a core up
])  # fmt: skip
def test_auto_leaves_the_cores_another_process_keeps_busy(before, after):
    used, mode = _in_subprocess(BESIDE_A_BUSY_PROCESS.format(before=before, after=after)).split()
    assert int(used) <= threads.available_cores() - 1 and mode == "auto"


def test_auto_follows_the_load_as_it_comes_and_goes(monkeypatch):
    """set_threads('auto') on an idle machine takes every core; adapt() gives one up while another
    process keeps a core busy and takes it back when it stops (the load read from a fake /proc,
    on a clock of the test's own, so a busy machine cannot skew it)."""
    import types

    clock = {"now": 1000.0}
    load = {"others": 0.0, "busy": 0.0, "at": clock["now"]}

    def ticks():  # busy ticks of our cores: the others' share of the time since the last read
        load["busy"] += load["others"] * (clock["now"] - load["at"]) * threads._CLOCK_TICKS
        load["at"] = clock["now"]
        return load["busy"], 0

    def wait(seconds):
        clock["now"] += seconds

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "time", types.SimpleNamespace(monotonic=lambda: clock["now"], sleep=wait))
    monkeypatch.setattr(threads, "_cpu_ticks", ticks)
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    for name in ("auto", "count", "_last"):
        monkeypatch.setattr(threads._BUDGET, name, getattr(threads._BUDGET, name))
    before = torch.get_num_threads()
    try:
        assert threads.set_threads("auto") == 4 and threads.current()["mode"] == "auto"
        for others, expected in ((1.0, 3), (2.5, 1), (0.0, 4)):
            load["others"] = others
            wait(0.5 * threads.ADAPT_EVERY_S)
            assert threads.adapt() == threads._BUDGET.count  # (not re-read within ADAPT_EVERY_S)
            wait(threads.ADAPT_EVERY_S)
            assert threads.adapt() == expected == torch.get_num_threads(), others
    finally:
        torch.set_num_threads(before)


def test_the_target_leaves_cores_that_others_use():
    budget = threads._Budget()
    cores = threads.available_cores()
    assert budget.target(0.0) == cores and budget.target(0.1) == cores  # system noise is not a job
    assert budget.target(1.0) == max(1, cores - 1) and budget.target(99.0) == 1


def test_under_a_quota_smaller_than_the_affinity_set_others_count_against_the_quota(monkeypatch):
    """A 2-CPU quota on a 16-core host: another job's 2 busy cores leave this one 1 thread, not 2."""
    monkeypatch.setattr(threads, "_affinity", lambda: set(range(16)))
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 2.0)
    budget = threads._Budget()
    assert threads.available_cores() == 2 and budget.target(0.0) == 2 and budget.target(2.0) == 1


def test_a_thread_with_its_own_count_is_left_alone_by_adapt(monkeypatch):
    """A learning or planning thread fixed at n keeps n when the fits inside it call adapt()."""
    import threading

    monkeypatch.setattr(threads._BUDGET, "auto", True)  # (the process: auto, and the machine idle)
    monkeypatch.setattr(threads._BUDGET, "_last", (0.0, 0, 0))
    monkeypatch.setattr(threads._Budget, "others_busy", lambda self: 0.0)
    monkeypatch.setattr(threads._Budget, "target", lambda self, others: 2)
    monkeypatch.setattr(threads._BUDGET, "count", torch.get_num_threads())
    seen = []

    def learner():
        threads.fix_this_thread(1)
        for _ in range(3):
            seen.append((threads.adapt(), torch.get_num_threads()))

    worker = threading.Thread(target=learner)
    worker.start()
    worker.join()
    assert seen == [(1, 1)] * 3 and getattr(threads._FIXED, "count", None) is None  # (this thread is not fixed)


@pytest.mark.skipif(sys.platform != "linux", reason="Linux's SCHED_FIFO")
def test_run_realtime_raises_the_calling_thread_alone_and_restores_it():
    """The thread runs under SCHED_FIFO at the priority; neither a process nor a thread it starts
    does (SCHED_RESET_ON_FORK), nor the process's other threads; asked again for a priority it
    has, it is left alone; restore() puts it back."""
    import threading

    seen, main = {}, threading.get_native_id()
    policy = os.sched_getscheduler(main)

    def control_loop():
        tid = threading.get_native_id()
        seen["before"] = os.sched_getscheduler(tid)
        try:
            restore = threads.run_realtime(7)
        except PermissionError:
            seen["refused"] = True
            return
        seen["during"] = (os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK, os.sched_getparam(tid).sched_priority)
        seen["child"] = subprocess.run([sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
                                       capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        started = threading.Thread(target=lambda: seen.setdefault("thread", os.sched_getscheduler(0)))
        started.start()
        started.join()
        seen["main"] = os.sched_getscheduler(main)
        threads.run_realtime(5)()  # (already above 5: left as it is, and its restore changes nothing)
        seen["nested"] = os.sched_getparam(tid).sched_priority
        restore()
        seen["after"] = os.sched_getscheduler(tid)

    thread = threading.Thread(target=control_loop)
    thread.start()
    thread.join()
    if seen.get("refused"):
        pytest.skip("this user may not use SCHED_FIFO")
    assert seen["during"] == (os.SCHED_FIFO, 7) and seen["nested"] == 7
    assert seen["child"] == str(os.SCHED_OTHER) and seen["thread"] == os.SCHED_OTHER and seen["main"] == policy
    assert seen["after"] == seen["before"]


@pytest.mark.parametrize("bad", [0, 100, True, 2.0])
def test_run_realtime_refuses_a_priority_outside_1_to_99(bad):
    with pytest.raises(ValueError, match="integer in 1-99"):
        threads.run_realtime(bad)


def test_a_user_not_allowed_real_time_priorities_is_told_what_to_do(unprivileged):
    """An ordinary user with no rtprio allowance gets a PermissionError naming the ways to allow it."""
    out, _ = unprivileged("", "try:\n    threads.run_realtime(5)\nexcept PermissionError as e:\n    print(e)")
    assert "is not allowed to this user" in out and "CAP_SYS_NICE" in out and "rtprio 5" in out
