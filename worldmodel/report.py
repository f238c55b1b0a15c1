"""`python -m worldmodel.report <run or sweep dirs>`: multi-seed tables and learning curves.

    python -m worldmodel.report runs/offline runs/multirun/2026-12-01 --out docs/offline

Runs (directories holding summary.json, searched recursively) are grouped by dataset (or task,
for online runs) and planner, and apart where their settings (config.yaml) differ: the row's
planner then reads, say, "mopo (planner.penalty=5.0)", the overrides that set it apart. Each group's final score is the mean over its runs with the
sample standard deviation, a 95% percentile-bootstrap confidence interval of the mean (10,000
resamples, fixed seed) and Student's t interval; the interquartile mean (IQM, rliable's robust
aggregate: the mean of the middle half) with its own bootstrap interval where a group has 4
runs or more; the mean best evaluation; the model-selected score (per run, the evaluation whose
return estimated in the model, `model_ret`, was best: what an offline user can pick without
evaluation episodes; mean ± std); and the fingerprints of the datasets its runs learned
from (worldmodel.datasets.fingerprint; a group on more than one, or mixing runs whose data went
unrecorded, is flagged). Offline runs score their `normalized_score` (the
mean of the last offline.score_last evaluations, D4RL-normalised; with offline.select=model_score,
the selected snapshot's evaluation: such runs get a row of their own), online runs their normalised
or raw final evaluation. With --out: report.md, summary.json (per task and planner: n, mean,
ci_low, ci_high, iqm, ...), report.json (with every run) and one learning-curve PNG per dataset
or task (the mean over runs, the band its 95% bootstrap interval).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

from worldmodel.metrics import write_json
from worldmodel.ope import model_selected

# Student's t, two-sided 95%, by degrees of freedom (beyond 30: the normal's 1.96)
BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, IQM_MIN_RUNS = 10_000, 0, 4
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories (those with a summary.json) at or under `paths`, sorted; a path with none
    is a ValueError naming it."""
    runs = []
    for path in map(Path, paths):
        found = [p.parent for p in ([path / "summary.json"] if (path / "summary.json").is_file()
                                    else sorted(path.rglob("summary.json"))) if _is_run_summary(p)]  # fmt: skip
        if not found:
            raise ValueError(f"{path}: no run directory (summary.json) there or below it")
        runs += found
    return sorted(set(runs))


def _is_run_summary(path: Path) -> bool:
    """A run's summary.json (not, say, a report's own summary.json of groups)."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return True  # (load_run says what is wrong with it)
    return isinstance(summary, dict) and {"status", "planner", "env"} <= summary.keys()


# config keys that say where and how a run ran, not what it ran: never a reason to set runs apart
_NOT_SETTINGS = {"seed", "run_dir", "resume", "threads", "device", "pretrained", "dataset"}


def load_settings(run_dir: Path) -> dict:
    """The run's config.yaml flattened to dotted keys ({"planner.penalty": 2.5, ...}), less
    _NOT_SETTINGS; a top-level key its config predates takes today's default (configs/config.yaml),
    so an older run is compared by what it ran; {} for a run without one."""
    path = run_dir / "config.yaml"
    return {**_run_defaults(), **_flatten(_read_yaml(path))} if path.is_file() else {}


@functools.cache
def _run_defaults() -> dict:
    """configs/config.yaml's own settings, flattened (not the planner group's: those differ by planner)."""
    from worldmodel.config import CONFIG_DIR

    config = _read_yaml(CONFIG_DIR / "config.yaml")
    return {k: v for k, v in _flatten(config).items() if not k.startswith(("defaults", "hydra.", "planner."))}


def _read_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def _flatten(node: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif f"{prefix}{key}" not in _NOT_SETTINGS:
            flat[f"{prefix}{key}"] = value
    return flat


def label_variants(runs: list[dict]) -> None:
    """Set each run's "variant": its planner, plus the settings in which runs of the same group and
    planner differ (keys every one of them records), e.g. "mopo (planner.penalty=5.0)"."""
    buckets = defaultdict(list)
    for run in runs:
        buckets[run["group"], run["planner"]].append(run)
    for (_, planner), members in buckets.items():
        shared = set.intersection(*(set(r["settings"]) for r in members))
        differ = sorted(k for k in shared if len({repr(r["settings"][k]) for r in members}) > 1)
        for run in members:
            told = ", ".join(f"{k}={run['settings'][k]}" for k in differ)
            run["variant"] = f"{planner} ({told})" if told else planner


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
    curve, evaluations = [], []  # (step, score); the evaluation records
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a half-written last line (a run killed mid-write)
                continue
            if row.get("kind") == kind:
                curve.append((row["step"], row.get("score", row.get("ret"))))
                evaluations.append(row)
    best_estimate = model_selected(evaluations)  # (older runs name no selection in their summary)
    picked = best_estimate.get("score", best_estimate.get("ret")) if best_estimate else None
    score = summary.get("normalized_score", summary.get("final_eval_return"))
    best = summary.get("best_normalized_score", summary.get("best_eval_return"))
    return {"dir": str(run_dir), "group": group, "planner": summary["planner"], "seed": summary["seed"],
            "status": summary["status"], "score": score, "best": best,
            "selected": summary.get("selected_normalized_score", summary.get("selected_eval_return", picked)),
            "progress": summary.get(key, 0), "curve": curve,
            "normalized": "normalized_score" in summary, "data_score": summary.get("dataset_normalized_score"),
            "data": summary.get("dataset_fingerprint"), "settings": load_settings(run_dir)}  # fmt: skip


def aggregate(scores: list[float]) -> dict:
    """n, mean, sample std and the half-width of Student's t 95% interval (ci95) of `scores`;
    the mean's 95% bootstrap interval (ci_low, ci_high); the IQM and its interval (4+ runs)."""
    n = len(scores)
    mean = statistics.fmean(scores) if n else math.nan
    std = statistics.stdev(scores) if n > 1 else math.nan
    t = _T95[n - 2] if 1 < n <= len(_T95) + 1 else 1.96  # (df = n - 1)
    half = t * std / math.sqrt(n) if n > 1 else math.nan
    ci_low, ci_high = bootstrap_ci(scores, np.mean)
    out = {"n": n, "mean": mean, "std": std, "ci95": half, "ci_low": ci_low, "ci_high": ci_high}
    if n >= IQM_MIN_RUNS:
        out["iqm"] = float(iqm(np.asarray(scores, dtype=float)))
        out["iqm_ci_low"], out["iqm_ci_high"] = bootstrap_ci(scores, iqm)
    return out


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean along `axis`: the mean after dropping floor(n/4) values at each end
    (scipy.stats.trim_mean(x, 0.25), as rliable computes it)."""
    x = np.sort(x, axis=axis)
    n = x.shape[axis]
    k = n // 4
    return np.take(x, range(k, n - k), axis=axis).mean(axis=axis)


def bootstrap_ci(scores: list[float], statistic=np.mean, level: float = 0.95,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:  # fmt: skip
    """Percentile bootstrap interval of statistic(scores): the (1-level)/2 and (1+level)/2
    quantiles of the statistic over `resamples` resamples with replacement; NaNs under 2 scores."""
    x = np.asarray(scores, dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    rows = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    values = statistic(x[rows], axis=-1)
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def report(runs: list[dict]) -> list[dict]:
    """One row per (group, planner variant): the aggregate over its runs, their seeds and progress."""
    label_variants(runs)
    groups = defaultdict(list)
    for run in runs:
        groups[run["group"], run["variant"]].append(run)
    rows = []
    for (group, planner), members in sorted(groups.items()):
        scored = [r for r in members if r["score"] is not None]
        bests = [r["best"] for r in members if r["best"] is not None]
        selected = [r["selected"] for r in scored if r.get("selected") is not None]
        selected = selected if len(selected) == len(scored) else []  # (a row's figure covers all its runs or none)
        rows.append({"group": group, "planner": planner, **aggregate([r["score"] for r in scored]),
                     "best": statistics.fmean(bests) if bests else None,
                     "selected_scores": selected, "selected_mean": statistics.fmean(selected) if selected else None,
                     "selected_std": statistics.stdev(selected) if len(selected) > 1 else None,
                     "seeds": sorted(r["seed"] for r in members), "scores": [r["score"] for r in scored],
                     "progress": sorted({r["progress"] for r in members}),
                     "unfinished": sum(r["status"] != "finished" for r in members),
                     "normalized": all(r["normalized"] for r in scored),
                     "data_score": next((r["data_score"] for r in members if r["data_score"] is not None), None),
                     "datasets": sorted({r["data"] for r in members if r.get("data")}),
                     "unknown_data": sum(not r.get("data") for r in members)})  # fmt: skip
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table: final score mean +- std [95% bootstrap CI], IQM, mean best,
    model-selected mean +- std, runs, per-run scores, progress."""
    lines = ["| dataset / task | planner | final: mean ± std [95% CI] | IQM [95% CI] | best | model-selected | runs | "
             "per run | updates or steps |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        fmt = lambda x: "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"  # noqa: E731
        group = r["group"] + (f" (data {r['data_score']:.1f})" if r["data_score"] is not None else "")
        if len(r["datasets"]) > 1:  # (seeds on different data: not one experiment)
            group += f" **on {len(r['datasets'])} different datasets: {', '.join(r['datasets'])}**"
        if r["datasets"] and r.get("unknown_data"):  # (runs from before fingerprints, beside ones with)
            group += f" **{r['unknown_data']} run(s) on unrecorded data**"
        score = f"{fmt(r['mean'])} ± {fmt(r['std'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"
        robust = f"{fmt(r['iqm'])} [{fmt(r['iqm_ci_low'])}, {fmt(r['iqm_ci_high'])}]" if "iqm" in r else "-"
        selected = f"{fmt(r['selected_mean'])} ± {fmt(r['selected_std'])}" if r["selected_scores"] else "-"
        low, high = r["progress"][0], r["progress"][-1]
        progress = f"{low:,}" if low == high else f"{low:,}-{high:,}"
        unfinished = f" ({r['unfinished']} unfinished)" if r["unfinished"] else ""
        lines.append(f"| {group} | {r['planner']} | {score} | {robust} | {fmt(r['best'])} | {selected} | {r['n']} | "
                     f"{', '.join(fmt(s) for s in r['scores'])} | {progress}{unfinished} |")  # fmt: skip
    return "\n".join(lines)


def plot_curves(runs: list[dict], out: Path) -> list[Path]:
    """One PNG per group: each planner variant's mean curve over runs, the band its 95% bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    label_variants(runs)
    by_group = defaultdict(lambda: defaultdict(list))
    for run in runs:
        by_group[run["group"]][run["variant"]].append(run)
    for group, planners in sorted(by_group.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for planner, members in sorted(planners.items()):
            steps = sorted({s for r in members for s, v in r["curve"] if v is not None})
            points = [[v for r in members for s, v in r["curve"] if s == step and v is not None] for step in steps]
            means = [statistics.fmean(p) for p in points]
            ax.plot(steps, means, label=f"{planner} ({len(members)} runs)")
            bands = [bootstrap_ci(p, resamples=2_000) if len(p) > 1 else (p[0], p[0]) for p in points]
            ax.fill_between(steps, [b[0] for b in bands], [b[1] for b in bands], alpha=0.2)
        ax.set(title=group, xlabel="agent updates (offline) or env steps", ylabel="score")
        ax.legend()
        ax.grid(alpha=0.3)
        path = out / f"{group.replace('/', '_')}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


_SUMMARY_KEYS = ("group", "planner", "n", "mean", "std", "ci_low", "ci_high", "ci95", "iqm", "iqm_ci_low",
                 "iqm_ci_high", "best", "selected_mean", "selected_std", "selected_scores", "scores", "seeds", "progress", "unfinished", "normalized", "datasets", "unknown_data")  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m worldmodel.report", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="run directories, or directories holding them")
    parser.add_argument("--out", help="write report.md, summary.json, report.json and the learning-curve PNGs here")
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
        write_json({f"{r['group']}/{r['planner']}": {k: r[k] for k in _SUMMARY_KEYS if k in r} for r in rows},
                   out / "summary.json")  # fmt: skip
        write_json({"rows": rows, "runs": [{k: v for k, v in r.items() if k not in ("curve", "settings")} for r in runs]},
                   out / "report.json")  # fmt: skip
        for path in plot_curves(runs, out):
            print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
