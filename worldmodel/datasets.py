"""Offline datasets: the D4RL HDF5 layout and Minari's, D4RL-normalised scores, and the `make` command.

    python -m worldmodel.datasets make env=hopper quality=medium-replay out=data/hopper-medium-replay.hdf5

The public D4RL/Minari files cannot be downloaded here, so `make` builds them by D4RL's
recipe (random, medium, expert, medium-replay, medium-expert; see planners.behaviour).
Both layouts read into transitions (see worldmodel.transitions); anything malformed is an
error naming the file and the field, and nothing is silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict

from worldmodel.checkpoint import CheckpointError, atomic_write
from worldmodel.envs import canonical_task_name
from worldmodel.transitions import validate_transitions

# D4RL's reference returns (random, expert) for its normalised score. gymnasium v5 tasks
# differ from the gym v3 tasks (mujoco-py) D4RL used, so compare with published tables with care.
REFERENCE_RETURNS = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
}
QUALITIES = ("random", "medium", "expert", "medium-replay", "medium-expert")
_D4RL_KEYS = {"observations": "obs", "actions": "action", "rewards": "reward",
              "next_observations": "next_obs", "terminals": "terminated", "timeouts": "truncated"}  # fmt: skip


class DatasetError(ValueError):
    """A dataset file is missing, corrupt, truncated or does not match the task."""


def normalized_score(task: str, episode_return: float, env: Mapping | None = None) -> float | None:
    """D4RL's 100 * (R - random) / (expert - random), or None for tasks without reference returns,
    or whose env settings (`env`: a config's env node) are not the references' (1000-step episodes,
    no action repeat)."""
    standard = env is None or (env.get("max_episode_steps") in (None, 1000) and env.get("action_repeat", 1) == 1)
    if task not in REFERENCE_RETURNS or not standard:
        return None
    low, high = REFERENCE_RETURNS[task]
    return 100.0 * (episode_return - low) / (high - low)


_FINGERPRINT_KEYS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")


def fingerprint(data: TensorDict) -> str:
    """The transitions' identity: the first 16 hex digits of a SHA-256 over the shapes of obs,
    action, reward, next_obs, terminated, truncated and their values (as float32 and bool). Two files with one
    fingerprint hold the same transitions, whatever their layout; runs compare across machines
    only on the same fingerprint (the `make` recipe gives other data on another kind of CPU)."""
    digest = hashlib.sha256(repr([tuple(data[k].shape) for k in _FINGERPRINT_KEYS]).encode())
    for key in ("obs", "action", "reward", "next_obs"):
        digest.update(data[key].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    for key in ("terminated", "truncated"):
        digest.update(data[key].detach().to("cpu", torch.bool).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------- writing


def offline_presets() -> dict[str, dict[str, dict]]:
    """configs/offline.yaml: {planner: {<task>-<quality>: {setting: value}}}."""
    from omegaconf import OmegaConf

    from worldmodel.config import CONFIG_DIR

    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "offline.yaml"))


def offline_settings(metadata: dict, planner: str, preset: str | None = None) -> dict:
    """The planner settings configs/offline.yaml gives a dataset for `planner`: by `preset`
    (<task>-<quality>, e.g. hopper-medium) or else the metadata's env and quality; {} where it
    gives none. An unknown preset is a ValueError listing the known ones."""
    table = offline_presets()
    if preset is not None:
        known = sorted({name for rows in table.values() for name in rows})
        if preset not in known:
            raise ValueError(f"offline.preset={preset} is not in configs/offline.yaml; known: {', '.join(known)}")
    name = preset or f"{metadata.get('env')}-{metadata.get('quality')}"
    return dict((table.get(planner) or {}).get(name) or {})


def save_d4rl(path: str | os.PathLike, data: TensorDict, metadata: dict | None = None) -> None:
    """Write transitions in D4RL's layout (observations, actions, rewards, next_observations,
    terminals, timeouts; metadata as 'metadata/...' attributes), atomically."""
    data = validate_transitions(data)
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
        for d4rl_key, key in _D4RL_KEYS.items():
            f.create_dataset(d4rl_key, data=data[key].numpy(), compression="gzip", compression_opts=1)
        for key, value in (metadata or {}).items():
            f.attrs[f"metadata/{key}"] = value if isinstance(value, (int, float, str)) else json.dumps(value)


def save_minari(path: str | os.PathLike, data: TensorDict, metadata: dict | None = None) -> None:
    """Write transitions in Minari's layout: <path>/data/main_data.hdf5 with one group per episode
    (observations [T+1], actions, rewards, terminations, truncations [T]) and <path>/data/metadata.json.

    Episodes end at a terminal or time-out flag, or where next_obs does not lead on to the next obs.
    """
    data = validate_transitions(data)
    root = Path(path)
    (root / "data").mkdir(parents=True, exist_ok=True)
    ends = episode_ends(data)
    start = 0
    with atomic_write(root / "data" / "main_data.hdf5") as tmp, h5py.File(tmp, "w") as f:
        for i, end in enumerate(ends.tolist()):
            ep = data[start:end + 1]
            group = f.create_group(f"episode_{i}")
            group.attrs["id"], group.attrs["total_steps"] = i, len(ep)
            group.create_dataset("observations", data=torch.cat([ep["obs"], ep["next_obs"][-1:]]).numpy())
            group.create_dataset("actions", data=ep["action"].numpy())
            group.create_dataset("rewards", data=ep["reward"].numpy())
            group.create_dataset("terminations", data=ep["terminated"].numpy())
            group.create_dataset("truncations", data=ep["truncated"].numpy())
            start = end + 1
        f.attrs["total_episodes"], f.attrs["total_steps"] = len(ends), len(data)
    meta = {"total_episodes": len(ends), "total_steps": len(data), "data_format": "hdf5", **(metadata or {})}
    if "env" in meta and "quality" in meta:  # Minari's id syntax: namespace/env/name-vN
        meta.setdefault("dataset_id", f"worldmodel/{meta['env'].replace('/', '-')}/{meta['quality']}-v0")
    with atomic_write(root / "data" / "metadata.json") as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=2))


def episode_ends(data: TensorDict) -> torch.Tensor:
    """Row indices where an episode ends: a terminal or time-out flag, a break in continuity
    (next_obs != the next row's obs), and the last row."""
    flagged = data["terminated"] | data["truncated"]
    broken = torch.zeros_like(flagged)
    broken[:-1] = (data["next_obs"][:-1] != data["obs"][1:]).any(-1)
    flagged[-1] = True
    return (flagged | broken).nonzero().squeeze(-1)


# ---------------------------------------------------------------------- reading


def dynamics_args(env: Mapping) -> dict:
    """The settings of an env config ({name, action_repeat, max_episode_steps, backend arguments})
    that change a task's transitions: the action repeat and the backend's arguments (not the
    episode cap); action_repeat 1 where unset."""
    args = OmegaConf.to_container(env, resolve=True) if isinstance(env, DictConfig) else dict(env)
    return {"action_repeat": 1, **{k: v for k, v in args.items() if k not in ("name", "max_episode_steps")}}


def read_metadata(path: str | os.PathLike) -> dict:
    """A dataset's metadata alone (task, quality, ...: what `make` recorded), its transitions unread."""
    path = _main_file(path)
    return _read(path, _d4rl_metadata, lambda f: _minari_metadata(f, path))


def _main_file(path: str | os.PathLike) -> Path:
    """A dataset's HDF5 file (a Minari directory's main_data.hdf5); DatasetError saying how to make one."""
    path = Path(path)
    if path.is_dir():
        path = path / "data" / "main_data.hdf5"
    if not path.is_file():
        raise DatasetError(f"dataset {path} does not exist; make one with "
                           f"`python -m worldmodel.datasets make env=<task> quality=<quality> out=<file>`")  # fmt: skip
    return path


def _read(path: Path, d4rl, minari):
    """d4rl(f) or minari(f) by the file's layout; DatasetError for any other file."""
    try:
        with h5py.File(path, "r") as f:
            if "observations" in f:
                return d4rl(f)
            if any(k.startswith("episode_") for k in f):
                return minari(f)
            raise DatasetError(f"{path}: neither D4RL (observations, actions, ...) nor Minari (episode_*) layout; "
                               f"top-level keys: {sorted(f)[:10]}")  # fmt: skip
    except OSError as e:
        raise DatasetError(f"{path}: cannot read it as HDF5 (corrupt or truncated?): {e}") from None


def check_task(path: str | Path, metadata: Mapping, task: str) -> None:
    """A DatasetError where the dataset's metadata names a task other than `task`."""
    made_on = metadata.get("env")
    if made_on and canonical_task_name(str(made_on)) != canonical_task_name(task):
        raise DatasetError(f"{path} holds {made_on} transitions (its metadata), not {task}'s: give env={made_on}, "
                           f"or a dataset of {task}")  # fmt: skip


def load_dataset(path: str | os.PathLike, obs_dim: int | None = None, act_dim: int | None = None,
                 task: str | None = None, env: Mapping | None = None) -> tuple[TensorDict, dict]:  # fmt: skip
    """Read a D4RL-layout .hdf5 file or a Minari dataset (its directory, or its main_data.hdf5).

    Returns (transitions, metadata). Checks the dimensions against obs_dim/act_dim when given,
    and, given the `task` it is for, that the task its metadata names (if any) is that one
    (walker2d and halfcheetah data have the same dimensions); given the run's `env` config, that
    the data was collected with its dynamics_args (files from before they were recorded: action
    repeat 1, no arguments, as `make` collected then).
    """
    path = _main_file(path)
    data, metadata = _read(path, _read_d4rl, lambda f: _read_minari(f, path))
    if task is not None:
        check_task(path, metadata, task)  # (before the shapes: another task's data is named as such)
    try:
        data = validate_transitions(data, obs_dim, act_dim)
    except ValueError as e:
        raise DatasetError(f"{path}: {e}") from None
    if len(data) == 0:
        raise DatasetError(f"{path}: the dataset holds no transitions")
    made_on = metadata.get("env")
    if env is not None and made_on and (made := metadata.get("env_args", {"action_repeat": 1})) != dynamics_args(env):
        raise DatasetError(f"{path} was collected with {made}, but this command steps the task with "
                           f"{dynamics_args(env)}: a model of one would plan in the other; give a new run the data's "
                           f"settings (env.action_repeat=..., env.<argument>=...), or make data with these")  # fmt: skip
    if "fingerprint" in metadata and metadata["fingerprint"] != fingerprint(data):
        raise DatasetError(f"{path}: its transitions are not the ones `make` wrote (fingerprint {fingerprint(data)}, "
                           f"recorded {metadata['fingerprint']}): the file was changed or damaged; make it again, "
                           "or if it was changed on purpose, save it without the old metadata's fingerprint")  # fmt: skip
    return data, metadata


def _read_d4rl(f: h5py.File) -> tuple[TensorDict, dict]:
    if missing := [k for k in _D4RL_KEYS if k not in f]:
        raise DatasetError(f"{f.filename}: D4RL layout lacks {missing} (needs {list(_D4RL_KEYS)})")
    arrays = {key: _array(f, d4rl_key, f.filename) for d4rl_key, key in _D4RL_KEYS.items()}
    lengths = {key: len(a) for key, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise DatasetError(f"{f.filename}: fields have different lengths {lengths} (truncated file?)")
    return _transitions(arrays, f.filename), _d4rl_metadata(f)


def _d4rl_metadata(f: h5py.File) -> dict:
    return {k.removeprefix("metadata/"): _attr(v) for k, v in f.attrs.items()}


def _read_minari(f: h5py.File, path: Path) -> tuple[TensorDict, dict]:
    episodes = []
    names = [k for k in f if k.startswith("episode_")]
    if bad := [k for k in names if not k.removeprefix("episode_").isdigit()]:
        raise DatasetError(f"{path}: {bad[:3]} are not Minari episode groups (episode_<number>)")
    for name in sorted(names, key=lambda k: int(k.removeprefix("episode_"))):
        g = f[name]
        if missing := [k for k in ("observations", "actions", "rewards", "terminations", "truncations") if k not in g]:
            raise DatasetError(f"{path}: {name} lacks {missing}")
        obs, action = _array(g, "observations", str(path)), _array(g, "actions", str(path))
        if len(obs) != len(action) + 1:
            raise DatasetError(f"{path}: {name} has {len(obs)} observations for {len(action)} actions (needs one more)")
        steps = {key: _array(g, key, str(path)) for key in ("rewards", "terminations", "truncations")}
        if wrong := {key: len(a) for key, a in steps.items() if len(a) != len(action)}:
            raise DatasetError(f"{path}: {name} has {len(action)} actions but {wrong} (one of each per action)")
        episodes.append(_transitions({
            "obs": obs[:-1], "next_obs": obs[1:], "action": action, "reward": steps["rewards"],
            "terminated": steps["terminations"], "truncated": steps["truncations"],
        }, f"{path}: {name}"))  # fmt: skip
    return torch.cat(episodes), _minari_metadata(f, path)


def _minari_metadata(f: h5py.File, path: Path) -> dict:
    meta_file = path.parent / "metadata.json"
    try:
        metadata = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    except json.JSONDecodeError as e:
        raise DatasetError(f"{meta_file} (the dataset's metadata beside {path.name}) is not JSON: {e}") from e
    metadata.update({k: _attr(v) for k, v in f.attrs.items()})
    return metadata


def _transitions(arrays: dict, source: str) -> TensorDict:
    """Raw arrays to a transitions TensorDict: floats as float32, flags (bool or 0/1) as bool;
    DatasetError naming `source` and the field for any other dtype or flag value."""
    out = {}
    for key, value in arrays.items():
        if key in ("terminated", "truncated"):
            if value.dtype != torch.bool and not ((value == 0) | (value == 1)).all():
                raise DatasetError(f"{source}: {key} holds values other than 0 and 1 (flags: bool or 0/1)")
            out[key] = value.bool()
        elif not value.is_floating_point():
            raise DatasetError(f"{source}: {key} is {value.dtype}, not floating point (a D4RL file stores float32)")
        else:
            out[key] = value.float()
    return TensorDict(out, batch_size=[len(out["obs"])])


def _array(f: h5py.File | h5py.Group, key: str, source: str) -> torch.Tensor:
    """f[key] as a tensor; DatasetError where it is a group (Minari's dict observations), not an array."""
    if not isinstance(f[key], h5py.Dataset):
        raise DatasetError(f"{source}: {f[key].name} is a group, not an array (dict observations are not supported: "
                           "flatten them into one array)")
    return torch.as_tensor(np.asarray(f[key]))


def _attr(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


# ---------------------------------------------------------------------- the command


def main(argv: list[str] | None = None) -> dict:
    """`make env=<task> quality=<quality> out=<file>` (Hydra-style overrides of configs/datasets.yaml)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        argv = ["make", "--help"]
    if not argv or argv[0] != "make":
        raise SystemExit("usage: python -m worldmodel.datasets make env=<task> quality=<"
                         + "|".join(QUALITIES) + "> out=<file.hdf5 or minari dir> [size=N seed=S ...]")
    from planners.behaviour import make_dataset  # the command wires the behaviour agents (as run.py does)
    from worldmodel.config import check_counts, compose_config
    from worldmodel.envs import check_task_name
    from worldmodel.threads import set_threads

    cfg = compose_config("datasets", argv[1:], __doc__)
    try:
        check_task_name(cfg.env.name)
        if cfg.quality not in QUALITIES:
            raise ValueError(f"unknown quality {cfg.quality!r}; choose from {list(QUALITIES)}")
        if not cfg.out:
            raise ValueError("give the output file: out=<path>.hdf5 (D4RL layout) or out=<dir> with format=minari")
        if cfg.format not in ("d4rl", "minari"):
            raise ValueError(f"unknown format {cfg.format!r}; choose d4rl (one .hdf5 file) or minari (a directory)")
        if cfg.format == "d4rl" and Path(cfg.out).is_dir():
            raise ValueError(f"out={cfg.out} is a directory: give a file (out=<path>.hdf5), or format=minari to write "
                             "a Minari dataset directory")  # fmt: skip
        if cfg.format == "minari" and Path(cfg.out).is_file():
            raise ValueError(f"out={cfg.out} is a file: format=minari writes a directory; give a new path")
        check_counts(cfg, {"seed": 0, "size": 1, "behaviour.max_steps": 1, "behaviour.start_steps": 0,
                           "behaviour.eval_every": 1, "behaviour.eval_episodes": 1})  # (before a behaviour agent trains for hours)
        set_threads(cfg.threads)
        return make_dataset(cfg)
    except (ValueError, DatasetError, CheckpointError, FloatingPointError) as e:  # (a policy= file; a diverged behaviour agent)
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
