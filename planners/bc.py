"""Behaviour cloning: the floor the offline planners are measured against.

A deterministic MLP policy regressed (mean squared error) onto the logged actions; the model
is not used. Same interface as every planner, so `python -m worldmodel.run planner=bc` works.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from planners.base import Planner, check_obs
from worldmodel.envs import TaskSpec
from worldmodel.optim import adam
from worldmodel.replay import ReplayBuffer


@dataclass
class BCConfig:
    hidden: int = 256
    layers: int = 2
    lr: float = 1e-3
    batch_size: int = 256
    updates_per_step: int = 1  # gradient steps per real step when learning online
    seed: int | None = None  # accepted for a uniform interface; sampling uses torch's global RNG


class BehaviourCloning(Planner):
    """obs -> tanh MLP scaled to the action box, fitted to the buffer's (obs, action) pairs."""

    def __init__(self, model, spec: TaskSpec, config: BCConfig | None = None, buffer: ReplayBuffer | None = None):
        self.model, self.spec, self.config = model, spec, config or BCConfig()
        cfg = self.config
        self.buffer = buffer if buffer is not None else ReplayBuffer(spec.obs_dim, spec.act_dim)
        sizes = [spec.obs_dim] + [cfg.hidden] * cfg.layers
        body = [m for i, o in zip(sizes[:-1], sizes[1:]) for m in (nn.Linear(i, o), nn.ReLU())]
        self.policy = nn.Sequential(*body, nn.Linear(cfg.hidden, spec.act_dim), nn.Tanh())
        self.center = (spec.action_high + spec.action_low) / 2
        self.half_range = (spec.action_high - spec.action_low) / 2
        self.optim = adam(self.policy.parameters(), cfg.lr)

    def reset(self) -> None:
        pass

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        return self.center + self.half_range * self.policy(check_obs(obs, self.spec.obs_dim))

    def observe(self, transition) -> None:
        self.buffer.extend(transition)

    def learn(self, updates: int | None = None) -> dict[str, float]:
        """Gradient steps of mean squared error between the policy's and the logged actions."""
        loss = torch.zeros(())
        for _ in range(self.config.updates_per_step if updates is None else updates):
            batch = self.buffer.sample(self.config.batch_size)
            predicted = self.center + self.half_range * self.policy(batch["obs"])
            loss = (predicted - batch["action"]).square().mean()
            self.optim.zero_grad(set_to_none=True)
            loss.backward()
            self.optim.step()
        return {"bc_loss": loss.item()}

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "optim": self.optim.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optim.load_state_dict(state["optim"])
