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


@pytest.mark.slow
def test_a_warm_refit_learns_a_new_region_with_beta_nll_where_the_plain_nll_gives_up():
    """Fit on random hopper steps, then refit on those plus correlated-noise steps (a region the
    first data barely covers), as online learning does: with the plain NLL the refit raises the
    variance on the new rows instead of fitting them, and ends no better than it started; with
    the refits' beta-NLL (Agent.refit_settings) it fits them."""
    import copy

    import torch

    spec, data = random_and_perturbed("hopper", 1000, seed=0)  # 1000 uniform, then 1000 correlated
    _, test = random_and_perturbed("hopper", 1000, seed=100)
    new_region = test[1000:]
    torch.manual_seed(0)
    start = EnsembleDynamics(spec.obs_dim, spec.act_dim)
    start.fit(data[:1000], max_epochs=60, progress=False)
    before = start.evaluate(new_region)["mse"]
    after = {}
    for beta in (0.0, 0.5):
        model = copy.deepcopy(start)
        torch.manual_seed(1)
        model.fit(data, max_epochs=10, beta=beta, progress=False)
        after[beta] = model.evaluate(new_region)["mse"]
    print(f"new-region MSE: {before:.4f} before, {after[0.0]:.4f} after a plain-NLL refit, {after[0.5]:.4f} with beta 0.5")
    assert after[0.5] < 0.8 * before
    assert after[0.5] < 0.8 * after[0.0]
