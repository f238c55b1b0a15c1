"""Triton ensemble-MLP kernels against a float64 PyTorch reference.

Runs on a CUDA GPU when one is present, else under Triton's CPU interpreter: TRITON_INTERPRET=1
must be set before triton is imported, so tests/test_kernels.py launches this file in a
subprocess with it set; a plain CPU run collects nothing here (see __test__ below).
"""

from __future__ import annotations

import os

import pytest
import torch

import kernels
from kernels import _common, dispatch, reference

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cpu" if INTERPRET else ("cuda" if torch.cuda.is_available() else None)
__test__ = DEVICE is not None  # no GPU and no interpreter: the subprocess launcher covers this file

# fp32 dots are exact in the interpreter and with input_precision="ieee" on GPU.
FP32_TOL = dict(rtol=1e-4, atol=1e-4)
# On a GPU the fused kernel only serves tensor-core precisions; the interpreter runs it in fp32.
FUSED_PREC = "fp32" if INTERPRET else "tf32"
FUSED_TOL = FP32_TOL if INTERPRET else dict(rtol=2e-2, atol=2e-2)
BF16_TOL = dict(rtol=5e-2, atol=5e-2)

# (E, B, widths): B=1, B not a multiple of any block, odd widths, E=1, 1..6 hidden->hidden layers.
FUSED_SHAPES = [
    (1, 1, [23, 200, 200, 36]),
    (3, 37, [23, 40, 40, 40, 10]),
    (2, 70, [23, 200, 200, 200, 200, 36]),
    (2, 5, [7, 17, 3]),
    (1, 17, [5, 16, 16, 16, 16, 16, 16, 16, 4]),  # 6 hidden->hidden layers: the fused maximum
]
# Shapes the fused kernel does not take: a single layer, too deep, too wide, unequal hidden widths.
LAYERED_SHAPES = [
    (2, 9, [23, 36]),
    (1, 3, [5, 8, 8, 8, 8, 8, 8, 8, 8, 6]),
    (2, 33, [23, 300, 300, 36]),
    (3, 20, [23, 48, 24, 10]),
]


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Every kernel output starts as NaN, so an element a kernel never writes fails."""
    monkeypatch.setattr(_common, "POISON", True)


def make_params(E, widths, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(E, a, b, generator=g) / a**0.5 for a, b in zip(widths[:-1], widths[1:])]
    bs = [0.1 * torch.randn(E, b, generator=g) for b in widths[1:]]
    ws = [w.to(DEVICE).requires_grad_(requires_grad) for w in ws]
    bs = [b.to(DEVICE).requires_grad_(requires_grad) for b in bs]
    return ws, bs


def rand_x(P, B, n, seed=1):
    return torch.randn(P, B, n, generator=torch.Generator().manual_seed(seed)).to(DEVICE)


def f64(ts):
    return [t.detach().double().requires_grad_(t.requires_grad) for t in ts]


def reference_out(x, ws, bs, activation="silu", members=None):
    return reference.ensemble_mlp(x.double(), f64(ws), f64(bs), activation, members)


def run_layered(x, ws, bs, activation="silu", members=None, precision="fp32", bounds=None):
    """Force the one-launch-per-layer path, whatever the widths."""
    from kernels import triton_mlp

    out, _ = triton_mlp._layers_forward(x, ws, bs, members, triton_mlp.ACT_CODES[activation],
                                        triton_mlp.PREC_CODES[precision], bounds, save=False)
    return out


def test_interpreter_mode_matches_environment():
    from kernels import triton_mlp

    assert triton_mlp.INTERPRET == INTERPRET
    assert dispatch.backend(torch.zeros(1, 1, 1, device=DEVICE)) == "triton"


@pytest.mark.parametrize("E,B,widths", FUSED_SHAPES)
def test_fused_forward_matches_float64_reference(E, B, widths):
    from kernels import triton_mlp

    ws, bs = make_params(E, widths)
    x = rand_x(E, B, widths[0])
    assert triton_mlp.fusable(x, ws, FUSED_PREC)
    with torch.no_grad():
        out = kernels.ensemble_mlp(x, ws, bs, precision=FUSED_PREC)
    assert out.shape == (E, B, widths[-1])
    torch.testing.assert_close(out.double(), reference_out(x, ws, bs), **FUSED_TOL)


@pytest.mark.parametrize("E,B,widths", FUSED_SHAPES[:3] + LAYERED_SHAPES)
def test_layered_forward_matches_float64_reference(E, B, widths):
    ws, bs = make_params(E, widths, seed=2)
    x = rand_x(E, B, widths[0], seed=3)
    with torch.no_grad():
        via_entry = kernels.ensemble_mlp(x, ws, bs)
        forced = run_layered(x, ws, bs)
    ref = reference_out(x, ws, bs)
    torch.testing.assert_close(via_entry.double(), ref, **FP32_TOL)
    torch.testing.assert_close(forced.double(), ref, **FP32_TOL)


@pytest.mark.parametrize("activation", ["relu", "tanh", "identity"])
def test_other_activations_fused_and_layered(activation):
    ws, bs = make_params(2, [9, 24, 24, 5], seed=4)
    x = rand_x(2, 19, 9)
    ref = reference_out(x, ws, bs, activation)
    with torch.no_grad():
        torch.testing.assert_close(kernels.ensemble_mlp(x, ws, bs, activation).double(), ref, **FP32_TOL)
        torch.testing.assert_close(run_layered(x, ws, bs, activation).double(), ref, **FP32_TOL)


def test_noncontiguous_input():
    ws, bs = make_params(2, [23, 40, 40, 6], seed=5)
    x = rand_x(23, 11, 2).permute(2, 1, 0)  # [2, 11, 23] with odd strides
    assert not x.is_contiguous()
    ref = reference_out(x, ws, bs)
    with torch.no_grad():
        torch.testing.assert_close(kernels.ensemble_mlp(x, ws, bs).double(), ref, **FP32_TOL)
        torch.testing.assert_close(run_layered(x, ws, bs).double(), ref, **FP32_TOL)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("members", [[2, 0], [1, 1, 1], [3]])
def test_elite_subset_reads_member_weights(members, dtype):
    E, widths = 4, [23, 40, 40, 40, 10]
    ws, bs = make_params(E, widths, seed=6)
    m = torch.tensor(members, device=DEVICE, dtype=dtype)
    x = rand_x(len(members), 13, widths[0])
    ref = reference_out(x, ws, bs, members=m)
    with torch.no_grad():
        torch.testing.assert_close(kernels.ensemble_mlp(x, ws, bs, members=m).double(), ref, **FP32_TOL)
        torch.testing.assert_close(run_layered(x, ws, bs, members=m).double(), ref, **FP32_TOL)


def test_strided_member_ids_pick_the_members_they_name():
    """members [0, 3] as a stride-2 view of [0, 1, 3, 2]: the kernels read ids at unit stride, so
    the wrapper makes them contiguous (else members 0 and 1 ran, and trained members 0 and 3)."""
    E, widths = 4, [23, 40, 40, 40, 10]
    ws, bs = make_params(E, widths, seed=6)
    m = torch.tensor([0, 1, 3, 2], device=DEVICE)[::2]
    assert not m.is_contiguous()
    x = rand_x(2, 13, widths[0])
    ref = reference_out(x, ws, bs, members=m.contiguous())
    with torch.no_grad():
        torch.testing.assert_close(kernels.ensemble_mlp(x, ws, bs, members=m).double(), ref, **FP32_TOL)
    ws = [w.clone().requires_grad_(True) for w in ws]  # (the training path)
    torch.testing.assert_close(kernels.ensemble_mlp(x, ws, bs, members=m).detach().double(), ref, **FP32_TOL)


def test_tf32_and_bf16_precision():
    ws, bs = make_params(2, [23, 64, 64, 12], seed=7)
    x = rand_x(2, 21, 23)
    ref = reference_out(x, ws, bs)
    with torch.no_grad():
        tf32 = kernels.ensemble_mlp(x, ws, bs, precision="tf32")
        bf16 = kernels.ensemble_mlp(x, ws, bs, precision="bf16")
        bf16_layered = run_layered(x, ws, bs, precision="bf16")
    tol = FP32_TOL if INTERPRET else dict(rtol=2e-2, atol=2e-2)  # interpreter: tf32 dot is fp32
    torch.testing.assert_close(tf32.double(), ref, **tol)
    torch.testing.assert_close(bf16.double(), ref, **BF16_TOL)
    torch.testing.assert_close(bf16_layered.double(), ref, **BF16_TOL)
    # bf16 really rounds the operands, on both paths: each must differ from the fp32 result
    assert (bf16.double() - ref).abs().max() > 1e-4 and (bf16_layered.double() - ref).abs().max() > 1e-4


def test_bf16_training_gradients_and_gaussian_head():
    """The bf16 path a fit trains through on a GPU: the Gaussian head's outputs and every gradient
    (inputs, weights, biases, bounds) near float64's, and really rounded (not fp32's)."""
    E, widths = 2, [23, 40, 40, 12]
    ws, bs, max_lv, min_lv = gaussian_inputs(E, widths, seed=14, requires_grad=True)
    x = rand_x(E, 15, 23).requires_grad_()
    inputs = [x, *ws, *bs, max_lv, min_lv]
    grad = torch.randn(E, 15, 12, generator=torch.Generator().manual_seed(15)).to(DEVICE)
    results = {}
    for precision in ("fp32", "bf16"):
        mean, logvar = kernels.ensemble_gaussian_mlp(x, ws, bs, max_lv, min_lv, precision=precision)
        out = torch.cat((mean, logvar), -1)
        results[precision] = (out.detach(), torch.autograd.grad(out, inputs, grad))
    xd, wd, bd = x.detach().double().requires_grad_(), f64(ws), f64(bs)
    hid, lod = f64([max_lv, min_lv])
    ref = torch.cat(reference.ensemble_gaussian_mlp(xd, wd, bd, hid, lod), -1)
    want = torch.autograd.grad(ref, [xd, *wd, *bd, hid, lod], grad.double())
    out, grads = results["bf16"]
    torch.testing.assert_close(out.double(), ref.detach(), **BF16_TOL)
    for got, expected, fp32 in zip(grads, want, results["fp32"][1], strict=True):
        scale = expected.abs().max()
        assert (got.double() - expected).abs().max() <= 3e-2 * scale  # near the exact gradient
        torch.testing.assert_close(fp32.double(), expected, rtol=1e-4, atol=2e-4)
    assert max((g - f).abs().max() for g, f in zip(grads, results["fp32"][1])) > 1e-4  # rounded: not fp32's


def gaussian_inputs(E, widths, seed=8, requires_grad=False):
    ws, bs = make_params(E, widths, seed=seed, requires_grad=requires_grad)
    D = widths[-1] // 2
    g = torch.Generator().manual_seed(seed + 1)
    max_lv = (0.5 + 0.1 * torch.randn(E, D, generator=g)).to(DEVICE).requires_grad_(requires_grad)
    min_lv = (-3.0 + 0.1 * torch.randn(E, D, generator=g)).to(DEVICE).requires_grad_(requires_grad)
    return ws, bs, max_lv, min_lv


@pytest.mark.parametrize("widths", [[23, 200, 200, 36], [23, 300, 36], [5, 24, 24, 24, 6]])
def test_gaussian_head_matches_reference(widths):
    E, B = 3, 29
    ws, bs, max_lv, min_lv = gaussian_inputs(E, widths)
    x = rand_x(E, B, widths[0])
    # push some raw log-variances far past both bounds so the soft clamp is exercised
    x[:, :4] *= 20
    ref_m, ref_lv = reference.ensemble_gaussian_mlp(x.double(), f64(ws), f64(bs), max_lv.double(),
                                                    min_lv.double())
    with torch.no_grad():
        mean, logvar = kernels.ensemble_gaussian_mlp(x, ws, bs, max_lv, min_lv)
        lm, llv = run_layered(x, ws, bs, bounds=(max_lv, min_lv))
    for m, lv in ((mean, logvar), (lm, llv)):
        torch.testing.assert_close(m.double(), ref_m, **FP32_TOL)
        torch.testing.assert_close(lv.double(), ref_lv, **FP32_TOL)


def test_gaussian_head_elites():
    E, widths = 5, [23, 40, 40, 8]
    ws, bs, max_lv, min_lv = gaussian_inputs(E, widths, seed=9)
    m = torch.tensor([4, 1], device=DEVICE)
    x = rand_x(2, 7, 23)
    ref_m, ref_lv = reference.ensemble_gaussian_mlp(x.double(), f64(ws), f64(bs), max_lv.double(),
                                                    min_lv.double(), members=m)
    with torch.no_grad():
        mean, logvar = kernels.ensemble_gaussian_mlp(x, ws, bs, max_lv, min_lv, members=m)
        # bounds with different strides (a transposed copy viewed back) on the per-layer path
        min_t = min_lv.t().contiguous().t()
        lm, llv = run_layered(x, ws, bs, members=m, bounds=(max_lv, min_t))
    for out_m, out_lv in ((mean, logvar), (lm, llv)):
        torch.testing.assert_close(out_m.double(), ref_m, **FP32_TOL)
        torch.testing.assert_close(out_lv.double(), ref_lv, **FP32_TOL)


def check_grads(out, ref, inputs, ref_inputs, seed=10):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    got = torch.autograd.grad(out, inputs, g, allow_unused=True)
    want = torch.autograd.grad(ref, ref_inputs, g.double(), allow_unused=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("E,B,widths", [(2, 37, [23, 40, 40, 40, 10]), (1, 1, [5, 17, 3]), (2, 9, [23, 36])])
def test_backward_matches_autograd_on_reference(E, B, widths):
    ws, bs = make_params(E, widths, seed=11, requires_grad=True)
    x = rand_x(E, B, widths[0]).requires_grad_()
    out = kernels.ensemble_mlp(x, ws, bs)
    xd, wd, bd = x.detach().double().requires_grad_(), f64(ws), f64(bs)
    ref = reference.ensemble_mlp(xd, wd, bd)
    torch.testing.assert_close(out.double(), ref, **FP32_TOL)
    check_grads(out, ref, [x, *ws, *bs], [xd, *wd, *bd])


def test_backward_with_elites_leaves_other_members_untouched():
    E, widths = 4, [23, 24, 24, 6]
    ws, bs = make_params(E, widths, seed=12, requires_grad=True)
    m = torch.tensor([3, 1, 3], device=DEVICE)  # repeated member: gradients add up
    x = rand_x(3, 10, 23).requires_grad_()
    out = kernels.ensemble_mlp(x, ws, bs, members=m)
    xd, wd, bd = x.detach().double().requires_grad_(), f64(ws), f64(bs)
    ref = reference.ensemble_mlp(xd, wd, bd, members=m)
    check_grads(out, ref, [x, *ws, *bs], [xd, *wd, *bd])
    grad_w0 = torch.autograd.grad(kernels.ensemble_mlp(x, ws, bs, members=m).sum(), ws[0])[0]
    assert grad_w0[[0, 2]].abs().max() == 0 and grad_w0[[1, 3]].abs().max() > 0


def test_gaussian_backward_including_bounds():
    E, widths = 2, [23, 40, 40, 12]
    ws, bs, max_lv, min_lv = gaussian_inputs(E, widths, seed=13, requires_grad=True)
    x = rand_x(E, 15, 23)
    x[:, :3] *= 20
    x.requires_grad_()
    mean, logvar = kernels.ensemble_gaussian_mlp(x, ws, bs, max_lv, min_lv)
    xd, wd, bd = x.detach().double().requires_grad_(), f64(ws), f64(bs)
    hid, lod = f64([max_lv, min_lv])
    rm, rlv = reference.ensemble_gaussian_mlp(xd, wd, bd, hid, lod)
    out = torch.cat((mean, logvar), -1)
    ref = torch.cat((rm, rlv), -1)
    check_grads(out, ref, [x, *ws, *bs, max_lv, min_lv], [xd, *wd, *bd, hid, lod])


def test_backward_goes_down_only_as_far_as_a_gradient_is_needed(monkeypatch):
    """Only the last layer's bias (then layer 1's weights) needs a gradient: the backward launches no
    dX product below the lowest layer that needs one, and the gradients asked for are right."""
    from kernels import triton_mlp

    E, widths = 2, [23, 24, 24, 24, 6]
    ws, bs = make_params(E, widths, seed=16)
    x = rand_x(E, 9, 23)
    launches = []
    linear = triton_mlp._linear
    monkeypatch.setattr(triton_mlp, "_linear", lambda *a, **k: launches.append(k) or linear(*a, **k))
    for lowest, param in ((3, bs[-1]), (1, ws[1])):
        param.requires_grad_(True)
        out = kernels.ensemble_mlp(x, ws, bs)
        launches.clear()
        (got,) = torch.autograd.grad(out, param, torch.ones_like(out))
        backward_dx = sum(k.get("w_transposed", False) for k in launches)
        assert backward_dx == 3 - lowest  # dX through layers 3 .. lowest + 1 only
        wd, bd = f64(ws), f64(bs)
        ref = reference.ensemble_mlp(x.double(), wd, bd)
        (want,) = torch.autograd.grad(ref, (bd[-1] if lowest == 3 else wd[1]), torch.ones_like(ref))
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=2e-4)
        param.requires_grad_(False)


def test_nan_input_propagates_never_masked():
    ws, bs = make_params(2, [23, 40, 40, 6], seed=14)
    x = rand_x(2, 20, 23)
    x[1, 7, 3] = float("nan")
    with torch.no_grad():
        for out in (kernels.ensemble_mlp(x, ws, bs), run_layered(x, ws, bs)):
            assert torch.isnan(out[1, 7]).all()
            out[1, 7] = 0
            assert torch.isfinite(out).all()
    ws2, bs2, hi, lo = gaussian_inputs(2, [23, 40, 40, 6], seed=15)
    with torch.no_grad():
        mean, logvar = kernels.ensemble_gaussian_mlp(x, ws2, bs2, hi, lo)
    assert torch.isnan(mean[1, 7]).all() and torch.isnan(logvar[1, 7]).all()


def test_float64_inputs_rejected_on_triton_path():
    ws, bs = make_params(1, [3, 16, 2])
    with pytest.raises(ValueError, match="float32"):
        kernels.ensemble_mlp(rand_x(1, 2, 3).double(), [w.double() for w in ws], [b.double() for b in bs])


def test_empty_batch():
    ws, bs = make_params(2, [23, 40, 40, 6])
    with torch.no_grad():
        assert kernels.ensemble_mlp(rand_x(2, 0, 23), ws, bs).shape == (2, 0, 6)
        assert run_layered(rand_x(2, 0, 23), ws, bs).shape == (2, 0, 6)


@pytest.mark.parametrize("widths", [[23, 40, 40, 10], [23, 48, 24, 10]])  # fused, per-layer launchers
def test_launchers_make_no_host_syncs_once_the_member_ids_were_checked(widths, monkeypatch):
    """What a CUDA graph of a planning step needs from the kernels (planners/graph.py)."""
    from planners.graph import host_syncs_allowed, no_host_syncs

    if INTERPRET:  # the interpreter runs each kernel on the host: only the launchers around it are checked
        from triton.runtime.interpreter import InterpretedFunction

        run = InterpretedFunction.run

        def kernel_on_the_host(self, *args, **kwargs):
            with host_syncs_allowed():
                return run(self, *args, **kwargs)

        monkeypatch.setattr(InterpretedFunction, "run", kernel_on_the_host)
    E, B, D = 3, 37, widths[-1] // 2
    ws, bs = make_params(E, widths)
    members = torch.tensor([0, 2], device=DEVICE)
    x = torch.randn(2, B, widths[0], device=DEVICE)
    bounds = (torch.ones(E, D, device=DEVICE), -torch.ones(E, D, device=DEVICE))
    with torch.no_grad():
        kernels.ensemble_gaussian_mlp(x, ws, bs, *bounds, members=members, precision=FUSED_PREC)  # checks the ids
        with no_host_syncs():
            kernels.ensemble_gaussian_mlp(x, ws, bs, *bounds, members=members, precision=FUSED_PREC)
            kernels.ensemble_mlp(x, ws, bs, members=members, precision=FUSED_PREC)


@pytest.mark.skipif(INTERPRET, reason="tiles matter to a GPU build; the interpreter runs its own small blocks")
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("gauss", [False, True])
@pytest.mark.parametrize("B", [103, 4096])
def test_every_fused_tile_the_autotuner_may_pick_matches_the_reference(precision, gauss, B, monkeypatch):
    """Each fused candidate the autotuner keeps for this key, forced, with elites (the heuristic
    tiles alone are what the other tests run). On an H200 the 128-row bf16 Gaussian build was wrong."""
    import triton

    from kernels import triton_mlp

    E, widths = 7, [23, 200, 200, 200, 200, 36]
    ws, bs = make_params(E, widths, seed=21)
    members = torch.tensor([0, 2, 3, 5, 6], device=DEVICE)
    x = rand_x(len(members), B, widths[0])
    bounds = (torch.full((E, 18), 0.5, device=DEVICE), torch.full((E, 18), -10.0, device=DEVICE))
    flags = dict(GAUSS=gauss, PREC=triton_mlp.PREC_CODES[precision])
    configs = [triton.Config(dict(BLOCK_M=bm), num_warps=w) for bm, w in triton_mlp._FUSED_CANDIDATES]
    kept = triton_mlp._fused_candidates(configs, {"B": B}, **flags)
    if gauss:
        ref = reference.ensemble_gaussian_mlp(x.double(), f64(ws), f64(bs), *(b.double() for b in bounds), members=members)
    else:
        ref = (reference_out(x, ws, bs, members=members),)
    monkeypatch.setattr(triton_mlp, "_fused_tuned", None)
    for c in kept:
        monkeypatch.setattr(triton_mlp, "FUSED_TILE", (c.kwargs["BLOCK_M"], c.num_warps))
        with torch.no_grad():
            out = triton_mlp._fused_forward(x, ws, bs, members, triton_mlp.ACT_CODES["silu"], flags["PREC"],
                                            bounds if gauss else None)
        for got, want in zip(out if gauss else (out,), ref):
            torch.testing.assert_close(got.double(), want, **(BF16_TOL if precision == "bf16" else FUSED_TOL),
                                       msg=lambda m: f"tile {c}: {m}")


@pytest.mark.skipif(INTERPRET, reason="tiles matter to a GPU build; the interpreter is too slow for 8 tiles")
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("B", [37, 4096])
def test_every_gemm_tile_the_autotuner_may_pick_matches_the_reference(precision, B, monkeypatch):
    """Training's per-layer kernels (forward, dX, dW) and the Gaussian head under each GEMM
    candidate of the autotuner, forced (one config, so nothing is timed), with elites."""
    import triton

    from kernels import triton_mlp

    E, widths = 7, [23, 200, 200, 200, 200, 36]
    ws, bs, max_lv, min_lv = gaussian_inputs(E, widths, seed=23, requires_grad=True)
    members = torch.tensor([0, 2, 3, 5, 6], device=DEVICE)
    x = rand_x(len(members), B, widths[0]).requires_grad_(True)
    params = [x, *ws, *bs, max_lv, min_lv]
    xd, wd, bd, hid, lod = x.detach().double().requires_grad_(True), f64(ws), f64(bs), \
        max_lv.detach().double().requires_grad_(True), min_lv.detach().double().requires_grad_(True)  # fmt: skip
    ref = reference.ensemble_gaussian_mlp(xd, wd, bd, hid, lod, members=members)
    g = [torch.randn_like(r) for r in ref]
    want = [*ref, *torch.autograd.grad(ref, [xd, *wd, *bd, hid, lod], g)]
    limit = 3e-2 if precision == "bf16" else 1e-2  # largest error over the largest reference value
    for c in triton_mlp._GEMM_CANDIDATES:
        monkeypatch.setattr(triton_mlp, "_linear_tuned", triton.autotune([c], key=[])(triton_mlp._linear_kernel))
        monkeypatch.setattr(triton_mlp, "_gaussian_tuned", triton.autotune([c], key=[])(triton_mlp._gaussian_kernel))
        out = kernels.ensemble_gaussian_mlp(x, ws, bs, max_lv, min_lv, members=members, precision=precision)
        got = [*out, *torch.autograd.grad(out, params, [t.float() for t in g])]
        for name, a, b in zip(["mean", "logvar", "x", *[f"w{i}" for i in range(len(ws))],
                               *[f"b{i}" for i in range(len(bs))], "max_lv", "min_lv"], got, want):
            err = (a.double() - b).abs().max().item() / max(b.abs().max().item(), 1e-6)
            assert err < limit, f"tile {c}: {name} off by {err:.3g} of its largest value"
