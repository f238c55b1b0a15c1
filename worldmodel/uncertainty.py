"""Model-uncertainty measures used as reward penalties (MOPO, MOReL and the set compared by Lu et al. 2022).

Each measure maps the ensemble's Gaussian predictions mean, var [M, B, D] (M members,
original units) to a score per row [B]; larger means less trustworthy. Published code
disagrees on which members and which outputs enter the score, so `Uncertainty` makes both
choices explicit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def max_aleatoric(mean: Tensor, var: Tensor, sample: Tensor | None = None) -> Tensor:
    """MOPO: the largest predicted standard-deviation norm over members, max_i ||sigma_i||_2."""
    return var.sqrt().norm(dim=-1).amax(0)


def max_pairwise_difference(mean: Tensor, var: Tensor, sample: Tensor | None = None) -> Tensor:
    """MOReL: the largest distance between two members' means, max_ij ||mu_i - mu_j||_2."""
    return torch.cdist(mean.transpose(0, 1), mean.transpose(0, 1)).flatten(1).amax(-1)


def ensemble_std(mean: Tensor, var: Tensor, sample: Tensor | None = None) -> Tensor:
    """Epistemic spread: the norm over outputs of the members' means' standard deviation."""
    return mean.std(0, unbiased=False).norm(dim=-1)


def ensemble_variance(mean: Tensor, var: Tensor, sample: Tensor | None = None) -> Tensor:
    """Total variance of the members' Gaussian mixture (aleatoric + epistemic), norm over outputs."""
    mixture_var = var.mean(0) + mean.var(0, unbiased=False)
    return mixture_var.norm(dim=-1)


def log_likelihood_variance(mean: Tensor, var: Tensor, sample: Tensor | None = None) -> Tensor:
    """Variance over members of the log-likelihood each gives to the sampled outcome [B, D].

    Without a sample, the members' average mean stands in for it.
    """
    x = mean.mean(0) if sample is None else sample
    log_lik = -0.5 * (((x - mean) ** 2) / var + var.log() + math.log(2 * math.pi)).sum(-1)
    return log_lik.var(0, unbiased=False)


MEASURES = {
    "max_aleatoric": max_aleatoric,
    "max_pairwise_difference": max_pairwise_difference,
    "ensemble_std": ensemble_std,
    "ensemble_variance": ensemble_variance,
    "log_likelihood_variance": log_likelihood_variance,
}


@dataclass(frozen=True)
class Uncertainty:
    """A measure with its two choices: which members (elites or all) and which outputs
    (next-state delta alone, or with the reward)."""

    measure: str = "max_aleatoric"
    elites_only: bool = True
    include_reward: bool = False

    def __post_init__(self):
        if self.measure not in MEASURES:
            raise ValueError(f"unknown uncertainty measure {self.measure!r}; choose from {sorted(MEASURES)}")

    def __call__(
        self, mean: Tensor, var: Tensor, elites: Tensor | None = None, sample: Tensor | None = None
    ) -> Tensor:
        """mean, var [M, B, O+1] (delta then reward), elites [N] indices, sample [B, O+1] -> [B].

        With elites_only, give every member's predictions (M = E) and `elites`, or the elites'
        alone (M = N) and no `elites`: the measure reads whichever members it is given."""
        if self.elites_only and elites is not None:
            mean, var = mean.index_select(0, elites), var.index_select(0, elites)
        if not self.include_reward:
            mean, var = mean[..., :-1], var[..., :-1]
            sample = None if sample is None else sample[..., :-1]
        return MEASURES[self.measure](mean, var, sample)
