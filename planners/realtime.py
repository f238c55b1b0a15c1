"""Real-time control around any planner: planning in a background thread, `act` in microseconds.

    controller = RealtimeController(planner, spec, RealtimeConfig(control_hz=20), safe_action=rest)
    with controller:                                 # starts the planning thread; stops it on exit
        while robot.running():
            obs, stamp = robot.get_obs()             # a sensor reading and when it was taken
            robot.send_action(controller.act(obs, stamp))

`act` never plans. It hands the observation to the planning thread and returns at once the
action of the freshest finished plan for the current time: the plan's step k, k being the
control periods elapsed since the state the plan started from. In order: a plan finished
since the last call ("fresh"), an older plan shifted further ("shifted"), or the safe action
("fallback") when there is no usable plan, the planner failed or died, or an observation or
plan holds NaN/inf. Every executed action is clipped to the action box and, with `slew`, to a
maximal change per period; a `constraint(obs, action) -> bool` hook may veto an action (the
safe one is taken instead). With `delay_ms` (sensor + actuator latency) a plan starts from the
state the model predicts once the delay has passed, under the actions already committed. A
watchdog calls `on_stale(safe_action)` when no observation arrived for `watchdog_ms`.
`swap(model)` replaces the planner's model between two plans (one plan never mixes two).
Shapes: O obs dims, A action dims, H plan steps.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from planners.base import Planner
from worldmodel.envs import TaskSpec

SOURCES = ("fresh", "shifted", "fallback")


@dataclass
class RealtimeConfig:
    """Timing and safety settings of a RealtimeController."""

    control_hz: float = 20.0
    delay_ms: float = 0.0  # sensor + actuator latency: plans start from the state predicted after it
    max_shift: int | None = None  # a plan serves at most this many periods past its start (None: its length)
    slew: float | None = None  # the largest change of any action dim per control period (None: unlimited)
    watchdog_ms: float | None = None  # no observation for this long -> on_stale(safe action) (None: 3 periods)
    deterministic: bool = True  # the plans' mean actions; exploration noise is opt-in
    plan_threads: int = 1  # torch threads the planning thread uses

    def __post_init__(self):
        if not self.control_hz > 0 or self.delay_ms < 0:
            raise ValueError(f"control_hz must be > 0 and delay_ms >= 0, got {self.control_hz}, {self.delay_ms}")
        if self.slew is not None and not self.slew > 0:
            raise ValueError(f"slew must be > 0 or None, got {self.slew}")
        if self.max_shift is not None and self.max_shift < 0:
            raise ValueError(f"max_shift must be >= 0 or None, got {self.max_shift}")
        if self.plan_threads < 1:
            raise ValueError(f"plan_threads must be >= 1, got {self.plan_threads}")

    @property
    def period(self) -> float:
        return 1.0 / self.control_hz


@dataclass
class _Plan:
    actions: Tensor  # [H, A]
    start: float  # the time its first action is for
    version: int  # the model version it was planned with
    serial: int


class RealtimeController:
    """A planner behind a fixed-rate `act` (see the module docstring)."""

    def __init__(self, planner: Planner, spec: TaskSpec, config: RealtimeConfig | None = None,
                 safe_action: Tensor | None = None, constraint: Callable[[Tensor, Tensor], bool] | None = None,
                 on_stale: Callable[[Tensor], None] | None = None, clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.planner, self.spec = planner, spec
        self.config = cfg = config or RealtimeConfig()
        self.low, self.high = spec.action_low.float(), spec.action_high.float()
        middle = (self.low + self.high) / 2
        self.safe_action = (middle if safe_action is None else torch.as_tensor(safe_action).float()).clamp(self.low, self.high)
        if self.safe_action.shape != self.low.shape:
            raise ValueError(f"safe_action must have shape {list(self.low.shape)}, got {list(self.safe_action.shape)}")
        self.constraint, self.on_stale, self.clock = constraint, on_stale, clock
        self.watchdog_s = (cfg.watchdog_ms / 1000) if cfg.watchdog_ms is not None else 3 * cfg.period
        self.version = 0
        self._model_lock = threading.Lock()  # held for a whole plan: swaps happen between plans
        self._wake = threading.Condition()
        self._latest: tuple[Tensor, float, int] | None = None  # (obs, stamp, serial) for the planning thread
        self._obs_serial = 0
        self._plan: _Plan | None = None
        self._used_serial = -1
        self._last_action: Tensor | None = None
        self._last_stamp: float | None = None
        self._last_obs_time = clock()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None  # what killed the planning thread, if anything
        self.last_planner_error: Exception | None = None  # the last plan that failed (and was skipped)
        self.counts = dict.fromkeys(SOURCES, 0) | {"vetoed": 0, "nonfinite_obs": 0, "nonfinite_plans": 0,
                                                    "planner_errors": 0, "deadline_misses": 0, "watchdog_trips": 0,
                                                    "plans": 0}  # fmt: skip
        self.act_latency_s: list[float] = []
        self.plan_latency_s: list[float] = []

    # ---------------------------------------------------------------- the control side

    def act(self, obs: Tensor, stamp: float | None = None) -> Tensor:
        """The action to execute now for obs [O] taken at time `stamp` (default: now): [A]."""
        began = time.perf_counter()
        stamp = self.clock() if stamp is None else stamp
        self._count_deadline(stamp)
        obs = torch.as_tensor(obs).float()
        finite = obs.shape == (self.spec.obs_dim,) and bool(torch.isfinite(obs).all())
        if finite:
            self._last_obs_time = self.clock()
            with self._wake:
                self._obs_serial += 1
                self._latest = (obs, stamp, self._obs_serial)
                self._wake.notify()
        else:
            self.counts["nonfinite_obs"] += 1
        action, source = self._choose(stamp) if finite else (self.safe_action, "fallback")
        action = self._limit(action)
        if self.constraint is not None and finite and not self.constraint(obs, action):
            self.counts["vetoed"] += 1
            action, source = self._limit(self.safe_action), "fallback"
        self.counts[source] += 1
        self._last_action = action
        self.act_latency_s.append(time.perf_counter() - began)
        return action

    def _choose(self, stamp: float) -> tuple[Tensor, str]:
        plan = self._plan  # one read: the planning thread replaces the reference, never edits it
        if plan is None or self.error is not None:
            return self.safe_action, "fallback"
        step = max(0, round((stamp - plan.start) / self.config.period))
        limit = plan.actions.shape[0] - 1 if self.config.max_shift is None else min(self.config.max_shift,
                                                                                    plan.actions.shape[0] - 1)  # fmt: skip
        if step > limit:
            return self.safe_action, "fallback"
        fresh = plan.serial != self._used_serial
        self._used_serial = plan.serial
        return plan.actions[step], "fresh" if fresh else "shifted"

    def _limit(self, action: Tensor) -> Tensor:
        """The action box, then the slew limit around the last executed action."""
        action = action.clamp(self.low, self.high)
        if self.config.slew is not None and self._last_action is not None:
            action = action.clamp(self._last_action - self.config.slew, self._last_action + self.config.slew)
        return action

    def _count_deadline(self, stamp: float) -> None:
        """A call more than half a period later than one period after the previous one is a miss."""
        if self._last_stamp is not None and stamp - self._last_stamp > 1.5 * self.config.period:
            self.counts["deadline_misses"] += 1
        self._last_stamp = stamp

    # ---------------------------------------------------------------- the planning thread

    def start(self) -> RealtimeController:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="planner", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> RealtimeController:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        torch.set_num_threads(self.config.plan_threads)
        planned_serial = 0
        try:
            while True:
                with self._wake:
                    while not self._stopping and (self._latest is None or self._latest[2] == planned_serial):
                        if not self._wake.wait(timeout=self.watchdog_s):
                            self._watchdog()
                    if self._stopping:
                        return
                    obs, stamp, planned_serial = self._latest
                if self.clock() - self._last_obs_time > self.watchdog_s:
                    self._watchdog()
                self._plan_from(obs, stamp)
        except Exception as e:  # the thread dies: act() falls back to the safe action from now on
            self.error = e
            print(f"the planning thread died ({type(e).__name__}: {e}); acting with the safe action from now on",
                  file=sys.stderr)  # fmt: skip

    def _plan_from(self, obs: Tensor, stamp: float) -> None:
        began = time.perf_counter()
        ahead = math.ceil(self.config.delay_ms / 1000 / self.config.period - 1e-9)
        with self._model_lock:
            try:
                start = self._predict(obs, stamp, ahead)
                actions = self.planner.act_ahead(start, self.config.deterministic).detach().cpu().float()
            except (RuntimeError, ValueError) as e:  # PlanningError among them: no plan from this state
                self.counts["planner_errors"] += 1
                self.last_planner_error = e
                return
            version = self.version
        self.plan_latency_s.append(time.perf_counter() - began)
        self.counts["plans"] += 1
        if not torch.isfinite(actions).all():
            self.counts["nonfinite_plans"] += 1
            return
        previous = self._plan
        self._plan = _Plan(actions, stamp + ahead * self.config.period, version,
                           (previous.serial + 1) if previous else 0)  # fmt: skip

    @torch.no_grad()
    def _predict(self, obs: Tensor, stamp: float, steps: int) -> Tensor:
        """The state `steps` periods after obs (taken at `stamp`) under the actions already
        committed for them (the current plan's), by the model's mean; obs itself without delay."""
        plan, model = self._plan, getattr(self.planner, "model", None)
        if steps == 0 or plan is None or model is None:
            return obs
        offset = max(0, round((stamp - plan.start) / self.config.period))
        state = obs.reshape(1, -1).to(model.device)
        for k in range(steps):
            action = plan.actions[min(offset + k, plan.actions.shape[0] - 1)].reshape(1, -1).to(model.device)
            state = model.step(state, action, mode="mean", deterministic=True)["next_obs"]
        if not torch.isfinite(state).all():
            raise ValueError("the model predicted a non-finite state for the delay")
        return state[0].cpu()

    def _watchdog(self) -> None:
        if self.on_stale is not None and self.clock() - self._last_obs_time > self.watchdog_s:
            self.counts["watchdog_trips"] += 1
            self._last_obs_time = self.clock()  # once per silent interval
            self.on_stale(self._limit(self.safe_action))

    # ---------------------------------------------------------------- learning in the background

    def swap(self, model=None, **planner_attributes) -> int:
        """Replace the planner's model (and any other attributes, e.g. a value agent) between two
        plans; returns the new version number."""
        with self._model_lock:
            if model is not None:
                self.planner.model = model
            for name, value in planner_attributes.items():
                setattr(self.planner, name, value)
            self.version += 1
            return self.version

    # ---------------------------------------------------------------- what happened

    def stats(self) -> dict:
        """Counters, the share of each action source, and latency percentiles (ms)."""
        acted = sum(self.counts[s] for s in SOURCES)
        out = dict(self.counts)
        for source in SOURCES:
            out[f"{source}_rate"] = self.counts[source] / acted if acted else 0.0
        out["deadline_miss_rate"] = self.counts["deadline_misses"] / acted if acted else 0.0
        for name, values in (("act", self.act_latency_s), ("plan", self.plan_latency_s)):
            for q in (50, 99):
                out[f"{name}_latency_p{q}_ms"] = _percentile(values, q) * 1000
            out[f"{name}_latency_max_ms"] = max(values, default=math.nan) * 1000
        out["model_version"] = self.version
        return out


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(math.ceil(q / 100 * len(ordered))) - 1)]
