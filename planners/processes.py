"""Planning and learning away from the control loop. One plan from one observation (PlanMaker),
made in the controller's planning thread or in a planning process of its own (PlanningProcess);
refits in a learning process (LearningProcess) that swaps straight into the planning process.

Processes keep the planner's and the learner's Python work off the control process's GIL: with
both there, the control process only acts and logs. It reaches the planning process through
three channels, none of which can stall `act`:
- the latest observation, in a shared-memory slot: the lock around it is held for a copy only,
  and a post that cannot take it within 0.2 ms is skipped (the next reading is posted instead);
- finished plans (and failures), in a pipe the control process polls without waiting;
- model and value swaps, in a queue the planner reads between two plans, so that one plan never
  mixes two versions.
The process starts from a fork server (`process_context`: never a fork of the threaded control
process) with a copy of the planner, less its replay buffer; a planner must therefore pickle. It
exits when stopped, and within 0.5 s of its parent's death (a thread polls for it; a death signal
would follow the thread that started it, not the process).
Shapes: O obs dims, A action dims, H plan steps.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import gc
import io
import math
import multiprocessing.connection
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from planners.learning import BackgroundLearner, Learner, RefitNow
from worldmodel.allocator import keep_freed_memory
from worldmodel.fitting import fit_record
from worldmodel.threads import defer_to_foreground

_POST_WAIT_S = 0.0002  # the longest act() waits for the observation slot
_PIPE_TRANSIT_S = 0.0005  # a plan's way from a planning process to act() (pickling, the pipe, act()'s poll)
_OBS_AT = 5  # where the observation begins in a planning process's slot
_START_TIMEOUT_S = 120.0
_MAIN_GUARD = ("If that error says the process had not finished its bootstrapping phase: a script that starts "
               "planning or learning processes needs `if __name__ == \"__main__\":` around its top-level code (a "
               "planning or learning process imports the main module)")


@dataclass
class Plan:
    actions: Tensor  # [H, A]
    start: float  # the time its first action is for
    version: int  # the model version it was planned with
    serial: int
    lead: int = 0  # control periods from the reading it was planned from to its start
    episode: int = 0  # the controller's episode count at that reading
    finished: float = -math.inf  # time.monotonic() when it was made (PlanMaker.make; -inf: held from the start)
    answered: bool = False  # made within the wait act() gives its own reading (wait_ms), so act() held it then

    def __reduce__(self):  # by value through a pipe (torch's multiprocessing pickler would share memory)
        return _plan_from_numpy, (self.actions.detach().to("cpu", torch.float32).contiguous().numpy(), self.start,
                                  self.version, self.serial, self.lead, self.episode, self.finished, self.answered)

    def step_at(self, time: float, period: float) -> int:
        """Its step for `time` (negative before its start)."""
        return round((time - self.start) / period)


def _plan_from_numpy(actions, start: float, version: int, serial: int, lead: int, episode: int,
                     finished: float, answered: bool) -> Plan:
    return Plan(torch.from_numpy(actions), start, version, serial, lead, episode, finished, answered)


@dataclass
class PlanResult:
    """One try to plan (PlanMaker.make), as the controller records it wherever the plan was made:
    the plan, or why there is none (failure "planner_errors", with the planner's error, or
    "nonfinite_plans"); seconds spent planning (None after a planner error: the planner did not
    finish, so the try counts as no plan's latency)."""

    plan: Plan | None
    failure: str | None = None
    error: Exception | None = None
    seconds: float | None = None
    reading: tuple[float, int] | None = None  # (time, episode) of the reading planned from: what act() may wait for


@dataclass
class PlannerDied:
    """A planning process's last word: the planner raised what it cannot plan past."""

    message: str
    traceback: str


class PlanMaker:
    """Plans from readings: obs [O] taken at `stamp` -> a Plan whose first action is for the first
    period it can act in, `lead` periods on: the delay's `ahead`, plus the periods from the
    reading's post to the plan's end (at least one: act() answers a reading with the plans it has,
    never with the one being made from it), i.e. how long the reading waited for the planner plus
    the making's 80th percentile over the last LEAD_WINDOW plans; or the delay's `ahead` alone where
    act() waits for the plan (`wait` seconds, when the reading's wait plus that percentile fit in
    it). It plans from the state the model predicts then under the actions the plans before it
    committed, so the plan's first action is the one executed first and each step acts from the
    state it was planned for (delay compensation)."""

    LEAD_WINDOW = 20

    def __init__(self, planner, period: float, ahead: int, deterministic: bool, max_shift: int | None = None,
                 safe_action: Tensor | None = None, wait: float = 0.0):  # fmt: skip
        """max_shift, safe_action, wait: the controller's; a plan acts at most max_shift periods past
        its start (None: to its end), then the safe action (None: its last action repeats); act()
        waits up to `wait` seconds for the plan from its reading."""
        self.planner, self.period, self.ahead, self.deterministic = planner, period, ahead, deterministic
        self.wait = wait
        self.max_shift, self.safe_action = max_shift, safe_action
        self.plans: list[Plan] = []  # the last plans made, oldest first (enough to cover the delay's periods)
        self.reading: tuple[float, float] | None = None  # (stamp, posted) of the reading being planned from
        self.transit = 0.0  # seconds from a plan's making to act() holding it (a planning process sets its pipe's)
        self.episode = 0  # the episode of the readings planned from
        self.serial = -1  # the last plan's
        self.seconds: collections.deque[float] = collections.deque(maxlen=self.LEAD_WINDOW)  # recent plans' making

    @property
    def plan(self) -> Plan | None:
        """The last plan made."""
        return self.plans[-1] if self.plans else None

    def lead(self, waited: float = 0.0) -> int:
        """Periods from a reading to the first action a plan from it can set, the reading having
        waited `waited` seconds since act() posted it."""
        making = percentile(list(self.seconds), 80) if self.seconds else 0.0
        if self.wait > 0 and waited + making <= self.wait:  # act() waits for this plan: it acts once the delay passed
            return self.ahead
        return self.ahead + max(1, math.ceil((waited + making) / self.period - 1e-9))

    def make(self, obs: Tensor, stamp: float, last_action: Tensor | None, version: int,
             posted: float | None = None, episode: int = 0) -> PlanResult:  # fmt: skip
        """A plan from obs [O] taken at `stamp` and posted by act() at `posted` (time.monotonic();
        None: now) in `episode` (a new one: the plans before are dropped and the planner's warm
        start reset); the failure "planner_errors" when the planner raised a RuntimeError or
        ValueError, "nonfinite_plans" when it planned NaN/inf. Other exceptions propagate: the
        planner is broken, not this state."""
        began, posted = time.perf_counter(), time.monotonic() if posted is None else posted
        self.reading = (stamp, posted)
        if episode != self.episode:
            self.episode = episode
            self.reset()
        lead = self.lead(max(0.0, time.monotonic() - posted))
        start_time = stamp + lead * self.period
        try:
            if hasattr(self.planner, "previous_action"):  # sampling respects the slew from the action before
                self.planner.previous_action = self.committed(start_time - self.period, last_action)
            if self.plan is not None and hasattr(self.planner, "skip"):  # the warm start: from this plan's start on
                self.planner.skip(max(0, self.plan.step_at(start_time, self.period) - 1))
            start = self._predict(obs, stamp, lead, last_action)
            actions = self.planner.act_ahead(start, self.deterministic).detach().cpu().float()
        except (RuntimeError, ValueError) as e:  # PlanningError among them: no plan from this state
            return PlanResult(None, "planner_errors", e, reading=(stamp, episode))
        seconds = time.perf_counter() - began
        self.seconds.append(seconds)
        if not torch.isfinite(actions).all():
            return PlanResult(None, "nonfinite_plans", seconds=seconds, reading=(stamp, episode))
        self.serial += 1
        finished = time.monotonic()
        plan = Plan(actions, start_time, version, self.serial, lead, episode, finished,
                    answered=self.wait > 0 and finished - posted <= self.wait)
        self.plans = [*self.plans[-(self.ahead + 2):], plan]  # (what acted over the delay's periods, and before)
        return PlanResult(self.plan, seconds=seconds, reading=(stamp, episode))

    def reset(self) -> None:
        """Forget the plans made and the planner's warm start (a new episode, or a restarted controller)."""
        self.plans = []
        if hasattr(self.planner, "reset"):
            self.planner.reset()

    def committed(self, time: float, last_action: Tensor | None = None) -> Tensor | None:
        """The action [A] the controller executes at `time`, as RealtimeController._choose picks it
        from the plans it held when it chose (at the reading `ahead` periods before; see `held`):
        the newest held plan's step for `time`, the plan before it while the newest has not begun
        (or the newest's first step, early, without one), past the plan's reach (max_shift) the safe
        action; with no plan held, the safe action, or `last_action` (the one executed last) where
        there is none (a PlanMaker used without a controller; None without either)."""
        chosen = time - self.ahead * self.period
        held = [p for p in self.plans if self.held(p, chosen)]
        if not held:
            return self.safe_action if self.safe_action is not None else last_action
        plan, step = held[-1], held[-1].step_at(time, self.period)
        if step < 0 and len(held) > 1:
            plan, step = held[-2], held[-2].step_at(time, self.period)
        step, reach = max(0, step), self.reach(plan)
        if step > reach and self.safe_action is not None:
            return self.safe_action
        return plan.actions[min(step, reach)]

    def held(self, plan: Plan, chosen: float) -> bool:
        """Whether act() held `plan` when it chose at the reading taken at `chosen` (the clock of
        the stamps): never before the reading it was made from; at that one only where act()
        waited for it and it came in time (`answered`); after, where it reached act() (`transit`
        after its making) before act() posted the reading, plus the `wait` act() gives a plan.
        When act() posted (or will post) the other readings is reckoned from the reading being
        planned from, a period a reading (without one, every plan counts as held once made)."""
        made_from = plan.start - plan.lead * self.period
        if chosen < made_from + 1e-9:
            return chosen > made_from - 1e-9 and plan.answered
        if self.reading is None:
            return True
        stamp, posted = self.reading
        return plan.finished + self.transit <= posted + (chosen - stamp) + self.wait + 1e-9

    def reach(self, plan: Plan) -> int:
        """The last step of `plan` that acts: its end, or max_shift periods past its start."""
        last = plan.actions.shape[0] - 1
        return last if self.max_shift is None else min(self.max_shift, last)

    @torch.no_grad()
    def _predict(self, obs: Tensor, stamp: float, lead: int, last_action: Tensor | None) -> Tensor:
        """The state `lead` periods after obs (taken at `stamp`) under the actions committed for
        them, by the model's mean; obs itself without a model or any action to predict with."""
        model = getattr(self.planner, "model", None)
        if model is None or (not self.plans and last_action is None):
            return obs
        state = obs.reshape(1, -1).to(model.device)
        for k in range(lead):
            action = self.committed(stamp + k * self.period, last_action).reshape(1, -1).to(model.device)
            state = model.step(state, action, mode="mean", deterministic=True)["next_obs"]
        if not torch.isfinite(state).all():
            raise ValueError("the model predicted a non-finite state for the delay")
        return state[0].cpu()


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank q-th percentile of `values` (nan when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(math.ceil(q / 100 * len(ordered))) - 1)]


class Swapper:
    """Swaps between two plans: `swap(model, **attributes)` sets them on `planner` as the next
    version, and with a `queue` (a planning process's `swaps`) sends that process a copy, which it
    takes between two plans. A planning thread plans inside `planning()`; a swap (or any
    `between_plans()` block) waiting for the plan in progress goes before the next one, so a
    planner that plans back to back cannot starve it (a plain lock is not fair)."""

    # how long a swap (or between_plans block) waits for the plan in progress: a plan still running then
    # never returns (a planner hung on, say, a stuck call): an error, not a learner blocked for good
    WAIT_S = 120.0

    def __init__(self, planner, version: int = 0, queue=None):
        self.planner, self.version, self.queue = planner, version, queue
        self.lock = threading.Lock()  # held for a whole plan, a swap or a between_plans() block
        self._turn = threading.Condition()
        self._waiting = 0  # between_plans() blocks waiting for the lock

    @contextlib.contextmanager
    def between_plans(self):
        """`with swapper.between_plans():` no plan runs inside the block; it goes before the next plan."""
        with self._turn:
            self._waiting += 1
        try:
            if not self.lock.acquire(timeout=self.WAIT_S):
                raise TimeoutError(f"the plan in progress did not end within {self.WAIT_S:g} s: the planner is hung "
                                   "(a call inside it that never returns); the model cannot be swapped")  # fmt: skip
            try:
                yield
            finally:
                self.lock.release()
        finally:
            with self._turn:
                self._waiting -= 1
                self._turn.notify_all()

    @contextlib.contextmanager
    def planning(self):
        """`with swapper.planning():` one plan, after the swaps that were waiting."""
        with self._turn:
            self._turn.wait_for(lambda: self._waiting == 0)
        with self.lock:
            yield

    def swap(self, model=None, **attributes) -> int:
        """Returns the new version."""
        attributes = ({"model": model} if model is not None else {}) | attributes
        with self.between_plans():
            apply_swap(self.planner, attributes)
            self.version += 1
            if self.queue is not None:
                self.queue.put((self.version, _dumps(attributes)))  # (a copy now: the caller may change them)
            return self.version


def apply_swap(planner, attributes: dict) -> None:
    """Set a swap's attributes on `planner` (between two plans). The learned SAC (planner.LEARNED:
    an MPC planner's learned value, a Dyna planner's agent) is copied: loaded into the planner's own
    (in place: a captured CUDA graph of the planning step keeps reading its weights), or deep-copied
    where the planner has none of its kind, so the learner goes on training its own; anything else,
    a model among them, replaces the attribute."""
    for name, value in attributes.items():
        current = getattr(planner, name, None)
        learned = name == planner.LEARNED
        if learned and current is not None and type(current) is type(value):
            current.load_training_state(value.training_state())
        else:
            setattr(planner, name, copy.deepcopy(value) if learned else value)


def process_context() -> multiprocessing.context.BaseContext:
    """How planning and learning processes start: on Linux from a fork server, which imports torch
    and this package once and forks each process from there, so a process is ready in about a
    second instead of a fresh interpreter's 5-8 s of imports on a 2-core machine; elsewhere spawned
    (macOS's system libraries are not safe to fork once loaded). Neither forks the control process,
    whose threads a fork would copy mid-step. Like spawn, the fork server's processes import the
    main module; unlike spawn, they inherit the environment variables and standard streams the
    process had when it started its first (the server's), not those of each later start."""
    if not sys.platform.startswith("linux"):
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["planners.processes"])  # (read when the server starts: the first process)
    return context


def new_queue():
    """A queue of `process_context()` that never holds up its process's exit: what was put and not yet
    read when the reader is gone is dropped (a swap nobody plans with, transitions already in
    the durable log) instead of waiting for a reader forever."""
    q = process_context().Queue()
    q.cancel_join_thread()
    return q


class PlanningProcess:
    """A PlanMaker in a process of its own (process_context()): `post` the latest reading, `receive` what it finished."""

    def __init__(self, maker: PlanMaker, threads: int, obs_dim: int, act_dim: int, swaps, version: int = 0):
        """maker: a copy of it plans there; swaps: the queue a Swapper sends to (new_queue());
        version: the planner's version now."""
        ctx = process_context()
        self.obs_dim = obs_dim
        # [stamp, serial, has last action, posted (monotonic seconds), episode, obs [O], last action [A]]
        self._slot = torch.zeros(_OBS_AT + obs_dim + act_dim, dtype=torch.float64).share_memory_()
        self._slot_view = self._slot.numpy()  # (numpy's item writes take 0.1 us, torch's several)
        self._slot_lock, self._wake, self._stop = ctx.Lock(), ctx.Semaphore(0), ctx.Event()
        self._results, sender = ctx.Pipe(duplex=False)
        imagination = getattr(maker.planner, "imagination", None)  # (its buffers are not needed to plan)
        buffers = [getattr(maker.planner, "buffer", None), getattr(imagination, "model_buffer", None)]
        self.process = spawn(_plan_forever, "planner", _dumps(maker, leave_out=buffers),
                             (self._slot, self._slot_lock, self._wake, self._stop, swaps, sender, threads, obs_dim,
                              version, os.getpid()))  # fmt: skip
        sender.close()  # (the child's end: once the child is gone, receive() sees the pipe close)
        self._serial = 0
        # ready once it has its planner (a spawned interpreter imports torch first: seconds; from the fork server, the server's first start); its exit
        # (the process's sentinel) ends the wait at once
        multiprocessing.connection.wait([self._results, self.process.sentinel], _START_TIMEOUT_S)
        try:
            ready = self._results.poll() and self._results.recv() == ("ready",)
        except EOFError:
            ready = False
        if not ready:
            self.stop()
            raise RuntimeError(f"the planning process failed to start (exit code {self.process.exitcode}; killed "
                               f"if it was not ready after {_START_TIMEOUT_S:g} s): its error is printed above. "
                               f"{_MAIN_GUARD}")  # fmt: skip

    def post(self, obs: Tensor, stamp: float, last_action: Tensor | None, episode: int = 0) -> bool:
        """Hand the planner the reading obs [O] taken at `stamp` in `episode` and the action
        executed last [A]; False if the slot stayed locked for 0.2 ms (the reading is skipped)."""
        if not self._slot_lock.acquire(timeout=_POST_WAIT_S):
            return False
        try:
            self._serial += 1
            slot = self._slot_view
            slot[0], slot[1], slot[2], slot[3], slot[4] = stamp, self._serial, last_action is not None, time.monotonic(), episode
            slot[_OBS_AT : _OBS_AT + self.obs_dim] = obs.cpu().numpy()
            if last_action is not None:
                slot[_OBS_AT + self.obs_dim :] = last_action.cpu().numpy()
        finally:
            self._slot_lock.release()
        self._wake.release()
        return True

    def receive(self, timeout: float = 0.0) -> list[PlanResult | PlannerDied]:
        """What the process finished since the last call, oldest first: a PlanResult per reading
        planned from, and a PlannerDied if the planner broke; waits up to `timeout` seconds for
        the first when there is none. Raises EOFError once the process is gone and everything it
        sent was read."""
        out, closed = [], False
        try:
            while self._results.poll(timeout if not out else 0.0):
                out.append(self._results.recv())
        except (EOFError, OSError):  # (the pipe closed: the process is gone, or going, or stop() closed our end)
            closed = True
        if not out and (closed or not self.process.is_alive()):
            self.process.join(timeout)  # (a closed pipe returns at once: the caller's own budget, not a spin)
            if not self.process.is_alive():
                raise EOFError(f"the planning process exited (code {self.process.exitcode})")
        return out

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.release()
        self.process.join(timeout)
        if self.process.is_alive():  # (a plan that does not end)
            self.process.kill()
            self.process.join()
        self._results.close()  # (its descriptor now, not at the next garbage collection: a controller restarted often)


def spawn(target, name: str, payload: bytes, args: tuple):
    """Start target(payload's pipe, *args) in a daemon process of process_context(), and send it `payload` (a
    pickled planner or agent: megabytes) through that pipe from a thread of this process. Given as
    an argument it would go down the pipe CPython starts the child through, which the parent holds
    open while writing: a child that died before reading it all (e.g. re-running a script without
    `if __name__ == "__main__":`) left the parent blocked forever; `args` must stay small (well
    under a pipe's 64 KiB) for the same reason. Returns the process."""
    ctx = process_context()
    reader, writer = ctx.Pipe(duplex=False)
    process = ctx.Process(target=target, name=name, daemon=True, args=(reader, *args))
    try:
        process.start()
    except BaseException:
        writer.close()
        raise
    finally:
        reader.close()  # (the child's end: once the child is gone, a blocked send fails)

    def send() -> None:
        with writer, contextlib.suppress(OSError):  # (the child died first: its start or its poll() says so)
            writer.send_bytes(payload)

    threading.Thread(target=send, name=f"{name}-payload", daemon=True).start()
    return process


def _receive(reader):
    """In a child of `spawn`: its payload, unpickled."""
    with reader:
        return _loads(reader.recv_bytes())


def _dumps(obj, leave_out: list | None = None) -> bytes:
    """obj pickled by value (tensors too: no shared memory to leak or to race with), with the
    objects in `leave_out` (e.g. a planner's replay buffer) as None."""
    left_out = {id(o) for o in leave_out or [] if o is not None}

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            return "left out" if id(o) in left_out else None

    out = io.BytesIO()
    Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return out.getvalue()


def _loads(blob: bytes):
    class Unpickler(pickle.Unpickler):
        def persistent_load(self, pid):
            return None

    return Unpickler(io.BytesIO(blob)).load()


def _plan_forever(maker, slot: Tensor, slot_lock, wake, stop, swaps, results, threads: int, obs_dim: int,
                  version: int, parent: int) -> None:  # fmt: skip
    """The planning process (maker: spawn's payload pipe): wait for a reading, take swaps, plan,
    send the result; repeat."""
    _detach(parent)
    swaps.cancel_join_thread()
    torch.set_num_threads(threads)
    defer_to_foreground()
    keep_freed_memory()
    maker = _receive(maker)
    maker.transit = _PIPE_TRANSIT_S
    gc.collect()  # (as the control process does at start: no full collection over the planner's objects mid-plan)
    gc.freeze()
    results.send(("ready",))
    planned = 0.0  # the serial of the last reading planned from

    def take_swaps() -> None:
        """Apply the swaps sent so far (`version`: the one they bring the planner to)."""
        nonlocal version
        while True:
            try:
                version, attributes = swaps.get_nowait()
            except queue.Empty:
                return
            apply_swap(maker.planner, _loads(attributes))

    try:
        while not stop.is_set():
            take_swaps()  # (taken while idle too: a learning process cannot end before its swaps are read)
            if not wake.acquire(timeout=0.2):
                continue
            while wake.acquire(False):  # (readings posted while planning: only the latest counts)
                pass
            if stop.is_set():
                return
            # and again once woken: the first reading after a refit comes when the control process heard of it,
            # which the learning process says after it sends the swap (waiting here, it would be planned from
            # the model before it, a never-fitted one at the start)
            take_swaps()
            with slot_lock:
                reading = slot.clone()
            if reading[1].item() == planned:  # (posted while the last wake-up was drained: planned already)
                continue
            planned = reading[1].item()
            obs = reading[_OBS_AT : _OBS_AT + obs_dim].float()
            last_action = reading[_OBS_AT + obs_dim :].float() if reading[2] > 0 else None
            result = maker.make(obs, reading[0].item(), last_action, version, reading[3].item(), int(reading[4].item()))
            if result.error is not None:  # (as text: not every exception pickles)
                result.error = RuntimeError(repr(result.error))
            results.send(result)
    except (BrokenPipeError, EOFError):
        os._exit(1)  # the control process is gone (killed): nobody to tell
    except BaseException as e:  # the planner is broken: say why (as text: any exception), then exit
        results.send(PlannerDied(f"{type(e).__name__}: {e}", traceback.format_exc()))


class LearningProcess(Learner):
    """A BackgroundLearner (planners.learning) in a process of its own (process_context()), beside a planning
    process: its swaps go straight to the planning process, and it writes model.pt and agent.pt
    (`save_agent`) after each refit and at its end. The control process keeps the transition log: the writer thread
    appends what `add` is given durably here, then sends it; `poll()` (from the control loop)
    takes in the refits done, updating the controller's version and calling `on_refit(version, record)` with the
    refit's `worldmodel.fitting.fit_record` (a thread's on_swap gets fit()'s whole metrics) and
    `on_value(version, stats)` with each learned-value swap's (BackgroundLearner's on_value), and
    sets `error` if the process died. The agent is pickled by value, less its log.
    """

    def __init__(self, controller, agent, train_every: int, threads: int = 1, save_agent=None, on_refit=None,
                 on_value=None):  # fmt: skip
        """controller: a RealtimeController with worker="process" (its swaps' queue exists from its
        construction: `with learner, controller:` starts this first); save_agent(agent, version): a
        picklable function writing the agent's files after each refit and at the end (in the process)."""
        super().__init__(controller, agent)
        self.on_refit, self.on_value = on_refit, on_value
        self._settings = (train_every, threads, save_agent)
        self.process = None
        self._stopping = False

    def _start(self) -> None:
        if self.controller.swapper.queue is None:
            raise ValueError("a learning process swaps into a planning process: give it a RealtimeController "
                             "with worker='process'")  # fmt: skip
        ctx = process_context()
        self._inbox, self._results = new_queue(), ctx.Queue()
        self.process = spawn(_learn_forever, "learner", _dumps(self.agent, leave_out=[self.agent.log]),
                             (self.controller.swapper.queue, self.controller.version, self._inbox, self._results,
                              *self._settings, os.getpid()))  # fmt: skip

    def _send(self, item) -> None:
        self._inbox.put(item if isinstance(item, (RefitNow, Path)) else _dumps(item))  # (transitions pickled by value)

    def poll(self) -> None:
        super().poll()
        while True:
            try:
                message = self._results.get_nowait()
            except queue.Empty:
                break
            if message[0] in ("refit", "value"):
                _, version, metrics, self.value_updates = message
                with self.controller.between_plans():
                    self.controller.swapper.version = max(self.controller.swapper.version, version)
                if message[0] == "refit":
                    self.refits += 1
                    if self.on_refit is not None:
                        self.on_refit(version, metrics)
                elif self.on_value is not None:
                    self.on_value(version, metrics)
            elif message[1] is not None:  # ("stopped", error)
                self.error = message[1]
        if self.error is None and not self._stopping and not self.process.is_alive():
            self.error = RuntimeError(f"the learning process exited (code {self.process.exitcode})")

    def _stop(self, grace_s: float | None) -> bool:
        """Wait for the refit in progress, the value updates owed and the snapshots asked for (at
        most grace_s), then end the process; past grace_s it is terminated."""
        if self.process is None or self._stopping:
            return True
        self._stopping = True
        self._inbox.put(None)
        over = self._out_of_time(grace_s)
        while self.process.is_alive() and not over():
            self.poll()  # (reading what it sends meanwhile: a full pipe would block its exit)
            self.process.join(0.1)
        finished = not self.process.is_alive()
        if not finished:  # (its results are not read after this: one cut off mid-message would block the read)
            self.process.terminate()
            self.process.join(5.0)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
            return False
        self.poll()
        if self.error is None and self.process.exitcode != 0:
            self.error = RuntimeError(f"the learning process exited (code {self.process.exitcode})")
        return True


class _Inbox:
    """The learning process's side of its queue, as BackgroundLearner reads it (pickled items decoded)."""

    def __init__(self, queue):
        self.queue = queue

    def get(self, block: bool = True):
        item = self.queue.get(block)  # (queue.Empty when not blocking and there is nothing)
        return _loads(item) if isinstance(item, bytes) else item

    def empty(self) -> bool:
        return self.queue.empty()


def _learn_forever(agent, swaps, version: int, inbox, results, train_every: int, threads: int, save_agent,
                   parent: int) -> None:  # fmt: skip
    """The learning process (agent: spawn's payload pipe): BackgroundLearner's loop, with swaps
    sent to the planning process."""

    _detach(parent)
    swaps.cancel_join_thread()  # (the planning process may be gone: its last swaps are dropped at exit)
    keep_freed_memory()
    agent = _receive(agent)

    def refitted(version: int, metrics: dict | None) -> None:
        if metrics is None:  # a learned-value swap: valued() reports it
            return
        if save_agent is not None:
            save_agent(agent, version)
        results.put(("refit", version, fit_record(metrics), learner.value_updates))

    def valued(version: int, stats: dict) -> None:
        results.put(("value", version, stats, learner.value_updates))

    learner = BackgroundLearner(Swapper(agent.planner, version, swaps), agent, train_every, threads,
                                on_swap=refitted, inbox=_Inbox(inbox), on_value=valued)  # fmt: skip
    learner._run()
    error = learner.error
    if error is None and save_agent is not None:  # the learned value as it ends (files were last written at a refit)
        save_agent(agent, learner.controller.version)
    results.put(("stopped", None if error is None else RuntimeError(f"{type(error).__name__}: {error}")))
    results.close()
    results.join_thread()


def _detach(parent: int) -> None:
    """In a child: Ctrl-C is for the control process (which stops its children in order, a refit
    in progress finishing), and a daemon thread ends this process within 0.5 s of `parent`'s
    death (no orphans)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:  # (by its pid: a fork server's process is the server's child, not the parent's)
        while _alive(parent):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    """Whether process `pid` runs: on Linux it exists and is not a zombie (a killed parent its own
    parent has not reaped yet is dead); elsewhere, that it exists."""
    if sys.platform.startswith("linux"):
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # (it exists, as another user's)
        return True
    return True
