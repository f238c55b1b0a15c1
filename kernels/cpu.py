"""CPU variants of the ensemble MLP and the measured choice between them.

Shapes: x [P, B, in], weights[l] [E, in_l, out_l], biases[l] [E, out_l]; P = E or len(members).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels import _common
from kernels.reference import ensemble_mlp as mlp_baddbmm  # noqa: F401  (re-exported variant)

_ACT = {"silu": F.silu, "relu": F.relu, "tanh": torch.tanh, "identity": lambda t: t}
_ACT_INPLACE = {"silu": lambda t: F.silu(t, inplace=True), "relu": torch.relu_, "tanh": torch.tanh_,
                "identity": lambda t: t}

# The measured choice (see `choose` and tools/cpu_thresholds in kernels/README.md). Measured with
# kernels.bench-style medians on this project's 2-core AVX-512 machine (torch 2.13, 2 threads),
# in=23, 4 hidden layers, out=36, E=7:
#  * inference: stacked baddbmm wins while B is small (fewer, larger ops; Python overhead of the
#    per-member loop dominates); from B = INFER_LOOP_MIN_ROWS rows per member the per-member
#    addmm loop with in-place activations wins (1.3-2x), and past CHUNK_ROWS it is processed in
#    row chunks so each member's activations stay in cache (a single 65536-row pass ran at about
#    half the GFLOP/s of 4096-row chunks).
#  * training (forward+backward under autograd): same crossover, loop from TRAIN_LOOP_MIN_ROWS.
INFER_LOOP_MIN_ROWS = 256
TRAIN_LOOP_MIN_ROWS = 256
CHUNK_ROWS = 4096


def _member_ids(P: int, members: Tensor | None) -> list[int]:
    return list(range(P)) if members is None else members.tolist()


def mlp_loop(
    x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], activation: str = "silu",
    members: Tensor | None = None,
) -> Tensor:
    """Python loop over members, one addmm per layer; differentiable. [P, B, in] -> [P, B, out].

    Weights are unbound into per-member views (no copy); autograd stacks their gradients once.
    """
    act = _ACT[activation]
    ids = _member_ids(x.shape[0], members)
    ws = [w.unbind(0) for w in weights]
    bs = [b.unbind(0) for b in biases]
    L = len(weights)
    outs = []
    for p, e in enumerate(ids):
        h = x[p]
        for i in range(L):
            h = torch.addmm(bs[i][e], h, ws[i][e])
            if i < L - 1:
                h = act(h)
        outs.append(h)
    return torch.stack(outs)


def mlp_loop_inference(
    x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], activation: str = "silu",
    members: Tensor | None = None, chunk_rows: int = CHUNK_ROWS,
) -> Tensor:
    """No-grad loop over members and row chunks, in-place activations, output written in place."""
    act = _ACT_INPLACE[activation]
    P, B, _ = x.shape
    L = len(weights)
    out = _common.empty((P, B, weights[-1].shape[2]), x.dtype, x.device)
    with torch.no_grad():
        for p, e in enumerate(_member_ids(P, members)):
            ws = [w[e] for w in weights]
            bs = [b[e] for b in biases]
            for s in range(0, B, chunk_rows):
                h = x[p, s:s + chunk_rows]
                for i in range(L - 1):
                    h = torch.addmm(bs[i], h, ws[i])
                    act(h)
                torch.addmm(bs[-1], h, ws[-1], out=out[p, s:s + chunk_rows])
    return out


def mlp_baddbmm_inference(
    x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], activation: str = "silu",
    members: Tensor | None = None,
) -> Tensor:
    """No-grad stacked baddbmm with in-place activations (the small-batch inference variant)."""
    act = _ACT_INPLACE[activation]
    if members is not None:
        weights = [w.index_select(0, members) for w in weights]
        biases = [b.index_select(0, members) for b in biases]
    L = len(weights)
    P, B, _ = x.shape
    out = _common.empty((P, B, weights[-1].shape[2]), x.dtype, x.device)
    with torch.no_grad():
        h = x
        for i in range(L - 1):
            h = torch.baddbmm(biases[i].unsqueeze(1), h, weights[i])
            act(h)
        torch.baddbmm(biases[-1].unsqueeze(1), h, weights[-1], out=out)
    return out


def choose(batch: int, needs_grad: bool) -> str:
    """Name of the fastest measured variant for B rows per member."""
    if needs_grad:
        return "loop" if batch >= TRAIN_LOOP_MIN_ROWS else "baddbmm"
    return "loop_inference" if batch >= INFER_LOOP_MIN_ROWS else "baddbmm_inference"


VARIANTS = {
    "baddbmm": mlp_baddbmm,
    "loop": mlp_loop,
    "loop_inference": mlp_loop_inference,
    "baddbmm_inference": mlp_baddbmm_inference,
}


def ensemble_mlp(
    x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], activation: str = "silu",
    members: Tensor | None = None, *, precision: str = "fp32",
) -> Tensor:
    """CPU ensemble MLP (arguments already validated): the measured-fastest variant.

    precision: "fp32" computes in x's dtype; "tf32" is the same on CPU (no TF32 units, so the
    result is never less accurate than asked); "bf16" casts x and parameters to bfloat16 for the
    matmuls (AVX-512 BF16) and returns x's dtype. bf16 is only ever used when asked for.
    """
    dtype = x.dtype
    if precision == "bf16":
        x = x.to(torch.bfloat16)
        weights = [w.to(torch.bfloat16) for w in weights]
        biases = [b.to(torch.bfloat16) for b in biases]
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or any(t.requires_grad for t in (*weights, *biases)))
    out = VARIANTS[choose(x.shape[1], needs_grad)](x, weights, biases, activation, members)
    return out.to(dtype)
