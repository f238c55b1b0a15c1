"""Slow learning checks (opt-in: pytest --slow): the planners must actually learn real MuJoCo tasks.

Thresholds sit well below what was measured (README) and well above what random actions get.
"""

import pytest
from omegaconf import OmegaConf

from planners.behaviour import BehaviourTraining
from worldmodel.run import main

pytestmark = pytest.mark.slow


def test_mppi_learns_cartpole_swingup_in_4000_steps(tmp_path):
    """Uniform random actions score 58 on average (17-135); MPPI reached 195 after 2000 steps."""
    summary = main(["planner=mppi", "env_steps=4000", "eval_every=2000", "eval_episodes=2", f"run_dir={tmp_path}"])
    assert summary["best_eval_return"] > 150


def test_sac_balances_the_inverted_pendulum(tmp_path):
    """SAC reached the maximum return, 1000, after 15,000 steps."""
    settings = OmegaConf.create({"max_steps": 25_000, "medium_return": 950, "start_steps": 1000, "eval_every": 1000,
                                 "eval_episodes": 2, "agent": {}})  # fmt: skip
    training = BehaviourTraining("inverted_pendulum", 0, settings, tmp_path / "sac.pt")
    training.train(until="medium")
    assert training.state["medium"]["return"] >= 950
