"""Build the Triton kernels for an H100 (sm_90) without a GPU and report their resources.

python -m kernels.compile_check [--arch 90] [--all-tiles]: runs the launchers of the dynamics
model (7 x 23 -> 200 x4 -> 36) and a critic ensemble (10 x 23 -> 256 x3 -> 1) at 256 and 65,536
rows per member (inference, and a training forward and backward) on meta tensors, keeps each launch they would make (`kernels.triton_mlp.captured_launches`), and
compiles it through Triton's own pipeline and bundled ptxas with the specialisation Triton gives
those arguments at launch (int32 or int64, a stride of 1 folded in as a constant, 16-divisible
values and aligned pointers marked), then prints shared memory, registers per thread and spill
stack bytes. --all-tiles builds every tile the autotuner may time as well as the heuristic one.
It proves the GPU build compiles and shows where it spills; it says nothing about speed (that
needs a GPU: python -m kernels.bench).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator

import torch
import triton
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource

from kernels import triton_mlp as tm
from kernels.bench import IN, widths

_KERNEL_NAMES = {"_fused_mlp_kernel": "fused", "_linear_kernel": "linear", "_gaussian_kernel": "gaussian head"}


def specialise(launch: tm.Launch) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) of a launch as Triton's JIT specialises its arguments."""
    fn = launch.kernel
    bound = dict(zip(fn.arg_names, launch.args)) | launch.constexprs
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        value = bound[param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
            continue
        kind, key = native_specialize_impl(BaseBackend, value, False, True, True)
        if kind == "constexpr":  # (an int equal to 1)
            signature[param.name], constexprs[param.name] = "constexpr", key
            continue
        signature[param.name] = kind
        if key:
            attrs[(i,)] = BaseBackend.parse_attr(key)
    return signature, constexprs, attrs


def build(launch: tm.Launch, arch: int) -> dict:
    signature, constexprs, attrs = specialise(launch)
    src = ASTSource(fn=launch.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    ck = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                        options={"num_warps": launch.num_warps, "num_stages": launch.num_stages})
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(ck.asm["cubin"])
        usage = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    return dict(shared_bytes=ck.metadata.shared, regs=int(m.group(1)) if m else None,
                spill_stack_bytes=int(m.group(2)) if m else None,
                wgmma="warp_group_dot" in ck.asm["ttgir"])


def _label(launch: tm.Launch) -> str:
    c = launch.constexprs
    name = _KERNEL_NAMES[launch.kernel.__name__]
    prec = {v: k for k, v in tm.PREC_CODES.items()}[c["PREC"]]
    if name == "fused":
        what = f"gauss={c['GAUSS']}"
    elif name == "linear":
        what = ("fwd+store_z" if c["STORE_Z"] else "bwd dX*act'" if c["GRAD_Z"] and c["ACT"]
                else "bwd dW" if not c["W_BY_MEMBER"] else "bwd dX" if not c["HAS_BIAS"]
                else "fwd" if c["ACT"] else "fwd out")
    else:
        what = "raw" if c["STORE_RAW"] else "inference"
    named = dict(zip(launch.kernel.arg_names, launch.args))
    shape = "{IN}->{H}".format(**named) if name == "fused" else "{}->{}".format(named["K"], named.get("N", named.get("D")))
    tile = "x".join(str(c[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in c)
    return f"{name} {what} {shape} {prec} {tile} w{launch.num_warps}"


# (members, widths in -> hidden... -> out, Gaussian heads built): the dynamics model of the
# benchmarks (kernels.bench) and a RAVL critic ensemble (10 critics of 3 x 256, one output)
# (members, layer widths, with/without the Gaussian head, activation): as the engine launches them
NETWORKS = {"model": (7, widths(200), (False, True), "silu"), "critics": (10, [IN, 256, 256, 256, 1], (False,), "relu")}


def launches(batches: tuple[int, ...] = (256, 65536)) -> list[tm.Launch]:
    """Every distinct launch of NETWORKS' inference (fused where it may) and training step
    (per-layer forward storing pre-activations, then the backward, the input's gradient
    included) in fp32, tf32 and bf16 at each batch (rows per member), on meta tensors: nothing
    is allocated or run."""
    meta = torch.device("meta")
    kept: dict[tuple, tm.Launch] = {}
    for E, w, heads, activation in NETWORKS.values():
        members = torch.arange(E, device=meta)
        for B, prec, gauss in itertools.product(batches, ("fp32", "tf32", "bf16"), heads):
            code, act = tm.PREC_CODES[prec], tm.ACT_CODES[activation]
            weights = [torch.empty(E, a, b, device=meta) for a, b in zip(w[:-1], w[1:])]
            biases = [torch.empty(E, b, device=meta) for b in w[1:]]
            bounds = (torch.empty(E, w[-1] // 2, device=meta),) * 2 if gauss else None
            x = torch.empty(E, B, w[0], device=meta)
            with tm.captured_launches() as seen:
                if tm.fusable(x, weights, prec):  # inference: as kernels.ensemble_mlp takes it
                    tm._fused_forward(x, weights, biases, members, act, code, bounds)
                else:
                    tm._layers_forward(x, weights, biases, members, act, code, bounds, save=False)
                params = [t.requires_grad_() for t in (*weights, *biases)]
                out = tm._EnsembleMLPFunction.apply(x.requires_grad_(), members, act, code, gauss, len(weights),
                                                    *params, *(bounds or ()))
                outs = out if gauss else (out,)
                torch.autograd.grad(outs, [x, *params], [torch.empty_like(o) for o in outs])
            for launch in seen:
                signature, constexprs, attrs = specialise(launch)
                key = (launch.kernel.__name__, str(sorted(signature.items())), str(sorted(constexprs.items())),
                       str(sorted(attrs.items())), launch.num_warps, launch.num_stages)
                kept.setdefault(key, launch)
    return list(kept.values())


def candidate_tiles(launch: tm.Launch) -> Iterator[tm.Launch]:
    """The launch with each tile the autotuner may time for it (its prune's choice; the heuristic
    tile first)."""
    fn = launch.kernel.__name__
    named = dict(zip(launch.kernel.arg_names, launch.args)) | launch.constexprs
    if fn == "_fused_mlp_kernel":
        configs = [triton.Config(dict(BLOCK_M=bm), num_warps=w, num_stages=1) for bm, w in tm._FUSED_CANDIDATES]
        configs = tm._fused_candidates(configs, named, **launch.constexprs)
    else:
        prune = tm._gemm_candidates(tm._tiles if fn == "_linear_kernel" else tm._gaussian_tiles)
        configs = prune(tm._GEMM_CANDIDATES, named)
    for c in configs:
        yield tm.Launch(launch.kernel, launch.args, launch.constexprs | c.kwargs, c.num_warps, c.num_stages)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m kernels.compile_check", description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90 = H100/H200, 80 = A100; "
                                                         "tf32 and bf16 need 80 or more)")  # fmt: skip
    ap.add_argument("--all-tiles", action="store_true", help="every tile the autotuner may time, not only the heuristic one")
    args = ap.parse_args(argv)
    if args.arch < 80:
        ap.error(f"--arch {args.arch}: the kernels' tf32 and bf16 paths need sm_80 or newer; give 80, 86, 89, 90, ...")
    print(f"sm_{args.arch}, triton {triton.__version__}; the launches of 7 x 23 -> 200 x4 -> 36 and 10 x 23 -> 256 x3 -> 1 "
          "at 256 and 65,536 rows, as launched")
    print(f"{'kernel / config':44s} {'smem B':>8s} {'regs':>5s} {'spill B':>8s} wgmma")
    rows = []
    for launch in launches():
        for tiled in candidate_tiles(launch) if args.all_tiles else [launch]:
            label = _label(tiled)
            try:
                r = build(tiled, args.arch)
            except Exception as e:  # (ptxas names an architecture it does not know in a fatal line)
                raise SystemExit(f"error: cannot build {label} for sm_{args.arch}: {str(e).strip().splitlines()[-1]}") from None
            print(f"{label:44s} {r['shared_bytes']:8d} {r['regs']:5d} {r['spill_stack_bytes']:8d} {r['wgmma']}",
                  flush=True)
            rows.append({"config": label, "arch": args.arch, **r})
    return rows


if __name__ == "__main__":
    main()
