"""Per-feature standardisation fitted on data, kept as module buffers so it moves and saves with the model."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Standardizer(nn.Module):
    """x -> (x - mean) / std per feature; features with (near) zero spread keep std 1."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Set mean and std from rows x [N, dim]; returns the previous (mean, std) [dim] each."""
        before = self.mean.clone(), self.std.clone()
        self.mean.copy_(x.mean(0))
        std = x.std(0) if x.shape[0] > 1 else torch.ones_like(self.std)
        self.std.copy_(torch.where(std < self.eps, torch.ones_like(std), std))
        return before

    @property
    def fitted(self) -> bool:
        """False until fit() set it from data (a fitted one is never exactly the identity)."""
        return not (bool((self.mean == 0).all()) and bool((self.std == 1).all()))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean
