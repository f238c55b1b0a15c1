"""The interface every planner shares, shaped for a robot's control loop.

    planner.reset()                  # new episode: forget warm starts
    action = planner.act(obs)        # one control step
    planner.observe(transition)      # feed back what happened
    stats = planner.learn()          # cheap learning after each step (agent gradient steps)
    stats = planner.update()         # expensive learning on a schedule (refit the model)
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod

import torch
from tensordict import TensorDict
from torch import Tensor

from worldmodel import threads
from worldmodel.checkpoint import restore_generator


class Planner(ABC):
    """A policy that acts by planning with a dynamics model."""

    # rows of the buffer that came before this planner's own experience (an offline dataset):
    # with symmetric_sampling, learning batches take half from them, half from the rest (RLPD)
    prior_rows: int = 0

    @property
    def symmetric_split(self) -> int | None:
        """The split learning batches are drawn around (ReplayBuffer.sample): prior_rows where the
        config asks for symmetric_sampling, else None (uniform over the buffer)."""
        return self.prior_rows if getattr(self.config, "symmetric_sampling", False) else None

    # the attribute holding the SAC that learn() trains from real transitions (an MPC planner's
    # learned value, a Dyna planner's agent; None: none): a background learner (planners.learning)
    # trains a copy of it with learning_batch, learn_updates_per_step updates a real transition,
    # and swaps it in
    LEARNED: str | None = None

    @property
    def learned(self):
        """The SAC that learn() trains (LEARNED's), or None."""
        return getattr(self, self.LEARNED, None) if self.LEARNED else None

    @property
    def learn_updates_per_step(self) -> int:
        """The learned SAC's updates per real transition (learn()'s default count)."""
        return 0

    def learning_batch(self, agent) -> TensorDict:
        """A batch for `agent` (the learned SAC, or a background learner's copy of it)."""
        raise NotImplementedError(f"{type(self).__name__} learns no SAC from real transitions")

    # the attributes reset() clears (warm starts, the last action): what an evaluation in the middle
    # of a training episode puts back afterwards (episode_state)
    EPISODE_STATE: tuple[str, ...] = ()

    @abstractmethod
    def reset(self) -> None:
        """Start a new episode: clear every state kept between steps."""

    def episode_state(self) -> dict:
        """A copy of what reset() clears (EPISODE_STATE) and of the planner's random generator's
        state, for `restore_episode_state` (an evaluation in mid-episode leaves training as it was)."""
        state = copy.deepcopy({name: getattr(self, name) for name in self.EPISODE_STATE})
        if isinstance(generator := getattr(self, "generator", None), torch.Generator):
            state["generator"] = generator.get_state()
        return state

    def restore_episode_state(self, state: dict) -> None:
        for name in self.EPISODE_STATE:
            setattr(self, name, state[name])
        if "generator" in state:
            restore_generator(self.generator, state["generator"])

    @abstractmethod
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """obs [O] -> action [A], or a batch [N, O] -> [N, A]."""

    def act_ahead(self, obs: Tensor, deterministic: bool = True) -> Tensor:
        """The actions planned from obs [O] for this step and the next ones: [H, A]. A real-time
        controller executes them while the next plan is computed. Policies plan one step (H = 1);
        MPC planners return their whole plan (and keep it as the next warm start, as act does)."""
        return self.act(obs, deterministic).reshape(1, -1)

    def observe(self, transition: TensorDict) -> None:
        """Take in real transitions (a TensorDict [N], see worldmodel.transitions)."""

    def learn(self, updates: int | None = None) -> dict:
        """Cheap learning called after every real step (a Dyna agent's gradient steps); returns statistics."""
        return {}

    def update(self, **kwargs) -> dict:
        """Expensive learning on a schedule (refit the model); returns statistics."""
        return {}

    def state_dict(self) -> dict:
        """What the planner learned beyond the model and the replay buffer (for checkpoints)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`."""


def check_obs(obs: Tensor, obs_dim: int) -> Tensor:
    """An observation [O] or batch [N, O] as float32, or a ValueError that says what is wrong with it.

    NaN or inf in an observation is an input problem (a sensor, the simulator, the caller), named
    as such here before any planning: it must never reach an action.
    """
    if not isinstance(obs, Tensor):
        obs = torch.as_tensor(obs)
    if obs.dim() not in (1, 2) or obs.shape[-1] != obs_dim:
        raise ValueError(f"obs must be [{obs_dim}] or [N, {obs_dim}], got {list(obs.shape)}")
    obs = obs.float()
    if not torch.isfinite(obs).all():
        bad = (~torch.isfinite(obs)).reshape(-1, obs_dim).nonzero()[:, -1].unique().tolist()
        raise ValueError(f"the observation holds NaN or inf (dims {bad}): check the sensor, simulator or "
                         "caller that produced it; no action is planned from it")  # fmt: skip
    return obs


def evaluation_returns(planner: Planner, env, episodes: int) -> list[float]:
    """The returns of `episodes` deterministic episodes of `planner` (evaluation_rollouts)."""
    return [rollout["next", "reward"].sum().item() for rollout in evaluation_rollouts(planner, env, episodes)]


def evaluation_rollouts(planner: Planner, env, episodes: int) -> list[TensorDict]:
    """`episodes` deterministic episodes of `planner` on a TorchRL env (see worldmodel.envs), each
    its rollout [T]; the planner is reset before each, and left as it was found (a training
    episode under way keeps its warm start, and its random stream does not depend on evaluations)."""
    rollouts, before = [], planner.episode_state()
    try:
        for _ in range(episodes):
            planner.reset()

            def act(td):
                threads.adapt()
                return td.set("action", planner.act(td["observation"], deterministic=True))

            rollouts.append(env.rollout(env.task_spec.max_episode_steps, policy=act))
    finally:
        planner.reset()
        planner.restore_episode_state(before)
    return rollouts


def evaluate(planner: Planner, env, episodes: int) -> float:
    """The mean of `evaluation_returns`."""
    returns = evaluation_returns(planner, env, episodes)
    return sum(returns) / len(returns)
