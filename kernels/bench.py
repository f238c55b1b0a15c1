"""Microbenchmark of the batched ensemble MLP: python -m kernels.bench [--quick] [--json PATH].

Variants: a Python loop over members, stacked baddbmm and einsum (mbrl-lib / OfflineRL-Kit style),
torch.func.vmap, torch.compile, and ours (kernels.ensemble_mlp: Triton on CUDA, kernels.cpu on CPU),
plus, on CUDA, ours replayed from a CUDA graph for single-step batches.
Network: in=23 (HalfCheetah obs 17 + act 6) -> hidden x4 -> 36 (2 x 18: mean, log-variance), SiLU.
Every figure is taken in one run: medians over many repeats after warm-up, inputs and weights
rotated through a pool so caches do not flatter, the peak measured here with a large matmul.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import kernels
from kernels import cpu, dispatch, reference
from kernels._common import positive_int

IN, OUT, HIDDEN_LAYERS = 23, 36, 4
VARIANTS = ("loop", "baddbmm", "einsum", "vmap", "compile", "ours", "ours_graph")
PASSES = ("forward", "forward+backward")


def widths(hidden: int) -> list[int]:
    return [IN] + [hidden] * HIDDEN_LAYERS + [OUT]


def gflop(E: int, B: int, hidden: int, pass_: str) -> float:
    """2*E*B*sum(in_l*out_l), x3 for forward+backward less the first layer's input gradient (the
    inputs need none: that product never runs)."""
    w = widths(hidden)
    products = sum(a * b for a, b in zip(w[:-1], w[1:]))
    return 2 * E * B * (3 * products - w[0] * w[1] if pass_ == PASSES[1] else products) / 1e9


# ----------------------------------------------------------------------------------------------
# Variants: f(x, weights, biases) -> [E, B, out]
# ----------------------------------------------------------------------------------------------


def mlp_einsum(x, weights, biases):
    h = x
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = torch.einsum("ebi,eio->ebo", h, w) + b.unsqueeze(1)
        if i < len(weights) - 1:
            h = F.silu(h)
    return h


def _one_member(x, *params):
    L = len(params) // 2
    h = x
    for i in range(L):
        h = torch.addmm(params[L + i], h, params[i])
        if i < L - 1:
            h = F.silu(h)
    return h


_vmapped = torch.func.vmap(_one_member)
_compiled: Callable | None = None


def mlp_vmap(x, weights, biases):
    return _vmapped(x, *weights, *biases)


def mlp_compile(x, weights, biases):
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(reference.ensemble_mlp)
    return _compiled(x, weights, biases)


def make_variant(name: str, dtype: str) -> Callable:
    if name == "loop":
        return lambda x, w, b: cpu.mlp_loop(x, w, b)
    if name == "baddbmm":
        return lambda x, w, b: reference.ensemble_mlp(x, w, b)
    if name == "einsum":
        return mlp_einsum
    if name == "vmap":
        return mlp_vmap
    if name == "compile":
        return mlp_compile
    if name in ("ours", "ours_graph"):
        return lambda x, w, b: kernels.ensemble_mlp(x, w, b, precision=dtype)
    raise ValueError(name)


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_once(call: Callable[[int], object], i: int, device: str) -> float:
    """Milliseconds of one call(i): CUDA events on GPU, perf_counter on CPU."""
    if device == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        call(i)
        b.record()
        b.synchronize()
        return a.elapsed_time(b)
    t = time.perf_counter()
    call(i)
    return (time.perf_counter() - t) * 1e3


def time_calls(call: Callable[[int], object], n_inputs: int, device: str, budget_s: float,
               min_reps: int, max_reps: int, warmup: int = 2) -> tuple[float, int]:
    """Median milliseconds of call(i), i rotating over n_inputs pools; returns (ms, repeats)."""
    for i in range(warmup):
        call(i % n_inputs)
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps:
        times.append(time_once(call, len(times) % n_inputs, device))
        if len(times) >= min_reps and time.perf_counter() - start > budget_s:
            break
    return statistics.median(times), len(times)


def measure_peak(device: str, dtype: str) -> float:
    """GFLOP/s of a large square matmul in this precision (the roofline the table refers to)."""
    n = 8192 if device == "cuda" else 2048
    tdt = torch.bfloat16 if dtype == "bf16" else torch.float32
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    try:
        a = [torch.randn(n, n, device=device, dtype=tdt) for _ in range(2)]
        ms, _ = time_calls(lambda i: torch.mm(a[i], a[1 - i]), 2, device, 2.0, 5, 50)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return 2 * n**3 / ms / 1e6


def capture(fn: Callable[[], object], warmup: int = 1, pool=None) -> torch.cuda.CUDAGraph:
    """fn captured in a CUDA graph, after warm-up calls on a side stream (as torch's graph docs ask);
    pool: a memory pool shared with other graphs replayed one at a time (torch.cuda.graph_pool_handle())."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool), torch.no_grad():
        fn()
    return graph


def launch_floor(device: str) -> dict[str, float] | None:
    """Milliseconds of the smallest call, timed as every row is (time_once): one kernel launch (a
    1-element add) and one CUDA graph replay of it. No small-batch row can beat these; None on CPU."""
    if device != "cuda":
        return None
    x = torch.zeros(1, device=device)
    graph = capture(lambda: x.add_(1))
    return {"kernel_launch_ms": time_calls(lambda i: x.add_(1), 1, device, 0.2, 20, 500)[0],
            "graph_replay_ms": time_calls(lambda i: graph.replay(), 1, device, 0.2, 20, 500)[0]}


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads"


@dataclass
class Case:
    variant: str
    E: int
    B: int
    hidden: int
    dtype: str
    pass_: str


def applicable(c: Case, device: str) -> bool:
    if c.variant == "ours_graph":
        return device == "cuda" and c.pass_ == PASSES[0] and c.B <= 256
    if c.dtype == "tf32" and device != "cuda":
        return False
    return True


def pool_bytes(device: str) -> float:
    """What the rotated inputs and weights of a case add up to at least: 64 MB, and on a GPU four
    times its L2 (50 MB on an H100 or H200), so no call finds its operands in cache."""
    if device == "cuda":
        return max(64e6, 4 * getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0))
    return 64e6


def _pool(E: int, B: int, hidden: int, dtype: torch.dtype, device: str, grad: bool, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = widths(hidden)
    pools = []
    for _ in range(n):
        ws = [(torch.randn(E, a, b, generator=g) / a**0.5).to(device, dtype).requires_grad_(grad)
              for a, b in zip(w[:-1], w[1:])]
        bs = [(0.1 * torch.randn(E, b, generator=g)).to(device, dtype).requires_grad_(grad) for b in w[1:]]
        pools.append((torch.randn(E, B, IN, generator=g).to(device, dtype), ws, bs))
    return pools


def make_call(c: Case, device: str) -> tuple[Callable[[int], None], int]:
    """A closure running one call of case c on input pool i, and the pool size."""
    torch_dtype = torch.bfloat16 if (c.dtype == "bf16" and not c.variant.startswith("ours")) else torch.float32
    grad = c.pass_ == PASSES[1]
    w = widths(c.hidden)
    set_bytes = torch_dtype.itemsize * c.E * (c.B * IN + sum(a * b + b for a, b in zip(w[:-1], w[1:])))
    n_inputs = max(2, min(256, math.ceil(pool_bytes(device) / set_bytes)))
    pools = _pool(c.E, c.B, c.hidden, torch_dtype, device, grad, n_inputs, seed=c.B + c.hidden)
    f = make_variant(c.variant, c.dtype)
    tf32 = c.dtype == "tf32"

    if c.variant == "ours_graph":  # a graph per pool entry: its weights rotate as the other variants' do
        inputs = [x.clone() for x, _, _ in pools]
        pool = torch.cuda.graph_pool_handle()  # (one memory pool: the graphs replay one at a time)
        graphs = [capture(lambda x=x, ws=ws, bs=bs: f(x, ws, bs), warmup=3, pool=pool)
                  for x, (_, ws, bs) in zip(inputs, pools)]

        def call(i):
            inputs[i].copy_(pools[(i + 1) % n_inputs][0])  # a new observation batch each step, as a planner would
            graphs[i].replay()
    elif grad:
        gouts = [torch.randn(c.E, c.B, OUT, device=device, dtype=torch_dtype) for _ in range(2)]

        def call(i):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            x, ws, bs = pools[i]
            torch.autograd.grad(f(x, ws, bs), [*ws, *bs], gouts[i % 2])
    else:
        def call(i):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            x, ws, bs = pools[i]
            with torch.no_grad():
                f(x, ws, bs)
    return call, n_inputs


def _recorded_tiles(c: Case, device: str):
    """Where ours runs Triton kernels: record the tiles of its launches (kernels.triton_mlp)."""
    if c.variant.startswith("ours") and (device == "cuda" or dispatch.interpreting()):
        return dispatch._triton().recorded_tiles()
    return contextlib.nullcontext([])


def run_cell(cases: list[Case], device: str, budget_s: float) -> list[dict]:
    """Time every variant of one shape, interleaved call by call, so that load from other
    processes on a shared machine falls on all variants alike (ratios stay honest)."""
    calls, tiles, once, failed, timed = [], [], 0.0, [], []
    for c in cases:  # set-up and first calls: allocation, compilation, autotuning (a graph's capture),
        try:  # and the Triton tiles ours ran; a second call sizes the repeats
            with _recorded_tiles(c, device) as used:
                call, n = make_call(c, device)
                call(0)
        except Exception as e:  # a variant that fails is reported, and the cell goes on without it
            if c.variant == "baddbmm":
                raise
            traceback.print_exc()
            failed.append(_case_row(c, device, error=f"{type(e).__name__}: {e}"))
            continue
        timed.append(c)
        calls.append((call, n))
        _sync(device)
        t = time.perf_counter()
        call(0)
        _sync(device)
        once = max(once, time.perf_counter() - t)
        tiles.append(sorted(set(used)) or None)
    for c, (call, n) in zip(timed, calls):
        if once < 1.0 or c.variant == "compile":  # settle recompiles (automatic dynamic shapes)
            for i in range(1, 3):
                call(i % n)
    _sync(device)
    # Big cells (seconds per call on a 2-core CPU) get fewer repeats so the full grid stays usable.
    min_reps = 10 if once < 0.05 else (5 if once < 1.0 else (3 if once < 5.0 else 2))
    times: list[list[float]] = [[] for _ in timed]
    start = time.perf_counter()
    rep = 0
    while rep < 200:
        for k, (call, n) in enumerate(calls):
            times[k].append(time_once(call, rep % n, device))
        rep += 1
        if rep >= min_reps and time.perf_counter() - start > budget_s * len(timed):
            break
    rows = []
    for c, ts, (_, n), used in zip(timed, times, calls, tiles):
        ms = statistics.median(ts)
        rows.append(_case_row(c, device, ms=ms, reps=len(ts), rows_per_s=c.E * c.B / (ms / 1e3),
                              gflops=gflop(c.E, c.B, c.hidden, c.pass_) / (ms / 1e3), inputs_rotated=n, tiles=used))
    base = next(r["ms"] for r in rows if r["variant"] == "baddbmm")
    for r in rows:
        r["ratio_vs_baddbmm"] = base / r["ms"]
    return rows + failed


def _case_row(c: Case, device: str, **figures) -> dict:
    return dict(variant=c.variant, E=c.E, B=c.B, hidden=c.hidden, dtype=c.dtype, **{"pass": c.pass_},
                device=device, device_name=device_name(device), **figures)


# ----------------------------------------------------------------------------------------------
# Table
# ----------------------------------------------------------------------------------------------

COLUMNS = [("variant", "{}"), ("dtype", "{}"), ("pass", "{}"), ("E", "{}"), ("B", "{}"), ("hidden", "{}"),
           ("ms", "{:.4g}"), ("rows/s", "{:.3g}"), ("GFLOP/s", "{:.1f}"), ("%peak", "{:.1f}"),
           ("vs baddbmm", "{:.2f}x")]
KEYS = {"rows/s": "rows_per_s", "GFLOP/s": "gflops", "%peak": "pct_peak", "vs baddbmm": "ratio_vs_baddbmm"}


def format_table(rows: list[dict]) -> str:
    cells = [[name for name, _ in COLUMNS]]
    for r in rows:
        line = []
        for name, fmt in COLUMNS:
            v = r.get(KEYS.get(name, name))
            line.append("-" if v is None else fmt.format(v))
        cells.append(line)
    width = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    out = []
    for j, row in enumerate(cells):
        out.append("  ".join(s.ljust(w) if i < 3 else s.rjust(w) for i, (s, w) in enumerate(zip(row, width))))
        if j == 0:
            out.append("  ".join("-" * w for w in width))
    return "\n".join(out)


def markdown_summary(rows: list[dict]) -> str:
    """One line per shape: every variant's median ms, then ours: GFLOP/s, %peak, vs baddbmm and
    ours / fastest other variant (<= 1.10 meets the CPU target)."""
    cells: dict[tuple, dict[str, dict]] = {}
    for r in (r for r in rows if "ms" in r):
        cells.setdefault((r["device"], r["dtype"], r["pass"], r["hidden"], r["E"], r["B"]), {})[r["variant"]] = r
    names = [v for v in VARIANTS if any(v in c for c in cells.values())]
    head = ["device", "dtype", "pass", "hidden", "E", "B", *[f"{v} ms" for v in names],
            "ours GFLOP/s", "ours %peak", "ours vs baddbmm", "ours / best other"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, c in cells.items():
        ours = c.get("ours")
        others = [r["ms"] for v, r in c.items() if not v.startswith("ours")]
        line = [*map(str, key), *[f"{c[v]['ms']:.4g}" if v in c else "-" for v in names]]
        if ours:
            line += [f"{ours['gflops']:.1f}", f"{ours.get('pct_peak', float('nan')):.1f}",
                     f"{ours['ratio_vs_baddbmm']:.2f}x", f"{ours['ms'] / min(others):.2f}"]
        else:
            line += ["-"] * 4
        out.append("| " + " | ".join(line) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="E=7, B in {1, 4096}, hidden 200, short budget")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as a JSON list")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("-E", nargs="+", type=positive_int, default=[5, 7])
    ap.add_argument("-B", nargs="+", type=positive_int, default=[1, 256, 4096, 65536])
    ap.add_argument("--hidden", nargs="+", type=positive_int, default=[200, 512])
    ap.add_argument("--passes", nargs="+", choices=PASSES, default=list(PASSES))
    ap.add_argument("--dtypes", nargs="+", choices=("fp32", "tf32", "bf16"),
                    help="default: fp32 on CPU; tf32 and bf16 on CUDA")
    ap.add_argument("--budget", type=float, default=1.0,
                    help="seconds of repeats per variant and shape (after warm-up; at least 2-10 repeats)")
    ap.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--markdown", action="store_true", help="also print a per-shape markdown summary")
    ap.add_argument("--from-json", metavar="PATH", help="print the table (and --markdown) of a saved run")
    args = ap.parse_args(argv)
    if args.from_json and not os.path.isfile(args.from_json):
        ap.error(f"--from-json {args.from_json}: {'a directory' if os.path.isdir(args.from_json) else 'no such file'}"
                 "; give a --json file of an earlier run")  # fmt: skip
    if args.from_json:
        with open(args.from_json) as f:
            try:
                rows = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                ap.error(f"--from-json {args.from_json}: not JSON ({e}); give a --json file of an earlier run")
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            ap.error(f"--from-json {args.from_json}: not a kernels.bench --json file (a list of rows)")
        print(format_table(rows))
        if args.markdown:
            print()
            print(markdown_summary(rows))
        return rows
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.E, args.B, args.hidden, args.budget = [7], [1, 4096], [200], min(args.budget, 0.5)
    dtypes = args.dtypes or (["tf32", "bf16"] if args.device == "cuda" else ["fp32"])
    if "baddbmm" not in args.variants:
        args.variants.insert(0, "baddbmm")  # every ratio needs its baseline in the same run
    device = args.device

    peaks = {d: measure_peak(device, d) for d in dtypes}
    floor = launch_floor(device)
    print(f"# {device_name(device)}; torch {torch.__version__}; matmul peak measured here: "
          + ", ".join(f"{d} {p:.0f} GFLOP/s" for d, p in peaks.items())
          + (f"; launch floor: one kernel {1e3 * floor['kernel_launch_ms']:.1f} us, one graph replay "
             f"{1e3 * floor['graph_replay_ms']:.1f} us" if floor else ""), flush=True)  # fmt: skip
    rows: list[dict] = []
    for dtype in dtypes:
        for pass_ in args.passes:
            for hidden in args.hidden:
                for E in args.E:
                    for B in args.B:
                        cases = [Case(v, E, B, hidden, dtype, pass_) for v in args.variants]
                        group = run_cell([c for c in cases if applicable(c, device)], device, args.budget)
                        rows += group
                        print(format_table(group).split("\n", 2)[2], flush=True)
                        write_json(args.json, rows)  # a run cut short keeps the cells it measured
    # the peak again at the end (noisy shared machine): the higher of the two is the roofline
    for d in dtypes:
        peaks[d] = max(peaks[d], measure_peak(device, d))
    for r in (r for r in rows if "gflops" in r):
        r.update(floor or {})
        r["peak_gflops"] = peaks[r["dtype"]]
        r["pct_peak"] = 100 * r["gflops"] / peaks[r["dtype"]]
    print()
    print(f"# {device_name(device)}; peak (max of start/end large matmul): "
          + ", ".join(f"{d} {p:.0f} GFLOP/s" for d, p in peaks.items()))
    print("# rows/s = E*B member-rows per second; vs baddbmm = baddbmm ms / variant ms (>1 is faster)")
    print(format_table(rows))
    if args.markdown:
        print()
        print(markdown_summary(rows))
    for r in (r for r in rows if "error" in r):
        print(f"\n# FAILED: {r['variant']} {r['dtype']} {r['pass']} hidden {r['hidden']} E {r['E']} B {r['B']}: {r['error']}")
    tiled = [r for r in rows if r.get("tiles")]
    if tiled:
        how = "chosen by Triton's autotuner" if dispatch._triton().AUTOTUNE else "the heuristic tiles: autotuning is off"
        print(f"\n# Triton tiles ours ran ({how}):")
        for r in tiled:
            print(f"{r['dtype']} {r['pass']} hidden {r['hidden']} E {r['E']} B {r['B']}: " + "; ".join(r["tiles"]))
    write_json(args.json, rows)
    return rows


def write_json(path: str | None, obj: list | dict) -> None:
    """Write obj to path as JSON atomically (a temporary file renamed over it); nothing when path is None."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
