"""The planning step as one CUDA graph (planners/graph.py): on any machine, that a step makes no host
syncs (what capture forbids); on a CUDA GPU, that graphed plans equal eager ones step by step."""

import copy
import pickle
import threading

import pytest
import torch

import kernels
from planners import CEM, ICEM, MPPI, CEMConfig, ICEMConfig, MPPIConfig, PlanningError, RandomShooting
from planners.graph import HostSyncError, graph_key, host_syncs_allowed, no_host_syncs
from planners.processes import apply_swap
from planners.random_shooting import RandomShootingConfig
from worldmodel.ensemble import EnsembleDynamics
from worldmodel.envs import TaskSpec
from worldmodel.termination import hopper_termination

OBS, ACT = 11, 3
SMALL = dict(horizon=4, seed=0)


def hopper_model(device="cpu", hidden=32) -> EnsembleDynamics:
    torch.manual_seed(0)
    model = EnsembleDynamics(OBS, ACT, hidden=hidden, layers=2, termination_fn=hopper_termination).to(device)
    model.input_norm.fit(torch.randn(64, OBS + ACT, device=device))
    model.target_norm.fit(0.1 * torch.randn(64, OBS + 1, device=device))
    return model


def hopper_spec() -> TaskSpec:
    return TaskSpec(name="hopper", obs_dim=OBS, act_dim=ACT, action_low=-torch.ones(ACT),
                    action_high=torch.ones(ACT), max_episode_steps=1000, termination_fn=hopper_termination)


STEPS = {  # the step variants a planning step can take (propagation, penalty, value, noise, slew)
    "mppi default (ts1, learned value)": lambda m, s: MPPI(m, s, MPPIConfig(**SMALL, candidates=16)),
    "mppi coloured noise, 2 iterations": lambda m, s: MPPI(m, s, MPPIConfig(**SMALL, candidates=16, noise_beta=2.0,
                                                                            iterations=2)),
    "mppi slew limit, value penalty": lambda m, s: MPPI(m, s, MPPIConfig(**SMALL, candidates=16, slew=0.1,
                                                                         value_penalty=1.0)),
    "cem tsinf particles, uncertainty penalty": lambda m, s: CEM(m, s, CEMConfig(
        **SMALL, candidates=16, num_elites=4, iterations=2, particles=2, propagation="tsinf",
        uncertainty_penalty=1.0)),
    "cem expectation": lambda m, s: CEM(m, s, CEMConfig(**SMALL, candidates=16, num_elites=4, iterations=2,
                                                        propagation="expectation", value_learning=False)),
    "random shooting": lambda m, s: RandomShooting(m, s, RandomShootingConfig(**SMALL, candidates=16)),
}


def cpu_kernels_may_sync(monkeypatch):
    """The CPU kernels read member ids on the host (they never run on a GPU, where the Triton
    launchers run instead: tests/test_kernels_triton.py checks those)."""
    from kernels import dispatch

    def allowed(fn):
        def call(*args, **kwargs):
            with host_syncs_allowed():
                return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(dispatch.cpu, "ensemble_mlp", allowed(dispatch.cpu.ensemble_mlp))
    monkeypatch.setattr(EnsembleDynamics, "_members_only", allowed(EnsembleDynamics._members_only))


@pytest.mark.parametrize("name", STEPS)
def test_a_planning_step_makes_no_host_syncs(name, monkeypatch):
    cpu_kernels_may_sync(monkeypatch)
    planner = STEPS[name](hopper_model(), hopper_spec())
    obs = torch.randn(OBS) * 0.1 + torch.tensor([1.2] + [0.0] * (OBS - 1))
    planner.act(obs)  # the first step may check once (the model fitted, the elites in range)
    warm = planner._warm_start(1)
    with torch.no_grad(), no_host_syncs():
        plan, _ = planner.optimize(obs.reshape(1, -1), warm)
    assert plan.shape == (1, 4, ACT) and planner._finite is not None and bool(planner._finite)


def test_no_host_syncs_finds_each_kind_of_host_read():
    t = torch.tensor([1.0, -2.0])
    reads = [lambda: t.sum().item(), lambda: bool(t.sum() > 0), lambda: t.tolist(), lambda: t[t > 0],
             lambda: t.nonzero(), lambda: int(t[0]), lambda: float(t[0]), lambda: t.numpy(),
             lambda: torch.masked_select(t, t > 0)]  # fmt: skip
    for read in reads:
        with no_host_syncs(), pytest.raises(HostSyncError, match="host"):
            read()
    with no_host_syncs():  # device-side work passes
        torch.where(t > 0, t, 0.0).softmax(0)
        with host_syncs_allowed():
            t.tolist()


def test_non_finite_returns_still_stop_the_step_after_it():
    model = hopper_model()
    planner = MPPI(model, hopper_spec(), MPPIConfig(**SMALL, candidates=8))
    with torch.no_grad():
        model.biases[-1].fill_(float("nan"))
    with pytest.raises(PlanningError, match="non-finite"):
        planner.act(torch.zeros(OBS))
    assert planner._plan is None  # nothing from that step was kept


def test_member_ids_are_rechecked_when_they_change_in_place():
    import kernels

    x = torch.randn(2, 5, 3)
    ws, bs = [torch.randn(4, 3, 2)], [torch.randn(4, 2)]
    members = torch.tensor([0, 3])
    kernels.ensemble_mlp(x, ws, bs, members=members)
    members[1] = 4  # out of range for E=4: in place, so the tensor's version changes
    with pytest.raises(ValueError, match=r"members must lie in \[0, 4\)"):
        kernels.ensemble_mlp(x, ws, bs, members=members)


def test_cuda_graph_setting_pickles_and_refuses_icem():
    planner = MPPI(hopper_model(), hopper_spec(), MPPIConfig(**SMALL, cuda_graph=True))
    planner._graphs = object()  # (stands for captured graphs, which do not pickle)
    copy = pickle.loads(pickle.dumps(planner))
    assert copy._graphs is None and copy.config.cuda_graph
    with pytest.raises(ValueError, match="ICEM keeps state between steps"):
        ICEM(hopper_model(), hopper_spec(), ICEMConfig(**SMALL, cuda_graph=True))
    # on the CPU the setting changes nothing: the step runs eagerly
    assert copy.act(torch.zeros(OBS)).shape == (ACT,) and copy._graphs is None


def test_a_new_capture_is_needed_exactly_when_what_the_graph_reads_moves():
    planner = STEPS["mppi slew limit, value penalty"](hopper_model(), hopper_spec())
    obs, warm = torch.zeros(1, OBS), torch.zeros(1, 4, ACT)
    key = graph_key(planner, obs, warm)
    with torch.no_grad():  # refits and value updates write in place: the same graph serves
        planner.model.weights[0].add_(1.0)
        planner.model.input_norm.mean.add_(1.0)
        next(planner.value_agent.critics.parameters()).mul_(2.0)
    assert graph_key(planner, obs, warm) == key
    trained = copy.deepcopy(planner.value_agent)
    with torch.no_grad():
        next(trained.critics.parameters()).add_(1.0)
    apply_swap(planner, {"value_agent": trained})  # the background learner's value swaps: loaded in place
    assert graph_key(planner, obs, warm) == key
    assert torch.equal(next(planner.value_agent.critics.parameters()), next(trained.critics.parameters()))
    planner.previous_action = torch.zeros(1, ACT)  # under a slew limit, a bounded first step
    bounded = graph_key(planner, obs, warm)
    assert bounded != key
    planner.previous_action = torch.ones(ACT)  # its value is an input, not part of the graph
    assert graph_key(planner, obs, warm) == bounded
    changed = [
        lambda p: setattr(p, "model", hopper_model()),  # a swapped model
        lambda p: setattr(p.model, "precision", "bf16"),
        lambda p: setattr(p.config, "candidates", 32),
        lambda p: setattr(p.config, "uncertainty_penalty", 1.0),  # an online.* setting at the switch
        lambda p: setattr(p, "generator", torch.Generator()),
        lambda p: p.value_agent.critics.load_state_dict(  # tensors reallocated, not written in place
            {k: v.clone() for k, v in p.value_agent.critics.state_dict().items()}, assign=True),
    ]
    for change in changed:
        other = STEPS["mppi slew limit, value penalty"](hopper_model(), hopper_spec())
        other.previous_action = torch.zeros(1, ACT)
        before = graph_key(other, obs, warm)
        change(other)
        assert graph_key(other, obs, warm) != before
    assert graph_key(planner, torch.zeros(2, OBS), torch.zeros(2, 4, ACT)) != bounded  # other shapes
    for weight, moves in ((-1.0, True), (1.0, False)):  # an exploration bonus is captured for exploring acts only
        planner.config.uncertainty_penalty, planner._exploring = weight, False
        plain = graph_key(planner, obs, warm)
        planner._exploring = True
        assert (graph_key(planner, obs, warm) != plain) == moves


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("name", ["mppi default (ts1, learned value)", "mppi slew limit, value penalty",
                                  "cem tsinf particles, uncertainty penalty", "random shooting"])
def test_graphed_plans_equal_eager_plans_and_follow_in_place_updates(name):
    spec = hopper_spec()
    eager = STEPS[name](hopper_model("cuda", hidden=200), spec)
    graphed = STEPS[name](hopper_model("cuda", hidden=200), spec)
    graphed.config.cuda_graph = True
    obs = torch.tensor([1.2] + [0.0] * (OBS - 1), device="cuda")
    for episode in range(2):
        for step in range(4):
            if step == 2:  # a refit or a value update writes the weights in place: no new capture
                for planner in (eager, graphed):
                    with torch.no_grad():
                        planner.model.weights[0].mul_(1.1)
            torch.testing.assert_close(graphed.act(obs, deterministic=True), eager.act(obs, deterministic=True))
        for planner in (eager, graphed):
            planner.reset()
    # one capture, or two under a slew limit (an episode's first step is unbounded): then replays only
    assert graphed._graphs.captures == (2 if graphed.config.slew else 1)
    graphed.act(torch.stack([obs, obs]))  # two robots: other shapes, a new capture
    assert graphed._graphs.captures == (3 if graphed.config.slew else 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_graphed_step_still_stops_on_non_finite_returns():
    model = hopper_model("cuda", hidden=200)
    planner = MPPI(model, hopper_spec(), MPPIConfig(**SMALL, candidates=16, cuda_graph=True))
    obs = torch.tensor([1.2] + [0.0] * (OBS - 1), device="cuda")
    planner.act(obs)
    with torch.no_grad():
        model.biases[-1].fill_(float("nan"))  # in place: the captured graph replays on it
    with pytest.raises(PlanningError, match="non-finite"):
        planner.act(obs)
    assert planner._graphs.captures == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_a_capture_succeeds_while_a_learning_thread_tunes_new_shapes():
    """planners.graph holds the tuning lock across warm-up and capture: a learning thread that
    tunes all the time (its autotuner's cache emptied before every call, so each launch times its
    candidates with device syncs) waits for each capture instead of syncing the device under it."""
    from kernels import triton_mlp

    if triton_mlp._linear_tuned is None:
        pytest.skip("autotuning is off (WORLDMODEL_AUTOTUNE=0)")
    planner = MPPI(hopper_model("cuda", hidden=200), hopper_spec(), MPPIConfig(**SMALL, cuda_graph=True))
    weights = [torch.randn(7, a, b, device="cuda", requires_grad=True) for a, b in ((OBS + 3, 200), (200, 36))]
    biases = [torch.zeros(7, w.shape[2], device="cuda", requires_grad=True) for w in weights]
    tuning, stop, errors = threading.Event(), threading.Event(), []

    def learn():
        try:
            while not stop.is_set():
                triton_mlp._linear_tuned.cache.clear()
                x = torch.randn(7, 300, OBS + 3, device="cuda")
                kernels.ensemble_mlp(x, weights, biases).sum().backward()
                tuning.set()
        except Exception as e:  # (reported by the main thread)
            errors.append(e)

    learner = threading.Thread(target=learn, daemon=True)
    learner.start()
    try:
        assert tuning.wait(120)
        obs = torch.tensor([1.2] + [0.0] * (OBS - 1), device="cuda")
        for robots in (1, 2, 3):  # a capture each
            planner.act(obs.expand(robots, -1).contiguous())
    finally:
        stop.set()
        learner.join(120)
    assert not learner.is_alive() and not errors and planner._graphs.captures == 3
