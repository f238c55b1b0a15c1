"""`python -m worldmodel.run planner=mppi env=halfcheetah`: learn a task with a model-based planner.

Online: random actions for `seed_steps`, then act with the planner; refit the model
(warm-started) every `train_every` steps and let the planner learn after each step (Dyna
agents take their gradient steps); evaluate every `eval_every` steps.
With `dataset=<file>` the run first learns offline: it fits the model on the dataset, trains
the agent for `offline.updates` gradient steps (evaluating every `offline.eval_every`), then
goes on online for `env_steps`. `model=<model.pt>` starts from a pretrained model instead.
The run directory holds config.yaml, metrics.jsonl, TensorBoard events (tb/), checkpoint.pt
(model, optimiser, planner, buffer, progress, RNG in one atomic file), model.pt,
learning_curve.png and summary.json, all rewritten at every checkpoint. `resume=<run dir>`
continues from the last checkpoint. Every setting is checked before any work or file; SIGINT or
SIGTERM finishes the current step, saves everything and prints the resume command.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from planners import (DYNA_PLANNERS, Dyna, MPCPlanner, PlanningError, evaluation_returns, learned_agent, planner_config,
                      planner_defaults)
from planners.agent import Agent
from worldmodel import threads
from worldmodel.checkpoint import (RUN_FORMAT, CheckpointError, RunDirLock, atomic_save, load_checked, rng_state,
                                   set_rng_state)
from worldmodel.collect import uniform_policy
from worldmodel.config import (check_counts, check_device, check_model_settings, check_paths, compose_config, resumed_config,
                               run_dir_for, save_config)
from worldmodel.datasets import (DatasetError, check_task, fingerprint, load_dataset, normalized_score, offline_presets,
                                 offline_settings, read_metadata)
from worldmodel.ensemble import EnsembleDynamics
from worldmodel.envs import check_task_name, episode_random_state, make_env, set_episode_random_state
from worldmodel.fitting import fit_record
from worldmodel.interrupts import PipeSafe, RunInterrupted, StopRequest
from worldmodel.metrics import MetricsLogger, write_json
from worldmodel.ope import episode_starts, model_return
from worldmodel.transition_log import LogCorruptError, TransitionLog
from worldmodel.transitions import from_rollout
from worldmodel.uncertainty import Uncertainty


_VERSION = 2
_LEARN_CHUNK = 100  # offline agent updates between checks for an interrupt
_FIT_STATE, _FIT_STATE_FORMAT = "fit_state.pt", "worldmodel.FitState"  # a long fit's progress
_FIT_SAVE_EVERY_S = 60.0
# plan_ms (progress bar, evaluations, summary.json's plan_ms_per_step) is the median time of the last
# this many planned steps: a stall inside one (a process paused with SIGSTOP or Ctrl-Z, a laptop
# asleep) moved the run's mean by 36 ms for good (cartpole-swingup seed 1 of #12's table: 74 ms
# before a 15-minute pause, 103 after); the mean stays in summary.json as plan_ms_mean
PLAN_TIMES_KEPT = 1000


class Run:
    """Everything one run owns, so that it can be checkpointed and resumed as a whole.

    Building it checks every setting (envs, model, planner, dataset) and writes nothing;
    `open(run_dir)` creates the run directory once that has succeeded.
    """

    def __init__(self, cfg: DictConfig):
        self.cfg, self.run_dir, self.logger, self._lock = cfg, None, None, None
        torch.manual_seed(cfg.seed)
        env_args = {k: v for k, v in cfg.env.items() if k != "name"}
        self.env = make_env(cfg.env.name, seed=cfg.seed, **env_args)
        self.eval_env = make_env(cfg.env.name, seed=cfg.seed + 10_000, **env_args)
        spec = self.spec = self.env.task_spec
        self.dataset, self.dataset_metadata = (load_dataset(cfg.dataset, spec.obs_dim, spec.act_dim, cfg.env.name, cfg.env)
                                               if cfg.dataset else (None, {}))  # fmt: skip
        self.dataset_fingerprint = fingerprint(self.dataset) if self.dataset is not None else None
        capacity = cfg.env_steps + (len(self.dataset) if self.dataset is not None else 0)
        self.agent = Agent.from_config(cfg, spec, capacity)
        if cfg.pretrained:
            print(self.agent.describe_pretrained())
        if unknown := [k for k, v in cfg.online.items() if v is not None and not hasattr(self.planner.config, k)]:
            raise ValueError(f"online.{unknown[0]} is set but planner {cfg.planner.name!r} has no setting {unknown[0]!r}")
        self._online_config()  # the settings for the switch are checked now, not hours later
        self.random_policy = uniform_policy(self.env)
        # after offline learning or from a pretrained model the planner acts from the first step
        self.seed_steps = 0 if (cfg.dataset or cfg.pretrained) else cfg.seed_steps
        self.progress = {"step": 0, "episodes": 0, "fits": 0, "plan_s": 0.0, "plan_steps": 0,
                         "planning_errors": 0, "wall_s": 0.0, "best_eval": None, "final_eval": None,
                         "dataset_loaded": False, "offline_updates": 0, "offline_eval": None,
                         "offline_evals": [], "selected": None, "fit_written": None,
                         "dataset_fingerprint": self.dataset_fingerprint}  # fmt: skip
        self.stop = StopRequest("the current step")
        self._saved_at: tuple | None = None  # the progress last checkpointed
        self._saved_t = time.monotonic()  # when (checkpoint_minutes counts from here)
        self._fit_due = False  # refit at the next step (logged transitions rejoined the buffer)
        self._eval_due = False  # evaluate before going on (likewise)
        # the training env's random state before the reset that began the episode now under way, while
        # no step of it is taken: a run resumed from a checkpoint then (dm-control's, which fall on
        # episode ends) begins the same episode; from one mid-episode it begins the next one's
        self._episode_began_from: dict | None = None
        self.resumed = False  # restored from a checkpoint
        self._restored_at_episode_start = 0  # 1: the restored training env's state is from before its episode's reset
        # offline model-score selection (Dyna): the evaluated agent whose actor's model return was best
        # so far, and while that snapshot stands in (offline.select=model_score), the trained one
        self.selected_agent: dict | None = None  # offline.select=model_score's snapshot (SAC.training_state)
        self.trained_agent: dict | None = None  # the trained agent, kept aside while the snapshot stands in

    @property
    def planner(self):
        return self.agent.planner

    @property
    def model(self) -> EnsembleDynamics:
        return self.agent.model

    @property
    def log(self) -> TransitionLog | None:
        return self.agent.log

    def open(self, run_dir: Path) -> None:
        """Create the run directory (config.yaml, metrics) for a new run or a restored one; under its
        lock, a ValueError for a new run in a directory that holds one, or a restored run that went
        online (its checkpoint or its transition log says so) given more offline.updates."""
        self.run_dir = run_dir
        self._lock = RunDirLock(run_dir)  # one process per run directory
        if not self.resumed and (run_dir / "checkpoint.pt").exists():  # (checked under the lock: a run may have
            raise ValueError(f"run_dir={run_dir} holds a run already: resume={run_dir} continues it, "  # begun meanwhile)
                             "or choose another run_dir")  # fmt: skip
        self.logger = MetricsLogger(run_dir)
        try:
            self.agent.open_log(run_dir / "transitions")
        except LogCorruptError as e:
            raise LogCorruptError(f"{e}: move {run_dir / 'transitions'} aside to resume from the checkpoint without "
                                  "the transitions logged after it") from None  # fmt: skip
        p = self.progress
        went_online = p["step"] > 0 or (self.log is not None and self._logged_steps() > 0)
        if self.resumed and self.dataset is not None and went_online and self._offline_updates() > p["offline_updates"]:
            raise ValueError(f"{run_dir}: the run went online after {p['offline_updates']} offline updates; "
                             f"offline.updates={self.cfg.offline.updates} would add more in the middle of its online "
                             "phase: resume without it, or start a new run from its model (pretrained=)")  # fmt: skip
        self.logger.truncate(self._kept_on_resume())  # a resumed run drops the records after its checkpoint
        save_config(self.cfg, run_dir)  # (last: a resume that fails above leaves the saved config as it was)

    def _rejoin_logged_transitions(self) -> None:
        """Real transitions logged after the checkpoint (the run was killed) join the buffer and
        count as steps taken: nothing real is lost, nor collected twice. Called as online learning
        (re)starts: after the offline phase and its switch, which a checkpoint from before the
        switch makes again (the rejoined steps were taken by the policy after it)."""
        p = self.progress
        logged = self._logged_steps()
        if logged < p["step"]:  # a log begun after the run (older runs): align it from here
            p["log_offset"] = len(self.log) - p["step"]
        elif logged > p["step"]:
            extra = self.log.read(start=p["step"] + p.get("log_offset", 0))
            self.planner.observe(extra)
            rejoined = range(p["step"] + 1, p["step"] + len(extra) + 1)
            p["step"] += len(extra)
            ends = int((extra["terminated"] | extra["truncated"]).sum())
            p["episodes"] += ends
            # the starts the run drew meanwhile, drawn again (the next reset begins the episode under way
            # at the kill, or the next): the one at the checkpoint where it saved the state before it,
            # and one at each episode end but the last step's (its episode is the one that goes on)
            for _ in range(self._restored_at_episode_start + ends - bool(extra["terminated"][-1] | extra["truncated"][-1])):
                self.env.reset()
            # a refit or an evaluation that fell due in the rejoined steps was skipped: one now, before
            # the next action (none where none fell due, as in a run never killed)
            self._fit_due = any(map(self._fit_at, rejoined))
            self._eval_due = any(map(self._eval_at, rejoined))
            tqdm.write(f"{len(extra)} real transition(s) logged after the checkpoint rejoin the buffer "
                       f"(now at step {p['step']})")  # fmt: skip

    def _logged_steps(self) -> int:
        """Steps of this run the transition log holds (a log begun after the run: from its offset)."""
        return len(self.log) - self.progress.get("log_offset", 0)

    def _kept_on_resume(self) -> Callable[[dict], bool]:
        """Which metrics records the checkpoint covers (in file order): its first progress["fits"]
        fit records (a fit logged, then killed before its checkpoint, is fitted again), the offline
        fit's epochs once that fit is in it, episodes up to the last step the transition log holds
        (those steps rejoin the buffer), and other records up to its step or update."""
        p, fits_seen = self.progress, [0]
        logged = p["step"] if self.log is None else max(p["step"], self._logged_steps())

        def keep(record: dict) -> bool:
            if record["kind"] == "offline_fit":
                return p["fits"] > 0
            if record["kind"] == "fit":
                fits_seen[0] += 1
                return fits_seen[0] <= p["fits"]
            if record["kind"] == "episode":
                return record["step"] <= logged
            return record["step"] <= (p["offline_updates"] if record["kind"].startswith("offline") else p["step"])

        return keep

    # -------------------------------------------------------------- checkpoints

    def save(self) -> None:
        atomic_save({"format": RUN_FORMAT, "version": _VERSION, "progress": self.progress, **self.agent.state_dict(),
                     "selected_agent": self.selected_agent, "trained_agent": self.trained_agent,
                     "torch_rng": rng_state(), "env_rng": {"train": self._episode_began_from or episode_random_state(self.env),
                                                           "train_at_episode_start": self._episode_began_from is not None,
                                                           "eval": episode_random_state(self.eval_env)}},
                    self.run_dir / "checkpoint.pt")  # fmt: skip

    def restore(self, run_dir: Path) -> None:
        """Load run_dir/checkpoint.pt into this run (writes nothing)."""
        path = run_dir / "checkpoint.pt"
        ckpt = load_checked(path, RUN_FORMAT)
        if ckpt.get("version") != _VERSION:
            raise CheckpointError(f"{path} was written by an older worldmodel (checkpoint version "
                                  f"{ckpt.get('version')}, this one reads {_VERSION}); start a new run")  # fmt: skip
        learned_from = ckpt["progress"].get("dataset_fingerprint")  # (None: no dataset, or a run from before it was kept)
        if learned_from is not None and learned_from != self.dataset_fingerprint:
            raise CheckpointError(f"{path}: the run learned from dataset {learned_from}, but {self.cfg.dataset} now "
                                  f"holds {self.dataset_fingerprint}: the file was made again or replaced; resume "
                                  "with that data, or start a new run")  # fmt: skip
        self.resumed = True
        self.agent.load_state_dict(ckpt, source=str(path))  # (a larger env_steps gets a larger buffer)
        self.progress = ckpt["progress"]
        self.progress.setdefault("dataset_fingerprint", self.dataset_fingerprint)  # (a run from before it was kept)
        self.selected_agent = ckpt.get("selected_agent", ckpt.get("selected_actor"))  # (older runs: the actor alone)
        self.trained_agent = ckpt.get("trained_agent", ckpt.get("trained_actor"))
        if "selected" not in self.progress:  # a run from before the selection: its evaluations' actors are gone
            self.progress["selected"] = False if self.progress.get("offline_evals") else None
        if self.progress["selected"] is False and self.cfg.offline.select == "model_score":
            raise ValueError(f"{path} was written before worldmodel kept the actor of each evaluation, so "
                             "offline.select=model_score cannot pick among them: resume it with offline.select=last")  # fmt: skip
        set_rng_state(ckpt["torch_rng"])
        if "env_rng" in ckpt:  # (runs saved before 2026-12-07 start their episodes from the seed's first again)
            set_episode_random_state(self.env, ckpt["env_rng"]["train"])
            set_episode_random_state(self.eval_env, ckpt["env_rng"]["eval"])
            self._restored_at_episode_start = int(ckpt["env_rng"]["train_at_episode_start"])

    # -------------------------------------------------------------- the run

    def run(self) -> dict:
        """Learn to the end (offline, then online); on SIGINT/SIGTERM (caught while `self.stop` is
        active) save everything and raise RunInterrupted. A failure marks summary.json "failed"
        and leaves the last checkpoint as it was."""
        started = time.perf_counter() - self.progress["wall_s"] - self._unsaved_fit_s()
        try:
            if not (self.run_dir / "checkpoint.pt").is_file():
                self._checkpoint(started)  # from here on, any run can resume
            elif self.resumed:  # (its summary said finished or interrupted: a sweep skips a run that says finished)
                write_json(self._summary("running"), self.run_dir / "summary.json")
            self._stop_if_requested(started)
            if self.dataset is not None:
                self._offline(started)
            self._online(started)
        except (RunInterrupted, KeyboardInterrupt):
            raise
        except Exception as e:
            write_json({**self._summary("failed"), "error": f"{type(e).__name__}: {e}"}, self.run_dir / "summary.json")
            raise
        return self._checkpoint(started, status="finished")

    def _offline(self, started: float) -> None:
        """Fit the model on the dataset, then train the agent for offline.updates gradient steps."""
        cfg, p = self.cfg, self.progress
        self.agent.add_dataset(self.dataset, observe=not p["dataset_loaded"])  # (restored runs hold it already)
        if not p["dataset_loaded"]:
            if not cfg.pretrained:  # a given model is used as it is (a refit would draw a new holdout split)
                self._fit(0, max_epochs=cfg.offline.fit_epochs, started=started)
            else:  # (taken as fitted on the dataset: online refits hold out among the new rows alone)
                p["fit_written"] = self.agent.buffer.written
                self.agent.check_pretrained_value(self.dataset)  # (a pretrained value below 0 warns)
            p["dataset_loaded"] = True
            self._checkpoint(started)
            (self.run_dir / _FIT_STATE).unlink(missing_ok=True)
            self._stop_if_requested(started)
        total, every = self._offline_updates(), cfg.offline.eval_every
        if p["offline_updates"] < total and p["step"] == 0 and self.trained_agent is not None:
            self._use_agent(self.trained_agent)  # learning goes on from the trained agent, not the snapshot
            self.trained_agent = None
        if isinstance(self.planner, Dyna):  # (one cosine from the offline phase's first update, a budget extended too)
            self.planner.schedule(total - p["offline_updates"], start=self.planner.agent.updates - p["offline_updates"])
        if p["step"] == 0 and (agent := learned_agent(self.planner)) is not None:
            agent.anchor_pending = True  # (actor_anchor's trust region starts at the switch below)
        bar = _bar(total, p["offline_updates"], f"offline {cfg.planner.name}", "update")
        stats = {}
        while p["offline_updates"] < total or p["offline_eval"] is None:
            next_eval = min(total, (p["offline_updates"] // every + 1) * every)
            while p["offline_updates"] < next_eval:
                n = min(_LEARN_CHUNK, next_eval - p["offline_updates"])
                threads.adapt()
                stats = self.planner.learn(n)
                p["offline_updates"] += n
                bar.update(n)
                if p["offline_updates"] < next_eval:  # (a stop there waits for the evaluation due: it is not skipped)
                    if self._checkpoint_due():
                        self._checkpoint(started)
                    self._stop_if_requested(started, bar)
            ret, spread = self._evaluated(bar, cfg.offline.eval_episodes)
            p.setdefault("offline_evals", []).append(ret)
            p["offline_eval"] = _mean(p["offline_evals"][-cfg.offline.score_last :])
            p["best_eval"] = _max(p["best_eval"], ret)
            estimate = self._model_return()
            self._select(ret, estimate.get("model_ret"))
            self.logger.log("offline_train", p["offline_updates"], **stats)
            self.logger.log("offline_eval", p["offline_updates"], ret=ret, **spread, **self._score("score", ret),
                            **self._score("last_score", p["offline_eval"]), **estimate)  # fmt: skip
            bar.set_postfix(ret=f"{ret:.1f}")
            self._checkpoint(started)
            self._stop_if_requested(started, bar)
        bar.close()
        if p["step"] == 0:  # the switch: the offline policy's return is the online curve's first point
            now, p["final_eval"] = self._offline_policy()
            if (agent := learned_agent(self.planner)) is not None:
                agent.anchor_here()  # online fine-tuning's trust region (actor_anchor) is around the offline policy
            self.logger.truncate(lambda r: not (r["kind"] == "eval" and r["step"] == 0))  # (a resumed run's)
            self.logger.log("eval", 0, ret=now, **self._score("score", now))
        if isinstance(self.planner, Dyna):
            self.planner.schedule(None)  # online: constant learning rates
            self._saved_at = None  # (saved again, so a pretrained=<this run> starts from the online lr)
        self.planner.config = self._online_config()

    def _online_config(self):
        """The planner's config after the switch: online.* replace its offline settings (checked
        like any setting: a bad value is a ValueError)."""
        changes = {k: v for k, v in self.cfg.online.items() if v is not None}
        return dataclasses.replace(self.planner.config, **changes) if changes else self.planner.config

    def _online(self, started: float) -> None:
        cfg, p = self.cfg, self.progress
        self._rejoin_logged_transitions()
        td, episode_return, learned = self.env.reset(), 0.0, {}
        self.planner.reset()
        bar = _bar(cfg.env_steps, p["step"], f"{cfg.planner.name} {cfg.env.name}", "step")
        if self._fit_due:
            self._fit(p["step"])
            self._fit_due = False
        if self._eval_due:
            self._evaluate(p["step"], bar)
            self._eval_due = False
            self._checkpoint(started)  # (as after any evaluation)
        while p["step"] < cfg.env_steps:
            threads.adapt()
            td["action"] = self._act(td["observation"])
            before = episode_random_state(self.env)  # (a checkpoint at an episode's start saves the state it began from)
            transition, td = self.env.step_and_maybe_reset(td)
            real = from_rollout(transition.unsqueeze(0))
            self.agent.observe(real)  # durable in the log before it counts
            p["step"] += 1
            step = p["step"]
            episode_return += transition["next", "reward"].item()
            self._episode_began_from = None
            if transition["next", "done"].item():
                self._episode_began_from = before
                p["episodes"] += 1
                self.logger.log("episode", step, ret=episode_return)
                bar.set_postfix(ret=f"{episode_return:.1f}", plan_ms=f"{self._plan_ms():.1f}")
                episode_return = 0.0
                self.planner.reset()
            if self._fit_at(step):
                bar.set_postfix_str("fitting the model...")
                self._fit(step)
                bar.set_postfix(plan_ms=f"{self._plan_ms():.1f}")
            if p["fits"] > 0 or cfg.pretrained or self.dataset is not None:
                learned = self.planner.learn()
            evaluated = self._eval_at(step)
            if evaluated:
                if learned:
                    self.logger.log("train", step, **learned)
                self._evaluate(step, bar)
            bar.update()
            if step < cfg.env_steps:  # (at the last step the run is finished, not interrupted)
                # (after an evaluation too: one killed before the next checkpoint would be dropped with the
                # records after it, and done again at another step, of another policy)
                if step % cfg.checkpoint_every == 0 or evaluated or self._checkpoint_due():
                    self._checkpoint(started)
                self._stop_if_requested(started, bar)
        bar.close()

    def _offline_updates(self) -> int:
        """The offline phase's gradient steps: offline.updates where the planner learns offline (a
        Dyna agent, behaviour cloning, an MPC planner's learned value), else none."""
        learns = not isinstance(self.planner, MPCPlanner) or self.planner.value_agent is not None
        return self.cfg.offline.updates if learns else 0

    def _fit_at(self, step: int) -> bool:
        """Whether the model is refitted after online step `step`: at the end of the seed steps,
        then every train_every."""
        return step >= self.seed_steps and (step == self.seed_steps or step % self.cfg.train_every == 0)

    def _eval_at(self, step: int) -> bool:
        """Whether the policy is evaluated after online step `step`: every eval_every, and at the last."""
        return step % self.cfg.eval_every == 0 or step == self.cfg.env_steps

    def _stop_if_requested(self, started: float, bar=None) -> None:
        if self.stop.requested:
            self._checkpoint(started, status="interrupted")  # (first: nothing written to a terminal comes before it)
            if bar is not None:
                bar.close()
            raise RunInterrupted(self.stop.requested)

    def _checkpoint_due(self) -> bool:
        """checkpoint_minutes of wall time have passed since the last checkpoint."""
        minutes = self.cfg.get("checkpoint_minutes")  # (runs saved before the key existed: today's default)
        return minutes is not None and time.monotonic() - self._saved_t >= 60 * minutes

    def _checkpoint(self, started: float, status: str = "running") -> dict:
        """Save the whole run (checkpoint.pt) and what a user reads (model.pt, summary.json, the
        learning-curve plot) as they are now; returns the summary. State saved at this very
        step already is not written again (only the summary's status changes)."""
        p = self.progress
        if self._saved_at != (p["step"], p["offline_updates"], p["fits"], p["offline_eval"]):
            p["wall_s"] = time.perf_counter() - started
            self.logger.sync()  # (the records the checkpoint covers reach the disk before it does)
            self.save()
            if self.model.fitted:
                self.model.save(self.run_dir / "model.pt")
            self.logger.plot(self.run_dir / "learning_curve.png", f"{self.cfg.planner.name} on {self.cfg.env.name}")
            self._saved_at = (p["step"], p["offline_updates"], p["fits"], p["offline_eval"])
            self._saved_t = time.monotonic()
        summary = self._summary(status)
        write_json(summary, self.run_dir / "summary.json")
        return summary

    def _act(self, obs: torch.Tensor) -> torch.Tensor:
        p = self.progress
        if p["step"] < self.seed_steps:
            return self.random_policy(obs)
        start = time.perf_counter()
        try:
            action = self.agent.act(obs)
        except PlanningError as e:
            p["planning_errors"] += 1
            tqdm.write(f"step {p['step']}: {e}; taking a random action instead")
            self.planner.reset()
            return self.random_policy(obs)
        took = time.perf_counter() - start
        p["plan_s"] += took
        p["plan_steps"] += 1
        recent = p.setdefault("plan_recent_ms", [])  # (runs saved before it was kept start it now)
        recent.append(1000 * took)
        if len(recent) >= 2 * PLAN_TIMES_KEPT:  # (trimmed now and then, not at every step)
            del recent[:-PLAN_TIMES_KEPT]
        return action.cpu()

    def _fit(self, step: int, max_epochs: int | None | str = "default", started: float | None = None) -> None:
        """Refit the model (warm-started after the first fit: fit_epochs); `max_epochs` overrides.
        The offline fit (given `started`) shows its epochs, saves its state to fit_state.pt about
        once a minute and on SIGINT/SIGTERM, and resumes from that file."""
        buffer, fitted_at = self.agent.buffer, self.progress.get("fit_written")
        new_rows = buffer.newest(buffer.written - fitted_at if fitted_at is not None else 0)  # (refits hold out among them)
        fit_cfg = self.agent.refit_settings(new_rows=new_rows,
                                            **({} if max_epochs == "default" else {"max_epochs": max_epochs}))
        if started is not None:
            path = self.run_dir / _FIT_STATE
            if path.is_file():
                fit_cfg["resume"] = load_checked(path, _FIT_STATE_FORMAT)["fit"]
                tqdm.write(f"resuming the model's fit from {path} (epoch {fit_cfg['resume']['epoch']})")
            fit_cfg.update(progress=True, on_epoch=self._fit_saver(path, started))
        metrics = self.planner.update(**fit_cfg)
        if "holdout_mse" in metrics:  # planners that fit no model (behaviour cloning) report nothing
            self.progress["fits"] += 1
            self.progress["fit_written"] = buffer.written
            self.logger.log("fit", step, **fit_record(metrics))
            if step == 0 and self.dataset is not None:  # the offline fit's holdout curve, by epoch
                for row in metrics["history"]:
                    self.logger.log("offline_fit", row["epoch"], **{k: v for k, v in row.items() if k != "epoch"})

    def _unsaved_fit_s(self) -> float:
        """Seconds the offline fit, cut short, spent beyond what the checkpoint's wall_s holds (its
        fit_state.pt's time, less what a resume counted before: progress["fit_s_counted"]); 0
        once the checkpoint holds a fit or without the file."""
        path, p = self.run_dir / _FIT_STATE, self.progress
        if p["fits"] or not path.is_file():
            return 0.0
        fit_s = load_checked(path, _FIT_STATE_FORMAT)["fit"].get("wall_s", 0.0)
        unsaved, p["fit_s_counted"] = max(0.0, fit_s - p.get("fit_s_counted", 0.0)), fit_s
        return unsaved

    def _fit_saver(self, path: Path, started: float):
        """on_epoch for a long fit: its state to `path` every minute, and on a stop request (then
        the run stops; the checkpoint before the fit stays as it is)."""
        last = [time.monotonic()]

        def on_epoch(fit_state) -> None:
            if self.stop.requested or time.monotonic() - last[0] > _FIT_SAVE_EVERY_S:
                atomic_save({"format": _FIT_STATE_FORMAT, "version": 1, "fit": fit_state()}, path)
                last[0] = time.monotonic()
            if self.stop.requested:
                self.progress["wall_s"] = time.perf_counter() - started
                write_json(self._summary("interrupted"), self.run_dir / "summary.json")
                raise RunInterrupted(self.stop.requested)

        return on_epoch

    def _evaluated(self, bar, episodes: int | None = None) -> tuple[float, dict]:
        """The mean evaluation return over `episodes` (default: eval_episodes) and the episodes'
        spread for the log ({ret_std, ret_min, ret_max}), with the progress bar saying why it waits."""
        episodes = episodes or self.cfg.eval_episodes
        bar.set_postfix_str(f"evaluating ({episodes} episode(s))...")
        returns = torch.tensor(evaluation_returns(self.planner, self.eval_env, episodes), dtype=torch.float64)
        spread = {"ret_std": returns.std().item() if episodes > 1 else 0.0, "ret_min": returns.min().item(),
                  "ret_max": returns.max().item()}  # fmt: skip
        return returns.mean().item(), spread

    def _evaluate(self, step: int, bar) -> None:
        p = self.progress
        ret, spread = self._evaluated(bar)
        p["final_eval"], p["best_eval"] = ret, _max(p["best_eval"], ret)
        self.logger.log("eval", step, ret=ret, **spread, plan_ms=self._plan_ms(), **self._score("score", ret))
        bar.set_postfix(eval=f"{ret:.1f}")
        tqdm.write(f"step {step}: evaluation return {ret:.1f}")

    def _model_return(self) -> dict:
        """A Dyna policy's return estimated in the fitted model alone (worldmodel.ope) from up to
        offline.model_eval_starts of the dataset's episode starts: {model_ret, model_score}; {} when
        off (0) or the planner has no policy trained in the model."""
        count = self.cfg.offline.get("model_eval_starts", 100)
        if not count or not isinstance(self.planner, Dyna) or not self.model.fitted:
            return {}
        starts = episode_starts(self.dataset, count)
        policy = lambda obs: self.planner.act(obs, deterministic=True)  # noqa: E731
        ret = model_return(self.model, policy, starts, self.spec.max_episode_steps, self.planner.config.obs_limit)
        return {"model_ret": ret.mean().item(), **self._score("model_score", ret.mean().item())}

    def _select(self, ret: float, model_ret: float | None) -> None:
        """Keep the actor just evaluated (real return `ret`) if its return in the model is the best
        so far: the policy an offline user can pick without evaluation episodes (offline.select)."""
        best = self.progress["selected"]
        if model_ret is None or not math.isfinite(model_ret) or best is False or \
                (best is not None and model_ret <= best["model_ret"]):  # fmt: skip
            return
        self.progress["selected"] = {"updates": self.progress["offline_updates"], "ret": ret, "model_ret": model_ret}
        self.selected_agent = copy.deepcopy(self.planner.agent.training_state())

    def _offline_policy(self) -> tuple[float, float]:
        """Put the agent offline learning ends with in the planner (offline.select): the trained one,
        or the selected snapshot, its critics with its actor (the trained one kept aside, for more
        offline updates). Returns (its last evaluation's return, the offline score: the mean of the
        last score_last evaluations, or the snapshot's evaluation)."""
        p = self.progress
        if self.cfg.offline.select == "model_score" and p["selected"]:
            if self.trained_agent is None:
                self.trained_agent = copy.deepcopy(self.planner.agent.training_state())
            self._use_agent(self.selected_agent)
            return p["selected"]["ret"], p["selected"]["ret"]
        if self.trained_agent is not None:  # (a model_score run resumed with offline.select=last)
            self._use_agent(self.trained_agent)
            self.trained_agent = None
        last = p["offline_evals"][-1] if p.get("offline_evals") else p["offline_eval"]
        return last, p["offline_eval"]

    def _use_agent(self, state: dict) -> None:
        """Put a kept SAC.training_state in the planner's agent (an actor's state_dict alone from a
        checkpoint that predates whole-agent snapshots: its actor only). A copy: the optimisers
        would otherwise step the snapshot's own moments in place (torch's optimisers keep the
        tensors they are loaded with)."""
        if "modules" in state:
            self.planner.agent.load_training_state(copy.deepcopy(state))
        else:
            self.planner.agent.actor.load_state_dict(state)
        self._saved_at = None  # (the checkpoint must hold it)

    def _score(self, key: str, ret: float | None) -> dict:
        """{key: D4RL-normalised score} where the task has reference returns (and its usual
        1000-step episodes and no action repeat), else {}."""
        score = normalized_score(self.cfg.env.name, ret, self.cfg.env) if ret is not None else None
        return {} if score is None else {key: score}

    def _plan_ms(self) -> float:
        """A planned step's time: the median of the last PLAN_TIMES_KEPT (the run's mean before any)."""
        recent = self.progress.get("plan_recent_ms")
        return statistics.median(recent[-PLAN_TIMES_KEPT:]) if recent else self._plan_ms_mean()

    def _plan_ms_mean(self) -> float:
        p = self.progress
        return 1000 * p["plan_s"] / max(p["plan_steps"], 1)

    def _summary(self, status: str) -> dict:
        p = self.progress
        summary = {
            "status": status, "env": self.cfg.env.name, "planner": self.cfg.planner.name, "seed": self.cfg.seed,
            "final_eval_return": p["final_eval"], "best_eval_return": p["best_eval"],
            **self._score("normalized_score", p["final_eval"]), **self._score("best_normalized_score", p["best_eval"]),
            "env_steps": p["step"], "episodes": p["episodes"], "model_fits": p["fits"],
            "wall_s": p["wall_s"], "plan_ms_per_step": self._plan_ms(), "plan_ms_mean": self._plan_ms_mean(),
            "planning_errors": p["planning_errors"],
            "threads": threads.current(),
        }  # fmt: skip
        if self.dataset is not None:
            meta = self.dataset_metadata
            summary.update(dataset=self.cfg.dataset, dataset_transitions=len(self.dataset),
                           dataset_name=self.cfg.offline.get("preset") or (f"{meta['env']}-{meta['quality']}"
                                                                           if meta.get("env") and meta.get("quality") else None),
                           dataset_normalized_score=meta.get("mean_normalized_score"),
                           dataset_fingerprint=self.dataset_fingerprint,
                           dataset_settings=p.get("dataset_settings", {}),
                           offline_updates=p["offline_updates"], offline_eval_return=p["offline_eval"],
                           offline_evals=p.get("offline_evals", []),
                           **self._score("offline_normalized_score", p["offline_eval"]))  # fmt: skip
            if selected := p.get("selected"):  # the evaluated actor with the best model return (whichever offline.select)
                summary.update(selected_updates=selected["updates"], selected_eval_return=selected["ret"],
                               selected_model_return=selected["model_ret"],
                               **self._score("selected_normalized_score", selected["ret"]))  # fmt: skip
        return summary

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
        self.agent.close()
        if self._lock is not None:
            self._lock.release()


def _outcome(summary: dict) -> str:
    """The run's result in words: its final evaluation (and D4RL-normalised score, where known)."""
    ret, score = summary.get("final_eval_return"), summary.get("normalized_score")
    if ret is None:
        return "no evaluation yet"
    return f"final evaluation return {ret:.1f}" + ("" if score is None else f", normalised score {score:.1f}")


def _bar(total: int, initial: int, desc: str, unit: str):
    """A progress bar whose ETA averages over the whole run, fits and evaluations included."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, smoothing=0, dynamic_ncols=True,
                file=PipeSafe(sys.stderr))  # (a reader that Ctrl-C ended too: no error where the run saves)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


# ------------------------------------------------------------------ the command line

_COUNTS = {  # key: smallest value
    "seed": 0, "env_steps": 0, "seed_steps": 0, "train_every": 1, "fit_epochs": 1, "eval_every": 1,
    "eval_episodes": 1, "checkpoint_every": 1, "offline.updates": 0, "offline.eval_every": 1,
    "offline.eval_episodes": 1, "offline.score_last": 1, "offline.model_eval_starts": 0,
}  # fmt: skip
_NULLABLE_COUNTS = {"offline.fit_epochs": 1, "fit_steps": 1}  # null, or a whole number >= the value
_SELECTIONS = ("last", "model_score")  # offline.select


def validate(cfg: DictConfig) -> None:
    """Every value the run reads, checked before any work or file: a ValueError naming the key."""
    check_counts(cfg, _COUNTS, _NULLABLE_COUNTS)
    if cfg.env_steps == 0 and not cfg.dataset:
        raise ValueError("env_steps=0 and no dataset: nothing to learn from (give env_steps > 0 or dataset=<file>)")
    if not (cfg.dataset or cfg.pretrained) and cfg.seed_steps >= cfg.env_steps:
        raise ValueError(f"seed_steps={cfg.seed_steps} >= env_steps={cfg.env_steps}: the run would end before the "
                         "planner acts or the model is fitted; lower seed_steps or raise env_steps")  # fmt: skip
    if cfg.planner.name == "bc" and not cfg.dataset:
        raise ValueError("planner=bc clones the actions of a dataset: give dataset=<file>")
    if cfg.online.get("uncertainty") is not None:
        Uncertainty(cfg.online.uncertainty)  # an unknown measure fails now, not at the switch
    for key in ("penalty", "real_ratio", "uncertainty_penalty", "value_penalty"):
        value, signed = cfg.online.get(key), key == "uncertainty_penalty"  # (< 0: MPC's exploration bonus)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is not None and (not number or (value < 0 and not signed)):
            raise ValueError(f"online.{key} must be a number{'' if signed else ' >= 0'} or null, got {value!r}")
    minutes = cfg.get("checkpoint_minutes")
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float))
                                or not math.isfinite(minutes) or minutes <= 0):  # fmt: skip
        raise ValueError(f"checkpoint_minutes must be a number > 0 (minutes of wall time between checkpoints) or "
                         f"null (checkpoint_every alone), got {minutes!r}")
    if cfg.offline.select not in _SELECTIONS:
        raise ValueError(f"offline.select={cfg.offline.select}: use one of {', '.join(_SELECTIONS)}")
    if cfg.offline.select == "model_score" and not (cfg.dataset and cfg.planner.name in DYNA_PLANNERS
                                                    and cfg.offline.model_eval_starts):  # fmt: skip
        raise ValueError(f"offline.select=model_score picks the offline policy by its return in the model: it needs "
                         f"dataset=<file>, a Dyna planner ({', '.join(DYNA_PLANNERS)}; got {cfg.planner.name}) and "
                         "offline.model_eval_starts > 0")  # fmt: skip
    if cfg.offline.get("preset") is not None and not cfg.dataset:
        raise ValueError(f"offline.preset={cfg.offline.preset} picks the settings for a dataset: give dataset=<file>")
    if any(v is not None for v in cfg.online.values()) and not cfg.dataset:
        raise ValueError("online.* settings change a planner at the switch from offline learning; they need dataset=<file>")
    check_model_settings(cfg)
    check_device(cfg.device)
    threads.resolve_threads(cfg.get("threads", "auto"))  # (runs saved before the key existed: auto)
    check_paths(cfg, ("dataset", "pretrained"))


def load_config(argv: list[str]) -> tuple[DictConfig, Path | None]:
    """The run's config: configs/config.yaml with overrides, or on resume=DIR that run's saved
    config (over today's defaults, for runs saved by an older version) with the other overrides
    (e.g. a larger env_steps) applied on top."""
    argv = [_model_file(a) for a in argv]
    if "-h" in argv or "--help" in argv:
        _compose([a for a in argv if not a.startswith("resume=")])  # prints the keys, exits
    resume = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if resume is None:
        return _compose(argv), None
    if (Path(resume) / "config.yaml").is_file() and not (Path(resume) / "checkpoint.pt").is_file():
        raise SystemExit(f"error: cannot resume from {resume}: it has no checkpoint.pt (the run stopped before "
                         "its first checkpoint was written); start it again")  # fmt: skip
    return resumed_config(resume, argv, _compose), Path(resume)


def _apply_dataset_settings(cfg: DictConfig, argv: list[str]) -> dict:
    """Set the planner settings configs/offline.yaml gives this dataset (its task and quality),
    except those given on the command line; returns what it set (and says so)."""
    metadata = read_metadata(cfg.dataset)
    check_task(cfg.dataset, metadata, cfg.env.name)  # (another task's data: said before its settings are)
    given = {a.lstrip("+").split("=", 1)[0].removeprefix("planner.") for a in argv if a.lstrip("+").startswith("planner.")}
    preset = cfg.offline.preset
    applied = {k: v for k, v in offline_settings(metadata, cfg.planner.name, preset).items() if k not in given}
    for key, value in applied.items():
        cfg.planner[key] = value
    name = preset or f"{metadata.get('env')}-{metadata.get('quality')}"
    if applied:
        print(f"{name}: {cfg.planner.name} settings from configs/offline.yaml: "
              + ", ".join(f"{k}={v}" for k, v in applied.items()) + " (planner.<key>=... overrides)")  # fmt: skip
    elif preset is None and not (metadata.get("env") and metadata.get("quality")) and offline_presets().get(cfg.planner.name):
        # (a D4RL or Minari file of its own: no task and quality to look up, so none of the tuned settings)
        print(f"{cfg.dataset} names no task and quality: no per-dataset {cfg.planner.name} settings from "
              "configs/offline.yaml apply; offline.preset=<task>-<quality> (e.g. hopper-medium-replay) picks them")  # fmt: skip
    elif preset is not None and not (offline_presets().get(cfg.planner.name) or {}).get(preset):
        print(f"offline.preset={preset}: configs/offline.yaml gives {cfg.planner.name} no settings for it (its "
              "defaults run)")  # fmt: skip
    return applied


def _compose(overrides: list[str]) -> DictConfig:
    return compose_config("config", overrides, __doc__, open_keys=("env",), groups={"planner": planner_defaults()})


def _model_file(arg: str) -> str:
    """`model=<file>` names a pretrained model rather than a model config: `pretrained=<file>`."""
    key, _, value = arg.partition("=")
    if key == "model" and value != "ensemble":
        if not Path(value).exists():
            raise SystemExit(f"error: model={value} is neither a model config (ensemble) nor a model file or run directory")
        return f"pretrained={value}"
    return arg


def check_config(argv: list[str]) -> tuple[DictConfig, Path | None]:
    """The config of `python -m worldmodel.run <argv>`, checked as the run checks it before any
    work (SystemExit with the reason otherwise); nothing is written."""
    cfg, resume_dir = load_config(argv)
    try:
        check_task_name(cfg.env.name)
        validate(cfg)
        settings = OmegaConf.to_container(cfg.planner, resolve=True)
        planner_config(settings.pop("name"), settings)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    return cfg, resume_dir


@contextlib.contextmanager
def _bad_input_exits() -> Iterator[None]:
    """Bad input found while a run is set up (settings, files, a checkpoint to resume) ends the
    command with one line, `error: <what to do>`, before any work."""
    try:
        yield
    except (ValueError, CheckpointError, DatasetError) as e:
        raise SystemExit(f"error: {e}") from None


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("--multirun", "-m") for a in argv):  # a sweep: one run per combination (worldmodel.sweep)
        from worldmodel.sweep import main as multirun

        return multirun(argv)
    cfg, resume_dir = check_config(argv)
    run = None
    try:
        with _bad_input_exits():
            applied = _apply_dataset_settings(cfg, argv) if cfg.dataset and resume_dir is None else {}
            threads.set_threads(cfg.get("threads", "auto"))
            run = Run(cfg)
            run.progress["dataset_settings"] = applied  # (a resumed run reads its own from the checkpoint)
            if resume_dir is not None:
                run.restore(resume_dir)
                run_dir = resume_dir
            else:
                run_dir = run_dir_for(cfg, "run", cfg.env.name)
        with run.stop:  # from here, SIGINT/SIGTERM stop the run cleanly
            with _bad_input_exits():
                run.open(run_dir)
            print(f"run directory: {run_dir} (watch: tensorboard --logdir {run_dir / 'tb'}; Ctrl-C saves and stops)")
            summary = run.run()  # (an error from here on is a failure, with its traceback: summary.json says "failed")
            print(f"{summary['status']}: {run_dir} (summary.json, learning_curve.png, model.pt); {_outcome(summary)}")
            return summary
    except RunInterrupted as stop:
        command = " ".join(["python -m worldmodel.run", f"resume={shlex.quote(str(run.run_dir))}"])
        print(f"{stop.signal_name}: stopped at step {run.progress['step']} "
              f"(offline updates {run.progress['offline_updates']}); everything is saved in {run.run_dir}.\n"
              f"Resume with: {command}", file=sys.stderr)  # fmt: skip
        raise SystemExit(stop.exit_code) from None
    finally:
        if run is not None:
            run.close()


if __name__ == "__main__":
    sys.stdout, sys.stderr = PipeSafe(sys.stdout), PipeSafe(sys.stderr)  # (`| tee` that a Ctrl-C ended too)
    main()
