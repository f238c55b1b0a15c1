"""`python -m worldmodel.run planner=mppi env=halfcheetah`: learn a task with a model-based planner.

Online: random actions for `seed_steps`, then act with the planner; refit the model
(warm-started) every `train_every` steps and let the planner learn after each step (Dyna
agents take their gradient steps); evaluate every `eval_every` steps.
With `dataset=<file>` the run first learns offline: it fits the model on the dataset, trains
the agent for `offline.updates` gradient steps (evaluating every `offline.eval_every`), then
goes on online for `env_steps`. `model=<model.pt>` starts from a pretrained model instead.
The run directory holds config.yaml, metrics.jsonl, TensorBoard events (tb/), checkpoint.pt
(model, optimiser, planner, buffer, progress, RNG in one atomic file), model.pt,
learning_curve.png and summary.json. `resume=<run dir>` continues from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from planners import MPCPlanner, PlanningError, make_planner
from worldmodel.checkpoint import CheckpointError, atomic_save, load_checked
from worldmodel.collect import uniform_policy
from worldmodel.config import CONFIG_DIR, compose_config, make_run_dir
from worldmodel.datasets import DatasetError, load_dataset, normalized_score
from worldmodel.ensemble import EnsembleDynamics
from worldmodel.envs import check_task_name, make_env
from worldmodel.metrics import MetricsLogger
from worldmodel.replay import ReplayBuffer
from worldmodel.transitions import from_rollout

_FORMAT = "worldmodel.RunState"
_VERSION = 2


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


class Run:
    """Everything one run owns, so that it can be checkpointed and resumed as a whole."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir
        torch.manual_seed(cfg.seed)
        env_args = {k: v for k, v in cfg.env.items() if k != "name"}
        self.env = make_env(cfg.env.name, seed=cfg.seed, **env_args)
        self.eval_env = make_env(cfg.env.name, seed=cfg.seed + 10_000, **env_args)
        spec = self.spec = self.env.task_spec
        self.dataset = load_dataset(cfg.dataset, spec.obs_dim, spec.act_dim)[0] if cfg.dataset else None
        if cfg.pretrained:
            self.model = EnsembleDynamics.load(cfg.pretrained, obs_dim=spec.obs_dim, act_dim=spec.act_dim,
                                               termination_fn=spec.termination_fn)  # fmt: skip
        else:
            model_args = {k: v for k, v in cfg.model.items() if k != "fit"}
            self.model = EnsembleDynamics(spec.obs_dim, spec.act_dim, **model_args, termination_fn=spec.termination_fn)
        self.model.to(cfg.device)
        if any(v is not None for v in cfg.online.values()) and not cfg.dataset:
            raise ValueError("online.* settings change a planner at the switch from offline learning; "
                             "they need dataset=<file>")
        capacity = max(cfg.env_steps + (len(self.dataset) if self.dataset is not None else 0), 1)
        buffer = ReplayBuffer(spec.obs_dim, spec.act_dim, capacity=capacity)
        settings = {k: v for k, v in cfg.planner.items() if k != "name"}
        self.planner = make_planner(cfg.planner.name, self.model, spec, buffer=buffer, **{"seed": cfg.seed, **settings})
        self.random_policy = uniform_policy(self.env)
        # after offline learning or from a pretrained model the planner acts from the first step
        self.seed_steps = 0 if (cfg.dataset or cfg.pretrained) else cfg.seed_steps
        self.progress = {"step": 0, "episodes": 0, "fits": 0, "plan_s": 0.0, "plan_steps": 0,
                         "planning_errors": 0, "wall_s": 0.0, "best_eval": -math.inf, "final_eval": None,
                         "dataset_loaded": False, "offline_updates": 0, "offline_eval": None}  # fmt: skip
        self.logger = MetricsLogger(run_dir)

    # -------------------------------------------------------------- checkpoints

    def save(self) -> None:
        atomic_save({
            "format": _FORMAT, "version": _VERSION, "progress": self.progress,
            "model": self.model.state_dict(), "buffer": self.planner.buffer.state_dict(),
            "optimizer": self.model.optimizer(self.cfg.model.fit.lr).state_dict(),
            "planner": self.planner.state_dict(), "torch_rng": torch.get_rng_state(),
        }, self.run_dir / "checkpoint.pt")  # fmt: skip

    def restore(self) -> None:
        path = self.run_dir / "checkpoint.pt"
        ckpt = load_checked(path, _FORMAT)
        if ckpt.get("version") != _VERSION:
            raise CheckpointError(f"{path} was written by an older worldmodel (checkpoint version "
                                  f"{ckpt.get('version')}, this one reads {_VERSION}); start a new run")  # fmt: skip
        try:
            self.model.load_state_dict(ckpt["model"])
            self.planner.load_state_dict(ckpt["planner"])
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(f"{path}: the model or planner does not match this run's config: {e}") from e
        saved = ReplayBuffer.from_state_dict(ckpt["buffer"], source=str(path))
        if saved.capacity >= self.planner.buffer.capacity:
            self.planner.buffer = saved
        elif len(saved):  # a resumed run given more env_steps: move the data into the larger buffer
            self.planner.buffer.extend(saved.data())
        self.model.optimizer(self.cfg.model.fit.lr).load_state_dict(ckpt["optimizer"])
        self.progress = ckpt["progress"]
        torch.set_rng_state(ckpt["torch_rng"])
        p = self.progress
        self.logger.truncate(lambda r: r["step"] <= (p["offline_updates"] if r["kind"].startswith("offline") else p["step"]))

    # -------------------------------------------------------------- the run

    def run(self) -> dict:
        started = time.perf_counter() - self.progress["wall_s"]
        if self.dataset is not None:
            self._offline(started)
        self._online(started)
        self.progress["wall_s"] = time.perf_counter() - started
        return self._finish()

    def _offline(self, started: float) -> None:
        """Fit the model on the dataset, then train the agent for offline.updates gradient steps."""
        cfg, p = self.cfg, self.progress
        if not p["dataset_loaded"]:
            self.planner.observe(self.dataset)
            p["dataset_loaded"] = True
            self._fit(0)
            self._checkpoint(started)
        learns = not isinstance(self.planner, MPCPlanner) or self.planner.value_agent is not None
        total = cfg.offline.updates if learns else 0
        bar = tqdm(total=total, initial=p["offline_updates"], desc=f"offline {cfg.planner.name}", unit="update")
        while p["offline_updates"] < total or p["offline_eval"] is None:
            n = min(cfg.offline.eval_every, total - p["offline_updates"])
            stats = self.planner.learn(n) if n else {}
            p["offline_updates"] += n
            bar.update(n)
            ret = p["offline_eval"] = evaluate(self.planner, self.eval_env, cfg.eval_episodes)
            p["best_eval"] = max(p["best_eval"], ret)
            self.logger.log("offline_train", p["offline_updates"], **stats)
            self.logger.log("offline_eval", p["offline_updates"], ret=ret, **self._score("score", ret))
            bar.set_postfix(ret=f"{ret:.1f}")
            self._checkpoint(started)
        bar.close()
        if p["step"] == 0:  # the switch: the offline policy's return is the online curve's first point
            self.logger.truncate(lambda r: not (r["kind"] == "eval" and r["step"] == 0))  # (a resumed run's)
            self.logger.log("eval", 0, ret=p["offline_eval"], **self._score("score", p["offline_eval"]))
            p["best_eval"], p["final_eval"] = max(p["best_eval"], p["offline_eval"]), p["offline_eval"]
        if p["fits"] or cfg.pretrained:
            self.model.save(self.run_dir / "model.pt")
        self._apply_online_settings()

    def _apply_online_settings(self) -> None:
        """online.* replace the planner's offline settings at the switch (validated like any setting)."""
        changes = {k: v for k, v in self.cfg.online.items() if v is not None}
        if not changes:
            return
        if unknown := [k for k in changes if not hasattr(self.planner.config, k)]:
            raise ValueError(f"online.{unknown[0]} is set but planner {self.cfg.planner.name!r} has no setting {unknown[0]!r}")
        self.planner.config = dataclasses.replace(self.planner.config, **changes)

    def _online(self, started: float) -> None:
        cfg, p = self.cfg, self.progress
        td, episode_return, learned = self.env.reset(), 0.0, {}
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
            if step >= self.seed_steps and (step == self.seed_steps or step % cfg.train_every == 0):
                self._fit(step)
            if p["fits"] > 0 or cfg.pretrained or self.dataset is not None:
                learned = self.planner.learn()
            if step % cfg.eval_every == 0 or step == cfg.env_steps:
                if learned:
                    self.logger.log("train", step, **learned)
                self._evaluate(step)
            if step % cfg.checkpoint_every == 0 or step == cfg.env_steps:
                self._checkpoint(started)
            bar.update()
        bar.close()

    def _checkpoint(self, started: float) -> None:
        self.progress["wall_s"] = time.perf_counter() - started
        self.save()

    def _act(self, obs: torch.Tensor) -> torch.Tensor:
        p = self.progress
        if p["step"] < self.seed_steps:
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
        if self.progress["fits"] > 0 or self.cfg.pretrained:
            fit_cfg["max_epochs"] = self.cfg.fit_epochs
        metrics = self.planner.update(**fit_cfg)
        if "holdout_mse" in metrics:  # planners that fit no model (behaviour cloning) report nothing
            self.progress["fits"] += 1
            self.logger.log("fit", step, epochs=metrics["epochs"], wall_s=metrics["wall_s"],
                            holdout_mse=sum(metrics["holdout_mse"]) / len(metrics["holdout_mse"]))  # fmt: skip

    def _evaluate(self, step: int) -> None:
        p = self.progress
        ret = evaluate(self.planner, self.eval_env, self.cfg.eval_episodes)
        p["final_eval"], p["best_eval"] = ret, max(p["best_eval"], ret)
        self.logger.log("eval", step, ret=ret, plan_ms=self._plan_ms(), **self._score("score", ret))
        tqdm.write(f"step {step}: evaluation return {ret:.1f}")

    def _score(self, key: str, ret: float | None) -> dict:
        """{key: D4RL-normalised score} where the task has reference returns (and its usual
        1000-step episodes and no action repeat), else {}."""
        standard = self.cfg.env.get("max_episode_steps") in (None, 1000) and self.cfg.env.get("action_repeat", 1) == 1
        score = normalized_score(self.cfg.env.name, ret) if ret is not None and standard else None
        return {} if score is None else {key: score}

    def _plan_ms(self) -> float:
        p = self.progress
        return 1000 * p["plan_s"] / max(p["plan_steps"], 1)

    def _finish(self) -> dict:
        p = self.progress
        summary = {
            "env": self.cfg.env.name, "planner": self.cfg.planner.name, "seed": self.cfg.seed,
            "final_eval_return": p["final_eval"], "best_eval_return": p["best_eval"],
            **self._score("normalized_score", p["final_eval"]), **self._score("best_normalized_score", p["best_eval"]),
            "env_steps": p["step"], "episodes": p["episodes"], "model_fits": p["fits"],
            "wall_s": p["wall_s"], "plan_ms_per_step": self._plan_ms(), "planning_errors": p["planning_errors"],
        }  # fmt: skip
        if self.dataset is not None:
            summary.update(dataset=self.cfg.dataset, dataset_transitions=len(self.dataset),
                           offline_updates=p["offline_updates"], offline_eval_return=p["offline_eval"],
                           **self._score("offline_normalized_score", p["offline_eval"]))  # fmt: skip
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if p["fits"] or self.cfg.pretrained:
            self.model.save(self.run_dir / "model.pt")
        self.logger.plot(self.run_dir / "learning_curve.png", f"{self.cfg.planner.name} on {self.cfg.env.name}")
        self.logger.close()
        return summary


def load_config(argv: list[str]) -> tuple[DictConfig, Path | None]:
    """The run's config: configs/config.yaml with overrides, or on resume=DIR that run's saved
    config with the other overrides (e.g. a larger env_steps) applied on top."""
    argv = [_pretrained_model(a) for a in argv]
    resume = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if resume is None:
        return compose_config("config", argv, __doc__), None
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


def _pretrained_model(arg: str) -> str:
    """`model=<file>` names a pretrained model rather than a configs/model/ option: `pretrained=<file>`."""
    if arg.startswith("model=") and not (CONFIG_DIR / "model" / f"{arg[6:]}.yaml").is_file():
        path = arg[6:]
        if not Path(path).is_file():
            raise SystemExit(f"error: model={path} is neither a config in configs/model/ "
                             f"({', '.join(p.stem for p in (CONFIG_DIR / 'model').glob('*.yaml'))}) nor a model file")  # fmt: skip
        return f"pretrained={path}"
    return arg


def main(argv: list[str] | None = None) -> dict:
    cfg, resume_dir = load_config(sys.argv[1:] if argv is None else argv)
    try:
        check_task_name(cfg.env.name)
        run_dir = make_run_dir(cfg, "run", cfg.env.name)
        run = Run(cfg, run_dir)
        if resume_dir is not None:
            run.restore()
        return run.run()
    except (ValueError, CheckpointError, DatasetError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
