"""Planners that act with a learned dynamics model: MPC (MPPI, CEM, iCEM, random shooting)."""

from planners.base import Planner
from planners.cem import CEM, CEMConfig
from planners.icem import ICEM, ICEMConfig
from planners.mpc import MPCConfig, MPCPlanner, PlanningError
from planners.mppi import MPPI, MPPIConfig
from planners.random_shooting import RandomShooting, RandomShootingConfig

MPC_PLANNERS = {
    "mppi": (MPPI, MPPIConfig),
    "cem": (CEM, CEMConfig),
    "icem": (ICEM, ICEMConfig),
    "random": (RandomShooting, RandomShootingConfig),
}


def make_planner(name: str, model, spec, terminal_value=None, buffer=None, **settings) -> Planner:
    """A planner by name with its config's fields as keyword settings; unknown names or fields are errors."""
    if name not in MPC_PLANNERS:
        raise ValueError(f"unknown planner {name!r}; choose from {sorted(MPC_PLANNERS)}")
    cls, config_cls = MPC_PLANNERS[name]
    try:
        config = config_cls(**settings)
    except TypeError as e:
        raise ValueError(f"bad setting for planner {name!r}: {e}") from None
    return cls(model, spec, config, terminal_value, buffer)


__all__ = [
    "MPC_PLANNERS", "make_planner",
    "CEM", "CEMConfig", "ICEM", "ICEMConfig", "MPCConfig", "MPCPlanner", "MPPI", "MPPIConfig",
    "Planner", "PlanningError", "RandomShooting", "RandomShootingConfig",
]  # fmt: skip
