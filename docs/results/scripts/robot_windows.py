"""Robot runs' own episodes by the real step they ended in, in issue #11's windows
(0-1k], (1k-5k], (5k-10k], (10k-20k]: per run mean ± std (count, lowest), from each run's
metrics.jsonl; with several runs (seeds), a last line per window as the README's robot table gives
it: the mean ± sample std of the runs' means, and the lowest episode of any run. Then per run the
act() p99 of the 1,000-act windows the loop logs each second, from real step 1,000 on (median, min,
max; `--act`: only those lines, as `act_tail_ab.sh` prints its arms).

    python docs/results/scripts/robot_windows.py [--act] runs/realtime/<run> [...]

(`python -m worldmodel.report` groups runs by settings and splits each run into its own windows;
this keeps the issue's fixed ones, run by run.)
"""

import argparse
import json
import statistics
from pathlib import Path

WINDOWS = [(0, 1000), (1000, 5000), (5000, 10000), (10000, 20000)]


def window_returns(run: Path) -> dict[tuple[int, int], list[float]]:
    """The run's robot episode returns by window (windows without an episode left out)."""
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise SystemExit(f"{run}: no metrics.jsonl (give a planners.realtime run directory)")
    episodes = [json.loads(line) for line in open(metrics) if '"kind": "episode"' in line]
    found = {(low, high): [e["ret"] for e in episodes if low < e["step"] <= high] for low, high in WINDOWS}
    return {window: returns for window, returns in found.items() if returns}


def act_windows(run: Path) -> str:
    """The run's act() p99 over its logged 1,000-act windows from real step 1,000 on, as a line."""
    rows = [json.loads(line) for line in open(run / "metrics.jsonl") if '"kind": "realtime"' in line]
    windows = [r for r in rows if r["step"] >= 1000]
    if not windows:
        return f"{run.name}: no act() windows from real step 1,000 on"
    p99 = [r["act_latency_p99_ms"] for r in windows]
    return (f"{run.name}: {len(windows)} windows, act p99 median {statistics.median(p99):.2f} ms (min {min(p99):.2f}, "
            f"max {max(p99):.2f}); p50 median {statistics.median(r['act_latency_p50_ms'] for r in windows):.2f}; "
            f"plan p50 median {statistics.median(r['plan_latency_p50_ms'] for r in windows):.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="planners.realtime run directories")
    parser.add_argument("--act", action="store_true", help="only the act() p99 windows")
    args = parser.parse_args()
    runs = args.runs
    if args.act:
        for run in runs:
            window_returns(run)  # (the clear error for a directory that is not a run)
            print(act_windows(run), flush=True)
        return
    by_run = {run: window_returns(run) for run in runs}
    for run, windows in by_run.items():
        cells = [f"({low}-{high}]: {statistics.mean(r):.0f} ± {statistics.pstdev(r):.0f} ({len(r)}, lowest {min(r):.0f})"
                 for (low, high), r in windows.items()]
        print(f"{run.name}: " + "; ".join(cells))
    if len(runs) > 1:
        cells = []
        for low, high in WINDOWS:
            found = [w[(low, high)] for w in by_run.values() if (low, high) in w]
            if len(found) > 1:
                means = [statistics.mean(r) for r in found]
                cells.append(f"({low}-{high}]: {statistics.mean(means):.0f} ± {statistics.stdev(means):.0f} "
                             f"({len(found)} runs, lowest {min(map(min, found)):.0f})")
        print("across runs: " + "; ".join(cells))
    for run in runs:
        print(act_windows(run))


if __name__ == "__main__":
    main()
