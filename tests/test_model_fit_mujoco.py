"""The real fit: an ensemble trained on MuJoCo transitions explains held-out dynamics, calibrated."""

import pytest

from worldmodel import EnsembleDynamics
from worldmodel.fit_model import random_and_perturbed


@pytest.mark.parametrize("name", ["halfcheetah", "hopper"])
def test_default_ensemble_explains_held_out_mujoco_dynamics(name):
    spec, train = random_and_perturbed(name, 5000, seed=0)
    _, holdout = random_and_perturbed(name, 1000, seed=100)  # fresh episodes, never trained on
    model = EnsembleDynamics(spec.obs_dim, spec.act_dim, termination_fn=spec.termination_fn)
    model.fit(train, max_epochs=60, progress=False)
    report = model.evaluate(holdout)
    print(name, {k: round(v, 3) for k, v in report.items() if k != "r2_per_dim"})
    assert report["r2_delta"] >= 0.9
    assert 0.5 <= report["calibration"] <= 2.0
