"""The probabilistic ensemble dynamics model: E MLPs, each a Gaussian over (next_obs - obs, reward).

Inputs (obs, action) and targets (delta, reward) are standardised on the training data.
All members run in one stacked forward pass (`kernels.ensemble_gaussian_mlp`), the same
code for training and for planning; the fit itself lives in worldmodel/fitting.py. Shapes: E
members, B rows, O obs dims, A action dims.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Literal

import torch
from tensordict import TensorDict
from torch import Tensor, nn

import kernels
from worldmodel import fitting
from worldmodel.checkpoint import CheckpointError, atomic_save, load_checked
from worldmodel.normalization import Standardizer
from worldmodel.termination import TerminationFn
from worldmodel.transitions import validate_transitions
from worldmodel.uncertainty import Uncertainty

_FORMAT = "worldmodel.EnsembleDynamics"
# MBPO's per-layer L2 coefficients for 4 hidden layers + output; other depths interpolate.
_MBPO_WEIGHT_DECAY = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)

Mode = Literal["random", "fixed", "mean"]


class EnsembleDynamics(nn.Module):
    """E probabilistic MLP members over standardised (obs, action), `num_elites` best kept as elites.

    `predict` gives every member's Gaussian; `step` samples a next state (and reward,
    termination, uncertainty) the way a planner or a Dyna rollout needs it.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        ensemble_size: int = 7,
        num_elites: int = 5,
        hidden: int = 200,
        layers: int = 4,
        weight_decay: Sequence[float] | None = None,
        precision: str = "fp32",
        termination_fn: TerminationFn | None = None,
    ):
        super().__init__()
        if not 1 <= num_elites <= ensemble_size:
            raise ValueError(f"num_elites must be in [1, ensemble_size={ensemble_size}], got {num_elites}")
        if min(obs_dim, act_dim, hidden, layers) < 1:
            raise ValueError("obs_dim, act_dim, hidden and layers must all be >= 1")
        weight_decay = tuple(weight_decay or _default_weight_decay(layers))
        if len(weight_decay) != layers + 1:
            raise ValueError(f"weight_decay needs {layers + 1} values (one per layer), got {len(weight_decay)}")
        self.config = dict(
            obs_dim=obs_dim, act_dim=act_dim, ensemble_size=ensemble_size, num_elites=num_elites,
            hidden=hidden, layers=layers, weight_decay=list(weight_decay), precision=precision,
        )  # fmt: skip
        if precision not in kernels.PRECISIONS:
            raise ValueError(f"precision must be one of {kernels.PRECISIONS}, got {precision!r}")
        self.precision = precision  # kernels' matmul precision; "tf32" selects the fused kernel on GPUs
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.ensemble_size, self.num_elites = ensemble_size, num_elites
        self.weight_decay = weight_decay
        self.termination_fn = termination_fn
        out_dim = obs_dim + 1
        sizes = [obs_dim + act_dim] + [hidden] * layers + [2 * out_dim]
        self.weights = nn.ParameterList(
            nn.Parameter(_truncated_normal((ensemble_size, i, o), std=1 / (2 * math.sqrt(i))))
            for i, o in zip(sizes[:-1], sizes[1:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(ensemble_size, o)) for o in sizes[1:])
        self.max_logvar = nn.Parameter(torch.full((ensemble_size, out_dim), 0.5))
        self.min_logvar = nn.Parameter(torch.full((ensemble_size, out_dim), -10.0))
        self.input_norm = Standardizer(obs_dim + act_dim)
        self.target_norm = Standardizer(out_dim)
        self.register_buffer("elites", torch.arange(num_elites))
        self._optimizer: torch.optim.Optimizer | None = None
        self._members_cache: tuple | None = None  # (key, parameters of some members), see _members_only

    @property
    def device(self) -> torch.device:
        return self.max_logvar.device

    @property
    def fitted(self) -> bool:
        """Whether fit() has run (or fitted weights were loaded): until then predictions are noise."""
        return self.input_norm.fitted

    # ------------------------------------------------------------------ forward

    def forward_normalized(self, x: Tensor, members: Tensor | None = None,
                           precision: str | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Standardised inputs x [M, B, O+A] -> standardised (mean, logvar), each [M, B, O+1].

        M = E, or len(members) when only those members run; precision: the matmuls' (None: the model's).
        """
        if members is not None and not x.is_cuda and not torch.is_grad_enabled():
            weights, biases, max_lv, min_lv = self._members_only(members)
            members = None
        else:
            weights, biases, max_lv, min_lv = list(self.weights), list(self.biases), self.max_logvar, self.min_logvar
        return kernels.ensemble_gaussian_mlp(x, weights, biases, max_lv, min_lv, members=members,
                                             precision=precision or self.precision)  # fmt: skip

    @torch.no_grad()
    def _fit_normalizers(self, inputs: Tensor, targets: Tensor) -> None:
        """Standardise on this data (inputs [N, O+A], targets [N, O+1]). A fitted model's weights
        are re-expressed for the new statistics, so its predictions do not move: the first
        layer absorbs the input shift and scale, the output layer the target's, and the
        log-variance outputs and bounds shift by 2 log(old std / new std). A pretrained model
        refitted on new data (a robot's) thus starts from what it predicted before."""
        was_fitted = self.fitted
        in_mean, in_std = self.input_norm.fit(inputs)
        out_mean, out_std = self.target_norm.fit(targets)
        if not was_fitted:
            return
        w0, b0 = self.weights[0], self.biases[0]  # [E, O+A, H], [E, H]
        b0.add_(((self.input_norm.mean - in_mean) / in_std) @ w0)
        w0.mul_((self.input_norm.std / in_std).unsqueeze(-1))
        ratio = out_std / self.target_norm.std  # old / new, per target feature
        d = ratio.numel()
        w, b = self.weights[-1], self.biases[-1]  # [E, H, 2 (O+1)], [E, 2 (O+1)]: means, then log-variances
        w[..., :d].mul_(ratio)
        b[..., :d].mul_(ratio).add_((out_mean - self.target_norm.mean) / self.target_norm.std)
        self.shift_logvar(2 * ratio.log())

    @torch.no_grad()
    def shift_logvar(self, shift: Tensor) -> None:
        """Add `shift` ([O+1], or [E, O+1] per member) to every standardised log-variance the
        model predicts: the output layer's log-variance biases and both soft bounds move together,
        so the bounded output moves by exactly `shift` (a variance scaled by exp(shift))."""
        d = self.target_norm.mean.numel()
        self.biases[-1][..., d:].add_(shift)
        self.max_logvar.add_(shift)
        self.min_logvar.add_(shift)

    def __getstate__(self) -> dict:
        """A copy (deepcopy, pickle) starts without the members cache: its parameters' versions begin
        again at 0, so a refitted copy's could match the cached key and plan with the old weights."""
        return {**super().__getstate__(), "_members_cache": None}

    def _members_only(self, members: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor]:
        """The parameters of `members` alone, cached until a parameter changes in place (an optimiser
        step or load_state_dict; edits through `.data` bypass the version counter). Planning asks
        for the elites at every horizon step; on CPU copying them each time cost ~10% of a plan."""
        key = (tuple(members.tolist()), tuple(p._version for p in self.parameters()))
        if self._members_cache is None or self._members_cache[0] != key:
            pick = lambda ps: [p.detach().index_select(0, members) for p in ps]  # noqa: E731
            self._members_cache = (key, (pick(self.weights), pick(self.biases), *pick([self.max_logvar, self.min_logvar])))
        return self._members_cache[1]

    def predict(
        self, obs: Tensor, action: Tensor, members: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Every member's Gaussian over (next_obs - obs, reward) in original units.

        obs [B, O] and action [B, A] are shared by all members; [M, B, O] / [M, B, A] give each
        member its own rows (M = E, or len(members)). Returns mean, var, each [M, B, O+1].
        """
        obs, action = self._check_inputs(obs, action, members)
        x = self.input_norm(torch.cat([obs, action], dim=-1))
        m = self.ensemble_size if members is None else members.numel()
        if x.dim() == 2:
            x = x.expand(m, *x.shape)
        mean, logvar = self.forward_normalized(x, members)
        std = self.target_norm.std
        return self.target_norm.inverse(mean), logvar.exp() * std.square()

    @torch.no_grad()  # (it samples: nothing to differentiate; predict() is the differentiable path)
    def step(
        self,
        obs: Tensor,
        action: Tensor,
        mode: Mode = "random",
        members: Tensor | None = None,
        deterministic: bool = False,
        uncertainty: Uncertainty | None = None,
        generator: torch.Generator | None = None,
    ) -> TensorDict:
        """One imagined step from obs [B, O], action [B, A].

        mode "random": each row a random elite (TS1); "fixed": row b uses member
        members[b] (TS-infinity; default elites[b % num_elites]); "mean": the elites' average.
        Without `uncertainty` or explicit members, each row runs through its member alone
        (num_elites times fewer FLOPs than running every elite on every row).
        deterministic: use the chosen mean instead of sampling. Returns a TensorDict [B] with
        next_obs [B, O], reward [B], terminated [B] (from termination_fn; all False without
        one), member [B] and, with `uncertainty`, its score [B].
        """
        if mode not in ("random", "fixed", "mean"):
            raise ValueError(f"unknown mode {mode!r}; choose from 'random', 'fixed', 'mean'")
        if members is not None and mode != "fixed":
            raise ValueError(f"members are only used in 'fixed' mode, not {mode!r}")
        if obs.dim() != 2:
            raise ValueError(f"step takes obs [B, {self.obs_dim}] (one state a row), got {list(obs.shape)}")
        obs, action = self._check_inputs(obs, action, None)
        row = torch.arange(obs.shape[0], device=self.device)
        if uncertainty is None and mode != "mean" and members is None:
            mu, sigma2, chosen = self._predict_one_member_per_row(obs, action, mode == "random", generator)
        else:
            all_members = uncertainty is not None and not uncertainty.elites_only
            mean, var = self.predict(obs, action, None if all_members else self.elites)
            if all_members:
                elite_mean, elite_var = mean.index_select(0, self.elites), var.index_select(0, self.elites)
            else:
                elite_mean, elite_var = mean, var
            if mode == "mean":
                mu, sigma2 = elite_mean.mean(0), elite_var.mean(0)
                chosen = torch.full_like(row, -1)
            else:
                chosen = self._choose_members(mode, members, obs.shape[0], generator)
                slot = _position_in(self.elites, chosen, self.ensemble_size)
                mu, sigma2 = elite_mean[slot, row], elite_var[slot, row]
        if deterministic:
            outcome = mu
        else:
            outcome = mu + sigma2.sqrt() * torch.randn(mu.shape, generator=generator, device=mu.device)
        next_obs = obs + outcome[:, :-1]
        terminated = (
            self.termination_fn(obs, action, next_obs)
            if self.termination_fn is not None
            else torch.zeros_like(row, dtype=torch.bool)
        )
        result = {"next_obs": next_obs, "reward": outcome[:, -1], "terminated": terminated, "member": chosen}
        if uncertainty is not None:
            elites = self.elites if all_members else None
            result["uncertainty"] = uncertainty(mean, var, elites=elites, sample=outcome)
        return TensorDict(result, batch_size=[obs.shape[0]])

    def _predict_one_member_per_row(
        self, obs: Tensor, action: Tensor, shuffle: bool, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Each row through its own elite only, in one stacked forward: rows are laid out as
        [num_elites, ceil(B / num_elites)] blocks, flat position p going to elites[p % n].

        Unshuffled, row b uses elites[b % n] (TS-infinity); shuffled, a random balanced
        assignment (TS1: each row's member uniformly random, every elite with an equal share).
        Returns the chosen mean and variance [B, O+1] and member [B].
        """
        b, n = obs.shape[0], self.num_elites
        k = -(-b // n)
        if shuffle:
            order = torch.randperm(n * k, generator=generator, device=self.device)
        else:
            order = torch.arange(n * k, device=self.device)
        rows = order.clamp_max(b - 1)  # padding slots repeat the last row; they are dropped below
        x = self.input_norm(torch.cat([obs, action], dim=-1))  # [B, O+A]
        # one gather into [n, k] blocks: slot (i, j) holds row order[j * n + i] and runs through elites[i]
        mean, logvar = self.forward_normalized(x[rows.view(k, n).t()], self.elites)  # [n, k, O+1] each
        position = torch.empty_like(order)
        position[order] = torch.arange(n * k, device=self.device)
        member = position[:b] % n
        slot = member * k + position[:b] // n  # each row's place in the flattened blocks
        mean, logvar = mean.reshape(n * k, -1)[slot], logvar.reshape(n * k, -1)[slot]
        return self.target_norm.inverse(mean), logvar.exp() * self.target_norm.std.square(), self.elites[member]

    def _choose_members(
        self, mode: Mode, members: Tensor | None, batch: int, generator: torch.Generator | None
    ) -> Tensor:
        if mode == "random":
            pick = torch.randint(self.num_elites, (batch,), generator=generator, device=self.device)
            return self.elites[pick]
        if members is None:  # fixed mode from here on
            return self.elites[torch.arange(batch, device=self.device) % self.num_elites]
        members = torch.as_tensor(members, device=self.device)
        if members.shape != (batch,):
            raise ValueError(f"members must have shape [{batch}], got {list(members.shape)}")
        if not torch.isin(members, self.elites).all():
            raise ValueError(f"fixed-mode members must be elites {self.elites.tolist()}")
        return members

    def _check_inputs(self, obs: Tensor, action: Tensor, members: Tensor | None) -> tuple[Tensor, Tensor]:
        m = self.ensemble_size if members is None else members.numel()
        ok = (
            obs.dim() in (2, 3)
            and obs.shape[-1] == self.obs_dim
            and action.shape[-1:] == (self.act_dim,)
            and obs.shape[:-1] == action.shape[:-1]
            and (obs.dim() == 2 or obs.shape[0] == m)
        )
        if not ok:
            raise ValueError(
                f"obs {list(obs.shape)} and action {list(action.shape)} must be [B, {self.obs_dim}] "
                f"and [B, {self.act_dim}] (or [{m}, B, ...] with one slice per member)"
            )
        return obs.to(self.device, torch.float32), action.to(self.device, torch.float32)

    # ------------------------------------------------------------------ fitting (worldmodel.fitting)

    fit = fitting.fit
    check_fit_settings = staticmethod(fitting.check_settings)
    optimizer = fitting.shared_optimizer

    @torch.no_grad()
    def evaluate(self, data: TensorDict) -> dict:
        """How well the elites explain held-out transitions (original units).

        r2_delta: R^2 of the elites' mean prediction of next_obs - obs, averaged over the dims that
        vary in `data` (r2_per_dim: NaN for one that does not);
        r2_reward: the same for the reward; calibration: mean over elites, rows and outputs
        of squared error / predicted variance (1 is perfectly calibrated).
        """
        data = validate_transitions(data, self.obs_dim, self.act_dim).to(self.device)
        if len(data) < 2:
            raise ValueError(f"evaluate needs at least 2 held-out transitions (an R^2 over rows), got {len(data)}")
        target = fitting.model_targets(data)
        mean, var = self.predict(data["obs"], data["action"], members=self.elites)
        err2 = (mean.mean(0) - target) ** 2
        spread = target.var(0, unbiased=False)
        # a dimension that never changes in these rows (a fixed target's coordinate) has no R^2: NaN,
        # left out of the average, where its tiny error over a zero variance would swamp it
        r2 = torch.where(spread > 1e-12, 1 - err2.mean(0) / spread.clamp_min(1e-12), torch.nan)
        return {
            "r2_delta": r2[:-1].nanmean().item(),
            "r2_reward": r2[-1].item(),
            "r2_per_dim": r2[:-1].tolist(),
            "calibration": (((mean - target) ** 2) / var).mean().item(),
            "mse": err2.mean().item(),
        }

    # ------------------------------------------------------------------ checkpoints

    def save(self, path: str | os.PathLike) -> None:
        """Write config and weights atomically."""
        atomic_save({"format": _FORMAT, "version": 1, "config": self.config, "state": self.state_dict()}, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        obs_dim: int | None = None,
        act_dim: int | None = None,
        termination_fn: TerminationFn | None = None,
        map_location: str | torch.device = "cpu",
    ) -> "EnsembleDynamics":
        """Rebuild a saved model; obs_dim/act_dim, when given, must match the checkpoint's."""
        ckpt = load_checked(path, _FORMAT, map_location)
        config = ckpt["config"]
        for name, want in (("obs_dim", obs_dim), ("act_dim", act_dim)):
            if want is not None and config.get(name) != want:
                raise CheckpointError(
                    f"{path} is a model with {name}={config.get(name)}, but {want} was expected: "
                    "it was trained on another task"
                )
        try:
            model = cls(**config, termination_fn=termination_fn)
            model.load_state_dict(ckpt["state"])
        except (TypeError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path}: model weights do not match its config: {e}") from e
        return model.to(map_location)


def _default_weight_decay(layers: int) -> tuple[float, ...]:
    if layers == 4:
        return _MBPO_WEIGHT_DECAY
    return tuple(torch.linspace(2.5e-5, 1e-4, layers + 1).tolist())


def _truncated_normal(shape: tuple[int, ...], std: float) -> Tensor:
    return nn.init.trunc_normal_(torch.empty(shape), std=std, a=-2 * std, b=2 * std)


def _position_in(elites: Tensor, members: Tensor, ensemble_size: int) -> Tensor:
    """Index of each member id within the elites tensor (in whatever order it holds them)."""
    position = torch.full((ensemble_size,), -1, dtype=torch.long, device=elites.device)
    position[elites] = torch.arange(elites.numel(), device=elites.device)
    return position[members]
