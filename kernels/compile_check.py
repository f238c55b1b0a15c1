"""Build the Triton kernels for an H100 (sm_90) without a GPU and report their resources.

python -m kernels.compile_check [--arch 90]: compiles each kernel in the configurations the
launchers use, through Triton's own pipeline and bundled ptxas, and prints shared memory,
registers per thread and spill stack bytes. It proves the GPU build compiles and shows where
it spills; it says nothing about speed (that needs a GPU: python -m kernels.bench).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels import triton_mlp as tm

_INT32 = {"R", "K", "N", "D", "B", "IN", "H", "D_OUT", "P", "R_BUCKET"}


def _signature(fn, constexprs: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name == "mem_ptr":
            sig[name] = "*i64"
        elif name in _INT32:
            sig[name] = "i32"
        elif name.startswith("s_"):
            sig[name] = "i64"
        else:
            sig[name] = "*fp32"
    return sig


def build(fn, constexprs: dict, num_warps: int, num_stages: int, arch: int) -> dict:
    src = ASTSource(fn=fn, signature=_signature(fn, constexprs), constexprs=constexprs)
    ck = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                        options={"num_warps": num_warps, "num_stages": num_stages})
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


def configs():
    """(label, kernel, constexprs, num_warps, num_stages) as the launchers use them for the
    in=23 -> 200 x4 -> 36 network at large B."""
    prec_names = {v: k for k, v in tm.PREC_CODES.items()}
    bm, warps = tm.FUSED_TILE
    for prec in (1, 2):  # (fp32 takes the per-layer kernels on CUDA)
        for gauss, out_p in ((False, 64), (True, 32)):
            c = dict(N_MID=3, ACT=1, GAUSS=gauss, HAS_MEMBERS=True, PREC=prec, EMU_BF16=False,
                     BLOCK_M=bm, IN_P=32, CH=64, OUT_P=out_p)
            yield (f"fused {prec_names[prec]} gauss={gauss} BM={bm}", tm._fused_mlp_kernel, c, warps, 1)
    bm, bn, bk, warps = tm._tiles(65536, 200)
    for prec in (0, 1, 2):
        for label, extra in (("fwd+store_z", dict(HAS_BIAS=True, STORE_Z=True, GRAD_Z=False, W_BY_MEMBER=True)),
                             ("bwd dX*act'", dict(HAS_BIAS=False, STORE_Z=False, GRAD_Z=True, W_BY_MEMBER=True)),
                             ("bwd dW", dict(HAS_BIAS=False, STORE_Z=False, GRAD_Z=False, W_BY_MEMBER=False))):
            c = dict(HAS_MEMBERS=True, ACT=1, PREC=prec, EMU_BF16=False, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                     **extra)
            yield (f"linear {label} {prec_names[prec]}", tm._linear_kernel, c, warps, 3)
        gbm, gbn, gbk, gwarps = tm._gaussian_tiles(65536, 18)
        c = dict(HAS_MEMBERS=True, STORE_RAW=True, PREC=prec, EMU_BF16=False, BLOCK_M=gbm, BLOCK_N=gbn,
                 BLOCK_K=gbk)
        yield (f"gaussian head {prec_names[prec]}", tm._gaussian_kernel, c, gwarps, 3)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m kernels.compile_check", description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90 = H100/H200)")
    args = ap.parse_args(argv)
    print(f"sm_{args.arch}, triton {triton.__version__}")
    print(f"{'kernel / config':40s} {'smem B':>8s} {'regs':>5s} {'spill B':>8s} wgmma")
    rows = []
    for label, fn, c, warps, stages in configs():
        r = build(fn, c, warps, stages, args.arch)
        print(f"{label:40s} {r['shared_bytes']:8d} {r['regs']:5d} {r['spill_stack_bytes']:8d} {r['wgmma']}",
              flush=True)
        rows.append({"config": label, "arch": args.arch, **r})
    return rows


if __name__ == "__main__":
    main()
