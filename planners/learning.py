"""Learning beside a real-time controller: real transitions in, the model and the learned value
trained on copies away from the control loop and swapped in between two plans.

`Learner` is what a control loop calls, whoever does the learning: `add` (logged durably in a
writer thread, then handed over), `refit_now`, `snapshot`, `poll`, `start`/`stop` (or `with`),
and `error`, `refits`, `value_updates` and `log_backlog` to read. `BackgroundLearner` learns in
a thread of this process; `planners.processes.LearningProcess` runs a BackgroundLearner in a
process of its own.
"""

from __future__ import annotations

import copy
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from planners.agent import Agent
from worldmodel import threads
from worldmodel.transition_log import LogWriter

if TYPE_CHECKING:
    from planners.realtime import RealtimeController


@dataclass(frozen=True)
class RefitNow:
    """A learner's item: refit as soon as free; `new` rows at the buffer's end are new to the model
    (a resumed run's logged transitions since its last refit), so the refit holds out among them."""

    new: int = 0


class Learner:
    """The learner interface of a control loop (`RealtimeController` + `Agent`): what `add`,
    `refit_now` and `snapshot` are given goes, in order, through a `LogWriter` thread (transitions
    logged durably there, so the control loop never waits on the disk) to the worker, in
    `_send`. Subclasses start and stop their worker in `_start` and `_stop`."""

    def __init__(self, controller, agent: Agent):
        if agent.planner is not controller.planner:
            raise ValueError("the controller must run the agent's planner: RealtimeController(agent.planner, ...)")
        self.controller, self.agent = controller, agent
        self.error: BaseException | None = None  # set when the worker (or the log's writer) died
        self.refits = 0
        self.value_updates = 0  # the learned value's updates
        self.ended_early = False  # stop() ended the worker before it finished (grace_s)
        # a clean stop waits for the worker as long as it takes, unless this turns true meanwhile (a
        # signal: the run command's StopRequest); from then the worker gets STOP_GRACE_S
        self.interrupted: Callable[[], bool] | None = None
        self._writer: LogWriter | None = None  # while started

    def add(self, transitions) -> None:
        """Transitions [N] (validated here): logged durably by the writer thread, then handed to the learner."""
        self._put(transitions)

    def refit_now(self, new: int = 0) -> None:
        """Refit on what the buffer holds as soon as the learner is free (e.g. an offline dataset);
        `new`: the rows at the buffer's end the model was not fitted on (see RefitNow)."""
        self._put(RefitNow(new))

    def snapshot(self, path: Path) -> None:
        """Save the agent as it stands once the transitions added so far are learned from (the
        refit they are due included) to `path` (Agent.save); copied between two plans."""
        self._put(Path(path))

    @property
    def log_backlog(self) -> int:
        """Transitions added and not yet on disk (a slow or stalled disk makes it grow)."""
        return self._writer.backlog if self._writer is not None else 0

    def poll(self) -> None:
        """Take in what the worker reports (a learning process's refits) and the writer's failure;
        called from the control loop."""
        if self._writer is not None and self._writer.error is not None and self.error is None:
            self.error = RuntimeError(f"the transition log's writer failed: {self._writer.error}")

    def _put(self, item) -> None:
        if self._writer is None:
            raise RuntimeError("the learner is not running: `with learner:` (or learner.start()) first")
        self._writer.put(item)

    def _send(self, item) -> None:
        """Hand the worker an item: transitions [N] (logged), a RefitNow, or a snapshot's Path."""
        raise NotImplementedError

    def start(self) -> Learner:
        if self.agent.log is None:
            raise RuntimeError("the agent has no transition log: call agent.open_log(directory) first")
        self._start()
        self._writer = LogWriter(self.agent.log, then=self._send)
        return self

    # leaving `with learner:` on an exception (Ctrl-C, a dead worker): the seconds the worker gets to
    # finish what it was given before it is ended (a clean exit waits for it as long as it takes)
    STOP_GRACE_S = 30.0

    def stop(self, grace_s: float | None = None) -> None:
        """Log and hand over what was added, then stop the worker once it finished what it was given.
        grace_s: wait that long at most (None: as long as it takes), then end the worker: what it
        learned since it last saved the agent is lost; the logged transitions are not (a resumed
        run learns from them again). `ended_early` says whether it came to that."""
        if self._writer is not None:
            self._writer.close()  # (always: every transition added is on disk before stop returns)
            self.poll()
            self._writer = None
        if not self._stop(grace_s):
            self.ended_early = True
            waited = grace_s if grace_s is not None else self.STOP_GRACE_S  # (a clean stop a signal cut short)
            print(f"the learner was still busy {waited:g} s after it was asked to stop; ended it (the transition "
                  "log keeps every transition: resume=<run dir> learns from them again)", file=sys.stderr)

    @property
    def busy(self) -> bool:
        """Whether the worker still runs after a stop that ended it early (a thread finishing its
        refit; a learning process is terminated, never busy)."""
        return False

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self, grace_s: float | None) -> bool:
        """Stop the worker, waiting at most grace_s (None: unbounded, see `interrupted`); whether it finished in time."""
        raise NotImplementedError

    def _out_of_time(self, grace_s: float | None) -> Callable[[], bool]:
        """For a stop's wait: a function saying whether it is over, grace_s after now (None: never),
        or STOP_GRACE_S after `interrupted()` first said so (a signal during a clean stop's wait)."""
        deadline = None if grace_s is None else time.monotonic() + grace_s

        def over() -> bool:
            nonlocal deadline
            if deadline is None and self.interrupted is not None and self.interrupted():
                deadline = time.monotonic() + self.STOP_GRACE_S
            return deadline is not None and time.monotonic() >= deadline

        return over

    def __enter__(self) -> Learner:
        return self.start()

    def __exit__(self, exc_type, *exc) -> None:
        self.stop(None if exc_type is None else self.STOP_GRACE_S)


class BackgroundLearner(Learner):
    """Real transitions in; model and learned value trained on copies in a background thread.

    `add` logs each transition durably (the agent's TransitionLog) before queueing it; the thread
    puts them in the agent's buffer and, every `train_every` new ones, fits a copy of the model
    (`agent.refit_settings`: warm-started for refit_epochs, or a first fit) and swaps it into the
    controller between two plans, then calls `on_swap(version, metrics)`. The planner's learned
    SAC (`planner.learned`: an MPC planner's learned value, a Dyna planner's agent) keeps pace with
    the robot as FOWM's value does: whenever the thread is otherwise idle it trains its own copy,
    `planner.learn_updates_per_step` updates per real transition added (batches from
    `planner.learning_batch`), and swaps a copy in every `VALUE_SWAP_EVERY` updates
    (`on_swap(version, None)`), so value learning does not wait for the slow refits; a refit swaps
    the value as it stands too. After each swap that brought value updates, `on_value(version,
    stats)`: their mean SAC.update stats (losses, Q, temperature, entropy, ...) and `value_updates`.
    """

    VALUE_SWAP_EVERY = 50
    ABORT_WAIT_S = 5.0  # after an aborted stop, how long to wait for the thread to notice

    def __init__(self, controller: RealtimeController, agent: Agent, train_every: int, threads: int = 1,
                 on_swap: Callable[[int, dict | None], None] | None = None, inbox=None,
                 on_value: Callable[[int, dict], None] | None = None):  # fmt: skip
        """`controller`: what swap() and between_plans() are called on (a RealtimeController, or
        in a learning process its stand-in); `inbox`: the queue items arrive in (a
        multiprocessing queue in a learning process; default: a new queue.Queue)."""
        super().__init__(controller, agent)
        self.planner = agent.planner
        self.train_every, self.threads, self.on_swap, self.on_value = train_every, threads, on_swap, on_value
        self._queue = queue.Queue() if inbox is None else inbox
        self._thread: threading.Thread | None = None
        self.new = 0  # transitions since the last refit
        self.added = 0  # transitions added since the start
        self._start_rows = agent.buffer.written  # the buffer's rows at the start (a dataset's, a resumed run's log)
        self._unswapped = 0  # value updates not swapped in yet
        self._value = None  # the learned value this thread trains (a copy of the planner's)
        self._value_stats: dict[str, float] = {}  # the sums of the unswapped updates' stats
        self._abort = threading.Event()  # stop() ran out of grace: drop what is left
        self._value_rate = self.planner.learn_updates_per_step if self.planner.learned is not None else 0
        # the buffer row the value's updates are owed from: where a resumed run's saved value had them to
        # (those its killed process made since were lost: owed again), else the start, or for a planner
        # that imagines part of its batches, the row when its model was first seen fitted (None until then)
        imagines = getattr(self.planner, "imagination", None) is not None
        self._owed_from: int | None = agent.value_covered if agent.value_covered is not None else \
            None if imagines else self._start_rows  # fmt: skip

    def _refit(self) -> None:
        """Fit a copy of the model on the buffer (Agent.refit_data); swap it in (with the learned value
        as it stands)."""
        new = self.new
        self.new = 0
        model = copy.deepcopy(self.planner.model)
        written = self.agent.buffer.written  # (the rows this refit fits on: the buffer does not grow meanwhile)
        data, new_rows = self.agent.refit_data(model, new)
        metrics = model.fit(data, **self.agent.refit_settings(model, progress=False, new_rows=new_rows))
        self.agent.fit_written = written
        swapped = {} if self._value is None else {self.planner.LEARNED: self._value}  # (apply_swap copies it)
        stats = self._take_value_stats()
        version = self.controller.swap(model, **swapped)
        self.agent.value_covered = self._covered()
        if getattr(self.planner, "imagination", None) is not None:
            self.planner.imagination.expire()  # (its rows are the old model's)
        self.refits += 1
        if self.on_swap is not None:
            self.on_swap(version, metrics)
        self._report_value(version, stats)

    def _value_owed(self) -> int:
        """Value updates owed: learn_updates_per_step per transition added (and in a resumed run per
        row its saved value had not had them for, Agent.value_covered), but none while the planner
        would imagine with a model never fitted (its rows would be noise, and would stay in the model
        buffer for retain_rounds rounds): from its first fit on, as the synchronous loop's do."""
        if not self._value_rate:
            return 0
        if self._owed_from is None:
            if not getattr(self.planner.model, "fitted", True):
                return 0
            self._owed_from = self._start_rows + self.added
        return int(self._value_rate * (self._start_rows + self.added - self._owed_from)) - self.value_updates

    def _covered(self) -> int:
        """The buffer's rows whose value updates the learned value has had (Agent.value_covered)."""
        if self._owed_from is None or not self._value_rate:
            return self._start_rows + self.added
        return self._owed_from + int(self.value_updates / self._value_rate)

    def _train_value(self) -> None:
        """The updates owed to this thread's learned value, up to the next VALUE_SWAP_EVERY-th since
        the last swap (then the queue is looked at again); a copy swapped in once they have gathered."""
        if self._value is None:
            self._value = copy.deepcopy(self.planner.learned)
        n = min(self._value_owed(), self.VALUE_SWAP_EVERY - self._unswapped)
        for _ in range(n):
            if self._abort.is_set():
                return
            for key, x in self._value.update(self.planner.learning_batch(self._value)).items():
                self._value_stats[key] = self._value_stats.get(key, 0.0) + x
            self.value_updates += 1
            self._unswapped += 1
        if self._unswapped >= self.VALUE_SWAP_EVERY:
            self._swap_value()

    def _settle_value(self) -> None:
        """Make the value updates owed and swap in what was not swapped yet."""
        while self._value_owed() >= 1 and not self._abort.is_set():
            self._train_value()
        if self._unswapped and not self._abort.is_set():
            self._swap_value()

    def _swap_value(self) -> None:
        stats = self._take_value_stats()
        version = self.controller.swap(**{self.planner.LEARNED: self._value})  # (apply_swap copies it)
        self.agent.value_covered = self._covered()
        if self.on_swap is not None:
            self.on_swap(version, None)
        self._report_value(version, stats)

    def _take_value_stats(self) -> dict[str, float] | None:
        """The mean stats of the value updates about to be swapped in (None if there are none); reset."""
        if not self._unswapped:
            return None
        stats = {key: x / self._unswapped for key, x in self._value_stats.items()}
        self._unswapped, self._value_stats = 0, {}
        imagination = getattr(self.planner, "imagination", None)  # (the last rollout round's, if it imagines)
        return {**stats, **(imagination.last_rollout if imagination is not None else {}), "value_updates": self.value_updates}

    def _report_value(self, version: int, stats: dict[str, float] | None) -> None:
        if stats is not None and self.on_value is not None:
            self.on_value(version, stats)

    def _send(self, item) -> None:
        self._queue.put(item)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="learner", daemon=True)
        self._thread.start()

    def _stop(self, grace_s: float | None) -> bool:
        """Past grace_s the thread is told to abort: it stops before its next update, refit or
        snapshot (a refit in progress runs to its end, the process's exit ends it)."""
        if self._thread is None:
            return True
        self._queue.put(None)
        over = self._out_of_time(grace_s)
        while self._thread.is_alive() and not over():
            self._thread.join(0.1)
        finished = not self._thread.is_alive()
        if not finished:
            self._abort.set()
            self._thread.join(self.ABORT_WAIT_S)
        if not self._thread.is_alive():
            self._thread = None
        return finished

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            threads.fix_this_thread(self.threads)  # (the fits inside it do not follow the process's auto)
            threads.defer_to_foreground()  # (the control loop's act() comes first)
            while not self._abort.is_set():
                try:  # (blocks only when the learned value is not owed any updates)
                    item = self._queue.get(block=self._value_owed() < 1)
                except queue.Empty:
                    self._train_value()
                    continue
                if item is None:  # (stop: the value updates owed go into the planner first)
                    self._settle_value()
                    break
                if isinstance(item, Path):
                    if self.new >= self.train_every:
                        self._refit()  # (the refit the transitions before the snapshot are due)
                    self._settle_value()  # (and the value updates they are owed)
                    if self._abort.is_set():
                        break
                    with self.controller.between_plans():  # copied between two plans, written outside
                        state = copy.deepcopy(self.agent.state_dict(buffer=False))
                    self.agent.save(item, state=state, model_version=self.controller.version)
                    continue
                forced = isinstance(item, RefitNow)
                if forced:
                    self.new = max(self.new, item.new)
                else:
                    self.planner.buffer.extend(item)
                    self.new += len(item)
                    self.added += len(item)
                if forced or (self.new >= self.train_every and self._queue.empty()):
                    self._refit()  # (else: catch up with the queue first)
        except Exception as e:
            self.error = e
            print(f"the learning thread died ({type(e).__name__}: {e}); the controller keeps its last model",
                  file=sys.stderr)  # fmt: skip
