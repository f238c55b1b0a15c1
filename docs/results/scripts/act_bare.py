"""act() at 20 Hz with nothing else in the control process: a MOPO planner (its policy's plans through
an unfitted model, as fast as a trained one's) in a planning process, observations from a random
walk; no simulated robot, no learner, no transition log. `spin` adds a Python thread busy 1 ms in
every 5 (as a robot driver or a simulation might be); `profile` prints cProfile's table of the
act() calls; `fifo` runs the loop under SCHED_FIFO (RealtimeConfig(priority=50)). Prints act()'s
latency over the last 1,000 of 1,300 calls. Run it alone (pause other jobs):

    python docs/results/scripts/act_bare.py [spin] [profile] [fifo]
"""

import cProfile
import pstats
import sys
import threading
import time
import warnings

import torch

from planners import MOPO, MOPOConfig
from planners.realtime import RealtimeConfig, RealtimeController
from worldmodel import EnsembleDynamics, make_env

PERIOD_S, CALLS, WARMUP = 0.05, 1300, 300


def busy() -> None:
    """1 ms of Python in every 5."""
    while True:
        began = time.perf_counter()
        while time.perf_counter() - began < 0.001:
            pass
        time.sleep(0.004)


def main() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", "planning with a model that was never fitted")
    spin, profiler = "spin" in sys.argv[1:], cProfile.Profile() if "profile" in sys.argv[1:] else None
    priority = 50 if "fifo" in sys.argv[1:] else None
    spec = make_env("hopper", seed=0).task_spec
    model = EnsembleDynamics(spec.obs_dim, spec.act_dim, termination_fn=spec.termination_fn)
    planner = MOPO(model, spec, MOPOConfig(penalty=2.5, rollout_length=5))
    rest = (spec.action_low + spec.action_high) / 2
    controller = RealtimeController(planner, spec, RealtimeConfig(control_hz=1 / PERIOD_S, delay_ms=10, worker="process",
                                                                     priority=priority),
                                    safe_action=rest)  # fmt: skip
    if spin:
        threading.Thread(target=busy, daemon=True).start()
    seconds = []
    with controller:
        obs, due = torch.zeros(spec.obs_dim), time.monotonic()
        for _ in range(CALLS):
            due += PERIOD_S
            time.sleep(max(0.0, due - time.monotonic()))
            obs = obs + 0.01 * torch.randn(spec.obs_dim)
            began = time.perf_counter()
            if profiler is not None:
                profiler.runcall(controller.act, obs, time.monotonic() - 0.01)
            else:
                controller.act(obs, time.monotonic() - 0.01)
            seconds.append(time.perf_counter() - began)
        stats = controller.stats()
    ms = sorted(1e3 * s for s in seconds[WARMUP:])
    print(f"{'with a busy thread' if spin else 'bare'}{' under SCHED_FIFO' if priority else ''}: act p50 {ms[len(ms) // 2]:.3f} ms, p99 {ms[int(len(ms) * 0.99)]:.3f}, "
          f"max {ms[-1]:.2f}; fresh {stats['fresh_rate']:.3f}; plan p50 {stats['plan_latency_p50_ms']:.2f} ms")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()
