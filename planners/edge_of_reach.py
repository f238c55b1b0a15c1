"""`python -m planners.edge_of_reach dataset=<file> task=hopper`: RAVL's point, measured.

Offline MBPO and RAVL learn from rollouts in the true simulator (worldmodel.simulator: no
model error at all) started from dataset states. At each evaluation the critics' value of
the policy, min_i Q_i(s, pi(s)), is compared with the discounted return the policy really
gets from the same start states; `overestimation` also subtracts the soft critics' entropy bonus
along the evaluated episode (sum over t >= 1 of gamma^t alpha H(s_t), up to its real end), which is
not reward. The critics value the stochastic policy from the second step on, the evaluation runs its
mean action throughout: the same policy the evaluations score. Without value pessimism the states at the edge of the
rollouts' reach are never corrected, so MBPO's Q drifts above any return it achieves; RAVL's
EDAC critics keep it near. Writes metrics.jsonl, summary.json and q_vs_return.png.

Each evaluation also saves every method's agent to run_dir/checkpoint.pt, so the same command
with `run_dir=<dir>` resumes a killed comparison from its last evaluation, and a larger
`updates=` extends a finished one (the imagined buffer is rolled out afresh on resuming).
On several cores the methods can learn at once, one process each (`methods=[mbpo] run_dir=A`,
`methods=[ravl] run_dir=B`); `compare_with=[A]` in B's command then puts A's curves beside B's,
and `methods=[] compare_with=[A,B] run_dir=C` plots both while they are still learning.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from tqdm.auto import tqdm

from planners import DYNA_PLANNERS, make_planner
from planners.base import evaluation_rollouts
from worldmodel.checkpoint import FORMAT_KEY, CheckpointError, RunDirLock, atomic_save, load_checked, rng_state, set_rng_state
from worldmodel.config import check_counts, compose_config, run_dir_for, save_config
from worldmodel.datasets import load_dataset
from worldmodel.envs import make_env
from worldmodel.metrics import MetricsLogger, read_records, save_figure, write_json
from worldmodel.replay import ReplayBuffer
from worldmodel.simulator import SimulatorDynamics
from worldmodel.threads import adapt, set_threads


def value_vs_return(planner, env, episodes: int, discount: float) -> dict[str, float]:
    """Means over `planner`'s deterministic evaluation episodes from s0: V(s0) = min_i Q_i(s0, pi(s0))
    at the mean action (as the deterministic policy acts), the discounted and the plain return,
    and `entropy_bonus`, the part of a soft V(s0) that is the policy's future entropy, not reward."""
    values, discounted, plain, bonus = [], [], [], []
    agent = planner.agent
    for rollout in evaluation_rollouts(planner, env, episodes):
        rewards = rollout["next", "reward"].squeeze(-1).double()
        weights = discount ** torch.arange(len(rewards), dtype=torch.float64)
        values.append(agent.value(rollout["observation"][:1], deterministic=True).item())
        discounted.append((rewards * weights).sum().item())
        plain.append(rewards.sum().item())
        bonus.append(entropy_bonus(agent, rollout["observation"], weights))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"q_start": mean(values), "discounted_return": mean(discounted), "ret": mean(plain),
            "entropy_bonus": mean(bonus)}


@torch.no_grad()
def entropy_bonus(agent, obs: Tensor, weights: Tensor) -> float:
    """sum_{t>=1} gamma^t alpha H(s_t) along one episode's states obs [T, O] (weights [T]: gamma^t):
    what a soft critic's Q(s0, a0) holds beyond reward, ending where the episode ends (a terminal
    state bootstraps no bonus; a time limit's tail beyond is gamma^T small). H(s_t) is estimated by
    -log pi(a|s_t) of one sampled action a state, unbiased in the sum."""
    _, log_prob = agent.actor(obs[1:])
    return (agent.alpha.double() * (-log_prob.double() * weights[1:]).sum()).item()


RESUMABLE_KEYS = ("updates", "methods", "threads", "run_dir", "compare_with")  # may differ from the saved config when resuming


def saved_states(cfg: DictConfig, run_dir: Path) -> dict:
    """Each method's {done, planner, row, torch_rng} from run_dir/checkpoint.pt ({} for a new
    comparison), after checking that the saved config matches except RESUMABLE_KEYS; writes
    the config."""
    if not (run_dir / "checkpoint.pt").is_file():
        save_config(cfg, run_dir)
        return {}
    saved = OmegaConf.load(run_dir / "config.yaml")
    changed = sorted(k for k in cfg if k not in RESUMABLE_KEYS and k in saved and saved[k] != cfg[k])
    if changed:
        raise ValueError(f"run_dir={run_dir} holds a comparison with other settings ({', '.join(changed)}); "
                         f"give the same settings to resume it (only {', '.join(RESUMABLE_KEYS)} may change) "
                         f"or another run_dir")  # fmt: skip
    states = load_checked(run_dir / "checkpoint.pt", "edge_of_reach")["methods"]
    if (done := max((state["done"] for state in states.values()), default=0)) > cfg.updates:
        raise ValueError(f"run_dir={run_dir} holds a comparison {done} updates long: updates={cfg.updates} cannot "
                         f"shorten it; give updates >= {done} or another run_dir")  # fmt: skip
    save_config(cfg, run_dir)
    return states


def compare(cfg: DictConfig) -> dict:
    run_dir = run_dir_for(cfg, "edge_of_reach", cfg.task)
    others = compared_runs(cfg)  # (bad compare_with dirs fail before hours of learning)
    eval_env = make_env(cfg.task, seed=cfg.seed + 10_000)
    spec = eval_env.task_spec
    data, _ = load_dataset(cfg.dataset, spec.obs_dim, spec.act_dim, cfg.task, {})  # (another task's: before any file)
    lock = RunDirLock(run_dir)  # (creates the directory)
    try:
        return _compare(cfg, run_dir, saved_states(cfg, run_dir), others, eval_env, data)
    finally:
        lock.release()


def _compare(cfg: DictConfig, run_dir: Path, states: dict, others: dict[Path, list[str]], eval_env, data) -> dict:
    probe = data["obs"][torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed))[:2000]]
    logger, summary = MetricsLogger(run_dir), {}
    logger.truncate(lambda r: r["step"] <= states.get(r["kind"], {}).get("done", 0))
    for method in cfg.methods:
        begun = states.get(method, {}).get("done", 0)
        checkpoints = [*range(cfg.eval_every, cfg.updates, cfg.eval_every), cfg.updates]
        pending = [(p, d) for p, d in zip([0, *checkpoints], checkpoints) if d > begun]
        if pending:
            learn(cfg, method, states, pending, data, probe, eval_env, logger, run_dir)
        summary[method] = _summary_row(states[method]["row"], states[method]["done"])
    curves = {m: logger.records(m) for m in cfg.methods}
    for other, methods in others.items():  # methods learned by other processes
        for method in methods:
            curves[method] = read_records(other, method)
            if curves[method]:
                last = curves[method][-1]
                summary[method] = {**_summary_row(last, last["step"]), "run_dir": str(other)}
    write_json(summary, run_dir / "summary.json")
    _plot(curves, run_dir / "q_vs_return.png", cfg.task)
    logger.close()
    return summary


def _summary_row(row: dict, updates: int) -> dict:
    """A method's summary: its last evaluation, its updates and the critics' overestimation (V(s0)
    above the true discounted return and the entropy bonus along the same episodes)."""
    return {**row, "updates": updates, "overestimation": row["q_start"] - soft_return(row)}


def soft_return(row: dict) -> float:
    """An evaluation's true soft value from s0: its discounted return and entropy bonus (rows written
    before 2026-12-06 hold `entropy_share`, the bonus of a policy that never ends, in its place)."""
    return row["discounted_return"] + row.get("entropy_bonus", row.get("entropy_share", 0.0))


_SAME_SETTINGS = ("dataset", "task", "seed", "rollout_length", "rollout_batch_size", "rollout_every", "real_ratio")


def compared_runs(cfg: DictConfig) -> dict[Path, list[str]]:
    """{run dir: its methods} of the `compare_with` runs: methods of the same comparison learned in
    other processes (one per core), whose curves join this run's summary and plot. Each must hold
    the same dataset, task, seed and rollout settings, and none of this run's methods."""
    out = {}
    for other in map(Path, cfg.compare_with or []):
        if not (other / "config.yaml").is_file():
            raise ValueError(f"compare_with={other} holds no edge-of-reach comparison (no config.yaml)")
        theirs = OmegaConf.load(other / "config.yaml")
        differ = [k for k in _SAME_SETTINGS if theirs.get(k) != cfg.get(k)]
        if differ:
            raise ValueError(f"compare_with={other} ran with other settings: "
                             + ", ".join(f"{k}={theirs.get(k)} (here {cfg.get(k)})" for k in differ))
        if shared := sorted(set(theirs.methods) & set(cfg.methods)):
            raise ValueError(f"compare_with={other} also runs {shared}: each method comes from one run")
        out[other] = list(theirs.methods)
    return out


def learn(cfg: DictConfig, method: str, states: dict, pending: list[tuple[int, int]], data, probe,
          eval_env, logger: MetricsLogger, run_dir: Path) -> None:  # fmt: skip
    """Train `method` through the (previous, done) update intervals in `pending`, evaluating and
    checkpointing at each `done`; states[method] holds its progress, agent and last row."""
    spec = eval_env.task_spec
    torch.manual_seed(cfg.seed)
    planner = make_planner(method, SimulatorDynamics(cfg.task), spec, seed=cfg.seed,
                           buffer=ReplayBuffer(spec.obs_dim, spec.act_dim, capacity=len(data)),
                           rollout_length=cfg.rollout_length, rollout_batch_size=cfg.rollout_batch_size,
                           rollout_every=cfg.rollout_every, real_ratio=cfg.real_ratio,
                           agent=OmegaConf.to_container(cfg.agent) if cfg.get("agent") is not None else {})  # fmt: skip
    planner.observe(data)
    begun = states.get(method, {}).get("done", 0)
    if begun:
        planner.load_state_dict(states[method]["planner"])
        set_rng_state(states[method]["torch_rng"])
        tqdm.write(f"{method}: resuming at {begun} updates from {run_dir / 'checkpoint.pt'}")
    for previous, done in tqdm(pending, desc=f"{method} (true dynamics)"):
        for start in range(max(previous, begun), done, 100):  # the load is re-read between chunks of updates
            adapt()
            stats = planner.learn(min(100, done - start))
        eval_env.set_seed(cfg.seed + 10_000 + done)  # the same episodes whether or not the run was resumed
        row = value_vs_return(planner, eval_env, cfg.eval_episodes, planner.agent.config.discount)
        row["q_dataset"] = planner.agent.value(probe, deterministic=True).mean().item()
        row["critic_loss"] = stats["critic_loss"]
        logger.log(method, done, **row)
        states[method] = {"done": done, "planner": planner.state_dict(), "row": row, "torch_rng": rng_state()}
        atomic_save({FORMAT_KEY: "edge_of_reach", "methods": states}, run_dir / "checkpoint.pt")
        tqdm.write(f"{method} {done}: V(s0) {row['q_start']:.1f} vs discounted return "
                   f"{row['discounted_return']:.1f} (return {row['ret']:.1f}); Q on dataset states {row['q_dataset']:.1f}")


def _plot(curves: dict[str, list[dict]], out, task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for (method, rows), color in zip(curves.items(), ("tab:red", "tab:blue", "tab:green")):
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["q_start"] for r in rows], color=color, label=f"{method}: V(s0), critics")
        ax.plot(steps, [soft_return(r) for r in rows], color=color, linestyle="--",
                label=f"{method}: true (return + entropy bonus)")
    ax.set(xlabel="agent updates", ylabel="discounted soft value from s0", title=f"{task}: true-dynamics rollouts")
    ax.set_yscale("symlog")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out)


def main(argv: list[str] | None = None) -> dict:
    cfg = compose_config("edge_of_reach", sys.argv[1:] if argv is None else argv, __doc__, open_keys=("agent",))
    if not cfg.dataset:
        raise SystemExit("error: give dataset=<file> (make one with python -m worldmodel.datasets make ...)")
    try:
        check_counts(cfg, {"updates": 1, "eval_every": 1, "eval_episodes": 1, "rollout_length": 1,
                           "rollout_batch_size": 1, "rollout_every": 1, "seed": 0})  # (before any work or file)
        methods = list(cfg.methods)
        if (unknown := [m for m in methods if m not in DYNA_PLANNERS]) or len(set(methods)) < len(methods):
            raise ValueError(f"methods={methods}: give distinct Dyna planners ({', '.join(DYNA_PLANNERS)}); "
                             f"{unknown[0] + ' is not one' if unknown else 'one is repeated'}")  # fmt: skip
        set_threads(cfg.threads)
        return compare(cfg)
    except (ValueError, CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
