"""Per-episode returns of a robot run's planner in the synchronous loop (learning off,
deterministic, n episodes from env seed 40,000 (env_seed=...), as offline_policy_episodes.py for the actor alone):
do the robot's falls come from the planner itself, or from planning `lead` steps ahead of a stale
reading? With lead=L each action is planned from the reading L steps before, moved on by the
model's mean under the actions taken since (the robot loop's delay compensation; compensate=false
plans from the stale reading as it is). Other key=value arguments override the run's config. From the root:
    python docs/results/walker2d-finetune-20k-l1.0/planner_episodes.py \
        runs/realtime/walker2d-mopo-l1.0-200k-guided-nolearn-20hz-s0 20 [lead=2] [planner.noise_std=0.1 ...]
"""
import collections
import json
import sys

import torch
from omegaconf import OmegaConf

from planners.agent import Agent
from worldmodel.envs import make_env

torch.set_num_threads(1)
run, n = sys.argv[1], int(sys.argv[2])
args = OmegaConf.from_dotlist(sys.argv[3:])
lead, compensate = int(args.pop("lead", 0)), bool(args.pop("compensate", True))
env_seed = int(args.pop("env_seed", 40_000))
cfg = OmegaConf.merge(OmegaConf.load(f"{run}/config.yaml"), args)
env = make_env(cfg.env.name, seed=env_seed)
agent = Agent.from_config(cfg, env.task_spec, capacity=1)
planner, model = agent.planner, agent.planner.model


@torch.no_grad()
def episode() -> float:
    planner.reset()
    readings, actions = collections.deque(maxlen=lead + 1), collections.deque(maxlen=lead)

    def act(td):
        readings.append(td["observation"])
        state = readings[0]  # the reading `lead` steps back (fewer at an episode's start)
        if compensate:
            for a in list(actions)[len(actions) - len(readings) + 1:]:
                state = model.step(state.reshape(1, -1), a.reshape(1, -1), mode="mean", deterministic=True)["next_obs"][0]
        action = planner.act(state, deterministic=True)
        actions.append(action)
        return td.set("action", action)

    rollout = env.rollout(env.task_spec.max_episode_steps, policy=act)
    return rollout["next", "reward"].sum().item(), rollout.shape[0], bool(rollout["next", "terminated"][-1])


episodes = [episode() for _ in range(n)]
rets = [r for r, _, _ in episodes]
print(json.dumps({"run": run, "env_seed": env_seed, "lead": lead, "compensate": compensate, "overrides": sys.argv[3:],
                  "returns": [round(r, 1) for r in rets], "steps": [k for _, k, _ in episodes],
                  "fell": sum(f for _, _, f in episodes), "mean": sum(rets) / n, "lowest": min(rets),
                  "below_860": sum(r < 860 for r in rets)}))
