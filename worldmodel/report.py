"""`python -m worldmodel.report <run dirs>`: a multi-seed table and learning curves of runs.

    python -m worldmodel.report runs/offline --out docs/offline

Runs (directories holding summary.json, searched recursively) are grouped by dataset (or task,
for online runs) and planner; each group's score is the mean over its seeds, with the sample
standard deviation and a 95% confidence interval (Student's t). Offline runs score their
`normalized_score` (the mean of the last offline.score_last evaluations, D4RL-normalised),
online runs their normalised or raw final evaluation. With --out: report.md, report.json and
one learning-curve PNG per dataset or task (the mean over seeds, the band their min to max).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from worldmodel.metrics import write_json

# Student's t, two-sided 95%, by degrees of freedom (beyond 30: the normal's 1.96)
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories (those with a summary.json) at or under `paths`, sorted; a path with none
    is a ValueError naming it."""
    runs = []
    for path in map(Path, paths):
        found = [path] if (path / "summary.json").is_file() else sorted(p.parent for p in path.rglob("summary.json"))
        if not found:
            raise ValueError(f"{path}: no run directory (summary.json) there or below it")
        runs += found
    return sorted(set(runs))


def load_run(run_dir: Path) -> dict:
    """One run's group, seed, score and learning curve [(step, score)] from its files."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{run_dir}/summary.json is not JSON ({e}); is the run being written right now?") from None
    offline = "dataset" in summary and summary.get("env_steps", 0) == 0
    group = summary.get("dataset_name") or summary.get("dataset") or summary["env"]
    if "dataset" in summary and not offline:
        group += " (offline, then online)"  # not the same protocol as an offline-only run
    kind, key = ("offline_eval", "offline_updates") if offline else ("eval", "env_steps")
    curve = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a half-written last line (a run killed mid-write)
                continue
            if row.get("kind") == kind:
                curve.append((row["step"], row.get("score", row.get("ret"))))
    score = summary.get("normalized_score", summary.get("final_eval_return"))
    return {"dir": str(run_dir), "group": group, "planner": summary["planner"], "seed": summary["seed"],
            "status": summary["status"], "score": score, "progress": summary.get(key, 0), "curve": curve,
            "normalized": "normalized_score" in summary, "data_score": summary.get("dataset_normalized_score")}  # fmt: skip


def aggregate(scores: list[float]) -> dict:
    """n, mean, sample std and the 95% confidence interval's half-width of `scores`."""
    n = len(scores)
    mean = statistics.fmean(scores) if n else math.nan
    std = statistics.stdev(scores) if n > 1 else math.nan
    t = _T95[n - 2] if 1 < n <= len(_T95) + 1 else 1.96  # (df = n - 1)
    half = t * std / math.sqrt(n) if n > 1 else math.nan
    return {"n": n, "mean": mean, "std": std, "ci95": half}


def report(runs: list[dict]) -> list[dict]:
    """One row per (group, planner): the aggregate over its runs, their seeds and progress."""
    groups = defaultdict(list)
    for run in runs:
        groups[run["group"], run["planner"]].append(run)
    rows = []
    for (group, planner), members in sorted(groups.items()):
        scored = [r for r in members if r["score"] is not None]
        rows.append({"group": group, "planner": planner, **aggregate([r["score"] for r in scored]),
                     "seeds": sorted(r["seed"] for r in members), "scores": [r["score"] for r in scored],
                     "progress": sorted({r["progress"] for r in members}),
                     "unfinished": sum(r["status"] != "finished" for r in members),
                     "normalized": all(r["normalized"] for r in scored),
                     "data_score": next((r["data_score"] for r in members if r["data_score"] is not None), None)})  # fmt: skip
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table: mean +- std [95% CI] over seeds, per-seed scores, progress."""
    lines = ["| dataset / task | planner | score: mean ± std [95% CI] | seeds | per seed | updates or steps |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        fmt = lambda x: "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"  # noqa: E731
        group = r["group"] + (f" (data {r['data_score']:.1f})" if r["data_score"] is not None else "")
        score = f"{fmt(r['mean'])} ± {fmt(r['std'])} [{fmt(r['mean'] - r['ci95'])}, {fmt(r['mean'] + r['ci95'])}]"
        low, high = r["progress"][0], r["progress"][-1]
        progress = f"{low:,}" if low == high else f"{low:,}-{high:,}"
        unfinished = f" ({r['unfinished']} unfinished)" if r["unfinished"] else ""
        lines.append(f"| {group} | {r['planner']} | {score} | {r['n']} | {', '.join(fmt(s) for s in r['scores'])} | "
                     f"{progress}{unfinished} |")  # fmt: skip
    return "\n".join(lines)


def plot_curves(runs: list[dict], out: Path) -> list[Path]:
    """One PNG per group: each planner's mean curve over seeds, the band from min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_group = defaultdict(lambda: defaultdict(list))
    for run in runs:
        by_group[run["group"]][run["planner"]].append(run)
    for group, planners in sorted(by_group.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for planner, members in sorted(planners.items()):
            steps = sorted({s for r in members for s, v in r["curve"] if v is not None})
            points = [[v for r in members for s, v in r["curve"] if s == step and v is not None] for step in steps]
            means = [statistics.fmean(p) for p in points]
            ax.plot(steps, means, label=f"{planner} ({len(members)} seeds)")
            ax.fill_between(steps, [min(p) for p in points], [max(p) for p in points], alpha=0.2)
        ax.set(title=group, xlabel="agent updates (offline) or env steps", ylabel="score")
        ax.legend()
        ax.grid(alpha=0.3)
        path = out / f"{group.replace('/', '_')}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m worldmodel.report", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="run directories, or directories holding them")
    parser.add_argument("--out", help="write report.md, report.json and the learning-curve PNGs here")
    args = parser.parse_args(argv)
    try:
        runs = [load_run(d) for d in find_runs(args.paths)]
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    rows = report(runs)
    table = markdown(rows)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(table + "\n")
        write_json({"rows": rows, "runs": [{k: v for k, v in r.items() if k != "curve"} for r in runs]},
                   out / "report.json")  # fmt: skip
        for path in plot_curves(runs, out):
            print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
