"""`python -m planners.bench`: planning milliseconds per control step, ours against torchrl's CEMPlanner.

Both plan with the same (untrained) HalfCheetah ensemble through the same `model.step`, so
the model work per candidate is identical and the ratio measures the planner around it.
The floor column is the model's matmul FLOPs at the peak measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from tensordict import TensorDict
from torch import nn

from planners import CEM, MPPI, CEMConfig, MPPIConfig
from worldmodel.ensemble import EnsembleDynamics
from worldmodel.envs import make_env


def _median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _peak_gflops() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / _median_ms(lambda: a @ b, 5) / 1e6


def torchrl_cem(model: EnsembleDynamics, spec, horizon: int, candidates: int, top_k: int, iterations: int):
    """torchrl's CEMPlanner over a ModelBasedEnvBase whose world model is `model.step`."""
    from tensordict.nn import TensorDictModule
    from torchrl.data import Bounded, Composite, Unbounded
    from torchrl.envs.model_based import ModelBasedEnvBase
    from torchrl.modules.planners import CEMPlanner

    class Step(nn.Module):
        def forward(self, observation, action):
            batch = observation.shape[:-1]
            out = model.step(observation.reshape(-1, spec.obs_dim), action.reshape(-1, spec.act_dim))
            return out["next_obs"].reshape(*batch, -1), out["reward"].reshape(*batch, 1)

    class EnsembleEnv(ModelBasedEnvBase):
        def __init__(self):
            world = TensorDictModule(Step(), in_keys=["observation", "action"], out_keys=["observation", "reward"])
            super().__init__(world)
            self.observation_spec = Composite(observation=Unbounded((spec.obs_dim,)))
            self.action_spec = Bounded(spec.action_low, spec.action_high, (spec.act_dim,))
            self.reward_spec = Unbounded((1,))

        def _reset(self, tensordict):
            raise NotImplementedError("the planner starts from given states")

    return CEMPlanner(EnsembleEnv(), horizon, iterations, candidates, top_k)


def rows(repeats: int) -> list[dict]:
    spec = make_env("halfcheetah").task_spec
    torch.manual_seed(0)
    model = EnsembleDynamics(spec.obs_dim, spec.act_dim)
    obs = torch.randn(spec.obs_dim)
    flops_per_row_step = 2 * sum(w.shape[1] * w.shape[2] for w in model.weights)
    peak = _peak_gflops()

    mppi = MPPI(model, spec, MPPIConfig(seed=0))
    cem = CEM(model, spec, CEMConfig(horizon=30, candidates=400, num_elites=40, iterations=5, seed=0))
    pets = CEM(model, spec, CEMConfig(horizon=30, candidates=400, num_elites=40, iterations=5, particles=20, seed=0))
    theirs = torchrl_cem(model, spec, horizon=30, candidates=400, top_k=40, iterations=5)
    start = TensorDict({"observation": obs}, [])
    cases = [
        ("MPPI default (512 x 15)", "ours", lambda: mppi.act(obs), 512 * 15),
        ("CEM 400 x 30 x 5", "ours", lambda: cem.act(obs), 400 * 30 * 5),
        ("CEM 400 x 30 x 5", "torchrl CEMPlanner", lambda: theirs(start), 400 * 30 * 5),
        ("CEM PETS (400 x 20 particles x 30 x 5)", "ours", lambda: pets.act(obs), 400 * 20 * 30 * 5),
    ]
    out = []
    for config, impl, fn, row_steps in cases:
        ms = _median_ms(fn, repeats if row_steps < 100_000 else max(2, repeats // 5))
        floor_ms = row_steps * flops_per_row_step / (peak * 1e6)
        out.append({"config": config, "planner": impl, "ms_per_step": ms, "hz": 1000 / ms,
                    "floor_ms": floor_ms, "peak_gflops": peak, "device": "cpu"})  # fmt: skip
    baseline = {r["config"]: r["ms_per_step"] for r in out if r["planner"].startswith("torchrl")}
    for r in out:
        r["speedup_vs_torchrl"] = baseline[r["config"]] / r["ms_per_step"] if r["config"] in baseline else None
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    table = rows(args.repeats)
    print(f"{'config':40s} {'planner':20s} {'ms/step':>9s} {'Hz':>7s} {'floor ms':>9s} {'vs torchrl':>10s}")
    for r in table:
        ratio = f"{r['speedup_vs_torchrl']:.2f}x" if r["speedup_vs_torchrl"] else "-"
        print(f"{r['config']:40s} {r['planner']:20s} {r['ms_per_step']:9.1f} {r['hz']:7.1f} {r['floor_ms']:9.1f} {ratio:>10s}")
    print(f"floor: model matmul FLOPs at {table[0]['peak_gflops']:.0f} GFLOP/s (2048^2 fp32 matmul measured in this run)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=2)


if __name__ == "__main__":
    main()
