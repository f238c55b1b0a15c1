"""Fitting an EnsembleDynamics (its `fit`): beta-NLL on per-member bootstrap minibatches, early
stopping on holdout MSE, each member's best epoch kept, the best members made elites; resumable
epoch by epoch. Shapes: E members, N rows, O obs dims, A action dims (inputs [N, O+A], targets
[N, O+1]: next_obs - obs and reward, both standardised)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from tensordict import TensorDict
from torch import Tensor
from tqdm.auto import tqdm

from kernels import PRECISIONS
from kernels.cpu import bf16_units
from worldmodel import threads
from worldmodel.checkpoint import rng_state, set_rng_state
from worldmodel.interrupts import PipeSafe
from worldmodel.optim import adam
from worldmodel.transitions import validate_transitions

if TYPE_CHECKING:
    from worldmodel.ensemble import EnsembleDynamics

FIT_RUNTIME_ARGS = ("new_rows", "progress", "on_epoch", "resume")  # fit() arguments that are not settings (configs skip them)
LOGVAR_BOUND_PENALTY = 0.01
MIN_NEW_HOLDOUT = 50  # the fewest held-out new rows a refit judges itself on (fewer: the whole data's split)


def fit(
    model: EnsembleDynamics,
    data: TensorDict,
    *,
    batch_size: int = 256,
    lr: float = 1e-3,
    holdout_ratio: float = 0.2,
    max_holdout: int = 5000,
    max_epochs: int | None = 60,
    max_steps: int | None = None,
    patience: int = 5,
    beta: float = 0.0,
    bootstrap: bool = True,
    precision: str | None = "auto",
    recalibrate: bool = False,
    new_rows: Tensor | None = None,
    progress: bool = True,
    on_epoch: Callable[[Callable[[], dict]], None] | None = None,
    resume: dict | None = None,
) -> dict:
    """`model.fit(data)`: fit on transitions (a TensorDict [N], see worldmodel.transitions);
    warm-starts from the current weights, so calling it again fine-tunes on new data.

    Loss: beta-NLL (Seitzer et al. 2022: each row's Gaussian NLL weighted by its stop-gradient
    predicted variance ** beta; 0 is the plain NLL) + log-variance-bound penalty + per-layer L2,
    each member on its own bootstrap (or reshuffled) minibatches. Stops when for `patience`
    epochs no member's holdout MSE improved by 1% on the fit's best epoch, or after `max_epochs`
    or `max_steps` gradient steps (None: no cap; the last epoch is cut short there); keeps each
    member's best weights on holdout, its starting weights included, and makes the `num_elites`
    best the elites. `precision`: the training steps' matmuls (kernels.PRECISIONS; None: the
    model's own; "auto": `training_precision`; a resumed fit keeps the one it began with); the
    weights and Adam's state stay fp32, the holdout checks (which pick the weights kept) run in
    the model's precision. Returns per-member holdout MSE/NLL (standardised units; also the
    starting weights' MSE), elites, epochs, gradient steps, the steps' precision, train loss,
    wall seconds and a per-epoch history.

    `recalibrate`: then scale each member's predicted variance, output by output, so that the kept
    weights' squared error over predicted variance on the holdout is 1 (`recalibrate_variance`;
    the calibration before it is returned as `holdout_calibration_fitted`), unless the starting
    weights trained on the holdout (a warm refit whose holdout is drawn from all rows: it is
    skipped there). A fit to convergence tends to over-confidence (1.3-1.8 on hopper-medium-replay),
    which shrinks the variances MOPO's penalty and the rollouts' sampling read.

    `new_rows`: where in `data` the rows are that the model has not been fitted on (e.g.
    `buffer.newest(k)`). A warm-started refit holds out only among them (holdout_ratio of them, up
    to max_holdout, when that is MIN_NEW_HOLDOUT or more; else as a first fit does): the starting
    weights trained on every older row, so a holdout of older rows favours them, the start is kept
    and the refit never takes in the new data.

    A long fit can outlive its process: `on_epoch(fit_state)` is called after every epoch
    with a function returning the whole fit's state (weights, optimiser, split, resamples,
    best weights, counters, RNG) for the caller to save when it likes; `resume=` that state
    (with the same data and settings) continues the fit exactly where it was.
    """
    start = time.perf_counter()
    check_settings(batch_size=batch_size, lr=lr, holdout_ratio=holdout_ratio, max_holdout=max_holdout,
                   max_epochs=max_epochs, max_steps=max_steps, patience=patience, beta=beta,
                   precision=precision)  # fmt: skip
    data = validate_transitions(data, model.obs_dim, model.act_dim).to(model.device)
    precision = training_precision(model, precision)
    if resume is not None:  # the steps' precision the fit began with (auto can resolve otherwise on another host)
        precision = resume.get("precision", precision)
    inputs, targets = torch.cat([data["obs"], data["action"]], -1), model_targets(data)
    n = inputs.shape[0]
    n_holdout = min(int(n * holdout_ratio), max_holdout)
    if n_holdout < 5 or n - n_holdout < 10:
        raise ValueError(
            f"{n} transitions are too few to fit with a holdout split (holdout_ratio={holdout_ratio} "
            f"gives {n_holdout} holdout rows; need at least 5, and 10 or more for training): collect more data"
        )
    if resume is not None and resume.get("rows") != n:
        raise ValueError(f"the fit to resume was on {resume.get('rows')} transitions, this data has {n}")
    if new_rows is not None and (new_rows.dtype in (torch.bool, torch.uint8) or new_rows.is_floating_point()
                                 or new_rows.unique().numel() != len(new_rows)):  # fmt: skip
        raise ValueError(f"new_rows must be distinct integer row positions (e.g. ReplayBuffer.newest(count)), not a "
                         f"mask or a list with repeats; got {new_rows.dtype}, {len(new_rows)} entries")
    if new_rows is not None and len(new_rows) and not (0 <= int(new_rows.min()) and int(new_rows.max()) < n):
        raise ValueError(f"new_rows must index the data's {n} rows, got positions {int(new_rows.min())}.."
                         f"{int(new_rows.max())}")  # fmt: skip
    holdout = "all rows"  # what the holdout is drawn from
    if resume is not None:
        perm, n_holdout = resume["perm"].to(model.device), resume.get("n_holdout", n_holdout)
        holdout = resume.get("holdout", holdout)
        start -= resume.get("wall_s", 0.0)  # the whole fit's time, the killed process's included
    elif model.fitted and new_rows is not None and int(len(new_rows) * holdout_ratio) >= MIN_NEW_HOLDOUT:
        n_holdout = min(int(len(new_rows) * holdout_ratio), max_holdout)
        perm, holdout = holdout_among(n, new_rows.to(model.device), n_holdout), "new rows"
    else:
        perm = torch.randperm(n, device=model.device)
    train_idx, hold_idx = perm[n_holdout:], perm[:n_holdout]
    # no weights kept have trained on the holdout (a first fit's, or held out among new rows): what
    # recalibrate needs (a warm refit judged on all rows would scale the variance to training error)
    unseen = resume.get("unseen_holdout", True) if resume is not None else not model.fitted or holdout == "new rows"
    if resume is None:
        model._fit_normalizers(inputs[train_idx], targets[train_idx])
    else:  # weights, normalisers and optimiser as they were after the saved epoch
        model.load_state_dict(resume["model"])
    x = model.input_norm(inputs)
    y = model.target_norm(targets)
    x_train, y_train, x_hold, y_hold = x[train_idx], y[train_idx], x[hold_idx], y[hold_idx]

    optimizer = shared_optimizer(model, lr)
    # Patience counts from the fit's own best epoch (as MBPO's refits): a warm-started refit on
    # data from a new region is worse on holdout than its start for its first epochs, and counted
    # against the start it would stop there, a no-op. The weights kept are each member's best on
    # holdout among its starting weights and all epochs, so a refit never returns a worse member.
    if resume is None:
        start_mse = holdout_metrics(model, x_hold, y_hold)[0]
        best_mse = torch.full_like(start_mse, math.inf)  # the fit's own best epoch (patience)
        kept_mse = start_mse.clone()  # the kept weights' (the start's until an epoch beats it)
        moved = torch.zeros_like(start_mse, dtype=torch.bool)  # members whose kept weights are an epoch's
        best_state = [p.detach().clone() for p in model.parameters()]
        epochs_since_update, epoch, steps, train_loss, history = 0, 0, 0, float("nan"), []
        # one bootstrap resample per member for the whole fit (reshuffled each epoch), as PETS and
        # MBPO draw it: redrawn every epoch, every member would see all the data
        rows = x_train.shape[0]
        resample = torch.randint(rows, (model.ensemble_size, rows), device=model.device) if bootstrap else None
    else:
        optimizer.load_state_dict(resume["optimizer"])
        best_mse, best_state, resample = resume["best_mse"].to(model.device), resume["best_state"], resume["resample"]
        start_mse = resume.get("start_mse")  # (None in a state saved before it was kept)
        start_mse = start_mse.to(model.device) if start_mse is not None else None
        kept_mse = resume.get("kept_mse", resume["best_mse"]).to(model.device)
        moved = resume.get("moved")  # (None in a state saved before it was kept)
        moved = moved.to(model.device) if moved is not None else None
        best_state = [t.to(model.device) for t in best_state]
        resample = resample.to(model.device) if resample is not None else None
        epochs_since_update, epoch, train_loss = resume["epochs_since_update"], resume["epoch"], resume["train_loss"]
        steps = resume.get("steps", 0)  # (a state saved before steps were counted: none)
        history = list(resume["history"])
        set_rng_state(resume["torch_rng"])

    def fit_state() -> dict:
        return {"rows": n, "perm": perm.cpu(), "n_holdout": n_holdout, "holdout": holdout, "unseen_holdout": unseen,
                "precision": precision,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "best_mse": best_mse.cpu(), "kept_mse": kept_mse.cpu(),
                "start_mse": start_mse.cpu() if start_mse is not None else None,
                "moved": moved.cpu() if moved is not None else None,
                "best_state": [t.cpu() for t in best_state],
                "resample": resample.cpu() if resample is not None else None, "epoch": epoch, "steps": steps,
                "epochs_since_update": epochs_since_update, "train_loss": train_loss, "history": history,
                "torch_rng": rng_state(), "wall_s": time.perf_counter() - start}  # fmt: skip

    bar = tqdm(desc="fit ensemble", unit="epoch", disable=not progress, total=max_epochs, initial=epoch,
               file=PipeSafe(sys.stderr))  # fmt: skip
    while (epochs_since_update < patience and (max_epochs is None or epoch < max_epochs)
           and (max_steps is None or steps < max_steps)):  # fmt: skip
        train_loss, batches = train_epoch(model, optimizer, x_train, y_train, batch_size, resample, beta,
                                          None if max_steps is None else max_steps - steps, precision)  # fmt: skip
        epoch, steps = epoch + 1, steps + batches
        mse, _, calibration = holdout_metrics(model, x_hold, y_hold)
        improved = mse < 0.99 * best_mse  # by more than 1% on the fit's best epoch: patience restarts
        best_mse = torch.where(improved, mse, best_mse)
        # than the weights kept so far (a NaN holdout never is; finite beats a NaN start)
        better = (mse < kept_mse) | (kept_mse.isnan() & mse.isfinite())
        if better.any():
            kept_mse = torch.where(better, mse, kept_mse)
            moved = moved | better if moved is not None else None
            with torch.no_grad():
                for saved, p in zip(best_state, model.parameters()):
                    saved[better] = p[better]
        epochs_since_update = 0 if improved.any() else epochs_since_update + 1
        history.append({"epoch": epoch, "steps": steps, "train_loss": train_loss, "holdout_mse": mse.mean().item(),
                        "holdout_calibration": calibration.mean().item(), "improved": bool(improved.any())})  # fmt: skip
        bar.update()
        bar.set_postfix(train=f"{train_loss:.3f}", holdout_mse=f"{mse.mean():.4f}")
        if on_epoch is not None:
            on_epoch(fit_state)
    bar.close()
    with torch.no_grad():
        for saved, p in zip(best_state, model.parameters()):
            p.copy_(saved)
    clear_diverged_moments(optimizer, list(model.parameters()))
    fitted_calibration = recalibrate_variance(model, x_hold, y_hold)[1] if recalibrate and unseen else None
    mse, nll, calibration = holdout_metrics(model, x_hold, y_hold)
    model.elites.copy_(mse.argsort()[: model.num_elites].sort().values)
    recalibrated = {} if fitted_calibration is None else {"holdout_calibration_fitted": fitted_calibration.tolist()}
    return {**recalibrated,
        "epochs": epoch,
        "steps": steps,
        "precision": precision,
        "train_loss": train_loss,
        "holdout_mse": mse.tolist(),
        "start_holdout_mse": start_mse.tolist() if start_mse is not None else None,
        "start_kept": int((~moved).sum()) if moved is not None else None,  # members that kept their starting weights
        "holdout": holdout,
        "holdout_nll": nll.tolist(),
        "holdout_calibration": calibration.tolist(),
        "elites": model.elites.tolist(),
        "n_train": n - n_holdout,
        "n_holdout": n_holdout,
        "wall_s": time.perf_counter() - start,
        "history": history,
    }


def fit_record(metrics: dict) -> dict:
    """A fit's metrics (fit()'s return) as one log record: epochs, gradient steps, wall seconds,
    the holdout's mean MSE and calibration, the starting weights' MSE on the same holdout, how
    many members kept their starting weights, what the holdout was drawn from and the steps' precision."""
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    record = {"epochs": metrics["epochs"], "steps": metrics.get("steps"), "wall_s": metrics["wall_s"],
              "holdout_mse": mean(metrics["holdout_mse"]),
              "holdout_calibration": mean(metrics["holdout_calibration"]),
              "holdout_calibration_fitted": mean(metrics.get("holdout_calibration_fitted") or []),
              "start_holdout_mse": mean(metrics.get("start_holdout_mse") or []),
              "start_kept": metrics.get("start_kept"), "holdout": metrics.get("holdout"),
              "precision": metrics.get("precision")}  # fmt: skip
    return {k: v for k, v in record.items() if v is not None}


def model_targets(data: TensorDict) -> Tensor:
    """What the model predicts for transitions [N]: next_obs - obs and the reward, [N, O+1]."""
    return torch.cat([data["next_obs"] - data["obs"], data["reward"].unsqueeze(-1)], -1)


def holdout_among(n: int, rows: Tensor, count: int) -> Tensor:
    """A permutation [n] of n rows whose first `count` are drawn from `rows` [K] (the holdout), the
    others in random order."""
    held = rows[torch.randperm(len(rows), device=rows.device)[:count]]
    rest = torch.ones(n, dtype=torch.bool, device=rows.device)
    rest[held] = False
    rest = rest.nonzero().squeeze(1)
    return torch.cat([held, rest[torch.randperm(len(rest), device=rows.device)]])


def check_settings(**settings) -> None:
    """A ValueError naming the first out-of-range fit() setting (so a run can refuse it before
    any work); settings not given take fit()'s defaults."""
    from worldmodel.config import signature_fields

    given = {k: d for k, (d, _) in signature_fields(fit).items()} | settings
    if given["precision"] not in (None, "auto", *PRECISIONS):
        raise ValueError(f"fit setting precision={given['precision']!r} is not one of {PRECISIONS}, auto "
                         "or null (the model's)")
    for name, in_range in _RANGES.items():
        value = given[name]
        if isinstance(value, bool) or not (isinstance(value, (int, float)) or (name in _NULLABLE and value is None)):
            raise ValueError(f"fit setting {name} must be a number, got {value!r}")
        if not in_range(value):
            raise ValueError(f"fit setting {name}={value!r} is out of range (whole numbers: batch_size >= 1, "
                             "max_holdout >= 5, max_epochs and max_steps >= 1 or null, patience >= 1; lr > 0, "
                             "0 < holdout_ratio < 1, 0 <= beta <= 1)")


def _whole(low: int, nullable: bool = False) -> Callable[[float], bool]:
    """A count's check: a whole number >= low (or None where it means no cap)."""
    return lambda v: (nullable and v is None) or (isinstance(v, int) and v >= low)


_RANGES: dict[str, Callable[[float], bool]] = {  # check_settings: each numeric fit() setting's valid range
    "batch_size": _whole(1), "lr": lambda v: v > 0, "holdout_ratio": lambda v: 0 < v < 1,
    "max_holdout": _whole(5), "max_epochs": _whole(1, nullable=True), "max_steps": _whole(1, nullable=True),
    "patience": _whole(1), "beta": lambda v: 0 <= v <= 1,
}  # fmt: skip
_NULLABLE = ("max_epochs", "max_steps")  # settings whose None means no cap


@torch.no_grad()
def clear_diverged_moments(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    """Reset the Adam moments of the members (dim 0 of every parameter [E, ...]) whose moments went
    non-finite: a member that diverged keeps its earlier weights, but the shared optimiser (refits
    reuse it, checkpoints save it) would make them NaN again at its next step, for good. The first
    moment restarts at 0, the second at the healthy members' mean (Adam's step count is shared, so
    a zero second moment would get no bias correction: steps of several learning rates)."""
    states = [optimizer.state[p] for p in params if p in optimizer.state]
    diverged = None
    for state in states:
        for moment in (state["exp_avg"], state["exp_avg_sq"]):
            bad = ~moment.isfinite().reshape(moment.shape[0], -1).all(1)
            diverged = bad if diverged is None else diverged | bad
    if diverged is not None and diverged.any():
        for state in states:
            state["exp_avg"][diverged] = 0
            healthy = state["exp_avg_sq"][~diverged]
            state["exp_avg_sq"][diverged] = healthy.mean(0) if len(healthy) else 0


def training_precision(model: EnsembleDynamics, precision: str | None) -> str:
    """The precision of a fit's training steps: None is the model's own; "auto" is bf16 on a CPU
    with bf16 units (AVX-512 BF16 or AMX; the model's own elsewhere): there a refit ran 1.43x
    faster and predicted within 0.2% of fp32's (docs/model_fitting.md, "How refits learn new data")."""
    if precision == "auto":
        return "bf16" if model.device.type == "cpu" and bf16_units() else model.precision
    return precision or model.precision


def shared_optimizer(model: EnsembleDynamics, lr: float) -> torch.optim.Optimizer:
    """The model's Adam optimiser, which its refits share (created on first use, or when lr changes)."""
    if model._optimizer is None or model._optimizer.param_groups[0]["lr"] != lr:
        model._optimizer = adam(model.parameters(), lr)
    return model._optimizer


def train_epoch(model: EnsembleDynamics, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, batch_size: int,
                resample: Tensor | None, beta: float, max_batches: int | None = None,
                precision: str | None = None) -> tuple[float, int]:  # fmt: skip
    """One pass over the training rows x [N, O+A], y [N, O+1] in minibatches (the first
    `max_batches` of them, None: all; matmuls in `precision`, None: the model's); (the mean loss,
    the minibatches taken)."""
    n = x.shape[0]
    order = epoch_order(resample, model.ensemble_size, n, model.device)
    total, batches = 0.0, 0
    model.train()
    stop = n if max_batches is None else min(n, max_batches * batch_size)
    for start in range(0, stop, batch_size):
        threads.adapt()  # (an epoch of a large dataset takes minutes: the load is followed within one; at most once a second)
        idx = order[:, start : start + batch_size]
        mean, logvar = model.forward_normalized(x[idx], precision=precision)
        optimizer.zero_grad(set_to_none=True)
        total += backward(model, mean, logvar, y[idx], beta)
        optimizer.step()
        batches += 1
    return total / batches, batches


def loss(model: EnsembleDynamics, mean: Tensor, logvar: Tensor, target: Tensor, beta: float = 0.0, *,
         decay: bool = True) -> Tensor:
    """The fit's loss on standardised (mean, logvar, target), each [E, B, O+1]: beta-NLL
    summed over members, plus the log-variance-bound penalty and (decay) the L2 `weight_decay`.

    With beta = 0 (the plain NLL) a member stops fitting rows it can explain by a larger
    variance instead, so a warm-started refit on data from a new region trades accuracy for
    variance there: its holdout MSE rises epoch after epoch (measured on hopper: docs/model_fitting.md,
    "How refits learn new data"). beta > 0 keeps those rows' pull on the mean (beta = 1: the mean's gradient is MSE's)."""
    nll = ((mean - target) ** 2) * torch.exp(-logvar) + logvar
    if beta:
        nll = nll * torch.exp(beta * logvar.detach())
    nll = nll.mean(dim=(1, 2)).sum()
    bounds = LOGVAR_BOUND_PENALTY * (model.max_logvar.sum() - model.min_logvar.sum())
    fit = nll + bounds
    return fit + weight_decay(model) if decay else fit


def backward(model: EnsembleDynamics, mean: Tensor, logvar: Tensor, target: Tensor, beta: float = 0.0) -> float:
    """`loss(...).backward()`, with L2's gradient wd_l W_l added in place rather than backpropagated
    (autograd's backward of it made three full passes over each weight: a fp32 fit step 30.9 ms against
    28.5 ms this way, docs/benchmarks.md); returns the loss."""
    fit = loss(model, mean, logvar, target, beta, decay=False)
    fit.backward()
    with torch.no_grad():
        for wd, w in zip(model.weight_decay, model.weights):
            w.grad.add_(w, alpha=wd)
        return (fit.detach() + weight_decay(model)).item()  # (one host sync)


def weight_decay(model: EnsembleDynamics) -> Tensor:
    """Per-layer L2, sum over layers of 0.5 wd_l ||W_l||^2 (its gradient wd_l W_l)."""
    return sum(0.5 * wd * torch.dot(w.view(-1), w.view(-1)) for wd, w in zip(model.weight_decay, model.weights))


@torch.no_grad()
def holdout_metrics(model: EnsembleDynamics, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-member MSE, Gaussian NLL per output and calibration (mean squared error over
    predicted variance: 1 is calibrated, above 1 over-confident) on standardised holdout rows, each [E]."""
    mean, logvar = model.forward_normalized(x.expand(model.ensemble_size, *x.shape))
    err2 = (mean - y) ** 2
    scaled = err2 * torch.exp(-logvar)
    nll = 0.5 * (scaled + logvar + math.log(2 * math.pi))
    return err2.mean(dim=(1, 2)), nll.mean(dim=(1, 2)), scaled.mean(dim=(1, 2))


@torch.no_grad()
def recalibrate_variance(model: EnsembleDynamics, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Scale each member's predicted variance per output by its mean squared error over predicted
    variance on standardised rows x [N, O+A], y [N, O+1] (a held-out set), so that ratio becomes 1
    there (variance recalibration, as temperature scaling does for classifiers). Returns the
    log-scales applied [E, O+1] (0 where a member's ratio is not finite) and each member's
    calibration before [E]."""
    mean, logvar = model.forward_normalized(x.expand(model.ensemble_size, *x.shape))
    ratio = ((mean - y) ** 2 * torch.exp(-logvar)).mean(dim=1)  # [E, O+1]
    shift = torch.where(torch.isfinite(ratio) & (ratio > 0), ratio.log(), torch.zeros_like(ratio))
    model.shift_logvar(shift)
    return shift, ratio.mean(dim=1)


def epoch_order(resample: Tensor | None, members: int, rows: int, device: torch.device | str = "cpu") -> Tensor:
    """Row order [E, N] of one training epoch: each member's bootstrap resample [E, N] (drawn
    once per fit) reshuffled, or without one (None) all N rows reshuffled per member."""
    order = torch.rand(members, rows, device=device).argsort(dim=1)
    return order if resample is None else resample.gather(1, order)
