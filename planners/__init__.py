"""Planners that act with a learned dynamics model: MPC (MPPI, CEM, iCEM, random shooting)."""

from planners.base import Planner
from planners.cem import CEM, CEMConfig
from planners.icem import ICEM, ICEMConfig
from planners.mpc import MPCConfig, MPCPlanner, PlanningError
from planners.mppi import MPPI, MPPIConfig
from planners.random_shooting import RandomShooting, RandomShootingConfig

__all__ = [
    "CEM", "CEMConfig", "ICEM", "ICEMConfig", "MPCConfig", "MPCPlanner", "MPPI", "MPPIConfig",
    "Planner", "PlanningError", "RandomShooting", "RandomShootingConfig",
]  # fmt: skip
