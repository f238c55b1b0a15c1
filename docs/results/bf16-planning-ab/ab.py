"""Does bf16 planning hold the returns? The same fine-tuned walker2d agents (the robot runs'
final agents, guided MPPI) evaluated synchronously with the model's hidden layers in fp32 and in
bf16, the same environment seeds and torch seeds for both; one thread.

    python docs/results/bf16-planning-ab/ab.py runs/realtime/<run dir> ... > docs/results/bf16-planning-ab/ab.json
    AB_SEED=30000 AB_EPISODES=10 python docs/results/bf16-planning-ab/ab.py ... > .../ab-30000.json   (more episodes)
"""

import json
import os
import sys

import torch
from omegaconf import OmegaConf

from planners.agent import Agent
from worldmodel import threads
from worldmodel.envs import make_env

EPISODES = int(os.environ.get("AB_EPISODES", 6))
ENV_SEED = int(os.environ.get("AB_SEED", 20_000))
threads.set_threads(1)
rows = []
for run_dir in sys.argv[1:]:
    cfg = OmegaConf.load(f"{run_dir}/config.yaml")
    spec = make_env(cfg.env.name).task_spec
    for precision in ("fp32", "bf16"):
        agent = Agent.from_config(OmegaConf.merge(cfg, {"pretrained": run_dir}), spec, capacity=1)
        agent.model.precision = precision
        env = make_env(cfg.env.name, seed=ENV_SEED)
        torch.manual_seed(0)
        returns = []
        for _ in range(EPISODES):
            agent.planner.reset()
            act = lambda td: td.set("action", agent.planner.act(td["observation"], deterministic=True))  # noqa: E731
            rollout = env.rollout(spec.max_episode_steps, policy=act)
            returns.append(rollout["next", "reward"].sum().item())
        rows.append({"run": run_dir, "precision": precision, "env_seed": ENV_SEED, "returns": returns, "mean": sum(returns) / len(returns)})
        print(json.dumps(rows[-1]), file=sys.stderr)
print(json.dumps(rows, indent=1))
