"""Measure the CPU variants' crossover that kernels.cpu hard-codes: python -m kernels.tune_cpu.

For each batch size, times every variant of kernels.cpu (inference and forward+backward),
interleaved call by call, and prints the median ms and the winner. Re-run it on a new machine
and update INFER_LOOP_MIN_ROWS / TRAIN_LOOP_MIN_ROWS / CHUNK_ELEMS if the crossover moves;
`--precision bf16` times the variants as `precision="bf16"` runs them (the hidden layers on bf16
operands) for INFER_LOOP_MIN_ROWS_BF16, on a CPU with AVX-512 BF16 or AMX.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from kernels import cpu
from kernels.bench import IN, OUT, time_once, widths


def _params(E, hidden, grad):
    g = torch.Generator().manual_seed(0)
    w = widths(hidden)
    ws = [(torch.randn(E, a, b, generator=g) / a**0.5).requires_grad_(grad) for a, b in zip(w[:-1], w[1:])]
    bs = [(0.1 * torch.randn(E, b, generator=g)).requires_grad_(grad) for b in w[1:]]
    return ws, bs


def sweep(E: int, hidden: int, batches: list[int], reps: int, chunks: list[int], precision: str = "fp32") -> list[dict]:
    """Prints a line per pass and batch; returns them as rows {pass, B, best, ms: {variant: median}}."""
    rows = []
    for grad in (False, True):
        ws, bs = _params(E, hidden, grad)
        names = ["baddbmm", "loop"] if grad else ["baddbmm_inference", "loop_inference", "baddbmm", "loop"]
        for B in batches:
            xs = [torch.randn(E, B, IN) for _ in range(2)]
            gout = torch.randn(E, B, OUT)

            def variant(name, chunk_rows=None):
                return lambda x, w, b: cpu.run_variant(name, x, w, b, precision=precision, chunk_rows=chunk_rows)

            fns = {n: variant(n) for n in names}
            if not grad:
                for c in chunks:
                    fns[f"loop_inference/chunk{c}"] = variant("loop_inference", c)

            def call_for(fn):
                def call(i):
                    if grad:
                        torch.autograd.grad(fn(xs[i], ws, bs), [*ws, *bs], gout)
                    else:
                        with torch.no_grad():
                            fn(xs[i], ws, bs)
                return call

            calls = {n: call_for(f) for n, f in fns.items()}
            for c in calls.values():
                c(0)
            times = {n: [] for n in calls}
            for r in range(reps):
                for n, c in calls.items():
                    times[n].append(time_once(c, r % 2, "cpu"))
            med = {n: statistics.median(t) for n, t in times.items()}
            best = min(med, key=med.get)
            cells = "  ".join(f"{n}={v:.3f}" for n, v in med.items())
            print(f"{'fwd+bwd' if grad else 'fwd':7s} {precision} E={E} hidden={hidden} B={B:6d}  best={best:28s} "
                  f"{cells}", flush=True)
            rows.append({"pass": "fwd+bwd" if grad else "fwd", "B": B, "best": best, "ms": med})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m kernels.tune_cpu", description=__doc__.split("\n")[0])
    ap.add_argument("-E", type=int, default=7)
    ap.add_argument("--hidden", nargs="+", type=int, default=[200, 512])
    ap.add_argument("-B", nargs="+", type=int, default=[1, 16, 64, 128, 256, 512, 1024, 4096, 16384])
    ap.add_argument("--chunks", nargs="+", type=int, default=[1024, 2048, 4096, 8192])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args(argv)
    if args.precision == "bf16" and not cpu.bf16_units():
        print("note: this CPU has no AVX-512 BF16 or AMX units: bf16 times here are not the ones to tune on")
    return [row for h in args.hidden
            for row in sweep(args.E, h, args.B, args.reps, args.chunks if max(args.B) > min(args.chunks) else [],
                             args.precision)]


if __name__ == "__main__":
    main()
