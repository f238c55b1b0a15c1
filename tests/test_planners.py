"""MPC planners on known dynamics: each must find the known optimum, respect bounds and reset cleanly."""

import dataclasses

import pytest
import torch

from known_dynamics import point_mass, single_integrator
from planners import CEM, ICEM, MPPI, CEMConfig, ICEMConfig, MPPIConfig, PlanningError, RandomShooting
from planners.random_shooting import RandomShootingConfig

# the model alone, undiscounted, so that the known optimum is the planners' too (the defaults add a
# learned terminal value and discount 0.99)
MODEL_ONLY = dict(value_learning=False, discount=1.0)

PLANNERS = {
    "mppi": lambda m, s, **kw: MPPI(m, s, MPPIConfig(seed=0, **{**MODEL_ONLY, "iterations": 4, **kw})),
    "cem": lambda m, s, **kw: CEM(m, s, CEMConfig(seed=0, **{**MODEL_ONLY, **kw})),
    "icem": lambda m, s, **kw: ICEM(m, s, ICEMConfig(seed=0, **{**MODEL_ONLY, **kw})),
    "random": lambda m, s, **kw: RandomShooting(m, s, RandomShootingConfig(seed=0, **{**MODEL_ONLY, "candidates": 4000, **kw})),
}


@pytest.mark.parametrize("name", PLANNERS)
def test_one_step_plan_finds_the_known_optimum_for_a_batch_of_states(name):
    model = single_integrator()
    planner = PLANNERS[name](model, model.spec(), horizon=1)
    obs = torch.tensor([[0.0, 0.0], [0.5, -0.2], [-0.4, 0.1]])
    plan = planner.plan(obs)
    assert plan.shape == (3, 1, 2)
    torch.testing.assert_close(plan[:, 0], model.goal - obs, atol=0.06, rtol=0)


@pytest.mark.parametrize("name", PLANNERS)
def test_actions_stay_in_bounds_when_the_optimum_lies_outside(name):
    model = single_integrator(goal=(5.0, -5.0))
    planner = PLANNERS[name](model, model.spec(low=-0.5, high=0.5), horizon=2)
    action = planner.act(torch.zeros(2))
    assert action.shape == (2,)
    assert (action.abs() <= 0.5).all()
    torch.testing.assert_close(action, torch.tensor([0.5, -0.5]), atol=0.05, rtol=0)


@pytest.mark.parametrize("name", PLANNERS)
def test_closed_loop_drives_a_point_mass_to_its_goal(name):
    model = point_mass(action_cost=0.01)
    planner = PLANNERS[name](model, model.spec(), horizon=15)
    state = torch.zeros(2)
    for _ in range(40):
        action = planner.act(state, deterministic=True)
        state = model.a @ state + action @ model.b
    assert abs(state[0] - 1.0) < 0.1 and abs(state[1]) < 0.2, state


@pytest.mark.parametrize("name", ["mppi", "cem", "icem"])
def test_act_warm_starts_the_next_step_and_reset_clears_it(name):
    model = point_mass()
    planner = PLANNERS[name](model, model.spec(), horizon=10)
    seen = []  # (mean given to optimize, plan it returned)
    optimize = planner.optimize
    planner.optimize = lambda obs, mean: seen.append((mean.clone(), optimize(obs, mean)[0])) or (seen[-1][1], None)
    obs = torch.tensor([0.2, 0.0])
    action = planner.act(obs, deterministic=True)
    torch.testing.assert_close(action, seen[0][1][0, 0])
    planner.act(obs, deterministic=True)
    torch.testing.assert_close(seen[1][0][0, :-1], seen[0][1][0, 1:])  # shifted by one step
    planner.reset()
    planner.act(obs, deterministic=True)
    assert (seen[2][0] == 0).all()  # back to the middle of the action box
    if name == "icem":
        assert planner._kept is not None
        planner.reset()
        assert planner._kept is None  # carried elites are forgotten too


@pytest.mark.parametrize("name", ["mppi", "cem", "icem"])
def test_skip_drops_that_many_more_steps_of_every_carried_sequence(name):
    """A real-time controller's plans k periods apart: the warm start, and iCEM's carried elites,
    move on by 1 + k steps, so step t of the next plan's warm start is step t + 1 + k of this plan's."""
    model = point_mass()
    planner = PLANNERS[name](model, model.spec(), horizon=10)
    planner.act(torch.tensor([0.2, 0.0]), deterministic=True)
    mean = planner._plan.clone()
    kept = planner._kept.clone() if name == "icem" else None
    planner.skip(2)
    torch.testing.assert_close(planner._plan[:, :-2], mean[:, 2:])
    assert (planner._plan[:, -2:] == 0).all()  # the middle of the action box fills the end
    if kept is not None:  # (kept: the elites before act's own one-step shift, which population() applies)
        torch.testing.assert_close(planner._kept[..., :-2, :], kept[..., 2:, :])
    planner.reset()
    planner.skip(3)  # nothing carried: nothing to drop
    assert planner._plan is None


@pytest.mark.parametrize("name", PLANNERS)
def test_plan_is_for_inspection_and_keeps_no_state(name):
    model = point_mass()
    planner = PLANNERS[name](model, model.spec(), horizon=5)
    planner.act(torch.zeros(2))
    carried = planner.EPISODE_STATE  # what the next act() reuses (the warm start, the last action, ...)
    assert {"_plan", "previous_action"} <= set(carried)
    before = {k: getattr(planner, k).clone() for k in carried}
    assert before["previous_action"] is not None
    planner.plan(torch.tensor([0.5, 0.5]))
    for key in carried:
        assert torch.equal(getattr(planner, key), before[key]), key


def test_rewards_after_a_predicted_termination_do_not_count():
    model = single_integrator(goal=(0.0, 0.0), terminate_above=0.5)
    planner = MPPI(model, model.spec(), MPPIConfig(**MODEL_ONLY, horizon=3, seed=0))
    obs = torch.zeros(1, 2)
    actions = torch.tensor([[[[1.0, 0.0]] * 3, [[0.1, 0.0]] * 3]])  # [1, 2, 3, 2]
    returns = planner.evaluate(obs, actions)
    # first candidate terminates on step 1 at x=1: only that step's reward (-1) counts
    assert returns[0, 0].item() == pytest.approx(-1.0)
    assert returns[0, 1].item() == pytest.approx(-(0.01 + 0.04 + 0.09))


def test_uncertainty_penalty_pulls_actions_toward_certainty():
    model = single_integrator(goal=(0.8, 0.0))
    plain = CEM(model, model.spec(), CEMConfig(**MODEL_ONLY, horizon=1, seed=0))
    cautious = CEM(model, model.spec(), CEMConfig(**MODEL_ONLY, horizon=1, seed=0, uncertainty_penalty=1.0))
    # penalised reward -(a - 0.8)^2 - a^2 peaks at a = 0.4
    assert plain.plan(torch.zeros(2))[0, 0].item() == pytest.approx(0.8, abs=0.03)
    assert cautious.plan(torch.zeros(2))[0, 0].item() == pytest.approx(0.4, abs=0.03)
    # a penalty set after construction (online.uncertainty_penalty at the switch) takes effect
    plain.config = dataclasses.replace(plain.config, uncertainty_penalty=1.0)
    assert plain.plan(torch.zeros(2))[0, 0].item() == pytest.approx(0.4, abs=0.03)


def test_negative_uncertainty_penalty_is_a_bonus_for_exploring_acts_only():
    model = single_integrator(goal=(0.5, 0.0))
    planner = CEM(model, model.spec(), CEMConfig(**MODEL_ONLY, horizon=1, seed=0, uncertainty_penalty=-0.25))
    # exploring acts plan for reward + 0.25 |a|^2: -(a0 - 0.5)^2 + 0.25 a0^2 peaks at a0 = 2/3, a1 at 0
    explored = torch.stack([planner.act(torch.zeros(2)) for _ in range(20)]).mean(0)
    torch.testing.assert_close(explored, torch.tensor([2 / 3, 0.0]), atol=0.05, rtol=0)
    # evaluation, deployment and inspection plan without the bonus: the goal itself
    for action in (planner.act(torch.zeros(2), deterministic=True), planner.plan(torch.zeros(2))[0]):
        torch.testing.assert_close(action, torch.tensor([0.5, 0.0]), atol=0.03, rtol=0)


def test_terminal_value_is_added_after_the_last_step():
    model = single_integrator(goal=(0.0, 0.0))
    value = lambda s: -(s - torch.tensor([0.6, 0.6])).square().sum(-1) * 10  # noqa: E731
    planner = CEM(model, model.spec(), CEMConfig(**MODEL_ONLY, horizon=1, seed=0), terminal_value=value)
    # -a^2 - 10 (a - 0.6)^2 peaks at a = 6/11 per dim
    torch.testing.assert_close(planner.plan(torch.zeros(2))[0], torch.full((2,), 6 / 11), atol=0.03, rtol=0)


def test_propagation_modes_reach_the_model_as_its_step_modes():
    model = single_integrator()
    for propagation, mode in [("ts1", "random"), ("tsinf", "fixed"), ("expectation", "mean")]:
        model.calls.clear()
        MPPI(model, model.spec(), MPPIConfig(**MODEL_ONLY, horizon=3, particles=4, candidates=5, propagation=propagation)).plan(
            torch.zeros(2, 2)
        )
        assert [(c["mode"], c["rows"]) for c in model.calls] == [(mode, 2 * 5 * 4)] * 3


def test_non_finite_model_output_is_reported_not_acted_on():
    model = single_integrator()
    model.goal = torch.tensor([float("nan"), 0.0])
    planner = MPPI(model, model.spec(), MPPIConfig(**MODEL_ONLY, horizon=2, seed=0))
    with pytest.raises(PlanningError, match="non-finite"):
        planner.act(torch.zeros(2))


def test_bad_configs_and_inputs_are_clear_errors():
    model = single_integrator()
    with pytest.raises(ValueError, match="unknown propagation 'ts2'"):
        MPPIConfig(propagation="ts2")
    with pytest.raises(ValueError, match=r"num_elites must be in \[1, candidates=10\]"):
        CEM(model, model.spec(), CEMConfig(candidates=10, num_elites=20))
    with pytest.raises(ValueError, match=r"obs must be \[2\] or \[N, 2\]"):
        MPPI(model, model.spec()).act(torch.zeros(3))


BAD_SETTINGS = [
    (MPPIConfig, dict(temperature=0.0), r"temperature and noise_std must be > 0 .* temperature=0.0"),
    (MPPIConfig, dict(temperature=-0.5), r"temperature and noise_std must be > 0 .* temperature=-0.5"),
    (MPPIConfig, dict(candidates=1), r"MPPI needs candidates >= 2 .* candidates=1, iterations=1"),
    (MPPIConfig, dict(iterations=0), r"iterations >= 1, got candidates=512, iterations=0"),
    (MPPIConfig, dict(noise_std=0.0), r"noise_std must be > 0 .* noise_std=0.0"),
    (CEMConfig, dict(num_elites=0), r"num_elites must be in \[1, candidates=400\] .* num_elites=0"),
    (CEMConfig, dict(iterations=0), r"iterations >= 1, got num_elites=40, iterations=0"),
    (CEMConfig, dict(momentum=1.0), r"momentum must be in \[0, 1\), .* momentum=1.0"),
    (ICEMConfig, dict(iterations=0), r"iterations >= 1, got num_elites=10, iterations=0"),
    (ICEMConfig, dict(keep_elites=0.0), r"keep_elites in \(0, 1\], got population_decay=1.25, keep_elites=0.0"),
    (ICEMConfig, dict(population_decay=0.5), r"population_decay must be >= 1 .* population_decay=0.5"),
    (RandomShootingConfig, dict(candidates=0), r"candidates must be >= 1, got 0"),
]


@pytest.mark.parametrize("config, bad, message", BAD_SETTINGS,
                         ids=[f"{c.__name__}:{next(iter(b))}={next(iter(b.values()))}" for c, b, _ in BAD_SETTINGS])
def test_settings_that_would_plan_nan_or_nothing_are_clear_errors(config, bad, message):
    """A zero temperature or a single MPPI candidate made NaN actions; no elites or no iteration crashed
    deep in the planner or blamed the model."""
    with pytest.raises(ValueError, match=message):
        config(**bad)


@pytest.mark.parametrize("name", PLANNERS)
def test_act_and_plan_take_numpy_observations(name):
    import numpy as np

    model = single_integrator()
    planner = PLANNERS[name](model, model.spec(), horizon=2)
    assert planner.act(np.zeros(2, np.float32)).shape == (2,)
    assert planner.plan(np.zeros((3, 2), np.float32)).shape == (3, 2, 2)
    assert planner.plan([0.0, 0.0]).shape == (2, 2)


@pytest.mark.parametrize("name", PLANNERS)
def test_plan_leaves_the_random_stream_as_it_found_it(name):
    """plan() is for inspection: a planner that was asked for a plan acts as its twin that was not."""
    model = single_integrator()
    asked, twin = (PLANNERS[name](model, model.spec(), horizon=3) for _ in range(2))
    obs = torch.tensor([0.3, -0.2])
    first = asked.plan(obs)
    torch.testing.assert_close(asked.plan(obs), first)
    torch.testing.assert_close(asked.act(obs), twin.act(obs))


def test_a_slew_limit_reads_no_previous_action_of_another_batch():
    """After one observation's act, a batch of 3 other start states is not held within slew of that
    one action (as the warm start, another batch's last action is not these rows'), and a batch's own
    last actions bind its rows one by one."""
    model = single_integrator(goal=(0.9, -0.9))
    planner = PLANNERS["mppi"](model, model.spec(), slew=0.1, horizon=2)
    planner.previous_action = torch.tensor([[-0.9, 0.9]])
    first = planner.act(torch.zeros(3, 2), deterministic=True)
    assert (first[:, 0] > 0.5).all() and (first[:, 1] < -0.5).all()  # (free: straight toward the goal)
    second = planner.act(torch.zeros(3, 2), deterministic=True)
    assert ((second - first).abs() <= 0.1 + 1e-6).all()


def test_observe_stores_transitions_and_update_refits_the_model():
    from tensordict import TensorDict

    from worldmodel import EnsembleDynamics
    from worldmodel.envs import TaskSpec

    spec = TaskSpec("toy", 2, 1, torch.tensor([-1.0]), torch.tensor([1.0]), 10, None)
    model = EnsembleDynamics(2, 1, ensemble_size=2, num_elites=1, hidden=16, layers=1)
    planner = MPPI(model, spec, MPPIConfig(**MODEL_ONLY, horizon=2, candidates=8, seed=0))
    obs, action = torch.randn(200, 2), torch.rand(200, 1) * 2 - 1
    flags = torch.zeros(200, dtype=torch.bool)
    planner.observe(TensorDict({"obs": obs, "action": action, "reward": obs[:, 0], "next_obs": obs + action,
                                "terminated": flags, "truncated": flags}, [200]))  # fmt: skip
    assert len(planner.buffer) == 200
    before = model.weights[0].detach().clone()
    stats = planner.update(max_epochs=30, batch_size=32)
    assert 0 < stats["epochs"] <= 30 and not torch.equal(before, model.weights[0])


def test_learned_terminal_value_is_the_value_agents_at_the_final_state():
    model = single_integrator(goal=(0.0, 0.0))
    config = dict(horizon=2, seed=0, discount=0.9)
    plain = MPPI(model, model.spec(), MPPIConfig(**config, value_learning=False))
    learned = MPPI(model, model.spec(), MPPIConfig(**config, value_learning=True, value_agent={"hidden": 16}))
    obs, actions = torch.zeros(1, 2), torch.rand(1, 5, 2, 2) * 2 - 1
    final = actions.sum(2).reshape(5, 2)  # next = obs + action, twice
    expected = plain.evaluate(obs, actions) + 0.81 * learned.value_agent.value(final, deterministic=True)
    torch.testing.assert_close(learned.evaluate(obs, actions), expected)


def test_learn_trains_the_value_agent_on_real_transitions_and_checkpoints_it():
    from tensordict import TensorDict

    model = single_integrator(goal=(0.0, 0.0))
    settings = MPPIConfig(horizon=2, seed=0, value_learning=True, value_updates_per_step=3, value_agent={"hidden": 16})
    planner = MPPI(model, model.spec(), settings)
    assert planner.learn() == {}  # nothing observed yet
    obs, action = torch.randn(64, 2), torch.rand(64, 2) * 2 - 1
    flags = torch.zeros(64, dtype=torch.bool)
    planner.observe(TensorDict({"obs": obs, "action": action, "reward": -obs.square().sum(-1), "next_obs": obs + action,
                                "terminated": flags, "truncated": flags}, [64]))  # fmt: skip
    assert "critic_loss" in planner.learn() and planner.value_agent.updates == 3
    copy = MPPI(model, model.spec(), settings)
    copy.load_state_dict(planner.state_dict())
    torch.testing.assert_close(copy.terminal_value(obs), planner.terminal_value(obs))
    with pytest.raises(ValueError, match="pass value_learning=False to plan with your terminal value"):
        MPPI(model, model.spec(), settings, terminal_value=lambda s: s[:, 0])
    assert MPPI(model, model.spec(), MPPIConfig(**MODEL_ONLY, horizon=2)).learn() == {}  # no learned value: nothing to learn


@pytest.mark.parametrize("name", sorted(PLANNERS))
def test_a_non_finite_observation_is_named_as_an_input_problem(name):
    model = single_integrator()
    planner = PLANNERS[name](model, model.spec(), horizon=2)
    with pytest.raises(ValueError, match=r"the observation holds NaN or inf \(dims \[1\]\): check the sensor"):
        planner.act(torch.tensor([0.0, float("nan")]))
    assert model.calls == []  # refused before any planning


def test_planning_with_a_model_never_fitted_warns_once():
    from worldmodel import EnsembleDynamics

    model = EnsembleDynamics(2, 2, ensemble_size=2, num_elites=1, hidden=8, layers=1)
    spec = single_integrator().spec()
    planner = MPPI(model, spec, MPPIConfig(**MODEL_ONLY, horizon=2, candidates=8, seed=0))
    with pytest.warns(UserWarning, match="planning with a model that was never fitted"):
        planner.act(torch.zeros(2))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        planner.act(torch.zeros(2))  # once is enough


@pytest.mark.parametrize("name", ["mppi", "cem", "icem", "random"])
def test_with_a_slew_limit_every_plan_moves_at_most_slew_per_step(name):
    model = single_integrator(goal=(0.9, -0.9))
    planner = PLANNERS[name](model, model.spec(), slew=0.1, horizon=6)
    planner.previous_action = torch.tensor([-0.5, 0.5])
    for _ in range(3):
        before = planner.previous_action.clone()
        sequence = planner.act_ahead(torch.zeros(2))
        steps = torch.cat([before.reshape(1, -1), sequence])
        assert (steps.diff(dim=0).abs() <= 0.1 + 1e-6).all()
    moved = planner.previous_action.reshape(-1) - torch.tensor([-0.5, 0.5])
    assert moved[0].item() > 0.15 and moved[1].item() < -0.15  # within the limit, it still turns toward the goal


@pytest.mark.parametrize("name", ["mppi", "cem", "random"])
def test_policy_samples_put_the_learned_policys_sequences_among_the_candidates(name):
    """With policy_samples, the learned value's policy proposes sequences (rolled through the model)
    beside the sampled ones (TD-MPC's pi trajectories): a policy that knows the optimum moves a
    plan whose own sampling stays near its warm start (tiny noise) onto it; without them it stays."""
    import math

    model = single_integrator(goal=(0.3, -0.6))
    narrow = {"mppi": dict(noise_std=0.01, min_std=0.01, temperature=0.1, candidates=8, iterations=1),
              "cem": dict(init_std=0.01, min_std=0.01, candidates=8, num_elites=4, iterations=1, momentum=0.0),
              "random": dict(candidates=1)}[name]  # fmt: skip
    plans = {}
    for samples in (0, 4):
        settings = dict(horizon=1, discount=0.0, value_learning=True, value_agent={"hidden": 16}, policy_samples=samples)
        planner = PLANNERS[name](model, model.spec(), **{**settings, **narrow})
        head = planner.value_agent.actor.net[-1]
        with torch.no_grad():  # a policy whose mean action is the optimum, with a tiny spread
            head.weight.zero_()
            head.bias.copy_(torch.tensor([math.atanh(0.3), math.atanh(-0.6), -5.0, -5.0]))
        plans[samples] = planner.plan(torch.zeros(1, 2))[0, 0]
    torch.testing.assert_close(plans[4], model.goal, atol=0.03, rtol=0)
    assert (plans[0] - model.goal).abs().max() > 0.2


def test_policy_guided_sampling_centres_the_candidates_on_the_policys_sequence():
    """With flat weights (a high temperature) MPPI's plan is the candidates' average: around the warm
    start, the policy's few sequences pull it part of the way; policy_guided samples every candidate
    around the policy's sequence, so the plan is the policy's."""
    import math

    model = single_integrator(goal=(0.3, -0.6))
    plans = {}
    for guided in (False, True):
        planner = PLANNERS["mppi"](model, model.spec(), horizon=1, discount=0.0, value_learning=True,
                                   value_agent={"hidden": 16}, policy_samples=4, policy_guided=guided,
                                   noise_std=0.01, min_std=0.01, temperature=100.0, candidates=8, iterations=1)  # fmt: skip
        with torch.no_grad():
            planner.value_agent.actor.net[-1].weight.zero_()
            planner.value_agent.actor.net[-1].bias.copy_(torch.tensor([math.atanh(0.3), math.atanh(-0.6), -5.0, -5.0]))
        plans[guided] = planner.plan(torch.zeros(1, 2))[0, 0]
    torch.testing.assert_close(plans[True], model.goal, atol=0.03, rtol=0)
    torch.testing.assert_close(plans[False], model.goal / 3, atol=0.05, rtol=0)  # 4 of 12 candidates at the goal


def test_a_plan_with_policy_samples_depends_on_the_planners_seed_alone():
    """The policy's candidate sequences draw from the planner's generator, not torch's global
    stream: the same planner state plans the same whatever ran before (an evaluation after other
    work in the process repeats)."""
    import copy

    model = single_integrator(goal=(0.3, -0.6))
    planner = PLANNERS["mppi"](model, model.spec(), horizon=3, value_learning=True, value_agent={"hidden": 16},
                               policy_samples=8, candidates=16, iterations=2)  # fmt: skip
    twin = copy.deepcopy(planner)
    torch.manual_seed(1)
    first = planner.plan(torch.zeros(1, 2))
    torch.manual_seed(2)
    torch.randn(1000)
    torch.testing.assert_close(twin.plan(torch.zeros(1, 2)), first, rtol=0, atol=0)
    planner.act(torch.zeros(2))
    assert not torch.equal(planner.plan(torch.zeros(1, 2)), first)  # (act moved its generator on: a new draw)


def test_policy_samples_need_a_learned_value_and_no_cuda_graph():
    with pytest.raises(ValueError, match="needs value_learning=True"):
        MPPIConfig(value_learning=False, policy_samples=4)
    with pytest.raises(ValueError, match="not been captured in a CUDA graph"):
        MPPIConfig(policy_samples=4, cuda_graph=True)
    with pytest.raises(ValueError, match="value_updates_per_step must be >= 0, got 0.0, -1, 1"):
        MPPIConfig(policy_samples=-1)
    with pytest.raises(ValueError, match="must be >= 0, got 0.0, 0, -2"):
        MPPIConfig(value_updates_per_step=-2)
    with pytest.raises(ValueError, match="policy_guided samples around the policy's sequences"):
        MPPIConfig(policy_guided=True)


@pytest.mark.parametrize("name", ["mppi", "icem"])
def test_an_evaluation_in_mid_episode_leaves_the_training_planner_as_it_was(name):
    """evaluation_returns resets the planner for its own episodes, then puts back the warm start, the
    last action, iCEM's kept elites and the random stream: the next training action is the one it
    would have been without the evaluation."""
    from planners import evaluate
    from worldmodel import EnsembleDynamics, make_env
    from worldmodel.collect import collect, uniform_policy

    env = make_env("dmc/point_mass-easy", seed=0, action_repeat=2, max_episode_steps=4)
    spec = env.task_spec
    torch.manual_seed(0)
    model = EnsembleDynamics(spec.obs_dim, spec.act_dim, ensemble_size=3, num_elites=2, hidden=16, layers=2)
    model.fit(collect(env, uniform_policy(env), 60), max_epochs=1, progress=False)
    obs = torch.randn(2, spec.obs_dim)
    actions = []
    for evaluated in (False, True):
        planner = PLANNERS[name](model, spec, horizon=4, candidates=32)
        planner.act(obs[0])
        if evaluated:
            evaluate(planner, env, 1)
        actions.append(planner.act(obs[1]))  # (exploring: draws from the planner's random stream)
    torch.testing.assert_close(actions[0], actions[1], atol=0, rtol=0)
