"""Shared test settings: one torch thread per test process (its subprocesses included, through
OMP_NUM_THREADS), so the suite never oversubscribes a shared machine; slow learning checks are
opt-in with --slow."""

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch loads OpenMP; subprocesses inherit it

import pytest  # noqa: E402
import torch  # noqa: E402

from worldmodel.threads import set_threads  # noqa: E402

set_threads(1)


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run slow learning checks")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow learning check: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def unprivileged():
    """run(imports, body) -> stdout and stderr of `imports`, then `body`, in a Python that may not use
    real-time priorities: no rtprio allowance, and a root process drops to nobody after its imports.
    Skips where that cannot be had (off Linux, no right to drop, CAP_SYS_NICE kept through setcap)."""
    import subprocess
    import sys

    if sys.platform != "linux":
        pytest.skip("Linux's scheduling rights")

    def run(imports: str, body: str) -> tuple[str, str]:
        script = (f"{imports}\nimport os, resource, sys\nfrom worldmodel import threads\n"
                  "resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))\n"
                  "try:\n"
                  "    if os.getuid() == 0:\n"
                  "        os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
                  "except PermissionError:\n"
                  "    sys.exit(3)\n"
                  "if threads.realtime_allowed(1):\n"
                  "    sys.exit(4)\n"
                  f"{body}\n")  # fmt: skip
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        if done.returncode in (3, 4):
            pytest.skip("cannot drop to a user without real-time rights here")
        assert done.returncode == 0, done.stderr
        return done.stdout, done.stderr

    return run
