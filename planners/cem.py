"""CEM: the cross-entropy method over action sequences (as PETS plans), batched over start states."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from planners.mpc import MPCConfig, MPCPlanner


@dataclass
class CEMConfig(MPCConfig):
    candidates: int = 400  # population per iteration
    num_elites: int = 40  # best candidates the distribution is refitted to
    iterations: int = 5
    momentum: float = 0.1  # share of the old mean/std kept at each refit
    init_std: float = 0.5  # initial std as a fraction of half the action range
    min_std: float = 0.01

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.num_elites <= self.candidates or self.iterations < 1:
            raise ValueError(f"num_elites must be in [1, candidates={self.candidates}] "
                             f"and iterations >= 1, got num_elites={self.num_elites}, iterations={self.iterations}")
        if not 0 <= self.momentum < 1 or not self.init_std > 0 or not self.min_std >= 0:
            raise ValueError(f"momentum must be in [0, 1), init_std > 0 and min_std >= 0, got momentum={self.momentum}, "
                             f"init_std={self.init_std}, min_std={self.min_std}")


class CEM(MPCPlanner):
    """Each iteration: sample a population from a Gaussian over sequences, refit the Gaussian
    to the best `num_elites`. The plan is the final mean."""

    def __init__(self, model, spec, config: CEMConfig | None = None, terminal_value=None, buffer=None):
        super().__init__(model, spec, config or CEMConfig(), terminal_value, buffer)

    def optimize(self, obs: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.config
        std = (cfg.init_std * self._half_range()).expand_as(mean)
        prior = self.policy_sequences(obs)  # [N, P, H, A] or None
        mean = self.sampling_mean(mean, prior)
        for i in range(cfg.iterations):
            candidates = self.with_policy(self.population(i, obs, mean, std), prior)  # [N, C(+P), H, A]
            returns = self.evaluate(obs, candidates)
            top = returns.topk(cfg.num_elites, dim=1)
            elites = candidates.gather(1, top.indices[..., None, None].expand(-1, -1, *mean.shape[1:]))
            self.after_iteration(i, elites, top.values)
            mean = cfg.momentum * mean + (1 - cfg.momentum) * elites.mean(1)
            std = cfg.momentum * std + (1 - cfg.momentum) * elites.std(1, unbiased=False)
            std = std.clamp_min(cfg.min_std * self._half_range())
        return self.result(mean), std

    def population(self, iteration: int, obs: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """Candidates for one iteration: [N, C, H, A]."""
        return self._sample(mean, std, self.config.candidates)

    def after_iteration(self, iteration: int, elites: Tensor, elite_returns: Tensor) -> None:
        """Hook: what a variant keeps from an iteration's elites [N, K, H, A] and returns [N, K]."""

    def result(self, mean: Tensor) -> Tensor:
        """The sequence to act on: the final mean."""
        return mean
