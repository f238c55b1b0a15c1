"""Do the robot's executed actions differ from what the planner plans from the same states in the
synchronous loop? For a robot run's logged episodes (learning off: the planner never changed), each
logged state obs_k is re-planned from as the robot's planner saw it, `lead` steps ahead of a reading
(lead 1 with wait_ms, 2 without): obs_{k-lead} moved on by the model's mean under the logged actions;
the table compares the executed action a_k with that plan's first action and with the actor's
action at obs_k, over each episode and over its last 20 steps (where a fall happens). From the root:
    python docs/results/walker2d-robot-wait/fall_replay.py <robot run dir> <lead> [episodes to show]
"""
import json
import sys

import torch
from omegaconf import OmegaConf

from planners import learned_agent
from planners.agent import Agent
from worldmodel.envs import make_env
from worldmodel.transition_log import TransitionLog

torch.set_num_threads(1)
run, lead = sys.argv[1], int(sys.argv[2])
show = int(sys.argv[3]) if len(sys.argv) > 3 else 3
cfg = OmegaConf.load(f"{run}/config.yaml")
spec = make_env(cfg.env.name, seed=0).task_spec
agent = Agent.from_config(cfg, spec, capacity=1)
planner, model, actor = agent.planner, agent.planner.model, learned_agent(agent.planner)
log = TransitionLog(f"{run}/transitions", spec.obs_dim, spec.act_dim, repair=False).read()
# an episode ends where a transition does not lead to the next one (a log from before the episode-end
# fix lacks about half the terminal flags) or is flagged
breaks = torch.zeros(len(log), dtype=torch.bool)
breaks[:-1] = (log["next_obs"][:-1] != log["obs"][1:]).any(-1)
ends = (breaks | log["terminated"] | log["truncated"]).nonzero().flatten().tolist()
episodes, begin = [], 0
for end in ends:
    episodes.append((begin, end + 1, log["reward"][begin : end + 1].sum().item()))
    begin = end + 1
episodes.sort(key=lambda e: e[2])
rows = []
with torch.no_grad():
    for begin, end, ret in episodes[:show] + episodes[-1:]:  # the worst ones and the best
        planner.reset()
        obs, act = log["obs"][begin:end], log["action"][begin:end]
        to_plan, to_actor = [], []
        for k in range(len(obs)):
            state = obs[max(0, k - lead)].reshape(1, -1)
            for j in range(max(0, k - lead), k):
                state = model.step(state, act[j].reshape(1, -1), mode="mean", deterministic=True)["next_obs"]
            to_plan.append((planner.act(state[0], deterministic=True) - act[k]).abs().max().item())
            to_actor.append((actor.act(obs[k].reshape(1, -1), True)[0] - act[k]).abs().max().item())
        mean = lambda v: sum(v) / len(v)  # noqa: E731
        rows.append({"return": round(ret, 1), "steps": end - begin, "fell": bool(log["terminated"][end - 1]),
                     "plan_gap": round(mean(to_plan), 3), "plan_gap_last20": round(mean(to_plan[-20:]), 3),
                     "actor_gap": round(mean(to_actor), 3), "actor_gap_last20": round(mean(to_actor[-20:]), 3)})
        print(json.dumps(rows[-1]), flush=True)
