"""The true simulator behind the model's `step` interface: an oracle model for ablations.

Each row's MuJoCo state is set from its observation, the action is applied for one env
step, and the task's own reward and termination come back, so a Dyna planner can roll out
in the real dynamics (RAVL's edge-of-reach test). Only gymnasium locomotion tasks whose
observation is the whole state but the x position qualify; x never enters their dynamics.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict
from torch import Tensor

from worldmodel.envs import GYM_TASKS

# Tasks whose observation is (qpos[1:], qvel). Hopper and walker2d clip observed velocities at
# +-10: a row at the clip starts from the clipped velocity, so its step is approximate (other rows
# are exact). Under correlated random actions 11 of 300 hopper steps sit at the clip, but 250 of
# 300 walker2d steps (its joints spin fast), so walker2d is a poor oracle for such data.
FULL_STATE_TASKS = ("halfcheetah", "hopper", "walker2d")
VELOCITY_CLIP = {"hopper": 10.0, "walker2d": 10.0}


class SimulatorDynamics:
    """`step(obs, action)` in MuJoCo itself: next_obs, reward, terminated exactly as the env gives them."""

    num_elites = 1

    def __init__(self, task: str):
        if task not in FULL_STATE_TASKS:
            raise ValueError(f"the simulator can stand in for the model only on {list(FULL_STATE_TASKS)}, not {task!r}")
        self.task = task
        self.env = gym.make(GYM_TASKS[task][0]).unwrapped
        self.env.reset(seed=0)
        self.nq = self.env.model.nq
        self.obs_dim = self.env.observation_space.shape[0]
        self.device = torch.device("cpu")
        self.elites = torch.zeros(1, dtype=torch.long)

    def step(self, obs: Tensor, action: Tensor, mode: str = "random", members: Tensor | None = None,
             deterministic: bool = False, uncertainty=None, generator: torch.Generator | None = None) -> TensorDict:
        """One real step per row: obs [B, O], action [B, A] -> TensorDict [B] (next_obs, reward, terminated, member)."""
        if uncertainty is not None:
            raise ValueError("the simulator has no model uncertainty to penalise; use penalty 0 with it")
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(f"obs must be [B, {self.obs_dim}] for {self.task}, got {list(obs.shape)}")
        obs_np, act_np = obs.detach().cpu().double().numpy(), action.detach().cpu().double().numpy()
        next_obs = np.empty_like(obs_np)
        reward = np.empty(len(obs_np))
        terminated = np.empty(len(obs_np), dtype=bool)
        for i, (o, a) in enumerate(zip(obs_np, act_np)):
            self.env.set_state(np.concatenate([[0.0], o[: self.nq - 1]]), o[self.nq - 1:])
            next_obs[i], reward[i], terminated[i], _, _ = self.env.step(a)
        b = len(obs_np)
        return TensorDict({
            "next_obs": torch.as_tensor(next_obs, dtype=torch.float32), "reward": torch.as_tensor(reward, dtype=torch.float32),
            "terminated": torch.as_tensor(terminated), "member": torch.zeros(b, dtype=torch.long),
        }, batch_size=[b])  # fmt: skip

    def fit(self, data=None, **kwargs) -> dict:
        """Nothing to learn: the simulator is exact."""
        return {}
