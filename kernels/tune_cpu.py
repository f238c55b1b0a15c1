"""Measure the CPU variants' crossover that kernels.cpu hard-codes: python -m kernels.tune_cpu.

For each batch size, times every variant of kernels.cpu (inference and forward+backward),
interleaved call by call, and prints the median ms and the winner. Re-run it on a new machine
and update INFER_LOOP_MIN_ROWS / TRAIN_LOOP_MIN_ROWS / CHUNK_ELEMS if the crossover moves.
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


def sweep(E: int, hidden: int, batches: list[int], reps: int, chunks: list[int]) -> None:
    for grad in (False, True):
        ws, bs = _params(E, hidden, grad)
        names = ["baddbmm", "loop"] if grad else ["baddbmm_inference", "loop_inference", "baddbmm", "loop"]
        for B in batches:
            xs = [torch.randn(E, B, IN) for _ in range(2)]
            gout = torch.randn(E, B, OUT)
            fns = {n: cpu.VARIANTS[n] for n in names}
            if not grad:
                for c in chunks:
                    fns[f"loop_inference/chunk{c}"] = (lambda c: lambda *a: cpu.mlp_loop_inference(*a, chunk_rows=c))(c)

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
            print(f"{'fwd+bwd' if grad else 'fwd':7s} E={E} hidden={hidden} B={B:6d}  best={best:28s} {cells}",
                  flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m kernels.tune_cpu", description=__doc__.split("\n")[0])
    ap.add_argument("-E", type=int, default=7)
    ap.add_argument("--hidden", nargs="+", type=int, default=[200, 512])
    ap.add_argument("-B", nargs="+", type=int, default=[1, 16, 64, 128, 256, 512, 1024, 4096, 16384])
    ap.add_argument("--chunks", nargs="+", type=int, default=[1024, 2048, 4096, 8192])
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    for h in args.hidden:
        sweep(args.E, h, args.B, args.reps, args.chunks if max(args.B) > min(args.chunks) else [])


if __name__ == "__main__":
    main()
