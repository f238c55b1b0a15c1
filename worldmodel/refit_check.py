"""`python -m worldmodel.refit_check <run dir> ...`: do the model's refits learn what online data adds?

Replays a run's first fit and one warm-started refit from its transition log, and scores each
model on the transitions that came next (where the planner went next, which no fit saw): the
first fit's model as it was (no refit), a warm refit for each `--beta` (beta-NLL; 0 is the
plain NLL), each `--refit-steps` cap (the run command's `fit_steps`; "none": uncapped) and each
`--precision` of its training steps (model.fit.precision), and a model fitted from scratch on the
same data. `--start checkpoint` starts from the run's checkpoint.pt instead of replaying a first
fit: the model as the run last refitted it, with its optimiser's state, which saw the
checkpoint's transitions (so refits at a large buffer cost one refit, not a fit from scratch).
Prints one row per run and writes nothing. Lower is better: mean squared error of the
elites' mean (next_obs - obs and reward, original units; EnsembleDynamics.evaluate).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from kernels import PRECISIONS
from worldmodel import threads
from worldmodel.checkpoint import RUN_FORMAT, load_checked
from worldmodel.ensemble import EnsembleDynamics
from worldmodel.fitting import check_settings
from worldmodel.envs import make_env
from worldmodel.transition_log import TransitionLog


def check_run(run_dir: Path, first: int | None, refit_at: int, ahead: int, refit_epochs: int, betas: list[float],
              holdouts: tuple[str, ...] = ("all",), caps: tuple[int | None, ...] = (None,),
              precisions: tuple[str | None, ...] = (None,), start_from: str = "fit", scratch: bool = True) -> dict:  # fmt: skip
    """Fit on the run's first `first` transitions (model.fit's settings of the run), refit on the
    first `refit_at`, score on the `ahead` after them; the same seed for every model. holdouts:
    "all" (the refit holds out among all its rows) and/or "new" (among the rows after `first`
    alone, as the run command's refits do: EnsembleDynamics.fit's new_rows); caps: the refits'
    max_steps (None: uncapped; a capped refit's names end in _steps<cap>); precisions: the refits'
    training matmuls' (None: the run's model.fit.precision, fit()'s default "auto" where its config
    has none; else the names end in _<precision>). The first fit and the one from scratch take the
    run's model.fit settings; the row says the first fit's and each refit's precision. start_from
    "checkpoint" (or a copy of the run's checkpoint.pt taken earlier): in place of the first fit,
    the model and its optimiser from the run's checkpoint.pt, whose last fit saw the first `first`
    transitions (None: read from it; another number is an error); scratch: also fit a model from
    scratch on the refit's rows (from_scratch)."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    spec = make_env(cfg.env.name, seed=cfg.seed).task_spec
    data = TransitionLog(run_dir / "transitions", spec.obs_dim, spec.act_dim, repair=False).read()  # (the run may still be writing it)
    checkpoint = run_dir / "checkpoint.pt" if start_from == "checkpoint" else None if start_from == "fit" else Path(start_from)
    state = load_checked(checkpoint, RUN_FORMAT) if checkpoint is not None else None
    if state is not None:
        progress = state["progress"]
        if progress.get("dataset_loaded") or progress.get("log_offset", 0):
            raise SystemExit(f"error: {run_dir}'s buffer holds rows its transition log does not (a dataset, or a "
                             "log begun mid-run): its checkpoint's fit cannot be placed in the log; use --start fit")
        fitted_on = progress.get("fit_written")
        if fitted_on is None or first not in (None, fitted_on):
            raise SystemExit(f"error: {checkpoint} holds a model fitted on {fitted_on} transitions, "
                             f"not --first {first}: leave --first out with --start checkpoint")  # fmt: skip
        first = fitted_on
    first = 1000 if first is None else first
    if not first < refit_at:
        raise SystemExit(f"error: {run_dir}: the first fit saw {first} transitions, so --refit-at must be larger")
    if len(data) < refit_at + ahead:
        raise SystemExit(f"error: {run_dir} logged {len(data)} real transitions, fewer than --refit-at + --ahead = "
                         f"{refit_at + ahead}: give smaller ones, or an online run that has gone further")  # fmt: skip
    fit = OmegaConf.to_container(cfg.model.fit) | {"progress": False}
    model_args = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k != "fit"}
    seen, nxt = data[:refit_at], data[refit_at : refit_at + ahead]

    def fresh_model() -> EnsembleDynamics:
        torch.manual_seed(cfg.seed)
        return EnsembleDynamics(spec.obs_dim, spec.act_dim, **model_args, termination_fn=spec.termination_fn)

    start = fresh_model()
    if state is not None:
        start.load_state_dict(state["model"])
        start.optimizer(fit.get("lr", 1e-3)).load_state_dict(state["optimizer"])
        row = {"first_fit_precision": "checkpoint"}
    else:
        row = {"first_fit_precision": start.fit(data[:first], **fit)["precision"]}
    row = {"run": str(run_dir), "env": cfg.env.name, "seed": cfg.seed, "first": first,
           "no_refit": start.evaluate(nxt)["mse"]} | row  # fmt: skip
    for beta, holdout, cap, precision in itertools.product(betas, holdouts, caps, precisions):
        model = copy.deepcopy(start)
        torch.manual_seed(cfg.seed)
        new_rows = torch.arange(first, refit_at) if holdout == "new" else None
        settings = {"max_epochs": refit_epochs, "max_steps": cap, "beta": beta, "new_rows": new_rows}
        metrics = model.fit(seen, **fit | settings | ({"precision": precision} if precision else {}))
        name = (f"refit_beta{beta:g}" + ("_new_holdout" if holdout == "new" else "") + (f"_steps{cap}" if cap else "")
                + (f"_{precision}" if precision else ""))  # fmt: skip
        row[name] = model.evaluate(nxt)["mse"]
        row[f"{name}_epochs"], row[f"{name}_start_kept"] = metrics["epochs"], metrics["start_kept"]
        row[f"{name}_steps"], row[f"{name}_wall_s"] = metrics["steps"], metrics["wall_s"]
        row[f"{name}_precision"] = metrics["precision"]
    if scratch:
        from_scratch = fresh_model()
        from_scratch.fit(seen, **fit)
        row["from_scratch"] = from_scratch.evaluate(nxt)["mse"]
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m worldmodel.refit_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories with a transition log")
    parser.add_argument("--first", type=int, default=None,
                        help="transitions of the first fit (default 1000; with --start checkpoint, its own)")
    parser.add_argument("--refit-at", type=int, default=1500, help="transitions of the refit (default 1500)")
    parser.add_argument("--ahead", type=int, default=500, help="next transitions scored (default 500)")
    parser.add_argument("--refit-epochs", type=int, default=30, help="the refit's epochs (default 30: the run command's fit_epochs)")
    parser.add_argument("--beta", type=_beta, nargs="+", default=[0.0, 0.5], help="beta-NLL of the refits")
    parser.add_argument("--refit-steps", nargs="+", type=_cap, default=[None], metavar="N|none",
                        help="the refits' gradient-step caps, each a refit of its own (default: none, uncapped, "
                             "as the run command's fit_steps)")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=[None],
                        help="the refits' training matmuls, each a refit of its own (default: the run's model.fit.precision)")
    parser.add_argument("--holdout", nargs="+", choices=["all", "new"], default=["all", "new"],
                        help="what refits hold out among: all their rows, or the new ones (default: both)")
    parser.add_argument("--start", default="fit", metavar="fit|checkpoint|FILE",
                        help="fit: replay the first fit (default); checkpoint: the model and its optimiser as "
                             "the run's checkpoint.pt saved them after its last fit; FILE: a copy of that file "
                             "taken earlier in the run (one run directory then)")
    parser.add_argument("--no-scratch", action="store_true", help="skip the model fitted from scratch")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if (args.first is not None and not 0 < args.first < args.refit_at) or args.ahead < 1:
        parser.error("need 0 < --first < --refit-at and --ahead >= 1")
    if args.start not in ("fit", "checkpoint") and (len(args.runs) > 1 or not Path(args.start).is_file()):
        parser.error(f"--start {args.start}: give fit, checkpoint, or the file of one run's copied checkpoint.pt")
    threads.set_threads(args.threads)
    rows = []
    for run_dir in args.runs:
        if not (run_dir / "config.yaml").is_file() or not (run_dir / "transitions").is_dir():
            parser.error(f"{run_dir} is not a run directory with a transition log (config.yaml, transitions/)")
        if args.start == "checkpoint" and not (run_dir / "checkpoint.pt").is_file():
            parser.error(f"--start checkpoint: {run_dir} has no checkpoint.pt")
        rows.append(check_run(run_dir, args.first, args.refit_at, args.ahead, args.refit_epochs, args.beta,
                              tuple(args.holdout), tuple(args.refit_steps), tuple(args.precision), args.start,
                              not args.no_scratch))  # fmt: skip
        print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
    return rows


def _beta(text: str) -> float:
    """--beta's values: a beta the fit's own check accepts (a number in [0, 1])."""
    try:
        check_settings(beta=float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number in [0, 1]") from None
    return float(text)


def _cap(text: str) -> int | None:
    """--refit-steps' values: "none" (uncapped), or a cap the fit's own check accepts."""
    if text.lower() == "none":
        return None
    try:
        check_settings(max_steps=int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= 1 or none") from None
    return int(text)


if __name__ == "__main__":
    main()
