"""The interface every planner shares, shaped for a robot's control loop.

    planner.reset()                  # new episode: forget warm starts
    action = planner.act(obs)        # one control step
    planner.observe(transition)      # feed back what happened
    stats = planner.update()         # learn
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from tensordict import TensorDict
from torch import Tensor


class Planner(ABC):
    """A policy that acts by planning with a dynamics model."""

    @abstractmethod
    def reset(self) -> None:
        """Start a new episode: clear every state kept between steps."""

    @abstractmethod
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """obs [O] -> action [A], or a batch [N, O] -> [N, A]."""

    def observe(self, transition: TensorDict) -> None:
        """Take in real transitions (a TensorDict [N], see worldmodel.transitions)."""

    def update(self, **kwargs) -> dict:
        """Learn from what was observed; returns statistics."""
        return {}
