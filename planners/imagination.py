"""Dyna's data: short rollouts of the ensemble from real states under a policy, kept in a model
buffer and mixed with real transitions into agent batches (MBPO; MOPO's uncertainty penalty on the
imagined rewards; RAVL's rollouts without one). Dyna planners learn their agent from it; an MPC
planner's learned value can too (MPCConfig.value_imagination), so critics pretrained offline by
MOPO keep learning from the data they were trained on once a robot's transitions arrive.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from tensordict import TensorDict
from torch import Tensor

from planners.sac import SAC
from worldmodel.replay import ReplayBuffer
from worldmodel.uncertainty import Uncertainty

# start states imagined at once on a CPU: a chunk's activations stay in cache (a 50k x 5 round in
# chunks 1.1-1.25x faster here). The draws then come chunk by chunk: a seed's rollouts depend on it.
ROLLOUT_CHUNK = 4096


@dataclass
class ImaginationConfig:
    """How imagined transitions are made and how many of an agent batch they are."""

    rollout_length: int = 5  # k imagined steps from each real start state
    # [start, end, min_length, max_length]: k grows linearly with real steps observed (MBPO's schedule)
    rollout_schedule: list[int] | None = None
    rollout_batch_size: int = 50_000  # start states per rollout round
    rollout_every: int = 1000  # agent updates between rollout rounds
    retain_rounds: int = 5  # rollout rounds the model buffer keeps
    real_ratio: float = 0.05  # share of real transitions in each agent batch (1: no imagination)
    penalty: float = 0.0  # MOPO's lambda: imagined reward - lambda * uncertainty
    uncertainty: str = "max_aleatoric"  # worldmodel.uncertainty measure for the penalty
    uncertainty_elites_only: bool = True  # the measure over the elites (True) or every member
    uncertainty_include_reward: bool = False  # the reward output enters the measure too
    obs_limit: float | None = 100.0  # an imagined state with |x| beyond this ends its rollout (None: no limit)

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


class Imagination:
    """A planner's model buffer of imagined transitions and the agent batches drawn from it and from
    the planner's real ones. It reads the planner's `model`, `buffer` and `imagination_config` at
    each call (a real-time learner swaps the model, a switch to online replaces the config, a resume
    the buffer) and is given the policy to imagine with (a background learner trains a copy)."""

    def __init__(self, planner, generator: torch.Generator):
        self.planner, self.generator = planner, generator
        self.model_buffer = self._model_buffer_for(self.rollout_length)
        self.updates_since_rollout = 0
        self.rolled_out = False  # (a first round runs before the first batch, even if it kept nothing)
        self.last_rollout: dict[str, float] = {}
        self._penalty_warned = False

    @property
    def config(self) -> ImaginationConfig:
        return self.planner.imagination_config

    @property
    def imagines(self) -> bool:
        """Whether batches hold imagined rows at all (real_ratio < 1)."""
        return self.config.real_ratio < 1.0

    @property
    def rollout_length(self) -> int:
        """k now: fixed, or MBPO's linear schedule over the real transitions observed so far
        (an offline dataset counts; the model buffer holds retain_rounds rounds of the k now)."""
        if self.config.rollout_schedule is None:
            return self.config.rollout_length
        start, end, low, high = self.config.rollout_schedule
        progress = min(max((len(self.planner.buffer) - start) / max(end - start, 1), 0.0), 1.0)
        return int(low + progress * (high - low))

    def batch(self, policy: SAC, size: int, split: int | None = None) -> TensorDict:
        """One agent batch of `size` rows (`sample`), after a rollout round with `policy` where one is
        due (before the first batch, then every rollout_every batches)."""
        if self.imagines and (not self.rolled_out or self.updates_since_rollout >= self.config.rollout_every):
            self.rollout(policy)
        self.updates_since_rollout += 1
        return self.sample(size, split)

    def expire(self) -> None:
        """The model changed: roll out afresh before the next batch (the rows kept are the old model's)."""
        self.rolled_out = False

    def sample(self, size: int, split: int | None = None) -> TensorDict:
        """real_ratio of `size` rows from the real buffer (split: RLPD's symmetric sampling, see
        ReplayBuffer.sample), the rest imagined; all real while the model buffer is empty."""
        real = round(size * self.config.real_ratio) if len(self.model_buffer) else size
        parts = [self.planner.buffer.sample(real, split)] if real else []
        if size - real:
            parts.append(self.model_buffer.sample(size - real))
        return torch.cat([p.to(self.model_buffer.device) for p in parts])

    @torch.no_grad()
    def rollout(self, policy: SAC, start_obs: Tensor | None = None) -> dict[str, float]:
        """Imagine `rollout_length` steps from start states [S, O] (default: rollout_batch_size real
        observations) with `policy`, a random elite per row and step; terminated or non-finite rows
        stop. The transitions go to the model buffer; returns statistics over the kept rows."""
        cfg, model = self.config, self.planner.model
        if start_obs is None:
            start_obs = self.planner.buffer.sample(cfg.rollout_batch_size)["obs"]
        # read from the config each round: online.* settings may change penalty and measure at the switch
        measure = Uncertainty(cfg.uncertainty, cfg.uncertainty_elites_only, cfg.uncertainty_include_reward) \
            if cfg.penalty > 0 else None  # fmt: skip
        started, steps, raw_rewards, penalties, dropped, escaped = start_obs.shape[0], [], [], [], 0, 0
        length, device = self.rollout_length, model.device
        chunk = ROLLOUT_CHUNK if device.type == "cpu" else max(started, 1)  # (a GPU takes them all at once)
        for obs in start_obs.to(device).split(chunk):
            for _ in range(length):
                if obs.shape[0] == 0:
                    break
                action = policy.act(obs)
                out = model.step(obs, action, mode="random", uncertainty=measure, generator=self.generator)
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
        self.updates_since_rollout, self.rolled_out = 0, True
        raw = torch.cat(raw_rewards) if count else torch.zeros(1)
        penalty = torch.cat(penalties) if count else torch.zeros(1)
        self.last_rollout = {  # over the kept rows: what the agent learns from, and what the penalty took
            "rollout_length": length, "imagined": float(count),
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
        """Once: when the penalty turns a positive raw reward negative on average, every imagined
        step is a loss, and where episodes end the agent learns to end them."""
        stats = self.last_rollout
        if self._penalty_warned or not stats["imagined"] or not stats["raw_reward"] > 0 > stats["imagined_reward"]:
            return
        self._penalty_warned = True
        warnings.warn(
            f"the uncertainty penalty takes {stats['penalty_share']:.1f}x the raw imagined reward (mean "
            f"{stats['raw_reward']:.2f} before it, {stats['imagined_reward']:.2f} after): every imagined step is a "
            "loss, so on a task whose episodes end the agent can learn to end them early (a walker falls). The "
            f"model's uncertainty is large (mean {stats['penalty_mean']:.2f}): fit it longer "
            "(offline.fit_epochs=null fits until the holdout stops improving) or lower the penalty (planner.penalty; "
            "an MPC planner's planner.value_imagination.penalty)",
            stacklevel=5)

    def _model_buffer_for(self, length: int) -> ReplayBuffer:
        capacity = self._model_buffer_capacity(length)
        spec = self.planner.spec
        return ReplayBuffer(spec.obs_dim, spec.act_dim, capacity=capacity, device=str(self.generator.device))

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
