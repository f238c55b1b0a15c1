"""Dyna planners: a SAC agent trained on short imagined rollouts of the ensemble mixed with real data.

MBPO (Janner et al. 2019) is the base; MOPO (Yu et al. 2020) subtracts lambda x an
uncertainty measure from imagined rewards; RAVL (Sims et al. 2024) uses no penalty but an
EDAC critic ensemble, so values at the edge of the rollouts' reach are not overestimated.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from tensordict import TensorDict
from torch import Tensor

from planners.base import Planner, check_obs
from planners.imagination import Imagination, ImaginationConfig
from planners.sac import SAC, SACConfig, sac_settings
from worldmodel.checkpoint import restore_generator
from worldmodel.envs import TaskSpec
from worldmodel.replay import ReplayBuffer


@dataclass
class DynaConfig(ImaginationConfig):
    """Settings shared by MBPO, MOPO and RAVL (defaults: MBPO's and MOPO's published ones); the
    rollouts' settings are ImaginationConfig's."""

    updates_per_step: int = 20  # agent updates per real step when learning online (MBPO's G)
    symmetric_sampling: bool = False  # the real part of each batch: half offline data, half new (RLPD; prior_rows)
    actor_lr_cosine: bool = False  # offline, the actor's lr anneals to 0 along a cosine over the updates (schedule)
    agent: dict = field(default_factory=dict)  # SACConfig fields
    seed: int | None = None

    def __post_init__(self):
        super().__post_init__()
        # settings given for the agent change this planner's defaults (RAVL's critics), not replace them
        default = next(f for f in fields(self) if f.name == "agent").default_factory()
        self.agent = sac_settings(self.agent, default)


@dataclass
class MBPOConfig(DynaConfig):
    """MBPO's HalfCheetah rollout length (k = 1); its Hopper one is rollout_schedule=[20000, 100000, 1, 15].

    MBPO itself also rolls out from 100k states, keeps one epoch (4 rounds) and takes 40 updates
    per step on HalfCheetah; the shared defaults here are lighter, for CPUs.
    """

    rollout_length: int = 1
    rollout_every: int = 5_000  # MBPO: every 250 env steps at 20 updates each


@dataclass
class MOPOConfig(DynaConfig):
    """MOPO's penalty as its code computes it: max over every member of the std norm, reward
    included; the agent as OfflineRL-Kit runs it (actor and temperature lr 1e-4, the actor's
    annealed along a cosine offline, temperature capped at 1)."""

    penalty: float = 1.0
    uncertainty_elites_only: bool = False
    uncertainty_include_reward: bool = True
    actor_lr_cosine: bool = True
    agent: dict = field(default_factory=lambda: {"actor_lr": 1e-4, "alpha_lr": 1e-4, "alpha_max": 1.0})


@dataclass
class RAVLConfig(DynaConfig):
    """No dynamics penalty; an EDAC agent as RAVL's code runs it: 10 critics and the actor of
    3 x 256, min over all critics, gradient diversity eta, EDAC's initialisation, and the update
    order of RAVL's code (alpha, actor, then the critics)."""

    agent: dict = field(default_factory=lambda: {"num_critics": 10, "critic_layers": 3, "actor_layers": 3,
                                                 "eta": 1.0, "init": "edac", "update_order": "actor_first"})  # fmt: skip


class Dyna(Planner):
    """Acts with the agent's policy; learns it from imagined rollouts (`learn`) and refits the
    model on every observed real transition (`update`)."""

    LEARNED = "agent"

    def __init__(self, model, spec: TaskSpec, config: DynaConfig, buffer: ReplayBuffer | None = None):
        self.model, self.spec, self.config = model, spec, config
        self.buffer = buffer if buffer is not None else ReplayBuffer(spec.obs_dim, spec.act_dim)
        self.agent = SAC(spec.obs_dim, spec.action_low, spec.action_high, SACConfig(**config.agent)).to(model.device)
        self.generator = torch.Generator(model.device)
        if config.seed is not None:
            self.generator.manual_seed(config.seed)
        else:
            self.generator.seed()
        self.imagination = Imagination(self, self.generator)

    # ---------------------------------------------------------------- the robot loop

    def reset(self) -> None:
        pass  # the policy keeps no state within an episode

    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        return self.agent.act(check_obs(obs, self.spec.obs_dim).to(self.model.device), deterministic)

    def observe(self, transition: TensorDict) -> None:
        self.buffer.extend(transition)

    def schedule(self, updates: int | None, start: int | None = None) -> None:
        """The agent's update budget ahead (offline: all its updates; None: open-ended, online).
        With actor_lr_cosine the actor's learning rate anneals to 0 over that budget, along a cosine
        begun at update `start` (None: a schedule under way keeps its start, a new one begins now;
        given, e.g. an offline budget extended after the switch dropped its schedule, the cosine
        goes on as one over the whole budget)."""
        horizon = self.agent.updates + updates if updates and self.config.actor_lr_cosine else None
        if horizon != self.agent.actor_lr_horizon or horizon and start not in (None, self.agent.actor_lr_start):
            self.agent.anneal_actor_lr(horizon, start)

    def update(self, **fit_kwargs) -> dict:
        """Refit the model (warm-started) on every real transition, then refresh the model buffer."""
        stats = self.model.fit(self.buffer.data(), **{"progress": False, **fit_kwargs})
        if self.imagination.imagines:
            self.rollout()
        return stats

    def learn(self, updates: int | None = None) -> dict[str, float]:
        """`updates` agent gradient steps (default: updates_per_step), with a rollout round every
        `rollout_every`; returns the last step's losses and the last rollout's statistics."""
        stats: dict[str, float] = {}
        for _ in range(self.learn_updates_per_step if updates is None else updates):
            stats = self.agent.update(self.learning_batch(self.agent))
        return {**stats, **self.last_rollout}

    @property
    def learn_updates_per_step(self) -> int:
        return self.config.updates_per_step

    def learning_batch(self, agent: SAC) -> TensorDict:
        """A batch for `agent` (the planner's, or a background learner's copy): real_ratio of real
        transitions (half offline, half new with symmetric_sampling), the rest imagined with that
        agent's policy, a rollout round first when one is due."""
        return self.imagination.batch(agent, agent.config.batch_size, self.symmetric_split)

    # ---------------------------------------------------------------- imagination

    @property
    def imagination_config(self) -> DynaConfig:
        return self.config

    @property
    def rollout_length(self) -> int:
        return self.imagination.rollout_length

    @property
    def model_buffer(self) -> ReplayBuffer:
        return self.imagination.model_buffer

    @property
    def last_rollout(self) -> dict[str, float]:
        return self.imagination.last_rollout

    def rollout(self, start_obs: Tensor | None = None) -> dict[str, float]:
        """A rollout round with the agent's policy (Imagination.rollout)."""
        return self.imagination.rollout(self.agent, start_obs)

    def _batch(self) -> TensorDict:
        """One agent batch: real_ratio of it from real data, the rest imagined."""
        return self.imagination.sample(self.agent.config.batch_size, self.symmetric_split)

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        """The agent (networks, optimisers, temperature), the update counter and the rollouts' random
        stream; the model buffer is not saved (a resumed run imagines a fresh one)."""
        return {"agent": self.agent.training_state(), "updates_since_rollout": self.imagination.updates_since_rollout,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.agent.load_training_state(state["agent"])
        self.imagination.updates_since_rollout = state["updates_since_rollout"]
        restore_generator(self.generator, state["generator"])


class MBPO(Dyna):
    def __init__(self, model, spec, config: DynaConfig | None = None, buffer=None):
        super().__init__(model, spec, config or MBPOConfig(), buffer)


class MOPO(Dyna):
    def __init__(self, model, spec, config: DynaConfig | None = None, buffer=None):
        super().__init__(model, spec, config or MOPOConfig(), buffer)


class RAVL(Dyna):
    def __init__(self, model, spec, config: DynaConfig | None = None, buffer=None):
        super().__init__(model, spec, config or RAVLConfig(), buffer)
