"""worldmodel.report on hand-made run directories: runs whose settings differ are not pooled; the
model-selected score."""

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


def test_the_model_selected_score_is_each_run_s_evaluation_with_the_best_model_return(tmp_path):
    for seed, evals in ((0, [(10.0, 30.0), (50.0, 95.0), (40.0, 35.0)]), (1, [(60.0, 70.0), (20.0, 90.0)])):
        fake_run(tmp_path / f"s{seed}", seed, evals[-1][1], penalty=2.5)
        (tmp_path / f"s{seed}" / "metrics.jsonl").write_text("".join(
            json.dumps({"kind": "offline_eval", "step": 100 * (i + 1), "score": score, "model_ret": model}) + "\n"
            for i, (model, score) in enumerate(evals)))  # fmt: skip
    (row,) = report([str(tmp_path), "--out", str(tmp_path / "report")])
    assert row["scores"] == [35.0, 90.0] and row["selected_scores"] == [95.0, 70.0]
    assert "| 82.5 ± 17.7 |" in (tmp_path / "report" / "report.md").read_text()
    (tmp_path / "s1" / "metrics.jsonl").write_text(json.dumps({"kind": "offline_eval", "step": 100, "score": 9.0}))
    (row,) = report([str(tmp_path)])  # a run without model returns: no model-selected figure for the row
    assert row["selected_scores"] == [] and row["selected_mean"] is None


def test_a_run_s_own_selection_wins_and_an_older_config_takes_today_s_defaults(tmp_path):
    fake_run(tmp_path / "new", 0, 50.0, penalty=2.5)
    summary = json.loads((tmp_path / "new" / "summary.json").read_text())
    (tmp_path / "new" / "summary.json").write_text(json.dumps({**summary, "selected_normalized_score": 77.0}))
    config = yaml.safe_load((tmp_path / "new" / "config.yaml").read_text())
    (tmp_path / "new" / "config.yaml").write_text(yaml.safe_dump({**config, "offline": {"select": "model_score"}}))
    fake_run(tmp_path / "old", 1, 40.0, penalty=2.5)  # (its config predates offline.select: "last")
    rows = {r["planner"]: r for r in report([str(tmp_path)])}
    assert set(rows) == {"mopo (offline.select=last)", "mopo (offline.select=model_score)"}
    assert rows["mopo (offline.select=model_score)"]["selected_scores"] == [77.0]
