"""Robot runs' own episodes by the real step they ended in, in issue #11's windows
(0-1k], (1k-5k], (5k-10k], (10k-20k]: mean ± std (count, lowest), from each run's metrics.jsonl.

    python docs/results/scripts/robot_windows.py runs/realtime/<run> [...]

(`python -m worldmodel.report` groups runs by settings and splits each run into its own windows;
this keeps the issue's fixed ones, run by run.)
"""

import json
import statistics
import sys
from pathlib import Path

WINDOWS = [(0, 1000), (1000, 5000), (5000, 10000), (10000, 20000)]

for run in map(Path, sys.argv[1:]):
    episodes = [json.loads(line) for line in open(run / "metrics.jsonl") if '"kind": "episode"' in line]
    cells = []
    for low, high in WINDOWS:
        returns = [e["ret"] for e in episodes if low < e["step"] <= high]
        if returns:
            cells.append(f"({low}-{high}]: {statistics.mean(returns):.0f} ± {statistics.pstdev(returns):.0f} "
                         f"({len(returns)}, lowest {min(returns):.0f})")
    print(f"{run.name}: " + "; ".join(cells))
