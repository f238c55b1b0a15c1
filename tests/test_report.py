"""worldmodel.report on hand-made run directories: runs whose settings differ are not pooled."""

import json

import yaml

from worldmodel.report import main as report


def fake_run(path, seed: int, score: float, penalty: float, threads: int = 1) -> None:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({
        "status": "finished", "env": "hopper", "planner": "mopo", "seed": seed, "dataset": "d.hdf5",
        "dataset_name": "hopper-medium-replay", "env_steps": 0, "offline_updates": 100, "normalized_score": score}))
    (path / "metrics.jsonl").write_text(json.dumps({"kind": "offline_eval", "step": 100, "score": score}) + "\n")
    config = {"planner": {"name": "mopo", "penalty": penalty, "agent": {"hidden": 256}}, "seed": seed,
              "threads": threads, "run_dir": str(path)}  # fmt: skip
    (path / "config.yaml").write_text(yaml.safe_dump(config))


def test_runs_with_different_settings_get_rows_of_their_own(tmp_path):
    for seed, score in ((0, 90.0), (1, 80.0)):  # seeds and threads differ: still one experiment
        fake_run(tmp_path / f"l25-s{seed}", seed, score, penalty=2.5, threads=seed + 1)
    fake_run(tmp_path / "l5-s0", 0, 40.0, penalty=5.0)
    rows = report([str(tmp_path), "--out", str(tmp_path / "report")])
    by_planner = {r["planner"]: r for r in rows}
    assert set(by_planner) == {"mopo (planner.penalty=2.5)", "mopo (planner.penalty=5.0)"}
    assert by_planner["mopo (planner.penalty=2.5)"]["scores"] == [90.0, 80.0]
    assert by_planner["mopo (planner.penalty=5.0)"]["mean"] == 40.0
    assert "mopo (planner.penalty=5.0)" in (tmp_path / "report" / "report.md").read_text()


def test_runs_alike_or_without_a_config_pool_under_the_planner(tmp_path):
    fake_run(tmp_path / "a", 0, 90.0, penalty=2.5)
    fake_run(tmp_path / "b", 1, 70.0, penalty=2.5)
    fake_run(tmp_path / "c", 2, 50.0, penalty=9.0)
    (tmp_path / "c" / "config.yaml").unlink()  # (a run from before configs were kept: nothing to compare)
    (row,) = report([str(tmp_path)])
    assert row["planner"] == "mopo" and row["scores"] == [90.0, 70.0, 50.0]
