"""The true simulator as a model: it must reproduce the env's own transitions, and the edge-of-reach command runs."""

import json

import pytest
import torch

from worldmodel import collect, correlated_noise_policy, make_env
from worldmodel.datasets import save_d4rl
from worldmodel.simulator import VELOCITY_CLIP, SimulatorDynamics


@pytest.mark.parametrize("task", ["halfcheetah", "hopper", "walker2d"])
def test_simulator_steps_reproduce_the_environment(task):
    env = make_env(task, seed=0)
    data = collect(env, correlated_noise_policy(env), 300)
    sim = SimulatorDynamics(task)
    out = sim.step(data["obs"], data["action"])
    # rows whose observed velocity sits at the clip do not determine the state; every other row is exact
    exact = data["obs"][:, sim.nq - 1:].abs().amax(-1) < VELOCITY_CLIP.get(task, float("inf"))
    assert exact.sum() >= 40
    torch.testing.assert_close(out["next_obs"][exact], data["next_obs"][exact], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["reward"][exact], data["reward"][exact], atol=1e-4, rtol=1e-4)
    assert torch.equal(out["terminated"][exact], data["terminated"][exact])
    if task == "hopper":
        assert data["terminated"][exact].any()  # the check covers terminal steps too


def test_simulator_refuses_tasks_without_full_state_observations_and_penalties():
    with pytest.raises(ValueError, match="only on"):
        SimulatorDynamics("dmc/cheetah-run")
    sim = SimulatorDynamics("hopper")
    with pytest.raises(ValueError, match="no model uncertainty"):
        sim.step(torch.zeros(1, 11), torch.zeros(1, 3), uncertainty=object())
    with pytest.raises(ValueError, match="obs must be"):
        sim.step(torch.zeros(1, 17), torch.zeros(1, 3))


def test_edge_of_reach_command_logs_values_against_returns(tmp_path):
    from planners.edge_of_reach import main

    env = make_env("hopper", seed=1)
    save_d4rl(tmp_path / "d.hdf5", collect(env, correlated_noise_policy(env), 300))
    summary = main([f"dataset={tmp_path / 'd.hdf5'}", "task=hopper", "updates=20", "eval_every=10", "rollout_batch_size=50",
                    "rollout_every=10", "eval_episodes=1", "+agent.hidden=32", f"run_dir={tmp_path / 'run'}"])  # fmt: skip
    assert set(summary) == {"mbpo", "ravl"}
    states = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["methods"]
    for method, critics in (("mbpo", 2), ("ravl", 10)):  # agent.* reaches both agents beside each one's own
        assert states[method]["planner"]["agent"]["modules"]["critics.weights.1"].shape == (critics, 32, 32)
    for row in summary.values():
        assert row["overestimation"] == pytest.approx(row["q_start"] - row["discounted_return"] - row["entropy_bonus"])
        assert row["entropy_bonus"] != 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in rows] == [("mbpo", 10), ("mbpo", 20), ("ravl", 10), ("ravl", 20)]
    assert (tmp_path / "run" / "q_vs_return.png").is_file()


@pytest.mark.parametrize("bad, message", [("updates=0", "updates must be a whole number >= 1, got 0"),
                                          ("eval_every=0", "eval_every must be a whole number >= 1, got 0"),
                                          ("eval_episodes=0", "eval_episodes must be a whole number >= 1, got 0"),
                                          ("methods=[mbpo,ravll]", "give distinct Dyna planners .*; ravll is not one"),
                                          ("methods=[ravl,ravl]", "one is repeated"),
                                          ("task=halfcheetah", r"expected \[50, 17\]")])  # (another task's data: before any file)
def test_edge_of_reach_refuses_counts_that_would_fail_after_the_work_or_skip_it(tmp_path, bad, message):
    from planners.edge_of_reach import main

    env = make_env("hopper", seed=1)
    save_d4rl(tmp_path / "d.hdf5", collect(env, correlated_noise_policy(env), 50))
    with pytest.raises(SystemExit, match=message):
        main([f"dataset={tmp_path / 'd.hdf5'}", "task=hopper", bad, f"run_dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


def test_edge_of_reach_resumes_from_its_checkpoint_and_extends_to_more_updates_and_methods(tmp_path):
    from planners.edge_of_reach import main

    env = make_env("hopper", seed=1)
    save_d4rl(tmp_path / "d.hdf5", collect(env, correlated_noise_policy(env), 300))
    common = [f"dataset={tmp_path / 'd.hdf5'}", "task=hopper", "eval_every=10", "rollout_batch_size=50",
              "rollout_every=10", "eval_episodes=1", f"run_dir={tmp_path / 'run'}"]  # fmt: skip
    main([*common, "updates=20", "methods=[mbpo]"])
    metrics = tmp_path / "run" / "metrics.jsonl"
    first = metrics.read_text().splitlines()
    with open(metrics, "a") as f:  # a record logged after the last checkpoint (a kill in between) is dropped
        f.write(json.dumps({"kind": "mbpo", "step": 30, "q_start": 0.0}) + "\n")
    summary = main([*common, "updates=30", "methods=[mbpo,ravl]"])
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert metrics.read_text().splitlines()[:2] == first  # mbpo's first 20 updates were not redone
    assert [(r["kind"], r["step"]) for r in rows] == [("mbpo", 10), ("mbpo", 20), ("mbpo", 30),
                                                      ("ravl", 10), ("ravl", 20), ("ravl", 30)]  # fmt: skip
    assert rows[2]["q_start"] != 0.0
    assert summary["mbpo"]["updates"] == summary["ravl"]["updates"] == 30
    with pytest.raises(SystemExit, match="other settings \\(rollout_length\\)"):
        main([*common, "updates=30", "rollout_length=3"])
    with pytest.raises(SystemExit, match="cannot shorten it"):  # (and the lock was released after each refusal)
        main([*common, "updates=20"])


def test_edge_of_reach_methods_learned_in_separate_processes_meet_in_one_plot(tmp_path):
    from planners.edge_of_reach import main

    env = make_env("hopper", seed=1)
    save_d4rl(tmp_path / "d.hdf5", collect(env, correlated_noise_policy(env), 300))
    common = [f"dataset={tmp_path / 'd.hdf5'}", "task=hopper", "updates=20", "eval_every=10", "rollout_batch_size=50",
              "rollout_every=10", "eval_episodes=1"]  # fmt: skip
    mbpo = main([*common, "methods=[mbpo]", f"run_dir={tmp_path / 'a'}"])
    with pytest.raises(SystemExit, match="compare_with=.* also runs \\['mbpo'\\]"):
        main([*common, "methods=[mbpo]", f"compare_with=[{tmp_path / 'a'}]", f"run_dir={tmp_path / 'x'}"])
    with pytest.raises(SystemExit, match="other settings: seed=0 \\(here 1\\)"):  # refused before any learning
        main([*common, "methods=[ravl]", "seed=1", f"compare_with=[{tmp_path / 'a'}]", f"run_dir={tmp_path / 'y'}"])
    assert not (tmp_path / "y").exists()
    both = main([*common, "methods=[ravl]", f"compare_with=[{tmp_path / 'a'}]", f"run_dir={tmp_path / 'b'}"])
    assert set(both) == {"mbpo", "ravl"}
    assert both["mbpo"]["q_start"] == mbpo["mbpo"]["q_start"] and both["mbpo"]["run_dir"] == str(tmp_path / "a")
    assert both["mbpo"]["updates"] == both["ravl"]["updates"] == 20
    assert (tmp_path / "b" / "q_vs_return.png").is_file()
    # a plot of runs still learning elsewhere: no methods of its own
    plotted = main([*common, "methods=[]", f"compare_with=[{tmp_path / 'a'},{tmp_path / 'b'}]", f"run_dir={tmp_path / 'c'}"])
    assert set(plotted) == {"mbpo", "ravl"} and (tmp_path / "c" / "q_vs_return.png").is_file()


def test_entropy_bonus_sums_the_discounted_entropy_of_the_episodes_own_later_states():
    from planners.edge_of_reach import entropy_bonus
    from planners.sac import SAC

    agent = SAC(3, -torch.ones(2), torch.ones(2))
    obs, gamma = torch.randn(4, 3), 0.9
    weights = gamma ** torch.arange(4, dtype=torch.float64)
    torch.manual_seed(0)
    bonus = entropy_bonus(agent, obs, weights)
    torch.manual_seed(0)
    _, log_prob = agent.actor(obs[1:])
    expected = agent.alpha.item() * sum(-lp * gamma**t for t, lp in zip((1, 2, 3), log_prob.tolist()))
    assert bonus == pytest.approx(expected, rel=1e-5)
    assert entropy_bonus(agent, obs[:1], weights[:1]) == 0.0  # an episode ended at its first step: no bonus
