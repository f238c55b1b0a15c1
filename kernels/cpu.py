"""CPU variants of the ensemble MLP and the measured choice between them.

Shapes: x [P, B, in], weights[l] [E, in_l, out_l], biases[l] [E, out_l]; P = E or len(members).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.graph import increment_version
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

from kernels import _common
from kernels.reference import _ACTIVATIONS as _ACT
from kernels.reference import _select, bf16_hidden
from kernels.reference import ensemble_mlp as mlp_baddbmm  # noqa: F401  (re-exported variant)

_ACT_INPLACE = {"silu": lambda t: F.silu(t, inplace=True), "relu": torch.relu_, "tanh": torch.tanh_,
                "identity": lambda t: t}

# The measured choice (`choose`), from `python -m kernels.tune_cpu` on this project's machine:
# 2-core AMD EPYC (Zen 5, AVX-512, 1 MiB L2 per core, 32 MiB L3), torch 2.13, 2 threads; E=7,
# in=23, 4 hidden layers of 200 or 512, out=36; medians of 5 calls, variants interleaved.
#  * inference: stacked baddbmm wins up to B=128 rows per member (fewer, larger ops; at B=1 the
#    call is bound by reading the weights); from B=256 the per-member addmm loop wins (1.1x at
#    256, 1.4x at 4096 for hidden 200), because bmm splits its 7 members over 2 threads (4+3).
#  * inference past CHUNK_ELEMS activations per layer: rows are processed in chunks so each
#    member's activations stay in L3 (hidden 200, B=65536: 0.78 s in 2048-8192-row chunks against
#    1.39 s in one pass).
#  * training (forward+backward under autograd): baddbmm up to B=512 (B=256: 8.8 ms against
#    10.8), the loop from B=1024 (B=1024: 34 ms against 42; B=4096: 134 against 151).
#  * inference in bf16 (2026-12-05, AVX-512 BF16, 1 and 2 threads; E=10, 3 x 256, out 1 and E=7,
#    4 x 200, out 36): bf16 products run 4x fp32's rate, so the per-call cost the loop saves
#    weighs less and baddbmm wins up to B=512 (1 thread: 1.25-1.28x at 256, 1.05-1.14x at 512; 2
#    threads: 1.6-2.2x at 256, 1.25-1.46x at 512); from B=1024 the two are within 15%, the loop
#    ahead on one thread (0.85-1.0x) and by 2048 on two.
# The machine is shared: under load from other processes the many small OpenMP regions of the
# loop and of small chunks stall far more than one baddbmm, so re-measure on a quiet machine.
INFER_LOOP_MIN_ROWS = 256
INFER_LOOP_MIN_ROWS_BF16 = 1024
TRAIN_LOOP_MIN_ROWS = 1024
CHUNK_ELEMS = 1 << 20  # activations per chunk and layer: 4 MiB of fp32


_bf16_copies = WeakIdKeyDictionary()  # parameter -> (its version and storage, its bf16 copy): cast once per change
_warned_slow_bf16 = False


def _count_optimizer_writes(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Fused optimisers (torch's Adam(fused=True), which every learner here uses) write their
    parameters without counting a version; count one for each parameter a step could have
    changed (those with a gradient), so cached casts (`_bf16`, an ensemble's member slices) see it."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                increment_version(p)


register_optimizer_step_post_hook(_count_optimizer_writes)


def _bf16(t: Tensor) -> Tensor:
    """t in bfloat16; a parameter's copy is kept until it changes (planning calls the same weights
    at every horizon step) or it needs a gradient (then the cast stays in the graph). A change is
    a new version (in-place ops, copy_, load_state_dict; optimiser steps through the hook above)
    or new storage (`.data =`, `module.to`); a write into `.data` in place is not seen."""
    if t.dtype == torch.bfloat16 or t.requires_grad and torch.is_grad_enabled() or t.is_inference():
        return t.to(torch.bfloat16)
    key = (t._version, t.data_ptr())
    kept = _bf16_copies.get(t)
    if kept is None or kept[0] != key:
        kept = _bf16_copies[t] = (key, t.detach().to(torch.bfloat16))
    return kept[1]


@functools.cache
def bf16_units() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX); without, bf16 is emulated
    and far slower than fp32."""
    try:
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except (AttributeError, RuntimeError):
        return False


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
    members: Tensor | None = None, chunk_rows: int | None = None, bf16_hidden_layers: bool = False,
) -> Tensor:
    """No-grad loop over members and row chunks, in-place activations, output written in place.

    chunk_rows defaults to CHUNK_ELEMS / (widest layer), at least 256 rows. bf16_hidden_layers:
    the hidden layers on bf16 operands, the output layer in x's dtype, chunk by chunk.
    """
    act = _ACT_INPLACE[activation]
    P, B, _ = x.shape
    L = len(weights)
    if chunk_rows is None:
        chunk_rows = max(256, CHUNK_ELEMS // max(w.shape[2] for w in weights))
    if bf16_hidden_layers:  # the hidden layers' parameters, cast once for every member
        weights = [_bf16(w) for w in weights[:-1]] + [weights[-1]]
        biases = [_bf16(b) for b in biases[:-1]] + [biases[-1]]
    hidden_dtype = torch.bfloat16 if bf16_hidden_layers and L > 1 else x.dtype
    out = _common.empty((P, B, weights[-1].shape[2]), x.dtype, x.device)
    with torch.no_grad():
        for p, e in enumerate(_member_ids(P, members)):
            ws = [w[e] for w in weights]
            bs = [b[e] for b in biases]
            for s in range(0, B, chunk_rows):
                h = x[p, s:s + chunk_rows].to(hidden_dtype)
                for i in range(L - 1):
                    h = torch.addmm(bs[i], h, ws[i])
                    act(h)
                torch.addmm(bs[-1], h.to(x.dtype), ws[-1], out=out[p, s:s + chunk_rows])
    return out


def mlp_baddbmm_inference(
    x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], activation: str = "silu",
    members: Tensor | None = None,
) -> Tensor:
    """No-grad stacked baddbmm with in-place activations (small-batch inference)."""
    act = _ACT_INPLACE[activation]
    if members is not None:
        weights, biases = _select(weights, members), _select(biases, members)
    last = len(weights) - 1
    h = x  # only called when nothing requires grad, so in-place activations are safe
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = torch.baddbmm(b.unsqueeze(1), h, w)
        if i < last:
            act(h)
    return h


def choose(batch: int, needs_grad: bool, precision: str = "fp32") -> str:
    """Name of the fastest measured variant for B rows per member ("bf16" inference keeps the
    stacked variant up to INFER_LOOP_MIN_ROWS_BF16 - 1 rows)."""
    if needs_grad:
        return "loop" if batch >= TRAIN_LOOP_MIN_ROWS else "baddbmm"
    threshold = INFER_LOOP_MIN_ROWS_BF16 if precision == "bf16" else INFER_LOOP_MIN_ROWS
    return "loop_inference" if batch >= threshold else "baddbmm_inference"


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
    result is never less accurate than asked); "bf16" runs the hidden layers on bfloat16 operands
    (AVX-512 BF16 / AMX) and the output layer in x's dtype (`kernels.reference.bf16_hidden`; a
    one-layer MLP has no hidden layer and runs in fp32). bf16 is only ever used when asked for.
    """
    global _warned_slow_bf16
    if precision == "bf16" and not _warned_slow_bf16 and not bf16_units():
        _warned_slow_bf16 = True
        warnings.warn("precision='bf16' on a CPU without AVX-512 BF16 or AMX runs bf16 matmuls far slower "
                      "than fp32 (1 GFLOP/s measured on an AVX2 machine): use precision='fp32' here", stacklevel=3)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or any(t.requires_grad for t in weights) or any(t.requires_grad for t in biases))
    return run_variant(choose(x.shape[1], needs_grad, precision), x, weights, biases, activation, members, precision)


def run_variant(
    name: str, x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], activation: str = "silu",
    members: Tensor | None = None, precision: str = "fp32", chunk_rows: int | None = None,
) -> Tensor:
    """VARIANTS[name] at `precision` (bf16: the hidden layers on bf16 operands); chunk_rows for
    loop_inference (`mlp_loop_inference`'s default when None)."""
    if name == "loop_inference":  # (bf16: chunk by chunk, not layer by layer)
        return mlp_loop_inference(x, weights, biases, activation, members, chunk_rows=chunk_rows,
                                  bf16_hidden_layers=precision == "bf16")
    if precision == "bf16":
        return bf16_hidden(VARIANTS[name], x, weights, biases, activation, members, cast=_bf16)
    return VARIANTS[name](x, weights, biases, activation, members)
