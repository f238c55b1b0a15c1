"""EnsembleDynamics: shapes, sampling modes, fitting, bad input and checkpoints (small, fast models)."""

import math
from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict

from worldmodel import CheckpointError, EnsembleDynamics, ReplayBuffer, Uncertainty

O, A = 3, 2


def small_model(**kwargs) -> EnsembleDynamics:
    defaults = dict(ensemble_size=4, num_elites=2, hidden=32, layers=2)
    return EnsembleDynamics(O, A, **{**defaults, **kwargs})


def linear_system(n: int, noise: float = 0.05, seed: int = 0) -> TensorDict:
    """next_obs = obs + obs @ M + action @ N + noise; reward = -|obs|^2 + noise."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, O, generator=g)
    action = torch.rand(n, A, generator=g) * 2 - 1
    m = torch.tensor([[0.1, -0.2, 0.0], [0.3, 0.0, 0.1], [0.0, 0.2, -0.1]])
    nm = torch.tensor([[0.5, 0.0, -0.3], [0.0, 0.4, 0.2]])
    delta = obs @ m + action @ nm + noise * torch.randn(n, O, generator=g)
    reward = -(obs**2).sum(-1) + noise * torch.randn(n, generator=g)
    flags = torch.zeros(n, dtype=torch.bool)
    return TensorDict(
        {"obs": obs, "action": action, "reward": reward, "next_obs": obs + delta,
         "terminated": flags, "truncated": flags.clone()},
        batch_size=[n],
    )  # fmt: skip


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    model = small_model(hidden=64)
    metrics = model.fit(linear_system(3000), max_epochs=60, progress=False)
    return model, metrics


def test_predict_gives_every_member_in_original_units():
    """Normalisers far from the identity (large offsets, scales from 0.1 to 50): predict must
    standardise the inputs and map the standardised Gaussian back to original units."""
    torch.manual_seed(0)
    model = small_model()
    in_mean, in_std = torch.tensor([100.0, -20.0, 5.0, 3.0, -7.0]), torch.tensor([10.0, 0.5, 2.0, 4.0, 0.1])
    out_mean, out_std = torch.tensor([50.0, -3.0, 0.2, 400.0]), torch.tensor([20.0, 0.1, 3.0, 50.0])
    model.input_norm.fit(in_mean + in_std * torch.randn(5000, O + A))
    model.target_norm.fit(out_mean + out_std * torch.randn(5000, O + 1))
    in_mean, in_std = model.input_norm.mean.clone(), model.input_norm.std.clone()  # what the fit gave exactly
    out_mean, out_std = model.target_norm.mean.clone(), model.target_norm.std.clone()
    torch.testing.assert_close(out_std, torch.tensor([20.0, 0.1, 3.0, 50.0]), rtol=0.1, atol=0)  # not the identity

    obs = in_mean[:O] + in_std[:O] * torch.randn(5, O)
    action = in_mean[O:] + in_std[O:] * torch.randn(5, A)
    mean, var = model.predict(obs, action)
    assert mean.shape == var.shape == (4, 5, O + 1)
    assert (var > 0).all()

    x = ((torch.cat([obs, action], -1) - in_mean) / in_std).expand(4, 5, O + A)
    with torch.no_grad():
        mean_n, logvar_n = model.forward_normalized(x)
    torch.testing.assert_close(mean, mean_n * out_std + out_mean)
    torch.testing.assert_close(var, logvar_n.exp() * out_std.square())
    # and the un-scaling is not a no-op here: the standardised outputs are far from the original ones
    assert (mean - mean_n).abs().amax((0, 1)).min() > 0.1
    assert not torch.allclose(var, logvar_n.exp(), rtol=0.5)


def test_per_member_inputs_and_member_subsets_match_the_shared_forward():
    model = small_model()
    obs, action = torch.randn(4, 6, O), torch.randn(4, 6, A)
    mean, var = model.predict(obs, action)
    for e in range(4):
        m_e, v_e = model.predict(obs[e], action[e])
        torch.testing.assert_close(mean[e], m_e[e])
        torch.testing.assert_close(var[e], v_e[e])
    subset = torch.tensor([1, 3])
    m_sub, _ = model.predict(obs[0], action[0], members=subset)
    torch.testing.assert_close(m_sub, model.predict(obs[0], action[0])[0][subset])


@pytest.mark.parametrize(
    "obs, action",
    [
        (torch.zeros(5, O + 1), torch.zeros(5, A)),
        (torch.zeros(5, O), torch.zeros(4, A)),
        (torch.zeros(O), torch.zeros(A)),
        (torch.zeros(3, 5, O), torch.zeros(3, 5, A)),  # 3 slices for 4 members
    ],
)
def test_wrong_input_shapes_are_a_clear_error(obs, action):
    with pytest.raises(ValueError, match=r"must be \[B, 3\] and \[B, 2\]"):
        small_model().predict(obs, action)


def test_step_takes_one_state_a_row_and_evaluate_two_rows_or_more(fitted):
    model, _ = fitted
    with pytest.raises(ValueError, match=r"step takes obs \[B, 3\] \(one state a row\), got \[4, 5, 3\]"):
        model.step(torch.zeros(4, 5, O), torch.zeros(4, 5, A))
    with pytest.raises(ValueError, match="at least 2 held-out transitions"):
        model.evaluate(linear_system(1))
    obs = torch.zeros(5, O, requires_grad=True)
    assert not model.step(obs, torch.zeros(5, A))["next_obs"].requires_grad  # (no graph kept alive)


def test_random_mode_draws_only_elites(fitted):
    model, _ = fitted
    out = model.step(torch.randn(400, O), torch.randn(400, A), mode="random")
    assert set(out["member"].tolist()) == set(model.elites.tolist())
    assert out["next_obs"].shape == (400, O) and out["reward"].shape == (400,)


def test_deterministic_step_uses_the_chosen_members_mean(fitted):
    model, _ = fitted
    obs, action = torch.randn(6, O), torch.randn(6, A)
    mean, _ = model.predict(obs, action)
    members = model.elites[torch.tensor([0, 1, 1, 0, 0, 1])]
    out = model.step(obs, action, mode="fixed", members=members, deterministic=True)
    torch.testing.assert_close(out["next_obs"], obs + mean[members, torch.arange(6), :O])
    torch.testing.assert_close(out["reward"], mean[members, torch.arange(6), O])
    default = model.step(obs, action, mode="fixed", deterministic=True)
    assert default["member"].tolist() == model.elites[torch.arange(6) % 2].tolist()
    averaged = model.step(obs, action, mode="mean", deterministic=True)
    torch.testing.assert_close(averaged["next_obs"], obs + mean[model.elites].mean(0)[:, :O])


def test_sampled_steps_spread_like_the_predicted_variance(fitted):
    model, _ = fitted
    obs, action = torch.zeros(1, O).expand(20000, O), torch.zeros(1, A).expand(20000, A)
    out = model.step(obs, action, mode="fixed", members=model.elites[:1].expand(20000))
    _, var = model.predict(obs[:1], action[:1])
    expected = var[model.elites[0], 0, :O]
    torch.testing.assert_close(out["next_obs"].var(0), expected, rtol=0.1, atol=1e-6)


@pytest.mark.parametrize("rows", [1, 7, 40])
def test_one_member_per_row_path_matches_running_every_elite(fitted, rows):
    model, _ = fitted
    obs, action = torch.randn(rows, O), torch.randn(rows, A)
    fast = model.step(obs, action, mode="random", deterministic=True)
    full = model.step(obs, action, mode="fixed", members=fast["member"], deterministic=True)
    torch.testing.assert_close(fast["next_obs"], full["next_obs"])
    torch.testing.assert_close(fast["reward"], full["reward"])
    if rows >= 40:  # a balanced random assignment: every elite gets its share of rows
        assert torch.bincount(fast["member"]).max() <= -(-rows // model.num_elites)
        assert not torch.equal(fast["member"], model.step(obs, action)["member"])  # and reshuffled per call


def test_fixed_mode_refuses_non_elite_members(fitted):
    model, _ = fitted
    outsider = next(m for m in range(4) if m not in model.elites.tolist())
    with pytest.raises(ValueError, match="must be elites"):
        model.step(torch.randn(2, O), torch.randn(2, A), mode="fixed", members=torch.tensor([outsider] * 2))
    with pytest.raises(ValueError, match="unknown mode 'ts1'"):
        model.step(torch.randn(2, O), torch.randn(2, A), mode="ts1")


def test_step_applies_the_termination_function_to_the_predicted_next_state(fitted):
    model, _ = fitted
    model.termination_fn = lambda obs, act, next_obs: next_obs[:, 0] > 0
    try:
        out = model.step(torch.randn(50, O), torch.randn(50, A))
        assert torch.equal(out["terminated"], out["next_obs"][:, 0] > 0)
    finally:
        model.termination_fn = None
    assert not model.step(torch.randn(50, O), torch.randn(50, A))["terminated"].any()


def test_step_reports_the_requested_uncertainty(fitted):
    model, _ = fitted
    obs, action = torch.randn(7, O), torch.randn(7, A)
    measure = Uncertainty("max_pairwise_difference", elites_only=False, include_reward=True)
    out = model.step(obs, action, uncertainty=measure)
    mean, var = model.predict(obs, action)
    torch.testing.assert_close(out["uncertainty"], measure(mean, var))
    far = model.step(obs * 50, action, uncertainty=measure)["uncertainty"]
    assert far.mean() > 5 * out["uncertainty"].mean()  # members disagree off the data


def test_fit_learns_a_noisy_linear_system_with_calibrated_variance(fitted):
    model, metrics = fitted
    report = model.evaluate(linear_system(2000, seed=1))
    assert report["r2_delta"] > 0.95 and report["r2_reward"] > 0.95
    assert 0.7 < report["calibration"] < 1.4
    assert metrics["epochs"] <= 60 and len(metrics["holdout_mse"]) == 4


def test_a_dimension_that_never_changes_has_no_r2_and_does_not_swamp_the_average(fitted):
    """A delta dimension constant in the held-out rows (a fixed target's coordinate) divided its tiny
    error by a zero variance: R^2 of -1e7 for the whole model. It is NaN and left out instead."""
    model, _ = fitted
    data = linear_system(500, seed=2)
    data["next_obs"][:, 1] = data["obs"][:, 1]  # (dimension 1 never changes)
    report = model.evaluate(data)
    assert math.isnan(report["r2_per_dim"][1]) and all(math.isfinite(report["r2_per_dim"][i]) for i in (0, 2))
    assert report["r2_delta"] == pytest.approx((report["r2_per_dim"][0] + report["r2_per_dim"][2]) / 2)


def test_explicit_members_are_found_among_elites_in_any_order_and_as_a_list(fitted):
    """Elites loaded or set out of order (fit sorts them, a state_dict need not) still give each row
    its own member's prediction with an uncertainty measure; members may be a list."""
    model, _ = fitted
    model = _copy(model)
    model.elites.copy_(model.elites.flip(0))  # (e.g. [3, 1])
    obs, action = torch.randn(4, O), torch.rand(4, A) * 2 - 1
    members = [int(model.elites[0]), int(model.elites[1])] * 2
    out = model.step(obs, action, mode="fixed", members=members, deterministic=True, uncertainty=Uncertainty())
    mean, _ = model.predict(obs, action)
    torch.testing.assert_close(out["next_obs"], obs + mean[members, torch.arange(4), :-1])


def test_elites_are_the_members_best_on_holdout(fitted):
    model, metrics = fitted
    mse = torch.tensor(metrics["holdout_mse"])
    assert sorted(metrics["elites"]) == sorted(mse.argsort()[:2].tolist())
    assert metrics["elites"] == model.elites.tolist()


def test_refit_warm_starts_from_the_current_weights(fitted):
    model = _copy(fitted[0])  # (the module's fitted model stays as the other tests expect it)
    data = linear_system(3000, seed=2)
    cold = small_model(hidden=64).fit(data, max_epochs=1, progress=False)
    warm = model.fit(data, max_epochs=1, progress=False)
    assert max(warm["holdout_mse"]) < 0.3 * min(cold["holdout_mse"])


def test_a_refit_on_shifted_data_keeps_the_models_predictions(fitted):
    """The normalisers are refitted on the new data, and the weights re-expressed for them: with
    no training (lr ~ 0), predictions on the old data are unchanged, and the elites too."""
    model = small_model(hidden=64)
    model.load_state_dict(fitted[0].state_dict())
    old = linear_system(500, seed=3)
    before = model.predict(old["obs"], old["action"])
    shifted = linear_system(2000, seed=4)
    shifted["obs"] = shifted["obs"] * 3 + 2  # another region of the state space, other statistics
    shifted["next_obs"] = shifted["next_obs"] * 5 - 1
    shifted["action"] = shifted["action"] * 0.5 + 0.2
    model.fit(shifted, lr=1e-12, max_epochs=1, patience=1, progress=False)
    assert not torch.equal(model.input_norm.mean, fitted[0].input_norm.mean)  # the statistics did move
    after = model.predict(old["obs"], old["action"])
    for b, a in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_each_member_keeps_one_bootstrap_resample_for_the_whole_fit(monkeypatch):
    from worldmodel import fitting

    resample = torch.randint(50, (3, 50))
    first, second = fitting.epoch_order(resample, 3, 50), fitting.epoch_order(resample, 3, 50)
    for m in range(3):  # the same rows (with repeats) every epoch, in a new order
        assert sorted(first[m].tolist()) == sorted(resample[m].tolist()) == sorted(second[m].tolist())
    assert not torch.equal(first, second)
    assert sorted(fitting.epoch_order(None, 3, 50)[1].tolist()) == list(range(50))  # no bootstrap: every row once

    seen = []
    real = fitting.epoch_order
    monkeypatch.setattr(fitting, "epoch_order", lambda r, *a, **k: seen.append(r) or real(r, *a, **k))
    small_model().fit(linear_system(300), max_epochs=3, progress=False)
    assert len(seen) == 3 and all(r is seen[0] for r in seen)  # drawn once per fit
    assert not torch.equal(seen[0][0], seen[0][1])  # and its own for each member


def test_early_stopping_waits_exactly_patience_epochs_without_improvement():
    data = linear_system(1000)
    data["next_obs"] = data["obs"] + torch.randn(1000, O)  # pure noise: nothing to learn
    data["reward"] = torch.randn(1000)
    metrics = small_model().fit(data, max_epochs=300, patience=3, progress=False)
    last_improvement = max((h["epoch"] for h in metrics["history"] if h["improved"]), default=0)
    assert metrics["epochs"] == last_improvement + 3


def test_early_stopping_ends_fit_when_holdout_stops_improving():
    data = linear_system(1000)
    data["next_obs"] = data["obs"] + torch.randn(1000, O)  # pure noise: nothing to learn
    data["reward"] = torch.randn(1000)
    metrics = small_model().fit(data, max_epochs=300, patience=3, progress=False)
    assert metrics["epochs"] < 100


def test_max_steps_cuts_the_fit_short_mid_epoch():
    """1000 rows (800 to train) in batches of 64 are 13 steps an epoch: a cap of 30 steps ends the
    third epoch after 4 of its batches, and every epoch's record counts the steps so far."""
    metrics = small_model().fit(linear_system(1000), batch_size=64, max_epochs=50, max_steps=30, patience=50,
                                progress=False)  # fmt: skip
    assert metrics["steps"] == 30 and metrics["epochs"] == 3
    assert [h["steps"] for h in metrics["history"]] == [13, 26, 30]
    uncapped = small_model().fit(linear_system(1000), batch_size=64, max_epochs=3, patience=50, progress=False)
    assert uncapped["steps"] == 39
    with pytest.raises(ValueError, match="max_steps=0 is out of range"):
        small_model().fit(linear_system(1000), max_steps=0, progress=False)



def test_a_bf16_fit_trains_fp32_weights_as_well_as_an_fp32_fit():
    """fit(precision="bf16") runs the training steps' matmuls in bf16; the weights stay fp32, the
    model keeps its own precision, and the fit learns the system about as well."""
    fits, mean = {}, lambda xs: sum(xs) / len(xs)
    for precision in ("fp32", "bf16"):
        torch.manual_seed(3)
        model = small_model()
        metrics = model.fit(linear_system(1000), batch_size=64, max_epochs=20, precision=precision, progress=False)
        fits[precision] = (model, mean(metrics["holdout_mse"]), mean(metrics["start_holdout_mse"]))
    (exact, exact_mse, _), (low, low_mse, low_start) = fits["fp32"], fits["bf16"]
    assert low.precision == "fp32" and low.weights[0].dtype == torch.float32
    assert not torch.equal(exact.weights[0], low.weights[0])  # the steps really ran in bf16
    assert low_mse < 0.5 * low_start and abs(low_mse - exact_mse) < 0.05 * exact_mse
    with pytest.raises(ValueError, match="precision='fp16' is not one of"):
        small_model().fit(linear_system(1000), precision="fp16", progress=False)


def test_auto_fits_in_bf16_only_on_a_cpu_with_bf16_units(monkeypatch):
    from worldmodel import fitting

    model = small_model()
    for units, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(fitting, "bf16_units", lambda units=units: units)
        assert fitting.training_precision(model, "auto") == expected
        assert model.fit(linear_system(300), max_epochs=1, progress=False)["precision"] == expected
    assert fitting.training_precision(model, None) == "fp32" == fitting.training_precision(model, "fp32")
    assert fitting.training_precision(small_model(precision="bf16"), None) == "bf16"
    on_gpu = SimpleNamespace(device=torch.device("cuda"), precision="tf32")  # (the GPU kernels: the model's own)
    assert fitting.training_precision(on_gpu, "auto") == "tf32"

def test_same_seed_same_fit():
    def weights():
        torch.manual_seed(7)
        model = small_model()
        init = model.weights[0].detach().clone()
        model.fit(linear_system(600), max_epochs=3, progress=False)
        return init, model.weights[0].detach()

    (init, first), (_, second) = weights(), weights()
    assert not torch.equal(first, init)  # the fit really trained (a no-op fit is trivially deterministic)
    assert torch.equal(first, second)


def test_fit_refuses_bad_data_naming_the_field():
    data = linear_system(500)
    data["action"][10, 1] = float("nan")
    with pytest.raises(ValueError, match="field 'action' has non-finite"):
        small_model().fit(data, progress=False)
    with pytest.raises(ValueError, match=r"field 'obs' has shape \[500, 3\], expected \[500, 5\]"):
        EnsembleDynamics(5, A).fit(linear_system(500), progress=False)


def test_too_few_samples_for_a_holdout_is_a_clear_error():
    with pytest.raises(ValueError, match="too few to fit with a holdout split"):
        small_model().fit(linear_system(20), progress=False)


def test_precision_reaches_the_kernels():
    exact, low = small_model(), small_model(precision="bf16")
    low.load_state_dict(exact.state_dict())
    obs, action = torch.randn(64, O), torch.randn(64, A)
    mean_exact, _ = exact.predict(obs, action)
    mean_low, _ = low.predict(obs, action)
    difference = (mean_exact - mean_low).abs().max().item()
    assert 0 < difference < 0.1  # bf16 operands: close, but not bit-identical


def test_invalid_construction_is_a_clear_error():
    with pytest.raises(ValueError, match="num_elites"):
        EnsembleDynamics(O, A, ensemble_size=3, num_elites=5)
    with pytest.raises(ValueError, match="weight_decay needs 3 values"):
        EnsembleDynamics(O, A, layers=2, weight_decay=[1e-4])
    with pytest.raises(ValueError, match="precision must be"):
        EnsembleDynamics(O, A, precision="fp16")


def test_save_load_round_trip_predicts_identically(fitted, tmp_path):
    model, _ = fitted
    model.save(tmp_path / "model.pt")
    loaded = EnsembleDynamics.load(tmp_path / "model.pt", obs_dim=O, act_dim=A)
    obs, action = torch.randn(9, O), torch.randn(9, A)
    for a, b in zip(model.predict(obs, action), loaded.predict(obs, action)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(loaded.elites, model.elites)
    assert list(tmp_path.iterdir()) == [tmp_path / "model.pt"]


def test_mismatched_corrupt_or_foreign_checkpoint_is_a_clear_error(fitted, tmp_path):
    model, _ = fitted
    path = tmp_path / "model.pt"
    model.save(path)
    with pytest.raises(CheckpointError, match="obs_dim=3, but 17 was expected"):
        EnsembleDynamics.load(path, obs_dim=17)
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        EnsembleDynamics.load(tmp_path / "cut.pt")
    (tmp_path / "garbage.pt").write_bytes(b"garbage" * 100)  # torch's own words advise weights_only=False: not ours
    with pytest.raises(CheckpointError, match=r"corrupt or truncated\?\): Unsupported operand \d+$"):
        EnsembleDynamics.load(tmp_path / "garbage.pt")
    buffer = ReplayBuffer(O, A)
    buffer.extend(linear_system(10))
    buffer.save(tmp_path / "buffer.pt")
    with pytest.raises(CheckpointError, match="holds a 'worldmodel.ReplayBuffer' checkpoint"):
        EnsembleDynamics.load(tmp_path / "buffer.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["hidden"] = 16
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="weights do not match its config"):
        EnsembleDynamics.load(tmp_path / "edited.pt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_and_predict_on_cuda():
    model = small_model().cuda()
    model.fit(linear_system(600).cuda(), max_epochs=2, progress=False)
    mean, var = model.predict(torch.randn(5, O, device="cuda"), torch.randn(5, A, device="cuda"))
    assert mean.is_cuda and torch.isfinite(var).all()


def test_step_converts_inputs_and_refuses_members_outside_fixed_mode(fitted):
    model, _ = fitted
    out = model.step(torch.randn(5, O, dtype=torch.float64), torch.randn(5, A, dtype=torch.float64))
    assert out["next_obs"].dtype == torch.float32
    with pytest.raises(ValueError, match="members are only used in 'fixed' mode"):
        model.step(torch.randn(2, O), torch.randn(2, A), mode="random", members=model.elites[:1].expand(2))


def test_elite_parameter_cache_follows_every_parameter_change(fitted):
    model, _ = fitted
    model = _copy(model)  # the module-scoped fixture stays untouched
    obs, action = torch.randn(12, O), torch.rand(12, A) * 2 - 1
    with torch.no_grad():
        first = model.step(obs, action, mode="fixed", deterministic=True)["next_obs"]
        model.weights[-1].mul_(0.5)  # an in-place change, as an optimiser step or load_state_dict makes
        cached = model.step(obs, action, mode="fixed", deterministic=True)["next_obs"]
        mean, _ = model.predict(obs, action)  # every member, no cache involved
    expected = obs + mean[model.elites[torch.arange(12) % model.num_elites], torch.arange(12), :-1]
    torch.testing.assert_close(cached, expected)
    assert not torch.allclose(cached, first)


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
def test_a_copy_refitted_as_its_original_was_steps_with_its_own_weights(copier):
    """A background learner refits a deep copy of the planner's model each time: the copy's parameter
    versions start again at 0, so after as many steps as the last refit they equal that refit's; the
    elite cache must not come along with the copy and serve the old weights."""
    import copy
    import pickle

    clone = copy.deepcopy if copier == "deepcopy" else lambda m: pickle.loads(pickle.dumps(m))
    torch.manual_seed(0)
    first = small_model(ensemble_size=2, num_elites=2)
    first.fit(linear_system(200), max_epochs=2, progress=False)
    obs, action = torch.randn(6, O), torch.rand(6, A) * 2 - 1
    refits = [clone(first)]
    refits[0].fit(linear_system(200, seed=1), max_steps=20, progress=False)
    refits[0].step(obs, action, mode="fixed", deterministic=True)  # (its elites cached)
    refits.append(clone(refits[0]))
    refits[1].fit(linear_system(200, seed=2), max_steps=20, progress=False)
    with torch.no_grad():
        stepped = refits[1].step(obs, action, mode="fixed", deterministic=True)["next_obs"]
        mean, _ = refits[1].predict(obs, action)  # every member, no cache involved
    expected = obs + mean[refits[1].elites[torch.arange(6) % 2], torch.arange(6), :-1]
    torch.testing.assert_close(stepped, expected)


def _copy(model: EnsembleDynamics) -> EnsembleDynamics:
    clone = small_model(hidden=64)
    clone.load_state_dict(model.state_dict())
    return clone


def test_a_fit_killed_mid_way_resumes_exactly_from_its_saved_state():
    """on_epoch hands out the fit's state; a new model resumed from the state saved after epoch 3
    of a fit that then died ends where the uninterrupted fit ends, weights and history alike, and
    reports the whole fit's wall time. Its gradient steps count on: 1200 training rows are 5
    batches an epoch, so max_steps=27 cuts the sixth epoch to 2 (a count restarted at 0 would not).
    It keeps the precision it began with (bf16 steps), whatever the resuming call asks for."""
    import io

    data = linear_system(1500, seed=5)
    settings = dict(max_epochs=6, max_steps=27, patience=6, precision="bf16", progress=False)
    torch.manual_seed(1)
    whole = small_model()
    expected = whole.fit(data, **settings)

    saved = io.BytesIO()

    def die_after_three(fit_state):
        state = fit_state()
        if state["epoch"] == 3:
            torch.save({**state, "wall_s": 1e4}, saved)  # as a run writes it to disk (a long first part)
            raise KeyboardInterrupt("killed")

    torch.manual_seed(1)
    with pytest.raises(KeyboardInterrupt):
        small_model().fit(data, **settings, on_epoch=die_after_three)
    saved.seek(0)
    resumed = small_model()  # a new process: fresh weights, other RNG state
    got = resumed.fit(data, **{**settings, "precision": "fp32"}, resume=torch.load(saved, weights_only=False))
    assert got["precision"] == "bf16" and got["history"] == expected["history"] and got["epochs"] == 6 and got["steps"] == expected["steps"] == 27
    assert got["wall_s"] >= 1e4  # the whole fit's time, not only the resumed part's
    for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="the fit to resume was on 1500 transitions, this data has 1000"):
        small_model().fit(data[:1000], **settings, resume=torch.load(io.BytesIO(saved.getvalue()), weights_only=False))


def test_beta_nll_weights_each_rows_nll_by_its_detached_variance():
    """beta = 0 is the Gaussian NLL; beta = 1 gives the mean MSE's gradient (the variance's
    stays the NLL's, scaled), so a row the model explains by a large variance still pulls its mean."""
    from worldmodel import fitting

    model = small_model()
    g = torch.Generator().manual_seed(0)
    mean, logvar, target = (torch.randn(4, 8, O + 1, generator=g) for _ in range(3))
    for beta in (0.0, 0.5, 1.0):
        m = mean.clone().requires_grad_()
        lv = logvar.clone().requires_grad_()
        fitting.loss(model, m, lv, target, beta).backward()
        scale = torch.exp(beta * logvar) / (8 * (O + 1))  # each member: the mean over rows and outputs
        torch.testing.assert_close(m.grad, 2 * (mean - target) * torch.exp(-logvar) * scale)
        torch.testing.assert_close(lv.grad, (1 - (mean - target) ** 2 * torch.exp(-logvar)) * scale)


def test_the_fit_step_adds_weight_decay_gradients_equal_to_backpropagating_the_whole_loss():
    """fitting.backward adds L2's gradient in place instead of through autograd: the gradients and
    the loss it returns are those of loss(...).backward() with the decay in the graph."""
    from worldmodel import fitting

    model = small_model()
    model.weight_decay = [0.1 * (i + 1) for i in range(len(model.weights))]  # large enough to show
    x, target = torch.randn(4, 8, O + A), torch.randn(4, 8, O + 1)
    grads = []
    for fused in (False, True):
        model.zero_grad(set_to_none=True)
        mean, logvar = model.forward_normalized(x)
        if fused:
            value = fitting.backward(model, mean, logvar, target, 0.5)
        else:
            whole = fitting.loss(model, mean, logvar, target, 0.5)
            whole.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert value == pytest.approx(whole.item(), rel=1e-6)
    decay_share = [(0.1 * (i + 1) * w).norm() / g.norm() for i, (w, g) in enumerate(zip(model.weights, grads[0]))]
    assert min(decay_share) > 0.05  # the decay is a visible part of each weight's gradient
    for autograd_grad, in_place_grad in zip(*grads):
        torch.testing.assert_close(in_place_grad, autograd_grad)


def test_a_refit_counts_patience_from_its_own_epochs_and_never_returns_a_worse_member():
    """Early stopping compares a fit's epochs with each other, not with the starting weights (MBPO),
    so a refit's first epochs, worse than its start, do not end it; the weights kept are each
    member's best on holdout, the starting weights included."""
    torch.manual_seed(0)
    model = small_model()
    model.fit(linear_system(600), max_epochs=20, progress=False)
    probe = linear_system(200, seed=6)
    before = model.predict(probe["obs"], probe["action"])[0]  # [E, 200, O+1]
    noise = linear_system(600, seed=5)
    noise["next_obs"] = noise["obs"] + 3 * torch.randn(600, O)  # nothing the model knew
    metrics = model.fit(noise, max_epochs=4, patience=1, progress=False)
    # the first epoch is the fit's first best, though not 1% better than its start
    assert metrics["history"][0]["improved"]
    assert metrics["history"][0]["holdout_mse"] > 0.99 * sum(metrics["start_holdout_mse"]) / 4
    for kept, began in zip(metrics["holdout_mse"], metrics["start_holdout_mse"]):
        assert kept <= began
    after = model.predict(probe["obs"], probe["action"])[0]
    beaten = [mse < began for mse, began in zip(metrics["holdout_mse"], metrics["start_holdout_mse"])]
    assert any(beaten)
    for m, moved in enumerate(beaten):  # a member keeps its start (re-expressed for the new normalisers)
        assert torch.allclose(after[m], before[m], rtol=1e-4, atol=1e-4) != moved  # where no epoch beat it


def test_a_member_whose_adam_moments_diverged_learns_again_at_the_next_refit():
    """A diverged member keeps its earlier weights; its NaN moments, shared by later refits, are
    cleared, so the next refit moves it again (else every step made it NaN and it stayed put)."""
    torch.manual_seed(0)
    model = small_model()
    data = linear_system(600)
    model.fit(data, max_epochs=3, progress=False)
    for state in model._optimizer.state.values():
        state["exp_avg"][1] = float("nan")  # member 1 diverged
    metrics = model.fit(data, max_epochs=2, progress=False)
    assert metrics["start_kept"] >= 1  # (member 1 could not move: NaN at every step)
    for state in model._optimizer.state.values():
        assert state["exp_avg"].isfinite().all() and state["exp_avg_sq"].isfinite().all()
        assert (state["exp_avg_sq"][1] > 0).any()  # (the others' scale: no zero second moment)
    assert torch.isfinite(model.weights[0][1]).all()
    metrics = model.fit(data, max_epochs=2, patience=5, progress=False)
    assert metrics["start_kept"] == 0  # every member moved, member 1 included


def test_member_slices_follow_a_fused_optimiser_step():
    # planning with some members reads cached slices of their weights, keyed on the versions;
    # torch's fused Adam writes without counting one (kernels.cpu counts it after each step)
    model = small_model()
    x, members = torch.randn(2, 5, O + A), torch.tensor([1, 3])
    with torch.no_grad():
        before = model.forward_normalized(x, members)[0]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.5, fused=True)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    with torch.no_grad():
        after = model.forward_normalized(x, members)[0]
        every = torch.zeros(4, 5, O + A).index_copy(0, members, x)  # the same rows for all 4 members
        fresh = model.forward_normalized(every)[0][members]
    assert (after - before).abs().max() > 0.1
    torch.testing.assert_close(after, fresh)


def test_a_refit_judges_itself_on_held_out_new_rows_only():
    """Given the rows new since the model's last fit, a warm-started refit holds out among them
    alone: the starting weights never trained on those, so they can be beaten there, and the
    refit takes in the new region (every older row trained the start: a holdout of those kept it).
    Too few new rows for MIN_NEW_HOLDOUT held-out ones: the whole data's split, as before."""
    from worldmodel import fitting

    torch.manual_seed(0)
    model = small_model()
    old = linear_system(2000)
    model.fit(old, max_epochs=20, progress=False)
    new = linear_system(500, seed=3)
    new["obs"] = new["obs"] + 3.0  # a region the first fit never saw, where the dynamics differ
    new["next_obs"] = new["obs"] + 0.5 * new["obs"].flip(-1)
    data = torch.cat([old, new])
    buffer = ReplayBuffer(O, A, capacity=4000)
    buffer.extend(data)
    new_rows = buffer.newest(500)
    assert torch.equal(new_rows, torch.arange(2000, 2500))
    held = []
    metrics = model.fit(data, max_epochs=5, beta=0.5, new_rows=new_rows, progress=False,
                        on_epoch=lambda state: held.append(state()["perm"][: state()["n_holdout"]]))  # fmt: skip
    assert metrics["holdout"] == "new rows" and len(held[0]) == 100
    assert held[0].min() >= 2000  # every held-out row is a new one
    assert metrics["start_kept"] == 0  # the start is beaten on the new region by every member
    assert sum(metrics["holdout_mse"]) < 0.5 * sum(metrics["start_holdout_mse"])
    few = model.fit(data, max_epochs=1, new_rows=buffer.newest(100), progress=False)  # 20 < MIN_NEW_HOLDOUT
    assert few["holdout"] == "all rows" and fitting.MIN_NEW_HOLDOUT > 20
    with pytest.raises(ValueError, match="new_rows must index the data's 2500 rows"):
        model.fit(data, new_rows=torch.tensor([2500]), progress=False)
    mask = torch.zeros(2500, dtype=torch.bool)
    mask[2000:] = True
    for bad in (mask, torch.tensor([2000, 2001, 2001])):
        with pytest.raises(ValueError, match="new_rows must be distinct integer row positions .* not a mask"):
            model.fit(data, new_rows=bad, progress=False)


def test_newest_rows_follow_the_buffer_around_its_ring():
    buffer = ReplayBuffer(O, A, capacity=5)
    rows = linear_system(7)
    buffer.extend(rows[:4])
    buffer.extend(rows[4:])  # rows 5 and 6 overwrote rows 0 and 1
    newest = buffer.newest(3)
    assert newest.tolist() == [4, 0, 1]
    torch.testing.assert_close(buffer.data()["obs"][newest], rows["obs"][4:])
    assert len(buffer.newest(99)) == 5 and len(buffer.newest(0)) == 0


def test_shift_logvar_scales_every_predicted_variance_exactly(fitted):
    model = _copy(fitted[0])
    data = linear_system(200, seed=5)
    shift = torch.randn(model.ensemble_size, O + 1)
    _, before = model.predict(data["obs"], data["action"])
    with torch.no_grad():  # (the elites' path: their parameters cached between calls)
        _, elites_before = model.predict(data["obs"], data["action"], members=model.elites)
    model.shift_logvar(shift)
    _, after = model.predict(data["obs"], data["action"])
    torch.testing.assert_close(after, before * shift.exp().unsqueeze(1), rtol=1e-4, atol=0)
    with torch.no_grad():
        _, elites_after = model.predict(data["obs"], data["action"], members=model.elites)
    torch.testing.assert_close(elites_after, elites_before * shift[model.elites].exp().unsqueeze(1), rtol=1e-4, atol=0)


def test_a_warm_refit_judged_on_rows_it_trained_on_is_not_recalibrated(fitted):
    """A refit with too few new rows for a holdout of their own holds out among all rows, which
    the starting weights trained on: recalibrating there would shrink the variance to the
    training error, so it is skipped; a refit held out among new rows is recalibrated."""
    model = _copy(fitted[0])
    data = linear_system(3400, seed=3)
    few_new = model.fit(data, max_epochs=1, new_rows=torch.arange(3300, 3400), recalibrate=True, progress=False)
    assert few_new["holdout"] == "all rows" and "holdout_calibration_fitted" not in few_new
    many_new = model.fit(data, max_epochs=1, new_rows=torch.arange(2000, 3400), recalibrate=True, progress=False)
    assert many_new["holdout"] == "new rows" and "holdout_calibration_fitted" in many_new


def test_recalibration_makes_held_out_variance_match_the_error():
    """An over-confident fit (200 epochs on 1,000 rows, no early stop: its variance shrinks to the
    training error) recalibrated on its holdout: squared error over predicted variance is 1 there,
    and on fresh rows of the same system close to 1 where the plain fit's is 1.4."""
    fresh = linear_system(4000, noise=0.2, seed=9)
    calibration = {}
    for recalibrate in (False, True):
        torch.manual_seed(0)
        model = small_model(hidden=64)
        metrics = model.fit(linear_system(1000, noise=0.2), max_epochs=200, patience=1000, recalibrate=recalibrate,
                            progress=False)  # fmt: skip
        calibration[recalibrate] = model.evaluate(fresh)["calibration"]
        if recalibrate:
            assert metrics["holdout_calibration"] == pytest.approx([1.0] * model.ensemble_size, rel=1e-3)
            assert min(metrics["holdout_calibration_fitted"]) > 0
        else:
            assert "holdout_calibration_fitted" not in metrics
    assert calibration[False] > 1.25, calibration  # (the plain fit is over-confident: the check can fail)
    assert abs(calibration[True] - 1) < 0.1, calibration
