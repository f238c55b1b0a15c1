"""`python -m worldmodel.run dataset=...`: offline learning, the switch to online, pretrained models, resume."""

import json
import math
import subprocess
import sys
import time
import warnings

import pytest
import torch

from worldmodel import EnsembleDynamics, ReplayBuffer, collect, correlated_noise_policy, make_env
from worldmodel.datasets import fingerprint, load_dataset, save_d4rl
from worldmodel.run import Run, load_config, main, validate
from worldmodel.transition_log import TransitionLog

TINY = [
    "env=hopper", "env.max_episode_steps=40", "train_every=30", "eval_every=30", "checkpoint_every=30",
    "fit_epochs=1", "model.fit.max_epochs=2", "offline.fit_epochs=2", "model.ensemble_size=3", "model.num_elites=2",
    "model.hidden=32", "offline.eval_every=20",
]  # fmt: skip
DYNA_TINY = ["planner.rollout_batch_size=200", "planner.rollout_every=20", "planner.updates_per_step=1",
             "planner.agent.hidden=32", "planner.agent.batch_size=64"]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    env = make_env("hopper", seed=1)
    path = tmp_path_factory.mktemp("data") / "hopper-noise.hdf5"
    save_d4rl(path, collect(env, correlated_noise_policy(env), 600), {"env": "hopper", "quality": "noise"})
    return path


def records(run_dir, kind):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


@pytest.mark.parametrize("planner, extra", [("mopo", DYNA_TINY), ("ravl", DYNA_TINY + ["planner.agent.num_critics=3"]),
                                            ("mbpo", DYNA_TINY), ("bc", [])])  # fmt: skip
def test_offline_then_online_run_writes_every_artifact(tmp_path, dataset, planner, extra):
    run_dir = tmp_path / planner
    summary = main([f"planner={planner}", f"dataset={dataset}", "offline.updates=40", "env_steps=60",
                    f"run_dir={run_dir}", *TINY, *extra])  # fmt: skip
    for name in ["config.yaml", "metrics.jsonl", "checkpoint.pt", "learning_curve.png", "summary.json"]:
        assert (run_dir / name).is_file(), name
    assert (run_dir / "model.pt").is_file() == (planner != "bc")  # behaviour cloning fits no model
    assert summary["offline_updates"] == 40 and summary["dataset_transitions"] == 600 and summary["env_steps"] == 60
    for key in ("final_eval_return", "best_eval_return", "offline_eval_return", "wall_s"):
        assert summary[key] is not None, key
    assert "normalized_score" not in summary  # 40-step episodes: D4RL's reference returns do not apply
    assert [r["step"] for r in records(run_dir, "offline_eval")] == [20, 40]
    # a Dyna policy's return is also estimated in the model alone (worldmodel.ope)
    assert all(("model_ret" in r) == (planner != "bc") and math.isfinite(r.get("model_ret", 0.0))
               for r in records(run_dir, "offline_eval"))
    evals = records(run_dir, "eval")
    assert [r["step"] for r in evals] == [0, 30, 60]  # step 0: the offline policy, where online starts
    offline = [r["ret"] for r in records(run_dir, "offline_eval")]
    assert summary["offline_evals"] == offline and evals[0]["ret"] == offline[-1]  # the policy online starts from
    assert summary["offline_eval_return"] == pytest.approx(sum(offline) / 2)  # the score: the last (<= 3) evaluations
    every = [r["ret"] for r in records(run_dir, "offline_eval") + evals]
    assert summary["best_eval_return"] == max(every)  # offline evaluations count too
    for r in records(run_dir, "offline_eval") + evals[1:]:  # each evaluation's episodes: their spread beside the mean
        assert r["ret_min"] <= r["ret"] <= r["ret_max"]
    for r in records(run_dir, "offline_eval"):  # (10 episodes from 10 start states: a spread)
        assert r["ret_min"] < r["ret_max"] and r["ret_std"] > 0
    saved = ReplayBuffer.from_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["buffer"])
    assert len(saved) == 660  # the dataset and every online step


def test_online_penalty_replaces_the_offline_one_at_the_switch(tmp_path, dataset):
    run_dir = tmp_path / "mopo"
    main(["planner=mopo", f"dataset={dataset}", "offline.updates=40", "env_steps=30", "online.penalty=0",
          f"run_dir={run_dir}", *TINY, *DYNA_TINY])  # fmt: skip
    offline = records(run_dir, "offline_train")
    assert [r["step"] for r in offline] == [20, 40] and all(r["penalty_mean"] > 0 for r in offline)
    assert [r["penalty_mean"] for r in records(run_dir, "train")] == [0.0]
    # MOPO's actor lr anneals along a cosine over the offline updates, and is constant (1e-4) online
    lrs = [r["actor_lr"] for r in offline]
    assert 0 < lrs[1] < lrs[0] < 1e-4 and lrs[1] < 1e-6
    assert [r["actor_lr"] for r in records(run_dir, "train")] == [1e-4]


def test_online_fine_tuning_anchors_the_actor_to_the_offline_policy(tmp_path, dataset):
    """With planner.agent.actor_anchor > 0 the switch holds the offline policy as the trust region's
    centre (saved with the agent); offline there is no anchor to measure a gap from, and no warning
    that the actor is not held (it is not meant to be, yet)."""
    run_dir = tmp_path / "mopo"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*actor_anchor.*")
        main(["planner=mopo", f"dataset={dataset}", "offline.updates=40", "env_steps=0",
              "planner.agent.actor_anchor=0.1", f"run_dir={run_dir}", *TINY, *DYNA_TINY])  # fmt: skip
    modules = torch.load(run_dir / "checkpoint.pt", weights_only=False)["planner"]["agent"]["modules"]
    actor = {k: v for k, v in modules.items() if k.startswith("actor.")}
    assert actor and all(torch.equal(modules["anchor." + k[len("actor."):]], v) for k, v in actor.items())
    assert all("anchor_gap" not in r for r in records(run_dir, "offline_train"))
    main([f"resume={run_dir}", "env_steps=30"])
    (online,) = records(run_dir, "train")
    assert 0 < online["anchor_gap"] < 0.1  # (30 updates at lr 1e-4 from the anchor)


def test_an_online_setting_the_planner_lacks_is_a_clear_error(tmp_path, dataset):
    with pytest.raises(SystemExit, match="online.penalty is set but planner 'bc' has no setting 'penalty'"):
        main(["planner=bc", f"dataset={dataset}", "offline.updates=20", "env_steps=0", "online.penalty=1",
              f"run_dir={tmp_path}", *TINY])  # fmt: skip


def test_a_bad_online_setting_is_refused_before_offline_learning(tmp_path, dataset):
    with pytest.raises(SystemExit, match=r"real_ratio must be in \[0, 1\], got 2"):
        main(["planner=mopo", f"dataset={dataset}", "online.real_ratio=2", f"run_dir={tmp_path / 'run'}", *TINY])
    assert not (tmp_path / "run").exists()


def test_online_settings_are_numbers_at_or_above_zero_but_the_exploration_bonus(dataset):
    base = ["planner=mppi", f"dataset={dataset}", *TINY]
    validate(load_config([*base, "online.uncertainty_penalty=-0.5"])[0])  # MPC's exploration bonus once online
    for bad in ("online.value_penalty=-0.5", "online.uncertainty_penalty=abc"):
        with pytest.raises(ValueError, match=rf"{bad.split('=')[0]} must be a number"):
            validate(load_config([*base, bad])[0])


def test_mppi_fine_tunes_a_model_pretrained_offline(tmp_path, dataset, monkeypatch):
    # seed=1: the pretrained weights must differ from the fresh seed-0 init the online run would build
    # itself (a 2-epoch fit whose epochs beat no member's initial weights on holdout keeps them)
    main(["planner=mopo", f"dataset={dataset}", "offline.updates=20", "env_steps=0", f"run_dir={tmp_path / 'off'}",
          "seed=1", *TINY, *DYNA_TINY])  # fmt: skip
    pretrained = tmp_path / "off" / "model.pt"
    loaded = EnsembleDynamics.load(pretrained)
    expected = loaded.state_dict()
    torch.manual_seed(0)
    fresh = EnsembleDynamics(**loaded.config).state_dict()
    assert not any(torch.equal(fresh[k], expected[k]) for k in expected if k.startswith("weights."))
    planned_with = []  # the model's full state (weights, normalisers, elites) at its first imagined step
    original_step = EnsembleDynamics.step

    def spy(model, *args, **kwargs):
        if not planned_with:
            planned_with.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return original_step(model, *args, **kwargs)

    monkeypatch.setattr(EnsembleDynamics, "step", spy)
    run_dir = tmp_path / "on"
    summary = main(["planner=mppi", f"model={pretrained}", "env_steps=30", f"run_dir={run_dir}",
                    "planner.candidates=32", "planner.horizon=4", *TINY])  # fmt: skip
    assert summary["env_steps"] == 30 and summary["model_fits"] == 1
    assert summary["plan_ms_per_step"] > 0
    # the planner's first plan (step 0, before any refit) used exactly the pretrained model
    assert planned_with and planned_with[0].keys() == expected.keys()
    assert [name for name, value in expected.items() if not torch.equal(planned_with[0][name], value)] == []
    # no random seed steps: every online step was planned, and the one refit (at train_every) was
    # the short fine-tune (fit_epochs=1), not a first fit (model.fit.max_epochs=2)
    progress = torch.load(run_dir / "checkpoint.pt", weights_only=True)["progress"]
    assert progress["plan_steps"] == 30 and progress["planning_errors"] == 0
    assert [(r["step"], r["epochs"]) for r in records(run_dir, "fit")] == [(30, 1)]
    with pytest.raises(SystemExit, match=r"model=\S*missing\.pt is neither a .*ensemble.* nor a model file"):
        main(["planner=mppi", f"model={tmp_path / 'missing.pt'}"])


def test_mpc_learned_value_trains_offline_too(tmp_path, dataset):
    run_dir = tmp_path / "mppi"
    main(["planner=mppi", "planner.value_learning=true", "planner.value_agent.hidden=32", f"dataset={dataset}",
          "offline.updates=40", "env_steps=0", "planner.candidates=32", "planner.horizon=4", f"run_dir={run_dir}",
          *TINY])  # fmt: skip
    trained = records(run_dir, "offline_train")
    assert [r["step"] for r in trained] == [20, 40] and all("critic_loss" in r for r in trained)


def test_online_settings_without_a_dataset_and_old_checkpoints_are_clear_errors(tmp_path, dataset):
    with pytest.raises(SystemExit, match="need dataset=<file>"):
        main(["planner=mopo", "online.penalty=0", f"run_dir={tmp_path / 'a'}", *TINY])
    run_dir = tmp_path / "run"
    main(["planner=bc", f"dataset={dataset}", "offline.updates=20", "env_steps=0", f"run_dir={run_dir}", *TINY])
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    checkpoint["version"] = 1
    torch.save(checkpoint, run_dir / "checkpoint.pt")
    with pytest.raises(SystemExit, match="older worldmodel"):
        main([f"resume={run_dir}"])


def test_a_dataset_for_another_task_is_refused(tmp_path, dataset, capsys):
    with pytest.raises(SystemExit, match="holds hopper transitions .* not halfcheetah's: give env=hopper"):
        main(["planner=mopo", f"dataset={dataset}", "env=halfcheetah", f"run_dir={tmp_path}"])
    assert "settings from configs/offline.yaml" not in capsys.readouterr().out  # (no preset named for the wrong task)
    # data without metadata: its shapes say it is not this task's
    save_d4rl(tmp_path / "bare.hdf5", load_dataset(dataset)[0])
    with pytest.raises(SystemExit, match="expected \\[600, 17\\]"):
        main(["planner=mopo", f"dataset={tmp_path / 'bare.hdf5'}", "env=halfcheetah", f"run_dir={tmp_path}"])
    # walker2d's and halfcheetah's data have the same shapes: the task the dataset's metadata names decides
    walker = make_env("walker2d", seed=0)
    save_d4rl(tmp_path / "walker.hdf5", collect(walker, correlated_noise_policy(walker), 50),
              {"env": "walker2d", "quality": "noise"})  # fmt: skip
    with pytest.raises(SystemExit, match="holds walker2d transitions .* not halfcheetah's: give env=walker2d"):
        main(["planner=mopo", f"dataset={tmp_path / 'walker.hdf5'}", "env=halfcheetah", f"run_dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


def test_offline_learning_resumes_where_it_stopped(tmp_path, dataset):
    run_dir = tmp_path / "run"
    main(["planner=mopo", f"dataset={dataset}", "offline.updates=20", "env_steps=0", f"run_dir={run_dir}",
          *TINY, *DYNA_TINY])  # fmt: skip
    summary = main([f"resume={run_dir}", "offline.updates=40", "env_steps=30"])
    assert summary["offline_updates"] == 40 and summary["env_steps"] == 30
    assert [r["step"] for r in records(run_dir, "offline_eval")] == [20, 40]
    assert [r["step"] for r in records(run_dir, "fit")] == [0, 30]  # the dataset was fitted once
    assert [r["step"] for r in records(run_dir, "eval")] == [0, 30]  # one switch point, the latest offline policy
    with pytest.raises(SystemExit, match="went online after 40 offline updates; offline.updates=60 would add more"):
        main([f"resume={run_dir}", "offline.updates=60", "env_steps=60"])  # (in the middle of its online phase)


def test_an_offline_budget_extended_after_the_switch_goes_on_along_one_cosine(tmp_path, dataset):
    """MOPO's actor lr anneals to 0 along a cosine over the offline updates; a finished offline run
    given more of them goes on along one cosine over the whole budget, as a run given it at once
    would, not along a fresh one from where it stopped."""
    run_dir = tmp_path / "run"
    main(["planner=mopo", f"dataset={dataset}", "offline.updates=40", "env_steps=0", f"run_dir={run_dir}",
          *TINY, *DYNA_TINY])  # fmt: skip
    main([f"resume={run_dir}", "offline.updates=80"])
    lr = {r["step"]: r["actor_lr"] for r in records(run_dir, "offline_train")}
    cosine = lambda update, total: 1e-4 * 0.5 * (1 + math.cos(math.pi * update / total))  # noqa: E731
    assert lr[20] == pytest.approx(cosine(19, 40))  # (a record shows the lr of its chunk's last update)
    assert lr[60] == pytest.approx(cosine(59, 80)) and lr[80] == pytest.approx(cosine(79, 80))


def test_a_run_killed_after_the_switch_makes_it_again_and_then_rejoins_its_steps(tmp_path, dataset):
    """SIGKILL after the switch to online and a few online steps, before any checkpoint after it:
    the resumed run makes the switch again from its checkpoint of before it (the actor anchor, one
    step-0 evaluation), then the logged steps rejoin the buffer; no refit fell due in them, so none
    is made."""
    run_dir = tmp_path / "run"
    every = ("checkpoint_every", "train_every", "eval_every")
    cmd = [sys.executable, "-m", "worldmodel.run", "planner=mopo", f"dataset={dataset}", "offline.updates=40",
           "env_steps=5000", "planner.agent.actor_anchor=0.1", f"run_dir={run_dir}",
           *[a for a in TINY if not a.startswith(every)], *DYNA_TINY,
           "checkpoint_every=100000", "train_every=1000", "eval_every=1000"]  # fmt: skip

    def logged() -> int:
        return len(TransitionLog(run_dir / "transitions", 11, 3, repair=False)) if (run_dir / "transitions").is_dir() else 0

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while logged() < 10:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    steps = logged()
    assert 10 <= steps < 1000 and json.loads((run_dir / "summary.json").read_text())["env_steps"] == 0
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*actor_anchor.*")  # (no anchor: SAC.update warns)
        summary = main([f"resume={run_dir}", f"env_steps={steps + 10}"])
    assert summary["status"] == "finished" and summary["env_steps"] == steps + 10
    modules = torch.load(run_dir / "checkpoint.pt", weights_only=False)["planner"]["agent"]["modules"]
    assert any(k.startswith("anchor.") for k in modules)
    assert [r["step"] for r in records(run_dir, "eval")] == [0, steps + 10]
    assert [r["step"] for r in records(run_dir, "fit")] == [0]  # the dataset's fit alone


def test_model_score_selection_keeps_the_snapshot_with_the_best_model_return(tmp_path, dataset, monkeypatch):
    """offline.select=model_score: offline learning ends with the evaluated actor whose return in
    the model was best (here the second of three), scored by its evaluation; the trained actor is
    kept aside for more offline updates or offline.select=last."""
    import worldmodel.run

    estimates, seen = iter([90.0, 100.0, 80.0, 70.0]), []  # each evaluation's model return

    def model_return(model, policy, starts, *args):  # records what the evaluated actor does
        seen.append((starts, policy(starts)))
        return torch.full((len(starts),), next(estimates))

    def saved_actions() -> torch.Tensor:  # the saved run's actor at those start states
        run = Run(load_config([f"resume={run_dir}"])[0])
        run.restore(run_dir)
        return run.planner.act(seen[0][0], deterministic=True)

    monkeypatch.setattr(worldmodel.run, "model_return", model_return)
    run_dir = tmp_path / "run"
    summary = main(["planner=mopo", f"dataset={dataset}", "env_steps=0", f"run_dir={run_dir}", "offline.updates=60",
                    "offline.select=model_score", *TINY, *DYNA_TINY])  # fmt: skip
    evals = records(run_dir, "offline_eval")
    assert [r["model_ret"] for r in evals] == [90.0, 100.0, 80.0]
    assert summary["selected_updates"] == 40 and summary["selected_model_return"] == 100.0
    assert summary["selected_eval_return"] == summary["final_eval_return"] == evals[1]["ret"]
    assert summary["offline_eval_return"] == pytest.approx(sum(r["ret"] for r in evals) / 3)  # (the last-3 mean)
    assert not torch.equal(seen[1][1], seen[2][1])  # (the snapshot and the last actor act apart)
    assert torch.equal(saved_actions(), seen[1][1])  # the snapshot's actor, not the last one
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)  # ... with its own critics and temperature
    agent, kept = ckpt["planner"]["agent"], ckpt["trained_agent"]
    assert agent["updates"] == 40 and kept["updates"] == 60
    for key in ("critics.weights.1", "target_critics.weights.1", "log_alpha"):
        assert torch.equal(agent["modules"][key], ckpt["selected_agent"]["modules"][key])
        assert not torch.equal(agent["modules"][key], kept["modules"][key]), key
    summary = main([f"resume={run_dir}", "offline.select=last"])  # the trained actor back, scored as usual
    assert torch.equal(saved_actions(), seen[2][1]) and summary["final_eval_return"] == summary["offline_eval_return"]
    summary = main([f"resume={run_dir}", "offline.select=model_score", "offline.updates=80", "env_steps=30"])
    assert summary["selected_updates"] == 40 and [r["model_ret"] for r in records(run_dir, "offline_eval")][-1] == 70.0
    assert records(run_dir, "eval")[0]["ret"] == evals[1]["ret"]  # online starts from the snapshot
    for bad, match in ((["offline.select=best"], "offline.select=best: use one of last, model_score"),
                       (["planner=bc", "offline.select=model_score"], "needs dataset=<file>, a Dyna planner"),
                       (["offline.select=model_score", "offline.model_eval_starts=0"], "model_eval_starts > 0")):  # fmt: skip
        with pytest.raises(SystemExit, match=match):
            main([f"dataset={dataset}", f"run_dir={tmp_path / 'bad'}", *TINY, *bad])
        assert not (tmp_path / "bad").exists()


def test_a_run_from_before_the_selection_cannot_select_by_model_score(tmp_path, dataset):
    run_dir = tmp_path / "run"
    main(["planner=mopo", f"dataset={dataset}", "env_steps=0", f"run_dir={run_dir}", "offline.updates=20",
          *TINY, *DYNA_TINY])  # fmt: skip
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    del ckpt["progress"]["selected"], ckpt["selected_agent"], ckpt["trained_agent"]  # as an older run saved it
    torch.save(ckpt, run_dir / "checkpoint.pt")
    with pytest.raises(SystemExit, match="resume it with offline.select=last"):
        main([f"resume={run_dir}", "offline.select=model_score"])
    summary = main([f"resume={run_dir}", "offline.updates=40"])  # its later evaluations alone cannot name a best one
    assert "selected_updates" not in summary and summary["offline_updates"] == 40


def test_the_offline_fit_records_its_holdout_curve(tmp_path, dataset):
    run_dir = tmp_path / "run"
    main(["planner=mopo", f"dataset={dataset}", "offline.updates=20", "env_steps=0", f"run_dir={run_dir}",
          *TINY, *DYNA_TINY, "offline.fit_epochs=3"])  # fmt: skip
    curve = records(run_dir, "offline_fit")
    assert [r["step"] for r in curve] == [1, 2, 3] and all(r["holdout_mse"] > 0 for r in curve)
    (fit,) = records(run_dir, "fit")
    assert fit["epochs"] == 3 and fit["holdout_calibration"] > 0 and "holdout_calibration_fitted" not in fit


def test_a_recalibrated_fit_records_its_calibration_before_and_after(tmp_path, dataset):
    run_dir = tmp_path / "run"
    main(["planner=mopo", f"dataset={dataset}", "offline.updates=20", "env_steps=0", f"run_dir={run_dir}",
          *TINY, *DYNA_TINY, "offline.fit_epochs=3", "model.fit.recalibrate=true"])  # fmt: skip
    (fit,) = records(run_dir, "fit")
    assert fit["holdout_calibration"] == pytest.approx(1.0, rel=1e-3)  # on the fit's holdout, by construction
    assert fit["holdout_calibration_fitted"] > 0 and fit["holdout_calibration_fitted"] != pytest.approx(1.0, rel=1e-3)


def test_a_given_model_is_used_as_it_is_not_refit_on_the_dataset(tmp_path, dataset):
    main(["planner=mopo", f"dataset={dataset}", "offline.updates=20", "env_steps=0", f"run_dir={tmp_path / 'a'}",
          *TINY, *DYNA_TINY])  # fmt: skip
    given = tmp_path / "a" / "model.pt"
    main(["planner=mopo", f"dataset={dataset}", f"model={given}", "offline.updates=20", "env_steps=0",
          f"run_dir={tmp_path / 'b'}", *TINY, *DYNA_TINY])  # fmt: skip
    assert records(tmp_path / "b", "fit") == []  # no refit (it would draw a new holdout split)
    before, after = EnsembleDynamics.load(given).state_dict(), EnsembleDynamics.load(tmp_path / "b" / "model.pt").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("quality, given, expected", [
    ("medium", [], {"penalty": 5.0, "rollout_length": 5}),
    ("medium", ["planner.penalty=1.5"], {"penalty": 1.5, "rollout_length": 5}),  # the command line wins
    ("noise", [], {"penalty": 1.0, "rollout_length": 5}),  # no entry: MOPO's defaults
    ("noise", ["offline.preset=walker2d-medium-replay"], {"penalty": 1.0, "rollout_length": 1}),  # named preset
])  # fmt: skip
def test_mopo_takes_the_settings_of_its_dataset(tmp_path, quality, given, expected):
    env = make_env("hopper", seed=1)
    path = tmp_path / f"hopper-{quality}.hdf5"
    save_d4rl(path, collect(env, correlated_noise_policy(env), 200), {"env": "hopper", "quality": quality})
    run_dir = tmp_path / "run"
    summary = main(["planner=mopo", f"dataset={path}", "offline.updates=0", "env_steps=0", f"run_dir={run_dir}",
                    *TINY, *DYNA_TINY, *given])  # fmt: skip
    from omegaconf import OmegaConf

    planner = OmegaConf.load(run_dir / "config.yaml").planner
    assert {k: planner[k] for k in expected} == expected
    assert summary["dataset_settings"] == {k: v for k, v in expected.items() if (quality == "medium" or given)
                                           and f"planner.{k}={v}" not in given}  # fmt: skip


def test_a_dataset_without_task_and_quality_says_no_preset_applies(tmp_path, capsys):
    """A D4RL or Minari file of one's own names no task and quality: MOPO runs at its defaults, and
    says so (with how to pick a dataset's settings), rather than leaving a table to imply tuned ones."""
    env = make_env("hopper", seed=1)
    save_d4rl(tmp_path / "mine.hdf5", collect(env, correlated_noise_policy(env), 200))
    main(["planner=mopo", f"dataset={tmp_path / 'mine.hdf5'}", "offline.updates=0", "env_steps=0",
          f"run_dir={tmp_path / 'run'}", *TINY, *DYNA_TINY])  # fmt: skip
    assert "names no task and quality: no per-dataset mopo settings" in capsys.readouterr().out
    main(["planner=bc", f"dataset={tmp_path / 'mine.hdf5'}", "offline.preset=hopper-medium", "offline.updates=0",
          "env_steps=0", f"run_dir={tmp_path / 'bc'}", *TINY])  # fmt: skip
    assert "offline.preset=hopper-medium: configs/offline.yaml gives bc no settings" in capsys.readouterr().out


def test_an_unknown_preset_lists_the_known_ones(tmp_path, dataset):
    with pytest.raises(SystemExit, match="offline.preset=hopper-mediocre is not in configs/offline.yaml; known: "
                                         "halfcheetah-medium, halfcheetah-medium-replay, hopper-medium"):
        main(["planner=mopo", f"dataset={dataset}", "offline.preset=hopper-mediocre", f"run_dir={tmp_path / 'r'}", *TINY])
    assert not (tmp_path / "r").exists()


def test_report_aggregates_seeds_into_mean_spread_and_curves(tmp_path, dataset):
    from worldmodel.report import aggregate
    from worldmodel.report import main as report

    for seed in (0, 1):
        main(["planner=bc", f"dataset={dataset}", "offline.updates=40", "env_steps=0", f"seed={seed}",
              f"run_dir={tmp_path / 'runs' / f'bc-{seed}'}", *TINY])  # fmt: skip
    (rows,) = report([str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    finals = [json.loads((tmp_path / "runs" / f"bc-{s}" / "summary.json").read_text())["final_eval_return"] for s in (0, 1)]
    assert rows["group"] == "hopper-noise" and rows["planner"] == "bc" and rows["seeds"] == [0, 1]
    assert rows["scores"] == finals and rows["mean"] == pytest.approx(sum(finals) / 2) and rows["progress"] == [40]
    assert (tmp_path / "report" / "hopper-noise.png").is_file() and (tmp_path / "report" / "report.md").is_file()
    assert (tmp_path / "report" / "summary.json").is_file()
    assert rows["datasets"] == [fingerprint(load_dataset(dataset)[0])]
    assert "different datasets" not in (tmp_path / "report" / "report.md").read_text()
    # a third seed on other data under the same name (another machine's remake): the report flags the row
    data, metadata = load_dataset(dataset)
    data["reward"][0] += 1.0
    save_d4rl(tmp_path / "other" / "hopper-noise.hdf5", data, {k: v for k, v in metadata.items() if k != "fingerprint"})
    main(["planner=bc", f"dataset={tmp_path / 'other' / 'hopper-noise.hdf5'}", "offline.updates=40", "env_steps=0",
          "seed=2", f"run_dir={tmp_path / 'runs' / 'bc-2'}", *TINY])  # fmt: skip
    (rows,) = report([str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    assert rows["seeds"] == [0, 1, 2] and len(rows["datasets"]) == 2
    assert "on 2 different datasets" in (tmp_path / "report" / "report.md").read_text()
    stats = aggregate([1.0, 2.0, 3.0])
    assert {k: stats[k] for k in ("n", "mean", "std", "ci95")} == pytest.approx({"n": 3, "mean": 2.0, "std": 1.0,
                                                                                "ci95": 4.303 / 3**0.5})  # fmt: skip
    with pytest.raises(SystemExit, match="no run directory"):
        report([str(tmp_path / "report")])


def test_a_pretrained_run_directory_brings_its_agent_fowm_style(tmp_path, dataset):
    """pretrained=<offline MOPO run>: MPPI online starts from its model and, as its learned value,
    the MOPO agent's critics (same SAC sizes); a model file alone brings no agent."""
    from planners import load_pretrained_agent

    offline = tmp_path / "mopo"
    main(["planner=mopo", f"dataset={dataset}", "offline.updates=20", "env_steps=0", f"run_dir={offline}",
          *TINY, *DYNA_TINY])  # fmt: skip
    run = Run(load_config(["planner=mppi", f"pretrained={offline}", "env_steps=40", "planner.candidates=32",
                           "planner.value_agent.hidden=32", *TINY])[0])  # fmt: skip
    saved = torch.load(offline / "checkpoint.pt", weights_only=False)["planner"]["agent"]["modules"]
    loaded = run.planner.value_agent.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert torch.equal(run.model.weights[0], EnsembleDynamics.load(offline / "model.pt").weights[0])
    agent = run.planner.value_agent  # MOPO annealed its actor's lr to 0 offline; online it learns again
    assert agent.actor_lr_horizon is None and agent.actor_optim.param_groups[0]["lr"] == agent.config.actor_lr
    with pytest.raises(ValueError, match="the pretrained agent does not fit this planner's"):
        big = Run(load_config(["planner=mppi", f"model={offline / 'model.pt'}", *TINY])[0])
        load_pretrained_agent(big.planner, torch.load(offline / "checkpoint.pt", weights_only=False)["planner"])


def test_a_stop_during_the_offline_fit_saves_it_and_the_resumed_run_continues_it(tmp_path, dataset):
    """SIGINT in the middle of the (long) offline fit: its state goes to fit_state.pt after the
    current epoch and the run stops; the resumed run picks the fit up at that epoch."""
    from worldmodel.interrupts import RunInterrupted

    run_dir = tmp_path / "run"
    args = ["planner=mopo", f"dataset={dataset}", "offline.updates=20", "env_steps=0", f"run_dir={run_dir}",
            *TINY, *DYNA_TINY, "offline.fit_epochs=6", "model.fit.patience=6"]  # fmt: skip
    run = Run(load_config(args)[0])
    run.open(run_dir)
    update = run.planner.update

    def signalled_during_the_fit(**kwargs):
        run.stop.requested = "SIGINT"  # as the signal handler sets it, while the fit runs
        return update(**kwargs)

    run.planner.update = signalled_during_the_fit
    with pytest.raises(RunInterrupted):
        run.run()
    run.close()
    assert (run_dir / "fit_state.pt").is_file() and json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    state = torch.load(run_dir / "fit_state.pt", weights_only=False)
    state["fit"]["wall_s"] = 3600.0  # (as if the cut-short fit had run an hour)
    torch.save(state, run_dir / "fit_state.pt")
    summary = main([f"resume={run_dir}"])
    assert summary["status"] == "finished" and not (run_dir / "fit_state.pt").exists()
    assert summary["wall_s"] > 3600 and records(run_dir, "fit")[0]["wall_s"] > 3600  # the hour is counted
    assert [r["step"] for r in records(run_dir, "offline_fit")] == [1, 2, 3, 4, 5, 6]  # epoch 1 kept, 2-6 resumed
    assert len(records(run_dir, "fit")) == 1


@pytest.mark.parametrize("stop_at", [200, 400])
def test_a_stop_in_the_updates_before_an_evaluation_waits_for_it(tmp_path, dataset, stop_at):
    """SIGINT during the chunk of updates that reaches an evaluation (here the one at 200, or the
    last one at 400): the evaluation runs, then the run stops; the resumed run skips none."""
    from worldmodel.interrupts import RunInterrupted

    run_dir = tmp_path / "run"
    args = [*TINY, "planner=bc", f"dataset={dataset}", "offline.updates=400", "offline.eval_every=200", "env_steps=0",
            f"run_dir={run_dir}"]  # fmt: skip
    run = Run(load_config(args)[0])
    run.open(run_dir)
    learn = run.planner.learn

    def signalled_before_the_evaluation(n=None):
        if run.progress["offline_updates"] + n >= stop_at:
            run.stop.requested = "SIGINT"
        return learn(n)

    run.planner.learn = signalled_before_the_evaluation
    with pytest.raises(RunInterrupted):
        run.run()
    run.close()
    assert [r["step"] for r in records(run_dir, "offline_eval")] == [200, 400][: stop_at // 200]
    main([f"resume={run_dir}"])
    assert [r["step"] for r in records(run_dir, "offline_eval")] == [200, 400]


def test_a_resume_refuses_a_dataset_made_again_at_the_same_path(tmp_path, dataset):
    """The run keeps the fingerprint of the data it learned from; other transitions at that path
    (the file made again: another seed or CPU) are a clear error, not a run on two datasets."""
    import shutil

    data = tmp_path / "data.hdf5"
    shutil.copy(dataset, data)
    run_dir = tmp_path / "run"
    main(["planner=bc", f"dataset={data}", "offline.updates=20", "env_steps=0", f"run_dir={run_dir}", *TINY])
    env = make_env("hopper", seed=2)
    save_d4rl(data, collect(env, correlated_noise_policy(env), 600), {"env": "hopper", "quality": "noise"})
    with pytest.raises(SystemExit, match="the run learned from dataset .* now holds"):
        main([f"resume={run_dir}", "offline.updates=40"])


def test_the_same_seed_reproduces_an_offline_run(tmp_path, dataset):
    def run(name, seed):
        summary = main(["planner=mopo", f"dataset={dataset}", "offline.updates=40", "env_steps=0", f"seed={seed}",
                        f"run_dir={tmp_path / name}", *TINY, *DYNA_TINY])  # fmt: skip
        return summary["offline_evals"], [r["critic_loss"] for r in records(tmp_path / name, "offline_train")]

    first = run("a", 5)
    assert run("b", 5) == first and run("c", 6) != first


def test_a_long_run_checkpoints_by_the_clock_between_evaluations(tmp_path, dataset, monkeypatch):
    """checkpoint_minutes: a checkpoint after each chunk of updates once that much wall time has
    passed (here: at once), so a run that dies between evaluations resumes from the last one, not
    from the last evaluation; null keeps to the evaluations."""
    args = [*TINY, "planner=bc", f"dataset={dataset}", "offline.updates=400", "offline.eval_every=400", "env_steps=0"]
    saved = {}
    for minutes in ("null", "1e-9"):
        run = Run(load_config([*args, f"checkpoint_minutes={minutes}", f"run_dir={tmp_path / minutes}"])[0])
        saves, save = [], run.save
        monkeypatch.setattr(run, "save", lambda: (saves.append(run.progress["offline_updates"]), save())[1])
        run.open(tmp_path / minutes)
        run.run()
        run.close()
        saved[minutes] = saves
    assert saved["null"] == [0, 400]  # the start, the evaluation
    assert saved["1e-9"] == [0, 100, 200, 300, 400]

    run_dir = tmp_path / "killed"
    run = Run(load_config([*args, "checkpoint_minutes=1e-9", f"run_dir={run_dir}"])[0])
    run.open(run_dir)
    learn = run.planner.learn

    def dies_after_300(n=None):
        if run.progress["offline_updates"] >= 300:
            raise MemoryError("killed")  # (no chance to save, as a SIGKILL)
        return learn(n)

    run.planner.learn = dies_after_300
    with pytest.raises(MemoryError):
        run.run()
    run.close()
    resumed = Run(load_config([f"resume={run_dir}"])[0])
    resumed.restore(run_dir)
    assert resumed.progress["offline_updates"] == 300  # 300 of 400 updates kept, not 0


@pytest.mark.parametrize("bad", ["0", "-1", "true", "soon", "nan", "inf"])
def test_checkpoint_minutes_is_a_positive_number_or_null(dataset, bad):
    refused = ((SystemExit, f"checkpoint_minutes={bad}: settings are finite numbers") if bad in ("nan", "inf")
               else (ValueError, "checkpoint_minutes must be a number > 0"))  # (nan, inf: as the config is read)
    with pytest.raises(refused[0], match=refused[1]):
        validate(load_config([*TINY, "planner=bc", f"dataset={dataset}", f"checkpoint_minutes={bad}"])[0])
