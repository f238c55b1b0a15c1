"""iCEM (Pinneri et al. 2020): CEM with coloured noise, elite reuse and a decaying population."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from planners.cem import CEM, CEMConfig


@dataclass
class ICEMConfig(CEMConfig):
    candidates: int = 300  # first iteration's population; later ones shrink by population_decay
    num_elites: int = 10
    iterations: int = 3
    noise_beta: float = 2.5  # coloured noise: smoother sequences
    population_decay: float = 1.25
    keep_elites: float = 0.3  # fraction of elites carried into the next iteration (and step)

    def __post_init__(self):
        super().__post_init__()
        if not self.population_decay >= 1 or not 0 < self.keep_elites <= 1:
            raise ValueError(f"population_decay must be >= 1 and keep_elites in (0, 1], got population_decay="
                             f"{self.population_decay}, keep_elites={self.keep_elites}")


class ICEM(CEM):
    """Acts on the best sequence found, not the mean; elites survive across iterations and,
    shifted by one step, into the next control step."""

    graphable = False  # (the carried elites and the best sequence live on the host between steps)

    def __init__(self, model, spec, config: ICEMConfig | None = None, terminal_value=None, buffer=None):
        super().__init__(model, spec, config or ICEMConfig(), terminal_value, buffer)
        self._kept: Tensor | None = None  # [N, K', H, A] elites carried over
        self._best: Tensor | None = None  # best sequence so far in this step [N, H, A]
        self._best_return: Tensor | None = None

    EPISODE_STATE = (*CEM.EPISODE_STATE, "_kept")

    def reset(self) -> None:
        super().reset()
        self._kept = None

    def skip(self, steps: int) -> None:
        """As MPC.skip, for the carried elites too: they stay aligned with the next plan's start."""
        super().skip(steps)
        for _ in range(steps if self._kept is not None else 0):
            self._kept = self._shift_sequences(self._kept)

    def plan(self, obs: Tensor) -> Tensor:
        kept = self._kept  # inspection must not change what the next act() reuses
        try:
            return super().plan(obs)
        finally:
            self._kept = kept

    def population(self, iteration: int, obs: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        cfg = self.config
        count = max(int(cfg.candidates * cfg.population_decay**-iteration), 2 * cfg.num_elites)
        parts = [self._sample(mean, std, count, cfg.noise_beta)]
        if iteration == 0:
            self._best = self._best_return = None
            if self._kept is not None and self._kept.shape[0] == obs.shape[0]:
                parts.append(self._shift_sequences(self._kept))  # last step's elites, one step on
        elif self._kept is not None:
            parts.append(self._kept)
        if iteration == cfg.iterations - 1:
            parts.append(mean.unsqueeze(1))
        return torch.cat(parts, dim=1)

    def after_iteration(self, iteration: int, elites: Tensor, elite_returns: Tensor) -> None:
        keep = max(1, int(self.config.keep_elites * elites.shape[1]))
        self._kept = elites[:, :keep]  # topk is sorted: the best first
        if self._best is None:
            self._best, self._best_return = elites[:, 0], elite_returns[:, 0]
        else:
            better = elite_returns[:, 0] > self._best_return
            self._best = torch.where(better[:, None, None], elites[:, 0], self._best)
            self._best_return = torch.maximum(elite_returns[:, 0], self._best_return)

    def result(self, mean: Tensor) -> Tensor:
        return self._best

    def _shift_sequences(self, sequences: Tensor) -> Tensor:
        n, k, h, a = sequences.shape
        return self._shift(sequences.reshape(n * k, h, a)).reshape(n, k, h, a)
