"""What every MPC planner shares: its settings, the batched trajectory evaluation, and the warm start.

Shapes: N start states, C candidate action sequences per state, P particles per candidate,
H horizon steps, O obs dims, A action dims.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
import warnings
from typing import Callable, Literal

import torch
from tensordict import TensorDict
from torch import Tensor

from planners.base import Planner, check_obs
from planners.imagination import Imagination, ImaginationConfig
from planners.noise import colored_noise
from planners.sac import SAC, SACConfig, sac_settings
from worldmodel.checkpoint import restore_generator
from worldmodel.envs import TaskSpec
from worldmodel.replay import ReplayBuffer
from worldmodel.uncertainty import Uncertainty

Propagation = Literal["ts1", "tsinf", "expectation"]
_MODEL_MODE = {"ts1": "random", "tsinf": "fixed", "expectation": "mean"}


@dataclass
class MPCConfig:
    """Settings shared by the MPC planners."""

    horizon: int = 15
    particles: int = 1  # model samples per candidate; returns are averaged over them
    propagation: Propagation = "ts1"  # random elite per step | random elite per particle, held | elites' mean
    discount: float = 0.99  # the plan's; the learned value trains with value_agent.discount (0.99 too): change both
    # lambda: reward - lambda * uncertainty (0 disables it); negative: an exploration bonus, optimism
    # where the model is unsure, used only by acts that explore (deterministic=False: the run
    # command's training episodes), not by deterministic ones (its evaluations, the real-time
    # controller's default) nor plan() (see uncertainty_weight)
    uncertainty_penalty: float = 0.0
    uncertainty: str = "ensemble_std"  # the measure used for the penalty
    # A learned terminal value (LOOP, TD-MPC): SAC critics trained off-policy on the real data;
    # V(s_H) = min over critics of Q(s_H, mean action of pi(s_H)) is added after the last step.
    value_learning: bool = True
    value_agent: dict = field(default_factory=dict)  # planners.SACConfig fields
    value_updates_per_step: int = 1
    symmetric_sampling: bool = False  # value batches: half offline data, half new (RLPD; see prior_rows)
    # planners.ImaginationConfig fields: with real_ratio < 1 the rest of each value batch is imagined
    # (Dyna's rollouts from real states with the value's policy; MOPO's penalty with penalty > 0), so
    # critics pretrained by MOPO go on learning from the data they were trained on (default: real only)
    value_imagination: dict = field(default_factory=dict)
    # > 0: the learned value is the critics' mean minus this many of their std (their disagreement,
    # FOWM's penalty for states the data does not cover) instead of their min
    value_penalty: float = 0.0
    # candidate sequences drawn from the learned value's policy each plan, rolled through the model
    # from the start state and kept among every iteration's candidates (TD-MPC's num_pi_trajs, 24
    # there), so a plan is never worse in the model than following the policy (an offline agent's)
    policy_samples: int = 0
    # with policy_samples: sample the candidates around the policy's sequence (the mean of those
    # samples) instead of the shifted previous plan, a trust region around the policy (LOOP's
    # actor-guided planning): with a narrow noise_std a pretrained agent's plans start where its
    # policy is (docs/results.md: hopper from MOPO, 2531 against the actor's 2524 and 1634 without)
    policy_guided: bool = False
    # the largest change of any action dim from one step to the next, in every sampled sequence
    # (from the previous action on), as a robot's actuators allow (None: unlimited)
    slew: float | None = None
    # on CUDA, capture the planning step in one CUDA graph and replay it each step (planners.graph);
    # opt-in until a whole run has used it on a GPU (an H200 ran the default MPPI step 13x faster
    # than eager with the same actions). Not for iCEM (its elites carry over between steps on the host)
    cuda_graph: bool = False
    seed: int | None = None

    def __post_init__(self):
        if self.propagation not in _MODEL_MODE:
            raise ValueError(f"unknown propagation {self.propagation!r}; choose from {sorted(_MODEL_MODE)}")
        if self.horizon < 1 or self.particles < 1:
            raise ValueError("horizon and particles must be >= 1")
        if not 0 <= self.discount <= 1:  # (0: the first step's reward alone)
            raise ValueError(f"discount must be in [0, 1], got {self.discount}")
        if self.value_penalty < 0 or self.policy_samples < 0 or self.value_updates_per_step < 0:
            raise ValueError(f"value_penalty, policy_samples and value_updates_per_step must be >= 0, got "
                             f"{self.value_penalty}, {self.policy_samples}, {self.value_updates_per_step}")
        if self.policy_samples and not self.value_learning:
            raise ValueError("policy_samples draws from the learned value's policy: it needs value_learning=True")
        if self.policy_guided and not self.policy_samples:
            raise ValueError("policy_guided samples around the policy's sequences: set policy_samples > 0")
        if self.policy_samples and self.cuda_graph:
            raise ValueError("policy_samples has not been captured in a CUDA graph on a GPU yet: "
                             "set cuda_graph=False")
        if self.slew is not None and not self.slew > 0:
            raise ValueError(f"slew must be > 0 or None, got {self.slew}")
        self.value_agent = sac_settings(self.value_agent)
        self.value_imagination = asdict(ImaginationConfig(**{"real_ratio": 1.0, **self.value_imagination}))
        if self.value_imagination["real_ratio"] < 1 and not self.value_learning:
            raise ValueError("value_imagination imagines rows for the learned value: it needs value_learning=True")
        if self.value_penalty > 0 and self.value_agent["num_critics"] < 2:
            raise ValueError("value_penalty reads the critics' disagreement: it needs value_agent.num_critics >= 2")


class PlanningError(RuntimeError):
    """The model produced non-finite values while planning; no action was taken from them."""


class MPCPlanner(Planner):
    """Base of the sampling-based MPC planners: evaluates candidate sequences in the model
    and keeps the plan (a mean sequence [N, H, A]) between steps, shifted by one each step.

    `terminal_value`, if given, maps states [B, O] to values [B] added after the last step
    (or set `value_learning` to learn one). `observe` stores real transitions in `buffer`;
    `update` refits the model on them; `learn` trains the learned value, if any.
    """

    graphable = True  # whether optimize() depends only on (obs, warm start, previous action, RNG)
    LEARNED = "value_agent"

    def __init__(self, model, spec: TaskSpec, config: MPCConfig,
                 terminal_value: Callable[[Tensor], Tensor] | None = None, buffer: ReplayBuffer | None = None):
        self.model, self.spec, self.config = model, spec, config
        self.terminal_value = terminal_value
        self.value_agent = None
        if config.value_learning:
            if terminal_value is not None:
                raise ValueError("a terminal_value was given and value_learning is on (the default): "
                                 "pass value_learning=False to plan with your terminal value")
            self.value_agent = SAC(spec.obs_dim, spec.action_low, spec.action_high, SACConfig(**config.value_agent))
            self.value_agent.to(model.device)
            self.terminal_value = self.learned_value  # (a method, not a lambda: a planner pickles)
        self.buffer = buffer if buffer is not None else ReplayBuffer(spec.obs_dim, spec.act_dim)
        self.imagination_config = ImaginationConfig(**config.value_imagination)
        self.imagination = None  # the learned value's imagined transitions (value_imagination)
        if self.value_agent is not None and self.imagination_config.real_ratio < 1:
            generator = torch.Generator(model.device)  # (a stream apart from the planner's sampling)
            generator.manual_seed(config.seed + 1) if config.seed is not None else generator.seed()
            self.imagination = Imagination(self, generator)
        self.low = spec.action_low.to(model.device)
        self.high = spec.action_high.to(model.device)
        self.generator = torch.Generator(model.device)
        if config.seed is not None:
            self.generator.manual_seed(config.seed)
        else:
            self.generator.seed()
        self._plan: Tensor | None = None  # [N, H, A] mean sequence carried between steps
        # the action executed last ([A] or [N, A]); with slew, sequences start within slew of it.
        # act() sets it; a real-time controller sets what it really executed
        self.previous_action: Tensor | None = None
        self._checked_fitted = False
        self._exploring = False  # this plan is for an exploring act (uncertainty_weight)
        # a device bool: every candidate return so far in this step was finite (None: none yet).
        # Checked once per step, on the host, after the step: inside it a check would sync
        self._finite: Tensor | None = None
        self._graphs = None  # planners.graph.PlanGraphs, with config.cuda_graph on CUDA
        if config.cuda_graph and not self.graphable:
            raise ValueError(f"{type(self).__name__} keeps state between steps on the host and cannot be "
                             "replayed from a CUDA graph: set cuda_graph=False")  # fmt: skip

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_graphs"] = None  # (a CUDA graph does not pickle: the copy captures its own)
        return state

    def uncertainty_weight(self) -> float:
        """lambda of this plan's reward - lambda * uncertainty: a penalty (> 0) always, a bonus (< 0)
        only while planning an exploring act (deterministic=False), so deterministic acts and plan()
        go without optimism."""
        weight = self.config.uncertainty_penalty
        return weight if weight > 0 or self._exploring else 0.0

    def learned_value(self, state: Tensor) -> Tensor:
        """The learned terminal value of states [B, O]: [B]."""
        return self.value_agent.value(state, True, self.config.value_penalty)

    # ---------------------------------------------------------------- the robot loop

    EPISODE_STATE = ("_plan", "previous_action")

    def reset(self) -> None:
        self._plan = None
        self.previous_action = None

    def skip(self, steps: int) -> None:
        """The next plan starts `steps` control periods later than the one after the last plan's
        first: drop that many more steps of the warm start (a real-time controller whose plans
        are more than a period apart)."""
        for _ in range(min(steps, self.config.horizon) if self._plan is not None else 0):  # (a whole horizon
            self._plan = self._shift(self._plan)                                            # shifts it all out)

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Plan, keep the plan (shifted) as the next step's warm start, return its first action.

        Not deterministic: the first action is drawn from the planner's final spread.
        """
        obs = torch.as_tensor(obs)  # (array-likes too, as check_obs takes them)
        action = self._act_plan(obs, deterministic)[:, 0]
        return action[0] if obs.dim() == 1 else action

    @torch.no_grad()
    def act_ahead(self, obs: Tensor, deterministic: bool = True) -> Tensor:
        """The whole plan from obs [O]: [H, A] (the first action as act gives it), kept as the warm start."""
        return self._act_plan(obs.reshape(1, -1), deterministic)[0]

    def _act_plan(self, obs: Tensor, deterministic: bool) -> Tensor:
        """Plan from obs [O] or [N, O]; keep the shifted plan as warm start; return the plan [N, H, A]
        with its first action drawn from the final spread unless deterministic."""
        self._exploring = not deterministic
        try:
            plan, std = self._optimize(obs)
        finally:
            self._exploring = False
        self._plan = self._shift(plan)
        if not deterministic and std is not None:
            plan = plan.clone()
            plan[:, 0] += std[:, 0] * torch.randn(plan[:, 0].shape, generator=self.generator, device=plan.device)
        plan = self.rate_limited(plan.clamp(self.low, self.high))
        self.previous_action = plan[:, 0]
        return plan

    def observe(self, transition: TensorDict) -> None:
        self.buffer.extend(transition)

    def learn(self, updates: int | None = None) -> dict[str, float]:
        """Train the learned terminal value (if value_learning) on real (and imagined) transitions;
        returns the last update's stats and the last rollout round's (value_imagination)."""
        if self.value_agent is None or len(self.buffer) == 0:
            return {}
        stats: dict[str, float] = {}
        for _ in range(self.learn_updates_per_step if updates is None else updates):
            stats = self.value_agent.update(self.learning_batch(self.value_agent))
        return {**stats, **(self.imagination.last_rollout if self.imagination is not None else {})}

    @property
    def learn_updates_per_step(self) -> int:
        return self.config.value_updates_per_step if self.value_agent is not None else 0

    def learning_batch(self, agent: SAC) -> TensorDict:
        """A batch for the learned value `agent` (the planner's, or a background learner's copy):
        real transitions (half offline, half new with symmetric_sampling) and, with
        value_imagination, imagined ones rolled out with that agent's policy when a round is due."""
        if self.imagination is not None:
            return self.imagination.batch(agent, agent.config.batch_size, self.symmetric_split)
        return self.buffer.sample(agent.config.batch_size, self.symmetric_split).to(self.model.device)

    def state_dict(self) -> dict:
        """The sampling RNG and the learned value (the plan itself is per-episode, cleared on resume);
        with value_imagination its random stream (the model buffer is not saved: a resumed run
        imagines a fresh one before its first value update)."""
        state = {"generator": self.generator.get_state()}
        if self.value_agent is not None:
            state["value_agent"] = self.value_agent.training_state()
        if self.imagination is not None:
            state["imagination_generator"] = self.imagination.generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        restore_generator(self.generator, state["generator"])
        if self.value_agent is not None:
            self.value_agent.load_training_state(state["value_agent"])
        if self.imagination is not None and "imagination_generator" in state:
            restore_generator(self.imagination.generator, state["imagination_generator"])

    def update(self, **fit_kwargs) -> dict:
        """Refit the model (warm-started) on every observed transition; fit_kwargs go to model.fit."""
        stats = self.model.fit(self.buffer.data(), **{"progress": False, **fit_kwargs})
        if self.imagination is not None:
            self.imagination.expire()
        return stats

    @torch.no_grad()
    def plan(self, obs: Tensor) -> Tensor:
        """The planned action sequence, for inspection (keeps no state, its random stream included: the
        next act() draws what it would have without it; not under a CUDA graph on a GPU):
        [O] -> [H, A], [N, O] -> [N, H, A]."""
        obs = torch.as_tensor(obs)
        # (a CUDA graph's replay moves the generator registered with it on: with cuda_graph on a GPU
        # the stream is not restored)
        graphed = self.config.cuda_graph and self.model.device.type == "cuda"
        stream = None if graphed else self.generator.get_state()
        try:
            plan, _ = self._optimize(obs)
        finally:
            if stream is not None:
                self.generator.set_state(stream)
        return plan[0] if obs.dim() == 1 else plan

    def optimize(self, obs: Tensor, mean: Tensor) -> tuple[Tensor, Tensor | None]:
        """Improve the sequence mean [N, H, A] for start states obs [N, O].

        Returns the planned sequence [N, H, A] and the final spread around it (or None).
        """
        raise NotImplementedError

    def _optimize(self, obs: Tensor) -> tuple[Tensor, Tensor | None]:
        obs = check_obs(obs, self.spec.obs_dim).to(self.model.device).reshape(-1, self.spec.obs_dim)
        if not self._checked_fitted:  # once: acting must stay cheap (and free of device syncs)
            self._checked_fitted = True
            if not getattr(self.model, "fitted", True):
                warnings.warn("planning with a model that was never fitted: its predictions are noise, and so are "
                              "the actions; fit it first (planner.observe(...) then planner.update())", stacklevel=4)
        warm = self._warm_start(obs.shape[0])
        if self.config.cuda_graph and obs.is_cuda:
            if self._graphs is None:
                from planners.graph import PlanGraphs

                self._graphs = PlanGraphs()
            plan, std, self._finite = self._graphs.replay(self, obs, warm)
        else:
            plan, std, self._finite = self.optimize_checked(obs, warm)
        if not bool(self._finite):  # the step's one host sync
            raise PlanningError(
                "the model predicted non-finite rewards or states from a finite observation while "
                "planning; refit it (or check its training data) before acting"
            )
        return plan, std

    def optimize_checked(self, obs: Tensor, warm: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """optimize(obs, warm) and whether every candidate's return and the plan itself were finite
        (a device bool, not synced: the caller's one sync, or a CUDA graph's output)."""
        self._finite = None
        plan, std = self.optimize(obs, warm)
        finite = torch.isfinite(plan).all()
        return plan, std, finite if self._finite is None else self._finite & finite

    # ---------------------------------------------------------------- shared machinery

    def evaluate(self, obs: Tensor, actions: Tensor) -> Tensor:
        """Expected return of each candidate: obs [N, O], actions [N, C, H, A] -> [N, C].

        All N*C*P rollouts advance together, one batched model step per horizon step.
        Rewards after a predicted termination do not count. Non-finite returns are flagged on
        the device (no sync) and the planning step raises PlanningError after it.
        """
        cfg = self.config
        n, c, h, a = actions.shape
        p = cfg.particles
        rows = n * c * p
        state = obs[:, None, None, :].expand(n, c, p, obs.shape[-1]).reshape(rows, -1)
        seq = actions[:, :, None].expand(n, c, p, h, a).reshape(rows, h, a)
        # tsinf: each rollout a random elite held over the horizon (PETS's TS-infinity): the rows are
        # shuffled into the model's fixed assignment (row b -> elite b % num_elites, each elite an
        # equal share), so no candidate's place (iCEM's mean, a policy's sequence) fixes its elite
        shuffle = None
        if cfg.propagation == "tsinf":  # (a permutation by sorting random keys: capturable in a CUDA graph)
            shuffle = torch.rand(rows, generator=self.generator, device=obs.device).argsort()
            state, seq = state[shuffle], seq[shuffle]
        # read from the config at every plan: online.* settings may change it at the switch
        weight = self.uncertainty_weight()
        penalty = Uncertainty(cfg.uncertainty) if weight != 0 else None
        total = torch.zeros(rows, device=obs.device)
        alive = torch.ones(rows, dtype=torch.bool, device=obs.device)
        for t in range(h):
            out = self.model.step(state, seq[:, t], mode=_MODEL_MODE[cfg.propagation],
                                  uncertainty=penalty, generator=self.generator)
            reward = out["reward"]
            if penalty is not None:
                reward = reward - weight * out["uncertainty"]
            total += cfg.discount**t * torch.where(alive, reward, 0.0)  # (an ended rollout's inf is not 0 x inf)
            alive = alive & ~out["terminated"]
            state = out["next_obs"]
        if self.terminal_value is not None:
            total += cfg.discount**h * torch.where(alive, self.terminal_value(state), 0.0)
        if shuffle is not None:
            total = torch.empty_like(total).index_copy_(0, shuffle, total)  # (back in candidate order)
        returns = total.view(n, c, p).mean(-1)
        finite = torch.isfinite(returns).all()
        self._finite = finite if self._finite is None else self._finite & finite
        return returns

    def policy_sequences(self, obs: Tensor) -> Tensor | None:
        """config.policy_samples action sequences per start state from the learned value's policy,
        each sampled along its own rollout of the model (propagation's mode) from obs [N, O]:
        [N, P, H, A] within the box and the slew limit; None without them."""
        cfg, p = self.config, self.config.policy_samples
        if not p or self.value_agent is None:
            return None
        n = obs.shape[0]
        state = obs.repeat_interleave(p, dim=0)  # [N * P, O]
        actions = []
        for _ in range(cfg.horizon):
            action = self.value_agent.act(state, generator=self.generator).clamp(self.low, self.high)
            actions.append(action)
            state = self.model.step(state, action, mode=_MODEL_MODE[cfg.propagation], generator=self.generator)["next_obs"]
        return self.rate_limited(torch.stack(actions, dim=1).view(n, p, cfg.horizon, -1))

    def sampling_mean(self, mean: Tensor, prior: Tensor | None) -> Tensor:
        """Where candidates are sampled around [N, H, A]: the warm start `mean`, or with policy_guided
        the mean of the policy's sequences `prior` [N, P, H, A]."""
        return prior.mean(1) if self.config.policy_guided and prior is not None else mean

    def with_policy(self, candidates: Tensor, prior: Tensor | None) -> Tensor:
        """candidates [N, C, H, A] and the policy's sequences [N, P, H, A] (or None): [N, C + P, H, A]."""
        return candidates if prior is None else torch.cat([candidates, prior], dim=1)

    def _half_range(self) -> Tensor:
        return (self.high - self.low) / 2

    def _warm_start(self, n: int) -> Tensor:
        """The previous plan shifted by one step, or the middle of the action box."""
        if self._plan is not None and self._plan.shape[0] == n:
            return self._plan
        middle = (self.low + self.high) / 2
        return middle.expand(n, self.config.horizon, self.spec.act_dim).clone()

    def _shift(self, plan: Tensor) -> Tensor:
        """Drop the executed step; repeat the middle of the box at the end."""
        middle = ((self.low + self.high) / 2).expand(plan.shape[0], 1, plan.shape[-1])
        return torch.cat([plan[:, 1:], middle], dim=1)

    def _sample(self, mean: Tensor, std: Tensor, count: int, beta: float = 0.0) -> Tensor:
        """count sequences around mean [N, H, A] with std [N, H, A] (coloured if beta > 0),
        clipped to the action box and the slew limit: [N, count, H, A]."""
        n, h, a = mean.shape
        noise = colored_noise(beta, (n, count, h, a), self.generator, mean.device)
        return self.rate_limited((mean.unsqueeze(1) + std.unsqueeze(1) * noise).clamp(self.low, self.high))

    def rate_limited(self, sequences: Tensor) -> Tensor:
        """Sequences [N, ..., H, A] with each step within `slew` of the one before (the first
        within slew of previous_action, when known for these N start states: an action per row, or
        [A] for one); unchanged without a slew limit."""
        slew = self.config.slew
        if slew is None:
            return sequences
        steps = list(sequences.unbind(-2))
        previous = self.previous_action
        if previous is not None and previous.numel() != sequences.shape[0] * sequences.shape[-1]:
            previous = None  # (another batch's, as _warm_start drops its plan: not these rows' last actions)
        if previous is not None:
            previous = previous.to(sequences.device).reshape(-1, *[1] * (sequences.dim() - 3), sequences.shape[-1])
        for t, step in enumerate(steps):
            if previous is not None:
                step = torch.minimum(torch.maximum(step, previous - slew), previous + slew)
            steps[t] = previous = step
        return torch.stack(steps, dim=-2)
