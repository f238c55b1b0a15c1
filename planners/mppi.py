"""MPPI: model-predictive path integral control (Williams et al. 2017), batched over start states."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from planners.mpc import MPCConfig, MPCPlanner


@dataclass
class MPPIConfig(MPCConfig):
    candidates: int = 512
    iterations: int = 1  # >1 also refits the sampling spread from the weighted candidates
    temperature: float = 0.5  # in units of the candidates' return spread: lower is greedier
    noise_std: float = 0.5  # sampling std as a fraction of half the action range
    min_std: float = 0.05
    noise_beta: float = 0.0  # coloured noise exponent (0: white)

    def __post_init__(self):
        super().__post_init__()
        if self.candidates < 2 or self.iterations < 1:
            raise ValueError(f"MPPI needs candidates >= 2 (their returns' spread scales the temperature) and "
                             f"iterations >= 1, got candidates={self.candidates}, iterations={self.iterations}")
        if not self.temperature > 0 or not self.noise_std > 0 or not self.min_std >= 0:
            raise ValueError(f"temperature and noise_std must be > 0 and min_std >= 0, got temperature="
                             f"{self.temperature}, noise_std={self.noise_std}, min_std={self.min_std}")


class MPPI(MPCPlanner):
    """Each iteration: sample candidates around the plan, weight them by exp(return / temperature),
    and move the plan to the weighted average."""

    def __init__(self, model, spec, config: MPPIConfig | None = None, terminal_value=None, buffer=None):
        super().__init__(model, spec, config or MPPIConfig(), terminal_value, buffer)

    def optimize(self, obs: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.config
        std = (cfg.noise_std * self._half_range()).expand_as(mean)
        prior = self.policy_sequences(obs)  # [N, P, H, A] or None
        mean = self.sampling_mean(mean, prior)
        for _ in range(cfg.iterations):
            candidates = self.with_policy(self._sample(mean, std, cfg.candidates, cfg.noise_beta), prior)  # [N, C(+P), H, A]
            returns = self.evaluate(obs, candidates)  # [N, C]
            spread = returns.std(dim=1, keepdim=True).clamp_min(1e-6)
            # softmax subtracts the max before exponentiating, so large returns cannot overflow
            weights = torch.softmax(returns / (cfg.temperature * spread), dim=1)[..., None, None]
            mean = (weights * candidates).sum(1)
            var = (weights * (candidates - mean.unsqueeze(1)).square()).sum(1)
            std = var.sqrt().clamp_min(cfg.min_std * self._half_range())
        return mean, std
