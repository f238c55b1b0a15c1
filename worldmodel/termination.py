"""Known termination functions of the MuJoCo tasks, on batched tensors.

Each maps (obs [..., O], action [..., A], next_obs [..., O]) to a bool tensor [...] that
reproduces the simulator's `terminated` flag from the observation alone. They mirror
gymnasium's v5 `is_healthy` checks (default keyword arguments), which read the state
after the step, i.e. next_obs. Tasks that never terminate have no function (None).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

TerminationFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def hopper_termination(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Hopper-v5: z in (0.7, inf), torso angle in (-0.2, 0.2), next_obs[1:] in (-100, 100).

    gymnasium checks the open interval on every element of state_vector()[2:], i.e. the
    joint angles and the *unclipped* velocities; the observation clips velocities to +-10,
    so a velocity of 100 or more is the one case this cannot see (no rollout reaches it).
    The MOPO-derived version wrote `np.abs(next_obs[:, 1:] < 100)`, which lets every large
    negative value through; this one takes the absolute value first.
    """
    z, angle = next_obs[..., 0], next_obs[..., 1]
    healthy = (
        torch.isfinite(next_obs).all(-1)
        & (next_obs[..., 1:].abs() < 100.0).all(-1)
        & (z > 0.7)
        & (angle.abs() < 0.2)
    )
    return ~healthy


def walker2d_termination(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Walker2d-v5: z in (0.8, 2.0) and torso angle in (-1, 1), both open intervals."""
    z, angle = next_obs[..., 0], next_obs[..., 1]
    healthy = (z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0)
    return ~healthy


def ant_termination(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Ant-v5: finite state and torso z in the closed interval [0.2, 1.0]."""
    z = next_obs[..., 0]
    healthy = torch.isfinite(next_obs).all(-1) & (z >= 0.2) & (z <= 1.0)
    return ~healthy


def inverted_pendulum_termination(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """InvertedPendulum-v5: non-finite observation or |pole angle| > 0.2."""
    return ~torch.isfinite(next_obs).all(-1) | (next_obs[..., 1].abs() > 0.2)


def humanoid_termination(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Humanoid-v5: terminated unless the torso's z (next_obs[0]) is in the open interval (1.0, 2.0)."""
    z = next_obs[..., 0]
    return ~((z > 1.0) & (z < 2.0))


def inverted_double_pendulum_termination(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """InvertedDoublePendulum-v5: the tip's height y <= 1, with y = 0.6 cos(t1) + 0.6 cos(t1 + t2)
    from the observed sines and cosines (next_obs[1:3], next_obs[3:5]; poles of 0.6)."""
    s1, s2, c1, c2 = next_obs[..., 1], next_obs[..., 2], next_obs[..., 3], next_obs[..., 4]
    return 0.6 * c1 + 0.6 * (c1 * c2 - s1 * s2) <= 1.0
