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


def test_required_tasks_are_listed():
    assert set(REQUIRED) <= set(task_names())


def test_unknown_env_is_a_clear_error_listing_supported_names():
    with pytest.raises(ValueError, match="unknown env 'halfcheeta'.*halfcheetah.*dmc/cartpole-swingup"):
        make_env("halfcheeta")


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


def test_max_episode_steps_truncates_episodes():
    env = make_env("halfcheetah", seed=0, max_episode_steps=30)
    data = collect(env, uniform_policy(env), 70)
    assert env.task_spec.max_episode_steps == 30
    assert data["truncated"].nonzero().flatten().tolist() == [29, 59]
