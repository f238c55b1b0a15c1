"""Where a robot run's act() time goes: `python -m planners.realtime` with act()'s parts and
Python's garbage collections timed, the slowest acts listed with the parts inside them, and a
full collection timed before and after gc.freeze at the end. `--unbatched` keeps the workers at
the default scheduling (no SCHED_BATCH) for an A/B, `--idle` puts them under SCHED_IDLE instead.
The figures of docs/benchmarks.md's "The workers under SCHED_BATCH" and of docs/results.md's
walker2d act p99 came from this:

    python docs/results/scripts/act_timing.py [--unbatched | --idle] env=walker2d control_hz=20 latency_ms=10 \
        real_steps=800 pretrained=runs/offline/w2d-m-50k-mopo-fit20-s0 dataset=data/walker2d-medium.hdf5 \
        planner=mopo planner.updates_per_step=0 train_every=1000000 eval_at=[] eval_episodes=1 seed=0 \
        control_priority=null run_dir=<a new directory>

(control_priority=null: the figures were measured under ordinary scheduling, before the command's
default became auto; the planning and learning processes import this file as their main module, so the patches
below, read from the environment, hold in them too).
"""

import gc
import os
import sys
import time

import planners.realtime as realtime
from planners import processes
from worldmodel import threads

POLICIES = {"--unbatched": "ACT_TIMING_UNBATCHED", "--idle": "ACT_TIMING_IDLE"}  # flag -> the variable children read


def _idle() -> bool:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    return True


def _patch_workers() -> None:
    """The workers' scheduling as the environment asks (here and in the spawned workers)."""
    if os.environ.get("ACT_TIMING_UNBATCHED"):
        threads.defer_to_foreground = processes.defer_to_foreground = lambda: False
    if os.environ.get("ACT_TIMING_IDLE"):
        threads.defer_to_foreground = processes.defer_to_foreground = _idle


_patch_workers()

events: list[tuple[float, str, float]] = []  # (start, what, seconds)


def timed(name, function):
    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            events.append((began, name, time.perf_counter() - began))

    return wrapper


def collection(phase, info, began=[0.0]):  # noqa: B006  (the start of the collection under way)
    if phase == "start":
        began[0] = time.perf_counter()
    else:
        events.append((began[0], f"gc{info['generation']}", time.perf_counter() - began[0]))


def report() -> None:
    acts = sorted((e for e in events if e[1] == "act"), key=lambda e: -e[2])
    for part in ("act", "collect", "post", "choose", "gc0", "gc1", "gc2"):
        ms = sorted(1e3 * d for _, name, d in events if name == part)
        if ms:
            print(f"{part}: n {len(ms)}, p50 {ms[len(ms) // 2]:.3f} ms, p99 {ms[int(len(ms) * 0.99)]:.3f}, max {ms[-1]:.1f}")
    for began, _, seconds in acts[:6]:
        inside = [(name, round(1e3 * d, 2)) for t, name, d in events if name != "act" and began <= t <= began + seconds]
        print(f"slow act {1e3 * seconds:.2f} ms: {inside}")
    for label in ("a full collection", "the same after gc.freeze()"):
        if label.startswith("the same"):
            gc.freeze()
        began = time.perf_counter()
        gc.collect()
        print(f"{label}: {1e3 * (time.perf_counter() - began):.1f} ms ({len(gc.get_objects())} objects tracked)")


if __name__ == "__main__":
    argv = sys.argv[1:]
    for flag, variable in POLICIES.items():
        if flag in argv:
            argv.remove(flag)
            os.environ[variable] = "1"
    _patch_workers()
    for name in ("act", "_collect", "_choose"):
        setattr(realtime.RealtimeController, name, timed(name.lstrip("_"), getattr(realtime.RealtimeController, name)))
    processes.PlanningProcess.post = timed("post", processes.PlanningProcess.post)
    gc.callbacks.append(collection)
    try:
        realtime.main(argv)
    finally:
        gc.callbacks.remove(collection)
        report()
