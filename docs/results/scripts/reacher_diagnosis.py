"""Why dmc/reacher-easy is bimodal: probes of one finished online run (issue #12; docs/results.md).

    python docs/results/scripts/reacher_diagnosis.py episodes runs/online/reacher-easy-default-10000/s0
    python docs/results/scripts/reacher_diagnosis.py reward runs/online/reacher-easy-default-10000/s0 rows=6000 0 0.5 1
    python docs/results/scripts/reacher_diagnosis.py value runs/online/reacher-easy-default-10000/s0
    python docs/results/scripts/reacher_diagnosis.py model runs/online/reacher-easy-default-10000/s0
    python docs/results/scripts/reacher_diagnosis.py hold runs/online/reacher-easy-default-10000/s0 50
    python docs/results/scripts/reacher_diagnosis.py plan runs/online/reacher-easy-default-10000/s0 8 "" horizon=30 \
        explore value_learning=false value_learning=false,horizon=30 value_learning=false,iterations=4
    python docs/results/scripts/reacher_diagnosis.py lose runs/online/reacher-easy-default-10000/s0 8

episodes: each training episode's starting finger-to-target distance, return and first rewarded decision.
reward:   fresh model fits on 80% of the run's rows (its first rows=N) with each beta-NLL given; the sparse
          reward's fit on the rest.
value:    the run's learned value trained on on its own rows (no new data), and fresh ones at two target
          rates and update counts (`continued` or `fresh` for one kind); V by the finger's distance.
model:    the run's model rolled 15 decisions along real segments (the real actions) from states near
          the target and from elsewhere: predicted against real finger-to-target distance and reward.
hold:     real states inside the target whose arm then stayed inside for 15 decisions, and ones whose arm
          left within 5: the imagined return (the planner's own evaluation, value included) of the real
          actions, of the planner's plan there (warm-started by its plan one decision earlier) and of a
          far stronger search's (4,096 candidates, 8 iterations).
plan:     the run's model and value planning deterministic episodes from the same starts, for each
          variant: comma-separated planner settings (horizon=30,iterations=4; value_learning=false:
          the model alone; value_agent.tau=0.02 a nested one), `explore` for the training episodes'
          sampled acts, `train=N` the run's value trained N more updates on the run's rows first;
          "" the run's own.
lose:     the run's planner's deterministic episodes: where the finger first enters the target and how
          fast, where and how fast it leaves, where it ends (and its wrist's angle: the joint stops at
          +-160 degrees); where it ends outside, how many of the candidates the planner samples
          there reach the target in the model, and what they score.
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
    rows = [int(b[5:]) for b in betas if b.startswith("rows=")]
    data = buffer.data()[: rows[0] if rows else None]
    betas = tuple(b for b in betas if not b.startswith("rows="))
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


def value(run: str, *which: str) -> None:
    cfg, buffer = load(run)
    obs = buffer.data()["obs"]
    near = [(distance(obs) >= lo) & (distance(obs) < hi) for lo, hi in BANDS]
    spec, settings = task_spec(cfg), OmegaConf.to_container(cfg.planner, resolve=True)
    kinds = set(which) or {"continued", "fresh"}
    print("V by distance " + " / ".join(f"[{lo}, {hi})" for lo, hi in BANDS))

    def fresh(tau: float):  # a new value, the target network's rate tau
        torch.manual_seed(0)
        return Agent(spec, {**settings, "value_agent": {**settings["value_agent"], "tau": tau}}, seed=0).planner

    arms = []  # (name, planner maker, updates)
    if "continued" in kinds:  # the run's own value, trained on
        arms.append(("the run's value, continued", lambda: Agent(spec, settings, pretrained=run, seed=0).planner, 20_000))
    if "fresh" in kinds:
        arms += [(f"fresh, tau {tau}", lambda tau=tau: fresh(tau), total)
                 for tau, total in ((0.005, 10_000), (0.02, 10_000), (0.005, 40_000))]
    for name, make, total in arms:
        planner = make()
        planner.buffer = buffer
        row = []
        for done in range(0, total + 1, total // 4):
            if done:
                planner.learn(total // 4)
            with torch.no_grad():
                v = planner.learned_value(obs)
            row.append(f"{done}: " + "/".join(f"{v[m].mean():.0f}" for m in near))
        print(f"{name}, after " + "; ".join(row), flush=True)


def model(run: str, steps: str = "15") -> None:
    cfg, buffer = load(run)
    data, h = buffer.data(), int(steps)
    length = task_spec(cfg).max_episode_steps
    dynamics = EnsembleDynamics.load(f"{run}/model.pt")
    starts = torch.tensor([i for i in range(len(data)) if i % length <= length - h])  # whole segments only
    d0 = distance(data["obs"][starts])
    for name, pick in (("within 0.06", d0 < 0.06), ("0.06-0.15 away", (d0 >= 0.06) & (d0 < 0.15)),
                       ("0.15 or more away", d0 >= 0.15)):
        rows = starts[pick][torch.randperm(int(pick.sum()), generator=torch.Generator().manual_seed(0))[:500]]
        obs, error, real_r, pred_r = data["obs"][rows], [], 0.0, 0.0
        with torch.no_grad():
            for k in range(h):
                out = dynamics.step(obs, data["action"][rows + k], mode="mean", deterministic=True)
                obs, real = out["next_obs"], data["next_obs"][rows + k]
                error.append((distance(obs) - distance(real)).abs().mean().item())
                real_r += data["reward"][rows + k].flatten().mean().item()
                pred_r += out["reward"].mean().item()
        inside = (distance(obs) < 0.06) == (distance(real) < 0.06)
        print(f"{len(rows)} segments starting {name}: mean |predicted - real distance| after 1, 5, {h} decisions "
              + ", ".join(f"{error[k]:.4f}" for k in (0, 4, h - 1))
              + f"; within 0.06 or not predicted right after {h}: {inside.float().mean():.0%}; reward over the {h}: "
              f"real {real_r:.1f}, predicted {pred_r:.1f}", flush=True)


def hold(run: str, count: str = "100") -> None:
    cfg, buffer = load(run)
    data, length = buffer.data(), task_spec(cfg).max_episode_steps
    spec, settings = task_spec(cfg), OmegaConf.to_container(cfg.planner, resolve=True)
    planner = Agent(spec, settings, pretrained=run, seed=0).planner
    strong = Agent(spec, {**settings, "candidates": 4096, "iterations": 8}, pretrained=run, seed=0).planner
    h = planner.config.horizon
    inside = distance(data["next_obs"]) < 0.06  # [N]: after row i's decision
    pick = lambda ok: torch.tensor([i for i in range(1, len(data) - h) if i % length and i % length <= length - h  # noqa: E731
                                    and bool(inside[i - 1]) and ok(i)])  # fmt: skip
    kinds = ((f"stayed inside for the next {h} decisions", pick(lambda i: bool(inside[i:i + h].all()))),
             ("left within 5 decisions", pick(lambda i: not bool(inside[i:i + 5].all()))))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    for name, starts in kinds:
        starts = starts[torch.randperm(len(starts), generator=torch.Generator().manual_seed(0))[: int(count)]]
        real, mine, best, kept = [], [], [], 0
        with torch.no_grad():
            for i in starts.tolist():
                obs = data["obs"][i:i + 1]
                real.append(planner.evaluate(obs, data["action"][i:i + h][None, None]).item())
                for p, out in ((planner, mine), (strong, best)):
                    p.reset()
                    p._act_plan(data["obs"][i - 1:i], True)  # (warm-started as in an episode)
                    plan = p._act_plan(obs, True)  # [1, H, A]
                    out.append(planner.evaluate(obs, plan[:, None]).item())
                    if p is planner:
                        step = planner.model.step(obs, plan[:, 0], mode="mean", deterministic=True)
                        kept += bool(distance(step["next_obs"]) < 0.06)
        print(f"{len(starts)} real states inside the target whose arm {name}: imagined return (the planner's "
              f"evaluation, value included) of the real actions {mean(real):.1f}, of the planner's plan "
              f"{mean(mine):.1f}, of a 4,096-candidate 8-iteration plan {mean(best):.1f}; the plan's first action "
              f"keeps the finger inside on {kept} (predicted)", flush=True)


def plan(run: str, count: str, *variants: str) -> None:
    cfg, buffer = load(run)
    for variant in variants:
        settings = OmegaConf.to_container(cfg.planner, resolve=True)
        deterministic, train = True, 0
        for item in filter(None, variant.split(",")):
            key, _, text = item.partition("=")
            if key == "explore":
                deterministic = False
            elif key == "train":
                train = int(text)
            else:  # a planner setting; value_agent.tau=0.02 reaches into a nested one
                *parents, leaf = key.split(".")
                node = settings
                for parent in parents:
                    node = node[parent]
                node[leaf] = text == "true" if isinstance(node[leaf], bool) else type(node[leaf])(text)
        env = make_env(cfg.env.name, seed=12345, action_repeat=cfg.env.action_repeat)
        value = settings["value_learning"]
        agent = Agent(env.task_spec, settings, pretrained=run if value else f"{run}/model.pt", seed=0)
        if train:  # the run's value trained on, on the run's own rows
            agent.planner.buffer = buffer
            agent.planner.learn(train)
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


def lose(run: str, count: str = "8") -> None:
    cfg, _ = load(run)
    env = make_env(cfg.env.name, seed=12345, action_repeat=cfg.env.action_repeat)
    agent = Agent(env.task_spec, OmegaConf.to_container(cfg.planner, resolve=True), pretrained=run, seed=0)
    planner, h = agent.planner, agent.planner.config.horizon
    for episode in range(int(count)):
        planner.reset()
        ro = env.rollout(env.task_spec.max_episode_steps,
                         policy=lambda td: td.set("action", agent.act(td["observation"], True)))
        obs, d = ro["observation"], distance(ro["next", "observation"])  # [T, 6], [T]
        speed = ro["next", "observation"][:, 4:6].norm(dim=-1)  # joint speed after each decision
        inside = d < 0.06
        line = f"episode {episode}: return {ro['next', 'reward'].sum():.0f}, start {distance(obs[0]):.2f}"
        if inside.any():
            first = int(inside.nonzero()[0])
            exits = (inside[:-1] & ~inside[1:]).nonzero().flatten()
            line += (f"; first inside at decision {first} (joint speed {speed[first]:.2f}), inside "
                     f"{int(inside.sum())} of {len(d)}")
            for e in exits[:3].tolist():
                line += (f"\n  left at decision {e + 1}: distance {d[e]:.3f} -> {d[e + 1]:.3f}, joint speed "
                         f"{speed[e]:.2f} -> {speed[e + 1]:.2f}; 10 later {d[min(e + 10, len(d) - 1)]:.3f}")
        line += (f"\n  last 50 decisions: distance {d[-50:].min():.3f}-{d[-50:].max():.3f}, joint speed max "
                 f"{speed[-50:].max():.2f}; wrist at the end {ro['next', 'observation'][-1, 1]:.2f} rad (limit 2.79)")
        if not inside[-50:].any():  # parked (or wandering) outside at the end: the planner's candidates there
            with torch.no_grad():
                state = ro["next", "observation"][-1:]
                mean = planner._plan  # the warm start of the next plan (shifted) [1, H, A]
                std = (planner.config.noise_std * planner._half_range()).expand_as(mean)
                cands = planner._sample(mean, std, planner.config.candidates)  # [1, C, H, A]
                returns = planner.evaluate(state, cands)[0]  # [C]
                x, closest = state.expand(cands.shape[1], -1), torch.full((cands.shape[1],), 9.0)
                for t in range(h):
                    x = planner.model.step(x, cands[0, :, t], mode="mean", deterministic=True)["next_obs"]
                    closest = torch.minimum(closest, distance(x))
                reach = closest < 0.06
                w = torch.softmax(returns / (planner.config.temperature * returns.std()), 0)
                line += (f"\n  at the end: {int(reach.sum())} of {len(reach)} candidates reach the target in the "
                         f"model (closest {closest.min():.3f}); return of those {returns[reach].mean():.1f} against "
                         f"{returns[~reach].mean():.1f}, weight on them {w[reach].sum():.2f}; V here "
                         f"{planner.learned_value(state).item():.1f}")
        print(line, flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    probes = {"episodes": episodes, "reward": reward, "value": value, "model": model, "hold": hold, "plan": plan, "lose": lose}
    if len(sys.argv) < 3 or sys.argv[1] not in probes:
        sys.exit(__doc__)
    probes[sys.argv[1]](*sys.argv[2:])
