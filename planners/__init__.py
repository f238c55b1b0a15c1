"""Planners that act with a learned dynamics model: MPC (MPPI, CEM, iCEM, random shooting),
Dyna (MBPO, MOPO, RAVL) and behaviour cloning as the offline floor."""

from planners.base import Planner
from planners.bc import BCConfig, BehaviourCloning
from planners.cem import CEM, CEMConfig
from planners.dyna import MBPO, MOPO, RAVL, Dyna, DynaConfig, MBPOConfig, MOPOConfig, RAVLConfig
from planners.icem import ICEM, ICEMConfig
from planners.mpc import MPCConfig, MPCPlanner, PlanningError
from planners.mppi import MPPI, MPPIConfig
from planners.random_shooting import RandomShooting, RandomShootingConfig
from planners.sac import SAC, SACConfig

MPC_PLANNERS = {
    "mppi": (MPPI, MPPIConfig),
    "cem": (CEM, CEMConfig),
    "icem": (ICEM, ICEMConfig),
    "random": (RandomShooting, RandomShootingConfig),
}
DYNA_PLANNERS = {
    "mbpo": (MBPO, MBPOConfig),
    "mopo": (MOPO, MOPOConfig),
    "ravl": (RAVL, RAVLConfig),
}
PLANNERS = {**MPC_PLANNERS, **DYNA_PLANNERS, "bc": (BehaviourCloning, BCConfig)}


def make_planner(name: str, model, spec, buffer=None, terminal_value=None, **settings) -> Planner:
    """A planner by name with its config's fields as keyword settings; unknown names or fields are errors.

    terminal_value (MPC planners only) maps states [B, O] to values [B].
    """
    if name not in PLANNERS:
        raise ValueError(f"unknown planner {name!r}; choose from {sorted(PLANNERS)}")
    cls, config_cls = PLANNERS[name]
    try:
        config = config_cls(**settings)
    except TypeError as e:
        raise ValueError(f"bad setting for planner {name!r}: {e}") from None
    if terminal_value is not None:
        if name not in MPC_PLANNERS:
            raise ValueError(f"planner {name!r} takes no terminal value (only {sorted(MPC_PLANNERS)} do)")
        return cls(model, spec, config, terminal_value=terminal_value, buffer=buffer)
    return cls(model, spec, config, buffer=buffer)


__all__ = [
    "DYNA_PLANNERS", "MPC_PLANNERS", "PLANNERS", "make_planner",
    "BCConfig", "BehaviourCloning", "CEM", "CEMConfig", "Dyna", "DynaConfig", "ICEM", "ICEMConfig",
    "MBPO", "MBPOConfig", "MOPO", "MOPOConfig", "MPCConfig", "MPCPlanner", "MPPI", "MPPIConfig",
    "Planner", "PlanningError", "RAVL", "RAVLConfig", "RandomShooting", "RandomShootingConfig", "SAC", "SACConfig",
]  # fmt: skip
