"""The planning step as one CUDA graph, and a check that code makes no host syncs.

An MPC step is hundreds of small kernels (H model steps, sampling, weighting): on a GPU,
launching them costs more than running them for a single robot. `PlanGraph` captures a
planner's `optimize(obs [N, O], warm start [N, H, A])` once for its shapes and replays it
each control step, launch-free; `PlanGraphs` keeps a planner's few graphs by what they depend on. Captured work may not read a device value on the host
(`.item()`, `bool(t)`, `.tolist()`, boolean-mask indexing): `no_host_syncs()` finds such
reads on any device, the CPU included, so the tests check the step without a GPU.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from kernels._common import TUNING_LOCK

if TYPE_CHECKING:
    from planners.mpc import MPCPlanner

aten = torch.ops.aten


class HostSyncError(RuntimeError):
    """Code that must stay on the device (a captured planning step) read a device value on the host."""


# ops whose result (or output size) the host must read from the device
_SYNCING_OPS = {
    aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
    aten._unique2.default, aten.unique_consecutive.default, aten.unique_dim.default,
    aten.repeat_interleave.Tensor,
}  # fmt: skip
_SYNCING_METHODS = {Tensor.tolist, Tensor.item, Tensor.numpy, Tensor.__bool__, Tensor.__int__, Tensor.__float__}


_allowed = 0  # > 0 inside host_syncs_allowed()


class _NoSyncOps(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _allowed:
            return func(*args, **kwargs)
        if func in _SYNCING_OPS or (func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default)
                                    and any(isinstance(i, Tensor) and i.dtype == torch.bool for i in args[1] or ())):
            raise HostSyncError(f"{func} reads a device value on the host (a sync; not allowed in a CUDA graph)")
        return func(*args, **kwargs)


class _NoSyncMethods(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _SYNCING_METHODS and not _allowed:
            raise HostSyncError(f"Tensor.{func.__name__} reads a device value on the host "
                                "(a sync; not allowed in a CUDA graph)")  # fmt: skip
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def no_host_syncs() -> Iterator[None]:
    """Raise HostSyncError where the code inside reads a tensor's value on the host, on any
    device (on the CPU, where such a read costs nothing, it finds what would sync on a GPU)."""
    with _NoSyncMethods(), _NoSyncOps():
        yield


@contextlib.contextmanager
def host_syncs_allowed() -> Iterator[None]:
    """Lift `no_host_syncs` for the code inside (e.g. a CPU-only path that never runs on a GPU)."""
    global _allowed
    _allowed += 1
    try:
        yield
    finally:
        _allowed -= 1


class PlanGraph:
    """A planner's `optimize` captured in one CUDA graph for fixed shapes.

    `replay(obs [N, O], warm [N, H, A], previous)` copies its inputs into the graph's static
    buffers, replays it and returns (plan [N, H, A], std [N, H, A] or None, finite: a device
    bool, True when every candidate's return was finite). The graph reads the model's and the
    learned value's weights where they lie, so in-place updates (refits, value updates) need no
    new capture; `graph_key` says what does.
    """

    def __init__(self, planner: MPCPlanner, obs: Tensor, warm: Tensor, warmups: int = 2):
        self.obs, self.warm = obs.clone(), warm.clone()
        # under a slew limit the first step is bounded by the action executed last: a static input too
        self.previous = planner.previous_action.detach().to(obs.device).clone() if _bounded(planner) else None
        # the tuning lock held throughout: another thread's autotuning (timed with device syncs)
        # waits for this capture instead of running under it
        with torch.cuda.device(obs.device), TUNING_LOCK:
            rng = planner.generator.get_state()  # the warm-up's draws are not the step's
            stream = torch.cuda.Stream(obs.device)  # this graph's own (not torch.cuda.graph's shared one)
            stream.wait_stream(torch.cuda.current_stream(obs.device))
            with torch.cuda.stream(stream):  # Triton's compile and autotuning, the allocator's first blocks
                for _ in range(warmups):
                    self._run(planner)
            torch.cuda.current_stream(obs.device).wait_stream(stream)
            planner.generator.set_state(rng)
            self.graph = torch.cuda.CUDAGraph()
            register = getattr(self.graph, "register_generator_state", None)
            if register is not None:  # (torch < 2.13 registers a generator by hand; later ones on first use)
                register(planner.generator)
            collecting = gc.isenabled()
            gc.disable()  # a kernel module unloaded by the collector mid-capture would break it (as Triton does)
            try:  # thread_local: a learning thread may use the GPU meanwhile
                with torch.cuda.graph(self.graph, stream=stream, capture_error_mode="thread_local"):
                    self.plan, self.std, self.finite = self._run(planner)
            finally:
                if collecting:
                    gc.enable()

    def _run(self, planner: MPCPlanner) -> tuple[Tensor, Tensor | None, Tensor]:
        kept, planner.previous_action = planner.previous_action, self.previous
        try:
            return planner.optimize_checked(self.obs, self.warm)
        finally:
            planner.previous_action = kept

    def replay(self, obs: Tensor, warm: Tensor, previous: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor]:
        self.obs.copy_(obs)
        self.warm.copy_(warm)
        if self.previous is not None:  # (its key says a previous action exists)
            self.previous.copy_(previous.reshape(self.previous.shape))
        with torch.cuda.device(self.obs.device):
            self.graph.replay()
        # copies: the next replay overwrites the static outputs, and a caller may hold a plan
        return self.plan.clone(), None if self.std is None else self.std.clone(), self.finite.clone()


class PlanGraphs:
    """A planner's captured steps by `graph_key`, the most recent `keep`: an episode's first step
    (no previous action to bound, under a slew limit) and the rest each keep their own graph."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self.graphs: OrderedDict[tuple, PlanGraph] = OrderedDict()
        self.captures = 0

    def replay(self, planner: MPCPlanner, obs: Tensor, warm: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        key = graph_key(planner, obs, warm)
        graph = self.graphs.get(key)
        if graph is None:
            while len(self.graphs) >= self.keep:  # (frees the oldest graph's memory before a new capture)
                self.graphs.popitem(last=False)
            graph = self.graphs[key] = PlanGraph(planner, obs, warm)
            self.captures += 1
        self.graphs.move_to_end(key)
        return graph.replay(obs, warm, planner.previous_action)


def graph_key(planner: MPCPlanner, obs: Tensor, warm: Tensor) -> tuple:
    """What a captured planning step depends on besides its inputs' values: shapes, device,
    settings and the uncertainty weight they give this act (an exploring act's bonus), whether a
    previous action bounds the first step, the model's precision and
    termination function, the generator, TF32 for the learned value's matmuls, and where every
    tensor of the model and the learned value lies (a swapped model or a reallocated buffer
    needs a new capture; weights written in place do not)."""
    model, agent = planner.model, planner.value_agent
    modules = [model] if agent is None else [model, agent.actor, agent.critics]
    pointers = tuple(t.data_ptr() for m in modules for t in itertools.chain(m.parameters(), m.buffers()))
    previous = planner.previous_action.numel() if _bounded(planner) else None
    user_value = id(planner.terminal_value) if agent is None else None
    return (obs.shape, obs.device, warm.shape, previous, repr(planner.config), planner.uncertainty_weight(),
            getattr(model, "precision", None),
            id(getattr(model, "termination_fn", None)), id(planner.generator), user_value,
            torch.backends.cuda.matmul.allow_tf32, pointers)  # fmt: skip


def _bounded(planner: MPCPlanner) -> bool:
    """Whether the step reads the previous action (a slew limit and an action executed before)."""
    return planner.config.slew is not None and planner.previous_action is not None
