"""The real-time controller around a real MPPI planner on a hopper model: action sources,
stalls, safety limits, NaN, model swaps under load, the watchdog; planning in a thread and in
a process of its own."""

import itertools
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from planners import MPPI, MPPIConfig
from planners.processes import Plan, PlanMaker
from planners.realtime import RealtimeConfig, RealtimeController
from worldmodel import EnsembleDynamics, collect, make_env
from worldmodel.collect import uniform_policy

H = 6


@pytest.fixture(scope="module")
def hopper():
    env = make_env("hopper", seed=0)
    data = collect(env, uniform_policy(env), 400)
    torch.manual_seed(0)
    model = EnsembleDynamics(11, 3, ensemble_size=3, num_elites=2, hidden=32, layers=2,
                             termination_fn=env.task_spec.termination_fn)  # fmt: skip
    model.fit(data, max_epochs=2, progress=False)
    return env.task_spec, model, data


def mppi(model, spec):
    return MPPI(model, spec, MPPIConfig(horizon=H, candidates=64, value_learning=False, seed=0))


class Stalling(MPPI):
    """MPPI whose plans stop returning while the file `stall_file` exists (a class, not a patched
    method: a planning process gets the planner pickled)."""

    stall_file: Path | None = None

    def act_ahead(self, obs, deterministic=True):
        while self.stall_file is not None and self.stall_file.exists():
            time.sleep(0.005)
        return super().act_ahead(obs, deterministic)


class Slow(MPPI):
    """MPPI whose plans take 0.2 s more."""

    def act_ahead(self, obs, deterministic=True):
        time.sleep(0.2)
        return super().act_ahead(obs, deterministic)


class Broken(MPPI):
    def act_ahead(self, obs, deterministic=True):
        raise TypeError("a bug in the planner")


def counts(rt):
    """The controller's counters, with what a planning process finished taken in (act() does that)."""
    if rt._process is not None:
        rt._collect()
    return rt.counts


def newest(rt):
    """The controller's newest plan (None before the first)."""
    return rt._plans[1]


def hangs_until(planner, entered: threading.Event, release: threading.Event, timeout: float = 30.0):
    """`planner`, its plans setting `entered` and then not returning until `release` (or `timeout`)."""
    plan = planner.act_ahead

    def hanging(obs, deterministic=True):
        entered.set()
        release.wait(timeout)
        return plan(obs, deterministic)

    planner.act_ahead = hanging
    return planner


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_a_swap_waiting_on_a_hung_plan_is_an_error_not_a_learner_blocked_for_good(hopper, monkeypatch):
    """A plan that never returns holds the swap lock: the learner's swap gave up never, so refits
    stopped without a word. Past Swapper.WAIT_S it raises (the learner dies, the run says why)."""
    from planners.processes import Swapper

    spec, model, data = hopper
    hung, release = threading.Event(), threading.Event()
    planner = hangs_until(mppi(model, spec), hung, release)
    monkeypatch.setattr(Swapper, "WAIT_S", 0.3)
    with RealtimeController(planner, spec, RealtimeConfig(control_hz=50)) as rt:
        rt.act(data["obs"][0])
        assert hung.wait(10)
        with pytest.raises(TimeoutError, match="did not end within 0.3 s: the planner is hung"):
            rt.swap(model)
        release.set()
        assert rt.swap(model) == 1  # (the plan ended: swaps go on)


def test_fresh_then_shifted_then_the_safe_action_when_the_planner_stalls(hopper):
    spec, model, data = hopper
    planner = mppi(model, spec)
    stall, release = threading.Event(), threading.Event()
    plan = planner.act_ahead

    def stalling(obs, deterministic=True):  # the injected stall: the planner stops returning
        if stall.is_set():
            release.wait(60)
        return plan(obs, deterministic)

    planner.act_ahead = stalling
    safe = torch.tensor([0.1, -0.2, 0.0])
    period = 0.05
    with RealtimeController(planner, spec, RealtimeConfig(control_hz=1 / period), safe_action=safe) as rt:
        obs = data["obs"][0]
        assert torch.equal(rt.act(obs, 0.0), safe)  # no plan yet
        wait_for(lambda: rt.counts["plans"] >= 1)
        stall.set()
        first = rt.act(obs, period)  # the plan made from t=0 starts at the next reading: its first step
        assert newest(rt).start == pytest.approx(period) and torch.equal(first, newest(rt).actions[0])
        for k in range(1, H):
            assert torch.equal(rt.act(obs, (k + 1) * period), newest(rt).actions[k])
        assert torch.equal(rt.act(obs, (H + 1) * period), safe)  # past the plan's end
        stats = rt.stats()
        assert (stats["fresh"], stats["shifted"], stats["fallback"], stats["late_plans"]) == (1, H - 1, 2, 0)
        assert stats["fallback_rate"] == pytest.approx(2 / (H + 2))
        assert stats["act_latency_p99_ms"] < 50  # (a sanity bound, not a benchmark: see planners.realtime_bench)
        release.set()


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_box_and_slew_limits_hold_on_every_executed_action(hopper, worker):
    spec, model, data = hopper
    config = RealtimeConfig(control_hz=200, slew=0.05, worker=worker)
    executed = []
    with RealtimeController(mppi(model, spec), spec, config) as rt:
        for i in range(300):
            executed.append(rt.act(data["obs"][i], i * config.period))
            time.sleep(0.002)
    actions = torch.stack(executed)
    assert rt.counts["fresh"] > (10 if worker == "thread" else 3)  # the planner drove them (a process: few plans in 0.6 s)
    assert (actions >= spec.action_low).all() and (actions <= spec.action_high).all()
    assert (actions.diff(dim=0).abs() <= 0.05 + 1e-6).all()


def test_an_action_sent_by_other_means_at_an_episode_start_slews_from_rest(hopper):
    spec, model, data = hopper
    safe = torch.tensor([0.5, -0.5, 0.5])
    rt = RealtimeController(mppi(model, spec), spec, RealtimeConfig(control_hz=100, slew=0.1), safe_action=safe)
    for _ in range(20):
        rt.limit(-torch.ones(3))  # (driven to the box's edge)
    assert torch.equal(rt.limit(torch.ones(3)), -torch.ones(3) + 0.1)  # from there, mid-episode
    assert torch.allclose(rt.limit(-torch.ones(3), first=True), safe - 0.1)  # after a reset, from rest


def test_the_robot_loop_tells_the_controller_of_episodes_begun_during_the_seed_steps(tmp_path, monkeypatch):
    """Seed actions go out through limit(); the episode they began is said there, so the first
    act() after them (mid-episode) does not act as at a reset, which dropped the slew limit's
    reference to the last seed action (the robot was sent a jump of up to half the box)."""
    from planners.realtime import main

    calls = {"limit": [], "act": []}
    limit, act = RealtimeController.limit, RealtimeController.act

    def limit_told(self, action, first=False):
        calls["limit"].append(first)
        return limit(self, action, first)

    def act_told(self, obs, stamp=None, first=False):
        calls["act"].append(first)
        return act(self, obs, stamp, first)

    monkeypatch.setattr(RealtimeController, "limit", limit_told)
    monkeypatch.setattr(RealtimeController, "act", act_told)
    main(["env=dmc/cartpole-swingup", *REALTIME_TINY[1:-1], "seed_steps=40", "train_every=40", "real_steps=100",
          "worker=thread", "slew=0.2", f"run_dir={tmp_path / 'rt'}"])  # fmt: skip  (one 500-decision episode)
    assert calls["limit"][0] and not any(calls["limit"][1:]) and len(calls["limit"]) >= 30
    assert calls["act"] and not any(calls["act"])


def test_actions_outside_the_box_are_clipped_to_it(hopper):
    """A planner, a safe action or an action sent by other means outside the box: what goes out is
    inside it (the planner here plans 10x its own actions, as a user's planner might; the safe
    action is the box's middle, so every action at the box's edge is a clipped plan's)."""
    spec, model, data = hopper
    high, low = spec.action_high, spec.action_low
    assert torch.equal(RealtimeController(mppi(model, spec), spec, safe_action=torch.full((3,), 5.0)).safe_action, high)
    planner = mppi(model, spec)
    inner = planner.act_ahead
    planner.act_ahead = lambda start, deterministic: 10 * inner(start, deterministic)
    with RealtimeController(planner, spec, RealtimeConfig(control_hz=200)) as rt:
        assert torch.equal(rt.limit(torch.full((3,), -5.0)), low)
        executed, deadline = [], time.monotonic() + 60
        while rt.counts["fresh"] < 10 and time.monotonic() < deadline:  # (as long as plans take on a busy machine)
            i = len(executed)
            executed.append(rt.act(data["obs"][i % len(data)], i * rt.config.period))
            time.sleep(0.002)
    actions = torch.stack(executed)
    assert rt.counts["fresh"] >= 10
    assert ((actions == low) | (actions == high)).any(-1).sum() >= rt.counts["fresh"] // 2  # the overshoot reached the box
    assert (actions >= low).all() and (actions <= high).all()


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_a_model_emitting_nan_never_produces_an_action(hopper, worker):
    spec, model, data = hopper
    broken = EnsembleDynamics(11, 3, ensemble_size=3, num_elites=2, hidden=32, layers=2,
                              termination_fn=spec.termination_fn)  # fmt: skip
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.weights[1][:, 0, 0] = float("nan")
    safe = torch.zeros(3)
    config = RealtimeConfig(control_hz=100, worker=worker)
    with RealtimeController(mppi(broken, spec), spec, config, safe_action=safe) as rt:
        for i in range(20):
            assert torch.equal(rt.act(data["obs"][i], i * 0.01), safe)
            wait_for(lambda: counts(rt)["planner_errors"] + rt.counts["nonfinite_plans"] >= i + 1)
        obs = data["obs"][0].clone()
        for bad in (float("nan"), float("inf"), -float("inf")):
            obs[4] = bad
            assert torch.equal(rt.act(obs, 0.5), safe)
    assert rt.counts["fallback"] == 23 and rt.counts["nonfinite_obs"] == 3 and rt.counts["fresh"] == 0
    # the error reaches the controller (from a process, as text): the planner's, or the prediction's
    # of the state its plan starts from
    error = repr(rt.last_planner_error)
    assert rt.counts["planner_errors"] == 20 and ("PlanningError" in error or "non-finite state" in error)


def test_a_swap_under_load_never_plans_with_two_model_versions(hopper):
    """Models are swapped from another thread as fast as it can while plans run; every model
    step of a plan must come from one model."""
    spec, model, data = hopper
    seen = []  # (plan number, model tag) per model step
    plan_number = [0]

    class Tagged(EnsembleDynamics):
        def step(self, *args, **kwargs):
            seen.append((plan_number[0], self.tag))
            return super().step(*args, **kwargs)

    def tagged(tag):
        m = Tagged(11, 3, ensemble_size=3, num_elites=2, hidden=32, layers=2, termination_fn=spec.termination_fn)
        m.load_state_dict(model.state_dict())
        m.tag = tag
        return m

    models = [tagged(t) for t in range(4)]
    rt = RealtimeController(mppi(models[0], spec), spec, RealtimeConfig(control_hz=500))
    make = rt._maker.make

    def counted(*args, **kwargs):  # (a plan: the prediction of the state it starts from, then the planning)
        plan_number[0] += 1
        return make(*args, **kwargs)

    rt._maker.make = counted
    done = threading.Event()
    with rt:
        def swap_forever():
            while not done.is_set():
                rt.swap(models[rt.version % 4])
                time.sleep(0.0005)

        swapper = threading.Thread(target=swap_forever)
        swapper.start()
        i, deadline = 0, time.monotonic() + 120  # (until both went on 20 times: a loaded machine takes longer)
        while (plan_number[0] <= 21 or rt.version <= 20) and time.monotonic() < deadline:
            rt.act(data["obs"][i % 400], i * 0.002)
            i += 1
            time.sleep(0.002)
        done.set()
        swapper.join()
    by_plan = {}
    for number, tag in seen:
        by_plan.setdefault(number, set()).add(tag)
    assert len(by_plan) > 20 and rt.version > 20
    assert all(len(tags) == 1 for tags in by_plan.values())
    assert len({next(iter(t)) for t in by_plan.values()}) > 1  # the swaps did reach the plans


def test_the_watchdog_sends_the_safe_action_when_observations_stop(hopper):
    spec, model, data = hopper
    sent = []
    config = RealtimeConfig(control_hz=100, watchdog_ms=50)
    with RealtimeController(mppi(model, spec), spec, config, safe_action=torch.ones(3) * 0.5,
                            on_stale=sent.append) as rt:  # fmt: skip
        rt.act(data["obs"][0])
        wait_for(lambda: len(sent) >= 2)  # silence: tripped, and again after another silent interval
    assert rt.counts["watchdog_trips"] >= 2 and all(torch.equal(a, torch.ones(3) * 0.5) for a in sent)


def test_an_action_asked_for_while_the_watchdog_sends_goes_out_after_it(hopper):
    """A loop sends what act() (or limit()) returns once it returns. Returned while on_stale was still
    sending the safe action, it would reach the robot first and the safe action after it: the robot
    would hold the safe action while the next action is slew-limited around the other one. So both
    return after the watchdog's send (up to a period, once a trip), counted as overlaps."""
    spec, model, data = hopper
    sending, gates, order, trips = threading.Event(), [threading.Event(), threading.Event()], [], itertools.count()

    def slow_driver(action):
        trip = next(trips)
        sending.set()
        if trip < len(gates):  # (the first two trips' sends last until the test lets them go)
            gates[trip].wait(10)
        order.append("safe action sent")

    config = RealtimeConfig(control_hz=1, watchdog_ms=50, slew=0.1)  # (a 1 s period: act() waits up to that)
    with RealtimeController(mppi(model, spec), spec, config, safe_action=torch.zeros(3), on_stale=slow_driver) as rt:
        rt.act(data["obs"][0])
        for n, call in enumerate((lambda: rt.act(data["obs"][1]), lambda: rt.limit(torch.ones(3)))):
            assert sending.wait(5), "the watchdog never tripped"
            sending.clear()
            letting_go = threading.Thread(target=lambda n=n: (wait_for(lambda: rt.counts["watchdog_overlaps"] == n + 1),
                                                              gates[n].set()))  # fmt: skip
            letting_go.start()  # (once the call waits for the send)
            call()
            order.append("returned")
            letting_go.join()
            assert order[-2:] == ["safe action sent", "returned"]
        overlaps = rt.counts["watchdog_overlaps"]
    assert overlaps == 2


def test_a_hung_driver_holds_up_one_act_a_trip_not_every_act(hopper):
    """A watchdog send stuck on a dead bus: the first act() after the trip waits (a period), the next
    ones answer at once (each would miss its deadline otherwise), and a restarted controller's too."""
    spec, model, data = hopper
    dead_bus = threading.Event()
    config = RealtimeConfig(control_hz=5, watchdog_ms=50)  # (a 0.2 s period)
    rt = RealtimeController(mppi(model, spec), spec, config, safe_action=torch.zeros(3),
                            on_stale=lambda action: dead_bus.wait(30))  # fmt: skip
    try:
        with rt:
            rt.act(data["obs"][0])
            wait_for(lambda: rt.counts["watchdog_trips"] == 1)
            began = time.monotonic()
            rt.act(data["obs"][1])  # (waits for the send, a period at most)
            waited = time.monotonic() - began
            began = time.monotonic()
            for i in range(5):
                rt.act(data["obs"][2 + i])
            assert waited >= 0.15 and time.monotonic() - began < 0.15 and rt.counts["watchdog_overlaps"] == 1
            dead_bus.set()  # (the bus comes back: the watchdog stops with the controller)
    finally:
        dead_bus.set()


def test_under_a_slew_limit_the_watchdog_steps_on_to_the_safe_action_and_seed_actions_are_limited(hopper):
    """Each trip is a slew step from the last action sent, the watchdog's own included, so a stalled
    sensor ends at the safe action; an action sent by other means (limit) is held to the slew too."""
    spec, model, data = hopper
    sent = []
    config = RealtimeConfig(control_hz=100, watchdog_ms=10, slew=0.25)
    with RealtimeController(mppi(model, spec), spec, config, safe_action=torch.zeros(3), on_stale=sent.append) as rt:
        assert torch.equal(rt.limit(torch.ones(3)), torch.ones(3))  # (the first action: nothing to step from)
        assert torch.equal(rt.limit(-torch.ones(3)), torch.ones(3) * 0.75)  # a seed action, slew-limited
        rt.act(data["obs"][0])
        wait_for(lambda: len(sent) >= 5)
    first = sent[0][0].item()
    assert first <= 0.75 and [a[0].item() for a in sent[:5]] == [max(first - 0.25 * k, 0.0) for k in range(5)][:5]
    assert torch.equal(sent[4], torch.zeros(3))


def test_a_bad_timestamp_is_answered_with_the_safe_action_and_planning_goes_on(hopper):
    """A NaN, infinite or future timestamp (another clock's) is a reading to fall back on, like a NaN
    observation: act() answers, and the planner (which plans for stamp + lead) is not killed by it."""
    spec, model, data = hopper
    with RealtimeController(mppi(model, spec), spec, RealtimeConfig(control_hz=100),
                            safe_action=torch.zeros(3)) as rt:  # fmt: skip
        for bad in (float("nan"), float("inf"), time.monotonic() + 3600):
            assert torch.equal(rt.act(data["obs"][0], bad, first=True), torch.zeros(3))
        assert rt.counts["bad_stamps"] == 3 and rt.counts["nonfinite_obs"] == 0
        i, deadline = 0, time.monotonic() + 30
        while not rt.counts["fresh"] and time.monotonic() < deadline:
            rt.act(data["obs"][i % 400], time.monotonic())
            i += 1
            time.sleep(0.01)
        assert rt.error is None and rt.counts["fresh"] >= 1


def test_a_restarted_controller_plans_again_after_its_planner_died(hopper):
    spec, model, data = hopper
    planner, broken = mppi(model, spec), [True]
    act_ahead = planner.act_ahead

    def once_broken(obs, deterministic=True):
        if broken[0]:
            raise TypeError("a bug in the planner")
        return act_ahead(obs, deterministic)

    planner.act_ahead = once_broken
    rt = RealtimeController(planner, spec, RealtimeConfig(control_hz=100))
    with rt:
        rt.act(data["obs"][0], time.monotonic())
        wait_for(lambda: rt.error is not None)
    broken[0] = False
    with rt:
        assert rt.error is None
        i, deadline = 0, time.monotonic() + 30
        while not rt.counts["fresh"] and time.monotonic() < deadline:
            rt.act(data["obs"][i % 400], time.monotonic())
            i += 1
            time.sleep(0.01)
    assert rt.counts["fresh"] >= 1


def test_the_watchdog_outlives_a_failing_driver_and_keeps_quiet_while_act_answers(hopper):
    spec, model, data = hopper
    with pytest.raises(ValueError, match="watchdog_ms must be > 0 or None"):
        RealtimeConfig(watchdog_ms=0)
    calls = []

    def failing_driver(action):
        calls.append(action)
        raise OSError("the robot's bus is down")

    config = RealtimeConfig(control_hz=100, watchdog_ms=100)  # (10x the acts' spacing below: room for a loaded machine)
    with RealtimeController(mppi(model, spec), spec, config, on_stale=failing_driver,
                            constraint=lambda obs, action: 1 / 0) as rt:  # fmt: skip
        rt.act(data["obs"][0])
        assert rt.counts["constraint_errors"] == 1 and rt.counts["vetoed"] == 1  # (a raising constraint: a veto)
        wait_for(lambda: rt.counts["watchdog_errors"] >= 2)  # the watchdog went on after the driver's first error
        assert len(calls) >= 2 and isinstance(rt.watchdog_error, OSError)
        trips = rt.counts["watchdog_trips"]
        nan = torch.full((11,), float("nan"))
        for _ in range(20):  # NaN readings: act() answers every 10 ms, so no trip (no second command a period)
            rt.act(nan)
            time.sleep(0.01)
        assert rt.counts["watchdog_trips"] == trips


def test_limit_refuses_an_action_that_would_poison_the_slew_limit(hopper):
    """A NaN passes clamp: sent through limit() it would be the last action, and every action after
    it limited around NaN."""
    spec, model, data = hopper
    with RealtimeController(mppi(model, spec), spec, RealtimeConfig(control_hz=100, slew=0.3)) as rt:
        for bad in ([float("nan"), 0.0, 0.0], [0.0, float("inf"), 0.0], [0.0, 0.0]):
            with pytest.raises(ValueError, match="limit\\(\\) takes a finite action of shape \\[3\\]"):
                rt.limit(torch.tensor(bad))
        rt.limit(torch.zeros(3))
        assert torch.allclose(rt.limit(torch.tensor([0.9, 0.0, -0.1])), torch.tensor([0.3, 0.0, -0.1]))
        assert torch.isfinite(rt.act(data["obs"][0])).all()


def test_a_new_episode_slews_from_the_safe_action_not_the_last_episodes_last(hopper):
    """After a reset the robot is at rest: the first action of the new episode is within `slew` of
    the safe action, wherever the last episode's actions had gone."""
    spec, model, data = hopper
    config = RealtimeConfig(control_hz=100, slew=0.1)
    with RealtimeController(mppi(model, spec), spec, config, safe_action=torch.zeros(3)) as rt:
        for _ in range(12):  # the last episode drove its actions to the box's corner
            rt.limit(-torch.ones(3))
        assert torch.allclose(rt.act(data["obs"][0]), -0.9 * torch.ones(3))  # (the safe action, as far as the slew allows)
        first = rt.act(data["obs"][1], first=True)
        assert (first.abs() <= 0.1 + 1e-6).all(), first


def test_a_plan_left_behind_by_stop_never_becomes_the_restarted_controllers(hopper, monkeypatch):
    """stop() leaves a planning thread whose plan does not return (after STOP_TIMEOUT_S); when that
    plan ends at last, it is not the plan of the controller started since."""
    import planners.realtime as realtime

    monkeypatch.setattr(realtime, "STOP_TIMEOUT_S", 0.1)
    spec, model, data = hopper
    entered, stuck = threading.Event(), threading.Event()
    planner = hangs_until(mppi(model, spec), entered, stuck, timeout=10)
    rt = RealtimeController(planner, spec, RealtimeConfig(control_hz=100))
    with rt:
        rt.act(data["obs"][0])
        wait_for(entered.is_set)
    left = threading.enumerate()
    with rt:
        stuck.set()  # the old plan returns now
        wait_for(lambda: not any(t.name == "planner" and t.ident != rt._thread.ident and t.is_alive() for t in left))
        assert newest(rt) is None and rt.counts["plans"] == 0


def test_stop_returns_while_the_watchdogs_driver_call_hangs(hopper, monkeypatch):
    """An on_stale that never returns (a driver on a dead bus) does not hang stop(), and with it
    the `with` block's exit and a Ctrl-C's cleanup: the watchdog is left behind after STOP_TIMEOUT_S."""
    import planners.realtime as realtime

    monkeypatch.setattr(realtime, "STOP_TIMEOUT_S", 0.2)
    spec, model, data = hopper
    dead_bus, called = threading.Event(), threading.Event()

    def hanging_driver(action):
        called.set()
        dead_bus.wait(30)

    rt = RealtimeController(mppi(model, spec), spec, RealtimeConfig(control_hz=100, watchdog_ms=30),
                            on_stale=hanging_driver)  # fmt: skip
    try:
        with rt:
            rt.act(data["obs"][0])
            wait_for(called.is_set)
            began = time.monotonic()
        assert time.monotonic() - began < 5
        with rt:  # restarted, then the bus comes back: the watchdog left behind ends, one serves the controller
            dead_bus.set()
            watchdogs = lambda: [t for t in threading.enumerate() if t.name == "watchdog" and t.is_alive()]  # noqa: E731
            wait_for(lambda: len(watchdogs()) == 1)
            time.sleep(0.1)  # (more than a watchdog interval: the old one would have gone on looking by now)
            assert watchdogs() == [rt._watcher]
    finally:
        dead_bus.set()


def test_a_constraint_hook_that_hangs_does_not_silence_the_watchdog(hopper):
    """The hook runs outside the lock the watchdog takes to send the safe action: while act() waits
    on a hook stuck on (say) a dead bus, the watchdog still trips; and once the hook returns, the
    robot is not sent the planned action the hook approved before the safe action went out, but
    the safe action (as far as the slew allows)."""
    spec, model, data = hopper
    hang, stuck, sent = threading.Event(), threading.Event(), []

    def hanging(obs, action):
        if hang.is_set():
            stuck.wait(10)
        return True

    safe = torch.tensor([0.5, -0.5, 0.5])
    config = RealtimeConfig(control_hz=100, watchdog_ms=50)
    with RealtimeController(mppi(model, spec), spec, config, safe_action=safe, constraint=hanging,
                            on_stale=sent.append) as rt:  # fmt: skip
        i = 0
        while not rt.counts["fresh"]:  # a plan drives the actions first
            assert i < 6000, "no plan in 30 s"
            rt.act(data["obs"][i % 400])
            i += 1
            time.sleep(0.005)
        hang.set()
        answer = []
        acting = threading.Thread(target=lambda: answer.append(rt.act(data["obs"][i % 400])))
        acting.start()
        try:
            wait_for(lambda: len(sent) >= 2, timeout=5)
        finally:
            stuck.set()
            acting.join()
        assert rt.counts["watchdog_trips"] >= 2
        assert torch.equal(answer[0], safe)


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_a_vetoed_action_leaves_the_controller_acting_under_a_slew_limit(hopper, worker):
    """A veto sends the safe action (slew-limited) and act() goes on, each action limited around the
    last one sent, the watchdog's too (a veto once left a pair in place of the last action: under a
    slew limit the next act() and every watchdog trip raised, the watchdog's thread died, and a
    planning process's next post failed)."""
    spec, model, data = hopper
    veto, sent = threading.Event(), []
    config = RealtimeConfig(control_hz=100, slew=0.1, watchdog_ms=40, worker=worker)
    with RealtimeController(mppi(model, spec), spec, config, safe_action=torch.tensor([0.5, -0.5, 0.5]),
                            constraint=lambda obs, action: not veto.is_set(), on_stale=sent.append) as rt:  # fmt: skip
        executed = [rt.act(data["obs"][i]) for i in range(3)]
        veto.set()
        executed += [rt.act(data["obs"][i]) for i in range(3, 6)]
        veto.clear()
        executed += [rt.act(data["obs"][i]) for i in range(6, 9)]
        wait_for(lambda: len(sent) >= 2, timeout=5)  # then silence: the watchdog trips, twice
        assert rt._watcher.is_alive() and rt.error is None
    assert rt.counts["vetoed"] == 3 and rt.counts["fallback"] >= 3
    actions = torch.stack(executed + sent)  # (in the order they were sent)
    assert (actions.diff(dim=0).abs() <= 0.1 + 1e-6).all()


def test_a_late_plan_that_is_vetoed_is_not_counted_as_run_late(hopper):
    """late_plans counts the fresh plans executed after their first step's time; one the constraint
    vetoes is never executed (it was counted, so late_plan_rate could pass 1)."""
    spec, model, data = hopper
    planner = Slow(model, spec, MPPIConfig(horizon=H, candidates=64, value_learning=False, seed=0))
    with RealtimeController(planner, spec, RealtimeConfig(control_hz=100), constraint=lambda obs, action: False) as rt:
        deadline = time.monotonic() + 30
        while counts(rt)["plans"] < 3 and time.monotonic() < deadline:  # (each plan 0.2 s: 20 periods late)
            rt.act(data["obs"][0])
            time.sleep(0.01)
    assert counts(rt)["plans"] >= 3 and rt.counts["vetoed"] > 0
    assert rt.counts["fresh"] == rt.counts["late_plans"] == 0


def test_act_refuses_a_wrong_shaped_observation_and_a_controller_not_started(hopper):
    spec, model, data = hopper
    rt = RealtimeController(mppi(model, spec), spec, RealtimeConfig(control_hz=100))
    with pytest.raises(RuntimeError, match="not running"):
        rt.act(data["obs"][0])
    with rt, pytest.raises(ValueError, match=r"shape \[11\], got \[1, 11\]"):
        rt.act(data["obs"][:1])
    with pytest.raises(ValueError, match="safe_action must be finite"):
        RealtimeController(mppi(model, spec), spec, safe_action=torch.tensor([0.0, float("nan"), 0.0]))


@pytest.mark.parametrize("planner_state", ["planning", "dead"])
def test_the_watchdog_trips_during_a_long_plan_and_after_the_planner_died(hopper, planner_state):
    """worker="thread": the watchdog has a thread of its own, so a plan in progress (here 3 s) or a
    dead planning thread does not silence it."""
    spec, model, data = hopper
    planner, sent = mppi(model, spec), []

    def slow_or_broken(obs, deterministic=True):
        if planner_state == "dead":
            raise TypeError("a bug in the planner")
        time.sleep(3.0)
        raise TypeError("never mind the plan")

    planner.act_ahead = slow_or_broken
    config = RealtimeConfig(control_hz=100, watchdog_ms=50)
    with RealtimeController(planner, spec, config, safe_action=torch.ones(3) * 0.5, on_stale=sent.append) as rt:
        began = time.monotonic()
        rt.act(data["obs"][0])
        wait_for(lambda: len(sent) >= 1, timeout=2.0)  # within 2 s: before the 3 s plan could end
        assert time.monotonic() - began < 2.0 and rt.counts["watchdog_trips"] >= 1
        assert rt.counts["plans"] == 0 or planner_state == "dead"


def test_a_dead_planner_thread_means_the_safe_action(hopper):
    spec, model, data = hopper
    planner = mppi(model, spec)

    def broken(obs, deterministic=True):
        raise TypeError("a bug in the planner")

    planner.act_ahead = broken
    with RealtimeController(planner, spec, RealtimeConfig(control_hz=100)) as rt:
        rt.act(data["obs"][0], 0.0)
        wait_for(lambda: rt.error is not None and not rt.alive)
        assert not rt.alive and isinstance(rt.error, TypeError)
        assert torch.equal(rt.act(data["obs"][1], 0.01), rt.safe_action)


def test_with_a_delay_plans_start_from_the_predicted_state_and_time(hopper):
    """A plan starts where its first action takes effect: its reading's time + the delay (2 periods)
    + the periods its making takes (the first plan: one, the next reading's), from the state the
    model predicts then under the actions committed for the periods between."""
    spec, model, data = hopper
    planner = mppi(model, spec)
    starts = []
    plan = planner.act_ahead

    def recorded(obs, deterministic=True):
        starts.append(obs.clone())
        return plan(obs, deterministic)

    planner.act_ahead = recorded
    period = 0.05
    rt = RealtimeController(planner, spec, RealtimeConfig(control_hz=20, delay_ms=70))  # 2 periods ahead
    with rt:
        rt.act(data["obs"][0], 0.0)
        wait_for(lambda: rt.counts["plans"] >= 1)
        first = newest(rt)
        assert first.lead == 3 and first.start == pytest.approx(3 * period)
        # the next reading (a period on) gets the step for its time + the delay: the plan's first action
        assert torch.equal(rt.act(data["obs"][1], period), first.actions[0])
        wait_for(lambda: rt.counts["plans"] >= 2)
        second = newest(rt)  # (its lead: 3, or more where the first plan took over a period to make)
        assert torch.equal(rt.act(data["obs"][2], 2 * period), second.actions[0] if second.lead == 3 else first.actions[1])
    assert second.lead >= 3 and second.start == pytest.approx((1 + second.lead) * period)
    # the second plan started from the model's prediction `lead` steps past obs[1] (taken at one
    # period) under what was committed: the safe action act() chose before it held a plan (not
    # the action executed last, which may be the first plan's step 0, for 3 periods), then the
    # first plan's steps
    state = data["obs"][1].reshape(1, -1)
    for k in range(second.lead):
        action = rt.safe_action if k < 2 else first.actions[k - 2]
        state = model.step(state, action.reshape(1, -1), mode="mean", deterministic=True)["next_obs"]
    torch.testing.assert_close(starts[1], state[0])


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_a_new_episode_drops_the_plans_of_the_last(hopper, worker):
    """After a reset (act(first=True)) the safe action holds until a plan from the new episode
    comes: a plan made from the last episode, even one that comes later, is never executed."""
    spec, model, data = hopper
    planner = Slow(model, spec, MPPIConfig(horizon=H, candidates=64, value_learning=False, seed=0))
    safe, period = torch.tensor([0.1, -0.2, 0.0]), 0.05
    with RealtimeController(planner, spec, RealtimeConfig(control_hz=1 / period, worker=worker), safe_action=safe) as rt:
        rt.act(data["obs"][0], 0.0)
        wait_for(lambda: counts(rt)["plans"] >= 1)
        assert not torch.equal(rt.act(data["obs"][1], period), safe)  # (a plan of episode 0 acts; another begins)
        time.sleep(0.05)
        assert torch.equal(rt.act(data["obs"][2], 2 * period, first=True), safe)  # reset: nothing for this episode yet
        wait_for(lambda: counts(rt)["plans"] >= 2)  # the plan from obs[1] came...
        assert newest(rt) is None  # ...and was dropped
        assert torch.equal(rt.act(data["obs"][3], 3 * period), safe)
        wait_for(lambda: counts(rt)["plans"] >= 3)
        plan = newest(rt)
        assert plan.episode == 1 and torch.equal(rt.act(data["obs"][4], plan.start - rt.ahead * period), plan.actions[0])


def test_the_delay_is_predicted_under_the_actions_the_controller_will_execute():
    """PlanMaker.committed follows the controller's choice among the plans it held (none before
    the reading it was made from): the newest begun, shifted, the plan before it while the newest
    has not begun, and the safe action past the plan's reach (max_shift, or its end), not its last
    action repeated; with no plan, the safe action."""
    period, safe = 0.05, torch.tensor([9.0])
    actions = torch.arange(4.0).reshape(4, 1)  # [H=4, A=1]: step k's action is k
    for max_shift, reach in ((None, 3), (1, 1)):
        maker = PlanMaker(None, period, ahead=0, deterministic=True, max_shift=max_shift, safe_action=safe)
        assert maker.committed(1.0, torch.tensor([-1.0])).item() == 9.0  # no plan: the safe action
        maker.plans = [Plan(actions, start=1.0, version=0, serial=0, lead=3),  # (from the readings at 0.85, 1.05)
                       Plan(actions + 10, start=1.1, version=0, serial=1, lead=1)]  # fmt: skip
        assert maker.committed(0.9).item() == 0.0  # none begun: the held plan's first step, early (as act() does)
        assert maker.committed(1.05).item() == 1.0  # the first plan's step 1 (the second has not begun)
        chosen = [maker.committed(1.1 + k * period).item() for k in range(5)]
        assert chosen == [10.0 + k if k <= reach else 9.0 for k in range(5)], (max_shift, chosen)
        assert maker.reach(maker.plans[-1]) == reach
    unsafe = PlanMaker(None, period, ahead=0, deterministic=True)  # no safe action given: the last step repeats
    assert unsafe.committed(1.0, torch.tensor([-1.0])).item() == -1.0  # and with no plan, the last executed action
    unsafe.plans = [Plan(actions, start=1.0, version=0, serial=0, lead=1)]
    assert unsafe.committed(1.0 + 6 * period).item() == 3.0


@pytest.mark.parametrize("ahead", [0, 1])
def test_a_late_plan_is_predicted_to_act_only_once_the_controller_holds_it(ahead):
    """A plan that came after its start (its making outran its lead) acts from the first reading
    posted after it was made on: the controller executes the plan before it until then, and so
    does PlanMaker.committed, which predicts the delay's states and the slew's last action. When
    act() posted a reading is reckoned back from the reading being planned from."""
    period = 0.05
    actions = torch.arange(6.0).reshape(6, 1)
    maker = PlanMaker(None, period, ahead=ahead, deterministic=True, safe_action=torch.tensor([9.0]))
    maker.reading = (1.3, 100.0)  # planning from the reading taken at 1.3, posted at monotonic 100.0
    made = 100.0 - (1.3 - 1.2) - ahead * period - 0.001  # just before the reading at 1.2 - ahead periods was posted
    late = Plan(actions + 10, start=1.1, version=0, serial=1, lead=2, finished=made)
    maker.plans = [Plan(actions, start=1.0, version=0, serial=0, lead=2), late]
    chosen = [maker.committed(1.1 + k * period).item() for k in range(4)]
    assert chosen == [2.0, 3.0, 12.0, 13.0]  # the first plan's steps 2-3, then the late one's from its step 2
    late.finished = -math.inf  # one in time: from its start
    assert [maker.committed(1.1 + k * period).item() for k in range(2)] == [10.0, 11.0]


def test_a_plan_is_held_from_the_reading_posted_after_it_was_made(hopper):
    """PlanMaker.make stamps a plan with when it was made; act() holds it from the first reading
    it posts after that (with wait_ms, from its own reading when it came within the wait)."""
    spec, model, data = hopper
    maker = PlanMaker(mppi(model, spec), 0.05, ahead=0, deterministic=True)
    plan = maker.make(data["obs"][0], 10.0, None, 0, posted=time.monotonic() - 0.2).plan
    assert time.monotonic() - 0.2 <= plan.finished <= time.monotonic()
    assert not maker.held(plan, 10.0)  # its own reading: posted before it was made
    assert maker.held(plan, 10.0 + 0.2 + 0.05)  # a reading posted a period after now
    waiting = PlanMaker(mppi(model, spec), 0.05, ahead=0, deterministic=True, wait=5.0)
    assert waiting.held(waiting.make(data["obs"][0], 10.0, None, 0).plan, 10.0)  # made within act()'s wait


class Lagging(MPPI):
    """MPPI whose plans take 70 ms more: with a lead of one period past the delay, each comes late."""

    def act_ahead(self, obs, deterministic=True):
        time.sleep(0.07)
        return super().act_ahead(obs, deterministic)


def test_the_delay_is_predicted_under_the_actions_act_then_executes(hopper):
    """On a real clock, with plans that come late: the actions PlanMaker.committed predicts, while
    planning, for the periods of a plan's delay are the ones act() executed (or, for periods to
    come, executes) then; where a plan came within the readings' jitter of a post, the prediction
    can miss, so most must match, and far more than when every plan made counts as held at once."""
    spec, model, data = hopper
    planner = Lagging(model, spec, MPPIConfig(horizon=12, candidates=64, value_learning=False, seed=0))
    period = 0.05
    rt = RealtimeController(planner, spec, RealtimeConfig(control_hz=20, delay_ms=70))  # 2 periods ahead
    maker, predicted = rt._maker, []
    maker.lead = lambda waited=0.0: maker.ahead + 1  # (a lead that underestimates the making: plans come late)
    make = maker.make

    def make_recorded(obs, stamp, last_action, *args, **kwargs):
        result = make(obs, stamp, last_action, *args, **kwargs)
        if result.plan is not None:  # what it planned under, for each period of the plan's lead
            for k in range(result.plan.lead):
                reading, maker.reading = maker.reading, None  # (every plan made counts as held: the naive guess)
                naive = maker.committed(stamp + k * period, last_action).clone()
                maker.reading = reading
                predicted.append((stamp + k * period, maker.committed(stamp + k * period, last_action).clone(), naive))
        return result

    maker.make = make_recorded
    executed = []  # (the time the action takes effect, the action)
    with rt:
        begin = time.monotonic()
        for i in range(100):
            time.sleep(max(0.0, begin + i * period - time.monotonic()))
            stamp = time.monotonic()
            executed.append((stamp + rt.ahead * period, rt.act(data["obs"][i], stamp)))
    assert rt.counts["late_plans"] >= 10
    checked = matched = naive_matched = 0
    for when, action, naive in predicted:
        match = [a for t, a in executed if abs(t - when) < period / 2]
        if match and when < executed[-1][0] - period:  # (a period the run reached)
            checked += 1
            matched += torch.equal(match[0], action)
            naive_matched += torch.equal(match[0], naive)
    assert checked > 100 and matched >= 0.8 * checked, (checked, matched, naive_matched)
    assert checked - naive_matched >= 2 * (checked - matched) + 10, (checked, matched, naive_matched)


def test_plans_two_periods_apart_warm_start_from_the_later_start(hopper):
    """A plan starting two periods after the last one's start warm-starts from the last plan's
    step 2 on (`skip`), not its step 1 (the planner's own shift, for plans one period apart)."""
    spec, model, data = hopper
    planner, period = mppi(model, spec), 0.05
    maker = PlanMaker(planner, period, ahead=0, deterministic=True)
    first = maker.make(data["obs"][0], 0.0, None, 0).plan
    warm_starts = []
    plan = planner.act_ahead

    def recorded(obs, deterministic=True):
        warm_starts.append(planner._plan.clone())
        return plan(obs, deterministic)

    planner.act_ahead = recorded
    second = maker.make(data["obs"][1], 2 * period, first.actions[0], 0).plan
    apart = first.step_at(second.start, period)
    assert apart >= 2  # (the reading came two periods after the first's)
    torch.testing.assert_close(warm_starts[0][0, : H - apart], first.actions[apart:])


def test_a_plan_that_takes_longer_than_a_period_starts_where_its_first_action_is_executed(hopper):
    """Plans that take 1.5 periods to make start 2 or more periods after their reading, so the
    first action of nearly every plan is executed, and from the state it was planned for. Before,
    a plan started one delay after its reading, and every plan was first used at step 2."""
    spec, model, data = hopper
    planner = mppi(model, spec)
    plan = planner.act_ahead
    period = 0.05

    def slow(obs, deterministic=True):
        time.sleep(1.5 * period)
        return plan(obs, deterministic)

    planner.act_ahead = slow
    with RealtimeController(planner, spec, RealtimeConfig(control_hz=1 / period)) as rt:
        began = time.monotonic()
        for i in range(30):
            time.sleep(max(0.0, began + i * period - time.monotonic()))
            rt.act(data["obs"][i], began + i * period)
    stats = rt.stats()
    assert stats["plans"] >= 8 and stats["plan_lead"] >= 2
    assert stats["fresh"] >= 6 and stats["late_plans"] <= 2  # (the first plans' lead is not measured yet)


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_with_wait_ms_act_executes_the_plan_from_its_own_reading(hopper, worker):
    """wait_ms: act() waits for the plan from its reading and returns its first action, planned
    for the time the delay ends: a lead of the delay's one period (two without the wait)."""
    spec, model, data = hopper
    period = 0.05
    config = RealtimeConfig(control_hz=1 / period, delay_ms=10, wait_ms=40, worker=worker)
    answered = 0
    with RealtimeController(mppi(model, spec), spec, config) as rt:
        for i in range(14):  # (the first 6 warm up: a first plan's making may exceed the wait, and sets the lead)
            timeouts, stamp = rt.counts["wait_timeouts"], time.monotonic()
            action = rt.act(data["obs"][i], stamp)
            if i >= 6 and rt.counts["wait_timeouts"] == timeouts:  # (a plan may outlast the wait on a loaded machine)
                answered += 1
                plan = newest(rt)
                assert plan.lead == 1 and plan.start == pytest.approx(stamp + period, abs=1e-9)
                assert torch.equal(action, plan.actions[0])
            time.sleep(period)
    assert answered >= 6


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_a_wait_that_runs_out_answers_with_the_plans_there_are(hopper, worker):
    spec, model, data = hopper
    slow = Slow(model, spec, MPPIConfig(horizon=H, candidates=64, value_learning=False, seed=0))
    with RealtimeController(slow, spec, RealtimeConfig(control_hz=20, wait_ms=20, worker=worker)) as rt:
        began = time.perf_counter()
        action = rt.act(data["obs"][0])
        waited = time.perf_counter() - began
    assert 0.02 <= waited < 0.15 and torch.equal(action, rt.safe_action)
    assert rt.counts["wait_timeouts"] == 1 and rt.counts["fallback"] == 1


def test_an_action_for_a_reading_older_than_a_period_is_a_deadline_miss(hopper):
    spec, model, data = hopper
    with RealtimeController(mppi(model, spec), spec, RealtimeConfig(control_hz=20)) as rt:
        rt.act(data["obs"][0], time.monotonic() - 0.01)
        rt.act(data["obs"][1], time.monotonic() - 0.08)
    assert rt.stats()["deadline_misses"] == 1 and rt.stats()["deadline_miss_rate"] == 0.5


@pytest.mark.parametrize("bad, message", [
    (dict(control_hz=0), "control_hz must be > 0"), (dict(slew=0), "slew must be > 0"),
    (dict(max_shift=-1), "max_shift must be >= 0"), (dict(plan_threads=0), "plan_threads must be >= 1"),
    (dict(worker="fork"), "worker must be one of"), (dict(delay_ms=10, wait_ms=45), r"delay_ms \+ wait_ms <="),
    (dict(wait_ms=-1), "wait_ms must be >= 0"), (dict(delay_ms=50, wait_ms=1), r"0\.0 ms to wait at most"),
    (dict(wait_ms=51), r"50\.0 ms to wait at most"),
])  # fmt: skip
def test_bad_settings_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        RealtimeConfig(**bad)


REALTIME_TINY = ["env=hopper", "control_hz=50", "latency_ms=5", "seed_steps=60", "train_every=60", "fit_epochs=2",
                 "model.fit.max_epochs=3", "model.ensemble_size=3", "model.num_elites=2", "model.hidden=32",
                 "planner.candidates=64", "planner.horizon=5", "eval_episodes=1",
                 "env.max_episode_steps=100"]  # fmt: skip


def running(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's reaper may be slow in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (its children, theirs, ...)."""
    try:
        children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []
    return children + [d for child in children for d in descendants(child)]


def test_the_simulated_robot_command_writes_its_summary_and_resumes_after_kill_9(tmp_path):
    """`python -m planners.realtime` on the simulated hopper, SIGKILLed mid-run: the resumed run
    keeps every logged transition, continues to real_steps and reports the required keys."""
    import subprocess
    import sys

    from planners.realtime import AUTO_PRIORITY, main
    from worldmodel import TransitionLog

    run_dir = tmp_path / "rt"
    cmd = [sys.executable, "-m", "planners.realtime", *REALTIME_TINY, "real_steps=400", "seed=0", "eval_at=[100,400]",
           "worker=process", f"run_dir={run_dir}"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (run_dir / "transitions").is_dir() and len(TransitionLog(run_dir / "transitions", 11, 3,
                                                                               repair=False)) >= 150, timeout=120)  # fmt: skip
    wait_for(lambda: (run_dir / "snapshots" / "agent-100.pt").is_file(), timeout=120)  # (the learning process saves it)
    below = descendants(proc.pid)  # the planning and learning processes (their fork server, the resource tracker)
    assert len(below) >= 3
    proc.kill()
    proc.wait()
    wait_for(lambda: not any(map(running, below)), timeout=10)  # no orphan plans or refits on
    before = TransitionLog(run_dir / "transitions", 11, 3, repair=False).read()
    summary = main([f"resume={run_dir}"])
    for key in ("act_latency_p50_ms", "act_latency_p99_ms", "deadline_miss_rate", "fresh_rate", "shifted_rate",
                "fallback_rate", "real_steps", "logged_transitions", "final_eval_return"):  # fmt: skip
        assert summary[key] is not None, key
    assert summary["status"] == "finished" and summary["real_steps"] == summary["logged_transitions"] == 400
    assert summary["control_priority"] == (AUTO_PRIORITY if _fifo_allowed() else None)  # (control_priority=auto)
    assert summary["session_began_at"] == len(before)  # (the summary's robot figures are this session's)
    after = TransitionLog(run_dir / "transitions", 11, 3).read()
    assert torch.equal(after["obs"][: len(before)], before["obs"])  # nothing logged before the kill was lost
    # every episode's end is logged with it: where a transition does not lead to the next, it ended
    # the episode (an end lost to the last reading and the reset's arriving swapped by jitter, before)
    resumed = after[len(before):]
    breaks = (resumed["next_obs"][:-1] != resumed["obs"][1:]).any(-1)
    assert (resumed["terminated"] | resumed["truncated"])[:-1][breaks].all()
    if len(resumed) > 100:  # (not vacuous where the kill came early enough: a loaded machine's learner
        assert breaks.sum() >= 1  # saves agent-100 late, and the kill waits for it)
    assert summary["model_version"] >= 1  # it planned with refitted models
    if len(resumed) >= 150:  # (3 s at 50 Hz: a kill that came late on a loaded machine leaves the resumed
        assert summary["fresh"] > 0  # session less time than its planning process takes to start)
    assert (run_dir / "realtime.png").is_file() and (run_dir / "agent.pt").is_file()
    # the agents saved after 100 and 400 real steps were evaluated (the first before the kill)
    assert sorted(summary["eval_returns"]) == ["100", "400"] and all(r > 0 for r in summary["eval_returns"].values())
    assert sorted(f.name for f in (run_dir / "snapshots").iterdir()) == ["agent-100.pt", "agent-400.pt"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    values = [row for row in rows if row["kind"] == "value"]  # the learning process's learned-value stats
    assert values and all(math.isfinite(row["q"]) and row["value_updates"] > 0 for row in values)
    episodes = [row for row in rows if row["kind"] == "episode"]  # the resumed process's episodes all logged
    if (resumed["terminated"] | resumed["truncated"]).any():  # (none where a loaded machine's kill came late)
        assert summary["episode_returns"] and [row["ret"] for row in episodes[-len(summary["episode_returns"]):]] == \
            summary["episode_returns"]  # fmt: skip
    assert [row["step"] for row in episodes] == sorted(row["step"] for row in episodes) and episodes[-1]["step"] <= 400


def test_sigterm_stops_the_simulated_robot_command_cleanly(tmp_path):
    """A service manager's SIGTERM: the loop leaves at the next control period, the learner gets its
    grace, the summary says `interrupted` and by what, the exit code is the shell's 143, every
    transition taken is in the log and no child process is left."""
    import subprocess
    import sys

    from worldmodel import TransitionLog

    run_dir = tmp_path / "rt"
    cmd = [sys.executable, "-m", "planners.realtime", *REALTIME_TINY, "real_steps=100000", "seed=0",
           "worker=process", f"run_dir={run_dir}"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (run_dir / "transitions").is_dir() and len(TransitionLog(run_dir / "transitions", 11, 3,
                                                                               repair=False)) >= 150, timeout=120)  # fmt: skip
    children = [int(pid) for task in Path(f"/proc/{proc.pid}/task").iterdir() for pid in (task / "children").read_text().split()]
    proc.terminate()
    assert proc.wait(timeout=90) == 143
    wait_for(lambda: not any(map(running, children)), timeout=10)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["interrupted_by"] == "SIGTERM"
    # every transition the loop took (its own count) is in the log, read afresh
    assert summary["real_steps"] == summary["logged_transitions"] == len(TransitionLog(run_dir / "transitions", 11, 3)) >= 150


def test_one_agent_from_the_synchronous_loop_to_the_robot_and_back(tmp_path, capsys):
    """The Agent both loops build: a worldmodel.run directory is a robot run's `pretrained=`, the
    robot run's directory (agent.pt, model.pt) a pretrained agent again, learned value included."""
    from planners.agent import Agent
    from planners.realtime import main
    from worldmodel.run import main as run

    sim = tmp_path / "sim"
    run(["planner=mppi", "env=hopper", "env_steps=120", "seed_steps=60", "train_every=60", "eval_every=120",
         "env.max_episode_steps=100", "model.fit.max_epochs=2", "model.ensemble_size=3", "model.num_elites=2",
         "model.hidden=32", "planner.candidates=64", "planner.horizon=5", f"run_dir={sim}"])  # fmt: skip
    robot = tmp_path / "robot"
    capsys.readouterr()
    summary = main([*REALTIME_TINY, "real_steps=120", f"pretrained={sim}", "eval_at=[0]", "worker=thread",
                    f"run_dir={robot}"])  # (the kill -9 test above runs worker=process)
    said = capsys.readouterr().out
    assert f"run directory: {robot} (Ctrl-C stops the robot" in said and said.rstrip().splitlines()[-1].startswith(f"{robot}: act p50")
    assert summary["status"] == "finished" and summary["seed_actions"] == 0  # pretrained: the planner acts at once
    spec = make_env("hopper").task_spec
    for source in (sim, robot):
        agent = Agent(spec, {"name": "mppi", "candidates": 64, "horizon": 5}, pretrained=source)
        assert agent.loaded == "learned value" and agent.model.fitted
    before = Agent(spec, {"name": "mppi"}, pretrained=sim)
    after = Agent(spec, {"name": "mppi"}, pretrained=robot)
    obs = torch.randn(8, 11)
    assert not torch.equal(before.planner.value_agent.value(obs, True), after.planner.value_agent.value(obs, True))
    snapshot = Agent(spec, {"name": "mppi"}, pretrained=sim)
    snapshot.restore(robot / "snapshots" / "agent-0.pt")  # eval_at=[0]: the robot run's agent at its start
    assert torch.equal(snapshot.planner.value_agent.value(obs, True), before.planner.value_agent.value(obs, True))

    # a resume that cannot go on leaves the run's config as it was; a damaged log is a clear error
    # on resume, and the run directory is free again afterwards
    from worldmodel.checkpoint import RunDirLock

    config = (robot / "config.yaml").read_text()
    with pytest.raises(SystemExit, match="error: the pretrained agent does not fit"):
        main([f"resume={robot}", "planner.value_agent.hidden=64"])
    agent_file = (robot / "agent.pt").read_bytes()
    (robot / "agent.pt").write_bytes(b"damaged")
    with pytest.raises(SystemExit, match="cannot resume"):
        main([f"resume={robot}", "eval_episodes=2"])
    assert (robot / "config.yaml").read_text() == config
    (robot / "agent.pt").write_bytes(agent_file)

    segment = robot / "transitions" / "segment-000000.bin"
    segment.write_bytes(b"not a log" + segment.read_bytes()[9:])
    with pytest.raises(SystemExit, match="cannot resume .*bad header"):
        main([f"resume={robot}"])
    RunDirLock(robot).release()  # (raises "in use" if the failed resume kept the lock)


def test_the_robot_command_refuses_behaviour_cloning_which_learns_nothing_online(tmp_path):
    from planners.realtime import main

    with pytest.raises(SystemExit, match="planner=bc: .*behaviour cloning learns neither"):
        main(["env=hopper", "planner=bc", "real_steps=10", f"run_dir={tmp_path / 'rt'}"])
    assert not (tmp_path / "rt").exists()


def test_a_dyna_agent_acts_on_the_robot_and_its_policy_fine_tunes_in_the_background(tmp_path):
    """A pretrained MOPO agent deployed as it is (its policy acts; no planning), with the planner
    settings it was trained with but those given: the learning worker refits the model and trains a
    copy of the agent from real and imagined rows (planner.updates_per_step a real transition),
    swapping it in; the robot run's agent.pt is a pretrained MOPO agent again."""
    from planners.agent import Agent
    from planners.realtime import main
    from worldmodel.run import main as run

    sim = tmp_path / "sim"
    run(["planner=mopo", "env=hopper", "env_steps=120", "seed_steps=60", "train_every=60", "eval_every=120",
         "env.max_episode_steps=100", "model.fit.max_epochs=2", "model.ensemble_size=3", "model.num_elites=2",
         "model.hidden=32", "planner.updates_per_step=1", "planner.rollout_batch_size=64",
         "planner.agent.hidden=32", f"run_dir={sim}"])  # fmt: skip
    robot = tmp_path / "robot"
    summary = main([*[a for a in REALTIME_TINY if not a.startswith("planner.")], "planner=mopo",
                    "planner.updates_per_step=2", "planner.agent.actor_anchor=0.1", "real_steps=120",
                    f"pretrained={sim}", "worker=process", f"run_dir={robot}"])  # fmt: skip
    assert summary["status"] == "finished" and summary["seed_actions"] == 0 and summary["refits"] >= 1
    planner = OmegaConf.load(robot / "config.yaml").planner  # the sim run's, but for what was given
    assert planner.agent.hidden == 32 and planner.rollout_batch_size == 64 and planner.agent.actor_anchor == 0.1
    assert planner.updates_per_step == 2
    assert summary["value_updates"] >= 100 and summary["fresh_rate"] > 0.5  # (a policy plans in a millisecond)
    spec = make_env("hopper").task_spec
    settings = {"name": "mopo", "agent": {"hidden": 32}}
    before, after = Agent(spec, settings, pretrained=sim), Agent(spec, settings, pretrained=robot)
    assert after.loaded == "agent" and after.planner.agent.updates > before.planner.agent.updates
    obs = torch.randn(8, 11)
    assert not torch.equal(before.planner.act(obs, True), after.planner.act(obs, True))


def test_a_robot_run_whose_learner_dies_says_so_in_its_summary(tmp_path, monkeypatch):
    """A background worker that dies (here the learner's refit) ends the run with the error, and its
    summary.json says failed and why (a report lists it without a score), as a simulation run's does."""
    from planners.learning import BackgroundLearner
    from planners.realtime import main

    def broken(self):
        raise RuntimeError("the refit broke")

    monkeypatch.setattr(BackgroundLearner, "_refit", broken)
    with pytest.raises(RuntimeError, match="a background worker died: the refit broke"):
        main([*REALTIME_TINY, "real_steps=200", "worker=thread", f"run_dir={tmp_path / 'rt'}"])
    summary = json.loads((tmp_path / "rt" / "summary.json").read_text())
    assert summary["status"] == "failed" and "the refit broke" in summary["error"] and summary["logged_transitions"] > 0


def test_bad_robot_settings_or_an_unreadable_pretrained_file_fail_before_any_file(tmp_path):
    from planners.realtime import main

    with pytest.raises(SystemExit, match="wait_ms must be >= 0"):
        main([*REALTIME_TINY, "real_steps=10", "wait_ms=60", f"run_dir={tmp_path / 'rt'}"])
    for bad in ("0", "fast", "true"):
        with pytest.raises(SystemExit, match="control_priority must be (auto, null or )?an integer in 1-99"):
            main([*REALTIME_TINY, "real_steps=10", f"control_priority={bad}", f"run_dir={tmp_path / 'rt'}"])
    (tmp_path / "garbage.pt").write_bytes(b"not a model")
    with pytest.raises(SystemExit, match="error: .*garbage.pt"):
        main([*REALTIME_TINY, "real_steps=10", f"pretrained={tmp_path / 'garbage.pt'}", f"run_dir={tmp_path / 'rt'}"])
    assert not (tmp_path / "rt").exists()


@pytest.mark.parametrize("bad, message", [
    (dict(drop_rate=1.5), r"drop_rate must be in \[0, 1\), got 1.5"), (dict(latency_ms=float("nan")), "latency_ms must be >= 0, got nan"),
    (dict(control_hz=0), "control_hz must be > 0, got 0"), (dict(actuator_ms=-1), "actuator_ms must be >= 0, got -1"),
])  # fmt: skip
def test_a_simulated_robot_names_the_setting_it_refuses(bad, message):
    from worldmodel.robot import SimulatedRobot

    with pytest.raises(ValueError, match=message):
        SimulatedRobot("hopper", **bad)


def test_the_simulated_robot_measures_a_state_when_it_is_reached():
    """A reading is stamped at the tick its state is reached (where the step from it starts) and
    arrives latency_ms later, so an action sent in answer to reading j acts from the state after
    it (j+1 -> j+2, as `reading j+2`.action shows), never from j itself: the one period of delay
    RealtimeController plans for (ahead = ceil(delay_ms / period) = 1). Before, readings were
    stamped and sent a period early and the answer acted from state j."""
    from worldmodel.robot import SimulatedRobot

    period, latency = 0.1, 0.03
    readings, answers = {}, {}
    with SimulatedRobot("dmc/cartpole-swingup", control_hz=1 / period, latency_ms=latency * 1000) as robot:
        deadline = time.monotonic() + 5.0
        while len(readings) < 12 and time.monotonic() < deadline:
            for r in robot.readings(timeout=1.0):
                assert time.monotonic() >= r.stamp + latency  # (never before it was measured + the latency)
                readings[r.seq] = r
                answers[r.seq] = (r.seq % 19 - 9) / 10
                robot.send_action(torch.full((robot.spec.act_dim,), answers[r.seq]))
    seqs = sorted(readings)
    assert len(seqs) >= 10 and all(b - a == 1 for a, b in zip(seqs, seqs[1:]))  # (no reset in 1.2 s)
    stamps = [readings[s].stamp for s in seqs]
    assert all(abs(b - a - period) < 1e-6 for a, b in zip(stamps, stamps[1:]))
    # the action in effect during the step that led to reading s is reading s's
    carries = lambda s, j: abs(readings[s].action[0].item() - answers[j]) < 1e-6  # noqa: E731
    assert sum(carries(j + 1, j) for j in seqs[:-1]) <= 1  # (a physics tick woken 30 ms late lets one through)
    on_time = [carries(j + 2, j) for j in seqs[:-2]]
    assert sum(on_time) >= len(on_time) // 2  # (a loaded machine may answer some readings late)


def test_an_episode_ends_reading_arrives_before_the_resets_whatever_the_jitter():
    """The reset's reading is measured with the episode's last (the same stamp) but delivered after it."""
    from worldmodel.robot import SimulatedRobot

    arrived = []
    with SimulatedRobot("hopper", control_hz=200, latency_ms=4, jitter_ms=4, seed=0) as robot:
        deadline = time.monotonic() + 20.0
        while sum(r.first for r in arrived) < 6 and time.monotonic() < deadline:
            arrived += robot.readings(timeout=1.0)
            robot.send_action(torch.rand(3) * 2 - 1)  # (random torques: the hopper falls within a second)
    order = {r.seq: i for i, r in enumerate(arrived)}
    resets = [r for r in arrived if r.first and r.seq > 0]
    assert len(resets) >= 5
    for reset in resets:
        assert reset.seq - 1 in order and order[reset.seq - 1] < order[reset.seq]
        ended = arrived[order[reset.seq - 1]]
        assert (ended.terminated or ended.truncated) and ended.stamp == reset.stamp


@pytest.mark.parametrize("pause_s", [0.0, 0.012], ids=["on time", "late after a fall"])
def test_a_new_episode_starts_at_rest_whatever_was_sent_for_the_last(pause_s):
    """The reset routine hands the robot back at rest and takes no command sent before the new
    episode's first reading reached the driver: a falling walker's last torques, held into the new
    episode, toppled it within 7-11 steps. Commands sent from that reading on act as usual. A
    simulation that falls behind the clock (here 12 ms after each fall, at 200 Hz: its next step
    comes after the new episode's first reading was delivered and answered) still steps on the
    commands in effect at its tick, not on an answer that came later (that made this test flaky
    on a loaded machine)."""
    from worldmodel.robot import SimulatedRobot

    arrived, full = [], torch.ones(3)
    with SimulatedRobot("hopper", control_hz=200, latency_ms=4, seed=0) as robot:
        if pause_s:
            step = robot.env.step_and_maybe_reset

            def late_after_a_fall(td):
                out = step(td)
                if bool(out[0]["next", "done"]):
                    time.sleep(pause_s)
                return out

            robot.env.step_and_maybe_reset = late_after_a_fall
        deadline = time.monotonic() + 20.0
        while sum(r.first for r in arrived) < 6 and time.monotonic() < deadline:
            arrived += robot.readings(timeout=1.0)
            robot.send_action(full)  # (full torque: the hopper falls within a second)
    by_seq = {r.seq: r for r in arrived}
    starts = [r for r in arrived if r.first and r.seq > 0 and r.seq + 1 in by_seq]
    assert len(starts) >= 4 and (robot.overruns > 0 or not pause_s)
    for first in starts:  # the new episode's first step acted at rest, its later ones on the commands
        assert torch.equal(by_seq[first.seq + 1].action, robot.rest)
    # (from the first reset on, 10 steps (50 ms) after a reset: a simulation behind its clock, as at its start,
    # takes a command at the first tick after it came, and this loop may answer late on a loaded machine)
    later = [r for r in arrived if not r.first and r.seq > starts[0].seq + 10 and r.seq - 10 in by_seq and not any(
        by_seq.get(r.seq - k, r).first for k in range(1, 11))]
    assert later and all(torch.equal(r.action, full) for r in later)


def test_a_command_that_names_the_reading_it_answers_counts_for_that_readings_episode():
    """With jitter the time a command was sent does not say which episode it answered: an answer to
    an episode's last reading may be sent after the next one's first reading arrived (it must not
    move the robot in the new episode), and an answer to the new episode's second reading, delivered
    before its first, before that one arrived (it must). `answers=<seq>` decides; without it, the time."""
    from worldmodel.robot import SimulatedRobot

    robot = SimulatedRobot("hopper", control_hz=20, latency_ms=20, jitter_ms=10, seed=0)
    robot._episode_first_seq, robot._episode_delivered = 40, 10.0  # (a reset: reading 40 began the episode at 10 s)
    assert not robot._for_this_episode(effective=10.2, answers=39)  # sent after the new first reading: the old one's
    assert robot._for_this_episode(effective=9.9, answers=41)  # sent before it: the new episode's second reading's
    assert robot._for_this_episode(effective=10.2, answers=None) and not robot._for_this_episode(9.9, None)


def test_readings_that_arrive_out_of_order_still_make_every_transition():
    from planners.realtime import ReadingPairs
    from worldmodel.robot import Reading

    def reading(seq, first=False, value=0.0):
        return Reading(delivery=0.0, seq=seq, obs=torch.full((2,), float(seq) + value), stamp=seq * 0.05,
                       action=None if first else torch.zeros(1), terminated=seq == 3, first=first)  # fmt: skip

    paired = ReadingPairs()
    assert paired.add([reading(0, first=True), reading(1)]) and paired.newest.seq == 1
    assert paired.episode_begun() and not paired.episode_begun()  # (said once)
    assert [(b.seq, a.seq) for b, a in paired.add([reading(2), reading(4, first=True)])] == [(1, 2)]
    assert paired.newest.seq == 4 and paired.episode_begun()  # (the reset's reading came first: act on it)
    late = paired.add([reading(3)])  # the episode's last reading, late: it completes its transition
    assert [(b.seq, a.seq, a.terminated) for b, a in late] == [(2, 3, True)] and paired.newest.seq == 4
    assert [(b.seq, a.seq) for b, a in paired.add([reading(6), reading(5)])] == [(4, 5), (5, 6)]
    assert paired.add([reading(6)]) == []  # (delivered twice)
    assert paired.add([reading(7, value=float("nan"))]) == [] and paired.nonfinite == 1
    # an episode's first reading that comes after its second: the act after it is told
    paired.add([reading(11)])
    assert not paired.episode_begun()
    paired.add([reading(10, first=True)])
    assert paired.newest.seq == 11 and paired.episode_begun()
    # a reading delivered again (or for the first time) a window late: no pair, none logged twice
    assert len(paired.add([reading(s) for s in range(12, 45)])) == 33 and paired.newest.seq == 44
    assert paired.add([reading(12)]) == [] and paired.too_late == 1


def test_a_non_finite_reading_makes_no_transition():
    from planners.realtime import _finite
    from worldmodel.robot import Reading

    def reading(obs, reward=1.0):
        return Reading(delivery=0.0, seq=0, obs=torch.tensor(obs), stamp=0.0, reward=reward)

    assert _finite(reading([0.0, 1.0]), reading([1.0, 2.0]))
    assert not _finite(reading([0.0, float("nan")]), reading([1.0, 2.0]))
    assert not _finite(reading([0.0, 1.0]), reading([float("inf"), 2.0]))
    assert not _finite(reading([0.0, 1.0]), reading([1.0, 2.0], reward=float("nan")))
    nan_action = reading([1.0, 2.0])
    nan_action.action = torch.tensor([float("nan")])
    assert not _finite(reading([0.0, 1.0]), nan_action)


@pytest.mark.filterwarnings("ignore:planning with a model that was never fitted")  # (its final evaluation)
def test_a_run_that_never_refitted_still_leaves_its_agent_files(tmp_path):
    """The agent's files are saved when the run ends, not only after a background refit (a run
    shorter than train_every has none), so its directory can be a later run's pretrained=."""
    from planners.realtime import main

    run_dir = tmp_path / "rt"
    summary = main([*REALTIME_TINY, "real_steps=30", "worker=thread", f"run_dir={run_dir}"])
    assert summary["status"] == "finished" and summary["refits"] == 0
    assert (run_dir / "agent.pt").is_file() and (run_dir / "model.pt").is_file()


def test_a_resumed_robot_run_goes_on_numbering_its_model_versions(tmp_path):
    """Refit records, snapshots and agent.pt name the model version they come from: a resumed run
    goes on from its saved agent's version (it began at 0 again, so two refits shared a number)."""
    from planners.realtime import main

    run_dir = tmp_path / "rt"
    first = main([*REALTIME_TINY, "real_steps=120", "worker=thread", f"run_dir={run_dir}"])
    resumed = main([f"resume={run_dir}", "real_steps=240"])
    versions = [r["model_version"] for r in (json.loads(line) for line in (run_dir / "metrics.jsonl").open())
                if r["kind"] == "refit"]  # fmt: skip
    assert first["model_version"] >= 1 and resumed["model_version"] > first["model_version"]
    assert versions == sorted(set(versions)), versions


def test_a_planning_process_that_stalls_gives_the_shifted_plan_then_the_safe_action(hopper, tmp_path):
    spec, model, data = hopper
    planner = Stalling(model, spec, MPPIConfig(horizon=H, candidates=64, value_learning=False, seed=0))
    planner.stall_file = tmp_path / "stall"
    safe, period, obs = torch.tensor([0.1, -0.2, 0.0]), 0.05, data["obs"][0]
    with RealtimeController(planner, spec, RealtimeConfig(control_hz=1 / period, worker="process"), safe_action=safe) as rt:
        assert torch.equal(rt.act(obs, 0.0), safe)  # no plan yet
        wait_for(lambda: counts(rt)["plans"] >= 1)
        planner.stall_file.touch()  # (the process's copy of the planner reads the same file)
        assert torch.equal(rt.act(obs, period), newest(rt).actions[0])  # the plan made from t=0 starts one period on
        for k in range(1, H):
            assert torch.equal(rt.act(obs, (k + 1) * period), newest(rt).actions[k])
        assert torch.equal(rt.act(obs, (H + 1) * period), safe)  # past the plan's end
        stats = rt.stats()
        assert (stats["fresh"], stats["shifted"], stats["fallback"], stats["plans"]) == (1, H - 1, 2, 1)
        planner.stall_file.unlink()


def test_a_planning_process_takes_swaps_between_plans_and_its_death_means_the_safe_action(hopper):
    spec, model, data = hopper
    with RealtimeController(mppi(model, spec), spec, RealtimeConfig(control_hz=100, worker="process")) as rt:
        i = 0
        for version in (1, 2):
            assert rt.swap(model) == version
            while newest(rt) is None or newest(rt).version < version:  # plans made before the swap still arrive
                rt.act(data["obs"][i % 100], i * 0.01)
                i += 1
                time.sleep(0.01)
            assert newest(rt).version == version
        assert counts(rt)["fresh"] > 0 and rt.alive and rt.error is None
        os.kill(rt._process.process.pid, signal.SIGKILL)
        wait_for(lambda: not rt.alive)
        assert torch.equal(rt.act(data["obs"][0], i * 0.01), rt.safe_action)
        assert "planning process exited" in str(rt.error)


def _fifo_allowed() -> bool:
    """Whether this process may put a thread under SCHED_FIFO (root, CAP_SYS_NICE or an rtprio limit)."""
    from planners.realtime import AUTO_PRIORITY
    from worldmodel import threads

    return threads.realtime_allowed(AUTO_PRIORITY)


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux's SCHED_BATCH")
@pytest.mark.parametrize("worker, priority", [("thread", None), ("process", None), ("thread", 10), ("process", 10)])
def test_planning_and_learning_workers_are_batch_scheduled(hopper, tmp_path, worker, priority):
    """The workers run under SCHED_BATCH (woken, one waits for the scheduler's tick instead of
    taking act()'s core: a policy's 3 ms plans made act()'s p99 3-4 ms on 2 cores without it);
    the thread that calls act() keeps its own policy, or with `priority` runs under SCHED_FIFO at
    it while the controller runs (the workers it starts do not inherit it) and gets its policy
    back at stop()."""
    from planners.agent import Agent
    from planners.processes import LearningProcess
    from planners.realtime import BackgroundLearner

    if priority is not None and not _fifo_allowed():
        pytest.skip("this user may not use SCHED_FIFO")
    spec, _, data = hopper
    agent = Agent(spec, {"name": "mppi", "candidates": 16, "horizon": 3, "value_learning": False},
                  model={"ensemble_size": 3, "num_elites": 2, "hidden": 32, "layers": 2})  # fmt: skip
    agent.open_log(tmp_path / "log")
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    config = RealtimeConfig(control_hz=50, worker=worker, priority=priority)
    with RealtimeController(agent.planner, spec, config) as rt:
        learning = LearningProcess if worker == "process" else BackgroundLearner
        with learning(rt, agent, train_every=10_000) as learner:
            if worker == "process":
                workers = [rt._process.process.pid, learner.process.pid]
            else:
                workers = [rt._thread.native_id, learner._thread.native_id]
            wait_for(lambda: all(os.sched_getscheduler(tid) == os.SCHED_BATCH for tid in workers))
            if priority is None:
                assert os.sched_getscheduler(0) == policy
            else:  # this thread and the watchdog's (which does not inherit it: it raises itself)
                for tid in (threading.get_native_id(), rt._watcher.native_id):
                    wait_for(lambda: os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO)
                    assert os.sched_getparam(tid).sched_priority == priority
                rt.act(data["obs"][0], 0.0)  # (acts there)
    assert os.sched_getscheduler(0) == policy and os.sched_getparam(0) == param


def test_control_priority_auto_runs_ordinary_where_the_user_may_not_and_says_so(unprivileged):
    """control_priority=auto: AUTO_PRIORITY where this user may use SCHED_FIFO; an ordinary user
    with no rtprio allowance gets ordinary scheduling and a note saying how to allow it, and an
    explicit priority is refused with what to do."""
    from planners.realtime import AUTO_PRIORITY, _control_priority

    assert _control_priority("auto") == (AUTO_PRIORITY if _fifo_allowed() else None)
    assert _control_priority(None) is None
    out, err = unprivileged("from planners.realtime import _control_priority", (
        "print(_control_priority('auto'))\n"
        "try:\n    _control_priority(80)\nexcept PermissionError as e:\n    print(e)"))  # fmt: skip
    assert out.splitlines()[0] == "None" and "may not use SCHED_FIFO" in err and "CAP_SYS_NICE" in err
    assert "priority 80 is not allowed to this user" in out


def test_a_controller_that_fails_to_start_leaves_the_thread_as_it_was(hopper):
    """A planner that does not pickle cannot go to a planning process: start() raises, and the
    thread's scheduling, Python's switch interval and the collector are as before."""
    import gc
    import sys

    spec, model, data = hopper
    planner = mppi(model, spec)
    planner.hook = lambda: None  # (a lambda does not pickle)
    policy, param, interval = os.sched_getscheduler(0), os.sched_getparam(0), sys.getswitchinterval()
    priority = 10 if _fifo_allowed() else None
    config = RealtimeConfig(control_hz=50, worker="process", priority=priority, switch_interval_ms=0.5)
    controller = RealtimeController(planner, spec, config)
    with pytest.raises(Exception, match="pickle"):
        controller.start()
    assert os.sched_getscheduler(0) == policy and os.sched_getparam(0) == param
    assert sys.getswitchinterval() == interval and gc.get_freeze_count() == 0
    assert controller._watcher is None and controller._thread is None and controller._process is None


@pytest.mark.parametrize("bad", [0, 100, True, 1.5, "50"])
def test_a_priority_outside_sched_fifos_range_is_refused(bad):
    from worldmodel.robot import SimulatedRobot

    with pytest.raises(ValueError, match=r"priority must be an integer in 1-99"):
        RealtimeConfig(priority=bad)
    with pytest.raises(ValueError, match=r"priority must be an integer in 1-99"):
        SimulatedRobot("hopper", priority=bad)


def test_a_started_controller_keeps_what_exists_out_of_the_collectors_full_passes(hopper):
    """start() collects, then freezes every object there is (gc.freeze): a full collection in
    the loop then scans only what came later (one over a robot run's ~500k objects took 218 ms);
    the last running controller's stop() thaws them."""
    import gc
    import weakref

    class Cycle:
        pass

    spec, model, data = hopper
    gc.disable()  # (no automatic collection: only start() can collect the cycle)
    try:
        cycle, kept = Cycle(), Cycle()
        cycle.itself = cycle
        gone = weakref.ref(cycle)
        del cycle
        assert any(o is kept for o in gc.get_objects())
        first, second = (RealtimeController(mppi(model, spec), spec, RealtimeConfig(control_hz=50)) for _ in range(2))
        with first:
            assert gone() is None  # garbage before the start is collected, not frozen
            assert not any(o is kept for o in gc.get_objects())  # (frozen objects are not listed)
            with second:
                pass
            assert not any(o is kept for o in gc.get_objects())  # (one still runs)
        assert any(o is kept for o in gc.get_objects())
    finally:
        gc.enable()


def test_a_script_without_a_main_guard_gets_an_error_not_a_hang(tmp_path):
    """A spawned planning process imports the main module: a script that starts one at its top
    level makes the child die on its way up, before it read its planner (megabytes). The script
    ends with an error saying what to do, where the start used to block forever."""
    import subprocess
    import sys

    script = tmp_path / "robot.py"
    script.write_text(
        "from planners import MPPI\n"
        "from planners.realtime import RealtimeConfig, RealtimeController\n"
        "from worldmodel import EnsembleDynamics, make_env\n"
        "spec = make_env('hopper').task_spec\n"
        "planner = MPPI(EnsembleDynamics(spec.obs_dim, spec.act_dim), spec)\n"
        "with RealtimeController(planner, spec, RealtimeConfig(worker='process')):\n"
        "    pass\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, env=env,
                          cwd=tmp_path)  # fmt: skip
    assert done.returncode != 0
    assert "the planning process failed to start" in done.stderr and 'if __name__ == "__main__":' in done.stderr


def test_a_planner_that_raises_a_bug_kills_its_process_and_says_why(hopper):
    spec, model, data = hopper
    planner = Broken(model, spec, MPPIConfig(horizon=H, candidates=64, value_learning=False, seed=0))
    with RealtimeController(planner, spec, RealtimeConfig(control_hz=100, worker="process")) as rt:
        rt.act(data["obs"][0], 0.0)
        wait_for(lambda: not rt.alive)
        assert torch.equal(rt.act(data["obs"][1], 0.01), rt.safe_action)
        assert "planning process died: TypeError: a bug in the planner" in str(rt.error)


@pytest.mark.parametrize("imagination", [{}, {"real_ratio": 0.5, "rollout_batch_size": 32, "rollout_every": 100}])
def test_the_learned_value_trains_between_refits_one_update_per_real_transition(hopper, tmp_path, monkeypatch,
                                                                               imagination):
    """FOWM's pace: the background learner trains its own copy of the learned value, one update per
    real transition (planner.value_updates_per_step), and swaps it in without waiting for a refit;
    with value_imagination part of each batch is imagined, a round every rollout_every updates."""
    from planners.agent import Agent
    from planners.imagination import Imagination
    from planners.realtime import BackgroundLearner

    spec, model, data = hopper
    agent = Agent(spec, {"name": "mppi", "candidates": 16, "horizon": 3, "value_updates_per_step": 2,
                         "value_imagination": imagination},
                  model={"ensemble_size": 3, "num_elites": 2, "hidden": 32, "layers": 2})  # fmt: skip
    agent.planner.model = model  # (a fitted model to imagine with)
    rounds = []
    rollout = Imagination.rollout
    monkeypatch.setattr(Imagination, "rollout", lambda self, *a, **k: rounds.append(1) or rollout(self, *a, **k))
    agent.open_log(tmp_path / "log")
    controller = RealtimeController(agent.planner, spec, RealtimeConfig(control_hz=50))
    swaps, stats = [], []
    start, obs = agent.planner.value_agent, data["obs"][:16]
    before = start.value(obs, True).clone()
    learner = BackgroundLearner(controller, agent, train_every=10_000, on_swap=lambda v, m: swaps.append(m),
                                on_value=lambda v, s: stats.append(s))  # fmt: skip
    with learner:
        for i in range(0, 120, 30):
            learner.add(data[i : i + 30])
        wait_for(lambda: learner.value_updates == 240)  # 2 per transition; no refit is due (train_every)
    # value swaps only, one per 50 updates however the updates were spread, and the rest at stop()
    assert learner.refits == 0 and len(swaps) == -(-240 // learner.VALUE_SWAP_EVERY) and all(m is None for m in swaps)
    assert controller.version == len(swaps) and agent.planner.value_agent is start  # loaded in place
    # each swap reports the mean stats of the updates it brought, and the count so far
    assert [s["value_updates"] for s in stats] == [50, 100, 150, 200, 240]
    assert all(math.isfinite(s["q"]) and s["alpha"] > 0 and s["critic_loss"] >= 0 for s in stats)
    assert not torch.equal(agent.planner.value_agent.value(obs, True), before)
    assert len(agent.log) == 120  # every transition logged before it was learned from
    # with imagination: rounds before updates 1, 101 and 201, each 32 starts x 1-5 steps (the hopper may fall)
    assert len(rounds) == (3 if imagination else 0)
    if imagination:
        assert 3 * 32 <= len(agent.planner.imagination.model_buffer) <= 3 * 32 * 5
        assert all(s["imagined"] >= 32 and s["penalty_mean"] == 0 for s in stats)  # (the last round's, in each row)


def test_a_resumed_learner_owes_the_value_updates_its_saved_value_did_not_have(hopper, tmp_path):
    """Each swap records the buffer rows the learned value has had its updates for (agent.pt's
    value_covered); a learner on an agent restored from it owes, before any new transition, the
    updates for the rows logged after it (a killed run made them and lost them with its process)."""
    from planners.agent import Agent
    from planners.realtime import BackgroundLearner, save_agent_files

    spec, model, data = hopper

    def new_agent(rows: int) -> Agent:
        agent = Agent(spec, {"name": "mppi", "candidates": 16, "horizon": 3, "value_updates_per_step": 2},
                      model={"ensemble_size": 3, "num_elites": 2, "hidden": 32, "layers": 2})  # fmt: skip
        agent.planner.model = model
        agent.buffer.extend(data[:rows]) if rows else None
        return agent

    def learner(agent: Agent) -> BackgroundLearner:
        return BackgroundLearner(RealtimeController(agent.planner, spec, RealtimeConfig(control_hz=50)), agent, 10_000)

    agent = new_agent(0)
    agent.open_log(tmp_path / "log")
    with learner(agent) as running:
        running.add(data[:100])
        wait_for(lambda: running.value_updates == 200)
    assert agent.value_covered == 100
    save_agent_files(tmp_path, agent, 3)
    resumed = new_agent(130)  # (killed 30 transitions later: logged, so in the buffer again)
    resumed.value_covered = resumed.restore(tmp_path / "agent.pt")["value_covered"]  # (as the robot run resumes)
    assert learner(resumed)._value_owed() == 60
    assert learner(new_agent(130))._value_owed() == 0  # (a fresh agent owes nothing for a dataset's rows)


def test_each_value_row_is_the_mean_of_the_updates_it_brought_refits_between_included(hopper, tmp_path, monkeypatch):
    """on_value reports every learned-value update once, in the swap that brought it: a value swap
    or a refit (which swaps the value as it stands); each row's q is the mean of its updates' q."""
    from planners import SAC
    from planners.agent import Agent
    from planners.realtime import BackgroundLearner

    seen = []
    update = SAC.update
    monkeypatch.setattr(SAC, "update", lambda self, batch: seen.append(update(self, batch)) or seen[-1])
    spec, _, data = hopper
    agent = Agent(spec, {"name": "mppi", "candidates": 16, "horizon": 3, "value_updates_per_step": 2},
                  model={"ensemble_size": 3, "num_elites": 2, "hidden": 32, "layers": 2}, fit={"max_epochs": 2})  # fmt: skip
    agent.open_log(tmp_path / "log")
    controller = RealtimeController(agent.planner, spec, RealtimeConfig(control_hz=50))
    rows = []
    with BackgroundLearner(controller, agent, train_every=35, on_value=lambda v, s: rows.append(s)) as learner:
        for i in range(0, 140, 7):
            learner.add(data[i : i + 7])
        wait_for(lambda: learner.value_updates == 280)
    counts = [b["value_updates"] - a for a, b in zip([0] + [r["value_updates"] for r in rows], rows)]
    assert learner.refits >= 1 and sum(counts) == len(seen) == 280 and max(counts) <= learner.VALUE_SWAP_EVERY
    start = 0
    for row, n in zip(rows, counts):
        assert row["q"] == pytest.approx(sum(s["q"] for s in seen[start : start + n]) / n)
        start += n


def test_background_refits_hold_out_among_the_transitions_added_since_the_last(hopper, tmp_path, monkeypatch):
    """A background refit of a fitted model judges itself on the transitions that arrived since the
    model's last fit (EnsembleDynamics.fit's new_rows), and refit_now(new) says how many rows at the
    buffer's end a resumed run's model never saw: its refit holds out among those."""
    from planners.agent import Agent
    from planners.realtime import BackgroundLearner
    from worldmodel import fitting

    monkeypatch.setattr(fitting, "MIN_NEW_HOLDOUT", 5)  # (small data: 60 new rows hold out 12)
    spec, model, data = hopper
    agent = Agent(spec, {"name": "mppi", "candidates": 16, "horizon": 3, "value_learning": False},
                  model={"ensemble_size": 3, "num_elites": 2, "hidden": 32, "layers": 2}, fit={"max_epochs": 2})  # fmt: skip
    agent.open_log(tmp_path / "log")
    agent.add_dataset(data[:300])
    agent.refit()  # fitted on the 300 rows
    controller = RealtimeController(agent.planner, spec, RealtimeConfig(control_hz=50))
    refits = []
    with BackgroundLearner(controller, agent, train_every=60, on_swap=lambda v, m: refits.append(m)) as learner:
        learner.add(data[300:360])
        wait_for(lambda: learner.refits == 1)
        agent.buffer.extend(data[360:400])  # (as a resumed run's log rejoins the buffer)
        learner.refit_now(40)
        wait_for(lambda: learner.refits == 2)
        learner.add(data[:10])  # fewer than train_every: no refit
    assert [m["holdout"] for m in refits] == ["new rows", "new rows"]
    assert [m["n_holdout"] for m in refits] == [12, 8]  # 20% of the 60, then of the 40 new rows
    # what a resume reads: the rows the last refit fitted on, not the buffer's count when saved
    from planners.realtime import save_agent_files

    save_agent_files(tmp_path, agent, controller.version)
    assert agent.buffer.written == 410 and torch.load(tmp_path / "agent.pt", weights_only=False)["fit_written"] == 400


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_leaving_the_learner_on_an_interrupt_ends_a_busy_worker_after_its_grace(hopper, tmp_path, monkeypatch, worker):
    """Ctrl-C while the learner owes 100,000 value updates (minutes): `with learner:` gives it
    STOP_GRACE_S, then ends it; every transition added is in the log all the same."""
    from planners.agent import Agent
    from planners.learning import Learner
    from planners.processes import LearningProcess
    from planners.realtime import BackgroundLearner

    spec, _, data = hopper
    agent = Agent(spec, {"name": "mppi", "candidates": 16, "horizon": 3, "value_updates_per_step": 1000},
                  model={"ensemble_size": 3, "num_elites": 2, "hidden": 32, "layers": 2})  # fmt: skip
    agent.open_log(tmp_path / "log")
    monkeypatch.setattr(Learner, "STOP_GRACE_S", 1.0)
    controller = RealtimeController(agent.planner, spec, RealtimeConfig(control_hz=50, worker=worker))
    with controller:
        if worker == "process":
            learner = LearningProcess(controller, agent, train_every=10_000)
        else:
            learner = BackgroundLearner(controller, agent, train_every=10_000)
        began = None
        with pytest.raises(KeyboardInterrupt), learner:
            learner.add(data[:100])
            wait_for(lambda: learner.log_backlog == 0 and len(agent.log) == 100)
            began = time.monotonic()
            raise KeyboardInterrupt
        assert learner.ended_early and time.monotonic() - began < 15
        assert learner.value_updates < 100_000 and len(agent.log) == 100
        if worker == "process":
            assert not learner.process.is_alive() and learner.error is None


def test_a_swapped_value_is_a_copy_the_learner_may_keep_training():
    """apply_swap loads the learned SAC (planner.LEARNED: an MPC planner's value, a Dyna planner's
    agent) into the planner's own (in place), or deep-copies it where the planner has none: either
    way the learner's object stays its own."""
    from types import SimpleNamespace

    from planners import SAC, SACConfig
    from planners.processes import apply_swap

    low, high = -torch.ones(2), torch.ones(2)
    learners = SAC(3, low, high, SACConfig(hidden=8))
    for name, own in itertools.product(("value_agent", "agent"), (None, SAC(3, low, high, SACConfig(hidden=8)))):
        planner = SimpleNamespace(LEARNED=name, **{name: own})
        apply_swap(planner, {name: learners})
        held = getattr(planner, name)
        assert held is not learners and (own is None or held is own)
        swapped = [p.clone() for p in held.parameters()]
        assert all(torch.equal(a, b) for a, b in zip(swapped, learners.parameters()))
        with torch.no_grad():
            for p in learners.parameters():
                p.add_(1.0)  # the learner trains on
        assert all(torch.equal(a, b) for a, b in zip(swapped, held.parameters()))


def test_a_stalled_disk_delays_the_log_never_the_control_loop(hopper, tmp_path, monkeypatch):
    """learner.add returns at once while each fsync takes 0.3 s (a stalled SD card): the writer
    thread logs the transitions in groups, the learner gets each only once it is on disk, and
    stop() logs everything that was added."""
    import worldmodel.transition_log as tl
    from planners.agent import Agent
    from planners.realtime import BackgroundLearner

    spec, _, data = hopper
    agent = Agent(spec, {"name": "mppi", "candidates": 16, "horizon": 3, "value_learning": False},
                  model={"ensemble_size": 3, "num_elites": 2, "hidden": 32, "layers": 2})  # fmt: skip
    controller = RealtimeController(agent.planner, spec, RealtimeConfig(control_hz=50))
    learner = BackgroundLearner(controller, agent, train_every=10_000)
    with pytest.raises(RuntimeError, match="no transition log: call agent.open_log"):
        learner.start()
    log = agent.open_log(tmp_path / "log")
    with pytest.raises(RuntimeError, match="not running"):
        learner.add(data[:1])
    fsync = tl.os.fsync
    monkeypatch.setattr(tl.os, "fsync", lambda fd: (time.sleep(0.3), fsync(fd)))
    with learner:
        worst = 0.0
        for i in range(40):
            began = time.perf_counter()
            learner.add(data[i : i + 1])
            worst = max(worst, time.perf_counter() - began)
        assert worst < 0.05 and learner.log_backlog > 0 and len(log) < 40
        taken = agent.buffer.written
        assert taken <= len(log)  # the learner took in only what was on disk
    assert len(log) == 40 and learner.log_backlog == 0 and learner.error is None
    assert torch.equal(log.read()["obs"], data["obs"][:40])
    wait_for(lambda: agent.buffer.written == 40)


def test_a_planner_that_imagines_learns_its_value_only_from_a_fitted_models_rows(hopper, tmp_path, monkeypatch):
    """With no pretrained model, no value update (and so no rollout round) runs before the first
    refit: an unfitted model's rows are noise and would stay in the model buffer for rounds."""
    from planners.agent import Agent
    from planners.imagination import Imagination
    from planners.realtime import BackgroundLearner

    spec, _, data = hopper
    agent = Agent(spec, {"name": "mppi", "candidates": 16, "horizon": 3, "value_updates_per_step": 2,
                         "value_imagination": {"real_ratio": 0.5, "rollout_batch_size": 32, "rollout_every": 100}},
                  model={"ensemble_size": 3, "num_elites": 2, "hidden": 32, "layers": 2}, fit={"max_epochs": 2})  # fmt: skip
    assert not agent.planner.model.fitted
    fitted_at_rollout = []
    rollout = Imagination.rollout
    monkeypatch.setattr(Imagination, "rollout", lambda self, *a, **k: fitted_at_rollout.append(self.planner.model.fitted)
                        or rollout(self, *a, **k))  # fmt: skip
    agent.open_log(tmp_path / "log")
    controller = RealtimeController(agent.planner, spec, RealtimeConfig(control_hz=50))
    with BackgroundLearner(controller, agent, train_every=60) as learner:
        learner.add(data[:60])
        wait_for(lambda: learner.refits == 1)
        learner.add(data[60:120])
        wait_for(lambda: learner.value_updates == 120)
    assert fitted_at_rollout and all(fitted_at_rollout)
    assert learner.value_updates == 2 * (120 - 60)  # owed from the transitions added after the first fit


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_a_signal_while_the_learner_drains_at_the_end_gives_it_its_grace_and_skips_the_evaluation(tmp_path, monkeypatch,
                                                                                                  worker):
    """At the last step a clean exit waits for the learner to finish what it owes (here tens of
    thousands of value updates); a SIGTERM then (a supervisor stopping the run) gives it
    STOP_GRACE_S, and the run ends interrupted, without its final evaluation (a resume makes it),
    instead of draining for minutes and evaluating as if finished."""
    from planners.learning import Learner
    from planners.realtime import main

    monkeypatch.setattr(Learner, "STOP_GRACE_S", 0.5)
    stop = Learner.stop

    def signalled(self, grace_s=None):
        if grace_s is None:  # (the clean exit's drain)
            os.kill(os.getpid(), signal.SIGTERM)
        return stop(self, grace_s)

    monkeypatch.setattr(Learner, "stop", signalled)
    began = time.monotonic()
    summary = main([*REALTIME_TINY, "real_steps=100", "planner.value_updates_per_step=500", f"worker={worker}",
                    f"run_dir={tmp_path / 'rt'}"])  # fmt: skip
    assert summary["status"] == "interrupted" and summary["interrupted_by"] == "SIGTERM"
    assert summary["final_eval_return"] is None and summary["learner_ended_early"]
    assert summary["logged_transitions"] == 100 and time.monotonic() - began < 60
