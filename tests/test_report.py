"""worldmodel.report on hand-made run directories: runs whose settings differ are not pooled; the
model-selected score."""

import json

import yaml

from worldmodel.report import load_settings, main as report


def fake_run(path, seed: int, score: float, penalty: float, threads: int = 1, compiled: bool = False,
             hidden: int = 256) -> None:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({
        "status": "finished", "env": "hopper", "planner": "mopo", "seed": seed, "dataset": "d.hdf5",
        "dataset_name": "hopper-medium-replay", "env_steps": 0, "offline_updates": 100, "normalized_score": score}))
    (path / "metrics.jsonl").write_text(json.dumps({"kind": "offline_eval", "step": 100, "score": score}) + "\n")
    config = {"planner": {"name": "mopo", "penalty": penalty, "agent": {"hidden": hidden, "compile_critic_step": compiled}},
              "seed": seed,
              "threads": threads, "run_dir": str(path)}  # fmt: skip
    (path / "config.yaml").write_text(yaml.safe_dump(config))


def test_runs_with_different_settings_get_rows_of_their_own(tmp_path):
    for seed, score in ((0, 90.0), (1, 80.0)):  # seeds, threads and compiling differ: still one experiment
        fake_run(tmp_path / f"l25-s{seed}", seed, score, penalty=2.5, threads=seed + 1, compiled=bool(seed))
    fake_run(tmp_path / "l5-s0", 0, 40.0, penalty=5.0)
    rows = report([str(tmp_path), "--out", str(tmp_path / "report")])
    by_planner = {r["planner"]: r for r in rows}
    assert set(by_planner) == {"mopo (planner.penalty=2.5)", "mopo (planner.penalty=5.0)"}
    assert by_planner["mopo (planner.penalty=2.5)"]["scores"] == [90.0, 80.0]
    assert by_planner["mopo (planner.penalty=5.0)"]["mean"] == 40.0
    assert "mopo (planner.penalty=5.0)" in (tmp_path / "report" / "report.md").read_text()


def test_pool_keeps_runs_differing_only_in_a_named_setting_in_one_row_that_names_the_mix(tmp_path):
    """Seeds run in bf16 on one machine and fp32 on another: one row with --pool, two without; a
    setting that still differs (the penalty) keeps its rows apart, and an unknown key is an error."""
    import pytest

    for seed, (score, hidden) in enumerate(((90.0, 256), (80.0, 256), (70.0, 512))):
        fake_run(tmp_path / f"a-s{seed}", seed, score, penalty=2.5, hidden=hidden)
    fake_run(tmp_path / "b-s0", 0, 40.0, penalty=5.0, hidden=512)
    assert len(report([str(tmp_path)])) == 3  # (2.5 with 256, 2.5 with 512, 5.0)
    rows = {r["planner"]: r["scores"] for r in report([str(tmp_path), "--pool", "planner.agent.hidden"])}
    assert rows == {"mopo (planner.penalty=2.5; pooled planner.agent.hidden: 256 x2, 512 x1)": [90.0, 80.0, 70.0],
                    "mopo (planner.penalty=5.0)": [40.0]}  # fmt: skip
    with pytest.raises(SystemExit, match="--pool planner.agent.hiden: no run records that setting"):
        report([str(tmp_path), "--pool", "planner.agent.hiden"])
    with pytest.raises(SystemExit, match="--pool threads: runs are never set apart by it"):
        report([str(tmp_path), "--pool", "threads"])


def test_pooled_rows_count_values_by_number_and_keep_1_and_1_point_0_together(tmp_path):
    for seed, (penalty, hidden) in enumerate(((1, 1024), (1.0, 256), (1, 256))):
        fake_run(tmp_path / f"a-s{seed}", seed, 50.0 + seed, penalty=penalty, hidden=hidden)
    fake_run(tmp_path / "b-s0", 0, 40.0, penalty=5, hidden=256)
    rows = {r["planner"]: r["scores"] for r in report([str(tmp_path), "--pool", "planner.agent.hidden"])}
    assert rows == {"mopo (planner.penalty=1; pooled planner.agent.hidden: 256 x2, 1024 x1)": [50.0, 51.0, 52.0],
                    "mopo (planner.penalty=5)": [40.0]}  # fmt: skip


def test_a_setting_written_as_1_or_1_point_0_is_one_setting(tmp_path):
    fake_run(tmp_path / "a-s0", 0, 90.0, penalty=1)
    fake_run(tmp_path / "a-s1", 1, 80.0, penalty=1.0)
    rows = report([str(tmp_path), "--out", str(tmp_path / "report")])
    assert [(r["planner"], r["scores"]) for r in rows] == [("mopo", [90.0, 80.0])]


def test_a_mean_curve_is_taken_only_where_every_run_has_an_evaluation():
    """An unfinished run (no 6000) and an evaluation off the grid after a resume (4137) do not make
    the mean jump from one set of runs to another."""
    from worldmodel.report import shared_points

    runs = [{"curve": [(2000, 10.0), (4000, 20.0), (6000, 30.0)]},
            {"curve": [(2000, 50.0), (4000, 60.0), (4137, 61.0)]}]  # fmt: skip
    assert shared_points(runs) == [(2000, [10.0, 50.0]), (4000, [20.0, 60.0])]
    assert shared_points([*runs, {"curve": []}]) == shared_points(runs)  # (a run not evaluated yet)


def test_scores_and_seeds_line_up_whatever_the_directories_order(tmp_path):
    """Sweep jobs are numbered directories (0, 1, 10, 2, ...); a run without a score yet leaves a seed
    without a score: each score stays beside its own seed."""
    for seed, score in ((0, 10.0), (1, 11.0), (10, 20.0), (2, None), (3, 13.0)):
        fake_run(tmp_path / str(seed), seed, score, penalty=2.5)
        if score is None:
            (tmp_path / str(seed) / "metrics.jsonl").write_text("")
            summary = json.loads((tmp_path / str(seed) / "summary.json").read_text())
            (tmp_path / str(seed) / "summary.json").write_text(json.dumps({**summary, "status": "running",
                                                                          "normalized_score": None}))
    (row,) = report([str(tmp_path), "--out", str(tmp_path / "report")])
    assert row["seeds"] == [0, 1, 2, 3, 10]
    assert list(zip(row["scored_seeds"], row["scores"])) == [(0, 10.0), (1, 11.0), (3, 13.0), (10, 20.0)]
    # the run without a score is in the table, not dropped from it silently
    assert "| 4 (+1 without a score) | s0: 10.0, s1: 11.0, s3: 13.0, s10: 20.0, s2: - |" in \
        (tmp_path / "report" / "report.md").read_text()  # fmt: skip


def test_an_offline_then_online_run_in_its_offline_phase_is_not_grouped_with_offline_runs(tmp_path):
    fake_run(tmp_path / "offline", 0, 50.0, penalty=2.5)
    fake_run(tmp_path / "then-online", 1, 60.0, penalty=2.5)  # (its summary's env_steps: 0 so far)
    config = yaml.safe_load((tmp_path / "then-online" / "config.yaml").read_text())
    (tmp_path / "then-online" / "config.yaml").write_text(yaml.safe_dump({**config, "env_steps": 5000}))
    rows = report([str(tmp_path)])
    assert sorted(r["group"] for r in rows) == ["hopper-medium-replay", "hopper-medium-replay (offline, then online)"]


def test_runs_alike_or_without_a_config_pool_under_the_planner(tmp_path):
    fake_run(tmp_path / "a", 0, 90.0, penalty=2.5)
    fake_run(tmp_path / "b", 1, 70.0, penalty=2.5)
    fake_run(tmp_path / "c", 2, 50.0, penalty=9.0)
    (tmp_path / "c" / "config.yaml").unlink()  # (a run from before configs were kept: nothing to compare)
    (row,) = report([str(tmp_path)])
    assert row["planner"] == "mopo" and row["scores"] == [90.0, 70.0, 50.0]


def test_runs_from_a_pretrained_agent_sit_apart_from_runs_without_whatever_its_path(tmp_path):
    """pretrained=<run dir> differs by seed (mopo-s0, mopo-s1: one experiment), but runs with one and
    runs without are two."""
    for name, seed, score, pretrained in (("p0", 0, 300.0, "runs/mopo-s0"), ("p1", 1, 310.0, "runs/mopo-s1"),
                                          ("n0", 0, 30.0, None)):  # fmt: skip
        fake_run(tmp_path / name, seed, score, penalty=2.5)
        config = yaml.safe_load((tmp_path / name / "config.yaml").read_text())
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump({**config, "pretrained": pretrained}))
    rows = {r["planner"]: r["scores"] for r in report([str(tmp_path)])}
    assert rows == {"mopo (pretrained=True)": [300.0, 310.0], "mopo (pretrained=False)": [30.0]}


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


def robot_run(path, seed: int, evals: dict, episodes: list, anchor: float | None) -> None:
    """A planners.realtime run directory: 3,000 real steps, evaluations at eval_at and the end."""
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({
        "status": "finished", "env": "hopper", "planner": "mppi", "seed": seed, "control_hz": 20, "latency_ms": 10,
        "real_steps": 3000, "final_eval_return": evals.pop(3000), "eval_returns": {str(k): v for k, v in evals.items()},
        "act_latency_p99_ms": 0.5 + seed, "deadline_miss_rate": 0.01 * seed, "fresh_rate": 0.9, "fallback_rate": 0.02}))
    (path / "metrics.jsonl").write_text("".join(json.dumps({"kind": "episode", "step": step, "ret": ret}) + "\n"
                                                for step, ret in episodes))  # fmt: skip
    value_agent = {"actor_lr": 3e-4, **({} if anchor is None else {"actor_anchor": anchor})}
    (path / "config.yaml").write_text(yaml.safe_dump({"planner": {"name": "mppi", "value_agent": value_agent},
                                                      "control_hz": 20, "seed": seed}))  # fmt: skip


def test_runs_on_the_robot_report_evaluations_episode_windows_and_the_controller(tmp_path):
    """Robot runs (planners.realtime) are grouped by task, rate and latency; their row gives the
    evaluations at each step, the robot's episodes per window of real steps (mean ± std over runs of
    each run's mean), each run's lowest episode after 1k steps; a run from before a setting existed
    (actor_anchor) takes its default (0), so it sits apart from the anchored ones."""
    robot_run(tmp_path / "a0", 0, {0: 100.0, 3000: 300.0}, [(400, 90.0), (900, 110.0), (2000, 150.0), (3000, 250.0)], 0.1)
    robot_run(tmp_path / "a1", 1, {0: 120.0, 3000: 340.0}, [(800, 100.0), (1200, 80.0), (2900, 210.0)], 0.1)
    robot_run(tmp_path / "old", 2, {0: 110.0, 3000: 50.0}, [(500, 100.0), (2500, 20.0)], None)
    rows = {r["planner"]: r for r in report([str(tmp_path), "--out", str(tmp_path / "report")])}
    assert set(rows) == {"mppi (planner.value_agent.actor_anchor=0.0)", "mppi (planner.value_agent.actor_anchor=0.1)"}
    row = rows["mppi (planner.value_agent.actor_anchor=0.1)"]
    assert row["group"] == "hopper on the robot, 20 Hz, 10 ms latency" and row["scores"] == [300.0, 340.0]
    figures = row["robot"]
    assert figures["evaluations"][0][0] == 110.0 and figures["evaluations"][3000][0] == 320.0
    # (0, 1000]: 100 and 100; (1000, 1500]: -, 80; (1500, 3000]: 200 and 210
    assert set(figures["windows"]) == {"(0, 1000]", "(1000, 1500]", "(1500, 3000]"}
    assert figures["windows"]["(0, 1000]"] == (100.0, 0.0) and figures["windows"]["(1500, 3000]"][0] == 205.0
    assert figures["lowest_after_settled"] == {0: 150.0, 1: 80.0} and figures["act_latency_p99_ms"] == 1.5
    assert row["best"] == 320.0  # (the evaluations after the switch, not the pretrained agent's)
    table = (tmp_path / "report" / "report.md").read_text()
    assert "| hopper on the robot, 20 Hz, 10 ms latency | mppi (planner.value_agent.actor_anchor=0.1) | 0: 110.0 ± 14.1; " \
           "3,000: 320.0 ± 28.3 |" in table and "| s0: 150, s1: 80 | 1.50 | 0.50% |" in table  # fmt: skip
    assert "| s2: 20 |" in table  # (the older run's row: one run, no spread)
    assert (tmp_path / "report" / "hopper_on_the_robot_20_Hz_10_ms_latency.png").is_file()


def test_a_key_whose_arrival_changed_behaviour_reads_as_what_older_runs_ran(tmp_path):
    """refit_offline_ratio arrived with bounded refits (default 1.0): a config without it ran
    whole-buffer refits (None), so it is not pooled with today's default; actor_anchor's default (0)
    is what older runs did, so they take it."""
    robot_run(tmp_path / "old", 0, {3000: 1.0}, [], None)
    old = load_settings(tmp_path / "old", "realtime")
    assert old["refit_offline_ratio"] is None and old["worker"] == "thread" and old["fit_beta"] == 0.0
    assert old["planner.value_agent.actor_anchor"] == 0.0
    config = yaml.safe_load((tmp_path / "old" / "config.yaml").read_text())
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump({**config, "refit_offline_ratio": 1.0}))
    assert load_settings(tmp_path / "old", "realtime")["refit_offline_ratio"] == 1.0


def test_an_offline_run_ended_on_its_model_selected_snapshot_still_scores_its_last_evaluations(tmp_path):
    fake_run(tmp_path / "s0", 0, 30.0, penalty=1.0)  # normalized_score: the selected snapshot's 30
    summary = json.loads((tmp_path / "s0" / "summary.json").read_text())
    summary.update(offline_normalized_score=20.0, selected_normalized_score=30.0)
    (tmp_path / "s0" / "summary.json").write_text(json.dumps(summary))
    (row,) = report([str(tmp_path)])
    assert row["scores"] == [20.0] and row["selected_scores"] == [30.0]


def test_an_offline_then_online_run_scores_its_online_end_and_an_unnormalised_offline_run_its_last_returns(tmp_path):
    fake_run(tmp_path / "online", 0, 30.0, penalty=1.0)
    summary = json.loads((tmp_path / "online" / "summary.json").read_text())
    summary.update(env_steps=1000, offline_normalized_score=20.0, selected_normalized_score=25.0)  # went on online:
    (tmp_path / "online" / "summary.json").write_text(json.dumps(summary))  # its end is the score
    (row,) = report([str(tmp_path)])
    assert row["scores"] == [30.0] and row["selected_scores"] == []  # (its offline phase's selection: not beside it)
    fake_run(tmp_path / "raw" / "s0", 0, 30.0, penalty=1.0)  # a task without reference returns
    summary = json.loads((tmp_path / "raw" / "s0" / "summary.json").read_text())
    del summary["normalized_score"]
    summary.update(final_eval_return=300.0, offline_eval_return=250.0)
    (tmp_path / "raw" / "s0" / "summary.json").write_text(json.dumps(summary))
    (row,) = report([str(tmp_path / "raw")])
    assert row["scores"] == [250.0] and row["normalized"] is False


def test_raw_copies_each_run_s_files_beside_the_report(tmp_path):
    for seed, group in enumerate(("a", "b")):  # two runs of one name in different folders: kept apart
        fake_run(tmp_path / "runs" / group / "mopo-s0", seed, 90.0, penalty=2.5)
    report([str(tmp_path / "runs"), "--out", str(tmp_path / "report"), "--raw"])
    raw = tmp_path / "report" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        f"{g}_mopo-s0-{f}" for g in ("a", "b") for f in ("config.yaml", "metrics.jsonl", "summary.json"))
    assert (raw / "a_mopo-s0-summary.json").read_text() == (tmp_path / "runs" / "a" / "mopo-s0" / "summary.json").read_text()


def test_runs_linked_into_a_folder_are_found_once(tmp_path):
    fake_run(tmp_path / "kept" / "mopo-s0", 0, 90.0, penalty=2.5)
    fake_run(tmp_path / "table" / "mopo-s1", 1, 70.0, penalty=2.5)
    (tmp_path / "table" / "mopo-s0").symlink_to(tmp_path / "kept" / "mopo-s0")
    (tmp_path / "table" / "again").symlink_to(tmp_path / "kept" / "mopo-s0")  # the same run twice
    (tmp_path / "table" / "loop").symlink_to(tmp_path / "table")  # a link back up the tree
    (row,) = report([str(tmp_path / "table")])
    assert sorted(row["scores"]) == [70.0, 90.0]
    (row,) = report([str(tmp_path / "table"), str(tmp_path / "kept")])  # (the linked run named again: still once)
    assert sorted(row["scores"]) == [70.0, 90.0]


def test_a_seed_twice_in_one_row_is_an_error_not_a_mean_over_both(tmp_path):
    """Two runs of one seed whose settings read alike (runs from two models fitted differently:
    run settings do not record how a given model was fitted) would be averaged as two seeds."""
    fake_run(tmp_path / "a" / "mopo-s0", 0, 90.0, penalty=2.5)
    fake_run(tmp_path / "b" / "mopo-s0", 0, 30.0, penalty=2.5)
    fake_run(tmp_path / "b" / "mopo-s1", 1, 70.0, penalty=2.5)
    try:
        report([str(tmp_path / "a"), str(tmp_path / "b")])
    except SystemExit as e:
        assert "seed(s) [0] twice in one row" in str(e) and "report them apart" in str(e)
    else:
        raise AssertionError("a seed counted twice")
    fake_run(tmp_path / "c" / "mopo-s0", 0, 30.0, penalty=2.5, hidden=512)  # (pooled: two hidden sizes, one seed)
    try:
        report([str(tmp_path / "a"), str(tmp_path / "c"), "--pool", "planner.agent.hidden"])
    except SystemExit as e:
        assert "differ in a pooled setting (planner.agent.hidden) are no more seeds" in str(e)
    else:
        raise AssertionError("a seed counted twice")


def test_a_failed_run_is_listed_without_a_score(tmp_path):
    """A run that failed (say, its agent diverged: SAC raises) keeps the evaluations it made before in its
    summary; they are not its score: the row lists it without one and says it failed."""
    for seed, score in ((0, 10.0), (1, 11.0), (2, 13.0)):
        fake_run(tmp_path / f"mopo-s{seed}", seed, score, penalty=2.5)
    summary = json.loads((tmp_path / "mopo-s2" / "summary.json").read_text())
    (tmp_path / "mopo-s2" / "summary.json").write_text(json.dumps({**summary, "status": "failed"}))
    (row,) = report([str(tmp_path), "--out", str(tmp_path / "report")])
    assert row["scores"] == [10.0, 11.0] and row["unscored_seeds"] == [2] and row["failed"] == 1
    assert "s2: - | 100 (1 unfinished, 1 failed) |" in (tmp_path / "report" / "report.md").read_text()


def test_the_interval_of_a_few_runs_is_student_s_t_not_the_bootstrap_s_min_and_max(tmp_path):
    for seed, score in ((0, 10.0), (1, 11.0), (2, 13.0)):
        fake_run(tmp_path / f"mopo-s{seed}", seed, score, penalty=2.5)
    (row,) = report([str(tmp_path), "--out", str(tmp_path / "report")])
    assert (row["ci_low"], row["ci_high"]) == (10.0, 13.0)  # (the bootstrap's, kept in summary.json: the min and max)
    # mean 11.33, std 1.53, t(2) 4.303: 11.33 +- 3.79
    assert "11.3 ± 1.5 [7.5, 15.1]" in (tmp_path / "report" / "report.md").read_text()


def test_a_missing_path_or_an_out_that_is_a_file_is_a_clear_error(tmp_path):
    import pytest

    fake_run(tmp_path / "runs" / "mopo-s0", 0, 90.0, penalty=2.5)
    with pytest.raises(SystemExit, match=f"error: {tmp_path / 'nowhere'}: no such directory"):
        report([str(tmp_path / "nowhere")])
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="is a file; give a directory for the report"):
        report([str(tmp_path / "runs"), "--out", str(tmp_path / "notes.txt")])
    assert (tmp_path / "notes.txt").read_text() == "mine"
