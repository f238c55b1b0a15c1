"""worldmodel: a probabilistic ensemble dynamics model, the data it learns from, and the tasks it models.

The names below load on first use (PEP 562), so a command that needs few of them (`python -m
worldmodel.report`, a typo's error) does not pay for torch's compiler stack, which tensordict imports.
"""

import importlib
import importlib.util
import sys
import types

_HOMES = {
    "CheckpointError": "worldmodel.checkpoint",
    "EnsembleDynamics": "worldmodel.ensemble",
    "MEASURES": "worldmodel.uncertainty",
    "ReplayBuffer": "worldmodel.replay",
    "TaskSpec": "worldmodel.envs",
    "TransitionLog": "worldmodel.transition_log",
    "Uncertainty": "worldmodel.uncertainty",
    "collect": "worldmodel.collect",
    "correlated_noise_policy": "worldmodel.collect",
    "make_env": "worldmodel.envs",
    "set_threads": "worldmodel.threads",
    "task_names": "worldmodel.envs",
    "uniform_policy": "worldmodel.collect",
    "validate_transitions": "worldmodel.transitions",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    """A name above from its module, or a submodule (`import worldmodel; worldmodel.envs.task_names()`)."""
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'worldmodel' has no attribute {name!r}")
    globals()[name] = value  # (once: later lookups skip this function)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


class _Package(types.ModuleType):
    """Keeps an exported name bound to its object when the import system binds the submodule it
    comes from under the same name (`worldmodel.collect`, the module of `collect`, the function),
    as the package's eager imports did: a module imported first no longer shadows the function."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _HOMES.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
