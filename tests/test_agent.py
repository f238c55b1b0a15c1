"""planners.agent.Agent's refit rule: the first fit takes model.fit's settings, later warm-started
refits fit_epochs and fit_beta (beta-NLL), from the command line through the config."""

import torch

from planners.agent import Agent
from worldmodel import EnsembleDynamics
from worldmodel import make_env
from worldmodel.collect import collect, uniform_policy
from worldmodel.run import _compose


def test_first_fit_and_warm_refits_take_their_own_settings(monkeypatch):
    cfg = _compose(["planner=mppi", "env=hopper", "model.fit.max_epochs=3", "model.fit.lr=0.002",
                                    "fit_epochs=2", "fit_beta=0.25", "model.hidden=16", "model.ensemble_size=2",
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
    agent.refit()  # the planner's update passes the refit settings to the model's fit
    assert calls[-1]["max_epochs"] == 2 and calls[-1]["beta"] == 0.25
    refit = agent.refit_settings()
    assert refit["max_epochs"] == 2 and refit["beta"] == 0.25 and refit["lr"] == 0.002
    assert agent.refit_settings(max_epochs=7)["max_epochs"] == 7  # a caller's override wins
