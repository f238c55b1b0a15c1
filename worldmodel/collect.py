"""Collect real transitions from an environment with any policy, obs -> action."""

from __future__ import annotations

from typing import Callable

import torch
from tensordict import TensorDict
from torch import Tensor
from tqdm.auto import tqdm

from worldmodel.transitions import from_rollout

Policy = Callable[[Tensor], Tensor]  # obs [O] -> action [A]


def uniform_policy(env, generator: torch.Generator | None = None) -> Policy:
    """Actions uniform in the task's action box."""
    low, high = env.task_spec.action_low, env.task_spec.action_high
    return lambda obs: low + (high - low) * torch.rand(low.shape, generator=generator)


def correlated_noise_policy(
    env, correlation: float = 0.9, generator: torch.Generator | None = None
) -> Policy:
    """Temporally correlated (AR(1)) noise, clipped to the action box.

    Correlated actions push the body further than white noise does (faster gaits, larger
    swings, falls), so a model fitted on both sees a wider range of states.
    """
    low, high = env.task_spec.action_low, env.task_spec.action_high
    state = torch.zeros_like(low)
    scale = (1 - correlation**2) ** 0.5

    def act(obs: Tensor) -> Tensor:
        nonlocal state
        state = correlation * state + scale * torch.randn(low.shape, generator=generator)
        return low + (high - low) * (state.clamp(-1, 1) + 1) / 2

    return act


def collect(env, policy: Policy, steps: int, progress: bool = False) -> TensorDict:
    """Run `policy` for `steps` env steps (resetting at episode ends); returns transitions [steps]."""
    td = env.reset()
    rows = []
    for _ in tqdm(range(steps), desc=f"collect {env.task_spec.name}", disable=not progress):
        td["action"] = policy(td["observation"])
        step, td = env.step_and_maybe_reset(td)
        rows.append(step)
    return from_rollout(torch.stack(rows))
