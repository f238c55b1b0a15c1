"""Planners that act with a learned dynamics model: MPC (MPPI, CEM, iCEM, random shooting),
Dyna (MBPO, MOPO, RAVL) and behaviour cloning as the offline floor."""

import dataclasses

from planners.base import Planner, evaluate, evaluation_returns
from planners.bc import BCConfig, BehaviourCloning
from planners.cem import CEM, CEMConfig
from planners.dyna import MBPO, MOPO, RAVL, Dyna, DynaConfig, MBPOConfig, MOPOConfig, RAVLConfig
from planners.icem import ICEM, ICEMConfig
from planners.imagination import Imagination, ImaginationConfig
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


_AGENT_KEYS = ("agent", "value_agent")  # settings that hold SACConfig fields


def planner_defaults() -> dict[str, dict]:
    """Every planner's settings and defaults, from its config dataclass (the run command's
    planner/ group options): {name: {"name": name, field: default, ...}}."""
    return {name: {"name": name, **{k: v for k, v in dataclasses.asdict(config_cls()).items() if k != "seed"}}
            for name, (_, config_cls) in PLANNERS.items()}  # fmt: skip


def planner_config(name: str, settings: dict):
    """The planner's config dataclass from its settings: an unknown name, an unknown field or a
    value of the wrong type or range is a ValueError naming it (no model needed)."""
    from worldmodel.config import check_settings, dataclass_fields

    if name not in PLANNERS:
        raise ValueError(f"unknown planner {name!r}; choose from {sorted(PLANNERS)}")
    config_cls = PLANNERS[name][1]
    check_settings("planner", settings, dataclass_fields(config_cls))
    for key in _AGENT_KEYS:
        if isinstance(settings.get(key), dict):
            check_settings(f"planner.{key}", settings[key], dataclass_fields(SACConfig))
    if isinstance(settings.get("value_imagination"), dict):
        check_settings("planner.value_imagination", settings["value_imagination"], dataclass_fields(ImaginationConfig))
    return config_cls(**settings)


def make_planner(name: str, model, spec, buffer=None, terminal_value=None, **settings) -> Planner:
    """A planner by name with its config's fields as keyword settings; an unknown name, an unknown
    field or a value of the wrong type is a ValueError naming it.

    terminal_value (MPC planners only) maps states [B, O] to values [B].
    """
    cls, config = PLANNERS[name][0], planner_config(name, settings)
    if terminal_value is not None:
        if name not in MPC_PLANNERS:
            raise ValueError(f"planner {name!r} takes no terminal value (only {sorted(MPC_PLANNERS)} do)")
        return cls(model, spec, config, terminal_value=terminal_value, buffer=buffer)
    return cls(model, spec, config, buffer=buffer)


def learned_agent(planner: Planner) -> SAC | None:
    """The SAC a planner learns: an MPC planner's learned value or a Dyna planner's agent (None:
    neither, e.g. behaviour cloning or MPC without a value)."""
    return planner.learned if isinstance(planner.learned, SAC) else None


def load_pretrained_agent(planner: Planner, saved: dict) -> str | None:
    """Carry a pretrained run's learned agent (its planner's state_dict) into `planner`, as FOWM
    carries the critics beside the dynamics: an MPC planner's learned value takes a saved value
    or a Dyna agent's critics (same SAC sizes), a Dyna planner a saved agent. Returns what it
    loaded, or None where nothing fits (the planner keeps its fresh agent)."""
    agent = saved.get("value_agent") or saved.get("agent")
    target = learned_agent(planner)
    if agent is None or target is None:
        return None
    try:
        target.load_training_state(agent)
        target.anneal_actor_lr(None)  # an offline run's annealed (to 0) actor lr does not carry over
        target.anchor_here()  # its trust region (actor_anchor) is around the actor as pretrained
    except (RuntimeError, KeyError) as e:
        raise ValueError(f"the pretrained agent does not fit this planner's ({e}); give its model.pt alone to start "
                         "the agent afresh, or match the agent sizes (planner.value_agent.* / planner.agent.*)") from None  # fmt: skip
    return "learned value" if hasattr(planner, "value_agent") else "agent"


__all__ = [
    "DYNA_PLANNERS", "MPC_PLANNERS", "PLANNERS", "evaluate", "evaluation_returns", "learned_agent", "load_pretrained_agent", "make_planner", "planner_config",
    "planner_defaults",
    "BCConfig", "BehaviourCloning", "CEM", "CEMConfig", "Dyna", "DynaConfig", "ICEM", "ICEMConfig", "Imagination", "ImaginationConfig",
    "MBPO", "MBPOConfig", "MOPO", "MOPOConfig", "MPCConfig", "MPCPlanner", "MPPI", "MPPIConfig",
    "Planner", "PlanningError", "RAVL", "RAVLConfig", "RandomShooting", "RandomShootingConfig", "SAC", "SACConfig",
]  # fmt: skip
