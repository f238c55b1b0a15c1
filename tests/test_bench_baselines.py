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


@pytest.mark.filterwarnings("ignore:planning with a model that was never fitted")
def test_mbrl_pets_does_the_work_of_our_pets_size_cem(cheetah, monkeypatch):
    """Equal work: a forward of the model per horizon step and CEM iteration, each over every
    candidate's particles, through members of our model's shape; as many elites as ours."""
    pytest.importorskip("mbrl")
    from mbrl.models import GaussianMLP

    from planners import CEM, CEMConfig

    spec, model = cheetah
    shapes, rows = [], []
    forward = GaussianMLP._default_forward

    def counted(self, x, *args, **kwargs):
        shapes.append([tuple(layer[0].weight.shape) for layer in self.hidden_layers] + [tuple(self.mean_and_logvar.weight.shape)])
        rows.append(x.shape[0] * x.shape[1])  # [members, rows per member, in]
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(GaussianMLP, "_default_forward", counted)
    mbrl_pets(model, spec, horizon=3, candidates=20, num_elites=4, iterations=2, particles=5)(torch.randn(spec.obs_dim))
    assert rows == [20 * 5] * (2 * 3)
    ours = [tuple(w.shape) for w in model.weights]  # [E, in, out] each
    assert shapes[0] == [(model.num_elites, i, o) for _, i, o in ours]
    steps = []
    step = model.step
    monkeypatch.setattr(model, "step", lambda obs, *a, **k: steps.append(obs.shape[0]) or step(obs, *a, **k))
    CEM(model, spec, CEMConfig(horizon=3, candidates=20, num_elites=4, iterations=2, particles=5,
                               value_learning=False, seed=0)).act(torch.randn(spec.obs_dim))  # fmt: skip
    assert steps == rows


def test_mbrl_pets_refuses_rows_that_do_not_split_among_its_members(cheetah):
    pytest.importorskip("mbrl")
    spec, model = cheetah  # (5 elites)
    with pytest.raises(ValueError, match="must divide evenly"):
        mbrl_pets(model, spec, horizon=3, candidates=21, num_elites=4, iterations=2, particles=1)


def test_mbrl_pets_is_left_out_where_mbrl_lib_is_missing(cheetah, monkeypatch):
    monkeypatch.setitem(sys.modules, "mbrl", None)  # (import mbrl... raises ImportError)
    monkeypatch.setitem(sys.modules, "mbrl.models", None)
    spec, model = cheetah
    assert mbrl_pets(model, spec, horizon=3, candidates=20, num_elites=4, iterations=2, particles=5) is None


def test_a_bf16_floor_charges_the_gaussian_head_at_the_fp32_peak_on_a_cpu():
    """On a CPU only the hidden layers run on bf16 operands (kernels.reference keeps the head in
    fp32): the floor charges the head at the fp32 peak; on a GPU every layer is bf16."""
    from planners.bench import _model_floor_ms
    from worldmodel import EnsembleDynamics

    model = EnsembleDynamics(17, 6)  # 23 -> 200 x 4 -> 36
    hidden, head = 2 * (23 * 200 + 3 * 200 * 200), 2 * 200 * 36
    assert _model_floor_ms(model, "fp32", 100.0, 400.0, "cpu") == pytest.approx((hidden + head) / 100e6)
    assert _model_floor_ms(model, "bf16", 100.0, 400.0, "cpu") == pytest.approx(hidden / 400e6 + head / 100e6)
    assert _model_floor_ms(model, "bf16", 100.0, 400.0, "cuda") == pytest.approx((hidden + head) / 400e6)
