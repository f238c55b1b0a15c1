"""Soft actor-critic with a vectorised critic ensemble: the agent inside the Dyna planners.

The N critics are one stacked MLP (`kernels.ensemble_mlp`, one batched GEMM per layer for all
of them). The TD target takes the min over all critics or over a random subset (REDQ);
`eta` > 0 adds EDAC's gradient-diversity term (An et al. 2021), which RAVL relies on.
Shapes: B rows, N critics, O obs dims, A action dims.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import Tensor, nn

import kernels
import kernels.reference
from planners.edac import critic_grads, edac_init, gradient_diversity
from worldmodel.optim import adam

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
_INITS, _ORDERS, _PRECISIONS = ("default", "edac"), ("critic_first", "actor_first"), ("fp32", "bf16")


@dataclass
class SACConfig:
    """SAC's settings; the defaults are MBPO's agent (2 critics of 2 x 256, min over both)."""

    hidden: int = 256
    actor_layers: int = 2
    critic_layers: int = 2
    num_critics: int = 2
    critic_subset: int | None = None  # REDQ: target min over this many random critics, actor on all critics' mean (None: min over all, both)
    eta: float = 0.0  # EDAC gradient-diversity weight (0: plain SAC critics)
    discount: float = 0.99
    tau: float = 0.005  # target critics: Polyak averaging rate
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_alpha: float = 1.0
    alpha_max: float | None = None  # the temperature used is min(exp(log_alpha), alpha_max) (OfflineRL-Kit: 1)
    target_entropy: float | None = None  # default: -A in the unit box (SAC's, MBPO's), i.e. -A + sum(log half-range) here
    batch_size: int = 256
    init: str = "default"  # "default" (nn.Linear's) | "edac": hidden biases 0.1, small output layers
    # SAC's critic, actor, alpha | "actor_first": alpha, actor, then critic, each stepped in turn
    # (as RAVL's code does it; the critic's target then reads the updated actor and alpha)
    update_order: str = "critic_first"
    # "bf16": the hidden layers of actor and critics on bfloat16 operands (fp32 accumulation), output
    # layers, losses, parameters and optimisers in fp32 (`kernels.reference.bf16_hidden`); 2-3x
    # faster matmuls where the CPU has AVX-512 BF16 or AMX (`python -m planners.bench --dyna`)
    precision: str = "fp32"
    # EDAC's closed-form critic step (eta > 0) through torch.compile: inductor fuses its elementwise
    # passes (a RAVL update 10-12% faster on a CPU, docs/benchmarks.md); the first step compiles for
    # some seconds; where compiling fails (no C++ compiler) it warns and runs eagerly
    compile_critic_step: bool = False
    # > 0: a trust region around the actor as fine-tuning found it (SAC.anchor_here: load_pretrained_agent
    # and worldmodel.run's switch from offline to online learning set it, so pretrained=<a fine-tuned run>
    # re-centres it on that run's actor): the actor's loss gains
    # actor_anchor x mean|Q| x the mean square of the difference of the two deterministic actions in
    # half-ranges (TD3+BC's scaling: 0.4 is its alpha of 2.5), so that fine-tuning a pretrained agent
    # on real data improves on it without leaving it
    actor_anchor: float = 0.0

    def __post_init__(self):
        if self.num_critics < 1 or self.hidden < 1 or min(self.actor_layers, self.critic_layers) < 1:
            raise ValueError(
                "num_critics, hidden and the layer counts must be >= 1, got "
                f"num_critics={self.num_critics}, hidden={self.hidden}, "
                f"actor_layers={self.actor_layers}, critic_layers={self.critic_layers}"
            )
        if self.critic_subset is not None and not 1 <= self.critic_subset <= self.num_critics:
            raise ValueError(f"critic_subset must be in [1, num_critics={self.num_critics}], got {self.critic_subset}")
        if self.init not in _INITS or self.update_order not in _ORDERS or self.precision not in _PRECISIONS:
            raise ValueError(f"init must be one of {_INITS}, update_order one of {_ORDERS} and precision one of "
                             f"{_PRECISIONS}, got init={self.init!r}, update_order={self.update_order!r}, "
                             f"precision={self.precision!r}")  # fmt: skip
        if self.actor_anchor < 0:
            raise ValueError(f"actor_anchor must be >= 0 (0: no trust region), got {self.actor_anchor}")
        if min(self.actor_lr, self.critic_lr, self.alpha_lr) < 0 or not 0 <= self.tau <= 1:
            raise ValueError(f"the learning rates must be >= 0 (0: frozen) and tau in [0, 1], got actor_lr="
                             f"{self.actor_lr}, critic_lr={self.critic_lr}, alpha_lr={self.alpha_lr}, tau={self.tau}")
        if not self.init_alpha > 0 or not 0 <= self.discount <= 1:
            raise ValueError(f"init_alpha must be > 0 (for a fixed temperature set alpha_lr=0) and discount in [0, 1], "
                             f"got init_alpha={self.init_alpha}, discount={self.discount}")
        if self.alpha_max is not None and self.alpha_max <= 0:
            raise ValueError(f"alpha_max must be > 0 or None, got {self.alpha_max}")
        if self.eta > 0 and self.num_critics < 2:
            raise ValueError(
                f"the gradient-diversity term (eta={self.eta} > 0) needs num_critics >= 2, got {self.num_critics}"
            )


def sac_settings(given: dict, defaults: dict | None = None) -> dict:
    """Every SACConfig field spelled out: SACConfig's defaults, then a planner's own (`defaults`),
    then `given`; an unknown field or a bad value is a ValueError here, not mid-training."""
    known = {f.name for f in dataclasses.fields(SACConfig)}
    if unknown := sorted(set(given) - known):
        raise ValueError(f"unknown agent setting(s) {unknown}; SAC takes {sorted(known)}")
    return dataclasses.asdict(SACConfig(**{**(defaults or {}), **given}))


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy, scaled to the action box: obs [B, O] -> action [B, A].

    precision "bf16": the hidden layers under bfloat16 autocast, the output layer in fp32."""

    def __init__(self, obs_dim: int, action_low: Tensor, action_high: Tensor, hidden: int, layers: int,
                 precision: str = "fp32"):
        super().__init__()
        self.precision = precision
        act_dim = action_low.numel()
        sizes = [obs_dim] + [hidden] * layers
        body = [m for i, o in zip(sizes[:-1], sizes[1:]) for m in (nn.Linear(i, o), nn.ReLU())]
        self.net = nn.Sequential(*body, nn.Linear(hidden, 2 * act_dim))
        self.register_buffer("center", (action_high + action_low) / 2)
        self.register_buffer("half_range", (action_high - action_low) / 2)

    def gaussian(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """obs [B, O] -> the mean and log-std [B, A] of the Gaussian before the tanh."""
        *body, head = self.net
        hidden = obs
        with torch.autocast(obs.device.type, torch.bfloat16) if self.precision == "bf16" else contextlib.nullcontext():
            for module in body:
                hidden = module(hidden)
        mean, log_std = head(hidden.to(head.weight.dtype)).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def squash(self, u: Tensor) -> Tensor:
        """Pre-tanh values [B, A] -> actions in the box [B, A]."""
        return self.center + self.half_range * torch.tanh(u)

    def forward(self, obs: Tensor, deterministic: bool = False,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Sample (reparameterised) an action and its log-probability [B]; deterministic: tanh(mean)."""
        return self.sample(*self.gaussian(obs), deterministic, generator)

    def sample(self, mean: Tensor, log_std: Tensor, deterministic: bool = False,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """From `gaussian`'s mean and log-std [B, A]: an action [B, A] and its log-probability [B]
        (the noise from `generator`, default torch's global stream)."""
        if deterministic:
            return self.squash(mean), torch.zeros(mean.shape[:-1], device=mean.device)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        u = mean + log_std.exp() * noise
        # log N(u) - log|d action / d u|, with log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))
        log_prob = (-0.5 * noise.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - u - F.softplus(-2 * u)) + self.half_range.log()).sum(-1)
        return self.squash(u), log_prob


class CriticEnsemble(nn.Module):
    """N Q-functions as one stacked MLP: (obs [B, O], action [B, A]) -> Q [N, B].

    obs/action may also be [N, B, ...], one slice per critic.
    twice_differentiable: run the pure-PyTorch reference (the Triton backward is not itself
    differentiable): what `SAC._critic_loss`'s autograd definition of the EDAC term needs, the
    reference `planners.edac.critic_grads` is tested against (updates use the closed form). precision: the kernels' ("bf16":
    hidden layers on bf16 operands, the output layer in fp32).
    """

    def __init__(self, obs_dim: int, act_dim: int, num_critics: int, hidden: int, layers: int,
                 precision: str = "fp32"):
        super().__init__()
        self.num_critics, self.precision = num_critics, precision
        sizes = [obs_dim + act_dim] + [hidden] * layers + [1]
        bounds = [1 / math.sqrt(i) for i in sizes[:-1]]  # nn.Linear's default initialisation
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(num_critics, i, o).uniform_(-b, b))
            for i, o, b in zip(sizes[:-1], sizes[1:], bounds))  # fmt: skip
        self.biases = nn.ParameterList(
            nn.Parameter(torch.empty(num_critics, o).uniform_(-b, b)) for o, b in zip(sizes[1:], bounds))

    def forward(self, obs: Tensor, action: Tensor, twice_differentiable: bool = False) -> Tensor:
        x = torch.cat([obs, action], dim=-1)
        if x.dim() == 2:
            x = x.expand(self.num_critics, *x.shape)
        mlp = kernels.reference.ensemble_mlp if twice_differentiable else kernels.ensemble_mlp
        return mlp(x, list(self.weights), list(self.biases), activation="relu", precision=self.precision).squeeze(-1)


class SAC(nn.Module):
    """Actor, critic ensemble, target critics and the entropy temperature, with their optimisers.

    `update(batch)` takes one gradient step on a TensorDict of transitions (obs, action,
    reward, next_obs, terminated; see worldmodel.transitions) and returns its losses.
    """

    def __init__(self, obs_dim: int, action_low: Tensor, action_high: Tensor, config: SACConfig | None = None):
        super().__init__()
        cfg = self.config = config or SACConfig()
        act_dim = action_low.numel()
        self.actor = Actor(obs_dim, action_low.float(), action_high.float(), cfg.hidden, cfg.actor_layers,
                           cfg.precision)
        critics = dict(num_critics=cfg.num_critics, hidden=cfg.hidden, layers=cfg.critic_layers, precision=cfg.precision)
        self.critics = CriticEnsemble(obs_dim, act_dim, **critics)
        self.target_critics = CriticEnsemble(obs_dim, act_dim, **critics)
        if cfg.init == "edac":
            edac_init(self.actor, self.critics)
        self.target_critics.load_state_dict(self.critics.state_dict())
        self.target_critics.requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.init_alpha)))
        # log_prob is the density in the task's action units (with log half-range): the published -A
        # is in the unit box, so a box other than [-1, 1] (humanoid's 0.4, pusher's 2) shifts it
        unit_box = -float(act_dim) + self.actor.half_range.log().sum().item()
        self.target_entropy = unit_box if cfg.target_entropy is None else cfg.target_entropy
        self.actor_optim = adam(self.actor.parameters(), cfg.actor_lr)
        self.critic_optim = adam(self.critics.parameters(), cfg.critic_lr)
        self.alpha_optim = adam([self.log_alpha], cfg.alpha_lr)
        self.updates = 0
        self.actor_lr_horizon: int | None = None  # see anneal_actor_lr
        self.actor_lr_start = 0
        self.anchor: Actor | None = None  # see set_anchor (a module: in state_dict once set)
        self.anchor_pending = False  # True while learning offline before anchor_here (actor_anchor waits for it)
        self._warned_unanchored = False

    def set_anchor(self) -> None:
        """Hold the actor as it stands (a frozen copy) as the centre of config.actor_anchor's trust region."""
        self.anchor = copy.deepcopy(self.actor).requires_grad_(False)

    def anchor_here(self) -> None:
        """Fine-tuning starts here: with actor_anchor > 0 the trust region is re-centred on the actor
        as it stands (a pretrained or offline-trained one); without, any saved anchor is dropped."""
        self.anchor_pending = False
        if self.config.actor_anchor > 0:
            self.set_anchor()
        else:
            self.anchor = None

    def training_state(self) -> dict:
        """Networks (the anchor among them once set), temperature, optimiser moments and the update
        count, for a checkpoint."""
        return {"modules": self.state_dict(), "updates": self.updates, "actor_lr_horizon": self.actor_lr_horizon,
                "actor_lr_start": self.actor_lr_start,
                "optimizers": [o.state_dict() for o in (self.actor_optim, self.critic_optim, self.alpha_optim)]}

    def load_training_state(self, state: dict) -> None:
        """Restore `training_state()`; the learning rates stay this agent's config's (an optimiser's
        saved state carries the lr it was saved with: another agent's, e.g. a pretrained one's). The
        anchor (set_anchor) is the saved one, or none."""
        if not any(key.startswith("anchor.") for key in state["modules"]):
            self.anchor = None
        elif self.anchor is None:  # (a module to load the saved anchor into)
            self.set_anchor()
        self.load_state_dict(state["modules"])
        for optim, saved in zip((self.actor_optim, self.critic_optim, self.alpha_optim), state["optimizers"]):
            optim.load_state_dict(copy.deepcopy(saved))  # (it keeps tensors as given: the saver's moments otherwise)
        for optim, lr in ((self.critic_optim, self.config.critic_lr), (self.alpha_optim, self.config.alpha_lr)):
            for group in optim.param_groups:
                group["lr"] = lr
        self.updates = state["updates"]
        self.anneal_actor_lr(state.get("actor_lr_horizon"), state.get("actor_lr_start", 0))  # (older states: from 0)

    def anneal_actor_lr(self, horizon: int | None, start: int | None = None) -> None:
        """Decay the actor's learning rate along a cosine from actor_lr at update `start` to 0 at
        update `horizon` (OfflineRL-Kit's MOPO does so over its whole offline run); None: constant
        actor_lr. `start` None: a schedule under way keeps its start (a budget extended), a new one
        starts at the update count now (e.g. a pretrained agent's)."""
        if start is None:
            start = self.actor_lr_start if self.actor_lr_horizon else self.updates
        self.actor_lr_horizon, self.actor_lr_start = horizon, start
        self._set_actor_lr()

    def _set_actor_lr(self) -> None:
        lr, horizon, start = self.config.actor_lr, self.actor_lr_horizon, self.actor_lr_start
        if horizon:
            span = max(horizon - start, 1)
            lr *= 0.5 * (1 + math.cos(math.pi * min(max(self.updates - start, 0), span) / span))
        for group in self.actor_optim.param_groups:
            group["lr"] = lr

    @property
    def alpha(self) -> Tensor:
        """The entropy temperature, capped at alpha_max where it is set."""
        alpha = self.log_alpha.exp().detach()
        return alpha if self.config.alpha_max is None else alpha.clamp(max=self.config.alpha_max)

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """obs [O] or [B, O] -> action [A] or [B, A] (sampled from `generator`, default torch's global stream)."""
        action, _ = self.actor(obs.float().reshape(-1, obs.shape[-1]), deterministic, generator)
        return action.reshape(*obs.shape[:-1], -1)

    @torch.no_grad()
    def value(self, obs: Tensor, deterministic: bool = False, disagreement_penalty: float = 0.0) -> Tensor:
        """Soft state value under the policy, min over critics: obs [B, O] -> [B].

        deterministic: Q at the policy's mean action, without the entropy bonus (no sampling noise,
        as a planner's terminal value wants). disagreement_penalty > 0: the critics' mean minus
        that many of their standard deviations instead of their min (FOWM's value penalty)."""
        action, log_prob = self.actor(obs, deterministic)
        q = self.critics(obs, action)
        value = q.mean(0) - disagreement_penalty * q.std(0) if disagreement_penalty > 0 else q.amin(0)
        return value - (0.0 if deterministic else self.alpha * log_prob)

    def update(self, batch: TensorDict) -> dict[str, float]:
        """One gradient step for the critics, the actor and the temperature, in config.update_order."""
        if self.config.actor_anchor > 0 and self.anchor is None and not (self.anchor_pending or self._warned_unanchored):
            self._warned_unanchored = True
            warnings.warn(f"actor_anchor={self.config.actor_anchor} but this agent has no anchor, so its actor is "
                          "not held: the anchor is the actor a pretrained=<run dir> brings, or the offline policy "
                          "once a run switches to online learning (SAC.anchor_here())",
                          stacklevel=2)  # fmt: skip
        if self.actor_lr_horizon:
            self._set_actor_lr()
        if self.config.update_order == "actor_first":  # RAVL's code (after CORL): alpha, actor, critics
            self._alpha_step(batch["obs"])
            actor_loss, log_prob, gap = self._actor_step(batch["obs"])
            critic_loss, q, diversity = self._critic_step(batch)
        else:
            critic_loss, q, diversity = self._critic_step(batch)
            actor_loss, log_prob, gap = self._actor_step(batch["obs"])
            self._alpha_step(batch["obs"], log_prob)
        with torch.no_grad():
            torch._foreach_lerp_(list(self.target_critics.parameters()), list(self.critics.parameters()), self.config.tau)
        self.updates += 1
        stats = {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item(), "alpha": self.alpha.item(),
                 "q": q.mean().item(), "entropy": -log_prob.mean().item(), "diversity": diversity,
                 "actor_lr": self.actor_optim.param_groups[0]["lr"]}  # fmt: skip
        if not all(map(math.isfinite, (stats["critic_loss"], stats["actor_loss"], stats["alpha"]))):
            # (Adam has written the non-finite gradients into the weights: nothing after this is learned;
            # without this a run went on and evaluated NaN, a table then left it out)
            raise FloatingPointError(
                f"SAC update {self.updates}: critic loss {stats['critic_loss']}, actor loss {stats['actor_loss']}, "
                f"temperature {stats['alpha']}: the agent diverged. Lower the learning rates (planner.agent.*_lr), "
                "cap the temperature (alpha_max) or the penalty, or look for non-finite or huge rewards in the data")
        return stats if gap is None else {**stats, "anchor_gap": gap.item()}

    def _critic_step(self, batch: TensorDict) -> tuple[Tensor, Tensor, float]:
        if self.config.eta > 0:  # EDAC: the double backward in closed form (planners.edac)
            loss, q, diversity = critic_grads(self.critics, batch["obs"], batch["action"], self._td_target(batch),
                                              self.config.eta, compiled=self.config.compile_critic_step)  # fmt: skip
            self.critic_optim.step()
            return loss, q, diversity.item()
        critic_loss, q, diversity = self._critic_loss(batch)
        self.critic_optim.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optim.step()
        return critic_loss, q, diversity

    def _actor_step(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """obs [B, O] -> (actor loss, log-probabilities [B] of the sampled actions, the mean square
        distance from the anchor's actions in half-ranges, or None without actor_anchor or an anchor)."""
        mean, log_std = self.actor.gaussian(obs)
        action, log_prob = self.actor.sample(mean, log_std)
        q = self.critics(obs, action)
        q = q.amin(0) if self.config.critic_subset is None else q.mean(0)  # (REDQ's actor reads the mean)
        actor_loss, gap = (self.alpha * log_prob - q).mean(), None
        if self.anchor is not None and self.config.actor_anchor > 0:
            with torch.no_grad():
                anchor = self.anchor(obs, deterministic=True)[0]
            gap = ((self.actor.squash(mean) - anchor) / self.actor.half_range).square().mean()
            actor_loss = actor_loss + self.config.actor_anchor * q.detach().abs().mean() * gap
        self.actor_optim.zero_grad(set_to_none=True)
        actor_loss.backward(inputs=list(self.actor.parameters()))
        self.actor_optim.step()
        return actor_loss, log_prob.detach(), None if gap is None else gap.detach()

    def _alpha_step(self, obs: Tensor, log_prob: Tensor | None = None) -> Tensor:
        """The temperature's step towards the target entropy, from `log_prob` [B] (default: a fresh
        sample of the policy at obs [B, O]); returns the log-probabilities used."""
        if log_prob is None:
            with torch.no_grad():
                log_prob = self.actor(obs)[1]
        alpha_loss = -(self.log_alpha * (log_prob + self.target_entropy)).mean()
        self.alpha_optim.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optim.step()
        return log_prob

    @torch.no_grad()
    def _td_target(self, batch: TensorDict) -> Tensor:
        """reward + discount x the soft value of next_obs under the target critics (min over all, or
        over a random critic_subset): [B]."""
        cfg = self.config
        next_action, next_log_prob = self.actor(batch["next_obs"])
        next_q = self.target_critics(batch["next_obs"], next_action)
        if cfg.critic_subset is not None:
            next_q = next_q[torch.randperm(cfg.num_critics)[: cfg.critic_subset]]
        next_v = next_q.amin(0) - self.alpha * next_log_prob
        return batch["reward"] + cfg.discount * (~batch["terminated"]).float() * next_v

    def _critic_loss(self, batch: TensorDict) -> tuple[Tensor, Tensor, float]:
        """Sum over critics of the TD error's mean square (+ eta x the EDAC diversity term, by
        autograd's double backward: the definition planners.edac.critic_grads computes in closed form)."""
        cfg, target = self.config, self._td_target(batch)
        obs, action = batch["obs"], batch["action"]
        if cfg.eta == 0:
            q = self.critics(obs, action)
            return (q - target).square().mean(1).sum(), q.detach(), 0.0
        n = cfg.num_critics
        action = action.expand(n, *action.shape).clone().requires_grad_(True)
        q = self.critics(obs.expand(n, *obs.shape), action, twice_differentiable=True)
        diversity = gradient_diversity(q, action)
        loss = (q - target).square().mean(1).sum() + cfg.eta * diversity
        return loss, q.detach(), diversity.item()
