"""Behaviour policies for offline datasets by D4RL's recipe: SAC trained online in MuJoCo.

One training run per (task, seed) yields every quality: the policy the first time its
evaluation return reaches `medium_return` (medium), every transition seen until then
(medium-replay) and the policy after `max_steps` (expert). The run is checkpointed in
`policy_dir` after each evaluation (`<task>-seed<seed>.pt`, one process at a time), so an
interrupted run resumes, the other qualities reuse it, and a larger `max_steps` continues it. A
resumed run is the run it continues: it draws its episodes' starts and evaluations' from the
saved random states and replays the episode under way at the checkpoint with its logged actions,
so it sees the transitions an uninterrupted run would (on the same kind of CPU). Each policy's
data is collected from the random state of its snapshot, so a quality's data does not depend on
which qualities were made before it (medium-expert holds the medium and expert datasets).

Each policy a dataset is collected from is also written beside the dataset
(`data/x.hdf5` -> `data/x.<medium|expert>-policy.pt`, ~300 KB: the actor, its settings, the random
state its collection started from, the data's size and fingerprint); `make ... policy=<that
file>` collects from it without training: the same transitions on the same kind of CPU (the same
seed and size; make checks and says so), and the same policy on any.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from tqdm.auto import tqdm

from planners.sac import SAC, SACConfig
from worldmodel import threads
from worldmodel.checkpoint import RunDirLock, atomic_save, load_checked, rng_state, set_rng_state
from worldmodel.collect import collect, uniform_policy
from worldmodel.datasets import (REFERENCE_RETURNS, dynamics_args, episode_ends, fingerprint, normalized_score,
                                 save_d4rl, save_minari)
from worldmodel.envs import episode_random_state, make_env, set_episode_random_state
from worldmodel.replay import ReplayBuffer
from worldmodel.transitions import from_rollout

_FORMAT = "worldmodel.BehaviourRun"
_POLICY_FORMAT = "worldmodel.BehaviourPolicy"


def run_path(policy_dir: str | Path, task: str, seed: int) -> Path:
    """Where the behaviour run of (task, seed) is checkpointed."""
    return Path(policy_dir) / f"{task}-seed{seed}.pt"


def _legacy_path(path: Path, max_steps: int) -> Path | None:
    """A run checkpointed before the name lost its budget (<task>-seed<seed>-<budget>.pt): the
    longest within max_steps; it is read once and saved under the new name."""
    budgets = {int(p.stem.rsplit("-", 1)[1]): p for p in path.parent.glob(f"{path.stem}-*.pt")
               if p.stem.rsplit("-", 1)[1].isdigit() and int(p.stem.rsplit("-", 1)[1]) <= max_steps}  # fmt: skip
    return budgets[max(budgets)] if budgets else None


def policy_path(out: str | Path, which: str) -> Path:
    """Where `make` writes the `which` ("medium" or "expert") policy of the dataset at `out`
    (beside it: data/x.hdf5 -> data/x.medium-policy.pt; a Minari directory data/x -> the same)."""
    out = Path(out)
    base = out.with_suffix("") if out.suffix in (".hdf5", ".h5") else out
    return base.parent / f"{base.name}.{which}-policy.pt"


def save_policy(path: Path, task: str, which: str, agent: SAC, rng: torch.Tensor, seed: int, history: list,
                eval_episodes: int, size: int, data_fingerprint: str, env_args: dict) -> None:  # fmt: skip
    """A collection's behaviour policy: the actor, its settings, the torch random state the
    collection started from (after `seed`'s training; `rng`), the evaluation episodes run before
    it, the size and fingerprint of the data it gave, and the env settings it acted under
    (datasets.dynamics_args)."""
    atomic_save({"format": _POLICY_FORMAT, "version": 1, "task": task, "which": which, "seed": seed,
                 "actor": agent.actor.state_dict(), "agent": dataclasses.asdict(agent.config), "rng": rng,
                 "history": history, "eval_episodes": eval_episodes, "size": size,
                 "fingerprint": data_fingerprint, "env_args": env_args}, path)  # fmt: skip


_POLICY_KEYS = ("task", "which", "seed", "actor", "agent", "rng", "history", "eval_episodes", "size", "fingerprint")


def load_policy(path: str | Path, spec, quality: str, env_args: dict | None = None) -> tuple[SAC, dict]:
    """The agent of a policy file `save_policy` wrote, for collecting `quality` data on the task
    of `spec` (a worldmodel.envs.TaskSpec) under `env_args` (datasets.dynamics_args: the ones it
    acted under; files without them: action repeat 1), and the file's record (seed, rng, history, ...)."""
    saved = load_checked(path, _POLICY_FORMAT)
    missing = [key for key in _POLICY_KEYS if key not in saved]
    if saved.get("version") != 1 or missing:
        raise ValueError(f"{path} is not a behaviour policy file this version reads (version "
                         f"{saved.get('version')}, missing {missing})")  # fmt: skip
    if saved["task"] != spec.name or saved["which"] != quality:
        raise ValueError(f"{path} holds the {saved['task']} {saved['which']} policy, not {spec.name} {quality}")
    acted_under = saved.get("env_args", {"action_repeat": 1})
    if env_args is not None and acted_under != env_args:
        raise ValueError(f"{path}'s policy acted under {acted_under}, not {env_args}: give the env settings it "
                         "was trained with")  # fmt: skip
    try:
        agent = SAC(spec.obs_dim, spec.action_low, spec.action_high, SACConfig(**saved["agent"]))
        agent.actor.load_state_dict(saved["actor"])
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{path} does not match this version's behaviour agent: {e}") from None
    return agent, saved


def collect_policy(task: str, seed: int, agent: SAC, eval_episodes: int, size: int,
                   **env_kwargs) -> tuple[float, TensorDict]:  # fmt: skip
    """A policy's data from a fresh environment (seed + 20,000; make_env's `env_kwargs`): its return
    over `eval_episodes` episodes, then `size` transitions [size], actions sampled from it as D4RL's were."""
    env = make_env(task, seed=seed + 20_000, **env_kwargs)
    episode_return = policy_return(env, agent, eval_episodes, False)
    return episode_return, collect(env, lambda obs: agent.act(obs), size, progress=True)


def default_medium_return(task: str) -> float:
    """D4RL's medium: about a third of the expert's return (above the random one)."""
    if task not in REFERENCE_RETURNS:
        raise ValueError(f"no reference returns for {task!r}: set behaviour.medium_return explicitly")
    low, high = REFERENCE_RETURNS[task]
    return low + (high - low) / 3


def policy_return(env, agent: SAC, episodes: int, deterministic: bool = True) -> float:
    """Mean return of the agent's policy over `episodes` episodes."""
    act = lambda td: td.set("action", agent.act(td["observation"], deterministic))  # noqa: E731
    total = [env.rollout(env.task_spec.max_episode_steps, policy=act)["next", "reward"].sum().item()
             for _ in range(episodes)]  # fmt: skip
    return sum(total) / episodes


class BehaviourTraining:
    """Online SAC on one task with the snapshots the dataset qualities need."""

    def __init__(self, task: str, seed: int, settings: DictConfig, path: Path, **env_kwargs):
        self.task, self.seed, self.settings, self.path, self.env_kwargs = task, seed, settings, path, env_kwargs
        self.env = make_env(task, seed=seed, **env_kwargs)
        self.eval_env = make_env(task, seed=seed + 10_000, **env_kwargs)
        spec = self.env.task_spec
        self.agent = SAC(spec.obs_dim, spec.action_low, spec.action_high, SACConfig(**settings.agent))
        self.buffer = ReplayBuffer(spec.obs_dim, spec.act_dim, capacity=settings.max_steps)
        self.medium_return = settings.medium_return if settings.medium_return is not None else default_medium_return(task)
        self.state = {"step": 0, "medium": None, "history": []}
        # the training env's episode under way (the step it began at, its env's random state before the
        # reset that began it) and the evaluation env's random state: a resumed run's envs as they were
        self.envs: dict | None = None
        self.trained_rng: dict | None = None  # torch's random state where train() ended (the expert's collection starts there)
        self._lock = RunDirLock(path.parent, guards=path.name)  # (two makes would train one run twice over)
        self.source = path if path.is_file() else _legacy_path(path, settings.max_steps)
        try:
            if self.source is not None:
                self._restore(load_checked(self.source, _FORMAT))
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Let another process train this run (the lock taken at construction; train() releases it
        when it ends, however it ends: an exception's traceback may keep this object alive)."""
        self._lock.release()

    def _identity(self) -> dict:
        """The settings a cached run must share to be reused (the training budget may grow)."""
        same = {k: v for k, v in OmegaConf.to_container(self.settings, resolve=True).items() if k != "max_steps"}
        env = {"env": self.env_kwargs} if self.env_kwargs else {}  # (runs of the task's own settings: as before)
        return {"task": self.task, "seed": self.seed, **same, "medium_return": self.medium_return, **env}

    def train(self, until: str) -> None:
        """Train until the medium snapshot exists (until="medium") or for max_steps ("expert"), once
        (it releases the run's lock when it ends: a second call would train without it)."""
        if not self._lock.held:
            raise RuntimeError("this BehaviourTraining trained already and let its run go: make a new one")
        try:
            self._train(until)
            self.trained_rng = rng_state()
        finally:
            self.release()

    def _train(self, until: str) -> None:
        s, cfg = self.state, self.settings
        done = (lambda: s["medium"] is not None) if until == "medium" else (lambda: s["step"] >= cfg.max_steps)
        if done():
            return
        if s["step"] == 0:
            torch.manual_seed(self.seed)
        random_policy = uniform_policy(self.env)
        td = self._episode_under_way()
        bar = tqdm(total=cfg.max_steps, initial=s["step"], desc=f"behaviour SAC {self.task}", unit="step")
        while not done():
            threads.adapt()
            if s["step"] >= cfg.max_steps:
                raise ValueError(f"the behaviour agent did not reach medium_return {self.medium_return:.0f} within "
                                 f"behaviour.max_steps={cfg.max_steps} (best so far: {self._best():.0f}); raise "
                                 f"behaviour.max_steps: the run continues from its checkpoint {self.path}")  # fmt: skip
            td["action"] = random_policy(None) if s["step"] < cfg.start_steps else self.agent.act(td["observation"])
            before = episode_random_state(self.env)  # (the state the next episode's reset draws from, if this one ends)
            transition, td = self.env.step_and_maybe_reset(td)
            self.buffer.extend(from_rollout(transition.unsqueeze(0)))
            s["step"] += 1
            if transition["next", "done"].item():
                self.envs["episode_start"], self.envs["began_from"] = s["step"], before
            if s["step"] >= cfg.start_steps:
                self.agent.update(self.buffer.sample(self.agent.config.batch_size))
            if s["step"] % cfg.eval_every == 0 or s["step"] == cfg.max_steps:
                self._evaluate(bar)
            bar.update()
        bar.close()

    def _episode_under_way(self):
        """The training env's first observation to act on: a fresh run's first reset; a resumed
        run's episode under way at its checkpoint, as an uninterrupted run has it (its start drawn
        again from the saved random state, its steps so far replayed with the logged actions; the
        evaluation env's random state put back too). A checkpoint of before these were saved, or a
        replay that does not reach the logged state (another kind of CPU), begins a new episode."""
        s, saved = self.state, self.envs
        if saved is not None:
            set_episode_random_state(self.env, saved["began_from"])
            set_episode_random_state(self.eval_env, saved["eval"])
            td = self.env.reset()
            logged = self.buffer.data()[saved["episode_start"] : s["step"]]
            for action in logged["action"]:
                td["action"] = action
                td = self.env.step_and_maybe_reset(td)[1]
            if not len(logged) or torch.equal(td["observation"], logged["next_obs"][-1]):
                return td
            tqdm.write(f"the episode under way at step {s['step']} did not replay to its logged state (another kind of "
                       "CPU?): a new episode begins; the data from here differs from an uninterrupted run's")  # fmt: skip
        elif s["step"]:
            tqdm.write(f"{self.source} saved no env random states (an older version): the run goes on with a new "
                       "episode; its data from here differs from an uninterrupted run's")  # fmt: skip
        self.envs = {"episode_start": s["step"], "began_from": episode_random_state(self.env),
                     "eval": episode_random_state(self.eval_env)}  # fmt: skip
        return self.env.reset()

    def _evaluate(self, bar) -> None:
        s = self.state
        ret = policy_return(self.eval_env, self.agent, self.settings.eval_episodes)
        s["history"].append({"step": s["step"], "return": ret})
        bar.set_postfix(ret=f"{ret:.0f}", medium=f"{self.medium_return:.0f}")
        if s["medium"] is None and ret >= self.medium_return:
            s["medium"] = {"actor": {k: v.clone() for k, v in self.agent.actor.state_dict().items()},
                           "return": ret, "step": s["step"], "rng": rng_state()}  # fmt: skip
            tqdm.write(f"{self.task}: medium policy at step {s['step']} (return {ret:.0f})")
        self.envs["eval"] = episode_random_state(self.eval_env)
        atomic_save({"format": _FORMAT, "version": 1, "state": s, "agent": self.agent.training_state(),
                     "buffer": self.buffer.state_dict(), "torch_rng": rng_state(), "envs": self.envs,
                     "identity": self._identity()}, self.path)  # fmt: skip

    def _restore(self, ckpt: dict) -> None:
        saved = ckpt.get("identity")
        if saved is not None and saved != self._identity():
            changed = sorted(k for k in set(saved) | set(self._identity()) if saved.get(k) != self._identity().get(k))
            raise ValueError(f"{self.source} is a behaviour run with other settings ({', '.join(changed)}); "
                             "use another policy_dir or delete it to train anew")  # fmt: skip
        if ckpt["state"]["step"] > self.settings.max_steps:  # (its policies would not be this budget's)
            raise ValueError(f"{self.source} was trained for {ckpt['state']['step']} steps, beyond behaviour.max_steps="
                             f"{self.settings.max_steps}: give max_steps={ckpt['state']['step']} or more, or another "
                             "policy_dir")  # fmt: skip
        try:
            self.agent.load_training_state(ckpt["agent"])
        except (RuntimeError, KeyError) as e:
            raise ValueError(f"{self.source} does not match this behaviour agent: {e}") from None
        self.state = ckpt["state"]
        buffer = ReplayBuffer.from_state_dict(ckpt["buffer"], source=str(self.source))
        if buffer.capacity < self.settings.max_steps:  # a larger budget: room for every step (it never overwrote)
            self.buffer.extend(buffer.data())
        else:
            self.buffer = buffer
        set_rng_state(ckpt["torch_rng"])
        self.envs = ckpt.get("envs")  # (None in a checkpoint of before they were saved)

    def _best(self) -> float:
        return max((h["return"] for h in self.state["history"]), default=-math.inf)

    def collection_rng(self, which: str) -> dict | None:
        """The random state `which` policy's data is collected from: the medium snapshot's (None in
        a checkpoint of before it was kept), or, for the expert, the run's at its end."""
        return self.state["medium"].get("rng") if which == "medium" else self.trained_rng

    def policy(self, which: str) -> SAC:
        """The agent with the medium snapshot's actor, or as trained (expert)."""
        if which == "medium":
            agent = SAC(self.env.task_spec.obs_dim, self.env.task_spec.action_low, self.env.task_spec.action_high,
                        self.agent.config)  # fmt: skip
            agent.actor.load_state_dict(self.state["medium"]["actor"])
            return agent
        return self.agent


def make_dataset(cfg: DictConfig) -> dict:
    """Build the dataset `cfg.quality` for `cfg.env.name` and write it to `cfg.out` (D4RL or Minari
    layout), and beside it the policies it was collected from."""
    task, quality, size = cfg.env.name, cfg.quality, cfg.size
    torch.manual_seed(cfg.seed)
    # the env settings the runs reading this data will step the task with (action repeat, backend arguments)
    env_kwargs = {k: v for k, v in dynamics_args(cfg.env).items() if not (k == "action_repeat" and v == 1)}
    if cfg.env.get("max_episode_steps") is not None:
        env_kwargs["max_episode_steps"] = cfg.env.max_episode_steps
    metadata = {"env": task, "quality": quality, "seed": cfg.seed, "recipe": "D4RL (SAC behaviour policies)",
                "env_args": dynamics_args(cfg.env), "config": OmegaConf.to_container(cfg, resolve=True)}  # fmt: skip
    parts, policies, notes = [], [], []
    if cfg.policy:  # one saved policy's data, no training
        if quality not in ("medium", "expert"):
            raise ValueError(f"policy= collects one saved policy's data: quality medium or expert, not {quality}")
        agent, saved = load_policy(cfg.policy, make_env(task, **env_kwargs).task_spec, quality, dynamics_args(cfg.env))
        same_seed = saved["seed"] == cfg.seed
        if same_seed:  # the random state its first collection started from: the same data
            set_rng_state(saved["rng"])
        metadata[f"{quality}_policy_return"], part = collect_policy(task, cfg.seed, agent, saved["eval_episodes"],
                                                                    size, **env_kwargs)  # fmt: skip
        parts.append(part)
        metadata.update(policy_file=str(cfg.policy), policy_seed=saved["seed"], behaviour_agent=saved["agent"],
                        behaviour_history=saved["history"])  # fmt: skip
        if not same_seed:
            notes.append(f"another draw from the policy (seed {cfg.seed}; its own data: seed {saved['seed']})")
        elif saved["size"] == size:
            metadata["reproduced"] = fingerprint(part) == saved["fingerprint"]
            notes.append(f"the policy's own data, {saved['fingerprint']}" if metadata["reproduced"] else
                         f"NOT the policy's own data ({saved['fingerprint']}): another kind of CPU or version")
    elif quality == "random":  # D4RL: a randomly initialised policy
        env = make_env(task, seed=cfg.seed + 20_000, **env_kwargs)
        spec = env.task_spec
        agent = SAC(spec.obs_dim, spec.action_low, spec.action_high, SACConfig(**cfg.behaviour.agent))
        parts.append(collect(env, lambda obs: agent.act(obs), size, progress=True))
    else:
        training = BehaviourTraining(task, cfg.seed, cfg.behaviour, run_path(cfg.policy_dir, task, cfg.seed), **env_kwargs)
        training.train(until="expert" if "expert" in quality else "medium")
        if "medium" in quality and training.state["medium"] is None:
            raise ValueError(f"the behaviour agent never reached medium_return {training.medium_return:.0f} in "
                             f"behaviour.max_steps={cfg.behaviour.max_steps}; raise behaviour.max_steps: the run "
                             f"continues from its checkpoint {training.path}")  # fmt: skip
        if quality == "medium-replay":
            parts.append(training.buffer.data()[: training.state["medium"]["step"]])
            notes.append("size= does not apply: medium-replay is every transition until the medium policy")
        for which in ("medium", "expert"):
            if which in quality.split("-") and quality != "medium-replay":
                if (snapshot := training.collection_rng(which)) is not None:
                    set_rng_state(snapshot)
                agent, rng = training.policy(which), rng_state()
                metadata[f"{which}_policy_return"], part = collect_policy(task, cfg.seed, agent,
                                                                          cfg.behaviour.eval_episodes, size, **env_kwargs)  # fmt: skip
                parts.append(part)
                policies.append((policy_path(cfg.out, which), which, agent, rng, fingerprint(part)))
        metadata["behaviour_history"] = training.state["history"]
    data = torch.cat(parts)
    returns = [r for part in parts for r in episode_returns(part)]
    metadata.update(transitions=len(data), episodes=len(returns), fingerprint=fingerprint(data),
                    mean_episode_return=sum(returns) / max(len(returns), 1))  # fmt: skip
    score = normalized_score(task, metadata["mean_episode_return"], cfg.env)  # (None under other env settings)
    if score is not None:
        metadata["mean_normalized_score"] = score
    (save_minari if cfg.format == "minari" else save_d4rl)(cfg.out, data, metadata)
    for path, which, agent, rng, part_fingerprint in policies:  # (after the data: never beside other data)
        save_policy(path, task, which, agent, rng, cfg.seed, metadata["behaviour_history"],
                    cfg.behaviour.eval_episodes, size, part_fingerprint, dynamics_args(cfg.env))  # fmt: skip
        notes.append(f"its {which} policy (make ... policy=<file> collects again without training) -> {path}")
    print(f"{task} {quality}: {len(data)} transitions, {len(returns)} complete episodes, mean return "
          f"{metadata['mean_episode_return']:.1f}" + (f" (normalised {score:.1f})" if score is not None else "")
          + f", fingerprint {metadata['fingerprint']} -> {cfg.out}" + "".join(f"; {n}" for n in notes))  # fmt: skip
    return metadata


def episode_returns(data) -> list[float]:
    """Returns of the complete episodes in a transitions batch: segments between episode ends
    (worldmodel.datasets.episode_ends) that end in a terminal or time-out flag."""
    sums = torch.cumsum(data["reward"].double(), 0)
    returns, previous = [], 0.0
    for end in episode_ends(data).tolist():
        if data["terminated"][end] or data["truncated"][end]:
            returns.append((sums[end] - previous).item())
        previous = sums[end].item()
    return returns
