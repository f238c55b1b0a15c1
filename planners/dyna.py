"""Dyna planners: a SAC agent trained on short imagined rollouts of the ensemble mixed with real data.

MBPO (Janner et al. 2019) is the base; MOPO (Yu et al. 2020) subtracts lambda x an
uncertainty measure from imagined rewards; RAVL (Sims et al. 2024) uses no penalty but an
EDAC critic ensemble, so values at the edge of the rollouts' reach are not overestimated.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields

import torch
from tensordict import TensorDict
from torch import Tensor

from planners.base import Planner, check_obs
from planners.sac import SAC, SACConfig, sac_settings
from worldmodel.envs import TaskSpec
from worldmodel.replay import ReplayBuffer
from worldmodel.uncertainty import Uncertainty

# start states imagined at once on a CPU: a chunk's activations stay in cache (a 50k x 5 round in
# chunks 1.1-1.25x faster here). The draws then come chunk by chunk: a seed's rollouts depend on it.
ROLLOUT_CHUNK = 4096


@dataclass
class DynaConfig:
    """Settings shared by MBPO, MOPO and RAVL (defaults: MBPO's and MOPO's published ones)."""

    rollout_length: int = 5  # k imagined steps from each real start state
    # [start, end, min_length, max_length]: k grows linearly with real steps observed (MBPO's schedule)
    rollout_schedule: list[int] | None = None
    rollout_batch_size: int = 50_000  # start states per rollout round
    rollout_every: int = 1000  # agent updates between rollout rounds
    retain_rounds: int = 5  # rollout rounds the model buffer keeps
    real_ratio: float = 0.05  # share of real transitions in each agent batch
    penalty: float = 0.0  # MOPO's lambda: imagined reward - lambda * uncertainty
    uncertainty: str = "max_aleatoric"  # worldmodel.uncertainty measure for the penalty
    uncertainty_elites_only: bool = True  # the measure over the elites (True) or every member
    uncertainty_include_reward: bool = False  # the reward output enters the measure too
    updates_per_step: int = 20  # agent updates per real step when learning online (MBPO's G)
    obs_limit: float | None = 100.0  # an imagined state with |x| beyond this ends its rollout (None: no limit)
    symmetric_sampling: bool = False  # the real part of each batch: half offline data, half new (RLPD; prior_rows)
    actor_lr_cosine: bool = False  # offline, the actor's lr anneals to 0 along a cosine over the updates (schedule)
    agent: dict = field(default_factory=dict)  # SACConfig fields
    seed: int | None = None

    def __post_init__(self):
        if self.rollout_length < 1 or self.rollout_batch_size < 1 or self.rollout_every < 1 or self.retain_rounds < 1:
            raise ValueError("rollout_length, rollout_batch_size, rollout_every and retain_rounds must be >= 1")
        if not 0.0 <= self.real_ratio <= 1.0:
            raise ValueError(f"real_ratio must be in [0, 1], got {self.real_ratio}")
        if self.penalty < 0:
            raise ValueError(f"penalty must be >= 0, got {self.penalty}")
        if self.obs_limit is not None and self.obs_limit <= 0:
            raise ValueError(f"obs_limit must be > 0 or None, got {self.obs_limit}")
        if self.rollout_schedule is not None and (len(self.rollout_schedule) != 4 or min(self.rollout_schedule[2:]) < 1):
            raise ValueError("rollout_schedule is [start_step, end_step, min_length, max_length], lengths >= 1")
        Uncertainty(self.uncertainty)  # unknown measures fail here, not mid-training
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

    def __init__(self, model, spec: TaskSpec, config: DynaConfig, buffer: ReplayBuffer | None = None):
        self.model, self.spec, self.config = model, spec, config
        self.buffer = buffer if buffer is not None else ReplayBuffer(spec.obs_dim, spec.act_dim)
        self.agent = SAC(spec.obs_dim, spec.action_low, spec.action_high, SACConfig(**config.agent)).to(model.device)
        self.generator = torch.Generator(model.device)
        if config.seed is not None:
            self.generator.manual_seed(config.seed)
        else:
            self.generator.seed()
        self.model_buffer = self._model_buffer_for(self.rollout_length)
        self._updates_since_rollout = 0
        self._rolled_out = False  # (a first round runs before the first update, even if it kept nothing)
        self.last_rollout: dict[str, float] = {}
        self._penalty_warned = False

    # ---------------------------------------------------------------- the robot loop

    def reset(self) -> None:
        pass  # the policy keeps no state within an episode

    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        return self.agent.act(check_obs(obs, self.spec.obs_dim).to(self.model.device), deterministic)

    def observe(self, transition: TensorDict) -> None:
        self.buffer.extend(transition)

    def schedule(self, updates: int | None) -> None:
        """The agent's update budget ahead (offline: all its updates; None: open-ended, online).
        With actor_lr_cosine the actor's learning rate anneals to 0 over that budget."""
        horizon = self.agent.updates + updates if updates and self.config.actor_lr_cosine else None
        if horizon != self.agent.actor_lr_horizon:  # (from now; a budget extended keeps its schedule's start)
            self.agent.anneal_actor_lr(horizon)

    def update(self, **fit_kwargs) -> dict:
        """Refit the model (warm-started) on every real transition, then refresh the model buffer."""
        stats = self.model.fit(self.buffer.data(), **{"progress": False, **fit_kwargs})
        self.rollout()
        return stats

    def learn(self, updates: int | None = None) -> dict[str, float]:
        """`updates` agent gradient steps (default: updates_per_step), with a rollout round every
        `rollout_every`; returns the last step's losses and the last rollout's statistics."""
        cfg = self.config
        stats: dict[str, float] = {}
        for _ in range(cfg.updates_per_step if updates is None else updates):
            if not self._rolled_out or self._updates_since_rollout >= cfg.rollout_every:
                self.rollout()
            stats = self.agent.update(self._batch())
            self._updates_since_rollout += 1
        return {**stats, **self.last_rollout}

    # ---------------------------------------------------------------- imagination

    @property
    def rollout_length(self) -> int:
        """k now: fixed, or MBPO's linear schedule over the real transitions observed so far
        (an offline dataset counts; the model buffer holds retain_rounds rounds of the k now)."""
        if self.config.rollout_schedule is None:
            return self.config.rollout_length
        start, end, low, high = self.config.rollout_schedule
        progress = min(max((len(self.buffer) - start) / max(end - start, 1), 0.0), 1.0)
        return int(low + progress * (high - low))

    @torch.no_grad()
    def rollout(self, start_obs: Tensor | None = None) -> dict[str, float]:
        """Imagine `rollout_length` steps from start states (default: rollout_batch_size real
        observations) with the current policy, a random elite per row and step; terminated or
        non-finite rows stop. The transitions go to the model buffer; returns statistics."""
        cfg = self.config
        if start_obs is None:
            start_obs = self.buffer.sample(cfg.rollout_batch_size)["obs"]
        # read from the config each round: online.* settings may change penalty and measure at the switch
        measure = Uncertainty(cfg.uncertainty, cfg.uncertainty_elites_only, cfg.uncertainty_include_reward) \
            if cfg.penalty > 0 else None  # fmt: skip
        started, steps, raw_rewards, penalties, dropped, escaped = start_obs.shape[0], [], [], [], 0, 0
        length, device = self.rollout_length, self.model.device
        chunk = ROLLOUT_CHUNK if device.type == "cpu" else max(started, 1)  # (a GPU takes them all at once)
        for obs in start_obs.to(device).split(chunk):
            for _ in range(length):
                if obs.shape[0] == 0:
                    break
                action = self.agent.act(obs)
                out = self.model.step(obs, action, mode="random", uncertainty=measure, generator=self.generator)
                raw = out["reward"]
                penalty = out["uncertainty"] if measure is not None else torch.zeros_like(raw)
                reward = raw - cfg.penalty * penalty
                finite = torch.isfinite(out["next_obs"]).all(-1) & torch.isfinite(reward)
                dropped += int((~finite).sum())
                # a state beyond obs_limit ends its rollout (kept, as a terminal step), as MOPO's code does
                beyond = torch.zeros_like(finite)
                if cfg.obs_limit is not None:
                    beyond = (out["next_obs"].abs() > cfg.obs_limit).any(-1) & finite
                escaped += int(beyond.sum())
                step = TensorDict({
                    "obs": obs, "action": action, "reward": reward, "next_obs": out["next_obs"],
                    "terminated": out["terminated"] | beyond, "truncated": torch.zeros_like(out["terminated"]),
                }, batch_size=[obs.shape[0]])[finite]  # fmt: skip
                steps.append(step)
                raw_rewards.append(raw[finite])
                penalties.append(penalty[finite])
                obs = step["next_obs"][~step["terminated"]]
        imagined = torch.cat(steps) if steps else None
        count = len(imagined) if imagined is not None else 0
        self._resize_model_buffer(length)
        if count:
            self.model_buffer.extend(imagined)
        elif started:
            warnings.warn(f"a rollout round kept no imagined transition ({dropped} non-finite, of {started} starts): "
                          "the agent learns from real data only until the next round; is the model diverged?",
                          stacklevel=2)  # fmt: skip
        self._updates_since_rollout, self._rolled_out = 0, True
        raw = torch.cat(raw_rewards) if count else torch.zeros(1)
        penalty = torch.cat(penalties) if count else torch.zeros(1)
        self.last_rollout = {  # over the kept rows: what the agent learns from, and what the penalty took
            "rollout_length": self.rollout_length, "imagined": float(count),
            "mean_steps_per_start": count / max(started, 1),
            "imagined_reward": imagined["reward"].mean().item() if count else 0.0,
            "raw_reward": raw.mean().item(), "raw_reward_abs": raw.abs().mean().item(),
            "penalty_mean": penalty.mean().item(), "penalty_max": penalty.max().item(),
            "penalty_share": (cfg.penalty * penalty).mean().item() / max(raw.abs().mean().item(), 1e-12),
            "nonfinite_rows": float(dropped), "out_of_range_rows": float(escaped),
        }  # fmt: skip
        self._warn_if_the_penalty_swamps_the_reward()
        return self.last_rollout

    def _warn_if_the_penalty_swamps_the_reward(self) -> None:
        """Once per planner: when the penalty turns a positive raw reward negative on average,
        every imagined step is a loss, and where episodes end the agent learns to end them."""
        stats = self.last_rollout
        if self._penalty_warned or not stats["imagined"] or not stats["raw_reward"] > 0 > stats["imagined_reward"]:
            return
        self._penalty_warned = True
        warnings.warn(
            f"the uncertainty penalty takes {stats['penalty_share']:.1f}x the raw imagined reward (mean "
            f"{stats['raw_reward']:.2f} before it, {stats['imagined_reward']:.2f} after): every imagined step is a "
            "loss, so on a task whose episodes end the agent can learn to end them early (a walker falls). The "
            f"model's uncertainty is large (mean {stats['penalty_mean']:.2f}): fit it longer "
            "(offline.fit_epochs=null fits until the holdout stops improving) or lower planner.penalty",
            stacklevel=3)

    def _batch(self) -> TensorDict:
        """One agent batch: real_ratio of it from real data, the rest imagined."""
        size = self.agent.config.batch_size
        real = round(size * self.config.real_ratio) if len(self.model_buffer) else size
        split = self.prior_rows if self.config.symmetric_sampling else None
        parts = [self.buffer.sample(real, split)] if real else []
        if size - real:
            parts.append(self.model_buffer.sample(size - real))
        return torch.cat([p.to(self.model.device) for p in parts])

    def _model_buffer_for(self, length: int) -> ReplayBuffer:
        capacity = self._model_buffer_capacity(length)
        return ReplayBuffer(self.spec.obs_dim, self.spec.act_dim, capacity=capacity, device=str(self.model.device))

    def _model_buffer_capacity(self, length: int) -> int:
        return self.config.rollout_batch_size * length * self.config.retain_rounds

    def _resize_model_buffer(self, length: int) -> None:
        """Hold retain_rounds rounds of k = `length` steps, keeping the newest rows (MBPO's pool
        reallocation): a buffer sized for a schedule's longest k would keep many times
        retain_rounds of the short early rounds, and reserve memory for them."""
        old = self.model_buffer
        if old.capacity == self._model_buffer_capacity(length):
            return
        self.model_buffer = self._model_buffer_for(length)
        if len(old):
            self.model_buffer.extend(old.data()[old.newest(self.model_buffer.capacity)])

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        """The agent (networks, optimisers, temperature), the update counter and the rollouts' random
        stream; the model buffer is not saved (a resumed run imagines a fresh one)."""
        return {"agent": self.agent.training_state(), "updates_since_rollout": self._updates_since_rollout,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.agent.load_training_state(state["agent"])
        self._updates_since_rollout = state["updates_since_rollout"]
        self.generator.set_state(state["generator"])


class MBPO(Dyna):
    def __init__(self, model, spec, config: DynaConfig | None = None, buffer=None):
        super().__init__(model, spec, config or MBPOConfig(), buffer)


class MOPO(Dyna):
    def __init__(self, model, spec, config: DynaConfig | None = None, buffer=None):
        super().__init__(model, spec, config or MOPOConfig(), buffer)


class RAVL(Dyna):
    def __init__(self, model, spec, config: DynaConfig | None = None, buffer=None):
        super().__init__(model, spec, config or RAVLConfig(), buffer)
