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
