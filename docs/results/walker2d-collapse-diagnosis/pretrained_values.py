"""The two walker2d agents' pretrained values on walker2d-medium-replay's states (Agent.pretrained_value:
the guided MPPI's learned value, min over critics at the actor's mean action, on 4,096 evenly spaced
states), as the robot runs read them:

    python docs/results/walker2d-collapse-diagnosis/pretrained_values.py > docs/results/walker2d-collapse-diagnosis/pretrained_values.json
"""

import json

from planners.agent import Agent
from worldmodel import threads
from worldmodel.datasets import load_dataset
from worldmodel.envs import make_env

threads.set_threads(1)
spec = make_env("walker2d").task_spec
data = load_dataset("data/walker2d-medium-replay.hdf5", spec.obs_dim, spec.act_dim)[0]
agents = {"lambda 2.5, 50k updates, 20-epoch model": "runs/offline/walker2d-mr-50k-mopo-fit20-s0",
          "lambda 1.0, 200k updates, converged model, seed 1": "runs/offline/w2d-mr-200k/mopo-l1.0-s1"}
print(json.dumps({name: {"run": run, "pretrained_value": Agent(spec, {"name": "mppi"}, pretrained=run).pretrained_value(data["obs"])}
                  for name, run in agents.items()}, indent=1))
