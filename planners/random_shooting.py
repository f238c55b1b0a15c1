"""Random shooting: the best of many uniformly random action sequences (Nagabandi et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from planners.mpc import MPCConfig, MPCPlanner


@dataclass
class RandomShootingConfig(MPCConfig):
    candidates: int = 1000
    discount: float = 1.0
    value_learning: bool = False  # the baseline plans with the model alone

    def __post_init__(self):
        super().__post_init__()
        if self.candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {self.candidates}")


class RandomShooting(MPCPlanner):
    """Samples sequences uniformly in the action box (plus the warm-started plan) and keeps the best."""

    def __init__(self, model, spec, config: RandomShootingConfig | None = None, terminal_value=None, buffer=None):
        super().__init__(model, spec, config or RandomShootingConfig(), terminal_value, buffer)

    def optimize(self, obs: Tensor, mean: Tensor) -> tuple[Tensor, None]:
        n, h, a = mean.shape
        uniform = torch.rand((n, self.config.candidates, h, a), generator=self.generator, device=mean.device)
        candidates = self.rate_limited(torch.cat([mean.unsqueeze(1), self.low + (self.high - self.low) * uniform], dim=1))
        candidates = self.with_policy(candidates, self.policy_sequences(obs))
        best = self.evaluate(obs, candidates).argmax(dim=1)
        return candidates[torch.arange(n, device=mean.device), best], None
