"""Transitions as TensorDicts: the one place that says what a valid batch of them is.

A batch of N transitions has obs [N, O], action [N, A], reward [N], next_obs [N, O]
(float32) and terminated [N], truncated [N] (bool).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

FLOAT_KEYS = ("obs", "action", "reward", "next_obs")
FLAG_KEYS = ("terminated", "truncated")
TRANSITION_KEYS = FLOAT_KEYS + FLAG_KEYS


def validate_transitions(
    data: TensorDict, obs_dim: int | None = None, act_dim: int | None = None
) -> TensorDict:
    """Check a batch of transitions and return it in canonical dtypes and shapes.

    Floating fields are cast to float32; reward/flags of shape [N, 1] become [N]. Raises
    ValueError naming the field for a missing or unknown key, a wrong shape or dtype, or a
    non-finite value.
    """
    if not isinstance(data, TensorDict):
        raise TypeError(f"transitions must be a TensorDict, got {type(data).__name__}")
    keys = set(data.keys())
    if missing := [k for k in TRANSITION_KEYS if k not in keys]:
        raise ValueError(f"transitions lack field(s) {missing}; expected {list(TRANSITION_KEYS)}")
    if unknown := sorted(keys - set(TRANSITION_KEYS)):
        raise ValueError(f"transitions have unknown field(s) {unknown}; expected {list(TRANSITION_KEYS)}")
    n = data["obs"].shape[0] if data["obs"].dim() > 0 else 0
    dims = {"obs": obs_dim, "next_obs": obs_dim, "action": act_dim}
    out = {}
    for key in TRANSITION_KEYS:
        value = data[key]
        if key in ("obs", "next_obs", "action"):
            value = _check_matrix(key, value, n, dims[key])
        else:
            value = _check_vector(key, value, n)
        if key in FLAG_KEYS:
            if value.dtype != torch.bool:
                raise ValueError(f"field {key!r} must be bool, got {value.dtype}")
        else:
            if not value.is_floating_point():
                raise ValueError(f"field {key!r} must be floating point, got {value.dtype}")
            value = value.float()
            if not torch.isfinite(value).all():
                bad = (~torch.isfinite(value)).reshape(n, -1).any(-1).nonzero()[:5, 0].tolist()
                raise ValueError(f"field {key!r} has non-finite values (NaN/inf) at rows {bad}")
        out[key] = value
    if dims["obs"] is None and out["obs"].shape[1] != out["next_obs"].shape[1]:
        raise ValueError(
            f"field 'next_obs' has {out['next_obs'].shape[1]} dims but 'obs' has {out['obs'].shape[1]}"
        )
    return TensorDict(out, batch_size=[n], device=data.device)


def _check_matrix(key: str, value: torch.Tensor, n: int, dim: int | None) -> torch.Tensor:
    if value.dim() != 2 or value.shape[0] != n or (dim is not None and value.shape[1] != dim):
        want = f"[{n}, {dim if dim is not None else 'D'}]"
        raise ValueError(f"field {key!r} has shape {list(value.shape)}, expected {want}")
    return value


def _check_vector(key: str, value: torch.Tensor, n: int) -> torch.Tensor:
    if value.dim() == 2 and value.shape[1] == 1:
        value = value.squeeze(1)
    if value.dim() != 1 or value.shape[0] != n:
        raise ValueError(f"field {key!r} has shape {list(value.shape)}, expected [{n}] or [{n}, 1]")
    return value


def from_rollout(rollout: TensorDict) -> TensorDict:
    """Turn a TorchRL rollout (any batch shape, "next" sub-dict) into flat transitions."""
    flat = rollout.reshape(-1)
    return validate_transitions(
        TensorDict(
            {
                "obs": flat["observation"],
                "action": flat["action"],
                "reward": flat["next", "reward"],
                "next_obs": flat["next", "observation"],
                "terminated": flat["next", "terminated"],
                "truncated": flat["next", "truncated"],
            },
            batch_size=flat.batch_size,
        )
    )
