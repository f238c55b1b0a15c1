"""Real-time control around any planner: planning in the background, `act` in microseconds.

    controller = RealtimeController(planner, spec, RealtimeConfig(control_hz=20), safe_action=rest)
    with controller:                                 # starts the planning thread; stops it on exit
        while robot.running():
            obs, stamp = robot.get_obs()             # a sensor reading and when it was taken
            robot.send_action(controller.act(obs, stamp))

`act` never plans. It hands the observation to the planning thread and returns at once (unless
told to wait, below) the action of the freshest finished plan for the time the action takes
effect (the reading's time plus `delay_ms`): the plan's step k, k being the control periods from
the plan's start to then.
A plan starts where its first action can take effect: its reading's time plus the delay plus the
periods its making takes (measured; at least one), so its first action is executed, from the
state it was planned for (`plan_lead` and `late_plan_rate` in `stats()`); with `wait_ms`, act
waits up to that long for the plan from its own reading, which then starts once the delay has
passed (one period sooner, for robots whose plans take well under a period). In order: a plan finished
since the last call ("fresh"), an older plan shifted further ("shifted"), or the safe action
("fallback") when there is no usable plan, the planner failed or died, or an observation or
plan holds NaN/inf. Every executed action is clipped to the action box and, with `slew`, to a
maximal change per period (actions sent by other means, e.g. random seed actions, go through
`limit` to be held to it too); a `constraint(obs, action) -> bool` hook may veto an action (the
safe one is taken instead, as far towards it as the slew limit allows). With `delay_ms` (sensor + actuator latency) a plan starts from the
state the model predicts once the delay has passed, under the actions already committed. A
watchdog, a thread of its own whatever the worker (so a long plan or a dead planner does not
silence it), calls `on_stale(safe_action)` when neither a finite observation nor an act() (or
limit()) call came for `watchdog_ms` (under a slew limit, each trip a step on towards it); an
act() that comes while on_stale is sending returns after it (up to a period), so the robot is
sent the actions in the order they were slew-limited. Stamps are read on
`clock` (default time.monotonic): give the stamps' own clock where they come from another one.
`swap(model)` replaces the planner's model between two plans (one plan never mixes two).
Plans are made in a thread of this process (`worker="thread"`, the default: any planner) or in
a process of their own (`worker="process"`: a planner that pickles), out of reach of this
process's GIL; `BackgroundLearner` refits in a thread, `planners.processes.LearningProcess` in a
process (with both in processes, the control process only acts and logs: act p99 0.39-0.65 ms
on the simulated hopper on an idle 2-core machine, against 0.38-2.5 ms with threads, one 1,500-step
run each; docs/benchmarks.md). The workers run under SCHED_BATCH (`threads.defer_to_foreground`:
on waking they do not preempt act()), and while a controller runs the objects that existed at
its start are out of the cyclic collector's full passes (`gc.freeze`): those scan only what came
since. With `priority` the thread that starts the controller (it should be the one calling act())
and the watchdog's run under SCHED_FIFO while it runs (`threads.run_realtime`): other processes'
work then does not delay act() (with planning and learning processes on a loaded 2-core machine:
window-median act p99 0.70-0.75 against 11.6-12.5 ms). With a LearningProcess the control
process's planner and agent keep their starting weights (the learning process writes agent.pt
after each refit and at its end), so a controller stopped there is not started again: a new one
from that agent.pt plans with the swaps.
Shapes: O obs dims, A action dims, H plan steps.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import gc
import itertools
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tensordict import TensorDict
from torch import Tensor

from planners.agent import Agent
from planners.base import Planner
from planners.learning import BackgroundLearner, Learner  # noqa: F401  (Learner: the interface, re-exported)
from planners.processes import (LearningProcess, Plan, PlanMaker, PlannerDied, PlanningProcess, PlanResult, Swapper,
                                new_queue, percentile)
from worldmodel import threads
from worldmodel.envs import TaskSpec
from worldmodel.interrupts import EXIT_CODES, StopRequest

SOURCES = ("fresh", "shifted", "fallback")
AUTO_PRIORITY = 50  # control_priority=auto's SCHED_FIFO priority (ros2_control's default for its control thread)
LATENCY_WINDOW = 1_000_000  # act and plan latencies kept (the newest): about 14 hours at 20 Hz
STOP_TIMEOUT_S = 10.0  # how long stop() waits for the planning thread, and for the watchdog
WORKERS = ("thread", "process")


@dataclass
class RealtimeConfig:
    """Timing and safety settings of a RealtimeController."""

    control_hz: float = 20.0
    delay_ms: float = 0.0  # sensor + actuator latency: plans start from the state predicted after it
    max_shift: int | None = None  # a plan serves at most this many periods past its start (None: its length)
    slew: float | None = None  # the largest change of any action dim per control period (None: unlimited)
    watchdog_ms: float | None = None  # no observation nor act()/limit() for this long -> on_stale(safe action) (None: 3 periods)
    deterministic: bool = True  # the plans' mean actions; exploration noise is opt-in
    # act() waits up to this long for the plan from its own reading (0: never waits for it, act takes
    # microseconds): its first action then acts once the delay has passed, planned from one
    # period fresher a state than otherwise. delay_ms + wait_ms must fit in the periods the delay
    # spans (at least one): the answer must reach the robot before it takes effect; the wait is
    # timed from act's call, so leave a margin for the time a reading waits before it (jitter, the loop)
    wait_ms: float = 0.0
    worker: str = "thread"  # where plans are made: "thread" (of this process) or "process" (its own)
    plan_threads: int = 1  # torch threads the planning thread or process uses
    # Python's GIL switch interval while running: act() waits at most about this long for the GIL
    # held by the planning and learning threads (Python's default is 5 ms); None: leave it
    switch_interval_ms: float | None = None
    # SCHED_FIFO priority (1-99) of the thread that starts the controller (the one calling act()) and
    # the watchdog's while it runs (threads.run_realtime: no ordinary thread delays it on waking or
    # preempts it; Linux, and a user allowed real-time priorities); None: leave its scheduling alone
    priority: int | None = None

    def __post_init__(self):
        if not self.control_hz > 0 or self.delay_ms < 0:
            raise ValueError(f"control_hz must be > 0 and delay_ms >= 0, got {self.control_hz}, {self.delay_ms}")
        if self.slew is not None and not self.slew > 0:
            raise ValueError(f"slew must be > 0 or None, got {self.slew}")
        if self.max_shift is not None and self.max_shift < 0:
            raise ValueError(f"max_shift must be >= 0 or None, got {self.max_shift}")
        if self.plan_threads < 1:
            raise ValueError(f"plan_threads must be >= 1, got {self.plan_threads}")
        if self.watchdog_ms is not None and not self.watchdog_ms > 0:
            raise ValueError(f"watchdog_ms must be > 0 or None (3 periods), got {self.watchdog_ms}; a controller "
                             "without on_stale has no watchdog")  # fmt: skip
        if self.worker not in WORKERS:
            raise ValueError(f"worker must be one of {WORKERS}, got {self.worker!r}")
        if self.priority is not None:
            threads.check_priority(self.priority)
        room = max(1, math.ceil(self.delay_ms / 1000 / self.period - 1e-9)) * self.period * 1000 - self.delay_ms
        if not 0 <= self.wait_ms < room + 1e-9:
            raise ValueError(f"wait_ms must be >= 0 and leave the answer time to reach the robot before it takes "
                             f"effect: delay_ms + wait_ms <= the periods the delay spans ({room:.1f} ms to wait at "
                             f"most with delay_ms={self.delay_ms:g} at {self.control_hz:g} Hz), got {self.wait_ms:g}")

    @property
    def period(self) -> float:
        return 1.0 / self.control_hz


_running = 0  # controllers started and not stopped in this process (see _freeze_heap)
_running_lock = threading.Lock()


def _freeze_heap() -> None:
    """At the first controller's start: collect, then freeze every object there is out of the
    cyclic collector's full passes (gc.freeze; ~500k objects in a robot run, whose full collection
    took 218 ms, 4 periods at 20 Hz), so a full pass in the loop scans only what came since."""
    global _running
    with _running_lock:
        _running += 1
        if _running == 1:
            gc.collect()
            gc.freeze()


def _thaw_heap() -> None:
    """At the last running controller's stop: the frozen objects are the collector's again."""
    global _running
    with _running_lock:
        _running -= 1
        if _running == 0:
            gc.unfreeze()


class RealtimeController:
    """A planner behind a fixed-rate `act` (see the module docstring)."""

    def __init__(self, planner: Planner, spec: TaskSpec, config: RealtimeConfig | None = None,
                 safe_action: Tensor | None = None, constraint: Callable[[Tensor, Tensor], bool] | None = None,
                 on_stale: Callable[[Tensor], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 version: int = 0):  # fmt: skip
        self.planner, self.spec = planner, spec
        self.config = cfg = config or RealtimeConfig()
        self.low, self.high = spec.action_low.float(), spec.action_high.float()
        middle = (self.low + self.high) / 2
        self.safe_action = (middle if safe_action is None else torch.as_tensor(safe_action).float()).clamp(self.low, self.high)
        if self.safe_action.shape != self.low.shape or not torch.isfinite(self.safe_action).all():
            raise ValueError(f"safe_action must be finite, of shape {list(self.low.shape)}, got {self.safe_action} "
                             "(an action box without finite bounds has no middle to default to: give one)")  # fmt: skip
        self.constraint, self.on_stale, self.clock = constraint, on_stale, clock
        self.watchdog_s = (cfg.watchdog_ms / 1000) if cfg.watchdog_ms is not None else 3 * cfg.period
        self.ahead = math.ceil(cfg.delay_ms / 1000 / cfg.period - 1e-9)  # control periods the delay spans
        # its lock is held for a whole plan (swaps happen between plans); with a planning process
        # its queue carries them there
        self.swapper = Swapper(planner, version, queue=new_queue() if cfg.worker == "process" else None)
        self._maker = PlanMaker(planner, cfg.period, self.ahead, cfg.deterministic, cfg.max_shift, self.safe_action,
                                cfg.wait_ms / 1000)  # fmt: skip
        self._process: PlanningProcess | None = None  # worker="process", while running
        self._wake = threading.Condition()
        self._latest: tuple[Tensor, float, int, float, int] | None = None  # (obs, stamp, serial, posted, episode): to plan from
        self._obs_serial = 0
        self._plans: tuple[Plan | None, Plan | None] = (None, None)  # (the one before, the newest)
        self._plans_lock = threading.Lock()  # (a plan of an ended episode never becomes current)
        self._answered = threading.Condition()  # with wait_ms: notified when a reading was planned from
        self._answered_reading: tuple[float, int] | None = None  # (time, episode) of the reading planned from last
        self._episode = 0  # episodes begun (act(first=True)); a plan from an earlier one is dropped
        self._used_serial = -1
        self._last_action: Tensor | None = None
        self._action_lock = threading.Lock()  # (act's thread and the watchdog's both send actions)
        self._last_obs_time: float | None = None  # the watchdog is armed by the first observation
        self._last_act_time: float | None = None
        self._loop_calls = 0  # act() and limit() calls: a watchdog trip they overtake sends nothing
        self._stale_done = threading.Event()  # cleared while on_stale sends (act() and limit() return after it)
        self._stale_done.set()
        self._waited_trip = 0  # the last trip an act() or limit() waited for (one wait a trip: a hung driver
        # must not cost every later call a period)
        self._stopping = False
        self._generation = 0  # start()s so far: each planning thread serves its own
        self._thread: threading.Thread | None = None  # the planning thread (worker="thread")
        self._watcher: threading.Thread | None = None  # the watchdog's thread
        self._watcher_stop = threading.Event()
        self._restore_priority: Callable[[], None] | None = None  # (with `priority`: the starting thread's policy back)
        self._raised_thread: int | None = None  # (with `priority`: the native id of the thread start() raised)
        self._warned_thread = False
        self._switch_interval: float | None = None  # (with switch_interval_ms: Python's, to restore)
        self._frozen = False  # (start() froze the heap; the teardown thaws it)
        self.error: BaseException | None = None  # what killed the planning thread or process, if anything
        self.last_planner_error: Exception | None = None  # the last plan that failed (and was skipped)
        self.counts = dict.fromkeys(SOURCES, 0) | {"vetoed": 0, "nonfinite_obs": 0, "bad_stamps": 0, "nonfinite_plans": 0,
                                                    "planner_errors": 0, "deadline_misses": 0, "watchdog_trips": 0,
                                                    "plans": 0, "late_plans": 0, "skipped_posts": 0,
                                                    "wait_timeouts": 0, "constraint_errors": 0,
                                                    "watchdog_errors": 0, "watchdog_overlaps": 0}  # fmt: skip
        # (bounded: a robot left running for days; the newest LATENCY_WINDOW of each)
        self.act_latency_s: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self.plan_latency_s: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self.watchdog_error: Exception | None = None  # the last exception on_stale raised (the watchdog goes on)

    # ---------------------------------------------------------------- the control side

    def act(self, obs: Tensor, stamp: float | None = None, first: bool = False) -> Tensor:
        """The action to execute now for obs [O] taken at time `stamp` (default: now): [A].
        `first`: obs begins an episode (after a reset): the plans made before are dropped and the
        planner's warm start is reset; the safe action until a plan from this episode comes, and
        the slew limit steps from the safe action (the robot is at rest after its reset)."""
        began = time.perf_counter()
        if self._watcher is None:
            raise RuntimeError("act() on a controller that is not running: `with controller:` (or controller.start()) "
                               "starts its planning worker and watchdog")  # fmt: skip
        obs = torch.as_tensor(obs).float()
        if obs.shape != (self.spec.obs_dim,):  # (a bug in the loop, not a sensor glitch: NaN readings fall back)
            raise ValueError(f"act() takes one observation of shape [{self.spec.obs_dim}], got {list(obs.shape)}")
        if self._raised_thread is not None and not self._warned_thread and threading.get_native_id() != self._raised_thread:
            self._warned_thread = True
            print("act() is called from another thread than the one that started the controller: `priority` "
                  "raised that one, not this; start the controller from the thread that calls act()", file=sys.stderr)
        now = self.clock()
        stamp = now if stamp is None else float(stamp)
        good_stamp = math.isfinite(stamp) and stamp <= now + self.config.period  # (this clock's, not from the future)
        if first:
            with self._plans_lock:
                self._episode += 1
                self._plans = (None, None)
            with self._action_lock:  # the reset left the robot at rest: the slew limit steps on from the safe action
                self._last_action = self.safe_action
        self._count_deadline(stamp)
        self._last_act_time = now  # (the watchdog stays quiet while act() answers, fallbacks included)
        self._loop_calls += 1
        finite = posted = good_stamp and _all_finite(obs)
        if finite:
            self._last_obs_time = now
            if self._process is not None:
                self._collect()
                if not self._process.post(obs, stamp, self._last_action, self._episode):
                    self.counts["skipped_posts"] += 1
                    posted = False
            else:
                with self._wake:
                    self._obs_serial += 1
                    self._latest = (obs, stamp, self._obs_serial, time.monotonic(), self._episode)
                    self._wake.notify()
        else:
            self.counts["nonfinite_obs" if good_stamp else "bad_stamps"] += 1
            if not good_stamp and self.counts["bad_stamps"] == 1:
                print(f"act(): stamp {stamp} is not finite or lies ahead of the controller's clock ({now:.3f}): the "
                      "safe action. Stamps from another clock (time.time, a ROS clock) need RealtimeController("
                      "clock=<that clock>)", file=sys.stderr)  # fmt: skip
        if posted and self.config.wait_ms > 0:
            self._await_answer(stamp, began + self.config.wait_ms / 1000)
        action, source, late = self._choose(stamp) if finite else (self.safe_action, "fallback", False)
        if self.constraint is not None and finite:  # (outside the lock: a hook that hangs must not stop the watchdog)
            with self._action_lock:
                reference, limited = self._last_action, self._limit(action)
            allowed = self._allowed(obs, limited)
            with self._action_lock:  # the action the hook approved, unless another was sent meanwhile (a watchdog trip)
                if allowed and self._last_action is reference:
                    action = self._last_action = limited
                else:
                    self.counts["vetoed"] += not allowed
                    action = self._last_action = self._limit(self.safe_action)
                    source = "fallback"
        else:
            with self._action_lock:  # (the watchdog's thread sends actions too: each is limited around the last)
                action = self._last_action = self._limit(action)
        self.counts[source] += 1
        self.counts["late_plans"] += late and source == "fresh"  # (a plan vetoed or overtaken never ran late)
        self._after_stale_send()
        self.act_latency_s.append(time.perf_counter() - began)
        return action

    def _after_stale_send(self) -> None:
        """Wait (up to a control period, once a trip) for a safe action the watchdog is sending, so
        the action returned (slew-limited around that one) reaches the robot after it, not before:
        sent the other way round, the robot would hold the safe action while the next one is limited
        around this one. Counted as `watchdog_overlaps`."""
        if not self._stale_done.is_set() and self._waited_trip != self.counts["watchdog_trips"]:
            self._waited_trip = self.counts["watchdog_trips"]
            self.counts["watchdog_overlaps"] += 1
            self._stale_done.wait(self.config.period)

    def _allowed(self, obs: Tensor, action: Tensor) -> bool:
        """The constraint's verdict; one that raises vetoes the action (counted: act() still answers)."""
        try:
            return bool(self.constraint(obs, action))
        except Exception:  # noqa: BLE001  (the user's hook: whatever it raises, the robot gets the safe action)
            self.counts["constraint_errors"] += 1
            return False

    def _await_answer(self, stamp: float, deadline: float) -> None:
        """With wait_ms: wait until the planner has planned from this episode's reading taken at
        `stamp` (or failed to), the planner died, or time.perf_counter() reaches `deadline`
        ("wait_timeouts"). (An episode's last reading and the next one's first share a time.)"""
        reading = (stamp, self._episode)
        answered = lambda: self._answered_reading == reading or self.error is not None  # noqa: E731
        while not answered() and (left := deadline - time.perf_counter()) > 0:
            if self._process is not None:
                self._collect(timeout=left)
            else:
                with self._answered:
                    self._answered.wait_for(answered, timeout=left)
        self.counts["wait_timeouts"] += not answered()

    def _choose(self, stamp: float) -> tuple[Tensor, str, bool]:
        """The action for the reading taken at `stamp`, its source, and whether it is a fresh plan's
        that came after its first step's time (planning took longer than its lead)."""
        prior, plan = self._plans  # one read: the planning worker replaces the pair, never edits it
        if plan is None or self.error is not None:
            return self.safe_action, "fallback", False
        # the action chosen now takes effect once the delay has passed: the plan's step for then,
        # the plan before it while it has not begun (it came sooner than its maker planned for)
        effect = stamp + self.ahead * self.config.period
        step = plan.step_at(effect, self.config.period)
        if step < 0 and prior is not None:
            plan, step = prior, prior.step_at(effect, self.config.period)
        step = max(0, step)
        if step > self._maker.reach(plan):
            return self.safe_action, "fallback", False
        fresh = plan.serial > self._used_serial
        if fresh:
            self._used_serial = plan.serial
        return plan.actions[step], "fresh" if fresh else "shifted", fresh and step > 0

    def limit(self, action: Tensor, first: bool = False) -> Tensor:
        """An action [A] the robot is sent by other means (e.g. a random seed action), clipped to the
        box and the slew limit as act's are, and the last executed action from now on. `first`: as
        act's, the robot is at rest after a reset (the slew limit steps from the safe action)."""
        action = torch.as_tensor(action).float()
        if action.shape != self.low.shape or not _all_finite(action):  # (NaN would pass the clamps, and every
            # action after it would be limited around NaN)
            raise ValueError(f"limit() takes a finite action of shape {list(self.low.shape)}, got {action}: not "
                             "sent; send controller.safe_action instead")  # fmt: skip
        self._last_act_time = self.clock()  # (the loop is alive: the watchdog stays quiet)
        self._loop_calls += 1
        with self._action_lock:
            if first:
                self._last_action = self.safe_action
            action = self._last_action = self._limit(action)
        self._after_stale_send()
        return action

    def _limit(self, action: Tensor) -> Tensor:
        """The action box, then the slew limit around the last executed action."""
        action = action.clamp(self.low, self.high)
        if self.config.slew is not None and self._last_action is not None:
            action = action.clamp(self._last_action - self.config.slew, self._last_action + self.config.slew)
        return action

    def _count_deadline(self, stamp: float) -> None:
        """An action answering a reading taken more than one control period ago missed its deadline
        (the reading came late, or the loop did)."""
        if self.clock() - stamp > self.config.period:
            self.counts["deadline_misses"] += 1

    # ---------------------------------------------------------------- the planning worker

    def start(self) -> RealtimeController:
        if self._watcher is not None:
            return self
        if self.config.priority is not None:  # (first: a user not allowed it gets the error before anything starts)
            self._restore_priority = threads.run_realtime(self.config.priority)
            self._raised_thread = threading.get_native_id()
        try:
            if self.config.switch_interval_ms is not None:
                self._switch_interval = sys.getswitchinterval()
                sys.setswitchinterval(self.config.switch_interval_ms / 1000)
            self._stopping = False
            self._stale_done.set()  # (a watchdog a stop() left behind, its on_stale hung, does not hold up this one's acts)
            # a restart begins clean: no error, plans, reading or warm start of the worker before
            self.error, self._latest, self._plans, self._used_serial = None, None, (None, None), -1
            self._last_obs_time = self._last_act_time = None
            self.watchdog_error = self.last_planner_error = None
            self._maker.reset()
            _freeze_heap()
            self._frozen = True
            self._generation += 1  # (a planning thread of a stop() that timed out ends at its next turn)
            if self.config.worker == "process":  # (a planner that does not pickle raises here)
                self._process = PlanningProcess(self._maker, self.config.plan_threads, self.spec.obs_dim,
                                                self.spec.act_dim, self.swapper.queue, self.version)  # fmt: skip
            else:
                self._thread = threading.Thread(target=self._run, name="planner", daemon=True)
                self._thread.start()
            self._watcher_stop.clear()
            self._watcher = threading.Thread(target=self._watch, name="watchdog", daemon=True)
            self._watcher.start()
        except BaseException:
            self.stop()  # (what did start, stopped; the thread's scheduling and the switch interval back)
            raise
        return self

    def stop(self) -> None:
        """Stop whatever start() started and undo what it changed (also for a start() that failed)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._watcher_stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=STOP_TIMEOUT_S)
            if self._watcher.is_alive():  # (an on_stale that never returns, say a driver on a dead bus)
                print(f"the watchdog did not stop within {STOP_TIMEOUT_S:g} s (an on_stale call that never "
                      "returns?); leaving it", file=sys.stderr)  # fmt: skip
            self._watcher = None
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT_S)
            if self._thread.is_alive():  # (a plan that never returns: the daemon thread is left behind)
                print(f"the planning thread did not stop within {STOP_TIMEOUT_S:g} s (a plan that never "
                      "returns?); leaving it", file=sys.stderr)  # fmt: skip
            self._thread = None
        if self._process is not None:
            self._process.stop()
            self._process = None
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None
        if self._frozen:
            _thaw_heap()
            self._frozen = False
        if self._restore_priority is not None:
            self._restore_priority()
            self._restore_priority = self._raised_thread = None

    def __enter__(self) -> RealtimeController:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        if self._process is not None:
            return self._process.process.is_alive()
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        """The planning thread: plan from the latest reading, again and again."""
        threads.fix_this_thread(self.config.plan_threads)
        threads.defer_to_foreground()
        planned_serial, generation = 0, self._generation
        try:
            while True:
                with self._wake:
                    ended = lambda: self._stopping or generation != self._generation  # noqa: E731
                    while not ended() and (self._latest is None or self._latest[2] == planned_serial):
                        self._wake.wait()
                    if ended():
                        return
                    obs, stamp, planned_serial, posted, episode = self._latest
                with self.swapper.planning():
                    result = self._maker.make(obs, stamp, self._last_action, self.version, posted, episode)
                if generation != self._generation:
                    return  # (a thread a stop() left behind: its plan is not the restarted controller's)
                self._record(result)
        except Exception as e:  # the thread dies: act() falls back to the safe action from now on
            if generation != self._generation:
                return  # (a thread a stop() left behind: not the running controller's error)
            self.error = e
            with self._answered:
                self._answered.notify_all()
            print(f"the planning thread died ({type(e).__name__}: {e}); acting with the safe action from now on",
                  file=sys.stderr)  # fmt: skip

    def _watch(self) -> None:
        """The watchdog's thread: looks every half watchdog interval until stop(), with `priority`
        under SCHED_FIFO as the thread calling act() (threads do not inherit it)."""
        if self.config.priority is not None:
            with contextlib.suppress(OSError):  # (the starting thread was under it already, without the right)
                threads.run_realtime(self.config.priority)
        generation = self._generation  # (a watchdog a stop() left behind, its on_stale hung, ends when it returns)
        while not self._watcher_stop.wait(timeout=self.watchdog_s / 2) and generation == self._generation:
            self._watchdog()

    def _collect(self, timeout: float = 0.0) -> None:
        """Take in what the planning process finished (in act(): one thread reads the pipe),
        waiting up to `timeout` seconds for something when nothing is there."""
        try:
            messages = self._process.receive(timeout)
        except EOFError as e:
            if self.error is None:
                self.error = RuntimeError(str(e))
                print(f"{e}; acting with the safe action from now on", file=sys.stderr)
            return
        for message in messages:
            if isinstance(message, PlannerDied):
                self.error = RuntimeError(f"the planning process died: {message.message}")
                print(f"{message.traceback}{self.error}; acting with the safe action from now on", file=sys.stderr)
            else:
                self._record(message)

    def _record(self, result: PlanResult) -> None:
        """Count one try to plan and make a new plan the current one."""
        if result.seconds is not None:
            self.plan_latency_s.append(result.seconds)
            self.counts["plans"] += 1
        if result.failure is not None:
            self.counts[result.failure] += 1
            if result.failure == "planner_errors":
                self.last_planner_error = result.error
        if result.plan is not None:
            with self._plans_lock:
                if result.plan.episode == self._episode:
                    self._plans = (self._plans[1], result.plan)  # (one assignment: act() never reads a half-made pair)
        with self._answered:
            self._answered_reading = result.reading
            self._answered.notify_all()

    def _watchdog(self) -> None:
        """on_stale(the safe action, slew-limited) once per silent interval: no finite reading for
        watchdog_s, and no act() or limit() either (one answering NaN readings sends the safe action
        itself). An act() or limit() that comes after the trip is decided wins: nothing is sent.
        An on_stale that raises is counted and kept in `watchdog_error`; the watchdog goes on."""
        calls, now = self._loop_calls, self.clock()
        quiet = lambda t: t is not None and now - t > self.watchdog_s  # noqa: E731
        if self.on_stale is None or not quiet(self._last_obs_time) or not quiet(self._last_act_time):
            return
        with self._action_lock:
            if self._loop_calls != calls:  # the loop came back meanwhile: its action goes out, not the safe one
                return
            self.counts["watchdog_trips"] += 1
            self._last_obs_time = now  # once per silent interval
            action = self._last_action = self._limit(self.safe_action)  # (under a slew limit: a step towards it)
            self._stale_done.clear()
        try:
            self.on_stale(action)
        except Exception as e:  # noqa: BLE001  (the robot's driver: the safety net must outlive its errors)
            self.counts["watchdog_errors"] += 1
            self.watchdog_error = e
        finally:
            self._stale_done.set()

    # ---------------------------------------------------------------- learning in the background

    @property
    def version(self) -> int:
        """The version of the planner's model (and value): 0 (or the one given: a resumed run's), then
        one more at every swap."""
        return self.swapper.version

    def between_plans(self) -> contextlib.AbstractContextManager:
        """`with controller.between_plans():` no plan runs inside the block (e.g. to save the
        planner's state consistently), which goes before the next plan; act() keeps serving the
        plans it has."""
        return self.swapper.between_plans()

    def swap(self, model=None, **planner_attributes) -> int:
        """Replace the planner's model (and any other attributes, e.g. a value agent) between two
        plans; returns the new version number. A planning process gets copies of them."""
        return self.swapper.swap(model, **planner_attributes)

    # ---------------------------------------------------------------- what happened

    def stats(self, window: int | None = None) -> dict:
        """Counters, the share of each action source, and latency percentiles (ms) over the whole
        run, or over the last `window` calls and plans (cheap enough for a control loop)."""
        acted = sum(self.counts[s] for s in SOURCES)
        out = dict(self.counts)
        for source in SOURCES:
            out[f"{source}_rate"] = self.counts[source] / acted if acted else 0.0
        out["deadline_miss_rate"] = self.counts["deadline_misses"] / acted if acted else 0.0
        # plans first used past their first step (their making outlasted their lead), and the newest's lead
        out["late_plan_rate"] = self.counts["late_plans"] / self.counts["fresh"] if self.counts["fresh"] else 0.0
        out["plan_lead"] = self._plans[1].lead if self._plans[1] is not None else math.nan
        for name, values in (("act", self.act_latency_s), ("plan", self.plan_latency_s)):
            values = list(itertools.islice(reversed(values), window)) if window else values  # (the newest)
            for q in (50, 99):
                out[f"{name}_latency_p{q}_ms"] = percentile(values, q) * 1000
            out[f"{name}_latency_max_ms"] = max(values, default=math.nan) * 1000
        out["model_version"] = self.version
        return out


# ---------------------------------------------------------------- python -m planners.realtime

_SUMMARY_KEYS = ("act_latency_p50_ms", "act_latency_p99_ms", "act_latency_max_ms", "plan_latency_p50_ms",
                 "plan_latency_p99_ms", "deadline_miss_rate", "fresh_rate", "shifted_rate", "fallback_rate",
                 "late_plan_rate", "plan_lead")  # fmt: skip


def _load_config(argv: list[str]):
    from planners import planner_defaults
    from worldmodel.config import compose_config, resumed_config

    resume = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    compose = lambda args: compose_config("realtime", args, __doc__, open_keys=("env",),  # noqa: E731
                                          groups={"planner": planner_defaults()})  # fmt: skip
    if resume is None:
        cfg = compose(argv)
        _inherit_planner(cfg, argv)
        return cfg, None
    return resumed_config(resume, argv, compose, removed=_REMOVED_KEYS, command="realtime"), Path(resume)


def _inherit_planner(cfg, argv: list[str]) -> None:
    """A Dyna planner deployed from a pretrained run of the same planner takes that run's planner
    settings (its penalty, rollouts, real ratio, agent sizes: the agent as it was trained), except
    those given on the command line (planner.<key>=...)."""
    from omegaconf import OmegaConf

    from planners import DYNA_PLANNERS
    from worldmodel.config import flatten

    saved = Path(str(cfg.pretrained)) / "config.yaml" if cfg.get("pretrained") else None
    if cfg.planner.name not in DYNA_PLANNERS or saved is None or not saved.is_file():
        return
    trained = OmegaConf.load(saved).get("planner") or {}
    if trained.get("name") != cfg.planner.name:
        return
    given = {a.lstrip("+").split("=", 1)[0].removeprefix("planner.") for a in argv if a.lstrip("+").startswith("planner.")}
    inherited = {k: v for k, v in flatten(OmegaConf.to_container(trained, resolve=True)).items()
                 if k != "name" and k.split(".")[0] in cfg.planner and not any(k == g or k.startswith(g + ".") for g in given)}
    changed = sorted(k for k, v in inherited.items() if OmegaConf.select(cfg.planner, k) != v)
    for key, value in inherited.items():
        OmegaConf.update(cfg.planner, key, value, force_add=True)
    if changed:
        print(f"planner={cfg.planner.name}: the settings {saved.parent} was trained with: "
              + ", ".join(f"{k}={inherited[k]}" for k in changed) + " (planner.<key>=... overrides)")


# settings a saved run may hold that are gone: value_updates (per refit) became the planner's own
# value_updates_per_step, trained between refits
_REMOVED_KEYS = ("value_updates",)


def _validate(cfg) -> None:
    from planners import DYNA_PLANNERS, MPC_PLANNERS
    from worldmodel.config import check_counts, check_paths

    check_counts(cfg, {"real_steps": 1, "train_every": 1, "fit_epochs": 1, "eval_episodes": 1, "plan_threads": 1,
                       "seed_steps": 0, "seed": 0}, {"fit_steps": 1})  # fmt: skip
    if any(not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= cfg.real_steps for n in cfg.eval_at):
        raise ValueError(f"eval_at must list real-step counts in [0, real_steps={cfg.real_steps}], got {list(cfg.eval_at)}")
    if cfg.planner.name not in (*MPC_PLANNERS, *DYNA_PLANNERS):  # (behaviour cloning learns nothing online)
        raise ValueError(f"planner={cfg.planner.name}: the real-time loop refits the model and trains an MPC "
                         "planner's learned value or a Dyna planner's agent in the background; behaviour cloning "
                         f"learns neither: use planner={'|'.join((*MPC_PLANNERS, *DYNA_PLANNERS))} here, or python -m "
                         "worldmodel.run for this planner")
    if cfg.worker not in WORKERS:
        raise ValueError(f"worker must be one of {list(WORKERS)}, got {cfg.worker!r}")
    check_paths(cfg, ("pretrained", "dataset"))


def _control_priority(value) -> int | None:
    """control_priority as a SCHED_FIFO priority or None: auto is AUTO_PRIORITY where this user may
    use it, else ordinary scheduling (said once); a number is that priority, refused (before any
    file is written) where this user may not use it."""
    if value is None:
        return None
    if value == "auto":
        if threads.realtime_allowed(AUTO_PRIORITY):
            return AUTO_PRIORITY
        print("control_priority=auto: this user may not use SCHED_FIFO, so the control loop runs under ordinary "
              "scheduling, where act()'s p99 grows with the machine's load. To allow it: "
              f"{threads.realtime_remedy(AUTO_PRIORITY)}; control_priority=null silences this", file=sys.stderr)  # fmt: skip
        return None
    if isinstance(value, str):
        raise ValueError(f"control_priority must be auto, null or an integer in 1-99 (SCHED_FIFO), got {value!r}")
    threads.check_priority(value, "control_priority")
    threads.check_realtime(value)  # (PermissionError, with what to do)
    return value


def main(argv: list[str] | None = None) -> dict:
    """Run a planner in real time on the simulated robot; returns the summary (see the module doc)."""
    from worldmodel.checkpoint import CheckpointError, RunDirLock
    from worldmodel.config import check_model_settings, run_dir_for, save_config
    from worldmodel.datasets import load_dataset
    from worldmodel.metrics import MetricsLogger, write_json
    from worldmodel.robot import SimulatedRobot

    argv = sys.argv[1:] if argv is None else argv
    cfg, resume_dir = _load_config(argv)
    try:
        _validate(cfg)
        check_model_settings(cfg)
        priority = _control_priority(cfg.control_priority)
        threads.set_threads(cfg.threads)
        env_args = {k: v for k, v in cfg.env.items() if k != "name"}
        robot = SimulatedRobot(cfg.env.name, cfg.control_hz, cfg.latency_ms, cfg.jitter_ms, cfg.drop_rate,
                               cfg.actuator_ms, seed=cfg.seed, priority=priority, **env_args)  # fmt: skip
        spec = robot.spec
        torch.manual_seed(cfg.seed)
        dataset = load_dataset(cfg.dataset, spec.obs_dim, spec.act_dim, cfg.env.name, cfg.env)[0] if cfg.dataset else None
        # the planner samples within the slew limit the controller enforces
        slew = {"slew": cfg.slew} if cfg.slew is not None and "slew" in cfg.planner and cfg.planner.slew is None else {}
        agent = Agent.from_config(cfg, spec, cfg.real_steps + (len(dataset) if dataset is not None else 0), **slew)
        if cfg.pretrained:
            print(agent.describe_pretrained())
        agent.add_dataset(dataset)
        delay = cfg.delay_ms if cfg.delay_ms is not None else cfg.latency_ms + cfg.actuator_ms
        config = RealtimeConfig(control_hz=cfg.control_hz, delay_ms=delay, slew=cfg.slew, worker=cfg.worker,
                                plan_threads=cfg.plan_threads, switch_interval_ms=cfg.switch_interval_ms,
                                wait_ms=cfg.wait_ms, priority=priority)  # fmt: skip
    except (ValueError, OSError, CheckpointError) as e:  # (before any file: a corrected command starts afresh)
        raise SystemExit(f"error: {e}") from None

    try:
        run_dir = resume_dir or run_dir_for(cfg, "realtime", cfg.env.name)
        lock = RunDirLock(run_dir)  # one process per run directory
        if resume_dir is None and (run_dir / "transitions").exists():  # (under the lock: one may have begun meanwhile)
            lock.release()
            raise ValueError(f"run_dir={run_dir} holds a run already: resume={run_dir} continues it")
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"run directory: {run_dir} (Ctrl-C stops the robot; every real transition is in its log, and "
          f"resume={run_dir} continues from it)")
    with contextlib.ExitStack() as cleanup:  # on every path out: the lock, the metrics and the transition log
        cleanup.callback(lock.release)
        if resume_dir is None:  # (a resumed run's, once its agent is restored: a failed resume keeps the old one)
            save_config(cfg, run_dir)
        logger = MetricsLogger(run_dir)
        cleanup.callback(logger.close)
        if resume_dir is not None:
            try:
                logger.truncate(lambda record: True)  # (drops the torn last line of a killed run)
            except ValueError as e:
                raise SystemExit(f"error: cannot resume {run_dir}: {e}") from None
        cleanup.callback(agent.close)
        try:
            return _run(cfg, config, agent, robot, dataset, run_dir, resume_dir, logger)
        except Exception as e:  # (a worker that died, a robot that failed: the summary says so, as a run's does)
            write_json({"status": "failed", "error": f"{type(e).__name__}: {e}", "env": cfg.env.name,
                        "planner": cfg.planner.name, "seed": cfg.seed, "control_hz": cfg.control_hz,
                        "latency_ms": cfg.latency_ms, "logged_transitions": len(agent.log) if agent.log else 0,
                        "final_eval_return": None}, run_dir / "summary.json")  # fmt: skip
            raise


def _run(cfg, config: RealtimeConfig, agent: Agent, robot, dataset, run_dir: Path, resume_dir: Path | None,
         logger) -> dict:  # fmt: skip
    """The control loop on the simulated robot, then the evaluations and the summary (main holds the
    run directory's lock and closes what this opens). The summary's robot and controller figures
    (episodes, seed actions, robot steps, action sources, latencies, wall_s) are this session's,
    from real step `session_began_at` on; real_steps, logged_transitions and model_version count the
    whole run."""
    from tqdm.auto import tqdm

    from planners import evaluate
    from worldmodel.checkpoint import CheckpointError
    from worldmodel.collect import uniform_policy
    from worldmodel.config import save_config
    from worldmodel.envs import make_env
    from worldmodel.fitting import fit_record
    from worldmodel.metrics import write_json
    from worldmodel.transition_log import LogCorruptError

    spec, env_args = robot.spec, {k: v for k, v in cfg.env.items() if k != "name"}
    # the pretrained value on the dataset's states (before a resume restores a learned one): below 0 on a
    # task whose episodes end, the robot learns to end them (warned once, when the run starts)
    pretrained_value = agent.check_pretrained_value(dataset, warn=resume_dir is None) if dataset is not None else None
    try:
        log = agent.open_log(run_dir / "transitions")
    except LogCorruptError as e:
        raise SystemExit(f"error: cannot resume {run_dir}: {e}") from None
    agent_file = run_dir / "agent.pt"
    unfitted = 0  # the buffer's last rows the model was not fitted on (a resumed run's refit holds out among them)
    version = 0  # the model's (a resumed run's goes on from its saved agent's)
    if resume_dir is not None:
        if len(log):
            agent.buffer.extend(log.read())
        unfitted = len(log)
        if agent_file.is_file():
            try:
                saved = agent.restore(agent_file)
                agent.fit_written, version = saved.get("fit_written"), saved.get("model_version", 0)
                agent.value_covered = saved.get("value_covered")  # (the value updates lost with the killed run: owed)
            except CheckpointError as e:
                raise SystemExit(f"error: cannot resume {run_dir}: {e}") from None
            unfitted = agent.buffer.written - agent.fit_written if agent.fit_written is not None else unfitted
        save_config(cfg, run_dir)
        tqdm.write(f"resumed {run_dir}: {len(log)} logged real transitions back in the buffer")

    controller = RealtimeController(agent.planner, spec, config, on_stale=robot.send_action, version=version)

    def log_refit(version: int, record: dict) -> None:
        """A refit's `fit_record` (a learning process sends it so) as a line of metrics."""
        logger.log("refit", len(log), model_version=version, **record)

    def log_value(version: int, stats: dict) -> None:
        """A learned-value swap's mean update stats (losses, q, alpha, entropy) as a line of metrics."""
        logger.log("value", len(log), model_version=version, **stats)

    learn_threads = max(1, threads.current()["threads"] - cfg.plan_threads)  # the cores the planner leaves
    if cfg.worker == "process":  # (the learning process saves the agent's files itself)
        learner = LearningProcess(controller, agent, cfg.train_every, threads=learn_threads,
                                  save_agent=functools.partial(save_agent_files, run_dir), on_refit=log_refit,
                                  on_value=log_value)  # fmt: skip
    else:
        def saved_agent(version: int, metrics: dict | None) -> None:
            if metrics is not None:  # the agent's files after each refit (not after each value swap)
                save_agent_files(run_dir, agent, version)
                log_refit(version, fit_record(metrics))

        learner = BackgroundLearner(controller, agent, cfg.train_every, threads=learn_threads, on_swap=saved_agent,
                                    on_value=log_value)  # fmt: skip
    ready = lambda: agent.model.fitted or learner.refits > 0  # noqa: E731  (a model that predicts something)
    snapshots = run_dir / "snapshots"  # the agent as it was after eval_at real steps, evaluated at the end
    due = sorted(n for n in set(cfg.eval_at) if not (snapshots / f"agent-{n}.pt").is_file())
    if missed := [n for n in due if n < len(log) or (n == len(log) and resume_dir is not None)]:
        tqdm.write(f"eval_at {missed}: the run was killed before their agents were saved; they are not evaluated")
        due = [n for n in due if n not in missed]

    def snapshot_due() -> None:
        while due and due[0] <= steps:
            snapshots.mkdir(exist_ok=True)
            learner.snapshot(snapshots / f"agent-{due.pop(0)}.pt")

    def log_episodes(logged: int) -> int:
        """Log the robot's episodes that ended since the first `logged`, at the real step now (within
        a control period of their end); returns how many are logged."""
        for ret in robot.episode_returns[logged:]:
            logger.log("episode", steps, ret=ret)
        return len(robot.episode_returns)

    # real transitions taken (handed to the learner, whose writer thread logs them: len(log) trails by its backlog)
    steps = session_began = len(log)  # (a resumed run's earlier sessions' figures are in metrics.jsonl, not its summary)
    random_policy = uniform_policy(robot.env)
    seeding = 0 if (cfg.pretrained or dataset is not None) else cfg.seed_steps
    bar = tqdm(total=cfg.real_steps, initial=len(log), desc=f"realtime {cfg.planner.name} {cfg.env.name}",
               unit="step", smoothing=0)  # fmt: skip
    status, last_report, seeded, logged_episodes, paired = "finished", time.monotonic(), 0, 0, ReadingPairs()
    began = time.perf_counter()
    with StopRequest("the control period") as stop:  # (SIGINT, SIGTERM: leave the loop as Ctrl-C does)
        learner.interrupted = lambda: stop.requested is not None  # (a signal while it drains at the end: its grace)
        try:
            with learner, controller, robot:  # (left in reverse: the robot stops first, then planning, then learning)
                if (dataset is not None and not agent.model.fitted) or (resume_dir is not None and len(log)):
                    learner.refit_now(unfitted)  # learn from the dataset, or the resumed log, before acting on it
                snapshot_due()  # (eval_at=[0]: the pretrained agent, the return at the switch)
                while steps < cfg.real_steps:
                    if stop.requested is not None:
                        raise KeyboardInterrupt(stop.requested)  # (the learner gets its grace, Learner.STOP_GRACE_S)
                    readings = robot.readings(timeout=1.0)
                    if not readings:
                        if robot.error is not None:
                            raise RuntimeError(f"the simulated robot died: {robot.error}")
                        continue
                    acted = paired.newest
                    pairs = paired.add(readings)[: cfg.real_steps - steps]  # (a batch may overshoot the end)
                    latest = paired.newest
                    try:  # the action first (the deadline), then the completed transitions, whatever the action did
                        if latest is acted:
                            pass  # (only readings older than the one acted on came: they complete transitions)
                        elif steps < seeding or not ready():
                            # (slew-limited too; told of the episodes begun, so the first act after the seed
                            # steps steps on from the last seed action, not from rest)
                            robot.send_action(controller.limit(random_policy(latest.obs), first=paired.episode_begun()),
                                              answers=latest.seq)  # fmt: skip
                            seeded += 1
                        else:
                            robot.send_action(controller.act(latest.obs, latest.stamp, first=paired.episode_begun()),
                                              answers=latest.seq)  # fmt: skip
                    finally:
                        if pairs:
                            learner.add(_transitions(pairs))
                            steps += len(pairs)
                            bar.update(len(pairs))
                    if pairs:
                        snapshot_due()
                    logged_episodes = log_episodes(logged_episodes)
                    if time.monotonic() - last_report > 1.0:
                        last_report = time.monotonic()
                        stats = controller.stats(window=1000)  # (sorting the whole run's latencies would slow the loop)
                        logger.log("realtime", steps, **{k: stats[k] for k in _SUMMARY_KEYS}, log_backlog=learner.log_backlog)
                        bar.set_postfix(p99_ms=f"{stats['act_latency_p99_ms']:.2f}", fresh=f"{stats['fresh_rate']:.2f}",
                                        model=controller.version)  # fmt: skip
                    learner.poll()
                    if learner.error is not None or controller.error is not None or robot.error is not None:
                        raise RuntimeError(f"a background worker died: {learner.error or controller.error or robot.error}")
            learner.poll()  # (what the learner finished while stopping: the last refit and snapshots)
            if learner.error is not None:
                raise RuntimeError(f"the learner failed: {learner.error}")
        except KeyboardInterrupt:
            status = "interrupted"
        finally:  # (leaving the with-block stopped the robot, the planner and the learner; main closes the log)
            bar.close()
            log_episodes(logged_episodes)  # (the episodes that ended after the last pass of the loop)
        if stop.requested is not None:  # (one that came while the learner drained: no evaluation; a resume makes it)
            status = "interrupted"
        interrupted_by = stop.requested or ("SIGINT" if status == "interrupted" else None)
    wall = time.perf_counter() - began
    if (cfg.worker == "thread" or not agent_file.is_file()) and not learner.busy:
        save_agent_files(run_dir, agent, controller.version)  # the agent as the run left it, refitted or not
        # (a learning process saved its agent after each refit; a thread ended early, still refitting, leaves the last)
    final, evals = None, {}
    if status == "finished":
        if cfg.worker == "process" and agent_file.is_file():
            agent.restore(agent_file)  # (the learning process's agent: this process kept the one it started with)
        eval_env = make_env(cfg.env.name, seed=cfg.seed + 10_000, **env_args)
        final = evaluate(agent.planner, eval_env, cfg.eval_episodes)
        for n in sorted(n for n in set(cfg.eval_at) if (snapshots / f"agent-{n}.pt").is_file()):
            agent.restore(snapshots / f"agent-{n}.pt")  # (after the final evaluation: this replaces the agent)
            evals[str(n)] = evaluate(agent.planner, eval_env, cfg.eval_episodes)
            logger.log("eval", n, ret=evals[str(n)])
    stats = controller.stats()
    summary = {"status": status, "interrupted_by": interrupted_by, "env": cfg.env.name, "planner": cfg.planner.name, "seed": cfg.seed,
               "control_hz": cfg.control_hz, "latency_ms": cfg.latency_ms, "wait_ms": cfg.wait_ms,
               **{k: stats[k] for k in _SUMMARY_KEYS},
               **{k: stats[k] for k in ("fresh", "shifted", "fallback", "deadline_misses", "planner_errors", "skipped_posts",
                                        "nonfinite_obs", "bad_stamps", "vetoed", "constraint_errors", "watchdog_trips",
                                        "watchdog_errors", "watchdog_overlaps", "plans", "wait_timeouts")},
               "real_steps": steps, "session_began_at": session_began,  # (handed to the learner; logged: len(log))
               "logged_transitions": len(log), "nonfinite_transitions": paired.nonfinite, "late_readings": paired.too_late, "seed_actions": seeded, "robot_steps": robot.steps,
               "robot_overruns": robot.overruns, "dropped_readings": robot.dropped, "model_version": controller.version,
               "refits": learner.refits, "value_updates": learner.value_updates, "learner_ended_early": learner.ended_early,
               "episodes": robot.episodes, "episode_returns": robot.episode_returns, "final_eval_return": final,
               "eval_returns": evals, "pretrained_value": pretrained_value, "wall_s": wall, "worker": cfg.worker,
               "control_priority": config.priority,
               "threads": {"plan": cfg.plan_threads, "learn": learn_threads}}  # fmt: skip
    write_json(summary, run_dir / "summary.json")
    _plot(controller, robot.episode_returns, run_dir / "realtime.png", f"{cfg.planner.name} on {cfg.env.name} "
          f"at {cfg.control_hz:g} Hz, {cfg.latency_ms:g} ms latency")  # fmt: skip
    print(f"{run_dir}: act p50 {stats['act_latency_p50_ms']:.3f} ms, p99 {stats['act_latency_p99_ms']:.3f} ms; "
          f"fresh {stats['fresh_rate']:.1%}, shifted {stats['shifted_rate']:.1%}, fallback {stats['fallback_rate']:.1%}; "
          f"deadline misses {stats['deadline_miss_rate']:.1%}; final evaluation {final}")  # fmt: skip
    return summary


def _all_finite(values: Tensor) -> bool:
    """Whether every entry of a small CPU tensor (a reading, an action) is finite, in Python: two torch ops
    and a sync cost 0.1 ms a call at 20 Hz on a cold core, the Python loop over a reading's values microseconds."""
    return all(map(math.isfinite, values.tolist())) if values.device.type == "cpu" else bool(torch.isfinite(values).all())


def save_agent_files(run_dir: Path, agent: Agent, version: int) -> None:
    """run_dir/model.pt, then run_dir/agent.pt (what a resume reads, with the buffer's row count the
    model's last refit fitted on, agent.fit_written: the rows after it are new to the model, and the
    one the learned value had its updates for, agent.value_covered: the rows after it are owed them);
    `pretrained=<run dir>` reads model.pt's architecture and agent.pt's weights (its model among them)."""
    agent.model.save(run_dir / "model.pt")
    agent.save(run_dir / "agent.pt", model_version=version, fit_written=agent.fit_written,
               value_covered=agent.value_covered)


class ReadingPairs:
    """Real transitions from sensor readings that may arrive out of order (delivery jitter):
    readings seq and seq + 1 make one, whichever arrives first, unless seq + 1 begins an episode;
    a pair that is not finite is counted (`nonfinite`) and dropped (the log refuses it), and so is
    a reading WINDOW or more readings older than the newest (`too_late`).
    `newest` is the latest reading by seq, the one to act on."""

    WINDOW = 32  # readings kept to pair with one that arrives late

    def __init__(self):
        self._recent: dict = {}  # seq -> Reading
        self.newest = None
        self.nonfinite = 0
        self.too_late = 0  # readings WINDOW or more readings older than the newest when they came: dropped
        self._episode_start = self._told = -1  # seqs: the newest episode-beginning reading; the last told of

    def episode_begun(self) -> bool:
        """Whether an episode began since the last call said so (its first reading may come after
        the next one, by jitter: then the act after it is told)."""
        begun, self._told = self._episode_start > self._told, self._episode_start
        return begun

    def add(self, readings: list) -> list[tuple]:
        """The (before, after) pairs of readings these readings complete, ordered by after's seq."""
        pairs = []
        for r in readings:
            if r.seq in self._recent:
                continue  # (delivered twice)
            if self.newest is not None and r.seq <= self.newest.seq - self.WINDOW:  # (its neighbours may be gone, or
                self.too_late += 1  # it may have come before: pairs made again would log a transition twice)
                continue
            for before, after in ((self._recent.get(r.seq - 1), r), (r, self._recent.get(r.seq + 1))):
                if before is None or after is None or after.first:
                    continue
                if _finite(before, after):
                    pairs.append((before, after))
                else:
                    self.nonfinite += 1
            self._recent[r.seq] = r
            if r.first:
                self._episode_start = max(self._episode_start, r.seq)
            if self.newest is None or r.seq > self.newest.seq:
                self.newest = r
        if self.newest is not None:
            for seq in [s for s in self._recent if s <= self.newest.seq - self.WINDOW]:
                del self._recent[seq]
        return sorted(pairs, key=lambda pair: pair[1].seq)


def _finite(before, after) -> bool:
    """Whether the transition two consecutive readings make is finite (the log refuses one that is not)."""
    return (_all_finite(before.obs) and _all_finite(after.obs) and math.isfinite(after.reward)
            and (after.action is None or _all_finite(after.action)))


def _transitions(pairs: list) -> TensorDict:
    """Consecutive readings (before, after) of one episode -> real transitions [N]; `after`
    carries the action in effect, the reward and the episode's end."""
    return TensorDict({"obs": torch.stack([b.obs for b, _ in pairs]), "action": torch.stack([a.action for _, a in pairs]),
                       "reward": torch.tensor([a.reward for _, a in pairs]), "next_obs": torch.stack([a.obs for _, a in pairs]),
                       "terminated": torch.tensor([a.terminated for _, a in pairs]),
                       "truncated": torch.tensor([a.truncated for _, a in pairs])}, batch_size=[len(pairs)])  # fmt: skip


def _plot(controller: RealtimeController, returns: list[float], out: Path, title: str) -> None:
    """act() latency (sorted: its distribution) and the robot's episode returns, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from worldmodel.metrics import save_figure

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    latency = sorted(1000 * t for t in controller.act_latency_s)
    if latency:
        left.plot([100 * i / len(latency) for i in range(len(latency))], latency)
    left.set(xlabel="percentile of act() calls", ylabel="act() latency (ms)", yscale="log", title="act latency")
    right.plot(returns, marker="o")
    right.set(xlabel="robot episode", ylabel="return", title="returns on the robot")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, out)


if __name__ == "__main__":
    ended = main()
    sys.exit(EXIT_CODES.get(ended["interrupted_by"], 1) if ended["status"] == "interrupted" else 0)
