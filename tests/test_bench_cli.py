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
