"""planners.agent.Agent's refit rule: the first fit takes model.fit's settings, later warm-started
refits fit_epochs, fit_steps and fit_beta (beta-NLL), from the command line through the config."""

import pytest
import torch

from planners.agent import Agent
from worldmodel import EnsembleDynamics
from worldmodel import make_env
from worldmodel.collect import collect, uniform_policy
from worldmodel.run import _compose


def test_first_fit_and_warm_refits_take_their_own_settings(monkeypatch):
    cfg = _compose(["planner=mppi", "env=hopper", "model.fit.max_epochs=3", "model.fit.lr=0.002",
                                    "fit_epochs=2", "fit_steps=5", "fit_beta=0.25", "model.hidden=16", "model.ensemble_size=2",
                                    "model.num_elites=1"])  # fmt: skip
    env = make_env("hopper", seed=0)
    agent = Agent.from_config(cfg, env.task_spec, capacity=1000)
    first = agent.refit_settings()
    assert first["max_epochs"] == 3 and first["beta"] == 0.0 and first["lr"] == 0.002  # model.fit's, plain NLL
    agent.planner.observe(collect(env, uniform_policy(env), 200))  # (no transition log needed here)
    calls = []
    fit = EnsembleDynamics.fit
    monkeypatch.setattr(EnsembleDynamics, "fit", lambda model, data, **kw: calls.append(kw) or fit(model, data, **kw))
    torch.manual_seed(0)
    agent.refit()
    assert agent.model.fitted and calls[-1]["max_epochs"] == 3 and calls[-1]["beta"] == 0.0
    assert calls[-1].get("max_steps") is None  # (the first fit: model.fit's, no cap)
    agent.refit()  # the planner's update passes the refit settings to the model's fit
    assert calls[-1]["max_epochs"] == 2 and calls[-1]["beta"] == 0.25 and calls[-1]["max_steps"] == 5
    refit = agent.refit_settings()
    assert refit["max_epochs"] == 2 and refit["beta"] == 0.25 and refit["lr"] == 0.002
    assert agent.refit_settings(max_epochs=7)["max_epochs"] == 7  # a caller's override wins


def test_a_bounded_refit_fits_the_new_rows_beside_a_fresh_draw_of_the_offline_ones(monkeypatch):
    """refit_offline_ratio: a fitted model's refit data is every row after the offline dataset plus
    ratio x as many dataset rows (REFIT_MIN_OFFLINE at least), drawn afresh each time, with the
    newest rows at its end; a first fit, or no ratio, takes the whole buffer."""
    from planners import agent as agent_module

    monkeypatch.setattr(agent_module, "REFIT_MIN_OFFLINE", 40)
    env = make_env("hopper", seed=0)
    spec = env.task_spec
    offline, online = collect(env, uniform_policy(env), 300), collect(env, uniform_policy(env), 60)
    agent = Agent(spec, {"name": "mppi", "candidates": 16, "horizon": 3}, {"ensemble_size": 2, "num_elites": 1,
                  "hidden": 16}, refit_offline_ratio=1.0)  # fmt: skip
    agent.add_dataset(offline)
    agent.planner.observe(online)
    data, new_rows = agent.refit_data(agent.model, new=25)
    assert len(data) == 360 and torch.equal(new_rows, torch.arange(335, 360))  # a first fit: everything
    agent.refit(max_epochs=1)
    data, new_rows = agent.refit_data(agent.model, new=25)
    assert len(data) == 60 + 60 and torch.equal(new_rows, torch.arange(95, 120))
    assert torch.equal(data["obs"][60:], online["obs"])  # every robot row, in order, the newest last
    drawn = data["obs"][:60]
    assert (drawn[:, None] == offline["obs"][None]).all(-1).any(1).all()  # from the dataset, no robot row
    assert not torch.equal(agent.refit_data(agent.model)[0]["obs"][:60], drawn)  # drawn afresh
    agent.planner.observe(collect(env, uniform_policy(env), 10))
    assert len(agent.refit_data(agent.model)[0]) == 70 + 70
    monkeypatch.setattr(agent_module, "REFIT_MIN_OFFLINE", 100)
    assert len(agent.refit_data(agent.model)[0]) == 70 + 100  # the floor
    agent.refit_offline_ratio = None
    assert len(agent.refit_data(agent.model)[0]) == 370
    with pytest.raises(ValueError, match="refit_offline_ratio must be >= 0 or None, got -1"):
        Agent(spec, {"name": "mppi"}, refit_offline_ratio=-1)


@pytest.mark.parametrize("task, q, warns", [("hopper", -40.0, True), ("hopper", 40.0, False),
                                            ("dmc/cartpole-swingup", -40.0, False)])  # fmt: skip
def test_a_pretrained_value_below_zero_warns_where_episodes_end(tmp_path, task, q, warns):
    """A pretrained learned value below 0 on the dataset's states makes ending an episode (worth 0)
    look better than living: the fine-tuning walker of docs/results.md fell at once. Read as the
    planner reads it and warned where episodes end; a task that never ends is left alone."""
    import warnings

    from planners.realtime import save_agent_files

    env = make_env(task, seed=0)
    spec, data = env.task_spec, collect(env, uniform_policy(env), 200)
    tiny = {"ensemble_size": 2, "num_elites": 1, "hidden": 16}
    source = Agent(spec, {"name": "mppi", "candidates": 16, "horizon": 3}, tiny)
    source.planner.observe(data)
    source.refit(max_epochs=1)
    critics = source.planner.value_agent.critics
    with torch.no_grad():  # Q = q everywhere: the output layer's weights 0, its bias q
        critics.weights[-1].zero_()
        critics.biases[-1].fill_(q)
    save_agent_files(tmp_path, source, 0)
    agent = Agent(spec, {"name": "mppi", "candidates": 16, "horizon": 3}, pretrained=tmp_path)
    assert agent.pretrained_value(data["obs"]) == pytest.approx(q)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert agent.check_pretrained_value(data) == pytest.approx(q)
        agent.check_pretrained_value(data, warn=False)  # (a resumed run reads it without warning again)
    said = [str(w.message) for w in caught if "prefer ending them" in str(w.message)]
    assert len(said) == warns
    if warns:  # the cause named from the data's own rewards: a positive reward, so the penalty
        assert ("smaller penalty" in said[0]) == (data["reward"].mean() > 0)
    assert Agent(spec, {"name": "mppi"}, tiny).pretrained_value(data["obs"]) is None  # nothing pretrained


def test_pretrained_takes_the_dynamics_saved_with_the_agent_not_a_model_pt_written_apart(tmp_path):
    """A run directory's model.pt is written apart from its agent.pt (or checkpoint.pt): killed
    between the two writes, model.pt is a refit ahead of the agent's value. pretrained=<dir> pairs
    the agent with the dynamics saved beside it in the same file."""
    env = make_env("hopper", seed=0)
    spec = env.task_spec
    settings = ({"name": "mppi", "candidates": 16, "horizon": 3}, {"ensemble_size": 2, "num_elites": 1, "hidden": 16})
    agent = Agent(spec, *settings)
    agent.planner.observe(collect(env, uniform_policy(env), 200))
    agent.refit(max_epochs=1)
    agent.save(tmp_path / "agent.pt")
    agent.refit(max_epochs=1)  # (the next refit's model.pt, written before the agent.pt that never came)
    agent.model.save(tmp_path / "model.pt")
    saved = torch.load(tmp_path / "agent.pt", weights_only=True)["model"]
    loaded = Agent(spec, *settings, pretrained=tmp_path)
    assert all(torch.equal(v, saved[k]) for k, v in loaded.model.state_dict().items())
