"""`python -m worldmodel.run planner=mppi env=halfcheetah`: learn a task online with a model-based planner.

The loop: random actions for `seed_steps`, then plan with the ensemble; refit the model
(warm-started) every `train_every` steps; evaluate every `eval_every` steps. The run
directory holds config.yaml, metrics.jsonl, TensorBoard events (tb/), checkpoint.pt
(model + buffer + progress in one atomic file), learning_curve.png and summary.json.
`resume=<run dir>` continues from the last checkpoint (a new episode starts there).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from planners import PlanningError, make_planner
from worldmodel.checkpoint import CheckpointError, atomic_save, load_checked
from worldmodel.collect import uniform_policy
from worldmodel.config import compose_config, make_run_dir
from worldmodel.ensemble import EnsembleDynamics
from worldmodel.envs import check_task_name, make_env
from worldmodel.metrics import MetricsLogger
from worldmodel.replay import ReplayBuffer
from worldmodel.transitions import from_rollout

_FORMAT = "worldmodel.RunState"


def evaluate(planner, env, episodes: int) -> float:
    """Mean return of `episodes` deterministic episodes; the planner is reset around each."""
    returns = []
    for _ in range(episodes):
        planner.reset()
        act = lambda td: td.set("action", planner.act(td["observation"], deterministic=True))  # noqa: E731
        rollout = env.rollout(env.task_spec.max_episode_steps, policy=act)
        returns.append(rollout["next", "reward"].sum().item())
    planner.reset()
    return sum(returns) / len(returns)


class OnlineRun:
    """Everything one online run owns, so that it can be checkpointed and resumed as a whole."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir
        torch.manual_seed(cfg.seed)
        env_args = {k: v for k, v in cfg.env.items() if k != "name"}
        self.env = make_env(cfg.env.name, seed=cfg.seed, **env_args)
        self.eval_env = make_env(cfg.env.name, seed=cfg.seed + 10_000, **env_args)
        spec = self.spec = self.env.task_spec
        model_args = {k: v for k, v in cfg.model.items() if k != "fit"}
        self.model = EnsembleDynamics(spec.obs_dim, spec.act_dim, **model_args, termination_fn=spec.termination_fn)
        self.model.to(cfg.device)
        buffer = ReplayBuffer(spec.obs_dim, spec.act_dim, capacity=cfg.env_steps)
        settings = {k: v for k, v in cfg.planner.items() if k != "name"}
        self.planner = make_planner(cfg.planner.name, self.model, spec, buffer=buffer, **{"seed": cfg.seed, **settings})
        self.random_policy = uniform_policy(self.env)
        self.progress = {"step": 0, "episodes": 0, "fits": 0, "plan_s": 0.0, "plan_steps": 0,
                         "planning_errors": 0, "wall_s": 0.0, "best_eval": -math.inf, "final_eval": None}  # fmt: skip
        self.logger = MetricsLogger(run_dir)

    # -------------------------------------------------------------- checkpoints

    def save(self) -> None:
        atomic_save({
            "format": _FORMAT, "version": 1, "progress": self.progress,
            "model": self.model.state_dict(), "buffer": self.planner.buffer.state_dict(),
            "optimizer": self.model.optimizer(self.cfg.model.fit.lr).state_dict(),
            "torch_rng": torch.get_rng_state(), "planner_rng": self.planner.generator.get_state(),
        }, self.run_dir / "checkpoint.pt")  # fmt: skip

    def restore(self) -> None:
        path = self.run_dir / "checkpoint.pt"
        ckpt = load_checked(path, _FORMAT)
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{path}: the model does not match this run's config: {e}") from e
        saved = ReplayBuffer.from_state_dict(ckpt["buffer"], source=str(path))
        if saved.capacity >= self.planner.buffer.capacity:
            self.planner.buffer = saved
        elif len(saved):  # a resumed run given more env_steps: move the data into the larger buffer
            self.planner.buffer.extend(saved.data())
        self.model.optimizer(self.cfg.model.fit.lr).load_state_dict(ckpt["optimizer"])
        self.progress = ckpt["progress"]
        torch.set_rng_state(ckpt["torch_rng"])
        self.planner.generator.set_state(ckpt["planner_rng"])
        self.logger.truncate_after(self.progress["step"])

    # -------------------------------------------------------------- the loop

    def run(self) -> dict:
        cfg, p = self.cfg, self.progress
        started = time.perf_counter() - p["wall_s"]
        td, episode_return = self.env.reset(), 0.0
        self.planner.reset()
        bar = tqdm(total=cfg.env_steps, initial=p["step"], desc=f"{cfg.planner.name} {cfg.env.name}", unit="step")
        while p["step"] < cfg.env_steps:
            td["action"] = self._act(td["observation"])
            transition, td = self.env.step_and_maybe_reset(td)
            self.planner.observe(from_rollout(transition.unsqueeze(0)))
            p["step"] += 1
            step = p["step"]
            episode_return += transition["next", "reward"].item()
            if transition["next", "done"].item():
                p["episodes"] += 1
                self.logger.log("episode", step, ret=episode_return)
                bar.set_postfix(ret=f"{episode_return:.1f}", plan_ms=f"{self._plan_ms():.1f}")
                episode_return = 0.0
                self.planner.reset()
            if step >= cfg.seed_steps and (step == cfg.seed_steps or step % cfg.train_every == 0):
                self._fit(step)
            if step % cfg.eval_every == 0 or step == cfg.env_steps:
                self._evaluate(step)
            if step % cfg.checkpoint_every == 0 or step == cfg.env_steps:
                p["wall_s"] = time.perf_counter() - started
                self.save()
            bar.update()
        bar.close()
        p["wall_s"] = time.perf_counter() - started
        return self._finish()

    def _act(self, obs: torch.Tensor) -> torch.Tensor:
        p = self.progress
        if p["step"] < self.cfg.seed_steps:
            return self.random_policy(obs)
        start = time.perf_counter()
        try:
            action = self.planner.act(obs)
        except PlanningError as e:
            p["planning_errors"] += 1
            tqdm.write(f"step {p['step']}: {e}; taking a random action instead")
            self.planner.reset()
            return self.random_policy(obs)
        p["plan_s"] += time.perf_counter() - start
        p["plan_steps"] += 1
        return action.cpu()

    def _fit(self, step: int) -> None:
        fit_cfg = dict(self.cfg.model.fit)
        if self.progress["fits"] > 0:
            fit_cfg["max_epochs"] = self.cfg.fit_epochs
        metrics = self.planner.update(**fit_cfg)
        self.progress["fits"] += 1
        self.logger.log("fit", step, epochs=metrics["epochs"], wall_s=metrics["wall_s"],
                        holdout_mse=sum(metrics["holdout_mse"]) / len(metrics["holdout_mse"]))  # fmt: skip

    def _evaluate(self, step: int) -> None:
        p = self.progress
        ret = evaluate(self.planner, self.eval_env, self.cfg.eval_episodes)
        p["final_eval"], p["best_eval"] = ret, max(p["best_eval"], ret)
        self.logger.log("eval", step, ret=ret, plan_ms=self._plan_ms())
        tqdm.write(f"step {step}: evaluation return {ret:.1f}")

    def _plan_ms(self) -> float:
        p = self.progress
        return 1000 * p["plan_s"] / max(p["plan_steps"], 1)

    def _finish(self) -> dict:
        p = self.progress
        summary = {
            "env": self.cfg.env.name, "planner": self.cfg.planner.name, "seed": self.cfg.seed,
            "final_eval_return": p["final_eval"], "best_eval_return": p["best_eval"],
            "env_steps": p["step"], "episodes": p["episodes"], "model_fits": p["fits"],
            "wall_s": p["wall_s"], "plan_ms_per_step": self._plan_ms(), "planning_errors": p["planning_errors"],
        }  # fmt: skip
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.logger.plot(self.run_dir / "learning_curve.png", f"{self.cfg.planner.name} on {self.cfg.env.name}")
        self.logger.close()
        return summary


def load_config(argv: list[str]) -> tuple[DictConfig, Path | None]:
    """The run's config: configs/config.yaml with overrides, or on resume=DIR that run's saved
    config with the other overrides (e.g. a larger env_steps) applied on top."""
    resume = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if resume is None:
        return compose_config("config", argv), None
    saved = Path(resume) / "config.yaml"
    if not saved.is_file():
        raise SystemExit(f"error: cannot resume from {resume}: no config.yaml there (is it a run directory?)")
    cfg = OmegaConf.load(saved)
    OmegaConf.set_struct(cfg, True)
    others = [a for a in argv if not a.startswith(("resume=", "run_dir="))]
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(others))
    except Exception as e:
        raise SystemExit(f"error: bad override for a resumed run: {e}") from None
    cfg.run_dir, cfg.resume = resume, resume
    return cfg, Path(resume)


def main(argv: list[str] | None = None) -> dict:
    cfg, resume_dir = load_config(sys.argv[1:] if argv is None else argv)
    try:
        check_task_name(cfg.env.name)
        run_dir = make_run_dir(cfg, "run", cfg.env.name)
        run = OnlineRun(cfg, run_dir)
        if resume_dir is not None:
            run.restore()
        return run.run()
    except (ValueError, CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
