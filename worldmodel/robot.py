"""A simulated robot: a MuJoCo task behind a wall clock, for the real-time loop without hardware.

The simulation steps at a fixed control period in its own thread whatever the controller
does: the last action received holds until a new one takes effect (after `actuator_ms`).
A step computes the state one period ahead (the action held at a tick acts until the next),
and that state is measured when it is reached, at the next tick, where the step from it starts
with the action held then; its reading reaches `readings()` `latency_ms` (+- `jitter_ms`) after
it was measured, or never (`drop_rate`). So an action sent in answer to a reading takes effect
from the state after it, at the earliest, as on a sample-and-hold robot: floor(latency / period)
+ 1 steps on, which is RealtimeController's ceil(delay_ms / period) for a latency that is not a
whole number of periods (at 0 or exactly one period the controller plans one step short).
Episodes reset on their own, as a robot's would by a reset routine, which hands the robot back
at rest (the middle of the action box) and takes no command that answered the old episode (a
falling walker's last torques, held into the new episode, toppled it within 7-11 steps): one
sent with `answers=<the reading's seq>` by that reading's episode, else one sent before the new
episode's first reading reached the driver (with jitter the two can disagree: an answer to the
old episode's last reading sent after the new first one arrived, or to the new episode's second
reading, delivered first, sent before it). A reading carries what a robot's
driver would report, plus the reward and the action that was in effect, so the loop can build
the real transitions. With `priority` the simulation thread runs under SCHED_FIFO, as the
robot's own clock that no worker on the machine delays.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from worldmodel.envs import make_env
from worldmodel.threads import check_priority, run_realtime


@dataclass(order=True)
class Reading:
    """One sensor reading: obs [O], measured at `stamp` (monotonic seconds), step `seq`."""

    delivery: float
    seq: int
    obs: Tensor = field(compare=False)
    stamp: float = field(compare=False)
    reward: float = field(compare=False, default=0.0)  # of the step that led here (0 after a reset)
    action: Tensor | None = field(compare=False, default=None)  # in effect during that step (None after a reset)
    terminated: bool = field(compare=False, default=False)
    truncated: bool = field(compare=False, default=False)
    first: bool = field(compare=False, default=False)  # the first of an episode


class SimulatedRobot:
    """`task` (any make_env name) run at `control_hz` in real time; see the module docstring."""

    def __init__(self, task: str, control_hz: float = 20.0, latency_ms: float = 10.0, jitter_ms: float = 0.0,
                 drop_rate: float = 0.0, actuator_ms: float = 0.0, seed: int = 0, priority: int | None = None,
                 **env_kwargs):  # fmt: skip
        rules = {"control_hz": (control_hz, control_hz > 0, "> 0"), "latency_ms": (latency_ms, latency_ms >= 0, ">= 0"),
                 "jitter_ms": (jitter_ms, jitter_ms >= 0, ">= 0"), "actuator_ms": (actuator_ms, actuator_ms >= 0, ">= 0"),
                 "drop_rate": (drop_rate, 0 <= drop_rate < 1, "in [0, 1)")}  # fmt: skip  (NaN fails each)
        for name, (value, ok, allowed) in rules.items():
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {value}")
        if jitter_ms > latency_ms:
            raise ValueError(f"jitter_ms={jitter_ms} > latency_ms={latency_ms}: a reading cannot arrive before it is taken")
        if priority is not None:
            check_priority(priority)
        self.priority = priority  # the simulation thread's SCHED_FIFO priority, as a robot's own clock (None: ordinary)
        self.env = make_env(task, seed=seed, **env_kwargs)
        self.spec = self.env.task_spec
        self.period, self.latency, self.jitter = 1 / control_hz, latency_ms / 1000, jitter_ms / 1000
        self.drop_rate, self.actuator = drop_rate, actuator_ms / 1000
        self.rng = random.Random(seed)
        self.rest = ((self.spec.action_low + self.spec.action_high) / 2).float()  # held at the start and after a reset
        self._held = self.rest
        self._commands: list[tuple[float, int, Tensor, int | None]] = []  # (effective time, order, action, answers)
        self._episode_delivered = 0.0  # when the current episode's first reading reaches the driver
        self._episode_first_seq = 0  # that reading's seq
        self._in_flight: list[Reading] = []  # readings not yet delivered (a heap by delivery time)
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self.steps = self.episodes = self.dropped = self.overruns = 0
        self.error: BaseException | None = None  # what stopped the simulation thread, if anything
        self.episode_returns: list[float] = []

    # ---------------------------------------------------------------- the driver's side

    def readings(self, timeout: float = 1.0) -> list[Reading]:
        """Every reading delivered since the last call, oldest first (act on the last one);
        waits for one up to `timeout` seconds, then returns [] ."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                ready = []
                while self._in_flight and self._in_flight[0].delivery <= now:
                    ready.append(heapq.heappop(self._in_flight))
                if ready or now >= deadline or not self._running:
                    return sorted(ready, key=lambda r: r.seq)  # (jitter may swap two deliveries)
                wait = deadline - now
                if self._in_flight:
                    wait = min(wait, self._in_flight[0].delivery - now)
                self._cond.wait(max(wait, 1e-4))

    def send_action(self, action: Tensor, answers: int | None = None) -> None:
        """Command `action` [A]; it takes effect `actuator_ms` from now and holds until replaced.
        `answers`: the seq of the reading it was chosen for (its episode's, then, at a reset)."""
        action = torch.as_tensor(action).float().reshape(self.spec.act_dim).clamp(self.spec.action_low,
                                                                                   self.spec.action_high)  # fmt: skip
        with self._cond:
            heapq.heappush(self._commands, (time.monotonic() + self.actuator, id(action), action, answers))

    def _for_this_episode(self, effective: float, answers: int | None) -> bool:
        """Whether a command taking effect at `effective` (answering reading `answers`, if said) is
        the current episode's, not one that answered the episode before the last reset."""
        if answers is not None:
            return answers >= self._episode_first_seq
        return effective - self.actuator >= self._episode_delivered

    # ---------------------------------------------------------------- the physics

    def start(self) -> SimulatedRobot:
        self._running = True
        self._thread = threading.Thread(target=self._simulate, name="robot", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> SimulatedRobot:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _simulate(self) -> None:
        try:
            if self.priority is not None:
                run_realtime(self.priority)  # (for this thread's life)
            self._physics()
        except Exception as e:  # the robot stops: readings() returns nothing, and `error` says why
            self.error = e
            with self._cond:
                self._running = False
                self._cond.notify_all()

    def _physics(self) -> None:
        td = self.env.reset()
        seq, tick, episode_return = 0, time.monotonic(), 0.0
        self._send(Reading(0.0, seq, td["observation"].clone(), tick + self.period, first=True))
        while self._running:
            tick += self.period
            delay = tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                self.overruns += 1  # the simulation itself fell behind the clock
            with self._cond:  # (the commands in effect at the tick: one that came later waits for the next
                # step, also when the simulation runs late, so a late step never acts on an answer to a later reading)
                while self._commands and self._commands[0][0] <= tick:
                    effective, _, command, answers = heapq.heappop(self._commands)
                    if self._for_this_episode(effective, answers):  # (else sent for the last episode)
                        self._held = command
                action = self._held
            td["action"] = action
            step, td = self.env.step_and_maybe_reset(td)
            reached = tick + self.period  # (when the state this step leads to is measured: the next tick)
            seq += 1
            self.steps += 1
            nxt = step["next"]
            reward = float(nxt["reward"])
            episode_return += reward
            ended = bool(nxt["done"])
            last = Reading(0.0, seq, nxt["observation"].clone(), reached, reward, action.clone(),
                           bool(nxt["terminated"]), bool(nxt["truncated"]) and not bool(nxt["terminated"]))  # fmt: skip
            self._send(last)
            if ended:
                self.episodes += 1
                self.episode_returns.append(episode_return)
                episode_return = 0.0
                seq += 1  # (the reset's reading: measured with the episode's last, delivered after it, as a reset takes time)
                first = Reading(0.0, seq, td["observation"].clone(), reached, first=True)
                self._send(first, always=True, not_before=last.delivery)
                with self._cond:  # the reset routine hands the robot back at rest
                    self._held, self._episode_delivered, self._episode_first_seq = self.rest, first.delivery, first.seq

    def _send(self, reading: Reading, always: bool = False, not_before: float = 0.0) -> None:
        """Deliver after the latency (+- jitter), and not before `not_before`, unless the reading is dropped."""
        if not always and not reading.first and self.rng.random() < self.drop_rate:
            self.dropped += 1
            return
        reading.delivery = max(not_before, reading.stamp + self.latency + self.rng.uniform(-self.jitter, self.jitter))
        with self._cond:
            heapq.heappush(self._in_flight, reading)
            self._cond.notify_all()
