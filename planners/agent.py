"""The agent both loops drive: dynamics model, planner (with its learned value or actor-critic),
replay buffer and the durable log of real transitions, built, refitted, saved and restored as one.

    agent = Agent.from_config(cfg, spec, capacity=cfg.env_steps)   # or pretrained=<run dir>
    agent.open_log(run_dir / "transitions")
    action = agent.act(obs)                       # obs [O] -> action [A]
    agent.observe(real)                           # logged durably, then in the buffer
    agent.refit()                                 # first fit: model.fit.max_epochs; later: refit_epochs, refit_steps

`worldmodel.run` drives it synchronously in simulation, `planners.realtime` on a (simulated)
robot with planning and refits in background threads; a fix to building, pretraining, logging
or saving lands in both.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from tensordict import TensorDict
from torch import Tensor

from planners import learned_agent, load_pretrained_agent, make_planner
from planners.base import Planner
from worldmodel.checkpoint import RUN_FORMAT, CheckpointError, atomic_save, load_checked
from worldmodel.config import pretrained_files
from worldmodel.ensemble import EnsembleDynamics
from worldmodel.envs import TaskSpec
from worldmodel.replay import ReplayBuffer
from worldmodel.transition_log import TransitionLog

# a bounded refit (refit_offline_ratio) draws at least this many offline rows beside the new ones
REFIT_MIN_OFFLINE = 10_000
FORMAT, VERSION = "worldmodel.Agent", 1  # agent.pt: model + planner (no buffer: the log holds the data)
# the most real transitions one fsync of the log covers (a LogWriter's group when the disk is slow);
# a power loss can tear that many at the log's end, which reopening drops
LOG_SYNC_EVERY = 64
VALUE_CHECK_ROWS = 4096  # dataset states the pretrained value is read on (pretrained_value)


class Agent:
    """One model-based agent (see the module docstring). `model` is the planner's model: a
    background refit swaps a new one into the planner, and the agent follows."""

    def __init__(self, spec: TaskSpec, planner: dict, model: dict | None = None, fit: dict | None = None,
                 refit_epochs: int = 30, capacity: int = 1_000_000, seed: int = 0, pretrained: str | Path | None = None,
                 device: str = "cpu", refit_beta: float = 0.5, refit_offline_ratio: float | None = None,
                 refit_steps: int | None = None):  # fmt: skip
        """planner: {"name": ..., setting: value} (planners.make_planner); model: EnsembleDynamics
        arguments (ignored with `pretrained`); fit: EnsembleDynamics.fit settings (lr, max_epochs, ...)
        of the first fit; refit_epochs, refit_steps, refit_beta: max_epochs, max_steps and beta of
        the warm-started refits after it;
        refit_offline_ratio: see refit_data (None: refits fit on the whole buffer);
        pretrained: a run directory (its checkpoint.pt's or agent.pt's learned value or actor-critic
        with the dynamics saved beside them, model.pt giving their architecture) or a model.pt;
        capacity: the replay buffer's transitions."""
        self.spec, self.fit_settings, self.refit_epochs, self.refit_beta = spec, dict(fit or {}), refit_epochs, refit_beta
        self.refit_steps = refit_steps
        if refit_offline_ratio is not None and refit_offline_ratio < 0:
            raise ValueError(f"refit_offline_ratio must be >= 0 or None, got {refit_offline_ratio}")
        self.refit_offline_ratio = refit_offline_ratio
        self.pretrained, self.loaded = pretrained, None
        agent_state = None
        if pretrained is not None:
            model_file, agent_file = pretrained_files(pretrained)
            dynamics = EnsembleDynamics.load(model_file, obs_dim=spec.obs_dim, act_dim=spec.act_dim,
                                             termination_fn=spec.termination_fn)  # fmt: skip
            if agent_file is not None:
                kind = FORMAT if agent_file.name == "agent.pt" else RUN_FORMAT
                saved = load_checked(agent_file, kind)
                agent_state = saved["planner"]
                if "model" in saved:  # (the dynamics saved with that agent: model.pt is written apart, a crash
                    dynamics.load_state_dict(saved["model"])  # between the two writes leaves it a refit ahead)
        else:
            dynamics = EnsembleDynamics(spec.obs_dim, spec.act_dim, **(model or {}), termination_fn=spec.termination_fn)
        dynamics.to(device)
        settings = dict(planner)
        self.name = settings.pop("name")
        buffer = ReplayBuffer(spec.obs_dim, spec.act_dim, capacity=max(capacity, 1))
        self.planner: Planner = make_planner(self.name, dynamics, spec, buffer=buffer, **{"seed": seed, **settings})
        if agent_state is not None:  # FOWM: the learned value (or actor-critic) comes along with the dynamics
            self.loaded = load_pretrained_agent(self.planner, agent_state)
        self.log: TransitionLog | None = None
        # the buffer's rows (buffer.written) the model's last refit fitted on: a learner sets it, a
        # resumed robot run reads it from its agent.pt (None: not known, every logged row is new)
        self.fit_written: int | None = None
        # the buffer's rows whose value updates the planner's learned value has had (a learner sets it
        # at each swap; a resumed robot run reads it from agent.pt: the rows after it are owed again)
        self.value_covered: int | None = None

    @classmethod
    def from_config(cls, cfg, spec: TaskSpec, capacity: int, **planner_settings) -> Agent:
        """From a run's config (planner, model with model.fit, fit_epochs, fit_steps, fit_beta, seed,
        pretrained, device);
        `planner_settings` override the config's planner settings."""
        from omegaconf import OmegaConf

        planner = {**OmegaConf.to_container(cfg.planner, resolve=True), **planner_settings}
        model = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "fit"}
        return cls(spec, planner, model, dict(cfg.model.fit), cfg.fit_epochs, capacity, cfg.seed,
                   cfg.get("pretrained"), cfg.get("device", "cpu"), cfg.fit_beta, cfg.get("refit_offline_ratio"),
                   cfg.get("fit_steps"))  # fmt: skip

    @property
    def model(self) -> EnsembleDynamics:
        return self.planner.model

    @property
    def buffer(self) -> ReplayBuffer:
        return self.planner.buffer

    def describe_pretrained(self) -> str:
        """What `pretrained=` brought, in words."""
        if self.loaded:
            what = f"model and {self.loaded}"
        elif Path(self.pretrained).is_dir():
            what = f"model (its agent does not carry over to planner={self.name})"
        else:
            what = "model (a model file: the planner's agent starts afresh)"
        return f"pretrained={self.pretrained}: {what}"

    # ---------------------------------------------------------------- data

    def add_dataset(self, data: TensorDict | None, observe: bool = True) -> None:
        """An offline dataset's transitions first in the buffer (observe=False: already there, e.g.
        restored); symmetric sampling draws half of each batch from them (RLPD)."""
        if data is None:
            return
        self.planner.prior_rows = len(data)
        if observe:
            self.planner.observe(data)

    @torch.no_grad()
    def pretrained_value(self, obs: Tensor) -> float | None:
        """The pretrained learned value over states obs [B, O] (at most VALUE_CHECK_ROWS of them,
        evenly spaced), as the planner reads it (an MPC planner's `learned_value`, value_penalty
        included; else min over critics of Q at the policy's mean action). None without a
        pretrained value (`self.loaded`)."""
        agent = learned_agent(self.planner)
        if not self.loaded or agent is None or len(obs) == 0:
            return None
        rows = torch.linspace(0, len(obs) - 1, min(len(obs), VALUE_CHECK_ROWS)).long()
        states = obs[rows].to(self.model.device).float()
        value = getattr(self.planner, "learned_value", None) or (lambda x: agent.value(x, deterministic=True))
        return value(states).mean().item()

    def check_pretrained_value(self, data: TensorDict, warn: bool = True) -> float | None:
        """`pretrained_value` on the dataset's states, with a warning (`warn`) where it is below 0
        on a task whose episodes end: an episode's end is worth 0, so planning and fine-tuning
        prefer ending episodes (a walker falls at once) until real rewards lift the values. MOPO's
        penalty above the reward makes such values (docs/results.md: the walker2d robot's collapse)."""
        value = self.pretrained_value(data["obs"])
        if not warn or value is None or value >= 0 or self.spec.termination_fn is None:
            return value
        cause = ("An offline run whose uncertainty penalty exceeded the reward makes such values (its log warned, and "
                 "its metrics' imagined_reward is below 0): pretrain with a smaller penalty (the offline run's "
                 "planner.penalty, MOPO's lambda; e.g. 1.0 on walker2d-medium-replay, docs/results.md)"
                 if data["reward"].float().mean() > 0 else
                 "The dataset's own rewards average below 0 here, so living may really cost more than ending")  # fmt: skip
        warnings.warn(
            f"the pretrained value is {value:.1f} on average over the dataset's states: below the 0 an episode's end "
            f"is worth, so on {self.spec.name}, whose episodes end, planning and fine-tuning will prefer ending them "
            f"(falling) until real rewards lift the values. {cause}", stacklevel=2)
        return value

    def open_log(self, directory: str | Path) -> TransitionLog:
        """The append-only, crash-safe log of real transitions in `directory` (created or reopened)."""
        self.log = TransitionLog(directory, self.spec.obs_dim, self.spec.act_dim, sync_every=LOG_SYNC_EVERY)
        return self.log

    def record(self, real: TensorDict) -> None:
        """Append real transitions [N] to the log, durably (fsync'd) before this returns."""
        if self.log is None:
            raise RuntimeError("the agent has no transition log: call open_log(directory) first")
        self.log.append(real)

    def observe(self, real: TensorDict) -> None:
        """Real transitions [N]: durable in the log first, then the planner's (its buffer)."""
        self.record(real)
        self.planner.observe(real)

    # ---------------------------------------------------------------- acting and learning

    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """obs [O] -> action [A] (raises PlanningError where the planner cannot plan)."""
        return self.planner.act(obs, deterministic)

    def refit_settings(self, model: EnsembleDynamics | None = None, **overrides) -> dict:
        """EnsembleDynamics.fit settings for (a copy of) the model: a first fit runs up to
        model.fit.max_epochs, a fitted model is warm-started for refit_epochs (at most refit_steps
        gradient steps) with beta-NLL's refit_beta (with the plain NLL a refit on data from a new
        region raises the variance there instead of fitting it: worldmodel.fitting.loss)."""
        model = model if model is not None else self.model
        if model.fitted:
            refit = {"max_epochs": self.refit_epochs, "max_steps": self.refit_steps, "beta": self.refit_beta}
        else:  # (model.fit's max_epochs; none given: no cap)
            refit = {"max_epochs": self.fit_settings.get("max_epochs")}
        return {**self.fit_settings, **refit, **overrides}

    def refit_data(self, model: EnsembleDynamics, new: int = 0) -> tuple[TensorDict, Tensor]:
        """What a refit of (a copy of) the model fits on [M], and where in it the `new` rows written
        last are (fit's new_rows). The whole buffer; or, for a fitted model with refit_offline_ratio
        and an offline dataset in the buffer (prior_rows), every row after the dataset plus that
        many times as many of the dataset's rows (REFIT_MIN_OFFLINE at least) drawn afresh: a
        refit then costs in proportion to the new data, so a robot's learner keeps pace with it."""
        buffer, prior = self.buffer, getattr(self.planner, "prior_rows", 0)
        if self.refit_offline_ratio is None or not model.fitted or not prior or buffer.written > buffer.capacity:
            return buffer.data(), buffer.newest(new)
        online = len(buffer) - prior
        drawn = min(prior, max(REFIT_MIN_OFFLINE, int(self.refit_offline_ratio * online)))
        rows = torch.cat([torch.randperm(prior)[:drawn].sort().values, torch.arange(prior, len(buffer))])
        new = min(max(new, 0), online)
        return buffer.data()[rows], torch.arange(len(rows) - new, len(rows))

    def refit(self, **overrides) -> dict:
        """Refit the model on the buffer (and whatever else the planner learns then); its metrics."""
        return self.planner.update(**self.refit_settings(**overrides))

    # ---------------------------------------------------------------- saving

    def state_dict(self, buffer: bool = True) -> dict:
        """Model, planner (value, actor-critic, optimisers), the model's optimiser and (buffer=True)
        the replay buffer."""
        state = {"model": self.model.state_dict(), "planner": self.planner.state_dict(),
                 "optimizer": self.model.optimizer(self.fit_settings.get("lr", 1e-3)).state_dict()}  # fmt: skip
        if buffer:
            state["buffer"] = self.buffer.state_dict()
        return state

    def load_state_dict(self, state: dict, source: str = "state") -> None:
        """Restore a state_dict; a model or planner of other sizes is a CheckpointError naming `source`.
        A saved buffer smaller than this agent's moves into it (a resumed run given a larger budget)."""
        try:
            self.model.load_state_dict(state["model"])
            self.planner.load_state_dict(state["planner"])
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(f"{source}: the model or planner does not match this run's config: {e}") from e
        if "optimizer" in state:
            self.model.optimizer(self.fit_settings.get("lr", 1e-3)).load_state_dict(state["optimizer"])
        if "buffer" in state:
            saved = ReplayBuffer.from_state_dict(state["buffer"], source=source)
            if saved.capacity >= self.buffer.capacity:
                self.planner.buffer = saved
            elif len(saved):
                self.buffer.extend(saved.data())

    def save(self, path: str | Path, state: dict | None = None, **extra) -> None:
        """agent.pt: model and planner (the transition log keeps the data), atomically; `state`: a
        state_dict(buffer=False) taken earlier; `extra` keys (e.g. a model version) ride along.
        `pretrained=<dir>` reads a directory holding agent.pt beside the model's model.pt."""
        state = self.state_dict(buffer=False) if state is None else state
        atomic_save({"format": FORMAT, "version": VERSION, **state, **extra}, path)

    def restore(self, path: str | Path) -> dict:
        """Load an agent.pt written by `save`; returns the whole saved dict (with its extra keys)."""
        saved = load_checked(path, FORMAT)
        self.load_state_dict(saved, source=str(path))
        return saved

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
