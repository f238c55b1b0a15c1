"""A linear system with a quadratic cost, exposing the model interface planners use (EnsembleDynamics.step)."""

from __future__ import annotations

import torch
from tensordict import TensorDict

from worldmodel.envs import TaskSpec


class LinearDynamics:
    """next = A obs + B action; reward = -|next - goal|^2 - action_cost |action|^2.

    Deterministic and exact, so the optimum is known. `uncertainty` reports |action|^2 (a
    stand-in measure the penalty tests can predict); `terminate_above` ends a rollout when
    next[0] exceeds it.
    """

    def __init__(self, a, b, goal, action_cost=0.0, terminate_above=None, members=3):
        self.a, self.b, self.goal = torch.as_tensor(a).float(), torch.as_tensor(b).float(), torch.as_tensor(goal).float()
        self.action_cost, self.terminate_above = action_cost, terminate_above
        self.elites = torch.arange(members)
        self.num_elites = members
        self.device = torch.device("cpu")
        self.fitted = True  # exact by construction
        self.calls: list[dict] = []

    def spec(self, low=-1.0, high=1.0) -> TaskSpec:
        act_dim = self.b.shape[0]
        return TaskSpec("linear", self.a.shape[0], act_dim, torch.full((act_dim,), low),
                        torch.full((act_dim,), high), 100, None)  # fmt: skip

    def step(self, obs, action, mode="random", members=None, deterministic=False, uncertainty=None, generator=None):
        self.calls.append({"mode": mode, "members": members, "rows": obs.shape[0]})
        nxt = obs @ self.a.T + action @ self.b
        reward = -(nxt - self.goal).square().sum(-1) - self.action_cost * action.square().sum(-1)
        if self.terminate_above is None:
            terminated = torch.zeros(obs.shape[0], dtype=torch.bool)
        else:
            terminated = nxt[:, 0] > self.terminate_above
        out = {"next_obs": nxt, "reward": reward, "terminated": terminated,
               "member": torch.zeros(obs.shape[0], dtype=torch.long)}  # fmt: skip
        if uncertainty is not None:
            out["uncertainty"] = action.square().sum(-1)
        return TensorDict(out, batch_size=[obs.shape[0]])


def point_mass(dt=0.1, goal=(1.0, 0.0), **kwargs) -> LinearDynamics:
    """1-D double integrator: state (position, velocity), action = acceleration."""
    return LinearDynamics([[1.0, dt], [0.0, 1.0]], [[0.5 * dt * dt, dt]], goal, **kwargs)


def single_integrator(goal=(0.3, -0.6), **kwargs) -> LinearDynamics:
    """next = obs + action in 2-D: the one-step optimum is clip(goal - obs)."""
    return LinearDynamics(torch.eye(2), torch.eye(2), goal, **kwargs)
