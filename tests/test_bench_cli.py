"""The benchmark commands refuse bad arguments in one line, before any measurement."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module, args, message", [
    ("kernels.bench", ["--threads", "0"], "--threads: '0': give a whole number >= 1"),
    ("kernels.bench", ["--from-json", "missing.json"], "--from-json missing.json: no such file"),
    ("kernels.bench", ["--from-json", "garbage.json"], "--from-json garbage.json: not JSON"),
    ("kernels.bench", ["--from-json", "."], "--from-json .: a directory"),
    ("planners.bench", ["--repeats", "0"], "--repeats: '0': give a whole number >= 1"),
])  # fmt: skip
def test_the_benchmarks_refuse_bad_counts_in_one_line(module, args, message, tmp_path):
    (tmp_path / "garbage.json").write_text("not json")
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_a_gpu_suite_section_past_its_limit_is_stopped_and_reported_not_waited_for():
    """A section's own process is stopped at its limit (a short GPU loan goes on to the next
    section); here a 1 s limit, which the child's imports alone exceed."""
    import time

    from planners.bench import SECTION_LIMIT_S, _section_in_child

    assert set(SECTION_LIMIT_S) == {"correctness", "planning", "dyna", "kernels", "compile"}
    started = time.perf_counter()
    result = _section_in_child("dyna", "cpu", repeats=2, bf16=False, quick=True, kernels_json=None, limit_s=1)
    assert time.perf_counter() - started < 10
    assert "was stopped at its 1 s limit" in result["error"] and result["rows"] == []
