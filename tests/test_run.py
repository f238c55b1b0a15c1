"""`python -m worldmodel.run`: a short real MuJoCo run writes every artifact, resumes, and refuses bad input."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from worldmodel import ReplayBuffer
from worldmodel.run import main

TINY = [
    "seed_steps=40", "train_every=40", "eval_every=60", "checkpoint_every=30", "fit_epochs=2",
    "model.fit.max_epochs=3", "model.ensemble_size=3", "model.num_elites=2", "model.hidden=32",
    "planner.candidates=64", "planner.horizon=5", "env.max_episode_steps=50",
]  # fmt: skip


def records(run_dir, kind):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


@pytest.mark.parametrize("planner", ["mppi", "cem", "icem", "random"])
def test_short_run_writes_every_artifact(tmp_path, planner):
    run_dir = tmp_path / planner
    summary = main([f"planner={planner}", "env=hopper", "env_steps=120", f"run_dir={run_dir}", *TINY])
    for name in ["config.yaml", "metrics.jsonl", "checkpoint.pt", "learning_curve.png", "summary.json"]:
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved == summary
    assert saved["env_steps"] == 120 and saved["model_fits"] == 3  # at 40, 80, 120
    assert saved["plan_ms_per_step"] > 0 and saved["final_eval_return"] is not None
    evals = records(run_dir, "eval")
    assert [r["step"] for r in evals] == [60, 120]
    assert saved["best_eval_return"] == max(r["ret"] for r in evals)
    assert saved["final_eval_return"] == evals[-1]["ret"]
    tags = EventAccumulator(str(next((run_dir / "tb").iterdir().__iter__()).parent)).Reload().Tags()["scalars"]
    assert "eval/ret" in tags and "fit/holdout_mse" in tags


def test_resume_continues_from_the_checkpoint_without_losing_data(tmp_path):
    run_dir = tmp_path / "run"
    first = main(["env=dmc/cartpole-swingup", "env_steps=60", f"run_dir={run_dir}", *TINY])
    assert first["env_steps"] == 60
    (run_dir / "metrics.jsonl").open("a").write('{"kind": "eval", "step": 75, "ret": 0.0}\n')  # after the checkpoint
    resumed = main([f"resume={run_dir}", "env_steps=120"])
    assert resumed["env_steps"] == 120 and resumed["model_fits"] == 3
    assert resumed["wall_s"] > first["wall_s"]
    assert [r["step"] for r in records(run_dir, "eval")] == [60, 120]  # the stale record was dropped
    from torch import load

    buffer = ReplayBuffer.from_state_dict(load(run_dir / "checkpoint.pt", weights_only=True)["buffer"])
    assert len(buffer) == 120


def test_unknown_planner_lists_the_choices():
    with pytest.raises(SystemExit, match=r"(?s)Could not find .planner/ppo.*bc.*cem.*icem.*mbpo.*mopo.*mppi.*random.*ravl$"):
        main(["planner=ppo"])


def test_unknown_env_lists_the_supported_names(tmp_path):
    with pytest.raises(SystemExit, match="unknown env 'dmc/cartpole'; supported: .*dmc/cartpole-swingup"):
        main(["env.name=dmc/cartpole", f"run_dir={tmp_path}"])


def test_resume_from_a_directory_that_is_not_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no config.yaml there"):
        main([f"resume={tmp_path}"])
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(SystemExit):
        main([f"resume={tmp_path}", "env_steps=10"])


def test_help_lists_every_key_and_the_group_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "offline:" in out and "env_steps: 20000" in out
    assert "planner=bc|cem|icem|mbpo|mopo|mppi|random|ravl" in out and "dmc/cheetah-run" in out
