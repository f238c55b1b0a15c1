"""Why dmc/reacher-easy is bimodal: probes of one finished online run (issue #12; docs/results.md).

    python docs/results/scripts/reacher_diagnosis.py episodes runs/online/reacher-easy-default-10000/s0
    python docs/results/scripts/reacher_diagnosis.py reward runs/online/reacher-easy-default-10000/s0 0 0.5 1
    python docs/results/scripts/reacher_diagnosis.py value runs/online/reacher-easy-default-10000/s0
    python docs/results/scripts/reacher_diagnosis.py plan runs/online/reacher-easy-default-10000/s0 8 "" horizon=30 \
        explore value_learning=false value_learning=false,horizon=30 value_learning=false,iterations=4

episodes: each training episode's starting finger-to-target distance, return and first rewarded decision.
reward:   fresh model fits on 80% of the run's rows with each beta-NLL given; the sparse reward's fit on the rest.
value:    fresh learned values trained on the run's rows (no new data) at two target rates and update
          counts; V by the finger's distance to the target.
plan:     the run's model and value planning deterministic episodes from the same starts, for each
          variant: comma-separated planner settings (horizon=30,iterations=4; value_learning=false:
          the model alone), `explore` for the training episodes' sampled acts; "" the run's own.
Reacher's observation: joint angles [0:2], finger-to-target vector [2:4], joint velocities [4:6];
reward 1 a simulator step within 0.06 of the target (2 a decision with dm-control's action repeat).
One thread; run it with nothing else on the core for its times to mean anything.
"""

from __future__ import annotations

import sys

import torch
from omegaconf import OmegaConf

from planners.agent import Agent
from worldmodel.ensemble import EnsembleDynamics
from worldmodel.envs import make_env
from worldmodel.replay import ReplayBuffer

BANDS = ((0, 0.06), (0.06, 0.15), (0.15, 0.25), (0.25, 1.0))  # finger-to-target distance bands


def load(run: str):
    """The run's config and real transitions [N]."""
    cfg = OmegaConf.load(f"{run}/config.yaml")
    state = torch.load(f"{run}/checkpoint.pt", weights_only=False, map_location="cpu")
    return cfg, ReplayBuffer.from_state_dict(state["buffer"])


def task_spec(cfg):
    return make_env(cfg.env.name, action_repeat=cfg.env.action_repeat).task_spec


def distance(obs: torch.Tensor) -> torch.Tensor:
    """Finger-to-target distance of reacher observations [..., 6] -> [...]."""
    return obs[..., 2:4].norm(dim=-1)


def episodes(run: str) -> None:
    cfg, buffer = load(run)
    data, length = buffer.data(), task_spec(cfg).max_episode_steps
    reward = data["reward"].flatten()
    for start in range(0, len(reward) - length + 1, length):
        r = reward[start:start + length]
        hit = (r > 0).nonzero()
        print(f"step {start:6d}: start distance {distance(data['obs'][start]):.3f}, return {r.sum():5.0f}, "
              f"first reward at decision {hit[0].item() if len(hit) else '-'}")


def reward(run: str, *betas: str) -> None:
    _, buffer = load(run)
    data = buffer.data()
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    test, train = data[order[: len(data) // 5]], data[order[len(data) // 5:]]
    r = test["reward"].flatten()
    hit = r > 0
    print(f"{len(train)} rows fitted, {len(test)} held out ({int(hit.sum())} rewarded)")
    for beta in [float(b) for b in betas] or [0.0, 0.5, 1.0]:
        torch.manual_seed(0)
        model = EnsembleDynamics(data["obs"].shape[-1], data["action"].shape[-1])
        info = model.fit(train, beta=beta, max_epochs=None, progress=False)
        with torch.no_grad():
            mean, _ = model.predict(test["obs"], test["action"], model.elites)
        pred, delta = mean[..., -1].mean(0), mean[..., :-1].mean(0) - (test["next_obs"] - test["obs"])
        print(f"beta {beta}: {info['epochs']} epochs; state-change MSE {delta.square().mean():.4f}; reward "
              f"predicted on the rewarded rows {pred[hit].mean():.2f} (true {r[hit].mean():.2f}), above 0.5 on "
              f"{(pred[hit] > 0.5).float().mean():.0%} of them and on {(pred[~hit] > 0.5).float().mean():.1%} of the others")


def value(run: str) -> None:
    cfg, buffer = load(run)
    obs = buffer.data()["obs"]
    near = [(distance(obs) >= lo) & (distance(obs) < hi) for lo, hi in BANDS]
    spec = task_spec(cfg)
    print("V by distance " + " / ".join(f"[{lo}, {hi})" for lo, hi in BANDS))
    for tau, total in ((0.005, 10_000), (0.02, 10_000), (0.005, 40_000)):
        torch.manual_seed(0)
        settings = OmegaConf.to_container(cfg.planner, resolve=True)
        settings["value_agent"] = {**settings["value_agent"], "tau": tau}
        planner = Agent(spec, settings, seed=0).planner
        planner.buffer = buffer
        row = []
        for done in range(total // 4, total + 1, total // 4):
            planner.learn(total // 4)
            with torch.no_grad():
                v = planner.learned_value(obs)
            row.append(f"{done}: " + "/".join(f"{v[m].mean():.0f}" for m in near))
        print(f"tau {tau}, after " + "; ".join(row), flush=True)


def plan(run: str, count: str, *variants: str) -> None:
    cfg, _ = load(run)
    for variant in variants:
        settings = {**OmegaConf.to_container(cfg.planner, resolve=True)}
        deterministic = True
        for item in filter(None, variant.split(",")):
            key, _, text = item.partition("=")
            if key == "explore":
                deterministic = False
            else:
                settings[key] = text == "true" if isinstance(settings[key], bool) else type(settings[key])(text)
        env = make_env(cfg.env.name, seed=12345, action_repeat=cfg.env.action_repeat)
        value = settings["value_learning"]
        agent = Agent(env.task_spec, settings, pretrained=run if value else f"{run}/model.pt", seed=0)
        rows, total = [], 0.0
        for _ in range(int(count)):
            agent.planner.reset()
            ro = env.rollout(env.task_spec.max_episode_steps,
                             policy=lambda td: td.set("action", agent.act(td["observation"], deterministic)))
            d, ret = distance(ro["next", "observation"]), ro["next", "reward"].sum().item()
            total += ret
            rows.append(f"{distance(ro['observation'][0]):.2f} -> {d.min():.3f} (closest), {d[-1]:.3f} (last): {ret:.0f}")
        name = variant or "the run's planner"
        print(f"{name}: mean return {total / len(rows):.0f}; start distance -> "
              "distances: return\n  " + "\n  ".join(rows), flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    probes = {"episodes": episodes, "reward": reward, "value": value, "plan": plan}
    if len(sys.argv) < 3 or sys.argv[1] not in probes:
        sys.exit(__doc__)
    probes[sys.argv[1]](*sys.argv[2:])
