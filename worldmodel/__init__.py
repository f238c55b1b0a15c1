"""worldmodel: a probabilistic ensemble dynamics model, the data it learns from, and the tasks it models."""

from worldmodel.checkpoint import CheckpointError
from worldmodel.collect import collect, correlated_noise_policy, uniform_policy
from worldmodel.ensemble import EnsembleDynamics
from worldmodel.envs import TaskSpec, make_env, task_names
from worldmodel.replay import ReplayBuffer
from worldmodel.threads import set_threads
from worldmodel.transition_log import TransitionLog
from worldmodel.transitions import validate_transitions
from worldmodel.uncertainty import MEASURES, Uncertainty

__all__ = [
    "CheckpointError",
    "EnsembleDynamics",
    "MEASURES",
    "ReplayBuffer",
    "TaskSpec",
    "TransitionLog",
    "Uncertainty",
    "collect",
    "correlated_noise_policy",
    "make_env",
    "set_threads",
    "task_names",
    "uniform_policy",
    "validate_transitions",
]
