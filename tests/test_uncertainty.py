"""Uncertainty measures, checked against values worked out by hand on tiny ensembles."""

import math

import pytest
import torch

from worldmodel import MEASURES, Uncertainty
from worldmodel.uncertainty import (
    ensemble_std,
    ensemble_variance,
    log_likelihood_variance,
    max_aleatoric,
    max_pairwise_difference,
)

# 3 members, 1 row, 2 outputs
MEAN = torch.tensor([[[0.0, 0.0]], [[3.0, 4.0]], [[0.0, 1.0]]])
VAR = torch.tensor([[[1.0, 1.0]], [[4.0, 0.0]], [[9.0, 16.0]]])


def test_max_aleatoric_is_largest_std_norm():
    # std norms: sqrt(2), 2, 5
    assert max_aleatoric(MEAN, VAR).item() == pytest.approx(5.0)


def test_max_pairwise_difference_is_largest_mean_distance():
    # |m1-m0| = 5, |m1-m2| = sqrt(9+9), |m0-m2| = 1
    assert max_pairwise_difference(MEAN, VAR).item() == pytest.approx(5.0)


def test_ensemble_std_is_norm_of_member_mean_spread():
    # per-output population std of means: x {0,3,0} -> sqrt(2), y {0,4,1} -> sqrt(26/9)
    expected = math.sqrt(2 + 26 / 9)
    assert ensemble_std(MEAN, VAR).item() == pytest.approx(expected, rel=1e-5)


def test_ensemble_variance_is_mixture_variance_norm():
    # mean var: (14/3, 17/3); var of means: 2, 26/9
    x, y = 14 / 3 + 2, 17 / 3 + 26 / 9
    assert ensemble_variance(MEAN, VAR).item() == pytest.approx(math.hypot(x, y), rel=1e-5)


def test_log_likelihood_variance_of_agreeing_members_is_zero_and_grows_with_disagreement():
    mean = torch.zeros(4, 2, 3)
    var = torch.ones(4, 2, 3)
    assert torch.allclose(log_likelihood_variance(mean, var), torch.zeros(2))
    mean[0, 1] += 2.0
    score = log_likelihood_variance(mean, var, sample=torch.zeros(2, 3))
    # member 0 gives row 1 log-lik lower by 0.5 * 3 * 2^2 = 6: variance of {-6,0,0,0} = 6.75
    assert score[0].item() == pytest.approx(0.0) and score[1].item() == pytest.approx(6.75)


def test_every_measure_gives_one_score_per_row():
    mean, var = torch.randn(5, 7, 4), torch.rand(5, 7, 4) + 0.1
    for name in MEASURES:
        assert Uncertainty(name)(mean, var).shape == (7,), name


def test_elites_only_ignores_other_members():
    elites = torch.tensor([0, 2])
    all_members = Uncertainty("max_aleatoric", elites_only=False, include_reward=True)
    elites_only = Uncertainty("max_aleatoric", elites_only=True, include_reward=True)
    # member 2 has the largest std (5); dropping member 1 leaves it
    assert all_members(MEAN, VAR, elites).item() == pytest.approx(5.0)
    assert all_members(MEAN, VAR, torch.tensor([0, 1])).item() == pytest.approx(5.0)  # member 2, though no elite
    assert elites_only(MEAN, VAR, torch.tensor([0, 1])).item() == pytest.approx(2.0)
    assert elites_only(MEAN, VAR, elites).item() == pytest.approx(5.0)


def test_include_reward_chooses_whether_the_last_output_counts():
    # the last output is the reward: obs-only sees stds (1, 2, 3) -> max 3
    obs_only = Uncertainty("max_aleatoric", elites_only=False, include_reward=False)
    with_reward = Uncertainty("max_aleatoric", elites_only=False, include_reward=True)
    assert obs_only(MEAN, VAR).item() == pytest.approx(3.0)
    assert with_reward(MEAN, VAR).item() == pytest.approx(5.0)


def test_unknown_measure_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown uncertainty measure 'mopo'.*max_aleatoric"):
        Uncertainty("mopo")
