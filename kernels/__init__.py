"""Batched ensemble-MLP forward passes: the hot path of every planner.

One public entry point per operation; callers never choose the implementation (kernels.dispatch
routes CUDA tensors to Triton and CPU tensors to the fastest measured PyTorch variant).
"""

from kernels._common import PRECISIONS
from kernels.dispatch import ensemble_gaussian_mlp, ensemble_mlp

__all__ = ["ensemble_mlp", "ensemble_gaussian_mlp", "PRECISIONS"]
