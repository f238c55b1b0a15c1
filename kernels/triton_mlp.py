"""Triton kernels for the stacked ensemble MLP, forward and backward, with the Gaussian head.

Three kernels, shapes [P, B, *] where P = run members (E, or len(members)):
  _linear_kernel      C[p] = act(A[p] @ W[e(p)] + b[e(p)]), optional stores of the pre-activation,
                      or C[p] = (A[p] @ W[e(p)]) * act'(Z[p]) for the backward. Any strides, so the
                      same kernel does forward layers, dX = dZ @ W^T and dW = H^T @ dZ.
  _gaussian_kernel    last layer with the Gaussian head: mean and soft-clamped log-variance.
  _fused_mlp_kernel   whole MLP in one persistent launch for hidden widths <= 256: each program
                      keeps a tile's activations in two scratch buffers of its own between layers
                      (written and read back at once, so they stay in L2), never in HBM-sized
                      intermediate tensors; used for inference (no grad).
e(p) = members[p] when a member subset (elites) is given: the weight pointer is offset by member
id, the weights are never copied.

Precision (constexpr PREC): 0 = fp32 (input_precision="ieee", exact), 1 = tf32, 2 = bf16 inputs
with fp32 accumulation. Activations between layers are kept in fp32 in every mode.
Under TRITON_INTERPRET=1 (CPU tests) fp32 and tf32 dots are exact fp32, and bf16 is emulated by
rounding operands to bf16 (round-to-nearest-even) and multiplying in fp32: Triton 3.9's
interpreter computes a bf16 tl.dot on the raw uint16 bit patterns, so its real bf16 path is wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterator, Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import _common

# Triton fixes interpreter mode when it is imported; this module must agree with it.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

ACT_CODES = {"identity": 0, "silu": 1, "relu": 2, "tanh": 3}
PREC_CODES = {"fp32": 0, "tf32": 1, "bf16": 2}

# Fused whole-MLP path limits: padded hidden width (power of two) and number of hidden->hidden
# layers with their own pointer arguments. Wider or deeper nets use one launch per layer.
FUSED_MAX_HIDDEN = 256
FUSED_MAX_MID = 6
# (BLOCK_M, num_warps) of the fused kernel: 64 rows (one wgmma M on sm_90) over 8 warps builds
# without register spills on sm_90 and sm_80 in tf32 and bf16, with and without the Gaussian head
# (`python -m kernels.compile_check`, tests/test_compile_check.py); 64 rows on 4 warps spill. Timed
# on an H200 (kernels/README.md): no faster than eager baddbmm except at B=65536. Exact fp32 (input_precision="ieee": FMA loops, no tensor cores) builds
# without spills on sm_90 but spills ~3.9 KB per thread on sm_80, so on CUDA fp32 takes the
# per-layer kernels.
FUSED_TILE = (64, 8)
FUSED_PROGRAMS_PER_SM = 2  # persistent programs of the fused kernel per SM (not tuned yet)


# ----------------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _act(z, ACT: tl.constexpr):
    if ACT == 1:  # silu
        y = z * tl.sigmoid(z)
    elif ACT == 2:  # relu; written so NaN stays NaN (tl.maximum may drop it)
        y = tl.where(z < 0.0, 0.0, z)
    elif ACT == 3:  # tanh
        y = 2.0 * tl.sigmoid(2.0 * z) - 1.0
    else:
        y = z
    return y


@triton.jit
def _act_grad(z, ACT: tl.constexpr):
    if ACT == 1:
        s = tl.sigmoid(z)
        g = s * (1.0 + z * (1.0 - s))
    elif ACT == 2:
        g = tl.where(z > 0.0, 1.0, 0.0)
    elif ACT == 3:
        t = 2.0 * tl.sigmoid(2.0 * z) - 1.0
        g = 1.0 - t * t
    else:
        g = tl.full(z.shape, 1.0, tl.float32)
    return g


@triton.jit
def _round_bf16(v):
    # fp32 -> nearest bf16 value (ties to even), kept in fp32; NaN passes through.
    bits = v.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return tl.where(v != v, v, bits.to(tl.float32, bitcast=True))


@triton.jit
def _mma(a, w, acc, PREC: tl.constexpr, EMU_BF16: tl.constexpr):
    """acc + a @ w with the precision stated by PREC (see module docstring)."""
    if PREC == 2:
        if EMU_BF16:
            acc = tl.dot(_round_bf16(a), _round_bf16(w), acc, input_precision="ieee")
        else:
            acc = tl.dot(a.to(tl.bfloat16), w.to(tl.bfloat16), acc)
    elif PREC == 1:
        acc = tl.dot(a, w, acc, input_precision="tf32")
    else:
        acc = tl.dot(a, w, acc, input_precision="ieee")
    return acc


@triton.jit
def _softplus(v):
    # max(v, 0) + log(1 + exp(-|v|)): no overflow; NaN propagates (tl.where, not tl.maximum).
    return tl.where(v > 0.0, v, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(v)))


@triton.jit
def _soft_clamp(raw, max_lv, min_lv):
    lv = max_lv - _softplus(max_lv - raw)
    return min_lv + _softplus(lv - min_lv)


@triton.jit
def _member(mem_ptr, p, HAS_MEMBERS: tl.constexpr):
    if HAS_MEMBERS:
        e = tl.load(mem_ptr + p).to(tl.int64)
    else:
        e = p.to(tl.int64)
    return e


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _linear_kernel(
    a_ptr, w_ptr, bias_ptr, c_ptr, z_ptr, mem_ptr,
    R, K, N, R_BUCKET, K_BUCKET,
    s_ap, s_ar, s_ak,
    s_we, s_wk, s_wn,
    s_be, s_bn,
    s_cp, s_cr, s_cn,
    HAS_MEMBERS: tl.constexpr, W_BY_MEMBER: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr, STORE_Z: tl.constexpr, GRAD_Z: tl.constexpr,
    PREC: tl.constexpr, EMU_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_N] tile of C[p] = epilogue(A[p] @ W[.]) for program member p.

    Forward:  epilogue = act(acc + bias[e]); with STORE_Z the pre-activation goes to z_ptr.
    Backward: GRAD_Z, epilogue = acc * act'(Z[p]) (Z read from z_ptr, same strides as C).
    W is indexed by member id e(p) when W_BY_MEMBER, else by p (dW = H^T @ dZ).
    R_BUCKET and K_BUCKET (unused here) are R and K rounded up to powers of two: the autotuner's
    keys (K is the batch in the weight gradient's product, so it varies with a ragged last batch).
    """
    pid_r = tl.program_id(0)
    pid_n = tl.program_id(1)
    p = tl.program_id(2).to(tl.int64)
    e = _member(mem_ptr, p, HAS_MEMBERS)
    we = e if W_BY_MEMBER else p

    rows = pid_r.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows < R
    col_ok = cols < N

    a_base = a_ptr + p * s_ap + rows[:, None] * s_ar
    w_base = w_ptr + we * s_we + cols[None, :] * s_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + ks
        if not W_BY_MEMBER:  # the weight gradient, whose K is the batch: kk * stride passes 2^31 past ~10M rows
            kk = kk.to(tl.int64)
        k_ok = kk < K
        a = tl.load(a_base + kk[None, :] * s_ak, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_base + kk[:, None] * s_wk, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = _mma(a, w, acc, PREC, EMU_BF16)

    c_off = p * s_cp + rows[:, None] * s_cr + cols[None, :] * s_cn
    c_mask = row_ok[:, None] & col_ok[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + e * s_be + cols * s_bn, mask=col_ok, other=0.0)[None, :]
    if GRAD_Z:
        z = tl.load(z_ptr + c_off, mask=c_mask, other=0.0)
        acc = acc * _act_grad(z, ACT)
    else:
        if STORE_Z:
            tl.store(z_ptr + c_off, acc, mask=c_mask)
        acc = _act(acc, ACT)
    tl.store(c_ptr + c_off, acc, mask=c_mask)


@triton.jit
def _gaussian_kernel(
    a_ptr, w_ptr, bias_ptr, maxlv_ptr, minlv_ptr, mean_ptr, lv_ptr, raw_ptr, mem_ptr,
    R, K, D, R_BUCKET,
    s_ap, s_ar, s_ak,
    s_we, s_wk, s_wn,
    s_be, s_bn,
    s_le, s_ld,
    s_cp, s_cr, s_cn,
    HAS_MEMBERS: tl.constexpr, STORE_RAW: tl.constexpr,
    PREC: tl.constexpr, EMU_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Last layer + Gaussian head: columns [0, D) are the mean, [D, 2D) the raw log-variance.

    Each program computes matching mean and log-variance tiles (two accumulators sharing the
    A loads) and writes mean and soft-clamped log-variance; the raw value optionally for backward.
    """
    pid_r = tl.program_id(0)
    pid_n = tl.program_id(1)
    p = tl.program_id(2).to(tl.int64)
    e = _member(mem_ptr, p, HAS_MEMBERS)

    rows = pid_r.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows < R
    col_ok = cols < D

    a_base = a_ptr + p * s_ap + rows[:, None] * s_ar
    w_base = w_ptr + e * s_we + cols[None, :] * s_wn
    acc_m = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_v = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + ks
        k_ok = kk < K
        a = tl.load(a_base + kk[None, :] * s_ak, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & col_ok[None, :]
        w_m = tl.load(w_base + kk[:, None] * s_wk, mask=w_mask, other=0.0)
        w_v = tl.load(w_base + D * s_wn + kk[:, None] * s_wk, mask=w_mask, other=0.0)
        acc_m = _mma(a, w_m, acc_m, PREC, EMU_BF16)
        acc_v = _mma(a, w_v, acc_v, PREC, EMU_BF16)

    acc_m += tl.load(bias_ptr + e * s_be + cols * s_bn, mask=col_ok, other=0.0)[None, :]
    acc_v += tl.load(bias_ptr + e * s_be + (D + cols) * s_bn, mask=col_ok, other=0.0)[None, :]
    hi = tl.load(maxlv_ptr + e * s_le + cols * s_ld, mask=col_ok, other=0.0)[None, :]
    lo = tl.load(minlv_ptr + e * s_le + cols * s_ld, mask=col_ok, other=0.0)[None, :]

    c_off = p * s_cp + rows[:, None] * s_cr + cols[None, :] * s_cn
    c_mask = row_ok[:, None] & col_ok[None, :]
    tl.store(mean_ptr + c_off, acc_m, mask=c_mask)
    if STORE_RAW:
        tl.store(raw_ptr + c_off, acc_v, mask=c_mask)
    tl.store(lv_ptr + c_off, _soft_clamp(acc_v, hi, lo), mask=c_mask)


@triton.jit
def _load_block(base, rk, cn, K, N, ld):
    """W[rk, cn] of a row-major [K, N] matrix with leading dimension ld; zero outside."""
    return tl.load(base + rk[:, None] * ld + cn[None, :], mask=(rk[:, None] < K) & (cn[None, :] < N), other=0.0)


@triton.jit
def _bias_act(acc, b_ptr, cols, N, ACT: tl.constexpr):
    return _act(acc + tl.load(b_ptr + cols, mask=cols < N, other=0.0)[None, :], ACT)


@triton.jit
def _store_chunk(buf, r, cols, v, HP: tl.constexpr):
    tl.store(buf + r[:, None] * HP + cols[None, :], v)


@triton.jit
def _scratch_layer(src, dst, w_ptr, b_ptr, e, H, r, c,
                   ACT: tl.constexpr, PREC: tl.constexpr, EMU_BF16: tl.constexpr,
                   BLOCK_M: tl.constexpr, CH: tl.constexpr):
    """dst = act(src @ W[e] + b[e]) for W [E, H, H], src and dst this program's [BLOCK_M, 4*CH]
    activations in scratch: one [BLOCK_M, CH] output chunk at a time, K in a loop of CH-wide
    chunks, so only one accumulator, one input chunk and one CH x CH weight block are live."""
    base = w_ptr + e * H * H
    for j in range(0, 4):
        cj = j * CH + c
        acc = _scratch_out(src, base, cj, H, H, H, r, c, PREC, EMU_BF16, BLOCK_M, CH, CH)
        _store_chunk(dst, r, cj, _bias_act(acc, b_ptr + e * H, cj, H, ACT), 4 * CH)
    tl.debug_barrier()  # dst complete (and src read by every thread) before the next layer


@triton.jit
def _scratch_out(src, base, cols, K, N, ld, r, c,
                 PREC: tl.constexpr, EMU_BF16: tl.constexpr, BLOCK_M: tl.constexpr, CH: tl.constexpr,
                 NP: tl.constexpr):
    """src [BLOCK_M, 4*CH] (scratch) @ W[:, cols] for a row-major W [K, N] (leading dim ld)."""
    acc = tl.zeros((BLOCK_M, NP), dtype=tl.float32)
    for k in range(0, 4):
        kk = k * CH + c
        a = tl.load(src + r[:, None] * (4 * CH) + kk[None, :])
        acc = _mma(a, _load_block(base, kk, cols, K, N, ld), acc, PREC, EMU_BF16)
    return acc


@triton.jit
def _fused_mlp_kernel(
    x_ptr, out_ptr, lv_ptr, mem_ptr, maxlv_ptr, minlv_ptr, scratch_ptr,
    w_in, b_in, w1, b1, w2, b2, w3, b3, w4, b4, w5, b5, w6, b6, w_out, b_out,
    B, IN, H, D_OUT, P, R_BUCKET,
    s_xp, s_xb, s_xk,
    s_op, s_ob, s_on,
    N_MID: tl.constexpr, ACT: tl.constexpr, GAUSS: tl.constexpr, HAS_MEMBERS: tl.constexpr,
    PREC: tl.constexpr, EMU_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, IN_P: tl.constexpr, CH: tl.constexpr, OUT_P: tl.constexpr,
):
    """Whole MLP in one persistent launch: in -> H (-> H)*N_MID -> D_OUT (or 2*D_OUT, GAUSS).

    Each program loops over (member, BLOCK_M rows) tiles. Between layers a tile's activations
    ([BLOCK_M, 4*CH], H padded to 4*CH) live in the program's own two scratch buffers
    (2 x BLOCK_M x 4*CH fp32, written and read back at once, so they stay in L2), not in
    registers: a layer keeps only its four output accumulators and one input chunk live, which
    is what lets it build without register spills. Weights and biases are contiguous ([E, in,
    out], [E, out]). With GAUSS the last layer writes the mean to out_ptr and the soft-clamped
    log-variance to lv_ptr (bounds [E, D_OUT], contiguous).
    """
    HP: tl.constexpr = 4 * CH
    pid = tl.program_id(0)
    buf0 = scratch_ptr + pid.to(tl.int64) * (2 * BLOCK_M * HP)
    buf1 = buf0 + BLOCK_M * HP
    r = tl.arange(0, BLOCK_M)
    c = tl.arange(0, CH)
    k = tl.arange(0, IN_P)
    o = tl.arange(0, OUT_P)
    o_ok = o < D_OUT
    n_tot = 2 * D_OUT if GAUSS else D_OUT
    tiles_b = tl.cdiv(B, BLOCK_M)
    for tile in range(pid, tiles_b * P, tl.num_programs(0)):
        p = (tile // tiles_b).to(tl.int64)
        e = _member(mem_ptr, p, HAS_MEMBERS)
        rows = (tile % tiles_b).to(tl.int64) * BLOCK_M + r
        row_ok = rows < B

        # input layer: x [BLOCK_M, IN_P] @ W_in[e] [IN, H], one output chunk at a time, into buf0
        x = tl.load(x_ptr + p * s_xp + rows[:, None] * s_xb + k[None, :] * s_xk,
                    mask=row_ok[:, None] & (k[None, :] < IN), other=0.0)
        base = w_in + e * IN * H
        bias = b_in + e * H
        zero = tl.zeros((BLOCK_M, CH), dtype=tl.float32)
        for j in range(0, 4):
            cj = j * CH + c
            _store_chunk(buf0, r, cj, _bias_act(_mma(x, _load_block(base, k, cj, IN, H, H), zero, PREC, EMU_BF16),
                                                bias, cj, H, ACT), HP)  # fmt: skip
        tl.debug_barrier()

        # hidden -> hidden layers, ping-ponging between the two buffers
        if N_MID > 0:
            _scratch_layer(buf0, buf1, w1, b1, e, H, r, c, ACT, PREC, EMU_BF16, BLOCK_M, CH)
        if N_MID > 1:
            _scratch_layer(buf1, buf0, w2, b2, e, H, r, c, ACT, PREC, EMU_BF16, BLOCK_M, CH)
        if N_MID > 2:
            _scratch_layer(buf0, buf1, w3, b3, e, H, r, c, ACT, PREC, EMU_BF16, BLOCK_M, CH)
        if N_MID > 3:
            _scratch_layer(buf1, buf0, w4, b4, e, H, r, c, ACT, PREC, EMU_BF16, BLOCK_M, CH)
        if N_MID > 4:
            _scratch_layer(buf0, buf1, w5, b5, e, H, r, c, ACT, PREC, EMU_BF16, BLOCK_M, CH)
        if N_MID > 5:
            _scratch_layer(buf1, buf0, w6, b6, e, H, r, c, ACT, PREC, EMU_BF16, BLOCK_M, CH)
        last = buf1 if N_MID % 2 == 1 else buf0

        # output layer: W_out[e] [H, N_TOT], N_TOT = D_OUT or 2 * D_OUT (mean | raw log-variance)
        base = w_out + e * H * n_tot
        acc = _scratch_out(last, base, o, H, D_OUT, n_tot, r, c, PREC, EMU_BF16, BLOCK_M, CH, OUT_P)
        acc += tl.load(b_out + e * n_tot + o, mask=o_ok, other=0.0)[None, :]
        c_off = p * s_op + rows[:, None] * s_ob + o[None, :] * s_on
        c_mask = row_ok[:, None] & o_ok[None, :]
        tl.store(out_ptr + c_off, acc, mask=c_mask)
        if GAUSS:
            raw = _scratch_out(last, base + D_OUT, o, H, D_OUT, n_tot, r, c, PREC, EMU_BF16, BLOCK_M, CH, OUT_P)
            raw += tl.load(b_out + e * n_tot + D_OUT + o, mask=o_ok, other=0.0)[None, :]
            hi = tl.load(maxlv_ptr + e * D_OUT + o, mask=o_ok, other=0.0)[None, :]
            lo = tl.load(minlv_ptr + e * D_OUT + o, mask=o_ok, other=0.0)[None, :]
            tl.store(lv_ptr + c_off, _soft_clamp(raw, hi, lo), mask=c_mask)
        tl.debug_barrier()  # the next tile overwrites buf0


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
# Tiles: on a GPU each kernel times its candidate tiles once per (shape bucket, precision,
# flavour) with Triton's autotuner and keeps the fastest; the heuristic tiles below are always a
# candidate, so tuning never picks worse than them. Rows and the inner size are bucketed to powers
# of two (R_BUCKET, K_BUCKET), so a shrinking or ragged batch does not re-tune at every size.
# Without tuning (WORLDMODEL_AUTOTUNE=0, or under the interpreter, which has no timer) the
# heuristic tiles are used as they are.
# All tile dimensions are >= 16 so tl.dot is legal for bf16 on NVIDIA GPUs.
AUTOTUNE = not INTERPRET and os.environ.get("WORLDMODEL_AUTOTUNE", "1") != "0"
_TUNING_MS = dict(warmup=5, rep=20)  # per candidate: short, so a first call pays seconds, not minutes


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(n)))


def _config(block_m: int, block_n: int, block_k: int, warps: int, stages: int = 3) -> triton.Config:
    return triton.Config(dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k), num_warps=warps, num_stages=stages)


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) candidates of the per-layer GEMM kernels
_GEMM_CANDIDATES = [_config(*c) for c in (
    (16, 32, 32, 4), (32, 64, 32, 4), (64, 64, 32, 4), (64, 64, 64, 4, 4), (64, 128, 32, 8),
    (128, 64, 32, 8), (128, 64, 64, 8, 4), (128, 128, 32, 8),
)]  # fmt: skip
# (BLOCK_M, num_warps) candidates of the fused kernel (FUSED_TILE first): 32 rows over 4 warps
# suits small batches; 128 over 8 has the most reuse of each weight chunk
_FUSED_CANDIDATES = [FUSED_TILE, (32, 4), (128, 8)]


def _gemm_candidates(tiles):
    """An early_config_prune for a GEMM kernel whose heuristic is tiles(R, N): that heuristic,
    then the candidates whose blocks do not exceed the problem."""

    def prune(configs, named_args, **kwargs):
        R, N = named_args["R"], named_args["N"] if "N" in named_args else named_args["D"]
        default = _config(*tiles(R, N))
        fits = [c for c in configs if c.kwargs["BLOCK_M"] <= _pow2(R) and c.kwargs["BLOCK_N"] <= _pow2(N)
                and (c.kwargs, c.num_warps, c.num_stages) != (default.kwargs, default.num_warps, default.num_stages)]
        return [default, *fits]

    return prune


def _fused_candidates(configs, named_args, **kwargs):
    """The fused kernel's candidates whose row block does not exceed the batch (FUSED_TILE and 32
    rows always). Not 128 rows for bf16 with the Gaussian head: on an H200 (Triton 3.6) that build
    wrote wrong outputs (errors of 0.6 at 103 rows, NaN at 4096; every other tile and flavour
    matched the reference), and on a planning step it ended in an illegal memory access."""
    bad = 128 if kwargs.get("GAUSS") and kwargs.get("PREC") == 2 else None
    return [c for c in configs if c.kwargs["BLOCK_M"] != bad
            and (c.kwargs["BLOCK_M"] in (FUSED_TILE[0], 32) or c.kwargs["BLOCK_M"] <= _pow2(named_args["B"]))]


def _autotuned(kernel, configs, keys, prune):
    return triton.autotune(configs=configs, key=keys, prune_configs_by={"early_config_prune": prune},
                           **_TUNING_MS)(kernel) if AUTOTUNE else None  # fmt: skip


_recording: list[str] | None = None  # recorded_tiles(): the tiles of each launch, while recording
_capturing_launches = threading.local()  # .launches: captured_launches()'s list in this thread (kept, not run)


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch as a launcher makes it: the kernel, its positional arguments, its
    constexpr flags with the heuristic tiles, num_warps and num_stages."""

    kernel: triton.JITFunction
    args: tuple
    constexprs: dict
    num_warps: int
    num_stages: int


@contextlib.contextmanager
def captured_launches() -> Iterator[list[Launch]]:
    """Inside, every launch is kept as a Launch (with the heuristic tiles) and not run: the
    arguments a call would pass, so `kernels.compile_check` builds each kernel with the
    specialisation a real launch gets (from meta tensors, without a GPU)."""
    kept = getattr(_capturing_launches, "launches", None)
    _capturing_launches.launches = []
    try:
        yield _capturing_launches.launches
    finally:
        _capturing_launches.launches = kept


@contextlib.contextmanager
def recorded_tiles() -> Iterator[list[str]]:
    """The tiles every launch inside uses, as "kernel: BLOCK_M: 64, ..., num_warps: 8, ..." strings
    (the autotuner's choice, or the heuristic tiles without tuning): what a benchmark row ran."""
    global _recording
    kept, _recording = _recording, []
    try:
        yield _recording
    finally:
        _recording = kept


def _tuned_key(tuned, args: tuple, kwargs: dict) -> tuple:
    """The autotuner's cache key for this launch (as triton.runtime.autotuner.Autotuner.run builds it)."""
    given = {k: v for k, v in {**dict(zip(tuned.arg_names, args)), **kwargs}.items() if k in tuned.arg_names}
    return (*[given[k] for k in tuned.keys if k in given], *[str(v.dtype) for v in given.values() if hasattr(v, "dtype")])


def _launch(kernel, tuned, grid, args, kwargs, heuristic: dict, warps: int, stages: int) -> None:
    """Launch `kernel` with the autotuner's tiles (when tuning) or the heuristic ones. While a CUDA
    graph is being captured a key not tuned yet takes the heuristic tiles (timing would sync)."""
    captured = getattr(_capturing_launches, "launches", None)
    if captured is not None:
        captured.append(Launch(kernel, args, {**kwargs, **heuristic}, warps, stages))
        return
    if tuned is not None and _common._capturing(args[0]):
        with _common.TUNING_LOCK:
            if _tuned_key(tuned, args, kwargs) not in tuned.cache:
                tuned = None
    if tuned is not None:
        with _common.TUNING_LOCK:
            tuned[grid](*args, **kwargs)
            tiles = str(tuned.best_config)
    else:
        kernel[grid](*args, **kwargs, **heuristic, num_warps=warps, num_stages=stages)
        tiles = ", ".join(f"{k}: {v}" for k, v in {**heuristic, "num_warps": warps, "num_stages": stages}.items())
    if _recording is not None:
        _recording.append(f"{kernel.__name__.strip('_').removesuffix('_kernel')}: {tiles}")


def _tiles(R: int, N: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps) for a [R, K] @ [K, N] product."""
    block_n = min(64, _pow2(N))
    block_m = 128 if R >= 4096 else (64 if R > 16 else 16)
    # 128 rows over 8 warps: 128 x 32 on 4 warps spilled in fp32 (255 registers, 24-32 bytes on
    # sm_90 and sm_80 for the input gradient of a 23-wide layer; kernels.compile_check)
    return block_m, block_n, 32, 8 if block_m == 128 else 4


def _gaussian_tiles(R: int, D: int) -> tuple[int, int, int, int]:
    """Tiles of the Gaussian-head kernel: as _tiles, with more warps for its two accumulators."""
    bm, bn, bk, warps = _tiles(R, D)
    return bm, bn, bk, 8 if bm * bn >= 64 * 64 // 2 else warps


_GEMM_KEYS = ["R_BUCKET", "K_BUCKET", "N", "HAS_MEMBERS", "W_BY_MEMBER", "HAS_BIAS", "ACT", "STORE_Z", "GRAD_Z", "PREC"]
_linear_tuned = _autotuned(_linear_kernel, _GEMM_CANDIDATES, _GEMM_KEYS, _gemm_candidates(_tiles))
_gaussian_tuned = _autotuned(_gaussian_kernel, _GEMM_CANDIDATES, ["R_BUCKET", "K", "D", "HAS_MEMBERS", "STORE_RAW", "PREC"],
                             _gemm_candidates(_gaussian_tiles))
_fused_tuned = _autotuned(
    _fused_mlp_kernel,
    [triton.Config(dict(BLOCK_M=bm), num_warps=w, num_stages=1) for bm, w in _FUSED_CANDIDATES],
    ["R_BUCKET", "P", "IN", "H", "D_OUT", "N_MID", "ACT", "GAUSS", "HAS_MEMBERS", "PREC"], _fused_candidates,
)


def _linear(
    a: Tensor, w: Tensor, bias: Tensor | None, members: Tensor | None, act: int, prec: int,
    *, w_by_member: bool = True, w_transposed: bool = False, store_z: bool = False,
    grad_z: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """C[p] = epilogue(A[p] @ W), see _linear_kernel. A [P, R, K]; W [E or P, K, N] (or [*, N, K]
    used transposed). Returns (C [P, R, N] fp32, Z or None)."""
    P, R, K = a.shape
    s_we, s_wk, s_wn = w.stride()
    N = w.shape[2]
    if w_transposed:
        s_wk, s_wn = s_wn, s_wk
        N = w.shape[1]
    c = _common.empty((P, R, N), torch.float32, a.device)
    z = _common.empty((P, R, N), torch.float32, a.device) if store_z else None
    if P == 0 or R == 0 or N == 0:
        return c, z
    bm, bn, bk, warps = _tiles(R, N)
    args = (
        a, w, bias if bias is not None else w, c,
        grad_z if grad_z is not None else (z if z is not None else c),
        members if members is not None else a,
        R, K, N, _pow2(R), _pow2(K),
        *a.stride(),
        s_we, s_wk, s_wn,
        *(bias.stride() if bias is not None else (0, 0)),
        *c.stride(),
    )
    flags = dict(HAS_MEMBERS=members is not None, W_BY_MEMBER=w_by_member, HAS_BIAS=bias is not None,
                 ACT=act, STORE_Z=store_z, GRAD_Z=grad_z is not None, PREC=prec, EMU_BF16=INTERPRET)
    grid = lambda meta: (triton.cdiv(R, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]), P)  # noqa: E731
    _launch(_linear_kernel, _linear_tuned, grid, args, flags, dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk), warps, 3)
    return c, z


def _gaussian(
    a: Tensor, w: Tensor, bias: Tensor, max_lv: Tensor, min_lv: Tensor, members: Tensor | None,
    prec: int, store_raw: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Last layer with the Gaussian head. a [P, R, K], w [E, K, 2D] -> mean, logvar (, raw) [P, R, D]."""
    P, R, K = a.shape
    D = w.shape[2] // 2
    mean = _common.empty((P, R, D), torch.float32, a.device)
    lv = _common.empty((P, R, D), torch.float32, a.device)
    raw = _common.empty((P, R, D), torch.float32, a.device) if store_raw else None
    if P == 0 or R == 0 or D == 0:
        return mean, lv, raw
    max_lv, min_lv = max_lv.contiguous(), min_lv.contiguous()  # the kernel takes one stride pair
    bm, bn, bk, warps = _gaussian_tiles(R, D)
    args = (
        a, w, bias, max_lv, min_lv, mean, lv, raw if raw is not None else mean,
        members if members is not None else a,
        R, K, D, _pow2(R),
        *a.stride(), *w.stride(), *bias.stride(), *max_lv.stride(), *mean.stride(),
    )
    flags = dict(HAS_MEMBERS=members is not None, STORE_RAW=store_raw, PREC=prec, EMU_BF16=INTERPRET)
    grid = lambda meta: (triton.cdiv(R, meta["BLOCK_M"]), triton.cdiv(D, meta["BLOCK_N"]), P)  # noqa: E731
    _launch(_gaussian_kernel, _gaussian_tuned, grid, args, flags, dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk), warps, 3)
    return mean, lv, raw


def fusable(x: Tensor, weights: Sequence[Tensor], precision: str) -> bool:
    """Whether the one-launch whole-MLP kernel takes this call: equal hidden widths <= 256, at most
    FUSED_MAX_MID hidden->hidden layers, and on a GPU a tensor-core precision (tf32 or bf16)."""
    if precision == "fp32" and not INTERPRET:
        return False
    if len(weights) < 2 or len(weights) - 2 > FUSED_MAX_MID:
        return False
    H = weights[0].shape[2]
    if any(w.shape[1] != H or w.shape[2] != H for w in weights[1:-1]) or weights[-1].shape[1] != H:
        return False
    return _pow2(H, 64) <= FUSED_MAX_HIDDEN and x.shape[2] <= 128 and weights[-1].shape[2] <= 256


def _fused_forward(
    x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], members: Tensor | None,
    act: int, prec: int, bounds: tuple[Tensor, Tensor] | None,
) -> Tensor | tuple[Tensor, Tensor]:
    P, B, IN = x.shape
    weights = [w.contiguous() for w in weights]
    biases = [b.contiguous() for b in biases]
    H = weights[0].shape[2]
    n_out = weights[-1].shape[2]
    d_out = n_out // 2 if bounds is not None else n_out
    out = _common.empty((P, B, d_out), torch.float32, x.device)
    lv = _common.empty((P, B, d_out), torch.float32, x.device) if bounds is not None else out
    if P and B and d_out:
        mids = [t for wb in zip(weights[1:-1], biases[1:-1]) for t in wb]
        mids += [weights[0], biases[0]] * (FUSED_MAX_MID - len(weights) + 2)  # unused slots
        ch = _pow2(H, 64) // 4
        block_m, warps = FUSED_TILE
        if INTERPRET:  # small blocks: the interpreter's cost is per element, and tests use small B
            block_m = 16 if B <= 16 else 32
        maxlv, minlv = (b.contiguous() for b in bounds) if bounds is not None else (x, x)
        resident = _resident_programs(x.device)

        def programs(bm: int) -> int:  # the launch's programs for a row block of bm
            return min(triton.cdiv(B, bm) * P, fused_programs(resident, bm))

        # scratch for the largest launch (programs x rows) of any tile the autotuner may pick
        blocks = [bm for bm, _ in _FUSED_CANDIDATES] if _fused_tuned is not None else [block_m]
        rows = max(programs(bm) * bm for bm in blocks)
        scratch = torch.empty(rows * 2 * 4 * ch, dtype=torch.float32, device=x.device)
        args = (
            x, out, lv, members if members is not None else x, maxlv, minlv, scratch,
            weights[0], biases[0], *mids, weights[-1], biases[-1],
            B, IN, H, d_out, P, _pow2(B),
            *x.stride(), *out.stride(),
        )
        flags = dict(N_MID=len(weights) - 2, ACT=act, GAUSS=bounds is not None, HAS_MEMBERS=members is not None,
                     PREC=prec, EMU_BF16=INTERPRET, IN_P=_pow2(IN), CH=ch, OUT_P=_pow2(d_out))
        grid = lambda meta: (programs(meta["BLOCK_M"]),)  # noqa: E731
        _launch(_fused_mlp_kernel, _fused_tuned, grid, args, flags, dict(BLOCK_M=block_m), warps, 1)
    return (out, lv) if bounds is not None else out


def fused_programs(resident: int, block_m: int) -> int:
    """Programs of a fused launch with row block block_m: `resident` for FUSED_TILE's rows or fewer,
    proportionally fewer for larger blocks, so the scratch (2 x block_m x 4*CH fp32 a program)
    stays within what FUSED_TILE's programs hold and in L2 (128 rows at 2 programs per SM
    would need 69 MB on an H100's 132 SMs against its 50 MB of L2)."""
    return max(1, resident * FUSED_TILE[0] // max(block_m, FUSED_TILE[0]))


def _resident_programs(device: torch.device) -> int:
    """Programs of the persistent fused kernel with FUSED_TILE's rows: a few per SM on a GPU (each
    holds 2 x 64 rows x 256 fp32 of scratch at most, and one tile's accumulators), so its scratch
    stays in L2 (larger tiles launch fewer: fused_programs); under the interpreter, one per tile."""
    if device.type != "cuda":
        return 1 << 30
    return FUSED_PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count


def _layers_forward(x, weights, biases, members, act, prec, bounds, save):
    """One launch per layer. Returns (outputs, saved) with saved = (inputs of each layer,
    pre-activations of each hidden layer, raw log-variance or None) when save."""
    h, hs, zs = x, [], []
    L = len(weights)
    for i in range(L - 1):
        hs.append(h)
        h, z = _linear(h, weights[i], biases[i], members, act, prec, store_z=save)
        zs.append(z)
    hs.append(h)
    if bounds is not None:
        mean, lv, raw = _gaussian(h, weights[-1], biases[-1], bounds[0], bounds[1], members, prec, save)
        return (mean, lv), (hs, zs, raw)
    out, _ = _linear(h, weights[-1], biases[-1], members, ACT_CODES["identity"], prec)
    return out, (hs, zs, None)


def _scatter(grad: Tensor, members: Tensor | None, E: int) -> Tensor:
    """Per-run-member gradients [P, ...] -> per-member [E, ...] (summed over repeated ids)."""
    if members is None:
        return grad
    return grad.new_zeros((E, *grad.shape[1:])).index_add_(0, members, grad)


class _EnsembleMLPFunction(torch.autograd.Function):
    """Training path: forward with one kernel per layer storing pre-activations; backward with
    the same GEMM kernel (dX = dZ @ W^T with act' fused in its epilogue, dW = H^T @ dZ), the
    bias sums and the soft-clamp derivative in PyTorch."""

    @staticmethod
    def forward(ctx, x, members, act, prec, gauss, n_layers, *params):
        weights, biases = params[:n_layers], params[n_layers:2 * n_layers]
        bounds = params[2 * n_layers:] if gauss else None
        out, (hs, zs, raw) = _layers_forward(x, weights, biases, members, act, prec, bounds, save=True)
        ctx.act, ctx.prec, ctx.gauss, ctx.n_layers = act, prec, gauss, n_layers
        ctx.x_dtype = x.dtype
        ctx.save_for_backward(members, *hs, *zs, *(raw,) if gauss else (), *params)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        L, act, prec = ctx.n_layers, ctx.act, ctx.prec
        saved = ctx.saved_tensors
        members = saved[0]
        hs = saved[1:L + 1]
        zs = saved[L + 1:2 * L]
        rest = saved[2 * L:]
        if ctx.gauss:
            raw, rest = rest[0], rest[1:]
        weights, biases = rest[:L], rest[L:2 * L]
        E = weights[0].shape[0]
        need = ctx.needs_input_grad  # (x, members, act, prec, gauss, n_layers, *params)
        need_w = need[6:6 + L]
        need_b = need[6 + L:6 + 2 * L]
        grad_bounds: list[Tensor | None] = [None, None]

        if ctx.gauss:
            g_mean, g_lv = grads
            max_lv, min_lv = rest[2 * L], rest[2 * L + 1]
            if members is not None:
                max_lv, min_lv = max_lv.index_select(0, members), min_lv.index_select(0, members)
            hi, lo = max_lv.unsqueeze(1), min_lv.unsqueeze(1)
            s1 = torch.sigmoid(hi - raw)
            lv1 = hi - torch.nn.functional.softplus(hi - raw)
            s2 = torch.sigmoid(lv1 - lo)
            g_raw = g_lv * s2 * s1
            if need[6 + 2 * L]:
                grad_bounds[0] = _scatter((g_lv * s2 * (1 - s1)).sum(1), members, E)
            if need[7 + 2 * L]:
                grad_bounds[1] = _scatter((g_lv * (1 - s2)).sum(1), members, E)
            g = torch.cat((g_mean, g_raw), dim=-1).float()
        else:
            g = grads[0].float()

        grad_w: list[Tensor | None] = [None] * L
        grad_b: list[Tensor | None] = [None] * L
        grad_x = None
        # the dX pass goes down only as far as the lowest layer whose parameters (or x) need a gradient
        lowest = 0 if need[0] else min((i for i in range(L) if need_w[i] or need_b[i]), default=L)
        for i in range(L - 1, lowest - 1, -1):
            h = hs[i]
            if need_w[i]:
                # dW[p] = h[p]^T @ g[p]: A = h viewed [P, K, B] by strides, "W" = g indexed by p
                dw, _ = _linear(h.transpose(1, 2), g, None, None, 0, prec, w_by_member=False)
                grad_w[i] = _scatter(dw, members, E).to(weights[i].dtype)
            if need_b[i]:
                grad_b[i] = _scatter(g.sum(1), members, E).to(biases[i].dtype)
            if i > lowest:
                g, _ = _linear(g, weights[i], None, members, act, prec, w_transposed=True, grad_z=zs[i - 1])
            elif i == 0 and need[0]:
                grad_x, _ = _linear(g, weights[0], None, members, 0, prec, w_transposed=True)
                grad_x = grad_x.to(ctx.x_dtype)
        return (grad_x, None, None, None, None, None, *grad_w, *grad_b, *grad_bounds[: 2 if ctx.gauss else 0])


def ensemble_mlp(
    x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], activation: str = "silu",
    members: Tensor | None = None, *, precision: str = "fp32",
    logvar_bounds: tuple[Tensor, Tensor] | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Triton ensemble MLP (arguments already validated by kernels.dispatch).

    x [P, B, in] fp32 -> [P, B, out]; with logvar_bounds (max, min) [E, D] -> (mean, logvar) [P, B, D].
    Inference (no grad needed) takes the fused one-launch kernel when the widths allow;
    training goes through _EnsembleMLPFunction, differentiable once (its backward is kernels of
    its own: a double backward, create_graph=True, needs kernels.reference).
    """
    if x.dtype != torch.float32:
        raise ValueError(f"the Triton path takes float32 tensors (precision= picks tf32/bf16 math), got {x.dtype}")
    act, prec = ACT_CODES[activation], PREC_CODES[precision]
    params = [*weights, *biases, *(logvar_bounds or ())]
    members = members.contiguous() if members is not None else None  # (the kernels read ids at unit stride)
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return _EnsembleMLPFunction.apply(x, members, act, prec, logvar_bounds is not None, len(weights), *params)
    if fusable(x, weights, precision):
        return _fused_forward(x, weights, biases, members, act, prec, logvar_bounds)
    out, _ = _layers_forward(x, weights, biases, members, act, prec, logvar_bounds, save=False)
    return out
