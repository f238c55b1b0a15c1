"""The other libraries' planners that `python -m planners.bench` compares with run at the work asked."""

import sys

import pytest
import torch

from planners.bench import mbrl_pets
from worldmodel.ensemble import EnsembleDynamics
from worldmodel.envs import make_env


@pytest.fixture(scope="module")
def cheetah():
    spec = make_env("halfcheetah").task_spec
    return spec, EnsembleDynamics(spec.obs_dim, spec.act_dim)


def test_mbrl_pets_plans_an_action_in_the_box(cheetah):
    """mbrl-lib's PETS step (installed by hand: pip install --no-deps mbrl==0.2.0 termcolor)."""
    pytest.importorskip("mbrl")
    spec, model = cheetah
    act = mbrl_pets(model, spec, horizon=3, candidates=20, num_elites=4, iterations=2, particles=5)
    action = torch.as_tensor(act(torch.randn(spec.obs_dim)))
    assert action.shape == (spec.act_dim,) and torch.isfinite(action).all()
    assert (action >= spec.action_low).all() and (action <= spec.action_high).all()


def test_mbrl_pets_is_left_out_where_mbrl_lib_is_missing(cheetah, monkeypatch):
    monkeypatch.setitem(sys.modules, "mbrl", None)  # (import mbrl... raises ImportError)
    monkeypatch.setitem(sys.modules, "mbrl.models", None)
    spec, model = cheetah
    assert mbrl_pets(model, spec, horizon=3, candidates=20, num_elites=4, iterations=2, particles=5) is None
