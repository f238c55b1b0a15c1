"""PyTorch implementation of the stacked ensemble MLP.

Shapes: E members, B rows. x is [E, B, in]; weights[l] is [E, in_l, out_l]; biases[l] is [E, out_l].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_ACTIVATIONS = {"silu": F.silu, "relu": F.relu, "tanh": torch.tanh, "identity": lambda t: t}


def _select(params: Sequence[Tensor], members: Tensor | None) -> list[Tensor]:
    return list(params) if members is None else [p.index_select(0, members) for p in params]


def ensemble_mlp(
    x: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    activation: str = "silu",
    members: Tensor | None = None,
    *,
    precision: str = "fp32",
) -> Tensor:
    """[E, B, in] -> [E, B, out]; `activation` after every layer but the last.

    `members` (long tensor [M]) runs only those members; x is then [M, B, in].
    precision "bf16": see `bf16_hidden` ("fp32" and "tf32" compute in x's dtype).
    """
    if precision == "bf16":
        return bf16_hidden(ensemble_mlp, x, weights, biases, activation, members)
    act = _ACTIVATIONS[activation]
    weights, biases = _select(weights, members), _select(biases, members)
    h = x
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = layer(h, w, b)
        if i < len(weights) - 1:
            h = act(h)
    return h


def layer(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """h [E, B, in] @ w [E, in, out] + b [E, out]. A one-output layer (a critic's) is a product and
    a sum: its backward is then an outer product by broadcasting, which bmm runs slowly at inner
    size 1 (a SAC update 10% faster on the CPU, `python -m planners.bench --dyna`)."""
    if w.shape[-1] == 1 and h.dtype != torch.bfloat16:  # (bf16 operands keep bmm's fp32 accumulation)
        return (h * w.transpose(1, 2)).sum(-1, keepdim=True) + b.unsqueeze(1)
    return torch.baddbmm(b.unsqueeze(1), h, w)


def bf16_hidden(
    mlp, x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], activation: str,
    members: Tensor | None, cast=lambda t: t.to(torch.bfloat16),
) -> Tensor:
    """Mixed precision: the hidden layers through `mlp` on bfloat16 operands (fp32 accumulation),
    the output layer in x's dtype, so outputs (Q-values, means, log-variances) keep fp32's
    resolution while the wide layers run at bf16's speed. `cast` makes a parameter's bf16 copy.
    Differentiable (twice, when `mlp` is); gradients reach the fp32 parameters. [E|M, B, out].
    A one-layer MLP has no hidden layer: it runs in fp32. (This is the CPU's bf16; the Triton
    kernels' bf16 runs every layer, the output layer too, on bf16 operands.)"""
    if len(weights) == 1:
        return mlp(x, weights, biases, activation, members)
    hidden = mlp(x.to(torch.bfloat16), [cast(w) for w in weights[:-1]], [cast(b) for b in biases[:-1]],
                 activation, members)
    (w,), (b,) = _select(weights[-1:], members), _select(biases[-1:], members)
    return layer(_ACTIVATIONS[activation](hidden).to(x.dtype), w, b)


def soft_clamp_logvar(raw: Tensor, max_logvar: Tensor, min_logvar: Tensor) -> Tensor:
    """Softly bound a log-variance between learned limits (PETS): [E, B, D] with [E, D] bounds."""
    logvar = max_logvar.unsqueeze(1) - F.softplus(max_logvar.unsqueeze(1) - raw)
    return min_logvar.unsqueeze(1) + F.softplus(logvar - min_logvar.unsqueeze(1))


def gaussian_head(out: Tensor, max_logvar: Tensor, min_logvar: Tensor,
                  members: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Split the last layer's [E, B, 2D] output into mean and soft-clamped log-variance [E, B, D]."""
    mean, raw = out.chunk(2, dim=-1)
    max_lv, min_lv = _select((max_logvar, min_logvar), members)
    return mean, soft_clamp_logvar(raw, max_lv, min_lv)


def ensemble_gaussian_mlp(
    x: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    max_logvar: Tensor,
    min_logvar: Tensor,
    activation: str = "silu",
    members: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Ensemble MLP with a Gaussian head: the last layer's 2*D outputs are (mean, raw log-variance).

    Returns mean and soft-clamped log-variance, each [E, B, D]. Bounds are [E, D].
    """
    return gaussian_head(ensemble_mlp(x, weights, biases, activation, members), max_logvar, min_logvar, members)
