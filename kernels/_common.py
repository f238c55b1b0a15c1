"""Argument checks and output allocation shared by every ensemble-MLP implementation.

Shapes: E members, M run members (M = E, or len(members)), B rows. See kernels/README.md.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

ACTIVATIONS = ("silu", "relu", "tanh", "identity")
PRECISIONS = ("fp32", "tf32", "bf16")

# Held by every launch through Triton's autotuner (it keeps per-call state, and tuning times its
# candidates with device syncs) and, by planners.graph, across a CUDA graph's warm-up and capture:
# another thread's tuning of a new shape waits for the capture instead of syncing the device under
# it, and so does any of its autotuned launches (a learning thread stalls for the capture's
# warm-up, compiles included: seconds, once per new planning shape). Re-entrant: the capturing
# thread's own launches take it again.
TUNING_LOCK = threading.RLock()

# Test hook: when True every output buffer a kernel writes into starts as NaN, so an element
# that a kernel forgets to write fails the comparison instead of passing on stale zeros.
POISON = False


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (the benchmarks' counts), else argparse's one-line error."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= 1")
    return value


def empty(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """An output buffer: uninitialised, or NaN-filled when POISON is set (tests)."""
    if POISON:
        return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)
    return torch.empty(tuple(shape), dtype=dtype, device=device)


def _capturing(x: Tensor) -> bool:
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def check_mlp_args(
    x: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    activation: str,
    members: Tensor | None,
    precision: str,
) -> int:
    """Validate an ensemble_mlp call; returns E. Raises ValueError naming the offending argument.

    The common all-valid case takes a fast path (a few microseconds matter at B=1). Member ids
    are range-checked on the host once per tensor and version (a model's elites: once per refit),
    so a planning step that reuses them makes no device sync; never while a CUDA graph is being
    captured (capture forbids the sync).
    """
    try:
        dt, dev = x.dtype, x.get_device()
        xs = x.shape
        ok = (len(xs) == 3 and dt.is_floating_point and len(weights) == len(biases) > 0
              and activation in ACTIVATIONS and precision in PRECISIONS)
        E = weights[0].shape[0]
        width = xs[2] if ok else -1
        for w, b in zip(weights, biases):
            e_w, k, n = w.shape
            if (k != width or e_w != E or b.shape != (E, n) or w.dtype is not dt or b.dtype is not dt
                    or w.get_device() != dev or b.get_device() != dev):
                ok = False
                break
            width = n
    except (AttributeError, IndexError, TypeError, ValueError):
        ok = False
    if not ok:
        _explain_mlp_args(x, weights, biases, activation, precision)
        raise ValueError("invalid ensemble_mlp arguments")  # not reached: _explain raises
    if members is None:
        if x.shape[0] != E:
            raise ValueError(f"x has {x.shape[0]} members but the weights have E={E}")
        return E
    if not isinstance(members, Tensor) or members.dim() != 1 or members.dtype not in (torch.int64, torch.int32):
        raise ValueError("members must be a 1-D int64/int32 tensor of member indices")
    if members.device != x.device:
        raise ValueError(f"members is on {members.device}, x is on {x.device}")
    if x.shape[0] != members.shape[0]:
        raise ValueError(f"x has {x.shape[0]} members but members lists {members.shape[0]}")
    if members.numel() and not _capturing(x):
        tracked = not members.is_inference()  # (inference tensors have no version counter: checked every call)
        if not tracked or _checked_members.get(members) != (members._version, E):
            lo, hi = int(members.min()), int(members.max())
            if lo < 0 or hi >= E:
                raise ValueError(f"members must lie in [0, {E}), got values in [{lo}, {hi}]")
            if tracked:
                _checked_members[members] = (members._version, E)
    return E


# member-id tensors found in range: tensor -> (its version then, E); an in-place change bumps the version
_checked_members = WeakIdKeyDictionary()


def _explain_mlp_args(x, weights, biases, activation: str, precision: str) -> None:
    """Raise the ValueError that says what is wrong with an ensemble_mlp call."""
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a 3-D tensor [E or M, B, in], got {getattr(x, 'shape', type(x))}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    weights, biases = list(weights), list(biases)
    if len(weights) == 0 or len(weights) != len(biases):
        raise ValueError(f"need as many biases as weights (>= 1), got {len(weights)} and {len(biases)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got {x.dtype}")
    E = weights[0].shape[0] if isinstance(weights[0], Tensor) and weights[0].dim() == 3 else -1
    width = x.shape[2]
    for i, (w, b) in enumerate(zip(weights, biases)):
        if not isinstance(w, Tensor) or w.dim() != 3 or w.shape[0] != E:
            raise ValueError(f"weights[{i}] must be [E={E}, in, out], got {getattr(w, 'shape', type(w))}")
        if w.shape[1] != width:
            source = "x has" if i == 0 else "the previous layer gives"
            raise ValueError(f"weights[{i}] expects in={w.shape[1]} but {source} {width}")
        if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[0] != E or b.shape[1] != w.shape[2]:
            raise ValueError(f"biases[{i}] must be [E={E}, {w.shape[2]}], got {getattr(b, 'shape', type(b))}")
        for name, t in ((f"weights[{i}]", w), (f"biases[{i}]", b)):
            if t.dtype != x.dtype:
                raise ValueError(f"{name} has dtype {t.dtype}, x has {x.dtype}; they must match")
            if t.device != x.device:
                raise ValueError(f"{name} is on {t.device}, x is on {x.device}")
        width = w.shape[2]
    raise ValueError("invalid ensemble_mlp arguments")


def check_logvar_bounds(max_logvar: Tensor, min_logvar: Tensor, weights: Sequence[Tensor], x: Tensor) -> int:
    """Validate the Gaussian head: last layer width 2*D, bounds [E, D]. Returns D."""
    last = weights[-1]
    E, out = last.shape[0], last.shape[2]
    if out % 2:
        raise ValueError(f"the last layer must output 2*D (mean, log-variance), got {out}")
    D = out // 2
    for name, t in (("max_logvar", max_logvar), ("min_logvar", min_logvar)):
        if not isinstance(t, Tensor) or tuple(t.shape) != (E, D):
            raise ValueError(f"{name} must be [E={E}, D={D}], got {getattr(t, 'shape', type(t))}")
        if t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"{name} must match x ({x.dtype} on {x.device}), got {t.dtype} on {t.device}")
    return D
