"""One fused-kernel case on the GPU against the float64 reference: BM WARPS PREC GAUSS MEMBERS B (run in its own process)."""
import sys

import torch

DEV = "cuda" if torch.cuda.is_available() else "cpu"

from kernels import reference
from kernels import triton_mlp as tm

bm, warps, prec, gauss, members, B = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", sys.argv[5] == "1", int(sys.argv[6])
tm.FUSED_TILE, tm._fused_tuned = (bm, warps), None
E, widths = 7, [23, 200, 200, 200, 200, 36]
g = torch.Generator().manual_seed(0)
ws = [(torch.randn(E, a, b, generator=g) / a**0.5).to(DEV) for a, b in zip(widths[:-1], widths[1:])]
bs = [(0.1 * torch.randn(E, b, generator=g)).to(DEV) for b in widths[1:]]
m = torch.tensor([0, 2, 3, 5, 6], device=DEV) if members else None
P = 5 if members else E
x = torch.randn(P, B, widths[0], generator=g).to(DEV)
hi, lo = torch.full((E, 18), 0.5, device=DEV), torch.full((E, 18), -10.0, device=DEV)
try:
    if gauss:
        mean, lv = tm._fused_forward(x, ws, bs, m, 1, {"tf32": 1, "bf16": 2}[prec], (hi, lo))
        rm, rlv = reference.ensemble_gaussian_mlp(x.double(), [w.double() for w in ws], [b.double() for b in bs], hi.double(), lo.double(), members=m)
        err = max((mean.double() - rm).abs().max().item(), (lv.double() - rlv).abs().max().item())
    else:
        out = tm._fused_forward(x, ws, bs, m, 1, {"tf32": 1, "bf16": 2}[prec], None)
        ref = reference.ensemble_mlp(x.double(), [w.double() for w in ws], [b.double() for b in bs], "silu", m)
        err = (out.double() - ref).abs().max().item()
    torch.cuda.synchronize() if DEV == "cuda" else None
    print(f"{'OK   ' if err < 0.05 else 'WRONG'} {sys.argv[1:]} max abs err {err:.3g}")
except Exception as e:
    print(f"FAIL {sys.argv[1:]} {type(e).__name__}: {str(e).splitlines()[0]}")
