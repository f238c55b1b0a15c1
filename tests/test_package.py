"""The worldmodel package's names load on first use: every exported name resolves to its module's
object, submodules are reachable as attributes, and a command that needs few of them (the report)
does not import tensordict and torch's compiler stack on the way."""

import subprocess
import sys

import pytest


def test_every_exported_name_is_its_module_s_object_and_submodules_are_attributes():
    """Each name is its home module's object, also where that module was imported first and has
    the same name (worldmodel.collect, the module of the function collect)."""
    import importlib

    import worldmodel.envs
    import worldmodel.transition_log
    from worldmodel import _HOMES

    for home in _HOMES.values():
        importlib.import_module(home)
    for name in worldmodel.__all__:
        assert getattr(worldmodel, name) is getattr(importlib.import_module(_HOMES[name]), name), name
    from worldmodel import collect

    assert callable(collect) and collect.__module__ == "worldmodel.collect"
    assert worldmodel.TransitionLog is worldmodel.transition_log.TransitionLog
    assert worldmodel.task_names is worldmodel.envs.task_names
    assert "EnsembleDynamics" in dir(worldmodel)
    with pytest.raises(AttributeError, match="no attribute 'EnsembleDynamic'"):
        worldmodel.EnsembleDynamic  # noqa: B018


def test_the_report_command_does_not_import_tensordict():
    code = "import sys, worldmodel.report; print(sorted(m for m in ('tensordict', 'torch._dynamo') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
