"""Termination functions must reproduce the simulator's own `terminated` flag, step for step."""

import pytest
import torch

from worldmodel import collect, correlated_noise_policy, make_env, uniform_policy
from worldmodel.termination import hopper_termination

TERMINATING = ["hopper", "walker2d", "ant", "inverted_pendulum", "humanoid", "inverted_double_pendulum"]


def _rollouts(name: str, steps: int):
    """Random and perturbed episodes: uniform and correlated actions, normal and large reset noise."""
    batches = []
    for seed, noise_scale in enumerate([None, 0.5]):
        kwargs = {} if noise_scale is None else {"reset_noise_scale": noise_scale}
        env = make_env(name, seed=seed, **kwargs)
        batches.append(collect(env, uniform_policy(env), steps))
        batches.append(collect(env, correlated_noise_policy(env), steps))
    return env.task_spec, torch.cat(batches)


@pytest.mark.parametrize("name", TERMINATING)
def test_termination_fn_reproduces_simulator_on_every_step(name):
    spec, data = _rollouts(name, steps=1500)
    predicted = spec.termination_fn(data["obs"], data["action"], data["next_obs"])
    actual = data["terminated"]
    assert actual.any() and (~actual).any(), "rollouts must contain both terminal and live steps"
    mismatched = (predicted != actual).nonzero().flatten().tolist()
    assert not mismatched, f"{len(mismatched)} of {len(actual)} steps disagree, first rows {mismatched[:5]}"


@pytest.mark.parametrize("name", ["halfcheetah", "reacher", "pusher", "swimmer", "humanoidstandup", "dmc/cartpole-swingup"])
def test_non_terminating_tasks_have_no_termination_fn_and_never_terminate(name):
    env = make_env(name, seed=0)
    data = collect(env, uniform_policy(env), 300)
    assert env.task_spec.termination_fn is None
    assert not data["terminated"].any()


def test_hopper_termination_rejects_large_negative_state_values():
    """The MOPO-derived check `abs(obs < 100)` let -150 through; ours must not."""
    healthy = torch.zeros(1, 11)
    healthy[0, 0] = 1.25  # standing height, zero angle
    broken = healthy.clone()
    broken[0, 3] = -150.0  # a joint angle far outside (-100, 100)
    a = torch.zeros(1, 3)
    assert not hopper_termination(healthy, a, healthy).item()
    assert hopper_termination(healthy, a, broken).item()


def test_termination_fns_accept_any_batch_shape():
    env = make_env("walker2d", seed=0)
    obs = torch.randn(4, 5, env.task_spec.obs_dim)
    obs[0, :3, 0] = 0.5  # (height 0.5: fallen; random heights near 0 are fallen too, some rows not)
    obs[1, :, 0], obs[1, :, 1] = 1.25, 0.0  # standing
    fn, action = env.task_spec.termination_fn, torch.zeros(4, 5, 6)
    out = fn(obs, action, obs)
    assert out.shape == (4, 5) and out.dtype == torch.bool
    flat = fn(obs.reshape(20, -1), action.reshape(20, -1), obs.reshape(20, -1)).reshape(4, 5)
    assert torch.equal(out, flat) and out[0, :3].all() and not out[1].any()
