"""Configs from configs/ with Hydra-style key=value overrides, checked before any work, and the run
directory they are saved in.

Defaults have one home, the code: the `env/<task>` options come from `worldmodel.envs`, the
`model/ensemble` option from `EnsembleDynamics` and its `fit` signature, and the run command
passes the planners' options from their config dataclasses, so the API and the command line
cannot disagree.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

try:  # configs/ of the checkout (editable install), or the wheel's copy
    CONFIG_DIR = Path(str(resources.files("worldmodel.configs")))
except ModuleNotFoundError:  # the checkout on PYTHONPATH, or an editable install made before configs shipped
    CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

# a field: (default, annotation as written); the annotation says whether None is allowed
Fields = Mapping[str, tuple[Any, str]]


def store_group(group: str, options: Mapping[str, Mapping]) -> None:
    """Register config group options generated from code (e.g. planner=mppi) with Hydra; an
    option name may hold a folder (env=dmc/cartpole-swingup), its keys stay under `group`."""
    from hydra.core.config_store import ConfigStore

    for name, node in options.items():
        folder, _, leaf = name.rpartition("/")
        ConfigStore.instance().store(group=f"{group}/{folder}" if folder else group, name=leaf,
                                     node=dict(node), package=group)  # fmt: skip


def dataclass_fields(cls: type) -> dict[str, tuple[Any, str]]:
    """A config dataclass's fields as {name: (default, annotation)}."""
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[f.name] = (default, str(f.type))
    return out


def signature_fields(fn: Callable, skip: Iterable[str] = ()) -> dict[str, tuple[Any, str]]:
    """A function's keyword arguments with defaults as {name: (default, annotation)}."""
    params = inspect.signature(fn).parameters.values()
    return {p.name: (p.default, str(p.annotation)) for p in params
            if p.default is not inspect.Parameter.empty and p.name not in skip}  # fmt: skip


def check_settings(where: str, settings: Mapping, fields: Fields) -> None:
    """ValueError naming `where.key` for a setting that is not a field or not of its field's type
    (that of its default or annotation: an int where a float goes is fine; None only where allowed)."""
    for key, value in settings.items():
        if key not in fields:
            raise ValueError(f"unknown setting {where}.{key}; valid: {', '.join(sorted(fields))}")
        default, annotation = fields[key]
        if value is None:
            if default is not None and "None" not in annotation:
                raise ValueError(f"{where}.{key} cannot be null (default {default!r})")
            continue
        want = _kind(default, annotation)
        if want is not None and not _is_kind(value, want):
            raise ValueError(f"{where}.{key} must be {want}, got {value!r} ({type(value).__name__})")


def _kind(default: Any, annotation: str) -> str | None:
    if default is not None:
        for kind, types in (("a bool", bool), ("an int", int), ("a number", float), ("a string", str)):
            if isinstance(default, types):
                return kind
        return "a list" if isinstance(default, (list, tuple, ListConfig)) else (
            "a mapping" if isinstance(default, (Mapping, DictConfig)) else None)  # fmt: skip
    head = annotation.split("|")[0].strip().split("[")[0]
    kinds = {"int": "an int", "float": "a number", "str": "a string", "bool": "a bool", "list": "a list", "Sequence": "a list"}
    return kinds.get(head)


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "a bool":
        return isinstance(value, bool)
    if kind == "an int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "a number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "a string":
        return isinstance(value, str)
    if kind == "a list":
        return isinstance(value, (list, tuple, ListConfig))
    return isinstance(value, (Mapping, DictConfig))


def check_device(device: str) -> None:
    """A torch device this machine has (cpu, cuda, cuda:N); a ValueError that says what to give otherwise."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device} is not a device name (cpu, cuda, cuda:1): {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device}, but no CUDA device is available (this torch {torch.__version__} "
                         f"{'has no CUDA support' if torch.version.cuda is None else 'sees no GPU'}): use device=cpu")  # fmt: skip
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device}, but there are {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device}: only cpu and cuda are supported")


def check_counts(cfg: DictConfig, counts: Mapping[str, int], nullable: Mapping[str, int] | None = None) -> None:
    """Each dotted key of `counts` a whole number >= its value (or null, for the keys of `nullable`):
    a ValueError naming the first that is not."""
    for key, low in {**counts, **(nullable or {})}.items():
        value = OmegaConf.select(cfg, key)
        if value is None and nullable and key in nullable:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            null = " or null" if nullable and key in nullable else ""
            raise ValueError(f"{key} must be a whole number >= {low}{null}, got {value!r}")


def check_paths(cfg: DictConfig, keys: Iterable[str]) -> None:
    """Each of these keys null or an existing file or directory: a ValueError naming the first that is not."""
    for key in keys:
        if cfg[key] is not None and not Path(cfg[key]).exists():
            raise ValueError(f"{key}={cfg[key]}: no such file or directory")


def check_model_settings(cfg: DictConfig) -> None:
    """cfg.model (EnsembleDynamics arguments), cfg.model.fit (the first fit's settings) and
    cfg.fit_beta (the refits' beta), checked before any work: a ValueError naming the key."""
    from worldmodel.ensemble import EnsembleDynamics
    from worldmodel.fitting import FIT_RUNTIME_ARGS

    model = {k: v for k, v in cfg.model.items() if k != "fit"}
    check_settings("model", model, signature_fields(EnsembleDynamics.__init__, skip=("termination_fn",)))
    fit = OmegaConf.to_container(cfg.model.fit)
    check_settings("model.fit", fit, signature_fields(EnsembleDynamics.fit, skip=FIT_RUNTIME_ARGS))
    EnsembleDynamics.check_fit_settings(**fit)
    EnsembleDynamics.check_fit_settings(beta=cfg.fit_beta)


def generated_groups() -> dict[str, dict[str, dict]]:
    """The config group options generated from code: env/<task> and model/ensemble."""
    from worldmodel.ensemble import EnsembleDynamics
    from worldmodel.fitting import FIT_RUNTIME_ARGS
    from worldmodel.envs import GYM_IDS, task_defaults, task_names

    model = signature_fields(EnsembleDynamics.__init__, skip=("termination_fn",))
    fit = signature_fields(EnsembleDynamics.fit, skip=FIT_RUNTIME_ARGS)
    return {
        "env": {name: task_defaults(name) for name in [*task_names(), *GYM_IDS]},  # (ids: env=Hopper-v5)
        "model": {"ensemble": {**{k: d for k, (d, _) in model.items()}, "fit": {k: d for k, (d, _) in fit.items()}}},
    }


def compose_config(name: str, overrides: list[str], usage: str | None = None, open_keys: tuple[str, ...] = (),
                   groups: Mapping[str, Mapping[str, Mapping]] | None = None) -> DictConfig:  # fmt: skip
    """configs/<name>.yaml with its defaults and `key=value` overrides; `groups` adds generated
    config group options (beside env/ and model/). An unknown key, or a new `+key` outside
    `open_keys` (nodes whose keys their consumer checks, e.g. env's backend arguments), is a
    SystemExit that lists the valid keys.

    `-h`/`--help` prints `usage`, every key with its default (after the other overrides, e.g.
    planner=mopo) and the config groups' options, then exits.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    options = {**generated_groups(), **(groups or {})}
    for group, group_options in options.items():
        store_group(group, group_options)
    from worldmodel.envs import check_task_name

    for override in overrides:  # every task is an env option: an unknown one gets the full list
        if override.lstrip("+~").startswith(("hydra.run.", "hydra.job.chdir", "hydra.output_subdir")):
            raise SystemExit(f"error: {override.split('=')[0].lstrip('+~')} is not read here: Hydra composes the "
                             "config but places no files (run_dir= or out= says where they go)")  # fmt: skip
        if override.startswith("env="):
            try:
                check_task_name(override[4:])
            except ValueError as e:
                raise SystemExit(f"error: {e}") from None
    wants_help = "-h" in overrides or "--help" in overrides
    overrides = [o for o in overrides if o not in ("-h", "--help")]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        try:
            cfg = compose(config_name=name, overrides=overrides)
            if wants_help:
                print((usage or "").strip() + "\n\nkey=value overrides; the defaults (configs/" + name + ".yaml):\n")
                print(OmegaConf.to_yaml(cfg))
                print("config groups: " + "; ".join(f"{g}=" + "|".join(sorted(opts)) for g, opts in sorted(options.items())
                                                    if g in cfg))  # fmt: skip
                raise SystemExit(0)
            groups_only = [o for o in overrides if "=" in o and "." not in o.split("=")[0] and o[0] not in "+~"
                           and isinstance(cfg.get(o.split("=")[0]), DictConfig)]  # fmt: skip
            base = compose(config_name=name, overrides=groups_only)
        except (HydraException, OmegaConfBaseException) as e:
            message = str(e).split("\nConfig search path")[0]
            chosen = [o for o in overrides if o.split("=", 1)[0] in options]  # (planner=..., env=...)
            valid = lambda: list(flatten(compose(config_name=name, overrides=chosen)))  # noqa: E731  (those groups' keys)
            if "Could not override" in message:  # a key that is not there: a typo, most often
                raise SystemExit(_unknown_key(message.split("'")[1], valid(), name)) from None
            if "Available options" not in message:  # an unknown key rather than an unknown group option
                message += f"\nvalid keys for {name}: {', '.join(valid())}"
            raise SystemExit(f"error: {message}") from None
    known = set(flatten(base))
    for key in flatten(cfg):
        if key not in known and not key.startswith(tuple(f"{k}." for k in open_keys)):
            raise SystemExit(_unknown_key(key, known, name))
    check_finite(cfg)
    return cfg


def check_finite(cfg: DictConfig) -> None:
    """A SystemExit naming the first setting that is NaN or infinite (NaN passes every range check)."""
    for key, value in flatten(cfg).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise SystemExit(f"error: {key}={value}: settings are finite numbers (not nan or inf)")


def file_in_the_way(path: str | Path) -> Path | None:
    """The file at `path` or at its nearest existing parent, where a directory is to be made; else None."""
    there = next(p for p in (Path(path), *Path(path).parents) if p.exists())
    return None if there.is_dir() else there


def _unknown_key(key: str, known: Iterable[str], name: str) -> str:
    """One line: the unknown key, the nearest valid ones, where to see them all."""
    import difflib

    near = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.8)
    hint = f"did you mean {' or '.join(near)}?" if near else f"valid keys for {name}: {', '.join(sorted(known))}"
    return f"error: unknown key {key!r} (a typo?); {hint} (--help lists every key)"


def flatten(node: Mapping, prefix: str = "") -> dict[str, Any]:
    """A nested config (a DictConfig or a dict) as {dotted key: leaf value}; an empty mapping is a leaf."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_dir_for(cfg: DictConfig, kind: str, label: str) -> Path:
    """Where a run's files go: cfg.run_dir, or runs/<kind>/<label>-<time>-s<seed> (-2, -3, ... where
    that exists: a run begun in the same second with the same seed; two started at once still meet
    on one name, and the run directory lock refuses the second). Creates nothing."""
    if cfg.get("run_dir"):
        if (there := file_in_the_way(cfg.run_dir)) is not None:
            raise ValueError(f"run_dir={cfg.run_dir}: {there} is a file; give a directory (new, or a run's to resume)")
        return Path(cfg.run_dir)
    seed = f"-s{cfg.seed}" if cfg.get("seed") is not None else ""
    base = Path("runs") / kind / f"{label.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}{seed}"
    return next(p for p in (base.with_name(f"{base.name}-{i}") if i > 1 else base for i in itertools.count(1))
                if not p.exists())


def make_run_dir(cfg: DictConfig, kind: str, label: str) -> Path:
    """Create the run directory (see run_dir_for) and save the resolved config in it."""
    run_dir = run_dir_for(cfg, kind, label)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)
    return run_dir


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    """run_dir/config.yaml, the resolved config, written atomically."""
    from worldmodel.checkpoint import atomic_write

    with atomic_write(run_dir / "config.yaml") as tmp:
        Path(tmp).write_text(OmegaConf.to_yaml(cfg, resolve=True))


def pretrained_files(path: str | Path) -> tuple[Path, Path | None]:
    """(model.pt, the file with the learned agent or None) of `pretrained=`: a run directory (its
    checkpoint.pt, or a realtime run's agent.pt) or a model file."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.pt").is_file():
            raise ValueError(f"pretrained={path}: the directory has no model.pt (a run that fitted a model writes one)")
        return path / "model.pt", next((f for f in (path / "checkpoint.pt", path / "agent.pt") if f.is_file()), None)
    return path, None


# what a run is: a resumed run refuses another seed (its environments'), and a dataset or pretrained
# model given or taken away (one moved may be named again: the run checks its data's fingerprint, and
# its checkpoint holds the model); budgets, evaluation and checkpoint settings may change
KEPT_ON_RESUME = ("seed", "dataset", "pretrained")

# settings whose introduction changed what a run does: the value a config that predates the key ran
# with, by command (configs/<command>.yaml): a resumed run goes on with it, a report reads it so (an
# entry belongs here whenever a new key's default is not the old behaviour)
PREDATED = {
    "config": {"fit_beta": 0.0},  # plain-NLL refits before beta-NLL (98f913e)
    "realtime": {"fit_beta": 0.0, "worker": "thread",  # (367f35e: planning processes)
                 "refit_offline_ratio": None},  # whole-buffer refits before bounded ones (b57857a)
}


def _same_setting(key: str, given: Any, saved: Any) -> bool:
    """Whether a value given on resume keeps what the run is (a file, wherever it now lies, is kept)."""
    if key in ("dataset", "pretrained"):
        return (given is None) == (saved is None)
    return given == saved


def resumed_config(resume: str, argv: list[str], compose: Callable[[list[str]], DictConfig],
                   removed: tuple[str, ...] = (), open_keys: tuple[str, ...] = ("env",),
                   command: str = "config") -> DictConfig:  # fmt: skip
    """A run directory's saved config.yaml over today's defaults (`compose([planner=, env=])`, for
    runs saved by an older version, but PREDATED[command]'s keys where it predates them: what the run
    ran with; top-level keys in `removed`, settings that are gone, dropped),
    with the other `argv` overrides (e.g. a larger budget) on top; a SystemExit that says why if
    `resume` holds no config, it holds a key this version does not know, an override does not
    fit, or one changes what the run is (its planner, env or a KEPT_ON_RESUME setting).
    `open_keys`: nodes whose keys their consumer checks (compose_config's; env's backend
    arguments, given as +env.<key>= when the run began)."""
    saved_path = Path(resume) / "config.yaml"
    if not saved_path.is_file():
        raise SystemExit(f"error: cannot resume from {resume}: no config.yaml there (is it a run directory?)")
    saved = OmegaConf.load(saved_path)
    for key in removed:
        saved.pop(key, None)
    base = compose([f"planner={saved.planner.name}", f"env={saved.env.name}"])
    for key in open_keys:
        if key in base:
            OmegaConf.set_struct(base[key], False)
    try:
        cfg = OmegaConf.merge(base, saved)
    except Exception as e:
        raise SystemExit(f"error: cannot resume from {resume}: its config.yaml does not fit this version ({e}); "
                         "start a new run, or edit that file") from None
    OmegaConf.set_struct(cfg, True)
    absent = object()
    for key, value in PREDATED.get(command, {}).items():  # (not today's default: it would change the run midway)
        if OmegaConf.select(saved, key, default=absent) is absent:
            OmegaConf.update(cfg, key, value)
    overrides = [a for a in argv if not a.startswith(("resume=", "run_dir="))]
    from worldmodel.envs import canonical_task_name

    for group in ("planner", "env"):  # (the command the run began with, resume= added, names its groups again)
        given = [a.partition("=")[2] for a in overrides if a.partition("=")[0] in (group, f"{group}.name")]
        same = canonical_task_name if group == "env" else str  # (Hopper-v5 is hopper)
        if any(same(name) != cfg[group].name for name in given):
            raise SystemExit(f"error: {resume} is a {group}={cfg[group].name} run; a resumed run keeps its {group} "
                             f"({group}={given[-1]} given): start a new run with another run_dir for another one")
        overrides = [a for a in overrides if a.partition("=")[0] != group]
    saved = {key: cfg[key] for key in KEPT_ON_RESUME if key in cfg}
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except Exception as e:
        raise SystemExit(f"error: bad override for a resumed run: {e}") from None
    for key, was in saved.items():  # (given again as they were, or a file moved: no change)
        if not _same_setting(key, cfg[key], was):
            raise SystemExit(f"error: {resume} is a {key}={was} run; a resumed run keeps its {key} ({key}={cfg[key]} "
                             "given): start a new run with another run_dir for another one")  # fmt: skip
    check_finite(cfg)
    cfg.run_dir, cfg.resume = resume, resume
    return cfg
