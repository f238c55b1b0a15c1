"""Every supported task behind one function, `make_env(name, seed)`.

Gymnasium MuJoCo v5 tasks (`halfcheetah`) and dm-control suite tasks (`dmc/cartpole-swingup`)
come back as TorchRL environments with one interface: a flat float32 "observation", a
bounded "action", "reward", "terminated"/"truncated", plus `env.task_spec` (dims, action
bounds, episode length and the task's termination function).
"""

from __future__ import annotations

import difflib
import functools
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from worldmodel.termination import (
    TerminationFn,
    ant_termination,
    hopper_termination,
    humanoid_termination,
    inverted_double_pendulum_termination,
    inverted_pendulum_termination,
    walker2d_termination,
)

if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "disable"  # headless: dm-control would otherwise probe GLFW and warn

# name -> (gymnasium id, termination function): every gymnasium MuJoCo v5 task
GYM_TASKS: dict[str, tuple[str, TerminationFn | None]] = {
    "ant": ("Ant-v5", ant_termination),
    "halfcheetah": ("HalfCheetah-v5", None),
    "hopper": ("Hopper-v5", hopper_termination),
    "humanoid": ("Humanoid-v5", humanoid_termination),
    "humanoidstandup": ("HumanoidStandup-v5", None),
    "inverted_double_pendulum": ("InvertedDoublePendulum-v5", inverted_double_pendulum_termination),
    "inverted_pendulum": ("InvertedPendulum-v5", inverted_pendulum_termination),
    "pusher": ("Pusher-v5", None),
    "reacher": ("Reacher-v5", None),
    "swimmer": ("Swimmer-v5", None),
    "walker2d": ("Walker2d-v5", walker2d_termination),
}
GYM_IDS = {env_id: name for name, (env_id, _) in GYM_TASKS.items()}  # "Hopper-v5" -> "hopper"
# dm-control suite tasks do not terminate (lqr's would, once its state's norm fell under 1e-6: not met
# in practice, so no termination function); episodes end on the time limit (1000 steps; the lqr tasks
# have none, and end after as many here, or after max_episode_steps)
DMC_EPISODE_STEPS = 1000
NEEDS_RENDERING = {"dmc/quadruped-escape"}  # resets upload a heightfield through an OpenGL context
# gymnasium arguments that change when a task terminates or what its observation holds: its
# termination function (what the planners imagine) reads the defaults, so these are refused
TERMINATION_ARGS = ("terminate_when_unhealthy", "healthy_z_range", "healthy_angle_range", "healthy_state_range",
                    "exclude_current_positions_from_observation")  # fmt: skip
# TorchRL's GymEnv/DMControlEnv keyword arguments that never reach the simulator (frame_skip becomes TorchRL's
# own action repeat, unknown to TaskSpec's episode length): refused in backend_kwargs
TORCHRL_WRAPPER_ARGS = ("frame_skip", "from_pixels", "pixels_only", "categorical_action_encoding")


@functools.cache
def dmc_tasks() -> tuple[str, ...]:
    """Every dm-control suite task (state observations) as dmc/<domain>-<task>."""
    from dm_control import suite

    return tuple(f"dmc/{domain}-{task}" for domain, task in suite.ALL_TASKS)


def task_names() -> list[str]:
    """Every name `make_env` accepts (besides the gymnasium ids, e.g. Hopper-v5, of the short names)."""
    return sorted(GYM_TASKS) + list(dmc_tasks())


def canonical_task_name(name: str) -> str:
    """A task's one name: a gymnasium id (Hopper-v5) becomes its short name (hopper)."""
    return GYM_IDS.get(name, name)


def task_defaults(name: str) -> dict:
    """The run command's settings for a task (its env=<name> config): dm-control tasks repeat each
    action twice, as TD-MPC2 does (500 decisions per 1000-step episode); gymnasium tasks do not."""
    check_task_name(name)
    name = canonical_task_name(name)
    return {"name": name, "action_repeat": 2 if name.startswith("dmc/") else 1, "max_episode_steps": None}


@dataclass(frozen=True)
class TaskSpec:
    """What a model and a planner need to know about a task."""

    name: str
    obs_dim: int
    act_dim: int
    action_low: Tensor  # [A]
    action_high: Tensor  # [A]
    max_episode_steps: int  # agent decisions per episode (after action repeat)
    termination_fn: TerminationFn | None  # None: the task never terminates


def check_task_name(name: str) -> None:
    """Raise a ValueError naming the closest supported names, and listing them all, if `name`
    (a short name, a gymnasium id or dmc/<domain>-<task>) is not one of them."""
    if canonical_task_name(name) in GYM_TASKS or name in dmc_tasks():
        return
    known = task_names() + sorted(GYM_IDS)
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise ValueError(f"unknown env {name!r}{hint}; supported: {', '.join(task_names())} "
                     "(or a gymnasium id such as Hopper-v5)")  # fmt: skip


def make_env(
    name: str,
    seed: int | None = 0,
    *,
    action_repeat: int = 1,
    max_episode_steps: int | None = None,
    device: str | torch.device = "cpu",
    **backend_kwargs,
):
    """Make a task by name, seeded, as a TorchRL env with `env.task_spec` attached.

    action_repeat: each action is applied that many times and the rewards summed, stopping at
    the sub-step that ends the episode (a fall, or a time limit that falls mid-decision).
    max_episode_steps: cap on agent decisions per episode, on top of the task's own limit.
    backend_kwargs go to gymnasium.make (e.g. reset_noise_scale=0.5) or dm-control's
    task_kwargs.
    """
    from torchrl.envs import (
        CatTensors,
        Compose,
        DMControlEnv,
        DoubleToFloat,
        FlattenObservation,
        GymEnv,
        StepCounter,
        TransformedEnv,
    )

    check_task_name(name)
    name = canonical_task_name(name)
    if name in NEEDS_RENDERING and os.environ.get("MUJOCO_GL") == "disable":
        raise ValueError(f"env {name} renders while it simulates (its terrain) and needs an OpenGL backend, but "
                         "MUJOCO_GL=disable (no display): install EGL or OSMesa and set MUJOCO_GL=egl or osmesa")  # fmt: skip
    if action_repeat < 1:
        raise ValueError(f"action_repeat must be >= 1, got {action_repeat}")
    if max_episode_steps is not None and (not isinstance(max_episode_steps, int) or max_episode_steps < 1):
        raise ValueError(f"max_episode_steps must be a whole number >= 1 or None, got {max_episode_steps!r}")
    if wrapper := sorted(set(backend_kwargs) & set(TORCHRL_WRAPPER_ARGS)):  # (TorchRL takes them, not the simulator)
        raise ValueError(f"env {name}: {wrapper} are TorchRL's wrapper arguments, not the simulator's (frame_skip "
                         "would repeat each action behind the episode length's back): use env.action_repeat")  # fmt: skip
    if GYM_TASKS.get(name, (None, None))[1] is not None and (changed := sorted(set(backend_kwargs) & set(TERMINATION_ARGS))):
        raise ValueError(f"env {name}: {changed} would change when it terminates or what it observes, but its "
                         "termination function (what the planners imagine) reads the task's defaults")  # fmt: skip
    transforms = []
    try:
        if name in GYM_TASKS:
            env_id, termination_fn = GYM_TASKS[name]
            base = GymEnv(env_id, device=device, **backend_kwargs)
            native_steps = base._env.spec.max_episode_steps
        else:
            domain, task = name.removeprefix("dmc/").split("-", 1)
            termination_fn = None
            base = DMControlEnv(domain, task, device=device, **backend_kwargs)
            native_steps = base._env._step_limit  # (simulator steps; inf for the lqr tasks)
    except TypeError as e:  # an unknown backend argument (e.g. a typo in +env.<key>=...)
        if not backend_kwargs:
            raise
        raise ValueError(f"env {name}: the simulator refused the arguments {sorted(backend_kwargs)}: {e}") from None
    if name not in GYM_TASKS:  # dm-control: its observation dict as one flat vector
        obs_keys = [k for k in base.observation_spec.keys() if k != "pixels"]
        for key in obs_keys:  # (matrix-shaped readings, e.g. manipulator's arm_pos [N, 2], flattened first)
            if len(base.observation_spec[key].shape) > 1:
                transforms.append(FlattenObservation(-2, -1, in_keys=[key]))
        transforms.append(CatTensors(in_keys=obs_keys, out_key="observation", del_keys=True))
    transforms.append(DoubleToFloat())
    if action_repeat > 1:
        transforms.append(_episode_aware_frame_skip()(action_repeat))
    if native_steps == float("inf"):  # (an episode that never ends would never reset the planner or be logged)
        max_episode_steps = max_episode_steps or -(-DMC_EPISODE_STEPS // action_repeat)
        native_steps = max_episode_steps * action_repeat  # (the cap is the whole limit: no native one under it)
    native_steps = int(native_steps)
    episode_steps = -(-native_steps // action_repeat)
    if max_episode_steps is not None:
        episode_steps = min(episode_steps, max_episode_steps)
        transforms.append(StepCounter(max_steps=max_episode_steps))
    env = TransformedEnv(base, Compose(*transforms))
    if seed is not None:
        env.set_seed(seed)
    action_box = env.action_spec.space
    env.task_spec = TaskSpec(
        name=name,
        obs_dim=env.observation_spec["observation"].shape[-1],
        act_dim=env.action_spec.shape[-1],
        action_low=action_box.low.float().cpu(),
        action_high=action_box.high.float().cpu(),
        max_episode_steps=episode_steps,
        termination_fn=termination_fn,
    )
    return env


def episode_random_state(env) -> dict:
    """The numpy random state `env` (made by `make_env`) draws its episodes' starts from, gymnasium's
    env's or dm-control's task's, as plain Python values for a checkpoint: a resumed run rebuilds
    its envs from the seed, and without this its evaluations would start where the first one did."""
    rng = _episode_rng(env)
    if isinstance(rng, np.random.Generator):
        return {"kind": "Generator", "state": rng.bit_generator.state}
    state = rng.get_state(legacy=False)
    return {"kind": "RandomState", "state": {**state, "state": {**state["state"], "key": state["state"]["key"].tolist()}}}


def set_episode_random_state(env, saved: dict) -> None:
    """Put back an `episode_random_state(env)` saved from an env of the same task."""
    rng, state = _episode_rng(env), saved["state"]
    if saved["kind"] != type(rng).__name__:
        raise ValueError(f"a saved episode random state of a {saved['kind']} does not fit this task's {type(rng).__name__}")
    if isinstance(rng, np.random.Generator):
        rng.bit_generator.state = state
    else:
        rng.set_state({**state, "state": {**state["state"], "key": np.asarray(state["state"]["key"], dtype=np.uint32)}})


def _episode_rng(env) -> np.random.Generator | np.random.RandomState:
    inner = env.base_env._env  # (gymnasium's env with its wrappers, or dm-control's Environment)
    task = getattr(inner, "task", None)
    return task.random if task is not None else inner.unwrapped.np_random


@functools.cache
def _episode_aware_frame_skip() -> type:
    """TorchRL's FrameSkipTransform (an action applied `frame_skip` times, rewards summed) that
    stops at the sub-step that ends the episode: the rest would step a terminated task on, or a
    dm-control task past its time limit (which silently resets it), and lose the end. One env, no batch."""
    from torchrl.envs import FrameSkipTransform

    class EpisodeAwareFrameSkip(FrameSkipTransform):
        def _step(self, tensordict, next_tensordict):
            reward_key = self.parent.reward_key
            reward = next_tensordict.get(reward_key)
            for _ in range(self.frame_skip - 1):
                if next_tensordict.get("done").any():
                    break
                next_tensordict = self.parent._step(tensordict)
                reward = reward + next_tensordict.get(reward_key)
            return next_tensordict.set(reward_key, reward)

    return EpisodeAwareFrameSkip
