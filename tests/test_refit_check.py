"""python -m worldmodel.refit_check: a real run's refits replayed from its transition log."""

import math

import pytest

from worldmodel.refit_check import main
from worldmodel.run import main as run

TINY = ["planner=mppi", "env=hopper", "env_steps=120", "seed_steps=60", "train_every=60", "eval_every=120",
        "env.max_episode_steps=50", "model.fit.max_epochs=3", "model.ensemble_size=3", "model.num_elites=2",
        "model.hidden=32", "planner.candidates=32", "planner.horizon=3", "planner.value_learning=false"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("refit_check") / "run"
    run([*TINY, f"run_dir={path}"])
    return path


def test_replays_a_runs_refits_and_scores_them_on_the_transitions_that_came_next(run_dir, capsys):
    rows = main([str(run_dir), "--first", "40", "--refit-at", "80", "--ahead", "40", "--refit-epochs", "2",
                 "--beta", "0", "0.5"])  # fmt: skip
    (row,) = rows
    assert row["env"] == "hopper" and row["refit_beta0_epochs"] == row["refit_beta0.5_epochs"] == 2
    scores = [row[k] for k in ("no_refit", "refit_beta0", "refit_beta0.5", "from_scratch")]
    assert all(math.isfinite(v) and v > 0 for v in scores)
    assert len(set(scores)) == 4  # four different models
    assert '"refit_beta0.5"' in capsys.readouterr().out
    # (40 new rows hold out 8, fewer than MIN_NEW_HOLDOUT: that refit holds out among all rows, as the other)
    assert row["refit_beta0.5_new_holdout"] == row["refit_beta0.5"] and row["refit_beta0.5_start_kept"] is not None


def test_a_capped_refit_stops_at_its_steps_beside_the_uncapped_one(run_dir, capsys):
    """80 rows (64 to train) in batches of 256 are 1 step an epoch: 2 epochs uncapped, 1 capped at 1."""
    (row,) = main([str(run_dir), "--first", "40", "--refit-at", "80", "--ahead", "40", "--refit-epochs", "2",
                   "--beta", "0.5", "--holdout", "all", "--refit-steps", "none", "1"])  # fmt: skip
    assert row["refit_beta0.5_steps"] == 2 and row["refit_beta0.5_steps1_steps"] == 1
    assert row["refit_beta0.5_steps1_epochs"] == 1 and row["refit_beta0.5_steps1"] != row["refit_beta0.5"]
    with pytest.raises(SystemExit):
        main([str(run_dir), "--refit-steps", "0"])
    assert "'0': give a whole number >= 1 or none" in capsys.readouterr().err


def test_each_precision_is_a_refit_of_its_own(run_dir):
    (row,) = main([str(run_dir), "--first", "40", "--refit-at", "80", "--ahead", "40", "--refit-epochs", "2",
                   "--beta", "0.5", "--holdout", "all", "--precision", "fp32", "bf16"])  # fmt: skip
    assert math.isfinite(row["refit_beta0.5_fp32"]) and math.isfinite(row["refit_beta0.5_bf16"])
    assert row["refit_beta0.5_fp32_precision"] == "fp32" and row["refit_beta0.5_bf16_precision"] == "bf16"
    # (that bf16 steps change the weights: test_ensemble's bf16 fit; a 2-step refit of a tiny model moves its score too little)
    assert row["refit_beta0.5_bf16_steps"] == row["refit_beta0.5_fp32_steps"] == 2


def test_a_directory_without_a_log_or_too_short_a_log_is_a_clear_error(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    assert "is not a run directory with a transition log (config.yaml, transitions/)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(run_dir), "--beta", "nan"])
    assert "--beta: 'nan': give a number in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="logged 120 real transitions, fewer than --refit-at"):
        main([str(run_dir)])  # the defaults need 2,000


def test_a_refit_can_start_from_the_runs_checkpoint_instead_of_a_replayed_first_fit(tmp_path, capsys):
    """A run stopped at 90 steps last fitted at 60: its checkpoint's model (and optimiser) saw 60
    transitions (progress.fit_written), and a refit on 80 starts from it; a copy of it serves as well."""
    import shutil

    run_dir = tmp_path / "run"
    run([a if not a.startswith(("env_steps=", "eval_every=")) else a.split("=")[0] + "=90" for a in TINY]
        + [f"run_dir={run_dir}"])  # fmt: skip
    args = [str(run_dir), "--start", "checkpoint", "--refit-at", "80", "--ahead", "10", "--refit-epochs", "2",
            "--beta", "0.5", "--holdout", "all", "--no-scratch"]  # fmt: skip
    (row,) = main(args)
    assert row["first"] == 60 and row["first_fit_precision"] == "checkpoint" and "from_scratch" not in row
    assert math.isfinite(row["no_refit"]) and row["refit_beta0.5"] != row["no_refit"]
    shutil.copy(run_dir / "checkpoint.pt", tmp_path / "copy.pt")
    (again,) = main([*args[:2], str(tmp_path / "copy.pt"), *args[3:]])
    assert again["no_refit"] == row["no_refit"] and again["refit_beta0.5"] == row["refit_beta0.5"]
    with pytest.raises(SystemExit, match="leave --first out"):
        main([*args, "--first", "50"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*args[:2], str(tmp_path / "missing.pt"), *args[3:]])
    assert "give fit, checkpoint, or the file of one run's copied checkpoint.pt" in capsys.readouterr().err
    shutil.copytree(run_dir, tmp_path / "bare", ignore=shutil.ignore_patterns("checkpoint.pt"))
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bare"), *args[1:]])
    assert "has no checkpoint.pt" in capsys.readouterr().err
