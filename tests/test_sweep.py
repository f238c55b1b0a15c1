"""Multirun on Ray (worldmodel.sweep) and the report's statistics: the sweep's jobs, their
checks before any job starts, a real 2-job Ray sweep with one job killed mid-run and retried,
and confidence intervals against hand-computed cases."""

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from worldmodel.report import aggregate, bootstrap_ci, iqm
from worldmodel.sweep import expand, split_args

TINY = ["planner=mppi", "seed_steps=60", "train_every=60", "env.max_episode_steps=100",
        "model.fit.max_epochs=2", "model.ensemble_size=3", "model.num_elites=2", "model.hidden=32",
        "planner.candidates=64", "planner.horizon=5"]  # fmt: skip


def test_sweep_overrides_expand_to_their_cartesian_product_in_hydras_grammar():
    jobs = expand(["seed=0,1,2", "env=hopper,walker2d", "planner=mopo", "offline.updates=range(10,30,10)"])
    assert len(jobs) == 12 and jobs[0] == ["seed=0", "env=hopper", "planner=mopo", "offline.updates=10"]
    assert jobs[-1] == ["seed=2", "env=walker2d", "planner=mopo", "offline.updates=20"]
    overrides, launcher, sweep_dir, config = split_args(["--multirun", "seed=0,1", "hydra/launcher=basic",
                                                         "hydra.sweep.dir=/tmp/x", "hydra.launcher.cpus_per_job=2"])  # fmt: skip
    assert overrides == ["seed=0,1"] and launcher == "basic" and str(sweep_dir) == "/tmp/x" and config.threads == 2


@pytest.mark.parametrize("argv, message", [
    (["seed=0,1", "env=hopper,hoppr"], "job 1 .*unknown env 'hoppr'"),
    (["env=hopper", "planner.horizon=5,-1"], "job 1 .*horizon and particles must be >= 1"),
    (["seed=0,1", "env=hopper", "hydra/launcher=slurm"], "unknown hydra/launcher=slurm"),
    (["seed=0,1", "env=hopper", "hydra.launcher.gpus=1"], "unknown hydra.launcher.gpus"),
    (["seed=0,1", "env=hopper", "run_dir=/tmp/r"], "sets each job's run_dir"),
    (["seed=0,1", "env=hopper", "threads=2"], "sets each job's threads itself: hydra.launcher.threads_per_job"),
    (["seed=0,1", "env=hopper", "hydra.launcher.cpus_per_job=abc"], "cpus_per_job must be a number, got 'abc'"),
    (["seed=0,1", "env=hopper", "hydra.launcher.threads_per_job=0"], "threads_per_job must be >= 1"),
    (["seed=0,1", "env=hopper", "hydra/launcher=ray", "hydra.launcher.threads_per_job=999"], "every job would fail"),
    (["seed=0,1", "env=hopper", "hydra/launcher=ray", "hydra.launcher.threads_per_job=1",
      "hydra.launcher.max_workers=999"], "would oversubscribe this machine's"),
])  # fmt: skip
def test_a_bad_sweep_is_refused_before_any_job_starts(tmp_path, argv, message):
    from worldmodel.run import main

    with pytest.raises(SystemExit, match=message):
        main(["--multirun", *TINY, "env_steps=100", *argv, f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert not (tmp_path / "sweep").exists()


def test_a_sweep_directory_resumes_its_own_sweep_and_refuses_another(tmp_path):
    import yaml

    from worldmodel.run import main

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"jobs": [{"overrides": ["seed=7"]}]}))
    with pytest.raises(SystemExit, match="holds another sweep"):
        main(["--multirun", *TINY, "env=hopper", "env_steps=100", "seed=0,1", f"hydra.sweep.dir={sweep}"])


def test_a_ray_multirun_retries_a_killed_job_from_its_checkpoint_and_reports_both(tmp_path):
    """Two jobs on a local Ray instance; job 0's process is SIGKILLed once it has checkpointed:
    Ray retries it, the retry resumes from the checkpoint, both finish, the report has both."""
    from worldmodel.report import main as report
    from worldmodel.run import main

    sweep = tmp_path / "sweep"
    killed, sweep_over = {}, threading.Event()

    def kill_job_0_mid_run():  # (no deadline: a loaded machine may take minutes to start Ray and the jobs)
        while not sweep_over.is_set() and not killed:
            try:
                summary = json.loads((sweep / "0" / "summary.json").read_text())
                if summary.get("env_steps", 0) >= 60:
                    pid = int((sweep / "0" / "job.pid").read_text())
                    os.kill(pid, signal.SIGKILL)
                    killed["at"] = summary["env_steps"]
            except (OSError, ValueError):
                pass
            time.sleep(0.02)

    killer = threading.Thread(target=kill_job_0_mid_run, daemon=True)
    killer.start()
    status = main(["--multirun", *TINY, "env=hopper", "env_steps=300", "checkpoint_every=60", "eval_every=300", "seed=0,1",
                   "hydra/launcher=ray", "hydra.launcher.max_workers=2", f"hydra.sweep.dir={sweep}"])  # fmt: skip
    sweep_over.set()
    killer.join()
    assert killed, "job 0 finished before it could be killed"
    assert status["finished"] == 2 and status["failed"] == 0
    attempts = json.loads((sweep / "0" / "job.json").read_text())["attempts"]
    assert [a["returncode"] for a in attempts] == [-signal.SIGKILL, 0]
    assert attempts[1]["argv"][0] == f"resume={sweep / '0'}" and attempts[1]["resumed_at_step"] >= 60
    for job in (0, 1):
        summary = json.loads((sweep / str(job) / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["env_steps"] == 300 and summary["seed"] == job
    (row,) = report([str(sweep), "--out", str(sweep / "report")])
    assert row["n"] == 2 and row["seeds"] == [0, 1] and row["planner"] == "mppi"
    assert json.loads((sweep / "report" / "summary.json").read_text())["hopper/mppi"]["n"] == 2
    (again,) = report([str(sweep), "--out", str(sweep / "report")])  # its own summary.json is no run
    assert again["n"] == 2


def test_confidence_intervals_and_iqm_match_hand_computed_cases():
    # Student's t, 2 degrees of freedom: mean 2, std 1, half-width 4.303 / sqrt(3)
    assert aggregate([1.0, 2.0, 3.0])["ci95"] == pytest.approx(4.303 / 3**0.5)
    # two scores 0 and 1: a resample's mean is 0 (p 1/4), 0.5 (1/2) or 1 (1/4), so the 2.5% and
    # 97.5% quantiles of the bootstrap distribution are exactly 0 and 1
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    # one score 10 among nine 0s: a resample's mean is k/10 with k ~ Binomial(10, 0.1), so
    # P(mean = 0) = 0.9^10 = 0.349 > 2.5% and P(mean >= 4/10) = 0.0128 < 2.5% <= P(mean >= 3/10) = 0.070
    assert bootstrap_ci([0.0] * 9 + [10.0]) == (0.0, 3.0)
    # IQM of 1..8: drop 2 at each end, the mean of 3, 4, 5, 6
    assert iqm(np.arange(1.0, 9.0)) == 4.5
    stats = aggregate([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 100.0])
    assert stats["iqm"] == 4.5 and stats["mean"] == pytest.approx(16.0)  # the IQM shrugs off the outlier
    assert stats["iqm_ci_low"] <= 4.5 <= stats["iqm_ci_high"] and "iqm" not in aggregate([1.0, 2.0, 3.0])


@pytest.fixture(scope="module")
def offline_setup(tmp_path_factory):
    """A small hopper dataset (task and quality in its metadata) and a model fitted on it."""
    import torch

    from worldmodel import EnsembleDynamics, collect, correlated_noise_policy, make_env
    from worldmodel.datasets import save_d4rl

    env = make_env("hopper", seed=1)
    root = tmp_path_factory.mktemp("offline")
    data = collect(env, correlated_noise_policy(env), 600)
    save_d4rl(root / "hopper-noise.hdf5", data, {"env": "hopper", "quality": "noise"})
    torch.manual_seed(0)
    model = EnsembleDynamics(11, 3, ensemble_size=3, num_elites=2, hidden=32, termination_fn=env.task_spec.termination_fn)
    model.fit(data, max_epochs=2, progress=False)
    model.save(root / "model.pt")
    return root / "hopper-noise.hdf5", root / "model.pt"


OFFLINE_TINY = ["planner=mopo", "env=hopper", "env.max_episode_steps=40", "env_steps=0", "offline.updates=40",
                "offline.eval_every=20", "offline.eval_episodes=1", "planner.rollout_batch_size=200",
                "planner.rollout_every=20", "planner.agent.hidden=32", "planner.agent.batch_size=64"]  # fmt: skip


def test_an_optuna_search_runs_its_trials_on_ray_resumes_and_keeps_the_best(tmp_path, offline_setup):
    from worldmodel.search import main as search

    dataset, model = offline_setup
    out = tmp_path / "search"
    given = [*OFFLINE_TINY, f"dataset={dataset}", f"pretrained={model}", "planner.uncertainty=ensemble_std",
             f"hydra.sweep.dir={out}", "search.max_penalty=5"]  # fmt: skip
    best = search([*given, "search.trials=3", "search.parallel=2", "hydra.launcher.max_workers=2"])
    assert best["trials"] == 3 and best["failed"] == 0 and (out / "best.yaml").is_file()
    scores = {}
    for n in range(3):
        summary = json.loads((out / f"trial-{n}" / "summary.json").read_text())
        config = (out / f"trial-{n}" / "config.yaml").read_text()
        assert summary["status"] == "finished" and summary["offline_updates"] == 40
        assert "uncertainty: ensemble_std" in config  # a setting given on the command line is not searched
        scores[n] = summary["final_eval_return"]
    assert best["value"] == max(scores.values()) and best["run_dir"] == str(out / f"trial-{max(scores, key=scores.get)}")
    assert set(best["params"]) == {"planner.penalty", "planner.rollout_length", "planner.real_ratio"}  # (model given: no elites)
    assert 0.1 <= best["params"]["planner.penalty"] <= 5
    again = search([*given, "search.trials=4", "hydra/launcher=basic"])  # the same study, one trial more
    assert again["trials"] == 4 and (out / "trial-3" / "summary.json").is_file() and not (out / "trial-4").exists()
    with pytest.raises(SystemExit, match="holds a search of other settings"):  # another space: not this study
        search([*given[:-1], "search.max_penalty=3", "search.trials=5", "hydra/launcher=basic"])
    assert not (out / "trial-4").exists()


def test_the_best_settings_become_the_datasets_preset_and_the_rest_of_the_file_stays(tmp_path):
    from worldmodel.config import CONFIG_DIR
    from worldmodel.search import save_preset

    path = tmp_path / "offline.yaml"
    original = (CONFIG_DIR / "offline.yaml").read_text()
    path.write_text(original)
    save_preset("mopo", "hopper-medium", {"planner.penalty": 1.25, "planner.rollout_length": 3}, path)
    save_preset("mopo", "ant-medium", {"planner.penalty": 0.5}, path)
    save_preset("ravl", "hopper-medium", {"planner.real_ratio": 0.1}, path)
    save_preset("ravl", "walker2d-medium", {"planner.real_ratio": 0.123456789, "planner.penalty": 5.0}, path)
    import yaml

    table = yaml.safe_load(path.read_text())
    assert table["mopo"]["hopper-medium"] == {"penalty": 1.25, "rollout_length": 3}
    # a float is kept exactly, and as a float (5.0, not 5: runs' settings compare as written)
    assert table["ravl"]["walker2d-medium"] == {"real_ratio": 0.123456789, "penalty": 5.0}
    assert isinstance(table["ravl"]["walker2d-medium"]["penalty"], float)
    assert table["mopo"]["ant-medium"] == {"penalty": 0.5} and table["ravl"]["hopper-medium"] == {"real_ratio": 0.1}
    before = yaml.safe_load(original)
    assert table["mopo"]["walker2d-medium"] == before["mopo"]["walker2d-medium"]  # the other rows stay
    assert path.read_text().count("#") >= original.count("#")  # and so do the comments


def test_search_settings_are_read_as_the_runs_overrides_are_and_type_checked():
    from worldmodel.search import _split

    rest, cfg = _split(["search.min_penalty=1e-2", "search.trials=3", "planner=mopo"])
    assert rest == ["planner=mopo"] and cfg.min_penalty == 0.01 and cfg.trials == 3
    for bad, message in (("search.trials=2.5", "search.trials must be int, got 2.5"),
                         ("search.save=1", "search.save must be bool, got 1"),
                         ("search.max_penalty=lots", "search.max_penalty must be float, got 'lots'"),
                         ("search.trials=0", "search.trials must be >= 1, got 0"),
                         ("search.parallel=0", "search.parallel must be >= 1, got 0"),
                         ("search.max_penalty=.nan", r"0 < search.min_penalty < search.max_penalty \(finite\), got .* and nan"),
                         ("search.max_penalty=.inf", "got .* and inf")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            _split([bad])


def test_a_searchs_trials_get_absolute_paths_and_no_run_directory_of_the_users(tmp_path, offline_setup, monkeypatch):
    """A search's fixed overrides reach its trials as a multirun's reach its jobs: a relative path
    made absolute (a Ray worker starts elsewhere), resume= or threads= refused."""
    from worldmodel.search import main as search
    from worldmodel.sweep import shared_overrides

    dataset, _ = offline_setup
    monkeypatch.chdir(dataset.parent)
    assert shared_overrides([f"dataset={dataset.name}", "seed=1"]) == [f"dataset={dataset}", "seed=1"]
    for bad, message in (("resume=elsewhere", "sets each job's run_dir itself"), ("threads=2", "sets each job's threads")):
        with pytest.raises(SystemExit, match=message):
            search([*OFFLINE_TINY, f"dataset={dataset}", bad, f"hydra.sweep.dir={tmp_path / 's'}", "hydra/launcher=basic"])


def test_a_resumed_search_draws_new_settings_not_its_first_trials_again(tmp_path):
    """TPE's start-up trials are random draws from its seed: a sampler seeded as at the study's start
    would give a resumed study its first trials' settings again (wasted trials, a narrower search)."""
    import optuna

    from worldmodel.search import SearchConfig, sampler

    cfg, storage = SearchConfig(trials=24), f"sqlite:///{tmp_path / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def session(count: int) -> list[float]:
        study = optuna.create_study(study_name="s", direction="maximize", sampler=sampler(cfg, 0), storage=storage,
                                    load_if_exists=True)  # fmt: skip
        study.sampler = sampler(cfg, len(study.trials))  # (as main resumes one)
        drawn = []
        for _ in range(count):
            trial = study.ask()
            drawn.append(trial.suggest_float("x", 0.0, 1.0))
            study.tell(trial, drawn[-1])
        return drawn

    first, resumed = session(3), session(3)
    assert not set(first) & set(resumed)


def test_a_search_directory_whose_study_is_gone_is_refused(tmp_path, offline_setup):
    """A study.db deleted to start over, its trial directories kept: a new trial-0 would resume the old
    trial-0's run (a job resumes the checkpoint in its directory) and report its score for new settings."""
    from worldmodel.search import main as search

    dataset, _ = offline_setup
    (tmp_path / "s" / "trial-0").mkdir(parents=True)
    with pytest.raises(SystemExit, match="holds trial-0 of a search whose study.db is gone"):
        search([*OFFLINE_TINY, f"dataset={dataset}", f"hydra.sweep.dir={tmp_path / 's'}", "hydra/launcher=basic"])


def test_a_search_scores_the_offline_protocol_so_refuses_a_run_that_goes_on_online(tmp_path, offline_setup):
    from worldmodel.search import main as search

    dataset, _ = offline_setup
    online = [a for a in OFFLINE_TINY if a != "env_steps=0"]
    with pytest.raises(SystemExit, match="give env_steps=0, not 20000"):
        search([*online, f"dataset={dataset}", f"hydra.sweep.dir={tmp_path / 's'}", "hydra/launcher=basic"])
    assert not (tmp_path / "s").exists()


def test_a_search_refuses_a_run_directory_whose_trained_agent_would_start_every_trial(tmp_path, offline_setup):
    from worldmodel.search import main as search

    dataset, model = offline_setup
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model.pt").write_bytes(model.read_bytes())
    (run_dir / "checkpoint.pt").write_bytes(b"a trained agent")
    with pytest.raises(SystemExit, match=r"brings its trained agent.*model=.*run/model\.pt"):
        search([*OFFLINE_TINY, f"dataset={dataset}", f"model={run_dir}", f"hydra.sweep.dir={tmp_path / 's'}", "hydra/launcher=basic"])


def test_multirun_help_prints_the_launcher_and_sweep_keys(capsys):
    from worldmodel.run import main

    with pytest.raises(SystemExit) as done:
        main(["--multirun", "--help"])
    assert done.value.code == 0 and "hydra.launcher" in capsys.readouterr().out
