"""The actor-anchor proxy (docs/results.md, "Fine-tuning on the robot, anchored"): the pretrained
MOPO agent's SAC trained on the offline dataset's real transitions alone, as fine-tuning starts,
printing the deterministic actor's return (5 episodes) and the update stats every `every` updates.

    OMP_NUM_THREADS=1 python docs/results/scripts/anchor_proxy.py [actor_anchor=0.1] [actor_lr=1e-4] \
        [updates=10000] [every=2000] [seed=1] [pretrained=runs/offline/hmr-50k-mopo-s0] \
        [dataset=data/hopper-medium-replay.hdf5]
"""

import json
import sys
import time

import torch

from planners.agent import Agent
from worldmodel.datasets import load_dataset
from worldmodel.envs import make_env

torch.set_num_threads(1)
kw = dict(arg.split("=", 1) for arg in sys.argv[1:])
updates, every, seed = int(kw.pop("updates", 10000)), int(kw.pop("every", 2000)), int(kw.pop("seed", 1))
pretrained = kw.pop("pretrained", "runs/offline/hmr-50k-mopo-s0")
dataset = kw.pop("dataset", "data/hopper-medium-replay.hdf5")
torch.manual_seed(seed)
env = make_env("hopper", seed=seed)
spec = env.task_spec
settings = {"name": "mppi", "value_learning": True, "policy_guided": True, "policy_samples": 24,
            "value_agent": {key: float(value) for key, value in kw.items()}}  # SACConfig fields
agent = Agent(spec, settings, pretrained=pretrained, seed=seed)
agent.buffer.extend(load_dataset(dataset, spec.obs_dim, spec.act_dim)[0])
sac = agent.planner.value_agent


def actor_return(episodes: int = 5) -> float:
    rollouts = [env.rollout(1000, policy=lambda td: td.set("action", sac.act(td["observation"], True)))
                for _ in range(episodes)]
    return sum(r["next", "reward"].sum().item() for r in rollouts) / episodes


print(json.dumps({"update": 0, "return": round(actor_return(), 1)}), flush=True)
start, sums = time.time(), {}
for i in range(1, updates + 1):
    for key, value in sac.update(agent.buffer.sample(256)).items():
        sums[key] = sums.get(key, 0.0) + value
    if i % every == 0:
        stats = {key: round(value / every, 4) for key, value in sums.items()}
        print(json.dumps({"update": i, "return": round(actor_return(), 1), **stats, "s": round(time.time() - start)}),
              flush=True)
        sums = {}
