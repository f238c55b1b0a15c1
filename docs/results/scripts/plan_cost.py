"""What one act() costs for MPC planners at their defaults, on the same untrained default-size model
(one thread): the figure behind "iCEM's plans cost 1.5x MPPI's" in docs/results.md, with the
last planner's torch profile (its top ops by self time).

    python docs/results/scripts/plan_cost.py [--env dmc/reacher-easy] [--planners mppi icem] [--acts 15]
"""

import argparse
import time

import torch

from planners import PLANNERS
from worldmodel import EnsembleDynamics, make_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="dmc/reacher-easy")
    parser.add_argument("--planners", nargs="+", default=["mppi", "icem"], choices=sorted(PLANNERS))
    parser.add_argument("--acts", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = make_env(args.env, seed=0).task_spec
    model = EnsembleDynamics(spec.obs_dim, spec.act_dim)
    model.input_norm.fit(torch.randn(2000, spec.obs_dim + spec.act_dim))
    model.target_norm.fit(torch.randn(2000, spec.obs_dim + 1))
    obs = torch.randn(spec.obs_dim)
    for name in args.planners:
        planner_cls, config_cls = PLANNERS[name]
        planner = planner_cls(model, spec, config_cls())
        for _ in range(3):  # (warm-up)
            planner.act(obs)
        start = time.perf_counter()
        for _ in range(args.acts):
            planner.act(obs)
        print(f"{name}: {(time.perf_counter() - start) / args.acts * 1000:.1f} ms an act")
    with torch.profiler.profile() as prof:
        for _ in range(5):
            planner.act(obs)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
