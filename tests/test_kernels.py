"""kernels.ensemble_mlp / ensemble_gaussian_mlp on CPU against a float64 reference, argument
checks, and (in a subprocess under TRITON_INTERPRET=1) the Triton kernels' own test file."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import kernels
from kernels import _common, cpu, dispatch, reference

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is installed on Linux only")

ROOT = Path(__file__).resolve().parents[1]
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(autouse=True)
def cpu_backend_and_poisoned_outputs(monkeypatch):
    """CPU path (even if the caller exported TRITON_INTERPRET) and NaN-filled output buffers."""
    monkeypatch.setattr(dispatch, "_INTERPRET", False)
    monkeypatch.setattr(_common, "POISON", True)


def make_params(E, widths, seed=0, dtype=torch.float32, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    ws = [(torch.randn(E, a, b, generator=g, dtype=torch.float64) / a**0.5).to(dtype)
          for a, b in zip(widths[:-1], widths[1:])]
    bs = [(0.1 * torch.randn(E, b, generator=g, dtype=torch.float64)).to(dtype) for b in widths[1:]]
    return [w.requires_grad_(requires_grad) for w in ws], [b.requires_grad_(requires_grad) for b in bs]


def rand_x(P, B, n, seed=1, dtype=torch.float32):
    return torch.randn(P, B, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def f64(ts):
    return [t.detach().double().requires_grad_(t.requires_grad) for t in ts]


# B=1, B around the variant crossover, B past one row chunk with a ragged tail, odd widths, E=1.
SHAPES = [
    (1, 1, [23, 200, 200, 36]),
    (5, 1, [23, 64, 64, 64, 36]),
    (7, 37, [23, 40, 40, 40, 10]),
    (3, cpu.INFER_LOOP_MIN_ROWS, [5, 17, 17, 3]),
    (2, cpu.TRAIN_LOOP_MIN_ROWS + 3, [23, 24, 24, 6]),
    (2, 9, [23, 36]),
]


def test_variant_choice_switches_at_the_measured_thresholds():
    assert cpu.choose(1, needs_grad=False) == "baddbmm_inference"
    assert cpu.choose(cpu.INFER_LOOP_MIN_ROWS, needs_grad=False) == "loop_inference"
    assert cpu.choose(1, needs_grad=True) == "baddbmm"
    assert cpu.choose(cpu.TRAIN_LOOP_MIN_ROWS, needs_grad=True) == "loop"
    assert cpu.choose(cpu.INFER_LOOP_MIN_ROWS, needs_grad=False, precision="bf16") == "baddbmm_inference"
    assert cpu.choose(cpu.INFER_LOOP_MIN_ROWS_BF16 - 1, needs_grad=False, precision="bf16") == "baddbmm_inference"
    assert cpu.choose(cpu.INFER_LOOP_MIN_ROWS_BF16, needs_grad=False, precision="bf16") == "loop_inference"


def test_the_reference_is_each_member_an_ordinary_mlp():
    """kernels.reference (what every kernel is checked against; cpu's baddbmm variant is it) against
    a member-by-member, row-by-row MLP written out with no batching."""
    E, B, widths = 3, 4, [5, 7, 7, 3]
    ws, bs = make_params(E, widths, seed=3, dtype=torch.float64)
    x = rand_x(E, B, 5, dtype=torch.float64)
    members = torch.tensor([2, 0])
    for chosen in (None, members):
        ids = range(E) if chosen is None else chosen.tolist()
        xs = x if chosen is None else x[:2]
        out = reference.ensemble_mlp(xs, ws, bs, "silu", chosen)
        for row, e in enumerate(ids):
            for r in range(B):
                h = xs[row, r]
                for i, (w, b) in enumerate(zip(ws, bs)):
                    h = sum(h[k] * w[e, k] for k in range(w.shape[1])) + b[e]
                    h = h * torch.sigmoid(h) if i < len(ws) - 1 else h
                torch.testing.assert_close(out[row, r], h)


def test_the_soft_clamp_keeps_log_variances_within_their_bounds():
    """PETS's soft clamp (max - softplus(max - raw), then min + softplus(that - min)): from min far
    below to min + softplus(max - min) far above (0.03 past max here: the outer softplus's own
    overshoot, as PETS has it), increasing, about the raw value well inside."""
    hi, lo = torch.tensor([[0.5]], dtype=torch.float64), torch.tensor([[-3.0]], dtype=torch.float64)
    raw = torch.tensor([[[-1e4], [-30.0], [-1.25], [40.0], [1e4]]], dtype=torch.float64)
    out = reference.soft_clamp_logvar(raw, hi, lo).flatten()
    top = -3.0 + math.log1p(math.exp(3.5))
    assert ((out >= -3.0) & (out <= top)).all() and (out.diff() >= 0).all()
    assert out[0] == pytest.approx(-3.0) and out[1] == pytest.approx(-3.0, abs=1e-9)
    assert out[3] == pytest.approx(top, abs=1e-9) and out[4] == pytest.approx(top)
    assert out[2] == pytest.approx(-1.25, abs=0.1)


@pytest.mark.parametrize("variant", sorted(cpu.VARIANTS))
@pytest.mark.parametrize("E,B,widths", SHAPES)
def test_every_cpu_variant_matches_float64_reference(variant, E, B, widths):
    ws, bs = make_params(E, widths)
    x = rand_x(E, B, widths[0])
    with torch.no_grad():
        out = cpu.VARIANTS[variant](x, ws, bs, "silu", None)
    assert out.shape == (E, B, widths[-1]) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference.ensemble_mlp(x.double(), f64(ws), f64(bs)), **TOL)


@pytest.mark.parametrize("chunk_rows", [256, 699, 700, None])
def test_row_chunks_cover_every_row(chunk_rows):
    ws, bs = make_params(2, [23, 24, 24, 6], seed=14)
    x = rand_x(2, 700, 23)  # 700 = 2 x 256 + a ragged 188-row chunk
    out = cpu.mlp_loop_inference(x, ws, bs, chunk_rows=chunk_rows)
    torch.testing.assert_close(out.double(), reference.ensemble_mlp(x.double(), f64(ws), f64(bs)), **TOL)


@pytest.mark.parametrize("E,B,widths", SHAPES)
def test_entry_point_forward_and_gradients_match_float64_autograd(E, B, widths):
    ws, bs = make_params(E, widths, seed=2, requires_grad=True)
    x = rand_x(E, B, widths[0], seed=3).requires_grad_()
    out = kernels.ensemble_mlp(x, ws, bs)
    xd, wd, bd = x.detach().double().requires_grad_(), f64(ws), f64(bs)
    ref = reference.ensemble_mlp(xd, wd, bd)
    torch.testing.assert_close(out.double(), ref, **TOL)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    got = torch.autograd.grad(out, [x, *ws, *bs], g)
    want = torch.autograd.grad(ref, [xd, *wd, *bd], g.double())
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("activation", ["relu", "tanh", "identity"])
@pytest.mark.parametrize("B", [3, cpu.INFER_LOOP_MIN_ROWS + 1])
def test_other_activations(activation, B):
    ws, bs = make_params(2, [9, 24, 24, 5], seed=5)
    x = rand_x(2, B, 9)
    with torch.no_grad():
        out = kernels.ensemble_mlp(x, ws, bs, activation)
    torch.testing.assert_close(out.double(), reference.ensemble_mlp(x.double(), f64(ws), f64(bs), activation),
                               **TOL)


@pytest.mark.parametrize("B", [2, cpu.INFER_LOOP_MIN_ROWS, cpu.TRAIN_LOOP_MIN_ROWS])
@pytest.mark.parametrize("members", [[3, 0], [1, 1, 1], [2]])
def test_elite_subset_and_its_gradients(members, B):
    E, widths = 4, [23, 24, 24, 6]
    ws, bs = make_params(E, widths, seed=6, requires_grad=True)
    m = torch.tensor(members)
    x = rand_x(len(members), B, widths[0])
    with torch.no_grad():
        fwd = kernels.ensemble_mlp(x, ws, bs, members=m)
    out = kernels.ensemble_mlp(x, ws, bs, members=m)
    wd, bd = f64(ws), f64(bs)
    ref = reference.ensemble_mlp(x.double(), wd, bd, members=m)
    torch.testing.assert_close(fwd.double(), ref, **TOL)
    torch.testing.assert_close(out.double(), ref, **TOL)
    got = torch.autograd.grad(out.sum(), [*ws, *bs])
    want = torch.autograd.grad(ref.sum(), [*wd, *bd])
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=2e-4)
    unused = sorted(set(range(E)) - set(members))
    assert got[0][unused].abs().max() == 0


@pytest.mark.parametrize("B", [cpu.INFER_LOOP_MIN_ROWS + 1, cpu.INFER_LOOP_MIN_ROWS_BF16 + 1])
def test_bf16_elite_subset_matches_the_reference(B):
    # an elite subset in bf16 on both sides of bf16's own stacked/loop threshold, against the
    # reference's bf16 (the same products), and with its gradients
    ws, bs = make_params(4, [23, 24, 24, 6], seed=16, requires_grad=True)
    m = torch.tensor([3, 0])
    x = rand_x(2, B, 23)
    with torch.no_grad():
        fwd = kernels.ensemble_mlp(x, ws, bs, members=m, precision="bf16")
    want = reference.ensemble_mlp(x, ws, bs, members=m, precision="bf16")
    torch.testing.assert_close(fwd, want.detach(), rtol=1e-2, atol=1e-2)
    out = kernels.ensemble_mlp(x, ws, bs, members=m, precision="bf16")
    got, expected = torch.autograd.grad(out.sum(), ws), torch.autograd.grad(want.sum(), ws)
    assert all((a - b).norm() <= 1e-2 * b.norm() for a, b in zip(got, expected))


def test_int32_member_ids_are_accepted():
    ws, bs = make_params(3, [6, 8, 4], seed=15, requires_grad=True)
    x = rand_x(2, 300, 6)
    m32, m64 = torch.tensor([2, 0], dtype=torch.int32), torch.tensor([2, 0])
    out32, out64 = kernels.ensemble_mlp(x, ws, bs, members=m32), kernels.ensemble_mlp(x, ws, bs, members=m64)
    torch.testing.assert_close(out32, out64)
    g32 = torch.autograd.grad(out32.sum(), ws)
    g64 = torch.autograd.grad(out64.sum(), ws)
    for a, b in zip(g32, g64):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("variant", ["entry point", "loop", "baddbmm"])
def test_gradcheck_float64(variant):
    fn = kernels.ensemble_mlp if variant == "entry point" else cpu.VARIANTS[variant]
    ws, bs = make_params(2, [3, 4, 4, 2], seed=7, dtype=torch.float64, requires_grad=True)
    x = rand_x(2, 3, 3, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, *p: fn(x, p[:3], p[3:]), (x, *ws, *bs))


def gaussian_inputs(E, widths, seed=8, dtype=torch.float32, requires_grad=False):
    ws, bs = make_params(E, widths, seed=seed, dtype=dtype, requires_grad=requires_grad)
    D = widths[-1] // 2
    g = torch.Generator().manual_seed(seed + 1)
    hi = (0.5 + 0.1 * torch.randn(E, D, generator=g, dtype=torch.float64)).to(dtype).requires_grad_(requires_grad)
    lo = (-3.0 + 0.1 * torch.randn(E, D, generator=g, dtype=torch.float64)).to(dtype).requires_grad_(requires_grad)
    return ws, bs, hi, lo


@pytest.mark.parametrize("B", [5, cpu.INFER_LOOP_MIN_ROWS + 3])
def test_gaussian_head_matches_reference_and_elites(B):
    E, widths = 4, [23, 40, 40, 36]
    ws, bs, hi, lo = gaussian_inputs(E, widths)
    x = rand_x(E, B, 23)
    x[:, :2] *= 20  # raw log-variances far outside the bounds
    for members in (None, torch.tensor([3, 1])):
        xm = x if members is None else x[:2]
        with torch.no_grad():
            mean, logvar = kernels.ensemble_gaussian_mlp(xm, ws, bs, hi, lo, members=members)
        rm, rlv = reference.ensemble_gaussian_mlp(xm.double(), f64(ws), f64(bs), hi.double(), lo.double(),
                                                  members=members)
        torch.testing.assert_close(mean.double(), rm, **TOL)
        torch.testing.assert_close(logvar.double(), rlv, **TOL)


def test_gaussian_gradcheck_including_bounds():
    ws, bs, hi, lo = gaussian_inputs(2, [3, 4, 4], seed=9, dtype=torch.float64, requires_grad=True)
    x = (3 * rand_x(2, 5, 3, dtype=torch.float64)).requires_grad_()

    def f(x, *p):
        mean, logvar = kernels.ensemble_gaussian_mlp(x, p[:2], p[2:4], p[4], p[5])
        return torch.cat((mean, logvar), -1)

    assert torch.autograd.gradcheck(f, (x, *ws, *bs, hi, lo))


@pytest.mark.parametrize("B", [4, cpu.INFER_LOOP_MIN_ROWS + 5])
@pytest.mark.parametrize("grad", [False, True])
def test_nan_input_propagates_to_its_row_only(B, grad):
    ws, bs = make_params(3, [23, 24, 24, 6], seed=10, requires_grad=grad)
    x = rand_x(3, B, 23)
    x[1, 2, 5] = float("nan")
    with torch.set_grad_enabled(grad):
        out = kernels.ensemble_mlp(x, ws, bs).detach().clone()
    assert torch.isnan(out[1, 2]).all()
    out[1, 2] = 0
    assert torch.isfinite(out).all()


def test_nan_weight_poisons_only_its_member():
    ws, bs = make_params(3, [23, 24, 24, 6], seed=11)
    ws[1][2, 4, 7] = float("nan")
    with torch.no_grad():
        out = kernels.ensemble_mlp(rand_x(3, 300, 23), ws, bs)
    assert torch.isnan(out[2]).all() and torch.isfinite(out[[0, 1]]).all()


def test_precision_modes_on_cpu():
    ws, bs = make_params(2, [23, 64, 64, 12], seed=12)
    x = rand_x(2, 300, 23)
    ref = reference.ensemble_mlp(x.double(), f64(ws), f64(bs))
    with torch.no_grad():
        fp32 = kernels.ensemble_mlp(x, ws, bs)
        tf32 = kernels.ensemble_mlp(x, ws, bs, precision="tf32")
        bf16 = kernels.ensemble_mlp(x, ws, bs, precision="bf16")
    assert (fp32.double() - ref).abs().max() < 1e-4  # default is exact fp32: bf16 never silently
    torch.testing.assert_close(tf32, fp32)  # CPU has no TF32 units
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16.double(), ref, rtol=5e-2, atol=5e-2)
    assert (bf16.double() - ref).abs().max() > 1e-3  # it really ran in bf16


def test_bf16_precision_is_differentiable():
    ws, bs = make_params(2, [5, 16, 3], seed=13, requires_grad=True)
    out = kernels.ensemble_mlp(rand_x(2, 4, 5), ws, bs, precision="bf16")
    grads = torch.autograd.grad(out.sum(), ws)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("rows", [100, cpu.INFER_LOOP_MIN_ROWS_BF16 + 7], ids=["stacked", "chunked-loop"])
def test_bf16_keeps_the_output_layer_in_fp32(rows):
    # Q-values near 300: bf16 spaces its values 2 apart there, so a bf16 output layer would
    # round every output onto that grid; the hidden layers alone run on bf16 operands
    ws, bs = make_params(2, [23, 64, 64, 1], seed=14)
    with torch.no_grad():
        bs[-1].fill_(300.0)
    x = rand_x(2, rows, 23)
    ref = reference.ensemble_mlp(x.double(), f64(ws), f64(bs))
    for mlp in (kernels.ensemble_mlp, reference.ensemble_mlp):
        with torch.no_grad():
            out = mlp(x, ws, bs, precision="bf16")
        assert out.dtype == torch.float32 and (out != out.bfloat16().float()).float().mean() > 0.9
        assert (out.double() - ref).abs().max() < 0.5


def test_reference_bf16_is_twice_differentiable():
    # EDAC's diversity term differentiates the critics' action-gradient
    ws, bs = make_params(3, [5, 16, 16, 1], seed=15, requires_grad=True)
    x = rand_x(3, 4, 5).requires_grad_(True)
    out = reference.ensemble_mlp(x, ws, bs, activation="relu", precision="bf16")
    (grad_x,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    second = torch.autograd.grad(grad_x.square().sum(), ws[0])[0]
    assert grad_x.dtype == second.dtype == torch.float32 and second.abs().sum() > 0


def test_cpu_tensors_take_the_cpu_backend():
    assert dispatch.backend(torch.zeros(1, 1, 1)) == "cpu"


def test_empty_batch():
    ws, bs = make_params(2, [23, 24, 6])
    with torch.no_grad():
        assert kernels.ensemble_mlp(rand_x(2, 0, 23), ws, bs).shape == (2, 0, 6)


# ----------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------

# case -> (call, the message it must raise): a ValueError from anywhere else does not pass.
BAD_CALLS = {
    "x not 3-D": (lambda x, ws, bs: kernels.ensemble_mlp(x[0], ws, bs),
                  r"x must be a 3-D tensor \[E or M, B, in\], got torch.Size\(\[4, 6\]\)"),
    "E mismatch": (lambda x, ws, bs: kernels.ensemble_mlp(x[:2], ws, bs),
                   r"x has 2 members but the weights have E=3"),
    "in width": (lambda x, ws, bs: kernels.ensemble_mlp(x[..., :5], ws, bs),
                 r"weights\[0\] expects in=6 but x has 5"),
    "layer chain": (lambda x, ws, bs: kernels.ensemble_mlp(x, [ws[0], ws[0]], bs),
                    r"weights\[1\] expects in=6 but the previous layer gives 8"),
    "bias shape": (lambda x, ws, bs: kernels.ensemble_mlp(x, ws, [bs[0][:, :3], bs[1]]),
                   r"biases\[0\] must be \[E=3, 8\], got torch.Size\(\[3, 3\]\)"),
    "bias count": (lambda x, ws, bs: kernels.ensemble_mlp(x, ws, bs[:1]),
                   r"need as many biases as weights \(>= 1\), got 2 and 1"),
    "weight dtype": (lambda x, ws, bs: kernels.ensemble_mlp(x, [ws[0].double(), ws[1]], bs),
                     r"weights\[0\] has dtype torch.float64, x has torch.float32; they must match"),
    "x dtype": (lambda x, ws, bs: kernels.ensemble_mlp(x.long(), ws, bs),
                r"x must be floating point, got torch.int64"),
    "activation": (lambda x, ws, bs: kernels.ensemble_mlp(x, ws, bs, "gelu"),
                   r"activation must be one of \(.*'silu'.*\), got 'gelu'"),
    "precision": (lambda x, ws, bs: kernels.ensemble_mlp(x, ws, bs, precision="fp16"),
                  r"precision must be one of \(.*'fp32'.*\), got 'fp16'"),
    "member out of range": (lambda x, ws, bs: kernels.ensemble_mlp(x[:2], ws, bs, members=torch.tensor([0, 3])),
                            r"members must lie in \[0, 3\), got values in \[0, 3\]"),
    "negative member": (lambda x, ws, bs: kernels.ensemble_mlp(x[:1], ws, bs, members=torch.tensor([-1])),
                        r"members must lie in \[0, 3\), got values in \[-1, -1\]"),
    "member dtype": (lambda x, ws, bs: kernels.ensemble_mlp(x[:1], ws, bs, members=torch.tensor([0.0])),
                     r"members must be a 1-D int64/int32 tensor"),
    "member count": (lambda x, ws, bs: kernels.ensemble_mlp(x, ws, bs, members=torch.tensor([0])),
                     r"x has 3 members but members lists 1"),
    "odd gaussian width": (lambda x, ws, bs: kernels.ensemble_gaussian_mlp(
        x, [ws[0], torch.zeros(3, 8, 5)], [bs[0], torch.zeros(3, 5)], torch.zeros(3, 2), torch.zeros(3, 2)),
        r"the last layer must output 2\*D \(mean, log-variance\), got 5"),
    "bounds shape": (lambda x, ws, bs: kernels.ensemble_gaussian_mlp(x, ws, bs, torch.zeros(3, 2), torch.zeros(3, 3)),
                     r"max_logvar must be \[E=3, D=3\], got torch.Size\(\[3, 2\]\)"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_arguments_raise_value_error(case):
    call, message = BAD_CALLS[case]
    ws, bs = make_params(3, [6, 8, 6])
    with pytest.raises(ValueError, match=message):
        call(rand_x(3, 4, 6), ws, bs)


# ----------------------------------------------------------------------------------------------
# Triton kernels, under the CPU interpreter in a fresh process
# ----------------------------------------------------------------------------------------------


@needs_triton
def test_triton_kernels_pass_under_the_interpreter():
    """tests/test_kernels_triton.py with TRITON_INTERPRET=1, which must be set before triton is
    imported: a subprocess keeps it away from everything else this pytest process runs."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",  # (in this process)
         "-k", "not every_fused_tile and not every_gemm_tile",  # (GPU-only: forced tiles mean nothing to the interpreter)
         str(ROOT / "tests" / "test_kernels_triton.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 30, tail  # the file really ran, not an empty collection
    assert not re.search(r"\d+ (failed|error|skipped)", proc.stdout), tail


def _stub_linear_autotuner(monkeypatch):
    """kernels.triton_mlp with its GEMM autotuner's timer and launches stubbed (no GPU): the
    smallest candidate row block "wins"; returns the module, the autotuner and the launch log."""
    from kernels import triton_mlp as tm

    if not tm.AUTOTUNE:
        pytest.skip("autotuning is off (WORLDMODEL_AUTOTUNE=0)")
    tuned, launched = tm._linear_tuned, []
    monkeypatch.setattr(tuned, "cache", {})
    monkeypatch.setattr(tuned, "_bench", lambda *args, config, **kwargs: [config.kwargs["BLOCK_M"]])  # small wins
    monkeypatch.setattr(tuned.fn, "run", lambda *args, **kwargs: launched.append(("tuned", kwargs["BLOCK_M"])))

    class Heuristic:  # stands for the plain kernel's launch
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.append(("heuristic", kwargs["BLOCK_M"]))

    monkeypatch.setattr(tm, "_linear_kernel", Heuristic())
    return tm, tuned, launched


@needs_triton
def test_autotuned_launches_know_triton_s_key_and_never_tune_inside_a_capture(monkeypatch):
    """Without a GPU: Triton's Autotuner runs with its timer and the kernel launch stubbed, so
    the key it caches is compared with the one kernels.triton_mlp computes to decide whether a
    launch during a CUDA graph capture may use the tuned tiles (tuning there would sync)."""
    tm, tuned, launched = _stub_linear_autotuner(monkeypatch)
    a, w, b = torch.randn(2, 300, 23), torch.randn(3, 23, 200), torch.randn(3, 200)
    members = torch.tensor([0, 2])
    tm._linear(a, w, b, members, 1, 1)  # tuned: the smallest candidate that fits "wins"
    assert launched == [("tuned", 16)] and len(tuned.cache) == 1
    monkeypatch.setattr(tm._common, "_capturing", lambda x: True)
    tm._linear(a[:, :290], w, b, members, 1, 1)  # same key (rows bucketed): the tuned tiles, no timing
    tm._linear(a.repeat(1, 4, 1), w, b, members, 1, 1)  # a key never tuned: the heuristic tiles
    assert launched[1:] == [("tuned", 16), ("heuristic", tm._tiles(1200, 200)[0])] and len(tuned.cache) == 1


@needs_triton
def test_a_ragged_batch_does_not_retune_the_weight_gradient(monkeypatch):
    """dW = H^T @ dZ has the batch as its inner size K: a fit's last, ragged batch (250 rows where
    the others have 256) must find the tiles tuned for the full ones, not time every candidate."""
    tm, tuned, launched = _stub_linear_autotuner(monkeypatch)
    timed = []
    bench = tuned._bench
    monkeypatch.setattr(tuned, "_bench", lambda *args, config, **kwargs: timed.append(config) or bench(config=config))
    for batch in (256, 250, 256, 241):
        h, g = torch.randn(3, batch, 200), torch.randn(3, batch, 36)
        tm._linear(h.transpose(1, 2), g, None, None, 0, 1, w_by_member=False)
    candidates = len(timed)
    assert len(tuned.cache) == 1 and len(launched) == 4 and candidates > 1  # one tuning, on the first batch
    tm._linear(torch.randn(3, 200, 1000), torch.randn(3, 1000, 36), None, None, 0, 1, w_by_member=False)
    assert len(tuned.cache) == 2 and len(timed) > candidates  # (another bucket is tuned anew)


@needs_triton
def test_a_learning_thread_s_tuned_launch_waits_for_a_capture_holding_the_tuning_lock(monkeypatch):
    """planners.graph holds kernels._common.TUNING_LOCK across a capture: another thread's
    launch through the autotuner (which may time candidates with device syncs) waits for it,
    while the capturing thread's own launches take the lock again (re-entrant)."""
    tm, tuned, launched = _stub_linear_autotuner(monkeypatch)
    a, w, b = torch.randn(2, 300, 23), torch.randn(3, 23, 200), torch.randn(3, 200)
    with tm._common.TUNING_LOCK:
        tm._linear(a, w, b, None, 1, 1)  # the capturing thread itself: no deadlock
        learner = threading.Thread(target=tm._linear, args=(a, w, b, None, 1, 1))
        learner.start()
        learner.join(0.3)
        assert learner.is_alive() and len(launched) == 1  # held at the lock
    learner.join(5)
    assert not learner.is_alive() and len(launched) == 2


@needs_triton
def test_the_fused_kernel_s_scratch_stays_within_its_l2_budget_for_every_tile(monkeypatch):
    """A 128-row tile launches half the programs of a 64-row one, so the scratch (2 x rows x 256
    fp32 a program at width 256) is FUSED_TILE's: 34.6 MB for an H100's 132 SMs, not 69 MB
    (its L2 holds 50 MB)."""
    from kernels import triton_mlp as tm

    resident = 132 * tm.FUSED_PROGRAMS_PER_SM
    assert [tm.fused_programs(resident, bm) for bm in (32, 64, 128)] == [resident, resident, resident // 2]
    monkeypatch.setattr(tm, "_resident_programs", lambda device: resident)
    monkeypatch.setattr(tm, "_fused_tuned", object())  # (as on a GPU: any candidate tile may launch)
    E, B, H, meta = 7, 65536, 256, torch.device("meta")
    weights = [torch.empty(E, 23, H, device=meta), torch.empty(E, H, H, device=meta), torch.empty(E, H, 36, device=meta)]
    biases = [torch.empty(E, w.shape[2], device=meta) for w in weights]
    with tm.captured_launches() as seen:
        tm._fused_forward(torch.empty(E, B, 23, device=meta), weights, biases, None, 1, 1, None)
    scratch = seen[0].args[6]
    assert scratch.numel() * 4 == resident * tm.FUSED_TILE[0] * 2 * H * 4 <= 35e6


def test_bf16_copies_follow_a_fused_optimiser_step():
    # torch's fused Adam writes parameters without counting a version: a stale bf16 copy would
    # evaluate (a fit's holdout, a planner, a target) with the weights of before the step
    w = torch.nn.Parameter(torch.randn(3, 8, 4))
    x = torch.randn(3, 300, 8)
    with torch.no_grad():
        before = kernels.ensemble_mlp(x, [w, w.new_ones(3, 4, 4)], [torch.zeros(3, 4), torch.zeros(3, 4)],
                                      precision="bf16")
    optimizer = torch.optim.Adam([w], lr=0.5, fused=True)
    w.grad = torch.ones_like(w)
    optimizer.step()
    with torch.no_grad():
        assert torch.equal(cpu._bf16(w), w.detach().to(torch.bfloat16))
        after = kernels.ensemble_mlp(x, [w, w.new_ones(3, 4, 4)], [torch.zeros(3, 4), torch.zeros(3, 4)],
                                     precision="bf16")
    assert (after - before).abs().max() > 1.0


def test_bf16_copies_of_weights_are_cast_once_and_follow_in_place_changes():
    w = torch.randn(3, 8, 4)
    first = cpu._bf16(w)
    assert first.dtype == torch.bfloat16 and cpu._bf16(w) is first  # planning reuses the cast
    with torch.no_grad():
        w.add_(1.0)  # an optimiser step or a refit
    again = cpu._bf16(w)
    assert again is not first and torch.equal(again, w.to(torch.bfloat16))
    trained = torch.randn(3, 8, 4, requires_grad=True)
    assert cpu._bf16(trained).requires_grad  # under autograd the cast stays in the graph
    x, out = torch.randn(3, 5, 8), torch.eye(4).expand(3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(kernels.ensemble_mlp(x, [w, out], [torch.zeros(3, 4)] * 2, activation="identity",
                                                        precision="bf16"), torch.bmm(x, w), rtol=2e-2, atol=5e-2)
    w.data = torch.zeros(3, 8, 4)  # new storage, the same version: seen too
    assert torch.equal(cpu._bf16(w), torch.zeros(3, 8, 4, dtype=torch.bfloat16))


def test_tune_cpu_times_the_variants_at_the_precision_asked(capsys):
    from kernels import tune_cpu

    rows = tune_cpu.main(["-E", "2", "--hidden", "16", "-B", "4", "300", "--chunks", "128", "--reps", "1",
                          "--precision", "bf16"])
    assert [(r["pass"], r["B"]) for r in rows] == [("fwd", 4), ("fwd", 300), ("fwd+bwd", 4), ("fwd+bwd", 300)]
    assert set(rows[1]["ms"]) == {"baddbmm_inference", "loop_inference", "baddbmm", "loop", "loop_inference/chunk128"}
    assert all(r["best"] == min(r["ms"], key=r["ms"].get) for r in rows)
    assert "fwd     bf16 E=2 hidden=16 B=   300" in capsys.readouterr().out
    x, (ws, bs) = torch.randn(2, 5, 23), tune_cpu._params(2, 16, False)
    for name in ("baddbmm_inference", "loop_inference"):  # what it times is what precision="bf16" computes
        torch.testing.assert_close(cpu.run_variant(name, x, ws, bs, precision="bf16"),
                                   reference.bf16_hidden(reference.ensemble_mlp, x, ws, bs, "silu", None),
                                   atol=1e-2, rtol=1e-2)


def test_the_kernel_bench_rotates_operands_past_the_caches_at_every_precision():
    """Small cells rotate enough pools that no call finds its inputs and weights in cache (bf16
    operands are counted at 2 bytes: a pool sized as fp32 would be half as large)."""
    from kernels import bench

    w = bench.widths(200)
    for dtype, itemsize in (("fp32", 4), ("bf16", 2)):
        _, n = bench.make_call(bench.Case("baddbmm", 7, 1, 200, dtype, bench.PASSES[0]), "cpu")
        set_bytes = itemsize * 7 * (bench.IN + sum(a * b + b for a, b in zip(w[:-1], w[1:])))
        assert n * set_bytes >= bench.pool_bytes("cpu") > (n - 1) * set_bytes
