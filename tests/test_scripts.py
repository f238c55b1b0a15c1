"""The results scripts' guards (docs/results/scripts/work_queue.sh): a run begun with other settings
is neither skipped as done nor resumed as the one asked for."""

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
