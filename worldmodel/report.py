"""`python -m worldmodel.report <run or sweep dirs>`: multi-seed tables and learning curves.

    python -m worldmodel.report runs/offline runs/multirun/2026-12-01 --out docs/offline

Runs (directories holding summary.json, searched recursively) are grouped by dataset (or task,
for online runs) and planner, and apart where their settings (config.yaml) differ: the row's
planner then reads, say, "mopo (planner.penalty=5.0)", the overrides that set it apart
(`--pool planner.agent.precision` keeps runs that differ only in that setting in one row, which names
the mix). Each group's final score is the mean over its runs with the
sample standard deviation, a 95% percentile-bootstrap confidence interval of the mean (10,000
resamples, fixed seed) and Student's t interval; the interquartile mean (IQM, rliable's robust
aggregate: the mean of the middle half) with its own bootstrap interval where a group has 4
runs or more; the mean best evaluation; the model-selected score (per run, the evaluation whose
return estimated in the model, `model_ret`, was best: what an offline user can pick without
evaluation episodes; mean ± std); and the fingerprints of the datasets its runs learned
from (worldmodel.datasets.fingerprint; a group on more than one, or mixing runs whose data went
unrecorded, is flagged). Offline runs score the mean of their last offline.score_last
evaluations (D4RL-normalised where the task has reference returns; those so far for an
unfinished run, flagged in the updates column), also when
offline.select=model_score ended the run on another snapshot (that snapshot's evaluation is the
model-selected column; such runs get a row of their own), online runs their normalised or raw
final evaluation. With --out: report.md, summary.json (per task and planner: n, mean,
ci_low, ci_high, iqm, ...), report.json (with every run) and one learning-curve PNG per dataset
or task (the mean over runs, the band its 95% bootstrap interval).

Runs on the robot (`python -m planners.realtime`) are grouped by task, control rate and latency and
scored by their final agent's evaluation; a table of their own gives the evaluations at each eval_at
step, the robot's own episodes per window of real steps, each run's lowest episode after the first
1,000 steps (FOWM's no-collapse check) and the controller's act p99, deadline misses and fresh plans.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from worldmodel.config import PREDATED, file_in_the_way
from worldmodel.metrics import read_records, save_figure, write_json
from worldmodel.ope import model_selected

# Student's t, two-sided 95%, by degrees of freedom (beyond 30: the normal's 1.96)
BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, IQM_MIN_RUNS = 10_000, 0, 4
# the fewest runs whose table interval is the percentile bootstrap's (below: Student's t): with 3 runs
# every resample of the lowest alone has probability 1/27 > 2.5%, so the bootstrap's interval is [min, max]
BOOTSTRAP_MIN_RUNS = 8
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories (those with a summary.json) at or under `paths`, sorted, each real directory
    once (a results folder may link a run another path names too); a path with none is a
    ValueError naming it."""
    runs, seen = [], set()
    for path in map(Path, paths):
        if not path.exists():
            raise ValueError(f"{path}: no such directory")
        found = [p.parent for p in ([path / "summary.json"] if (path / "summary.json").is_file()
                                    else _summaries_under(path)) if _is_run_summary(p)]  # fmt: skip
        if not found:
            raise ValueError(f"{path}: no run directory (summary.json) there or below it")
        for run in found:
            if (real := os.path.realpath(run)) not in seen:
                seen.add(real)
                runs.append(run)
    return sorted(runs)


def _summaries_under(root: Path) -> list[Path]:
    """Every summary.json below root, through linked directories too (a results folder may link
    runs kept elsewhere), each real directory once."""
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # (a link back up the tree, or a second link to one run)
            dirs.clear()
            continue
        seen.add(real)
        if "summary.json" in files:
            found.append(Path(folder) / "summary.json")
    return sorted(found)


def _is_run_summary(path: Path) -> bool:
    """A run's summary.json (not, say, a report's own summary.json of groups)."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return True  # (load_run says what is wrong with it)
    return isinstance(summary, dict) and {"status", "planner", "env"} <= summary.keys()


# config keys that say where and how a run ran, not what it ran: never a reason to set runs apart
_NOT_SETTINGS = {"seed", "run_dir", "resume", "threads", "device", "pretrained", "dataset",
                 "planner.agent.compile_critic_step", "planner.value_agent.compile_critic_step"}  # (speed alone)




def load_settings(run_dir: Path, command: str = "config") -> dict:
    """The run's config.yaml flattened to dotted keys ({"planner.penalty": 2.5, ...}), less
    _NOT_SETTINGS but for whether it began from a pretrained agent ("pretrained": True/False, its
    path being per seed); a key its config predates takes the value it ran with: PREDATED's where the key's
    arrival changed behaviour, else today's default (the command's configs/<command>.yaml, e.g.
    realtime for planners.realtime, and the planner's config dataclass); {} for a run without one."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    config = _read_yaml(path)
    own = _flatten(config) | {"pretrained": bool(config.get("pretrained"))}  # (whether, not which: paths differ by seed)
    return {**_run_defaults(command), **_planner_defaults(own.get("planner.name")), **PREDATED.get(command, {}), **own}


@functools.cache
def _run_defaults(command: str) -> dict:
    """configs/<command>.yaml's own settings, flattened (not the planner group's: those differ by planner)."""
    from worldmodel.config import CONFIG_DIR

    config = _read_yaml(CONFIG_DIR / f"{command}.yaml")
    return {k: v for k, v in _flatten(config).items() if not k.startswith(("defaults", "hydra.", "planner."))}


@functools.cache
def _planner_defaults(name: str | None) -> dict:
    """Today's settings of planner `name` (its config dataclass), flattened under "planner."; {} for
    a name there is no planner of."""
    from planners import planner_defaults

    return _flatten({"planner": planner_defaults().get(name, {})})


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


def label_variants(runs: list[dict], pooled: tuple[str, ...] = ()) -> None:
    """Set each run's "variant": its planner, plus the settings in which runs of the same group and
    planner differ (keys every one of them records), e.g. "mopo (planner.penalty=5.0)". Runs that
    differ only in `pooled` keys (the user's call: say, a precision that does not change the
    method) share a variant that names the mix, "ravl (pooled planner.agent.precision: bf16 x2, fp32 x1)"."""
    buckets = defaultdict(list)
    for run in runs:
        buckets[run["group"], run["planner"]].append(run)
    for (_, planner), members in buckets.items():
        shared = set.intersection(*(set(r["settings"]) for r in members))
        differ = sorted(k for k in shared if len({_setting_value(r["settings"][k]) for r in members}) > 1)
        apart = [k for k in differ if k not in pooled]
        for run in members:
            # (each key told by its first run's spelling of the value: 1 and 1.0 are one row)
            alike = [m for m in members if all(_setting_value(m["settings"][k]) == _setting_value(run["settings"][k])
                                               for k in apart)]  # fmt: skip
            told = [f"{k}={alike[0]['settings'][k]}" for k in apart]
            told += [f"pooled {k}: " + ", ".join(f"{v} x{n}" for v, n in _counts(alike, k))
                     for k in differ if k in pooled and len(_counts(alike, k)) > 1]  # fmt: skip
            run["variant"] = f"{planner} ({'; '.join(told)})" if told else planner


def _counts(runs: list[dict], key: str) -> list[tuple[object, int]]:
    """Each value of setting `key` among `runs` (1 and 1.0 one value) with how many ran with it,
    numbers in numeric order."""
    counts: dict[str, list] = {}
    for run in runs:
        value = run["settings"][key]
        counts.setdefault(_setting_value(value), [value, 0])[1] += 1
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    return sorted(((v, n) for v, n in counts.values()), key=lambda c: (0, c[0], "") if number(c[0]) else (1, 0, repr(c[0])))


def _setting_value(value) -> str:
    """A setting as compared between runs: numbers by value (1 and 1.0 are one setting)."""
    return repr(float(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)


def load_run(run_dir: Path) -> dict:
    """One run's group, seed, score and learning curve [(step, score)] from its files."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{run_dir}/summary.json is not JSON ({e}); is the run being written right now?") from None
    if "control_hz" in summary:
        return _robot_run(run_dir, summary)
    # offline-only by the run's configured env_steps (the summary's counts progress: an offline-then-online
    # run in its offline phase reads 0 there); runs without a config: by progress
    configured = _read_yaml(run_dir / "config.yaml").get("env_steps") if (run_dir / "config.yaml").is_file() else None
    offline = "dataset" in summary and (configured if configured is not None else summary.get("env_steps", 0)) == 0
    group = summary.get("dataset_name") or summary.get("dataset") or summary["env"]
    if "dataset" in summary and not offline:
        group += " (offline, then online)"  # not the same protocol as an offline-only run
    kind, key = ("offline_eval", "offline_updates") if offline else ("eval", "env_steps")
    evaluations = read_records(run_dir, kind)
    curve = [(row["step"], row.get("score", row.get("ret"))) for row in evaluations]  # (step, score)
    best_estimate = model_selected(evaluations)  # (older runs name no selection in their summary)
    picked = best_estimate.get("score", best_estimate.get("ret")) if best_estimate else None
    # offline: the mean of the last evaluations (the protocol's score; so far, for an unfinished
    # run) whatever snapshot the run ended on
    last = (summary.get("offline_normalized_score", summary.get("offline_eval_return")) if offline else None)
    normalized = ("offline_normalized_score" if last is not None else "normalized_score") in summary
    score = last if last is not None else summary.get("normalized_score", summary.get("final_eval_return"))
    best = summary.get("best_normalized_score", summary.get("best_eval_return"))
    if summary["status"] == "failed":  # (say, an agent that diverged: its evaluations before it are not its score)
        score = None
    return {"dir": str(run_dir), "group": group, "planner": summary["planner"], "seed": summary["seed"],
            "status": summary["status"], "score": score, "best": best,
            # (an offline-then-online run's selection is its offline phase's: no figure beside its online score)
            "selected": summary.get("selected_normalized_score", summary.get("selected_eval_return", picked))
            if offline or "dataset" not in summary else None,
            "progress": summary.get(key, 0), "curve": curve,
            "normalized": normalized, "data_score": summary.get("dataset_normalized_score"),
            "data": summary.get("dataset_fingerprint"), "settings": load_settings(run_dir)}  # fmt: skip


def _robot_run(run_dir: Path, summary: dict) -> dict:
    """A run on the (simulated) robot, `planners.realtime`: scored by its final agent's evaluation, its
    curve the evaluations of the agents saved at eval_at; "robot" holds its own episodes [(real step
    at the end, return)] and the controller's figures."""
    evaluations = {int(step): ret for step, ret in summary.get("eval_returns", {}).items()}
    if summary.get("final_eval_return") is not None:
        evaluations[summary["real_steps"]] = summary["final_eval_return"]
    episodes = [(row["step"], row["ret"]) for row in read_records(run_dir, "episode")]
    robot = {"episodes": episodes, **{k: summary.get(k) for k in _ROBOT_KEYS}}
    group = f"{summary['env']} on the robot, {summary['control_hz']:g} Hz, {summary.get('latency_ms', 0):g} ms latency"
    return {"dir": str(run_dir), "group": group, "planner": summary["planner"], "seed": summary["seed"],
            "status": summary["status"], "score": summary.get("final_eval_return"),
            "best": max((ret for step, ret in evaluations.items() if step > 0), default=None), "selected": None, "progress": summary.get("real_steps", 0),
            "curve": sorted(evaluations.items()), "normalized": False, "data_score": None, "data": None,
            "settings": load_settings(run_dir, "realtime"), "robot": robot}  # fmt: skip


# a fine-tuned robot's episodes should not fall below the pretrained agent's level after this many real
# steps (FOWM's setting: no collapse at the switch); the controller's figures a robot row reports
ROBOT_SETTLED = 1000
_ROBOT_KEYS = ("act_latency_p99_ms", "deadline_miss_rate", "fresh_rate", "fallback_rate")


def robot_windows(real_steps: int) -> list[tuple[int, int]]:
    """Spans (lo, hi] of real steps over which the robot's own episodes are averaged, by the step
    they ended at, cut at 0, 1k, 5k, N/2 and N (in order, those within N real steps: for N=20k
    (0, 1k], (1k, 5k], (5k, 10k], (10k, 20k]; for N=8k (0, 1k], (1k, 4k], (4k, 5k], (5k, 8k])."""
    cuts = sorted({c for c in (0, ROBOT_SETTLED, 5000, real_steps // 2, real_steps) if 0 <= c <= real_steps})
    return list(zip(cuts[:-1], cuts[1:]))


def robot_figures(runs: list[dict]) -> dict:
    """Over runs on the robot: the evaluations at each step and the robot's own episodes per window
    (mean and std over runs of each run's mean), each run's lowest episode after ROBOT_SETTLED
    steps by seed, the worst act p99 and the mean deadline-miss, fresh and fallback rates."""
    spread = lambda xs: (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan)  # noqa: E731
    steps = sorted({s for r in runs for s, _ in r["curve"]})
    evals = {s: spread(v) for s in steps if (v := [ret for r in runs for t, ret in r["curve"] if t == s])}
    windows = {}
    for lo, hi in robot_windows(min(r["progress"] for r in runs)):
        means = [statistics.fmean(xs) for r in runs if (xs := [x for t, x in r["robot"]["episodes"] if lo < t <= hi])]
        if means:
            windows[f"({lo}, {hi}]"] = spread(means)
    lowest = {r["seed"]: min((x for t, x in r["robot"]["episodes"] if t > ROBOT_SETTLED), default=math.nan)
              for r in sorted(runs, key=lambda r: r["seed"])}
    figures = {k: [r["robot"][k] for r in runs if r["robot"].get(k) is not None] for k in _ROBOT_KEYS}
    return {"runs": len(runs), "unfinished": sum(r["status"] != "finished" for r in runs),
            "evaluations": evals, "windows": windows, "lowest_after_settled": lowest,
            "act_latency_p99_ms": max(figures["act_latency_p99_ms"], default=math.nan),
            **{k: statistics.fmean(v) if v else math.nan for k, v in figures.items() if k != "act_latency_p99_ms"}}


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


def report(runs: list[dict], pooled: tuple[str, ...] = ()) -> list[dict]:
    """One row per (group, planner variant): the aggregate over its runs, their seeds and progress
    (runs differing only in `pooled` settings in one row: label_variants)."""
    label_variants(runs, pooled)
    groups = defaultdict(list)
    for run in runs:
        groups[run["group"], run["variant"]].append(run)
    rows = []
    for (group, planner), members in sorted(groups.items()):
        members = sorted(members, key=lambda r: r["seed"])  # (scores, seeds and selected_scores in one order)
        if twice := sorted(seed for seed, runs in Counter(r["seed"] for r in members).items() if runs > 1):
            why = (f"runs that differ in a pooled setting ({', '.join(pooled)}) are no more seeds" if pooled else
                   "runs that differ in what their settings do not record (say, the model they started from), or a "
                   "copy of one")  # fmt: skip
            raise ValueError(f"{group}, {planner}: seed(s) {twice} twice in one row ("
                             + ", ".join(r["dir"] for r in members if r["seed"] in twice) + f"): {why}; report them apart")
        scored = [r for r in members if r["score"] is not None]
        bests = [r["best"] for r in members if r["best"] is not None]
        selected = [r["selected"] for r in scored if r.get("selected") is not None]
        selected = selected if len(selected) == len(scored) else []  # (a row's figure covers all its runs or none)
        rows.append({"group": group, "planner": planner, **aggregate([r["score"] for r in scored]),
                     "best": statistics.fmean(bests) if bests else None,
                     "selected_scores": selected, "selected_mean": statistics.fmean(selected) if selected else None,
                     "selected_std": statistics.stdev(selected) if len(selected) > 1 else None,
                     "seeds": [r["seed"] for r in members], "scores": [r["score"] for r in scored],
                     "scored_seeds": [r["seed"] for r in scored],
                     "unscored_seeds": [r["seed"] for r in members if r["score"] is None],
                     "progress": sorted({r["progress"] for r in members}),
                     "unfinished": sum(r["status"] != "finished" for r in members),
                     "failed": sum(r["status"] == "failed" for r in members),
                     "normalized": all(r["normalized"] for r in scored),
                     "data_score": next((r["data_score"] for r in members if r["data_score"] is not None), None),
                     "datasets": sorted({r["data"] for r in members if r.get("data")}),
                     "unknown_data": sum(not r.get("data") for r in members)})  # fmt: skip
        if all("robot" in r for r in members):  # (over every run, finished or not: its "runs" and "unfinished" say how many)
            rows[-1]["robot"] = robot_figures(members)
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table: final score mean +- std [95% CI: Student's t under
    BOOTSTRAP_MIN_RUNS runs, the percentile bootstrap from there; with 3 runs the bootstrap's is
    their min and max], IQM, mean best, model-selected mean +- std, runs, per-run scores (a run
    without a score, say one whose evaluation was not finite: "-"), progress; below it, runs on the
    robot as `robot_markdown` gives them."""
    robot = [r for r in rows if "robot" in r]
    lines = ["| dataset / task | planner | final: mean ± std [95% CI] | IQM [95% CI] | best (max over evaluations: optimistic) | model-selected | runs | "
             "per run | updates or steps |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        fmt = lambda x: "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"  # noqa: E731
        group = r["group"] + (f" (data {r['data_score']:.1f})" if r["data_score"] is not None else "")
        if len(r["datasets"]) > 1:  # (seeds on different data: not one experiment)
            group += f" **on {len(r['datasets'])} different datasets: {', '.join(r['datasets'])}**"
        if r["datasets"] and r.get("unknown_data"):  # (runs from before fingerprints, beside ones with)
            group += f" **{r['unknown_data']} run(s) on unrecorded data**"
        low_ci, high_ci = (r["ci_low"], r["ci_high"]) if r["n"] >= BOOTSTRAP_MIN_RUNS else \
            (r["mean"] - r["ci95"], r["mean"] + r["ci95"])  # fmt: skip
        score = f"{fmt(r['mean'])} ± {fmt(r['std'])} [{fmt(low_ci)}, {fmt(high_ci)}]"
        robust = f"{fmt(r['iqm'])} [{fmt(r['iqm_ci_low'])}, {fmt(r['iqm_ci_high'])}]" if "iqm" in r else "-"
        selected = f"{fmt(r['selected_mean'])} ± {fmt(r['selected_std'])}" if r["selected_scores"] else "-"
        low, high = r["progress"][0], r["progress"][-1]
        progress = f"{low:,}" if low == high else f"{low:,}-{high:,}"
        unfinished = f" ({r['unfinished']} unfinished" + (f", {r['failed']} failed" if r.get("failed") else "") + ")" \
            if r["unfinished"] else ""  # fmt: skip
        unscored = r.get("unscored_seeds", [])
        runs = f"{r['n']}" + (f" (+{len(unscored)} without a score)" if unscored else "")
        per_run = [f"s{seed}: {fmt(x)}" for seed, x in zip(r["scored_seeds"], r["scores"])] + [f"s{s}: -" for s in unscored]
        lines.append(f"| {group} | {r['planner']} | {score} | {robust} | {fmt(r['best'])} | {selected} | {runs} | "
                     f"{', '.join(per_run)} | {progress}{unfinished} |")  # fmt: skip
    return "\n".join(lines) + ("\n\n" + robot_markdown(robot) if robot else "")


def robot_markdown(rows: list[dict]) -> str:
    """Runs on the robot: the evaluations at each real step and the robot's own episodes per window
    (mean ± std over runs), each run's lowest episode after ROBOT_SETTLED steps, the controller's figures."""
    missing = lambda x: x is None or math.isnan(x)  # noqa: E731
    fmt = lambda m, s=math.nan: "-" if missing(m) else f"{m:.1f}" + ("" if missing(s) else f" ± {s:.1f}")  # noqa: E731
    rate = lambda x, digits: "-" if missing(x) else f"{x:.{digits}%}"  # noqa: E731
    lines = [f"| robot | planner | evaluations (real steps: return) | robot episodes (ended in real steps: return) | "
             f"lowest robot episode after {ROBOT_SETTLED:,}, per run | act p99 ms (worst) | deadline misses | fresh "
             f"plans | fallbacks | runs |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        f = r["robot"]
        evals = "; ".join(f"{s:,}: {fmt(*v)}" for s, v in f["evaluations"].items())
        windows = "; ".join(f"{w}: {fmt(*v)}" for w, v in f["windows"].items())
        lowest = ", ".join(f"s{seed}: {'-' if missing(x) else f'{x:.0f}'}" for seed, x in f["lowest_after_settled"].items())
        p99 = "-" if missing(f["act_latency_p99_ms"]) else f"{f['act_latency_p99_ms']:.2f}"
        runs = f"{f['runs']}" + (f" ({f['unfinished']} unfinished)" if f["unfinished"] else "")
        lines.append(f"| {r['group']} | {r['planner']} | {evals} | {windows} | {lowest} | {p99} | "
                     f"{rate(f['deadline_miss_rate'], 2)} | {rate(f['fresh_rate'], 1)} | {rate(f['fallback_rate'], 1)} | "
                     f"{runs} |")  # fmt: skip
    return "\n".join(lines)


def shared_points(runs: list[dict]) -> list[tuple[int, list[float]]]:
    """(step, every run's score there) at the steps where every run has an evaluation: a mean over
    the runs that happen to have one (an unfinished run, one evaluated off the grid after a resume)
    would jump from one set of runs to another."""
    runs = [r for r in runs if any(v is not None for _, v in r["curve"])]  # (one not evaluated yet has no say)
    steps = sorted({s for r in runs for s, v in r["curve"] if v is not None})
    points = [[v for r in runs for s, v in r["curve"] if s == step and v is not None] for step in steps]
    return [(step, p) for step, p in zip(steps, points) if len(p) == len(runs)]


def plot_curves(runs: list[dict], out: Path, pooled: tuple[str, ...] = ()) -> list[Path]:
    """One PNG per group: each planner variant's mean curve over runs, the band its 95% bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    label_variants(runs, pooled)
    by_group = defaultdict(lambda: defaultdict(list))
    for run in runs:
        by_group[run["group"]][run["variant"]].append(run)
    for group, planners in sorted(by_group.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for planner, members in sorted(planners.items()):
            common = shared_points(members)  # (each run's own curve faintly beside it: nothing hidden)
            line = ax.plot([s for s, _ in common], [statistics.fmean(p) for _, p in common],
                           label=f"{planner} ({len(members)} runs)")[0]  # fmt: skip
            bands = [bootstrap_ci(p, resamples=2_000) if len(p) > 1 else (p[0], p[0]) for _, p in common]
            ax.fill_between([s for s, _ in common], [b[0] for b in bands], [b[1] for b in bands], alpha=0.2,
                            color=line.get_color())  # fmt: skip
            for run in members if len(members) > 1 else ():
                own = [(s, v) for s, v in run["curve"] if v is not None]
                ax.plot([s for s, _ in own], [v for _, v in own], color=line.get_color(), alpha=0.3, linewidth=0.8)
        ax.set(title=group, xlabel="agent updates (offline), agent decisions or real steps", ylabel="score")
        ax.legend()
        ax.grid(alpha=0.3)
        path = out / f"{re.sub(r'[^A-Za-z0-9.+-]+', '_', group).strip('_')}.png"  # (no spaces or commas)
        fig.tight_layout()
        save_figure(fig, path)
        written.append(path)
    return written


_SUMMARY_KEYS = ("group", "planner", "n", "mean", "std", "ci_low", "ci_high", "ci95", "iqm", "iqm_ci_low",
                 "iqm_ci_high", "best", "selected_mean", "selected_std", "selected_scores", "scores", "scored_seeds", "seeds", "progress", "unfinished", "normalized", "datasets", "unknown_data", "robot")  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m worldmodel.report", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="run directories, or directories holding them")
    parser.add_argument("--out", help="write report.md, summary.json, report.json and the learning-curve PNGs here")
    parser.add_argument("--raw", action="store_true",
                        help="with --out: also copy each run's metrics.jsonl, summary.json and config.yaml to out/raw/")
    parser.add_argument("--pool", action="append", default=[], metavar="KEY",
                        help="a setting (dotted config key, e.g. planner.agent.precision) whose values do not set "
                             "runs apart: runs differing only in it share a row that names the mix (repeatable)")
    args = parser.parse_args(argv)
    if args.raw and not args.out:
        raise SystemExit("error: --raw copies the runs' files beside the report: give --out <dir> too")
    if args.out and (there := file_in_the_way(args.out)) is not None:
        raise SystemExit(f"error: --out {args.out}: {there} is a file; give a directory for the report")
    try:
        runs = [load_run(d) for d in find_runs(args.paths)]
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    pooled = tuple(args.pool)
    if never := [k for k in pooled if k in _NOT_SETTINGS]:
        raise SystemExit(f"error: --pool {never[0]}: runs are never set apart by it (nor by seed, paths or threads)")
    if unknown := [k for k in pooled if not any(k in r["settings"] for r in runs)]:
        raise SystemExit(f"error: --pool {unknown[0]}: no run records that setting (dotted config keys, e.g. "
                         "planner.agent.precision; see a run's config.yaml)")  # fmt: skip
    try:
        rows = report(runs, pooled)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
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
        for path in plot_curves(runs, out, pooled):
            print(f"wrote {path}")
        if args.raw:
            print(f"copied {copy_raw(runs, out / 'raw')} files to {out / 'raw'}")
    return rows


_RAW_FILES = ("metrics.jsonl", "summary.json", "config.yaml")


def copy_raw(runs: list[dict], raw: Path) -> int:
    """Each run's metrics.jsonl, summary.json and config.yaml as raw/<run>-<file> (<run>: its
    directory's name, or parent_name where two runs share a name); returns how many were copied."""
    names = [Path(r["dir"]).name for r in runs]
    raw.mkdir(parents=True, exist_ok=True)
    copied = 0
    for run, name in zip(runs, names):
        path = Path(run["dir"])
        if names.count(name) > 1:
            name = f"{path.parent.name}_{name}"
        for file in _RAW_FILES:
            if (path / file).is_file():
                (raw / f"{name}-{file}").write_bytes((path / file).read_bytes())
                copied += 1
    return copied


if __name__ == "__main__":
    main()
