"""The results scripts' guards (docs/results/scripts/): a run begun with other settings is neither
skipped as done nor resumed as the one asked for (work_queue.sh); the lanes of lanes.sh run their
steps in order, one copy at a time, and stop on a signal."""

import subprocess
import sys
from pathlib import Path

import pytest

QUEUE = Path(__file__).parents[1] / "docs" / "results" / "scripts" / "work_queue.sh"


def saved_as(run_dir: Path, *settings: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}  # (the python of this environment)
    return subprocess.run(["bash", "-c", f'. "{QUEUE}"; saved_as "$@"', "_", str(run_dir), *settings],
                          capture_output=True, text=True, env=env)  # fmt: skip


@pytest.mark.parametrize("asked, ok", [(["eval_every=10000", "planner.agent.precision=fp32"], True),
                                       (["eval_every=5000"], False), (["planner.agent.precision=bf16"], False)])
def test_saved_as_compares_a_runs_saved_settings(tmp_path, asked, ok):
    (tmp_path / "config.yaml").write_text("eval_every: 10000\nplanner:\n  agent:\n    precision: fp32\n")
    done = saved_as(tmp_path, *asked)
    assert (done.returncode == 0) == ok
    if not ok:
        key = asked[0].split("=")[0]
        assert f"was begun with other settings: {key}=" in done.stderr and "move it aside" in done.stderr


def test_a_run_not_begun_yet_has_no_settings_to_differ(tmp_path):
    assert saved_as(tmp_path / "not-yet", "eval_every=1").returncode == 0


LANES = Path(__file__).parents[1] / "docs" / "results" / "scripts" / "lanes.sh"


def lanes_tree(tmp_path: Path, step_seconds: float) -> Path:
    """A checkout-shaped folder holding lanes.sh, with the table scripts it calls replaced by stubs
    that log their arguments and sleep, and both datasets present (nothing is made)."""
    scripts = tmp_path / "docs" / "results" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "lanes.sh").write_text(LANES.read_text())
    for name in ("offline_table.sh", "online_table.sh"):
        (scripts / name).write_text(f'#!/bin/bash\necho "{name} $* TASKS=${{TASKS:-}} SEEDS=${{SEEDS:-}}" >> steps.log\n'
                                    f"sleep {step_seconds}\n")  # fmt: skip
        (scripts / name).chmod(0o755)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text("")
    (tmp_path / "data").mkdir()
    for name in ("halfcheetah-medium.hdf5", "hopper-medium-replay.hdf5"):
        (tmp_path / "data" / name).write_text("")
    return tmp_path


def test_lanes_run_their_steps_in_order_one_copy_at_a_time_and_stop_on_a_signal(tmp_path):
    import os
    import signal
    import time

    root = lanes_tree(tmp_path, step_seconds=1.0)
    script = str(root / "docs" / "results" / "scripts" / "lanes.sh")
    assert subprocess.run(["bash", script], env={**os.environ, "LANES": "offline bogus"}).returncode == 1
    time.sleep(0.5)
    assert not (root / "steps.log").exists()  # (a bad name starts no lane, not even the good one before it)
    first = subprocess.Popen(["bash", script], start_new_session=True)
    time.sleep(0.5)
    assert subprocess.run(["bash", script], capture_output=True).returncode == 75  # the running copy's lock
    assert first.wait(timeout=30) == 0
    steps = (root / "steps.log").read_text().splitlines()
    offline = [s for s in steps if s.startswith("offline")]
    online = [s for s in steps if s.startswith("online")]
    assert offline == ["offline_table.sh halfcheetah medium TASKS= SEEDS=2", "offline_table.sh hopper medium-replay TASKS= SEEDS="]
    assert online == ["online_table.sh  TASKS=dmc/cartpole-swingup SEEDS=1 2",
                      "online_table.sh  TASKS=dmc/reacher-easy dmc/cheetah-run SEEDS="]  # fmt: skip
    (root / "steps.log").unlink()
    stopped = subprocess.Popen(["bash", script], start_new_session=True)
    time.sleep(0.5)
    os.killpg(stopped.pid, signal.SIGTERM)  # (as a session's end stops it: each lane's first step gets it)
    stopped.wait(timeout=30)
    time.sleep(1.5)
    assert len((root / "steps.log").read_text().splitlines()) == 2  # neither lane went on to its next step
