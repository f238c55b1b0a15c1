"""Model-based policy evaluation (worldmodel.ope) on a system whose returns are known."""

import torch
from known_dynamics import single_integrator
from tensordict import TensorDict

from worldmodel.ope import episode_starts, model_return


def test_a_standing_policy_earns_its_reward_at_every_step():
    model = single_integrator(goal=(0.3, -0.6))
    start = torch.tensor([[0.0, 0.0], [0.3, -0.6]])
    ret = model_return(model, lambda obs: torch.zeros_like(obs), start, horizon=7)
    assert torch.allclose(ret, torch.tensor([-7 * (0.3**2 + 0.6**2), 0.0]))


def test_a_row_ends_at_termination_and_before_leaving_the_sane_range():
    model = single_integrator(goal=(0.0, 0.0), terminate_above=0.55)
    push = lambda step: (lambda obs: torch.tensor([step, 0.0]).expand_as(obs))  # noqa: E731
    start = torch.zeros(1, 2)
    # x = 0.1, 0.2, ..., 0.6: the sixth step terminates and is the last counted
    ret = model_return(model, push(0.1), start, horizon=50)
    assert torch.allclose(ret, -torch.tensor([sum((0.1 * k) ** 2 for k in range(1, 7))]))
    # x = 1, 2, then 3 leaves [-2.5, 2.5]: that step is the last counted (as Dyna's rollouts keep it, as terminal)
    model = single_integrator(goal=(0.0, 0.0))
    assert torch.allclose(model_return(model, push(1.0), start, horizon=50, obs_limit=2.5), torch.tensor([-14.0]))


def test_episode_starts_are_the_first_observations_of_episodes_spread_evenly():
    n = 10
    ends = torch.zeros(n, dtype=torch.bool)
    ends[[2, 5, 9]] = True  # episodes: rows 0-2, 3-5, 6-9
    data = TensorDict({"obs": torch.arange(n).float().unsqueeze(-1), "next_obs": torch.arange(1, n + 1).float().unsqueeze(-1),
                       "terminated": ends, "truncated": torch.zeros(n, dtype=torch.bool)}, [n])  # fmt: skip
    assert episode_starts(data, 10).flatten().tolist() == [0.0, 3.0, 6.0]
    assert episode_starts(data, 2).flatten().tolist() == [0.0, 6.0]


def test_model_selection_skips_evaluations_without_a_finite_model_return():
    """A non-finite model return is logged as null (strict JSON): such evaluations are never picked."""
    from worldmodel.ope import model_selected

    records = [{"score": 1.0, "model_ret": None}, {"score": 2.0, "model_ret": 5.0}, {"score": 3.0},
               {"score": 4.0, "model_ret": float("nan")}]  # fmt: skip
    assert model_selected(records)["score"] == 2.0 and model_selected(records[:1]) is None
