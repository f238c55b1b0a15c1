"""Model-based policy evaluation: a policy's return estimated in the learned model alone, with no
environment step. Offline, evaluation episodes are exactly what the setting forbids; this is the
estimate an offline run can log (and select by) instead (Paine et al. 2020 use it to choose among
offline policies). Shapes: N start states, O obs dims, A action dims.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Policy = Callable[[Tensor], Tensor]  # obs [N, O] -> action [N, A]


@torch.no_grad()
def model_return(model, policy: Policy, start_obs: Tensor, horizon: int, obs_limit: float | None = 100.0,
                 seed: int = 0) -> Tensor:  # fmt: skip
    """The undiscounted sum of the model's rewards [N] from start_obs [N, O] over `horizon` steps
    of `policy`, each step the mean of a random elite per row (as Dyna's rollouts draw members,
    from a generator seeded with `seed`: repeatable, though two policies whose rows end at
    different steps see different draws after that). As in Dyna's rollouts, a row ends at the
    model's termination (its termination_fn) or at a step that leaves [-obs_limit, obs_limit]
    (that step's reward counted), and before a step whose prediction is non-finite."""
    generator = torch.Generator(model.device).manual_seed(seed)
    obs = start_obs.to(model.device)
    total = torch.zeros(obs.shape[0], device=model.device)
    alive = torch.arange(obs.shape[0], device=model.device)
    for _ in range(horizon):
        if alive.numel() == 0:
            break
        out = model.step(obs, policy(obs), mode="random", deterministic=True, generator=generator)
        finite = torch.isfinite(out["next_obs"]).all(-1) & torch.isfinite(out["reward"])
        total[alive[finite]] += out["reward"][finite]
        keep = finite & ~out["terminated"]
        if obs_limit is not None:
            keep &= (out["next_obs"].abs() <= obs_limit).all(-1)
        alive, obs = alive[keep], out["next_obs"][keep]
    return total


def model_selected(records: list[dict]) -> dict | None:
    """Of evaluation records ({"model_ret": ..., ...}), the one whose finite model return is highest
    (the first on ties): the evaluation model-score selection picks; None when none has one (a
    non-finite one is logged as null)."""
    estimated = [r for r in records if r.get("model_ret") is not None and math.isfinite(r["model_ret"])]
    return max(estimated, key=lambda r: r["model_ret"]) if estimated else None


def episode_starts(data, count: int) -> Tensor:
    """Up to `count` first observations of the dataset's episodes [<=count, O], evenly spread over
    them (the start states a model-based evaluation begins from, as real episodes do)."""
    from worldmodel.datasets import episode_ends

    ends = episode_ends(data)
    starts = torch.cat([torch.zeros(1, dtype=torch.long, device=ends.device), ends[:-1] + 1])
    pick = torch.linspace(0, len(starts) - 1, min(count, len(starts))).round().long().unique()
    return data["obs"][starts[pick]]
