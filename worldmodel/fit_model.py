"""`python -m worldmodel.fit_model env=hopper`: collect transitions, fit the ensemble, report its accuracy.

Writes to the run directory: config.yaml, data.pt (the replay buffer), model.pt,
fit_history.csv (per epoch) and report.json (fit metrics and held-out accuracy).
"""

from __future__ import annotations

import csv
import sys

import torch
from omegaconf import DictConfig

from worldmodel import threads
from worldmodel.checkpoint import CheckpointError, atomic_write
from worldmodel.collect import collect, correlated_noise_policy, uniform_policy
from worldmodel.config import check_counts, check_device, compose_config, make_run_dir
from worldmodel.ensemble import EnsembleDynamics
from worldmodel.envs import check_task_name, make_env
from worldmodel.metrics import write_json
from worldmodel.replay import ReplayBuffer


def random_and_perturbed(name: str, steps: int, seed: int, progress: bool = False, **env_kwargs):
    """`steps` transitions with uniform actions, then `steps` with correlated noise: (TaskSpec, data)."""
    env = make_env(name, seed=seed, **env_kwargs)
    policies = [uniform_policy(env), correlated_noise_policy(env)]
    return env.task_spec, torch.cat([collect(env, p, steps, progress) for p in policies])


def fit_model(cfg: DictConfig) -> dict:
    check_task_name(cfg.env.name)
    check_counts(cfg, {"steps": 1, "holdout_steps": 1, "seed": 0})
    check_device(cfg.device)
    threads.set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    env_kwargs = {k: v for k, v in cfg.env.items() if k != "name"}
    spec = make_env(cfg.env.name, seed=cfg.seed, **env_kwargs).task_spec
    model_cfg = {k: v for k, v in cfg.model.items() if k != "fit"}
    model = EnsembleDynamics(spec.obs_dim, spec.act_dim, **model_cfg, termination_fn=spec.termination_fn)
    EnsembleDynamics.check_fit_settings(**cfg.model.fit)  # bad settings fail before any work or file
    model.to(cfg.device)

    run_dir = make_run_dir(cfg, "fit_model", cfg.env.name)
    spec, data = random_and_perturbed(cfg.env.name, cfg.steps, cfg.seed, progress=True, **env_kwargs)
    _, holdout = random_and_perturbed(cfg.env.name, cfg.holdout_steps, cfg.seed + 100, **env_kwargs)
    buffer = ReplayBuffer(spec.obs_dim, spec.act_dim, capacity=len(data))
    buffer.extend(data)
    buffer.save(run_dir / "data.pt")
    metrics = model.fit(data, **cfg.model.fit)
    model.save(run_dir / "model.pt")
    with atomic_write(run_dir / "fit_history.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "steps", "train_loss", "holdout_mse", "holdout_calibration", "improved"])
        writer.writeheader()
        writer.writerows(metrics.pop("history"))
    report = {"env": cfg.env.name, "fit": metrics, "holdout": model.evaluate(holdout)}
    write_json(report, run_dir / "report.json")
    h = report["holdout"]
    print(
        f"{cfg.env.name}: {len(data)} transitions, {metrics['epochs']} epochs in {metrics['wall_s']:.1f}s | "
        f"fresh-episode R^2 delta {h['r2_delta']:.3f}, reward {h['r2_reward']:.3f}, "
        f"calibration {h['calibration']:.2f} | {run_dir}"
    )
    return report


def main(argv: list[str] | None = None) -> dict:
    cfg = compose_config("fit_model", sys.argv[1:] if argv is None else argv, __doc__, open_keys=("env",))
    try:
        return fit_model(cfg)
    except (ValueError, CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
