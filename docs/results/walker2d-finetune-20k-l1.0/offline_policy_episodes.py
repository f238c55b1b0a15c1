"""Per-episode returns of a pretrained walker2d run's actor (deterministic, 20 episodes from env seed 40,000),
to read issue #11's 90% aim against the offline policy's own spread. Run from the repository root:
    python docs/results/walker2d-finetune-20k-l1.0/offline_policy_episodes.py runs/offline/w2d-mr-200k/mopo-l1.0-s1 20
"""
import json
import sys

import torch

from planners import learned_agent
from planners.agent import Agent
from planners.behaviour import policy_return
from worldmodel.envs import make_env

torch.set_num_threads(1)
run, n = sys.argv[1], int(sys.argv[2])
env = make_env("walker2d", seed=40_000)
agent = Agent(env.task_spec, {"name": "mopo"}, pretrained=run)
sac = learned_agent(agent.planner)
rets = [policy_return(env, sac, 1) for _ in range(n)]
print(json.dumps({"run": run, "returns": [round(r, 1) for r in rets], "mean": sum(rets) / n,
                  "below_860 (90% of 956, its offline evaluation)": sum(r < 0.9 * 956 for r in rets)}))
