"""The one GPU command (`python -m planners.bench --gpu-suite`) runs end to end; on CPU with --quick.

Slow (minutes on a 2-core CPU), so opt-in with --slow: a GPU session must not find the suite broken
on the day it has a machine for 15 minutes."""

import json
import math
import subprocess
import sys

import pytest

from planners.bench import PLANNING_SECTION

pytestmark = pytest.mark.slow


def test_gpu_suite_runs_every_section_on_cpu(tmp_path):
    out = tmp_path / "suite.json"
    cmd = [sys.executable, "-m", "planners.bench", "--gpu-suite", "--device", "cpu", "--quick", "--repeats", "2",
           "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert list(sections) == [PLANNING_SECTION, "Dyna rollouts and agent updates", "ensemble MLP kernels"]
    # (on a GPU also the correctness tests first and the compile statistics last)
    kernel_rows = sections["ensemble MLP kernels"]["rows"]
    assert {r["variant"] for r in kernel_rows} == {"baddbmm", "ours"}  # (the CUDA-graph variant needs a GPU)
    assert {r["B"] for r in kernel_rows} == {1, 256}
    planning = sections[PLANNING_SECTION]["rows"]
    assert any(r["config"].startswith("MPPI default") for r in planning)
    updates = {r["work"]: r for r in sections["Dyna rollouts and agent updates"]["rows"]}
    assert any(w.startswith("RAVL EDAC") for w in updates)
    for r in [*kernel_rows, *planning, *updates.values()]:
        ms = r.get("ms", r.get("ms_per_step"))
        assert math.isfinite(ms) and ms > 0
    assert "| device | dtype | pass |" in done.stdout  # the kernels' markdown table, printed for the README
    refused = subprocess.run([sys.executable, "-m", "planners.bench", "--gpu-suite", "--device", "cpu"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "give --quick" in refused.stderr  # (not hours of CPU)

