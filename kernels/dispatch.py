"""The single entry point for the ensemble MLP: validate, then route by device.

CUDA tensors -> Triton kernels; CPU tensors -> the measured-fastest PyTorch variant (kernels.cpu),
or the Triton kernels under the interpreter when TRITON_INTERPRET=1 was set before the process
imported triton (tests). Callers never pick an implementation.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

import torch
from torch import Tensor

from kernels import _common, cpu
from kernels.reference import gaussian_head


# Read once, like Triton itself: the interpreter flag only counts if set before the import.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreting() -> bool:
    """True when Triton's CPU interpreter was requested (TRITON_INTERPRET=1 before import)."""
    return _INTERPRET


def _triton():
    """Import the Triton module lazily: CPU-only users never import triton, and the interpreter
    flag must be set before triton is first imported."""
    mod = sys.modules.get("kernels.triton_mlp")
    if mod is None:
        from kernels import triton_mlp as mod
    if interpreting() != mod.INTERPRET:
        raise RuntimeError("TRITON_INTERPRET changed between importing kernels and triton; set it "
                           "before the process starts (e.g. run the tests in a subprocess)")
    return mod


def backend(x: Tensor) -> str:
    """Which implementation a call on x takes: "triton" or "cpu"."""
    if x.is_cuda or _INTERPRET:
        return "triton"
    if x.device.type != "cpu":
        raise ValueError(f"unsupported device {x.device}: expected cuda or cpu")
    return "cpu"


def _on_device(x: Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def ensemble_mlp(
    x: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    activation: str = "silu",
    members: Tensor | None = None,
    *,
    precision: str = "fp32",
) -> Tensor:
    """Stacked ensemble MLP: [E, B, in] -> [E, B, out]; `activation` after every layer but the last.

    weights[l] [E, in_l, out_l], biases[l] [E, out_l]. `members` (int64 [M]) runs only those
    members (elites) on x [M, B, in] -> [M, B, out], reading their weights in place.
    precision: "fp32" (exact fp32 products), "tf32" (TF32 tensor cores on GPU; fp32 on CPU) or
    "bf16" (bf16 operands, fp32 accumulation). Differentiable w.r.t. x, weights and biases (on
    CUDA once: a double backward needs kernels.reference).
    """
    _common.check_mlp_args(x, weights, biases, activation, members, precision)
    if backend(x) == "triton":
        with _on_device(x):
            return _triton().ensemble_mlp(x, weights, biases, activation, members, precision=precision)
    return cpu.ensemble_mlp(x, weights, biases, activation, members, precision=precision)


def ensemble_gaussian_mlp(
    x: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    max_logvar: Tensor,
    min_logvar: Tensor,
    activation: str = "silu",
    members: Tensor | None = None,
    *,
    precision: str = "fp32",
) -> tuple[Tensor, Tensor]:
    """Ensemble MLP with a Gaussian head: the last layer's 2*D outputs are (mean, raw log-variance).

    Returns mean and log-variance [E or M, B, D], the log-variance soft-clamped between the
    per-member bounds max_logvar/min_logvar [E, D] (lv = max - softplus(max - raw);
    lv = min + softplus(lv - min)). On the Triton path the clamp is fused into the last layer.
    Differentiable w.r.t. x, weights, biases and both bounds (once on CUDA, as above).
    """
    _common.check_mlp_args(x, weights, biases, activation, members, precision)
    _common.check_logvar_bounds(max_logvar, min_logvar, weights, x)
    if backend(x) == "triton":
        with _on_device(x):
            return _triton().ensemble_mlp(x, weights, biases, activation, members, precision=precision,
                                          logvar_bounds=(max_logvar, min_logvar))
    out = cpu.ensemble_mlp(x, weights, biases, activation, members, precision=precision)
    return gaussian_head(out, max_logvar, min_logvar, members)
