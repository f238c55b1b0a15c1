"""`python -m worldmodel.refit_check <run dir> ...`: do the model's refits learn what online data adds?

Replays a run's first fit and one warm-started refit from its transition log, and scores each
model on the transitions that came next (where the planner went next, which no fit saw): the
first fit's model as it was (no refit), a warm refit for each `--beta` (beta-NLL; 0 is the
plain NLL), each `--refit-steps` cap (the run command's `fit_steps`; "none": uncapped) and each
`--precision` of its training steps (model.fit.precision), and a model fitted from scratch on the
same data. Prints one row per run and writes nothing. Lower is better: mean squared error of the
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
from worldmodel.ensemble import EnsembleDynamics
from worldmodel.fitting import check_settings
from worldmodel.envs import make_env
from worldmodel.transition_log import TransitionLog


def check_run(run_dir: Path, first: int, refit_at: int, ahead: int, refit_epochs: int, betas: list[float],
              holdouts: tuple[str, ...] = ("all",), caps: tuple[int | None, ...] = (None,),
              precisions: tuple[str | None, ...] = (None,)) -> dict:  # fmt: skip
    """Fit on the run's first `first` transitions (model.fit's settings of the run), refit on the
    first `refit_at`, score on the `ahead` after them; the same seed for every model. holdouts:
    "all" (the refit holds out among all its rows) and/or "new" (among the rows after `first`
    alone, as the run command's refits do: EnsembleDynamics.fit's new_rows); caps: the refits'
    max_steps (None: uncapped; a capped refit's names end in _steps<cap>); precisions: the refits'
    training matmuls' (None: the run's model.fit.precision, fit()'s default "auto" where its config
    has none; else the names end in _<precision>). The first fit and the one from scratch take the
    run's model.fit settings; the row says the first fit's and each refit's precision."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    spec = make_env(cfg.env.name, seed=cfg.seed).task_spec
    data = TransitionLog(run_dir / "transitions", spec.obs_dim, spec.act_dim).read()
    if len(data) < refit_at + ahead:
        raise SystemExit(f"error: {run_dir} logged {len(data)} transitions; refit_at + ahead = {refit_at + ahead}")
    fit = OmegaConf.to_container(cfg.model.fit) | {"progress": False}
    model_args = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k != "fit"}
    seen, nxt = data[:refit_at], data[refit_at : refit_at + ahead]

    def fresh_model() -> EnsembleDynamics:
        torch.manual_seed(cfg.seed)
        return EnsembleDynamics(spec.obs_dim, spec.act_dim, **model_args, termination_fn=spec.termination_fn)

    start = fresh_model()
    first_fit = start.fit(data[:first], **fit)
    row = {"run": str(run_dir), "env": cfg.env.name, "seed": cfg.seed, "no_refit": start.evaluate(nxt)["mse"],
           "first_fit_precision": first_fit["precision"]}  # fmt: skip
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
    scratch = fresh_model()
    scratch.fit(seen, **fit)
    row["from_scratch"] = scratch.evaluate(nxt)["mse"]
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m worldmodel.refit_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories with a transition log")
    parser.add_argument("--first", type=int, default=1000, help="transitions of the first fit (default 1000)")
    parser.add_argument("--refit-at", type=int, default=1500, help="transitions of the refit (default 1500)")
    parser.add_argument("--ahead", type=int, default=500, help="next transitions scored (default 500)")
    parser.add_argument("--refit-epochs", type=int, default=30, help="the refit's epochs (default 30: the run command's fit_epochs)")
    parser.add_argument("--beta", type=float, nargs="+", default=[0.0, 0.5], help="beta-NLL of the refits")
    parser.add_argument("--refit-steps", nargs="+", type=_cap, default=[None], metavar="N|none",
                        help="the refits' gradient-step caps, each a refit of its own (default: none, uncapped, "
                             "as the run command's fit_steps)")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=[None],
                        help="the refits' training matmuls, each a refit of its own (default: the run's model.fit.precision)")
    parser.add_argument("--holdout", nargs="+", choices=["all", "new"], default=["all", "new"],
                        help="what refits hold out among: all their rows, or the new ones (default: both)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not 0 < args.first < args.refit_at or args.ahead < 1:
        parser.error("need 0 < --first < --refit-at and --ahead >= 1")
    threads.set_threads(args.threads)
    rows = []
    for run_dir in args.runs:
        if not (run_dir / "config.yaml").is_file() or not (run_dir / "transitions").is_dir():
            parser.error(f"{run_dir} is not a run directory with a transition log (config.yaml, transitions/)")
        rows.append(check_run(run_dir, args.first, args.refit_at, args.ahead, args.refit_epochs, args.beta,
                              tuple(args.holdout), tuple(args.refit_steps), tuple(args.precision)))  # fmt: skip
        print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
    return rows


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
