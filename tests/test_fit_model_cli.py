"""`python -m worldmodel.fit_model`: a short real run writes every artifact; bad input is a clear error."""

import csv
import json
import subprocess
import sys

import pytest

from worldmodel import EnsembleDynamics, ReplayBuffer
from worldmodel.fit_model import main


def test_short_run_writes_config_data_model_history_and_report(tmp_path):
    run_dir = tmp_path / "run"
    report = main([
        "env=hopper", "steps=400", "holdout_steps=100", "model.fit.max_epochs=2",
        "model.ensemble_size=3", "model.num_elites=2", f"run_dir={run_dir}", "+env.reset_noise_scale=0.01",
    ])  # fmt: skip
    assert "name: hopper" in (run_dir / "config.yaml").read_text()
    assert len(ReplayBuffer.load(run_dir / "data.pt")) == 800
    model = EnsembleDynamics.load(run_dir / "model.pt", obs_dim=11, act_dim=3)
    assert model.ensemble_size == 3
    rows = list(csv.DictReader(open(run_dir / "fit_history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    saved = json.loads((run_dir / "report.json").read_text())
    assert saved["holdout"]["r2_delta"] == pytest.approx(report["holdout"]["r2_delta"])
    assert saved["fit"]["epochs"] == 2


def test_unknown_key_lists_valid_keys():
    with pytest.raises(SystemExit, match=r"unknown key 'model.hiden' \(a typo\?\); did you mean model.hidden\?"):
        main(["model.hiden=3"])


def test_unknown_env_exits_with_the_supported_names(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "worldmodel.fit_model", "env.name=cheetah", f"run_dir={tmp_path / 'r'}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "error: unknown env 'cheetah' (did you mean" in result.stderr and "supported: ant, halfcheetah" in result.stderr
    assert not (tmp_path / "r").exists()


def test_a_bad_fit_setting_fails_before_any_work_or_file(tmp_path):
    with pytest.raises(SystemExit, match=r"fit setting lr=-1 is out of range"):
        main(["env=hopper", "model.fit.lr=-1", f"run_dir={tmp_path / 'r'}"])
    with pytest.raises(SystemExit, match=r"steps must be a whole number >= 1, got 0"):
        main(["env=hopper", "steps=0", f"run_dir={tmp_path / 'r'}"])
    for count in ("batch_size=256.0", "max_holdout=100.5", "patience=2.5", "max_epochs=3.0"):  # (counts: whole numbers)
        with pytest.raises(SystemExit, match=rf"fit setting {count} is out of range \(whole numbers"):
            main(["env=hopper", f"model.fit.{count}", f"run_dir={tmp_path / 'r'}"])
    with pytest.raises(SystemExit, match=r"device=foo is not a device name"):
        main(["env=hopper", "device=foo", f"run_dir={tmp_path / 'r'}"])
    assert not (tmp_path / "r").exists()
