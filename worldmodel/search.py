"""Hyperparameter search over the offline settings: Optuna's TPE (Bayesian optimisation, as Lu
et al., "Revisiting Design Choices in Offline Model-Based RL", 2022), trials on the multirun's
launcher (worldmodel.sweep: Ray by default).

    python -m worldmodel.search planner=mopo env=hopper dataset=data/hopper-medium-replay.hdf5 \\
        model=runs/offline/hopper-medium-replay/mopo-s0/model.pt env_steps=0 offline.updates=20000 \\
        search.trials=24 hydra.sweep.dir=runs/search/hopper-medium-replay search.save=true

Every trial is one `python -m worldmodel.run` with the fixed overrides above and its sampled
settings, in `<hydra.sweep.dir>/trial-<n>`; its objective is the run's `normalized_score` (or
final evaluation return where the task has no reference returns; with offline.select=model_score
fixed, the selected snapshot's evaluation). The space (Lu et al.'s): the uncertainty measure, the
penalty lambda (log scale), the rollout length, the real-data ratio and, where trials fit their
own model (no `model=`), the number of elites. Give `model=<model.pt>` to share one fitted model
across trials (far cheaper: the fit is most of an offline run); a run directory is refused, as
its trained agent would start every trial (a study begun with `pretrained=<run dir>` goes on
with `model=<run dir>/model.pt`). The study lives in `<dir>/study.db`: the same command resumes
it, trials cut off mid-run resume from their checkpoints. At the end `<dir>/best.yaml` holds the best
settings, and `search.save=true` writes them to configs/offline.yaml for the dataset (the
per-dataset settings `python -m worldmodel.run dataset=...` picks).
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from worldmodel.sweep import Job, JobPool, check_cores, expand, shared_overrides, split_args

@dataclass
class SearchConfig:
    """search.<key>=... settings."""

    trials: int = 20  # trials in all (a resumed study counts those it has)
    parallel: int | None = None  # trials at once (default: what the launcher runs at once)
    seed: int = 0  # the sampler's seed
    save: bool = False  # write the best settings to configs/offline.yaml for this dataset
    min_penalty: float = 0.1
    max_penalty: float = 10.0
    max_rollout_length: int = 10


SEARCH_KEYS = tuple(f.name for f in fields(SearchConfig))


def space(trial, cfg: SearchConfig, planner: str, fits_model: bool, ensemble_size: int, fixed: set[str]) -> dict:
    """Sample one trial's settings {override key: value}; keys in `fixed` (given on the command
    line) are not searched, nor the penalty's for planners without one (MBPO, RAVL)."""
    from worldmodel.uncertainty import MEASURES

    dimensions = {
        "planner.rollout_length": lambda k: trial.suggest_int(k, 1, cfg.max_rollout_length),
        "planner.real_ratio": lambda k: trial.suggest_float(k, 0.05, 0.5),
    }
    if planner == "mopo":
        dimensions["planner.uncertainty"] = lambda k: trial.suggest_categorical(k, sorted(MEASURES))
        dimensions["planner.penalty"] = lambda k: trial.suggest_float(k, cfg.min_penalty, cfg.max_penalty, log=True)
    if fits_model:
        dimensions["model.num_elites"] = lambda k: trial.suggest_int(k, max(1, ensemble_size - 4), ensemble_size)
    return {key: sample(key) for key, sample in dimensions.items() if key not in fixed}


def sampler(cfg: SearchConfig, trials_so_far: int):
    """The study's TPE sampler, its random stream seeded by the search's seed and the trials the study
    holds: seeded alike on a resume, its random start-up trials would draw the first ones' settings again."""
    import optuna

    return optuna.samplers.TPESampler(seed=cfg.seed + trials_so_far, constant_liar=True,
                                      n_startup_trials=min(8, max(2, cfg.trials // 3)))  # fmt: skip


def objective(summary: dict) -> float | None:
    """A finished trial's score: normalized_score, else its final evaluation return."""
    value = summary.get("normalized_score", summary.get("final_eval_return"))
    return None if value is None else float(value)


def save_preset(planner: str, preset: str, params: dict, path: Path) -> None:
    """Set `planner: {preset: {...}}` in configs/offline.yaml, keeping the file's other lines and
    comments (the row is replaced, or added under the planner), atomically."""
    from worldmodel.checkpoint import atomic_write

    settings = ", ".join(f"{k.removeprefix('planner.')}: {_yaml(v)}" for k, v in params.items() if k.startswith("planner."))
    row = f"  {preset}: {{{settings}}}  # worldmodel.search, {time.strftime('%Y-%m-%d')}"
    lines = path.read_text().splitlines()
    try:
        head = lines.index(f"{planner}:")
    except ValueError:
        lines += [f"{planner}:", row]
    else:
        end = next((i for i in range(head + 1, len(lines)) if lines[i] and not lines[i].startswith(" ")), len(lines))
        mine = next((i for i in range(head + 1, end) if re.match(rf"\s+{re.escape(preset)}:", lines[i])), None)
        if mine is None:
            lines.insert(end, row)
        else:
            lines[mine] = row
    with atomic_write(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


def _yaml(value) -> str:
    """A value as a preset keeps it: a float exactly and as a float (2.5, 5.0), not rounded."""
    return repr(value) if isinstance(value, float) else str(value)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _split(argv: list[str]) -> tuple[list[str], SearchConfig]:
    from omegaconf import OmegaConf

    given, rest = {}, []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.startswith("search."):
            name = key.removeprefix("search.")
            if name not in SEARCH_KEYS:
                raise ValueError(f"unknown search.{name}; valid: {', '.join(SEARCH_KEYS)}")
            given[name] = OmegaConf.from_dotlist([f"value={value}"]).value  # (1e-2 a float, as in the run's overrides)
        else:
            rest.append(arg)
    for f in fields(SearchConfig):  # (a number where a whole number or a flag is due: an error, not a cast)
        kinds = {"int": int, "int | None": int, "bool": bool, "float": (int, float)}[str(f.type)]
        value = given.get(f.name)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool) != (kinds is bool)):
            raise ValueError(f"search.{f.name} must be {str(f.type).replace(' | None', '')}, got {value!r}")
    cfg = SearchConfig(**given)
    for name in ("trials", "parallel"):
        if (value := getattr(cfg, name)) is not None and value < 1:
            raise ValueError(f"search.{name} must be >= 1, got {value}")
    if not 0 < cfg.min_penalty < cfg.max_penalty < math.inf:  # (NaN fails it too)
        raise ValueError(f"search needs 0 < search.min_penalty < search.max_penalty (finite), got {cfg.min_penalty} "
                         f"and {cfg.max_penalty}")  # fmt: skip
    return rest, cfg


def main(argv: list[str] | None = None) -> dict:
    """Run (or resume) the search; returns the best trial's {"value", "params", "run_dir"}."""
    import optuna

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0)
    try:
        rest, cfg = _split(argv)
        fixed, launcher, sweep_dir, launcher_cfg = split_args(rest)
        check_cores(launcher, launcher_cfg)
        if len(expand(fixed)) > 1:
            raise ValueError("the search samples the settings itself: give fixed key=value overrides, no sweeps")
        fixed = shared_overrides(fixed)
        sweep_dir = (sweep_dir or Path("runs") / "search" / time.strftime("%Y%m%d-%H%M%S")).resolve()
        from worldmodel.config import pretrained_files
        from worldmodel.run import check_config

        run_cfg = check_config(fixed)[0]
        if run_cfg.planner.name not in ("mopo", "mbpo", "ravl"):
            raise ValueError(f"the search tunes the Dyna planners' offline settings (mopo, mbpo, ravl), not {run_cfg.planner.name}")
        if not run_cfg.dataset:
            raise ValueError("give the offline dataset: dataset=<file>")
        if run_cfg.env_steps != 0:  # (configs/config.yaml's default goes on online)
            raise ValueError(f"the search scores a trial by the offline protocol (the mean of its last offline "
                             f"evaluations): give env_steps=0, not {run_cfg.env_steps} (a trial that went on online "
                             "would be scored by its online end)")  # fmt: skip
        if run_cfg.get("pretrained") and pretrained_files(run_cfg.pretrained)[1] is not None:
            raise ValueError(f"pretrained={run_cfg.pretrained} brings its trained agent, which would start every trial: "
                             f"give the fitted model alone, model={Path(run_cfg.pretrained) / 'model.pt'}")
        preset = _preset(run_cfg)
        if cfg.save and preset is None:
            raise ValueError(f"{run_cfg.dataset} names no task and quality: give offline.preset=<task>-<quality> to save")
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    given = {a.lstrip("+").partition("=")[0] for a in fixed}
    fits_model = not run_cfg.get("pretrained")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="offline", direction="maximize", sampler=sampler(cfg, 0), load_if_exists=True,
                                storage=f"sqlite:///{(sweep_dir / 'study.db').resolve()}")  # fmt: skip
    study.sampler = sampler(cfg, len(study.trials))  # (a resumed study's: see sampler)
    if not study.trials and (old := sorted(p.name for p in sweep_dir.glob("trial-*"))):
        raise SystemExit(f"error: {sweep_dir} holds {', '.join(old[:3])}{', ...' if len(old) > 3 else ''} of a search "
                         "whose study.db is gone: a new study's trial-0 would resume the old one's run under new "
                         "settings; give another hydra.sweep.dir")  # fmt: skip
    # what makes it one study (not how many trials, nor how many at once): a resume must not mix in another
    setup = {"fixed": sorted(fixed),  # (the space and the sampler's seed; not how many trials, nor saving the best)
             "search": {k: v for k, v in asdict(cfg).items() if k not in ("trials", "parallel", "save")}}
    if (saved := study.user_attrs.get("setup")) is None:
        study.set_user_attr("setup", setup)
    elif {**saved, "fixed": sorted(shared_overrides(saved["fixed"]))} != setup:  # (a study saved before paths were made absolute)
        raise SystemExit(f"error: {sweep_dir} holds a search of other settings ({saved}), not {setup}: give another "
                         "hydra.sweep.dir, or the same settings to resume it")  # fmt: skip
    pool = JobPool(launcher, launcher_cfg)
    parallel = cfg.parallel or pool.capacity
    running: dict[int, optuna.trial.Trial] = {}

    def submit(trial, params: dict) -> None:
        overrides = [*fixed, *(f"{k}={v}" for k, v in params.items())]
        pool.submit(Job(trial.number, overrides, sweep_dir / f"trial-{trial.number}"))
        running[trial.number] = trial

    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):  # a cut-off search
        submit(optuna.trial.Trial(study, frozen._trial_id), frozen.params)
    print(f"search: {cfg.trials} trials of {run_cfg.planner.name} on {run_cfg.dataset}, {parallel} at once, "
          f"in {sweep_dir}" + ("" if fits_model else f" (model from {run_cfg.pretrained}, elites fixed)"))  # fmt: skip
    from tqdm.auto import tqdm

    done = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)))
    bar = tqdm(total=cfg.trials, initial=done, desc="search", unit="trial", smoothing=0)
    try:
        while done + len(running) < cfg.trials or running:
            while done + len(running) < cfg.trials and len(running) < parallel:
                trial = study.ask()
                submit(trial, space(trial, cfg, run_cfg.planner.name, fits_model, run_cfg.model.ensemble_size, given))
            for job in pool.wait():
                trial = running.pop(job.num)
                value = objective(job.result) if job.status == "finished" else None
                study.tell(trial, value, state=None if value is not None else optuna.trial.TrialState.FAIL)
                done += 1
                bar.update()
                if study.best_trials:
                    bar.set_postfix(best=f"{study.best_value:.1f}")
    finally:
        pool.close()
        bar.close()
    return _finish(study, sweep_dir, run_cfg.planner.name, preset if cfg.save else None, fixed)


def _preset(run_cfg) -> str | None:
    """The dataset's <task>-<quality> (offline.preset, or its metadata), or None."""
    from worldmodel.datasets import read_metadata

    if run_cfg.offline.preset:
        return run_cfg.offline.preset
    metadata = read_metadata(run_cfg.dataset)
    return f"{metadata['env']}-{metadata['quality']}" if metadata.get("env") and metadata.get("quality") else None


def _finish(study, sweep_dir: Path, planner: str, save_as: str | None, fixed: list[str]) -> dict:
    """best.yaml, a table of the best trials, and (save_as) the best trial's planner settings
    as a preset: those its run took from the old preset, those fixed on the command line, the
    sampled ones."""
    import yaml

    from worldmodel.checkpoint import atomic_write
    from worldmodel.config import CONFIG_DIR

    trials = sorted((t for t in study.trials if t.value is not None), key=lambda t: -t.value)
    if not trials:
        raise SystemExit(f"error: no trial finished; see the job.log files under {sweep_dir}")
    best = trials[0]
    result = {"value": best.value, "params": best.params, "run_dir": str(sweep_dir / f"trial-{best.number}"),
              "trials": len(study.trials), "failed": sum(t.value is None for t in study.trials)}  # fmt: skip
    with atomic_write(sweep_dir / "best.yaml") as tmp:
        Path(tmp).write_text(yaml.safe_dump(result, sort_keys=False))
    print("| trial | score | " + " | ".join(best.params) + " |\n|---|---|" + "---|" * len(best.params))
    for t in trials[:10]:
        print(f"| {t.number} | {t.value:.1f} | " + " | ".join(_short(t.params.get(k)) for k in best.params) + " |")
    if save_as is not None:
        summary = json.loads((sweep_dir / f"trial-{best.number}" / "summary.json").read_text())
        given = {k: yaml.safe_load(v) for k, _, v in (a.partition("=") for a in fixed)
                 if k.startswith("planner.") and k.count(".") == 1}  # (a preset holds the planner's own keys)
        settings = {**{f"planner.{k}": v for k, v in summary.get("dataset_settings", {}).items()}, **given, **best.params}
        save_preset(planner, save_as, settings, CONFIG_DIR / "offline.yaml")
        print(f"saved the best trial's planner settings for {save_as} to {CONFIG_DIR / 'offline.yaml'}"
              + ("; model.num_elites is a model setting: give it on the command line" if "model.num_elites" in settings
                 else ""))  # fmt: skip
    print(json.dumps({k: result[k] for k in ("value", "params", "run_dir")}))
    return result


if __name__ == "__main__":
    main()
