"""make_env: every supported task by name, one interface whatever the backend."""

import pytest
import torch

from worldmodel import collect, make_env, task_names, uniform_policy

REQUIRED = [
    "halfcheetah", "hopper", "walker2d", "ant", "reacher", "pusher", "inverted_pendulum",
    "dmc/cheetah-run", "dmc/walker-walk", "dmc/cartpole-swingup", "dmc/reacher-easy", "dmc/finger-spin",
]  # fmt: skip


@pytest.mark.parametrize("name", REQUIRED)
def test_make_env_gives_flat_float_observations_and_bounded_actions(name):
    env = make_env(name, seed=0)
    spec = env.task_spec
    data = collect(env, uniform_policy(env), 5)
    assert data["obs"].shape == (5, spec.obs_dim) and data["obs"].dtype == torch.float32
    assert data["action"].shape == (5, spec.act_dim)
    assert (data["action"] >= spec.action_low).all() and (data["action"] <= spec.action_high).all()
    assert data["reward"].shape == (5,)


@pytest.mark.parametrize("name", ["hopper", "humanoid", "pusher", "dmc/cartpole-swingup", "dmc/walker-walk"])
def test_the_action_box_is_the_simulators_own(name):
    """The TaskSpec's bounds are the backend's action space (humanoid's is +-0.4, not +-1)."""
    spec = make_env(name, seed=0).task_spec
    if name.startswith("dmc/"):
        from dm_control import suite

        native = suite.load(*name[4:].split("-", 1)).action_spec()
        low, high = native.minimum, native.maximum
    else:
        import gymnasium as gym

        from worldmodel.envs import GYM_TASKS

        native = gym.make(GYM_TASKS[name][0]).action_space
        low, high = native.low, native.high
    assert torch.equal(spec.action_low, torch.as_tensor(low, dtype=torch.float32))
    assert torch.equal(spec.action_high, torch.as_tensor(high, dtype=torch.float32))


def test_required_tasks_are_listed():
    assert set(REQUIRED) <= set(task_names())


def test_every_suite_task_and_gymnasium_task_is_listed():
    from dm_control import suite

    assert {f"dmc/{d}-{t}" for d, t in suite.ALL_TASKS} <= set(task_names())
    assert {"humanoid", "humanoidstandup", "inverted_double_pendulum", "swimmer"} <= set(task_names())


@pytest.mark.parametrize("name", ["dmc/point_mass-easy", "dmc/ball_in_cup-catch", "dmc/acrobot-swingup",
                                  "dmc/manipulator-bring_ball", "dmc/swimmer-swimmer6", "humanoidstandup"])  # fmt: skip
def test_tasks_beyond_the_tuned_ones_work_by_name(name):
    """Matrix-shaped dm-control readings (manipulator's arm_pos) are flattened into the vector."""
    env = make_env(name, seed=0)
    data = collect(env, uniform_policy(env), 3)
    assert data["obs"].shape == (3, env.task_spec.obs_dim) and torch.isfinite(data["obs"]).all()


def test_a_gymnasium_id_is_the_same_task_as_its_short_name():
    env = make_env("Hopper-v5", seed=0)
    assert env.task_spec.name == "hopper" and env.task_spec.termination_fn is not None


def test_unknown_env_is_a_clear_error_listing_supported_names():
    with pytest.raises(ValueError, match=r"unknown env 'halfcheeta' \(did you mean halfcheetah .*\); supported: .*dmc/cartpole-swingup"):
        make_env("halfcheeta")
    with pytest.raises(ValueError, match="did you mean dmc/point_mass-easy"):
        make_env("dmc/pointmass-easy")


def test_a_task_that_renders_says_what_it_needs():
    with pytest.raises(ValueError, match="dmc/quadruped-escape renders .* MUJOCO_GL=egl"):
        make_env("dmc/quadruped-escape")


@pytest.mark.parametrize("name", ["hopper", "dmc/cartpole-swingup"])
def test_same_seed_same_episode_other_seed_other_episode(name):
    def first_obs(seed):
        env = make_env(name, seed=seed)
        return collect(env, lambda obs: env.task_spec.action_high * 0.5, 20)["next_obs"]

    assert torch.equal(first_obs(3), first_obs(3))
    assert not torch.equal(first_obs(3), first_obs(4))


def test_action_repeat_halves_the_episode_and_sums_rewards():
    plain = make_env("dmc/cartpole-swingup", seed=0)
    repeated = make_env("dmc/cartpole-swingup", seed=0, action_repeat=2)
    assert repeated.task_spec.max_episode_steps == plain.task_spec.max_episode_steps // 2
    hold = lambda obs: torch.tensor([0.3])  # noqa: E731
    one, two = collect(plain, hold, 4), collect(repeated, hold, 2)
    torch.testing.assert_close(two["reward"], one["reward"].view(2, 2).sum(1))
    torch.testing.assert_close(two["next_obs"], one["next_obs"][1::2])
    ends = collect(repeated, hold, 600)["truncated"].nonzero().flatten().tolist()
    assert ends == [499]  # 1000 physics steps = 500 decisions


def test_a_repeated_action_stops_at_the_sub_step_that_ends_the_episode():
    """dm-control's 1000 steps with 3 repeats: decision 334 ends after its first sub-step (the rest
    would reset the task silently); hopper with 4: the decision whose sub-step falls is terminated,
    from the state it fell into."""
    env = make_env("dmc/cartpole-swingup", seed=0, action_repeat=3)
    assert env.task_spec.max_episode_steps == 334
    data = collect(env, lambda obs: torch.tensor([0.3]), 700)
    assert data["truncated"].nonzero().flatten().tolist() == [333, 667]
    hopper = make_env("hopper", seed=0, action_repeat=4)
    data = collect(hopper, uniform_policy(hopper), 300)
    ends = data["terminated"]
    assert ends.sum() >= 3 and not (data["truncated"] & ~ends).any()
    fell = hopper.task_spec.termination_fn(data["obs"], data["action"], data["next_obs"])
    assert torch.equal(fell, ends)  # every fall ends its decision, and only a fall


def test_arguments_that_change_termination_are_refused_where_a_termination_function_reads_the_defaults():
    with pytest.raises(ValueError, match="terminate_when_unhealthy.* reads the task's defaults"):
        make_env("hopper", terminate_when_unhealthy=False)
    assert make_env("hopper", reset_noise_scale=0.01).task_spec.termination_fn is not None


@pytest.mark.parametrize("name", ["hopper", "dmc/cartpole-swingup"])
def test_torchrls_own_wrapper_arguments_are_refused_as_backend_arguments(name):
    """frame_skip never reaches the simulator: TorchRL repeats each action itself, behind the episode
    length TaskSpec gives (hopper's episodes lasted 500 decisions, its spec said 1000)."""
    with pytest.raises(ValueError, match=r"\['frame_skip'\] are TorchRL's wrapper arguments.*env.action_repeat"):
        make_env(name, frame_skip=2)


def test_max_episode_steps_truncates_episodes():
    env = make_env("halfcheetah", seed=0, max_episode_steps=30)
    data = collect(env, uniform_policy(env), 70)
    assert env.task_spec.max_episode_steps == 30
    assert data["truncated"].nonzero().flatten().tolist() == [29, 59]


@pytest.mark.parametrize("action_repeat, steps", [(1, 1000), (2, 500)])
def test_a_suite_task_without_a_time_limit_ends_its_episodes_as_the_others_do(action_repeat, steps):
    """dm-control's lqr tasks have no time limit: their episodes end (truncated) after 1,000 simulator
    steps as every other suite task's, so a run resets its planner and logs its episodes."""
    env = make_env("dmc/lqr-lqr_2_1", seed=0, action_repeat=action_repeat)
    data = collect(env, lambda obs: torch.zeros(env.task_spec.act_dim), steps + 3)  # (random pushes diverge)
    assert env.task_spec.max_episode_steps == steps
    assert data["truncated"].nonzero().flatten().tolist() == [steps - 1]
    longer = make_env("dmc/lqr-lqr_2_1", seed=0, action_repeat=action_repeat, max_episode_steps=steps + 200)
    assert longer.task_spec.max_episode_steps == steps + 200  # (a cap above 1,000 steps is the episode's length too)
