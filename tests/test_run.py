"""`python -m worldmodel.run`: a short real MuJoCo run writes every artifact, resumes, stops cleanly on
SIGINT/SIGTERM, and refuses bad input before writing anything."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from planners import PLANNERS
from worldmodel import ReplayBuffer, TransitionLog
from worldmodel.run import Run, load_config, main

TINY = [
    "seed_steps=40", "train_every=40", "eval_every=60", "checkpoint_every=30", "fit_epochs=2",
    "model.fit.max_epochs=3", "model.ensemble_size=3", "model.num_elites=2", "model.hidden=32",
    "planner.candidates=64", "planner.horizon=5", "env.max_episode_steps=50",
]  # fmt: skip


def records(run_dir, kind):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def test_refits_hold_out_among_the_rows_since_the_last_fit_across_a_resume(tmp_path, monkeypatch):
    """The first fit holds out among all rows; each refit among the transitions since the fit
    before (progress["fit_written"], kept in the checkpoint), also after a resume with a larger budget."""
    from worldmodel import fitting

    monkeypatch.setattr(fitting, "MIN_NEW_HOLDOUT", 5)  # (40 new rows hold out 8)
    run_dir = tmp_path / "run"
    main(["planner=mppi", "env=hopper", "env_steps=80", f"run_dir={run_dir}", *TINY])
    main([f"resume={run_dir}", "env_steps=120"])
    fits = records(run_dir, "fit")
    assert [(f["step"], f["holdout"]) for f in fits] == [(40, "all rows"), (80, "new rows"), (120, "new rows")]
    assert all("start_holdout_mse" in f and "start_kept" in f for f in fits[1:])


def test_a_stall_inside_one_planned_step_does_not_move_the_reported_plan_time(tmp_path, monkeypatch):
    """A process paused mid-plan (SIGSTOP, a laptop asleep) made one step minutes long, and the
    run's mean plan time then read high for the rest of the run: plan_ms is the recent median."""
    from planners.agent import Agent

    act, calls = Agent.act, []

    def stalling(self, obs):
        calls.append(1)
        if len(calls) == 3:
            time.sleep(1.2)  # (a stall of 1.2 s: 60 planned steps' mean moves by 20 ms)
        return act(self, obs)

    monkeypatch.setattr(Agent, "act", stalling)
    summary = main(["env=hopper", "env_steps=100", f"run_dir={tmp_path / 'run'}", *TINY])
    assert len(calls) == 60  # (100 steps, the first 40 random)
    assert summary["plan_ms_mean"] > summary["plan_ms_per_step"] + 15
    evals = records(tmp_path / "run", "eval")
    assert evals[-1]["plan_ms"] == summary["plan_ms_per_step"] < 500


@pytest.mark.parametrize("planner", ["mppi", "cem", "icem", "random"])
def test_short_run_writes_every_artifact(tmp_path, planner, capsys):
    run_dir = tmp_path / planner
    summary = main([f"planner={planner}", "env=hopper", "env_steps=120", f"run_dir={run_dir}", *TINY])
    out = capsys.readouterr().out.splitlines()  # where it went, said first and last
    assert out[0].startswith(f"run directory: {run_dir} (watch: tensorboard --logdir {run_dir / 'tb'}")
    assert out[-1] == (f"finished: {run_dir} (summary.json, learning_curve.png, model.pt); "
                       f"final evaluation return {summary['final_eval_return']:.1f}")  # fmt: skip
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
    tags = EventAccumulator(str(run_dir / "tb")).Reload().Tags()["scalars"]
    assert "eval/ret" in tags and "fit/holdout_mse" in tags
    assert saved["status"] == "finished" and saved["threads"]["threads"] == 1  # tests run on one thread


def test_a_resumed_run_says_running_until_it_saves_again(tmp_path, monkeypatch):
    """A finished run resumed with a larger budget and killed before its next checkpoint said
    finished at the old step count, so a sweep skipped it for good."""
    run_dir = tmp_path / "run"
    main(["env=dmc/cartpole-swingup", "env_steps=60", f"run_dir={run_dir}", *TINY])

    def killed(self, started):
        raise KeyboardInterrupt("killed before its next checkpoint")

    monkeypatch.setattr(Run, "_online", killed)
    with pytest.raises(KeyboardInterrupt):
        main([f"resume={run_dir}", "env_steps=120"])
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"


def test_a_resumed_run_whose_config_predates_a_setting_goes_on_as_it_ran(tmp_path):
    """fit_beta arrived with beta-NLL refits (default 0.5); a run saved before it refitted with the plain
    NLL: resumed, it goes on so (worldmodel.config.PREDATED), not with today's default midway."""
    import yaml
    from omegaconf import OmegaConf

    from worldmodel.config import resumed_config
    from worldmodel.run import _compose

    saved = OmegaConf.to_container(_compose(["env=dmc/cartpole-swingup"]), resolve=True)
    assert saved.pop("fit_beta") == 0.5  # (today's default)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert resumed_config(str(tmp_path), [], _compose).fit_beta == 0.0
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**saved, "fit_beta": 0.25}))  # (a run that names it keeps its own)
    assert resumed_config(str(tmp_path), [], _compose).fit_beta == 0.25


def test_resume_continues_from_the_checkpoint_without_losing_data(tmp_path):
    run_dir = tmp_path / "run"
    first = main(["env=dmc/cartpole-swingup", "env_steps=60", f"run_dir={run_dir}", *TINY])
    assert first["env_steps"] == 60
    from torch import load

    kept = ReplayBuffer.from_state_dict(load(run_dir / "checkpoint.pt", weights_only=True)["buffer"]).data()
    (run_dir / "metrics.jsonl").open("a").write('{"kind": "eval", "step": 75, "ret": 0.0}\n')  # after the checkpoint
    with pytest.raises(SystemExit, match=r"is a planner=mppi run; a resumed run keeps its planner \(planner=cem given\)"):
        main([f"resume={run_dir}", "planner=cem", "env_steps=120"])
    with pytest.raises(SystemExit, match=r"is a seed=0 run; a resumed run keeps its seed \(seed=1 given\)"):
        main([f"resume={run_dir}", "seed=1", "env_steps=120"])  # (its envs would be rebuilt from another seed)
    with pytest.raises(SystemExit, match=r"is a dataset=None run; a resumed run keeps its dataset"):
        main([f"resume={run_dir}", f"dataset={tmp_path / 'data.hdf5'}", "env_steps=120"])
    with pytest.raises(SystemExit, match=r"planner.temperature=nan: settings are finite numbers"):
        main([f"resume={run_dir}", "planner.temperature=.nan", "env_steps=120"])  # (YAML's NaN; 'nan' is a string there)
    # the command the run began with, resume= added, names its groups again: that is no change
    resumed = main([f"resume={run_dir}", "planner=mppi", "env=dmc/cartpole-swingup", "seed=0", "env_steps=120"])
    from worldmodel.config import resumed_config
    from worldmodel.run import _compose

    hopper = tmp_path / "hopper"
    hopper.mkdir()
    (hopper / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace("dmc/cartpole-swingup", "hopper"))
    assert resumed_config(str(hopper), ["env=Hopper-v5"], _compose).env.name == "hopper"  # (a gymnasium id is its name)
    assert resumed["env_steps"] == 120 and resumed["model_fits"] == 3
    assert resumed["wall_s"] > first["wall_s"]
    assert [r["step"] for r in records(run_dir, "eval")] == [60, 120]  # the stale record was dropped
    events = EventAccumulator(str(run_dir / "tb")).Reload()
    assert [e.step for e in events.Scalars("eval/ret")] == [60, 120]  # and TensorBoard shows it no more
    after = ReplayBuffer.from_state_dict(load(run_dir / "checkpoint.pt", weights_only=True)["buffer"]).data()
    assert len(after) == 120  # the first 60 transitions, as they were, then 60 new ones
    for key in ("obs", "action", "reward", "next_obs"):
        assert torch.equal(after[key][:60], kept[key]), key
    # the resumed run began the next episode from the envs' saved random state: not the first one's start again
    assert not torch.allclose(after["obs"][60], kept["obs"][0])


def test_a_run_resumed_at_an_episode_end_goes_on_as_if_never_stopped(tmp_path):
    """The envs are rebuilt from the seed on resume; their random states come from the checkpoint,
    so the next training episode starts where an uninterrupted run's does and the evaluations go on
    with fresh episodes (they used to replay the first evaluation's starts). Checkpoints fall on
    episode ends here, as dm-control's do with the defaults (500-decision episodes)."""
    tiny = [*TINY[:-1], "env.max_episode_steps=30"]
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    main(["env=dmc/cartpole-swingup", "env_steps=120", f"run_dir={whole}", *tiny])
    main(["env=dmc/cartpole-swingup", "env_steps=60", f"run_dir={halves}", *tiny])
    main([f"resume={halves}", "env_steps=120"])
    for kind in ("episode", "eval"):
        assert [r["ret"] for r in records(whole, kind)] == [r["ret"] for r in records(halves, kind)], kind
    a, b = (ReplayBuffer.from_state_dict(torch.load(d / "checkpoint.pt", weights_only=True)["buffer"]).data()
            for d in (whole, halves))  # fmt: skip
    assert len(a) == 120 and all(torch.equal(a[k], b[k]) for k in ("obs", "action", "reward", "next_obs"))


def crash_at(step: int, monkeypatch, argv: list[str]) -> None:
    """`main(argv)` dying of an error as it is about to act after `step` steps: its checkpoint and
    transition log as a kill -9 there leaves them (summary.json says "failed")."""
    act = Run._act

    def crashing(self, obs):
        if self.progress["step"] == step:
            raise MemoryError("the machine ran out of memory")
        return act(self, obs)

    monkeypatch.setattr(Run, "_act", crashing)
    with pytest.raises(MemoryError):
        main(argv)
    monkeypatch.setattr(Run, "_act", act)


def test_a_crash_after_an_evaluation_keeps_it(tmp_path, monkeypatch):
    """An evaluation is checkpointed: a run that dies after it, before the next periodic checkpoint,
    keeps its record on resume (it used to be dropped, and one done at the step the logged
    transitions rejoined up to, of the checkpoint's policy)."""
    run_dir = tmp_path / "run"
    crash_at(80, monkeypatch, ["env=hopper", "env_steps=120", f"run_dir={run_dir}", *TINY, "checkpoint_every=50"])
    main([f"resume={run_dir}"])
    assert [r["step"] for r in records(run_dir, "eval")] == [60, 120]


def test_a_killed_run_begins_its_next_episode_where_a_run_never_killed_does(tmp_path, monkeypatch):
    """The transitions logged after the checkpoint rejoin the buffer, and the episode starts drawn
    meanwhile are drawn again: the episode after them begins from the start an uninterrupted run's
    does (it repeated the start of the first episode they held). Episodes of 30 steps; the
    checkpoint at 60 is at an episode's start, the kill after 90 at another's."""
    tiny = [*TINY[:-1], "env.max_episode_steps=30", "checkpoint_every=60", "checkpoint_minutes=null"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    main(["env=dmc/cartpole-swingup", "env_steps=120", f"run_dir={whole}", *tiny])
    crash_at(90, monkeypatch, ["env=dmc/cartpole-swingup", "env_steps=120", f"run_dir={killed}", *tiny])
    main([f"resume={killed}"])
    a, b = (ReplayBuffer.from_state_dict(torch.load(d / "checkpoint.pt", weights_only=True)["buffer"]).data()
            for d in (whole, killed))  # fmt: skip
    assert torch.equal(a["obs"][:90], b["obs"][:90])  # (the same run up to the kill)
    assert torch.equal(a["obs"][90], b["obs"][90])  # the next episode's start


def test_a_new_run_checks_for_a_run_in_its_directory_under_the_lock(tmp_path, monkeypatch):
    """Two commands given one new run_dir: the second, past its first check while the first wrote
    its checkpoint, finds that checkpoint once it holds the directory's lock (not a new run there)."""
    run_dir, open_run, first = tmp_path / "run", Run.open, []

    def another_run_began_meanwhile(self, path):
        if not first:  # (the second command, about to take the lock: the first runs to its end meanwhile)
            first.append(path)
            main(["env=hopper", "env_steps=60", f"run_dir={path}", *TINY])
        return open_run(self, path)

    monkeypatch.setattr(Run, "open", another_run_began_meanwhile)
    with pytest.raises(SystemExit, match="holds a run already"):
        main(["env=hopper", "env_steps=60", f"run_dir={run_dir}", *TINY])


def test_an_error_hours_into_a_run_is_a_failure_with_its_traceback_not_bad_input(tmp_path, monkeypatch):
    """Bad input is refused in one line before any work; a ValueError once the run learns (a
    bug, or data gone bad) keeps its traceback, and summary.json says the run failed."""
    def broken(self, started):
        raise ValueError("a NaN in the 9,000th transition")

    monkeypatch.setattr(Run, "_online", broken)
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match="9,000th"):
        main(["env=hopper", "env_steps=60", f"run_dir={run_dir}", *TINY])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "9,000th" in summary["error"]


def test_a_resume_refused_for_a_damaged_transition_log_leaves_the_metrics_as_they_were(tmp_path):
    run_dir = tmp_path / "run"
    main(["env=hopper", "env_steps=60", f"run_dir={run_dir}", *TINY])
    (run_dir / "metrics.jsonl").open("a").write('{"kind": "eval", "step": 75, "ret": 0.0}\n')  # after the checkpoint
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    segment = run_dir / "transitions" / "segment-000000.bin"
    damaged = bytearray(segment.read_bytes())
    damaged[0] ^= 0xFF  # its header
    segment.write_bytes(bytes(damaged))
    with pytest.raises(SystemExit, match="bad header.*: move .*transitions aside"):
        main([f"resume={run_dir}", "env_steps=120"])
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics


def test_unknown_planner_lists_the_choices():
    with pytest.raises(SystemExit, match=r"(?s)Could not find .planner/ppo.*bc.*cem.*icem.*mbpo.*mopo.*mppi.*random.*ravl$"):
        main(["planner=ppo"])


def test_unknown_env_lists_the_supported_names(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown env 'dmc/cartpole' \(did you mean .*\); supported: .*dmc/cartpole-swingup"):
        main(["env.name=dmc/cartpole", f"run_dir={tmp_path}"])


def test_resume_from_a_directory_that_is_not_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no config.yaml there"):
        main([f"resume={tmp_path}"])
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(SystemExit, match="it has no checkpoint.pt"):
        main([f"resume={tmp_path}", "env_steps=10"])


def test_every_task_is_an_env_option_with_its_own_defaults():
    assert load_config(["env=swimmer"])[0].env == {"name": "swimmer", "action_repeat": 1, "max_episode_steps": None}
    assert load_config(["env=dmc/walker-run"])[0].env.action_repeat == 2


def test_help_shows_the_chosen_planners_settings(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["planner=mopo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "name: mopo" in out and "rollout_length: 5" in out and "candidates" not in out


def test_help_lists_every_key_and_the_group_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "offline:" in out and "env_steps: 20000" in out
    assert "planner=bc|cem|icem|mbpo|mopo|mppi|random|ravl" in out and "dmc/cheetah-run" in out


def strict_json(path: Path):
    """Parse as a strict reader would: NaN and Infinity are not JSON."""
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    text = path.read_text()
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()] if path.suffix == ".jsonl" \
        else json.loads(text, parse_constant=refuse)


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_saves_everything_and_resume_loses_no_finished_step(tmp_path, sig, code):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "worldmodel.run", "env=hopper", "env_steps=5000", f"run_dir={run_dir}",
           *[a for a in TINY if not a.startswith("checkpoint_every")], "checkpoint_every=100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    def seen(kind: str) -> int:
        return (run_dir / "metrics.jsonl").read_text().count(f'"{kind}"') if (run_dir / "metrics.jsonl").is_file() else 0

    while not seen("fit") or seen("episode") < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"Resume with: python -m worldmodel.run resume={run_dir}" in err and "Traceback" not in err
    summary = strict_json(run_dir / "summary.json")
    stopped_at = summary["env_steps"]
    assert summary["status"] == "interrupted" and 0 < stopped_at < 5000
    for name in ["checkpoint.pt", "model.pt", "learning_curve.png", "config.yaml"]:
        assert (run_dir / name).is_file(), name
    saved = ReplayBuffer.from_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["buffer"]).data()
    assert len(saved) == stopped_at  # every finished step is in the checkpoint: none is redone

    resumed = main([f"resume={run_dir}", f"env_steps={stopped_at + 20}"])
    assert resumed["status"] == "finished" and resumed["env_steps"] == stopped_at + 20
    after = ReplayBuffer.from_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["buffer"]).data()
    assert len(after) == stopped_at + 20
    assert torch.equal(after["obs"][:stopped_at], saved["obs"]) and torch.equal(after["action"][:stopped_at], saved["action"])
    strict_json(run_dir / "metrics.jsonl")


def test_ctrl_c_that_also_ends_the_pipe_reading_the_run_still_saves(tmp_path):
    """`python -m worldmodel.run ... 2>&1 | tee log`, then Ctrl-C: tee ends too, and the next progress
    bar write raised BrokenPipeError: the run was marked failed, with no checkpoint at the stop. Here
    the pipe's reader goes away before the signal: the run saves and says interrupted."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "worldmodel.run", "env=hopper", "env_steps=5000", f"run_dir={run_dir}",
           *[a for a in TINY if not a.startswith("checkpoint_every")], "checkpoint_every=100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (run_dir / "metrics.jsonl").is_file() or (run_dir / "metrics.jsonl").read_text().count('"episode"') < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.stdout.close()  # (the reader, tee, is gone)
    time.sleep(0.5)  # (progress bars write into the broken pipe meanwhile)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    summary = strict_json(run_dir / "summary.json")
    assert summary["status"] == "interrupted" and summary.get("error") is None
    saved = ReplayBuffer.from_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["buffer"]).data()
    assert len(saved) == summary["env_steps"] > 0  # (saved at the stop, not at the start)


def test_a_run_killed_before_its_first_periodic_checkpoint_resumes(tmp_path):
    """SIGKILL (no chance to save) after the first fit, long before checkpoint_every: the
    checkpoint written at the very start is there to resume from."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "worldmodel.run", "env=hopper", "env_steps=5000", f"run_dir={run_dir}",
           *[a for a in TINY if not a.startswith("checkpoint_every")], "checkpoint_every=100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    def seen(kind: str) -> int:
        return (run_dir / "metrics.jsonl").read_text().count(f'"{kind}"') if (run_dir / "metrics.jsonl").is_file() else 0

    while not seen("fit") or seen("episode") < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert strict_json(run_dir / "summary.json")["env_steps"] == 0  # the start's checkpoint, nothing later
    with TransitionLog(run_dir / "transitions", 11, 3) as log:
        before_kill = log.read()  # every real step taken before the kill, on disk
    assert len(before_kill) >= 40  # the first fit comes after seed_steps=40
    resumed = main([f"resume={run_dir}", f"env_steps={len(before_kill) + 20}"])
    assert resumed["env_steps"] == len(before_kill) + 20 and resumed["status"] == "finished"
    buffer = ReplayBuffer.from_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["buffer"]).data()
    assert len(buffer) == len(before_kill) + 20  # the logged steps rejoined the buffer; 20 more were taken
    assert torch.equal(buffer["obs"][: len(before_kill)], before_kill["obs"])
    # the episodes those rejoined steps ended keep their records (the truncation to the checkpoint's
    # step spares what the log holds; at most the last, killed between its step and its record, is gone)
    ended = int((before_kill["terminated"] | before_kill["truncated"]).sum())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    kept = [r for r in records if r["kind"] == "episode" and r["step"] <= len(before_kill)]
    assert len(kept) >= 2 and ended - 1 <= len(kept) <= ended
    # killed after logging its last steps but before its last checkpoint (e.g. in the final
    # evaluation): the resumed run rejoins them, evaluates at once and finishes
    total = len(before_kill) + 20
    with TransitionLog(run_dir / "transitions", 11, 3) as log:
        log.append(log.read(start=total - 5))  # 5 more real steps on disk than in the checkpoint
    done = main([f"resume={run_dir}", f"env_steps={total + 5}"])
    assert done["status"] == "finished" and done["env_steps"] == total + 5
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if r["kind"] == "eval"][-1] == total + 5


NO_DATASET = "no_such_dataset.hdf5"
BAD_INPUTS = {
    "++hydra.run.dir=elsewhere": r"hydra.run.dir is not read here: .*run_dir= or out= says where they go",
    "+foo=1": r"unknown key 'foo' \(a typo\?\); valid keys for config: .*env_steps",
    "+planer.horizon=30": r"unknown key 'planer.horizon' \(a typo\?\); did you mean planner.horizon\?",
    "env_step=300": r"unknown key 'env_step' \(a typo\?\); did you mean env_steps",
    "seed_steps=20000": r"seed_steps=20000 >= env_steps=20000: the run would end before the planner acts",
    "+planner.horizonn=30": r"unknown key 'planner.horizonn'",
    "env_steps=-5": r"env_steps must be a whole number >= 0, got -5",
    "env_steps=abc": r"env_steps must be a whole number >= 0, got 'abc'",
    "env_steps=0": r"env_steps=0 and no dataset: nothing to learn from",
    "eval_every=0": r"eval_every must be a whole number >= 1, got 0",
    "env=foo": r"unknown env 'foo'; supported: .*inverted_pendulum.*dmc/walker-walk",
    "planner.horizon=abc": r"planner.horizon must be an int, got 'abc'",
    "planner.horizon=0": r"horizon and particles must be >= 1",
    "planner.value_agent.num_critics=0": r"num_critics, hidden and the layer counts must be >= 1",
    "model.fit.lr=-1": r"fit setting lr=-1 is out of range",
    "model.fit.beta=2": r"fit setting beta=2 is out of range",
    "fit_beta=-0.5": r"fit setting beta=-0.5 is out of range",
    "fit_beta=true": r"fit setting beta must be a number, got True",
    "fit_steps=0": r"fit_steps must be a whole number >= 1 or null, got 0",
    "model.hidden=big": r"model.hidden must be an int, got 'big'",
    "threads=0": r"threads must be 'auto' or a whole number >= 1, got 0",
    "threads=99": r"threads=99, but this process may use \d+ core\(s\)",
    "device=tpu": r"device=tpu",
    "online.penalty=1": r"online.\* settings .* need dataset=<file>",
    "planner=bc": r"planner=bc clones the actions of a dataset: give dataset=<file>",
    f"dataset={NO_DATASET}": rf"dataset={NO_DATASET}: no such file or directory",
    "+env.reset_noise=2": r"env dmc/cartpole-swingup: the simulator refused the arguments \['reset_noise'\]",
    "planner.discount=nan": r"planner.discount=nan: settings are finite numbers \(not nan or inf\)",
    "fit_beta=-inf": r"fit_beta=-inf: settings are finite numbers",
    "planner.discount=1.5": r"discount must be in \[0, 1\], got 1.5",
}
if not torch.cuda.is_available():
    BAD_INPUTS["device=cuda"] = r"device=cuda, but no CUDA device is available .*use device=cpu"


@pytest.mark.parametrize("arg", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, monkeypatch, arg):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=BAD_INPUTS[arg]) as error:
        main([arg])
    assert str(error.value.code).startswith("error: ")
    assert list(tmp_path.iterdir()) == []  # no run directory, no debris


def test_a_run_dir_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for run_dir in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "run"):
        with pytest.raises(SystemExit, match=f"run_dir={run_dir}: {tmp_path / 'notes.txt'} is a file; give a directory"):
            main([f"run_dir={run_dir}"])
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_failed_resume_leaves_the_run_untouched(tmp_path):
    run_dir = tmp_path / "run"
    main(["env=hopper", "env_steps=60", f"run_dir={run_dir}", *TINY])
    before = files(run_dir)
    with pytest.raises(SystemExit, match="does not match this run's config"):
        main([f"resume={run_dir}", "env_steps=120", "model.hidden=64"])
    assert files(run_dir) == before


def test_a_resume_that_fails_on_damaged_metrics_keeps_the_saved_config_and_says_what_to_do(tmp_path):
    run_dir = tmp_path / "run"
    main(["env=hopper", "env_steps=60", f"run_dir={run_dir}", *TINY])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join([lines[0], "{torn", *lines[1:]]) + "\n")
    config = (run_dir / "config.yaml").read_text()
    with pytest.raises(SystemExit, match="line 2, is not JSON: the file is damaged; delete that line to resume"):
        main([f"resume={run_dir}", "env_steps=120"])
    assert (run_dir / "config.yaml").read_text() == config  # (env_steps=120 was not saved)


def test_a_resume_keeps_the_fit_records_its_checkpoint_holds_and_drops_a_fit_logged_after_it():
    """An offline run fits at step 0; killed after logging that fit but before its checkpoint, the
    resumed run fits again: the first record must go (a step-0 record is otherwise always kept)."""
    run = Run(load_config(["env=hopper", *TINY])[0])
    fit, epoch, eval_ = {"kind": "fit", "step": 0}, {"kind": "offline_fit", "step": 1}, {"kind": "eval", "step": 0}
    run.progress.update(fits=0, step=0, offline_updates=0)
    keep = run._kept_on_resume()
    assert [keep(r) for r in (fit, epoch, eval_)] == [False, False, True]
    run.progress.update(fits=1)
    keep = run._kept_on_resume()
    assert [keep(r) for r in (fit, epoch, eval_, fit)] == [True, True, True, False]  # (a second fit@0: after it)


def test_two_processes_never_write_one_run_directory(tmp_path):
    import os

    from worldmodel.checkpoint import RunDirLock

    run_dir = tmp_path / "run"
    main(["env=hopper", "env_steps=60", f"run_dir={run_dir}", *TINY])
    held = RunDirLock(run_dir)  # as another process holds it (flock: one open file, one holder)
    with pytest.raises(SystemExit, match=f"run_dir={run_dir} is in use by process {os.getpid()}"):
        main([f"resume={run_dir}", "env_steps=120"])
    held.release()
    (run_dir / ".checkpoint.pt.x1y2.worldmodel-tmp").write_bytes(b"half a checkpoint")  # (its writer was killed)
    (run_dir / ".notes.tmp").write_bytes(b"another program's")
    assert main([f"resume={run_dir}", "env_steps=120"])["env_steps"] == 120
    assert [p.name for p in run_dir.glob(".*tmp")] == [".notes.tmp"]


def test_a_new_run_refuses_a_directory_that_holds_a_run(tmp_path):
    run_dir = tmp_path / "run"
    main(["env=hopper", "env_steps=60", f"run_dir={run_dir}", *TINY])
    before = files(run_dir)
    with pytest.raises(SystemExit, match=f"run_dir={run_dir} holds a run already: resume={run_dir} continues it"):
        main(["env=hopper", "env_steps=60", f"run_dir={run_dir}", *TINY])
    assert files(run_dir) == before


@pytest.mark.parametrize("name", ["mppi", "random", "mopo", "ravl"])
def test_the_command_line_builds_the_planner_the_api_does(name):
    """One source of defaults: `planner=<name>` with no overrides is the config dataclass's defaults."""
    cfg, _ = load_config([f"planner={name}", "env=hopper"])
    _, config_cls = PLANNERS[name]
    assert Run(cfg).planner.config == config_cls(seed=cfg.seed)


def test_a_key_of_another_planner_is_unknown_and_not_suggested_as_itself():
    """planner.candidates is MPPI's: under planner=mopo the error lists mopo's keys, not the key itself."""
    from worldmodel.run import main

    with pytest.raises(SystemExit) as e:
        main(["planner=mopo", "planner.candidates=64"])
    message = str(e.value)
    assert "unknown key 'planner.candidates'" in message and "did you mean planner.candidates" not in message
    assert "planner.rollout_length" in message  # mopo's keys


def test_a_run_begun_with_an_env_argument_resumes_and_a_stale_saved_key_is_a_clear_error(tmp_path):
    """+env.<key>= (a simulator argument the env checks) is saved with the run and comes back on
    resume; a saved key this version does not know says so instead of a traceback."""
    from omegaconf import OmegaConf

    from worldmodel.config import save_config

    cfg, _ = load_config(["env=hopper", "+env.reset_noise_scale=0.5", "env_steps=100"])
    (tmp_path / "run").mkdir()
    save_config(cfg, tmp_path / "run")
    (tmp_path / "run" / "checkpoint.pt").touch()  # (load_config asks only that it exists)
    resumed, path = load_config([f"resume={tmp_path / 'run'}", "env_steps=200", "env.reset_noise_scale=0.6"])
    assert path == tmp_path / "run" and resumed.env.reset_noise_scale == 0.6 and resumed.env_steps == 200
    stale = OmegaConf.merge(OmegaConf.load(tmp_path / "run" / "config.yaml"), {"gone_setting": 1})
    (tmp_path / "run" / "config.yaml").write_text(OmegaConf.to_yaml(stale))
    with pytest.raises(SystemExit, match="does not fit this version"):
        load_config([f"resume={tmp_path / 'run'}"])


def test_the_same_seed_reproduces_a_run_and_another_seed_does_not(tmp_path):
    """Seeds that reproduce: two runs of one command and seed take the same actions, fit the same
    model and score the same; another seed differs."""
    def run(name, seed):
        main(["env=hopper", "env_steps=60", f"seed={seed}", f"run_dir={tmp_path / name}", *TINY])
        buffer = ReplayBuffer.from_state_dict(torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["buffer"])
        rows = [{k: v for k, v in r.items() if "wall" not in k and not k.endswith("_ms")} for r in
                (json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines())]
        return buffer.data()["action"], rows

    actions, rows = run("a", 3)
    again, rows_again = run("b", 3)
    other, _ = run("c", 4)
    assert torch.equal(actions, again) and rows == rows_again
    assert not torch.equal(actions, other)


def test_an_online_run_checkpoints_by_the_clock_between_checkpoint_every(tmp_path, monkeypatch):
    """checkpoint_minutes online: a checkpoint after a step once that much wall time has passed
    (here at once: every step), not only every checkpoint_every steps."""
    steps = {}
    for minutes in ("null", "1e-9"):
        run_dir = tmp_path / minutes
        args = ["planner=mppi", "env=hopper", "env_steps=50", f"run_dir={run_dir}",
                *[a for a in TINY if not a.startswith("checkpoint_every")], "checkpoint_every=100000",
                f"checkpoint_minutes={minutes}"]  # fmt: skip
        run = Run(load_config(args)[0])
        saved, save = [], run.save
        monkeypatch.setattr(run, "save", lambda: (saved.append(run.progress["step"]), save())[1])
        run.open(run_dir)
        run.run()
        run.close()
        steps[minutes] = saved
    assert steps["null"] == [0, 50]  # the start, the end
    assert steps["1e-9"] == list(range(0, 51))  # and after every step between


def test_default_run_directories_name_the_seed_and_never_collide(tmp_path, monkeypatch):
    """runs/<kind>/<label>-<time>-s<seed>: two runs started in one second (a shell loop's) with one
    seed get directories of their own, not one that the second finds in use."""
    from omegaconf import OmegaConf

    from worldmodel.config import run_dir_for

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("time.strftime", lambda fmt: "20261207-093000")
    cfg = OmegaConf.create({"run_dir": None, "seed": 3})
    first = run_dir_for(cfg, "run", "dmc/cartpole-swingup")
    assert first == Path("runs/run/dmc_cartpole-swingup-20261207-093000-s3")
    first.mkdir(parents=True)
    assert run_dir_for(cfg, "run", "dmc/cartpole-swingup") == first.with_name(first.name + "-2")
    assert run_dir_for(OmegaConf.create({"run_dir": "mine"}), "run", "x") == Path("mine")


def test_tensorboard_killed_mid_rebuild_is_rebuilt_at_the_next_resume(tmp_path, monkeypatch):
    """A resume truncates metrics.jsonl, then rebuilds TensorBoard from it; killed in between, the
    next resume finds nothing to drop in the JSONL but must still rebuild TensorBoard."""
    from worldmodel.metrics import MetricsLogger

    logger = MetricsLogger(tmp_path)
    for step in (10, 20, 30):
        logger.log("eval", step, ret=float(step))
    mirror = MetricsLogger._mirror
    monkeypatch.setattr(MetricsLogger, "_mirror", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt("killed")))
    with pytest.raises(KeyboardInterrupt):
        logger.truncate(lambda r: r["step"] <= 20)  # (the JSONL rewritten; TensorBoard emptied, not refilled)
    monkeypatch.setattr(MetricsLogger, "_mirror", mirror)
    MetricsLogger(tmp_path).truncate(lambda r: r["step"] <= 20)
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert [e.step for e in events.Scalars("eval/ret")] == [10, 20]
    assert not (tmp_path / ".tb-rebuilding").exists()
