"""Issue #12's arms at a glance: per arm, each seed's evaluations at two steps, the mean at the
later one, and how many training episodes between them scored above a bar (docs/results.md's
reacher-easy arms table).

    python docs/results/scripts/arm_table.py runs/online/reacher-easy-{default,std1,g95}-10000
    python docs/results/scripts/arm_table.py runs/online/reacher-easy-default-10000 --at 5000 10000 --bar 300

Each argument is an arm's directory of seed runs (s0, s1, ...), read from their metrics.jsonl
("eval" and "episode" records); a seed without an evaluation at a step shows "-".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def arm_row(arm: Path, early: int, late: int, bar: float) -> str:
    """One markdown row: arm | seeds | evaluations at early | at late | mean at late | episodes above bar."""
    seeds, first, last, above, episodes = [], [], [], 0, 0
    for run in sorted(arm.glob("s*/metrics.jsonl")):
        rows = [json.loads(line) for line in run.read_text().splitlines() if line.strip()]
        evals = {r["step"]: r["ret"] for r in rows if r.get("kind") == "eval"}
        seeds.append(run.parent.name[1:])
        first.append(evals.get(early))
        last.append(evals.get(late))
        window = [r["ret"] for r in rows if r.get("kind") == "episode" and early < r["step"] <= late]
        above, episodes = above + sum(ret > bar for ret in window), episodes + len(window)
    done = [x for x in last if x is not None]
    show = lambda xs: ", ".join("-" if x is None else f"{x:.0f}" for x in xs)  # noqa: E731
    mean = f"**{sum(done) / len(done):.0f}**" if done else "-"
    return f"| {arm.name} | {', '.join(seeds)} | {show(first)} | {show(last)} | {mean} | {above} of {episodes} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("arms", nargs="+", type=Path, help="an arm's directory of seed runs (s0, s1, ...)")
    parser.add_argument("--at", nargs=2, type=int, default=(5000, 10000), metavar=("EARLY", "LATE"),
                        help="the two evaluation steps (default 5000 10000)")
    parser.add_argument("--bar", type=float, default=300.0, help="the training episodes' bar (default 300)")
    args = parser.parse_args()
    missing = [str(a) for a in args.arms if not any(a.glob("s*/metrics.jsonl"))]
    if missing:
        parser.error(f"no seed runs (s*/metrics.jsonl) in {', '.join(missing)}")
    early, late = args.at
    print(f"| arm | seeds | evaluation @{early} | evaluation @{late} | mean @{late} | training episodes above "
          f"{args.bar:.0f}, {early}-{late} |")
    print("|---|---|---|---|---|---|")
    for arm in args.arms:
        print(arm_row(arm, early, late, args.bar))


if __name__ == "__main__":
    main()
