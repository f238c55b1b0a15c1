"""`python -m planners.bench`: planning milliseconds per control step, ours against torchrl's and mbrl-lib's planners.

Ours and torchrl's MPPIPlanner / CEMPlanner plan with the same (untrained) HalfCheetah ensemble through the same `model.step`, so
the model work per candidate is identical and the ratio measures the planner around it. mbrl-lib's
PETS step (where it is installed) runs its own model of the same shape at the same work
(`mbrl_pets`): the ratio there measures the whole engine.
The floor column is the model's matmul FLOPs at the peak measured in the same run.
`--dyna`: imagined transitions and agent updates per second. `--concurrency`: two short runs of
the run command at once against one alone, at threads=auto and at every core fixed.
`--gpu-suite`: everything a lent GPU should measure, in one run (`--device`, `--quick`).
`--profile`: where a default MPPI step's time goes, stage by stage.
`--realtime STEPS`: the simulated robot under the real-time controller at 20 and 50 Hz, planning
in a thread and in a process (the default MPPI), and an MBPO agent's policy in a process.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
from tensordict import TensorDict
from torch import nn

import kernels
from kernels._common import positive_int
from kernels.bench import measure_peak, write_json
from kernels.cpu import bf16_units
from planners import edac
from planners import CEM, MOPO, MPPI, RAVL, BehaviourCloning, CEMConfig, MOPOConfig, MPPIConfig, RAVLConfig
from worldmodel.allocator import keep_freed_memory
from worldmodel.ensemble import EnsembleDynamics
from worldmodel.envs import make_env


def _median_ms(fn, repeats: int, warmup: int = 2, device: str = "cpu") -> float:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _peak_gflops(device: str = "cpu") -> float:
    """fp32 matmul GFLOP/s measured now (the planners' model runs in fp32 unless told otherwise)."""
    return measure_peak(device, "fp32")


def torchrl_env(model: EnsembleDynamics, spec):
    """A torchrl ModelBasedEnvBase whose world model is `model.step` (for torchrl's planners)."""
    from tensordict.nn import TensorDictModule
    from torchrl.data import Bounded, Composite, Unbounded
    from torchrl.envs.model_based import ModelBasedEnvBase

    class Step(nn.Module):
        def forward(self, observation, action):
            batch = observation.shape[:-1]
            out = model.step(observation.reshape(-1, spec.obs_dim), action.reshape(-1, spec.act_dim))
            return out["next_obs"].reshape(*batch, -1), out["reward"].reshape(*batch, 1)

    class EnsembleEnv(ModelBasedEnvBase):
        def __init__(self):
            world = TensorDictModule(Step(), in_keys=["observation", "action"], out_keys=["observation", "reward"])
            super().__init__(world)
            self.observation_spec = Composite(observation=Unbounded((spec.obs_dim,)))
            self.action_spec = Bounded(spec.action_low, spec.action_high, (spec.act_dim,))
            self.reward_spec = Unbounded((1,))

        def _reset(self, tensordict):
            raise NotImplementedError("the planner starts from given states")

    return EnsembleEnv()


def torchrl_cem(model: EnsembleDynamics, spec, horizon: int, candidates: int, top_k: int, iterations: int):
    from torchrl.modules.planners import CEMPlanner

    return CEMPlanner(torchrl_env(model, spec), horizon, iterations, candidates, top_k)


def torchrl_mppi(model: EnsembleDynamics, spec, horizon: int, candidates: int, iterations: int):
    """torchrl's MPPIPlanner with every candidate weighted (top_k = candidates) and a zero value
    network (it requires an advantage module; ours plans without a terminal value here)."""
    from torchrl.modules import ValueOperator
    from torchrl.modules.planners import MPPIPlanner
    from torchrl.objectives.value import TDLambdaEstimator

    value = nn.Linear(spec.obs_dim, 1)
    nn.init.zeros_(value.weight)
    nn.init.zeros_(value.bias)
    advantage = TDLambdaEstimator(gamma=1.0, lmbda=1.0, value_network=ValueOperator(value, in_keys=["observation"]))
    return MPPIPlanner(torchrl_env(model, spec), advantage, temperature=1.0, planning_horizon=horizon,
                       optim_steps=iterations, num_candidates=candidates, top_k=candidates)  # fmt: skip


def mbrl_pets(model: EnsembleDynamics, spec, horizon: int, candidates: int, num_elites: int, iterations: int,
              particles: int):
    """mbrl-lib's PETS planning step at our PETS-size CEM's work, as `act(obs [O]) -> action`, or
    None where mbrl-lib is not installed (`pip install --no-deps mbrl==0.2.0 termcolor`: its pins
    of hydra-core 1.0 and gymnasium 0.26 would replace ours). Its own model and planner: a
    GaussianMLP of our model's depth, width and activation with as many members as our elites
    (ts1 sends each row through one random elite in both; mbrl-lib needs the rows, candidates x
    particles, to divide among its members), learned reward, input normalisation, and its
    CEMOptimizer through TrajectoryOptimizerAgent and ModelEnv (random_model propagation)."""
    try:
        import gymnasium
        import omegaconf
        from mbrl.models import GaussianMLP, ModelEnv, OneDTransitionRewardModel
        from mbrl.planning import TrajectoryOptimizerAgent
    except ImportError:
        return None
    except Exception as e:  # (installed, but broken against this environment's packages)
        warnings.warn(f"mbrl-lib is installed but does not import ({type(e).__name__}: {e}): no mbrl-lib row", stacklevel=2)
        return None
    members = model.num_elites
    if candidates * particles % members:
        raise ValueError(f"mbrl-lib splits the {candidates} x {particles} rows among its {members} members: "
                         "they must divide evenly")  # fmt: skip
    net = GaussianMLP(spec.obs_dim + spec.act_dim, spec.obs_dim + 1, "cpu", num_layers=len(model.weights) - 1,
                      ensemble_size=members, hid_size=model.weights[0].shape[2], propagation_method="random_model",
                      activation_fn_cfg={"_target_": "torch.nn.SiLU"})  # fmt: skip
    dynamics = OneDTransitionRewardModel(net, target_is_delta=True, normalize=True, learned_rewards=True,
                                         num_elites=members)  # fmt: skip
    box = lambda low, high: gymnasium.spaces.Box(low.numpy(), high.numpy())  # noqa: E731
    spaces = type("Spaces", (), {"observation_space": box(-torch.ones(spec.obs_dim) * torch.inf,
                                                          torch.ones(spec.obs_dim) * torch.inf),
                                 "action_space": box(spec.action_low, spec.action_high)})()  # fmt: skip
    no_termination = lambda action, next_obs: torch.zeros(next_obs.shape[0], 1, dtype=torch.bool)  # noqa: E731
    model_env = ModelEnv(spaces, dynamics, no_termination, generator=torch.Generator().manual_seed(0))
    optimizer = omegaconf.OmegaConf.create({
        "_target_": "mbrl.planning.CEMOptimizer", "num_iterations": iterations, "elite_ratio": num_elites / candidates,
        "population_size": candidates, "alpha": 0.1, "device": "cpu", "lower_bound": "???", "upper_bound": "???",
        "return_mean_elites": True, "clipped_normal": False})  # fmt: skip
    agent = TrajectoryOptimizerAgent(optimizer, spec.action_low.tolist(), spec.action_high.tolist(),
                                     planning_horizon=horizon, replan_freq=1)  # fmt: skip
    agent.set_trajectory_eval_fn(lambda state, actions: model_env.evaluate_action_sequences(
        actions, initial_state=state, num_particles=particles))  # fmt: skip
    if agent.optimizer.optimizer.elite_num != num_elites:  # (it rounds candidates x ratio up)
        raise ValueError(f"mbrl-lib would keep {agent.optimizer.optimizer.elite_num} elites, not {num_elites}")
    return lambda obs: agent.act(obs.numpy())


BASELINES = ("torchrl", "mbrl-lib")  # the other libraries' planners a row's ratio compares with


def rows(repeats: int, device: str = "cpu", bf16: bool = True) -> list[dict]:
    """Planning steps of ours and (on CPU) torchrl's planners; on CUDA ours alone."""
    spec = make_env("halfcheetah").task_spec
    torch.manual_seed(0)
    model = EnsembleDynamics(spec.obs_dim, spec.act_dim).to(device)
    obs = torch.randn(spec.obs_dim, device=device)
    peak = _peak_gflops(device)

    warnings.filterwarnings("ignore", "planning with a model that was never fitted")  # speed alone is measured
    alone = dict(value_learning=False, discount=1.0)  # the model alone, as torchrl's planners plan
    mppi = MPPI(model, spec, MPPIConfig(seed=0, **alone))
    valued = MPPI(model, spec, MPPIConfig(seed=0))  # the default: a learned terminal value
    cem = CEM(model, spec, CEMConfig(horizon=30, candidates=400, num_elites=40, iterations=5, seed=0, **alone))
    pets = CEM(model, spec, CEMConfig(horizon=30, candidates=400, num_elites=40, iterations=5, particles=20, seed=0, **alone))
    start = TensorDict({"observation": obs}, [])
    cases = [
        ("MPPI 512 x 15, model only", "ours", lambda: mppi.act(obs), 512 * 15),
        ("MPPI default (512 x 15 + learned value)", "ours", lambda: valued.act(obs), 512 * 15),
        ("CEM 400 x 30 x 5", "ours", lambda: cem.act(obs), 400 * 30 * 5),
        ("CEM PETS (400 x 20 particles x 30 x 5)", "ours", lambda: pets.act(obs), 400 * 20 * 30 * 5),
    ]
    if device == "cuda":  # the same steps replayed from one CUDA graph (planners/graph.py)
        graphed = {name: cls(model, spec, dataclasses.replace(p.config, cuda_graph=True))
                   for name, cls, p in (("mppi", MPPI, mppi), ("valued", MPPI, valued), ("pets", CEM, pets))}
        cases += [
            ("MPPI 512 x 15, model only", "ours, CUDA graph", lambda: graphed["mppi"].act(obs), 512 * 15),
            ("MPPI default (512 x 15 + learned value)", "ours, CUDA graph", lambda: graphed["valued"].act(obs), 512 * 15),
            ("CEM PETS (400 x 20 particles x 30 x 5)", "ours, CUDA graph", lambda: graphed["pets"].act(obs),
             400 * 20 * 30 * 5),
        ]
    bf16_peak = _bf16_peak(device) if bf16 else None
    if bf16_peak:  # the default planner with the model's hidden layers on bf16 operands
        low = copy.deepcopy(model)
        low.precision = "bf16"
        valued_bf16 = MPPI(low, spec, MPPIConfig(seed=0))
        cases.insert(2, ("MPPI default (512 x 15 + learned value)", "ours, model.precision=bf16",
                         lambda: valued_bf16.act(obs), 512 * 15))
    if device == "cpu":  # torchrl's planners at equal work (their env wrapper is CPU-only here)
        theirs = torchrl_cem(model, spec, horizon=30, candidates=400, top_k=40, iterations=5)
        their_mppi = torchrl_mppi(model, spec, horizon=15, candidates=512, iterations=1)
        # (under no_grad, as ours plans: with autograd on, the model ran its training path, ~3% slower)
        cases.insert(1, ("MPPI 512 x 15, model only", "torchrl MPPIPlanner",
                         torch.no_grad()(lambda: their_mppi(start.clone())), 512 * 15))  # fmt: skip
        cases.insert(4, ("CEM 400 x 30 x 5", "torchrl CEMPlanner", torch.no_grad()(lambda: theirs(start)), 400 * 30 * 5))
        their_pets = mbrl_pets(model, spec, horizon=30, candidates=400, num_elites=40, iterations=5, particles=20)
        if their_pets is not None:
            at = next(i for i, case in enumerate(cases) if case[0].startswith("CEM PETS"))
            cases.insert(at, ("CEM PETS (400 x 20 particles x 30 x 5)", "mbrl-lib CEMOptimizer",
                              torch.no_grad()(lambda: their_pets(obs)), 400 * 20 * 30 * 5))  # fmt: skip
    out = []
    for config, impl, fn, row_steps in cases:  # (a median of 3 at least: one disturbed call does not move it)
        ms = _median_ms(fn, repeats if row_steps < 100_000 else max(3, repeats // 5), device=device)
        out.append({"config": config, "planner": impl, "ms_per_step": ms, "hz": 1000 / ms, "steps": row_steps,
                    "device": device, "threads": torch.get_num_threads()})  # fmt: skip
    # the floors from the peaks measured before and after the rows, the higher (a shared machine's peak
    # moves: a low first reading made every floor look easier to reach), as kernels.bench takes them
    peak = max(peak, _peak_gflops(device))
    bf16_peak = max(bf16_peak, _bf16_peak(device) or 0.0) if bf16_peak else None
    # the learned value's floor: its actor and critics on the 512 candidates' last states, in fp32
    agent = valued.value_agent
    value_ms = 512 * (agent.config.num_critics * _mlp_flops(agent.critics.weights) + _linear_flops(agent.actor.net)) \
        / (peak * 1e6)  # fmt: skip
    for r in out:
        precision = "bf16" if "bf16" in r["planner"] else "fp32"
        r["floor_ms"] = r.pop("steps") * _model_floor_ms(model, precision, peak, bf16_peak, device) \
            + (value_ms if "learned value" in r["config"] else 0.0)  # fmt: skip
        r.update(peak_gflops=peak, bf16_peak_gflops=bf16_peak)
    if device == "cuda":  # graphed and eager plans from the same seed: the same actions, step by step
        eager_ms = {r["config"]: r["ms_per_step"] for r in out if r["planner"] == "ours"}
        for r in out:
            if r["planner"] == "ours, CUDA graph":
                r["speedup_vs_eager"] = eager_ms[r["config"]] / r["ms_per_step"]
                r["max_abs_diff_vs_eager"] = _graph_agreement(model, spec, r["config"])
    baseline = {r["config"]: r["ms_per_step"] for r in out if r["planner"].startswith(BASELINES)}
    for r in out:
        r["speedup_vs_baseline"] = baseline[r["config"]] / r["ms_per_step"] if r["config"] in baseline else None
    return out


def _graph_agreement(model: EnsembleDynamics, spec, config: str, steps: int = 3) -> float:
    """The largest difference between the actions of a graphed and an eager planner, both seeded
    0, over `steps` deterministic steps (0 when the graph replays exactly what eager runs)."""
    cls, settings = (CEM, CEMConfig(horizon=30, candidates=400, num_elites=40, iterations=5, particles=20)) \
        if config.startswith("CEM") else (MPPI, MPPIConfig())  # fmt: skip
    if "model only" in config or config.startswith("CEM"):
        settings = dataclasses.replace(settings, value_learning=False, discount=1.0)
    obs = torch.randn(spec.obs_dim, device=model.device, generator=torch.Generator(model.device).manual_seed(1))
    eager = cls(model, spec, dataclasses.replace(settings, seed=0))
    graphed = cls(model, spec, dataclasses.replace(settings, seed=0, cuda_graph=True))
    if eager.value_agent is not None:  # the same (untrained) learned value in both
        graphed.value_agent.load_training_state(eager.value_agent.training_state())
    return max((graphed.act(obs, True) - eager.act(obs, True)).abs().max().item() for _ in range(steps))


def profile_rows(repeats: int) -> list[dict]:
    """Where a default MPPI step goes (`--profile`): each stage timed on its own, on the shapes one
    `act` runs (512 candidates x 15 steps, each row through one of the 5 elites: [5, 103, 23] blocks)."""
    spec = make_env("halfcheetah").task_spec
    torch.manual_seed(0)
    model = EnsembleDynamics(spec.obs_dim, spec.act_dim)
    warnings.filterwarnings("ignore", "planning with a model that was never fitted")
    planner = MPPI(model, spec, MPPIConfig(seed=0))
    cfg, peak = planner.config, _peak_gflops()
    obs = torch.randn(spec.obs_dim)
    state, action = torch.randn(cfg.candidates, spec.obs_dim), torch.rand(cfg.candidates, spec.act_dim) * 2 - 1
    n = model.num_elites
    blocks = torch.randn(n, -(-cfg.candidates // n), spec.obs_dim + spec.act_dim)
    weights, biases, _, _ = model._members_only(model.elites)
    h = range(cfg.horizon)
    with torch.no_grad():
        act = _median_ms(lambda: planner.act(obs), repeats)
        steps = _median_ms(lambda: [model.step(state, action, generator=planner.generator) for _ in h], repeats)
        mlp = {a: _median_ms(lambda a=a: [kernels.ensemble_mlp(blocks, weights, biases, a) for _ in h], repeats)
               for a in ("identity", "silu")}  # fmt: skip
        value = _median_ms(lambda: planner.terminal_value(state), repeats)
    agent = planner.value_agent
    value_flops = cfg.candidates * (agent.config.num_critics * _mlp_flops(agent.critics.weights)
                                    + _linear_flops(agent.actor.net))  # fmt: skip
    mlp_flops = blocks.shape[0] * blocks.shape[1] * cfg.horizon * _mlp_flops(model.weights)
    stages = [
        ("ensemble MLP: matmuls", mlp["identity"], mlp_flops / (peak * 1e6)),
        ("ensemble MLP: SiLU activations", mlp["silu"] - mlp["identity"], 0.0),
        ("model step around the MLP (rows to elites, standardising, Gaussian head, sampling)", steps - mlp["silu"], 0.0),
        ("learned terminal value (actor + 2 critics on 512 states)", value, value_flops / (peak * 1e6)),
        ("planner (candidates, returns, weighting, warm start)", act - steps - value, 0.0),
    ]
    rows = [{"stage": name, "ms": ms, "share": ms / act, "floor_ms": floor} for name, ms, floor in stages]
    rows.append({"stage": "default MPPI act, measured whole", "ms": act, "share": 1.0,
                 "floor_ms": sum(r["floor_ms"] for r in rows)})  # fmt: skip
    for r in rows:
        r.update(peak_gflops=peak, threads=torch.get_num_threads(), device="cpu")
    return rows


def _model_floor_ms(model, precision: str, peak: float, bf16_peak: float | None, device: str) -> float:
    """One member's forward on one row at the matmul peaks, in ms: in bf16 the hidden layers at the
    bf16 peak and, on a CPU, the Gaussian head at the fp32 one (kernels.reference keeps it in fp32)."""
    layers = [_mlp_flops([w]) for w in model.weights]
    if precision != "bf16":
        return sum(layers) / (peak * 1e6)
    head_peak = bf16_peak if device == "cuda" else peak
    return sum(layers[:-1]) / (bf16_peak * 1e6) + layers[-1] / (head_peak * 1e6)


def _mlp_flops(module_weights) -> int:
    """2 x sum(in x out) over the layers: multiply-add FLOPs per row of one member."""
    return 2 * sum(w.shape[-2] * w.shape[-1] for w in module_weights)


def _linear_flops(net: nn.Module) -> int:
    """_mlp_flops of a module's nn.Linear layers (an actor's or a policy's trunk)."""
    return _mlp_flops([m.weight.T for m in net.modules() if isinstance(m, nn.Linear)])


def dyna_rows(repeats: int, device: str = "cpu", bf16: bool = True) -> list[dict]:
    """Imagined transitions per second (a MOPO rollout round) and agent updates per second
    (SAC with 2 critics, EDAC/RAVL with 10 and the diversity term, and on CPU behaviour cloning)."""
    spec = make_env("halfcheetah").task_spec
    torch.manual_seed(0)
    model = EnsembleDynamics(spec.obs_dim, spec.act_dim).to(device)
    peak = _peak_gflops(device)
    flags = torch.zeros(50_000, dtype=torch.bool)
    real = TensorDict({"obs": torch.randn(50_000, spec.obs_dim), "action": torch.rand(50_000, spec.act_dim) * 2 - 1,
                       "reward": torch.randn(50_000), "next_obs": torch.randn(50_000, spec.obs_dim),
                       "terminated": flags, "truncated": flags}, [50_000])  # fmt: skip
    out = []
    bf16_peak = _bf16_peak(device) if bf16 else None
    peaks = {"fp32": peak, **({"bf16": bf16_peak} if bf16_peak else {})}
    for penalty, precision in ((0.0, "fp32"), (1.0, "fp32"), (1.0, "bf16")):
        if precision not in peaks:
            continue
        model.precision = precision
        mopo = MOPO(model, spec, MOPOConfig(penalty=penalty, rollout_length=5, rollout_batch_size=50_000, seed=0))
        mopo.observe(real)
        ms = _median_ms(mopo.rollout, max(3, repeats // 5), warmup=1, device=device)
        imagined = mopo.last_rollout.get("imagined", 250_000)  # (rows kept: non-finite or escaped ones end early)
        # penalised rollouts run every member the measure reads on every row; plain ones one elite per row;
        # the policy acts on every row too (its own precision, fp32 here)
        scored = model.num_elites if mopo.config.uncertainty_elites_only else model.ensemble_size
        model_ms = 5 * 50_000 * (scored if penalty else 1) * _model_floor_ms(model, precision, peak, peaks.get("bf16"),
                                                                             device)  # fmt: skip
        policy_flops = 5 * 50_000 * _linear_flops(mopo.agent.actor.net)
        out.append({"work": f"MOPO rollout 50k x 5{' + penalty' if penalty else ''}{_tag(precision)}",
                    "per_s": imagined / ms * 1e3, "unit": "transitions/s", "ms": ms,
                    "floor_ms": model_ms + policy_flops / (peak * 1e6)})  # fmt: skip
    model.precision = "fp32"
    agents = (("MBPO/MOPO SAC (2 critics 2x256)", MOPO, MOPOConfig, {}),
              ("RAVL EDAC (10 critics 3x256, eta=1)", RAVL, RAVLConfig, {}),
              ("RAVL EDAC, compiled critic step", RAVL, RAVLConfig, {"compile_critic_step": True}))  # fmt: skip
    for (name, kind, config, extra), precision in itertools.product(agents, peaks):
        planner = kind(model, spec, config(agent={"precision": precision, **extra}))
        planner.observe(real)
        planner.rollout(real["obs"][:5000])
        agent = planner.agent
        ms = _median_ms(lambda: planner.learn(10), max(2, repeats // 2), warmup=1, device=device) / 10
        n, b = agent.config.num_critics, agent.config.batch_size
        critic, actor = _mlp_flops(agent.critics.weights), _linear_flops(agent.actor.net)
        # target fwd 1 + fwd/bwd 3 + actor-loss fwd and input grad 2 (+1 for EDAC's diversity term in
        # closed form: its pass up the critics' chain, its weight gradients sharing the TD error's
        # products; planners.edac); actor 4: the target's forward, the loss's forward and backward
        # (+1: EDAC's order samples the temperature's log-probabilities afresh)
        fresh = agent.config.update_order == "actor_first"
        flops = b * (n * critic * (6 + (agent.config.eta > 0)) + (4 + fresh) * actor)
        eager = extra.get("compile_critic_step") and "failed" in edac._compiled  # (compiling failed: it ran eagerly)
        out.append({"work": name + (" (compiling failed: eager)" if eager else "") + _tag(precision),
                    "per_s": 1000 / ms, "unit": "updates/s", "ms": ms, "floor_ms": flops / (peaks[precision] * 1e6)})
    if device == "cpu":  # (behaviour cloning trains on the CPU whatever the device)
        bc = BehaviourCloning(model, spec)
        bc.observe(real)
        ms = _median_ms(lambda: bc.learn(10), repeats, warmup=1) / 10
        out.append({"work": "behaviour cloning (2x256)", "per_s": 1000 / ms, "unit": "updates/s", "ms": ms,
                    "floor_ms": 256 * 3 * _linear_flops(bc.policy) / (peak * 1e6)})  # fmt: skip
    tiles = sys.modules.get("kernels.triton_mlp")  # (on CUDA: whether its kernels ran autotuned tiles)
    for r in out:
        r.update(peak_gflops=peak, bf16_peak_gflops=peaks.get("bf16"), device=device, threads=torch.get_num_threads(),
                 **({"triton_autotune": tiles.AUTOTUNE} if tiles is not None and device == "cuda" else {}))
    return out


def _bf16_peak(device: str) -> float | None:
    """bf16 matmul GFLOP/s where bf16 is fast (a GPU, or a CPU with bf16 units), else None: no bf16
    rows (emulated bf16 takes minutes a row)."""
    return measure_peak(device, "bf16") if device == "cuda" or bf16_units() else None


def _tag(precision: str) -> str:
    """A row's label suffix: bf16 rows run their hidden layers on bf16 operands."""
    return ", bf16" if precision == "bf16" else ""


_CONCURRENCY_RUN = ["env_steps=300", "seed_steps=100", "train_every=100", "eval_every=300", "checkpoint_every=300"]


def _timed_runs(count: int, threads: str, out: Path) -> list[float]:
    """Wall seconds of `count` short MPPI runs (the default config, 300 steps) started together."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    procs = []
    for i in range(count):
        cmd = [sys.executable, "-m", "worldmodel.run", *_CONCURRENCY_RUN, f"threads={threads}",
               f"run_dir={out / f'{threads}-{count}-{i}'}"]  # fmt: skip
        procs.append((time.perf_counter(), subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    walls = []
    for began, proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark run failed: {err.decode()[-2000:]}")
        walls.append(time.perf_counter() - began)
    return walls


def concurrency_rows() -> list[dict]:
    """One run alone, then two at once, at threads=auto and at every available core fixed
    (torch's own default), all in this invocation."""
    from worldmodel.threads import available_cores

    cores, out = available_cores(), []
    with tempfile.TemporaryDirectory() as tmp:
        for threads in ("auto", str(cores)):
            alone = _timed_runs(1, threads, Path(tmp))[0]
            both = _timed_runs(2, threads, Path(tmp))
            out.append({"threads": threads, "cores": cores, "alone_s": alone, "together_s": both,
                        "ratio": max(both) / alone})  # fmt: skip
    return out


_REALTIME_RUN = ["env=hopper", "latency_ms=10", "seed_steps=200", "train_every=250", "eval_episodes=1"]


# (planner, control_hz, worker): the default MPPI both ways, and an MBPO policy (plans of a few
# ms, its planner asleep most of a period: what once preempted act() on waking) in processes
_REALTIME_CASES = [*(("mppi", hz, worker) for hz, worker in itertools.product((20, 50), ("thread", "process"))),
                   ("mbpo", 20, "process"), ("mbpo", 50, "process")]


def realtime_rows(real_steps: int) -> list[dict]:
    """The simulated robot (`python -m planners.realtime`) at 20 and 50 Hz with 10 ms sensor
    latency, planning and learning in threads of the control process or in processes of their
    own (`worker=`), for the default MPPI and an MBPO agent's policy (_REALTIME_CASES); beside
    each, the synchronous loop's view of the same plans (act = a whole plan: its latency is the
    plan's) and the floor of an act() call (copying and clipping one action)."""
    from planners.realtime import main as realtime

    low, high, action = -torch.ones(3), torch.ones(3), torch.zeros(3)
    floor_ms = _median_ms(lambda: torch.as_tensor(action).float().clamp(low, high), 200)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for planner, hz, worker in _REALTIME_CASES:
            s = realtime([*_REALTIME_RUN, f"planner={planner}", f"control_hz={hz}", f"worker={worker}",
                          f"real_steps={real_steps}", f"run_dir={tmp}/{planner}-{hz}-{worker}"])  # fmt: skip
            out.append({"planner": planner, "control_hz": hz, "worker": worker, **{k: s[k] for k in ("act_latency_p50_ms", "act_latency_p99_ms",
                        "act_latency_max_ms", "plan_latency_p50_ms", "plan_latency_p99_ms", "fresh_rate",
                        "shifted_rate", "fallback_rate", "deadline_miss_rate", "model_version", "seed_actions",
                        "real_steps", "control_priority")}, "sync_misses_p50": s["plan_latency_p50_ms"] > 1000 / hz,
                        "act_floor_ms": floor_ms})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m planners.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=10)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--dyna", action="store_true", help="Dyna throughput instead: imagined transitions/s, updates/s")
    parser.add_argument("--concurrency", action="store_true", help="two runs at once against one alone, per thread setting")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the planning and --dyna tables run")
    parser.add_argument("--gpu-suite", action="store_true",
                        help="the one run for a lent GPU: kernel compile statistics, the kernel grid, planning, Dyna")
    parser.add_argument("--quick", action="store_true", help="with --gpu-suite: a few small shapes (a smoke run)")
    parser.add_argument("--no-bf16", action="store_true", help="no bf16 rows in the planning and Dyna tables")
    parser.add_argument("--kernels-json", metavar="PATH", help="with --gpu-suite: where the kernel grid writes its rows "
                        "after each cell (default: the --json path + .kernels)")
    parser.add_argument("--sections", nargs="+", choices=SUITE_SECTIONS, default=list(SUITE_SECTIONS),
                        help="with --gpu-suite: only these sections (in the suite's order), e.g. to split it over two calls")
    parser.add_argument("--profile", action="store_true", help="where a default MPPI step's time goes, stage by stage")
    parser.add_argument("--realtime", type=positive_int, metavar="STEPS",
                        help="the simulated robot at 20 and 50 Hz for STEPS steps (default MPPI, an MBPO policy)")
    args = parser.parse_args(argv)
    keep_freed_memory()  # (as every run's process does: worldmodel.threads.set_threads)
    if args.realtime:
        table = realtime_rows(args.realtime)
        print(f"\n`python -m planners.realtime {' '.join(_REALTIME_RUN)} planner=<planner>`, {args.realtime} robot "
              "steps; synchronous: act() would be a whole plan\n")  # fmt: skip
        print("| planner | Hz | planning in a | control loop | act p50 / p99 / max ms | act floor ms | plan p50 / p99 ms "
              "(synchronous act) | fresh / shifted / fallback | deadline misses | planner versions (refits, value swaps) |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in table:
            loop = f"SCHED_FIFO {r['control_priority']}" if r["control_priority"] else "ordinary"  # (control_priority=auto)
            print(f"| {r['planner']} | {r['control_hz']} | {r['worker']} | {loop} | {r['act_latency_p50_ms']:.3f} / {r['act_latency_p99_ms']:.3f} / "
                  f"{r['act_latency_max_ms']:.1f} | {r['act_floor_ms']:.3f} | {r['plan_latency_p50_ms']:.1f} / "
                  f"{r['plan_latency_p99_ms']:.1f} | {r['fresh_rate']:.0%} / {r['shifted_rate']:.0%} / "
                  f"{r['fallback_rate']:.0%} | {r['deadline_miss_rate']:.1%} | {r['model_version']} |")  # fmt: skip
        write_json(args.json, table)
        return
    if args.profile:
        if args.device != "cpu":
            raise SystemExit("error: --profile splits the CPU path's step (give --device cpu); on a GPU, --gpu-suite")
        table = profile_rows(args.repeats)
        print(f"default MPPI on HalfCheetah, {table[0]['threads']} thread(s); floor: matmul FLOPs at "
              f"{table[0]['peak_gflops']:.0f} GFLOP/s (2048^2 fp32 matmul measured in this run)\n")
        print("| stage | ms | share | floor ms |\n|---|---|---|---|")
        for r in table:
            floor = f"{r['floor_ms']:.1f}" if r["floor_ms"] else "-"
            print(f"| {r['stage']} | {r['ms']:.1f} | {r['share']:.0%} | {floor} |")
        write_json(args.json, table)
        return
    if args.concurrency:
        table = concurrency_rows()
        print(f"`python -m worldmodel.run {' '.join(_CONCURRENCY_RUN)}` on {table[0]['cores']} available core(s); "
              "two runs at once get a fair share at 2x one alone (1x if one run alone used only one core)\n")  # fmt: skip
        print("| threads | one run alone | two runs at once (each) | per run vs alone |")
        print("|---|---|---|---|")
        for r in table:
            label = "auto (the default)" if r["threads"] == "auto" else f"{r['threads']}, fixed (torch's default)"
            print(f"| {label} | {r['alone_s']:.1f} s | {r['together_s'][0]:.1f} s, {r['together_s'][1]:.1f} s | {r['ratio']:.2f}x |")
        write_json(args.json, table)
        return
    if args.gpu_suite:
        report = gpu_suite(args.device, args.repeats, args.json, quick=args.quick, sections=args.sections,
                           bf16=not args.no_bf16, kernels_json=args.kernels_json)
        failed = [name for name, r in report["sections"].items()
                  if "error" in r or any("error" in row or row.get("exit_code", 0) != 0 for row in r["rows"])]
        if failed:
            raise SystemExit("error: these sections failed (their errors are above and in the JSON): " + "; ".join(failed))
        return
    if args.dyna:
        table = dyna_rows(args.repeats, args.device, bf16=not args.no_bf16)
        _print_dyna(table)
        write_json(args.json, table)
        return
    table = rows(args.repeats, args.device, bf16=not args.no_bf16)
    _print_planning(table)
    write_json(args.json, table)


def _print_planning(table: list[dict]) -> None:
    print(f"{'config':40s} {'planner':27s} {'ms/step':>9s} {'Hz':>7s} {'floor ms':>9s} {'vs theirs':>10s}")
    for r in table:
        ratio = f"{r['speedup_vs_baseline']:.2f}x" if r["speedup_vs_baseline"] else "-"
        graph = (f"  {r['speedup_vs_eager']:.2f}x eager, actions within {r['max_abs_diff_vs_eager']:.1e} of eager's"
                 if "speedup_vs_eager" in r else "")  # fmt: skip
        print(f"{r['config']:40s} {r['planner']:27s} {r['ms_per_step']:9.1f} {r['hz']:7.1f} {r['floor_ms']:9.1f} "
              f"{ratio:>10s}{graph}")
    bf16 = table[0].get("bf16_peak_gflops")
    print(f"floor: matmul FLOPs (the model's, and the learned value's where it plans with one) at "
          f"{table[0]['peak_gflops']:.0f} GFLOP/s (fp32 matmul measured in this run, {table[0]['threads']} thread(s)"
          + (f"; the bf16 row's hidden layers at bf16's {bf16:.0f})" if bf16 else ")"))
    if table[0]["device"] == "cpu" and not any(r["planner"].startswith("mbrl-lib") for r in table):
        print("(no mbrl-lib row: pip install --no-deps mbrl==0.2.0 termcolor)")


def _print_dyna(table: list[dict]) -> None:
    print(f"{'work':42s} {'per second':>12s} {'unit':14s} {'ms':>8s} {'floor ms':>9s}")
    for r in table:
        print(f"{r['work']:42s} {r['per_s']:12,.0f} {r['unit']:14s} {r['ms']:8.2f} {r['floor_ms']:9.2f}")
    bf16 = table[0].get("bf16_peak_gflops")
    print(f"floor: matmul FLOPs at {table[0]['peak_gflops']:.0f} GFLOP/s (fp32 matmul measured in this run"
          + (f"; bf16 rows at bf16's {bf16:.0f})" if bf16 else "; no bf16 rows: this CPU has no bf16 units)"))
    if table[0].get("triton_autotune") is False:
        print("(Triton's heuristic tiles, WORLDMODEL_AUTOTUNE=0: the suite's Dyna section does not autotune its shapes)")


PLANNING_SECTION = "planning steps (eager, and on CUDA replayed from one CUDA graph)"
SUITE_SECTIONS = ("correctness", "planning", "dyna", "kernels", "compile")  # --gpu-suite's, in run order
# Each section in a process of its own is stopped past this many seconds (its own error in the JSON,
# the next section goes on), so that one slow section cannot eat a short GPU loan: 2026-12-04's
# Dyna section ran past a whole call's limit and left nothing. The Dyna section runs the heuristic
# tiles (WORLDMODEL_AUTOTUNE=0; its rows say so): autotuning each of its many shapes compiles every
# candidate tile, and the kernel grid is where tuned kernels are timed.
SECTION_LIMIT_S = {"correctness": 300, "planning": 180, "dyna": 180, "kernels": 240, "compile": 120}
SECTION_ENV = {"dyna": {"WORLDMODEL_AUTOTUNE": "0"}}


def gpu_suite(device: str, repeats: int, json_path: str | None, quick: bool = False,
              sections: tuple[str, ...] | list[str] = SUITE_SECTIONS, bf16: bool = True,
              kernels_json: str | None = None) -> dict:
    """Everything a lent GPU should measure, in one run of under 8 minutes (issue #14): first the
    kernels' and graphed steps' tests on the GPU, then cheapest first: the planning steps, Dyna's rollouts and agent updates, the ensemble MLP grid (E=7, B 1
    to 65536, widths 200 and 512, tf32 and bf16, forward and forward+backward, against eager
    baddbmm, with % of peak) and the kernels' compile statistics for this GPU's architecture.
    Each section prints its table as it ends and lands in the JSON, so a run cut short keeps what
    it measured. quick: a few small shapes (a CPU smoke run of the same code)."""
    from kernels import bench as kernel_bench
    from kernels import compile_check

    started, report = time.perf_counter(), {"device": kernel_bench.device_name(device), "sections": {}}
    kernels_json = kernels_json or (f"{json_path}.kernels" if json_path else None)  # (rewritten after each cell)
    isolate = device == "cuda" and len(sections) > 1  # an illegal address ends its process's CUDA context:
    given = dict(repeats=repeats, bf16=bf16, quick=quick, kernels_json=kernels_json)  # each section its own

    def section(name: str, fn, key: str):
        if key not in sections:
            return
        if isolate:  # (the child prints the section's header and time)
            report["sections"][name] = _section_in_child(key, device, **given)
        else:
            t = time.perf_counter()
            print(f"\n## {name} ({kernel_bench.device_name(device)})\n", flush=True)
            try:
                report["sections"][name] = {"rows": fn(), "wall_s": time.perf_counter() - t}
            except Exception as e:  # one broken section must not cost a short GPU loan the others
                traceback.print_exc()
                report["sections"][name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
                                            "wall_s": time.perf_counter() - t}
            print(f"({time.perf_counter() - t:.0f} s; {time.perf_counter() - started:.0f} s in all)", flush=True)
        write_json(json_path, report)

    if device == "cpu" and not quick:
        raise SystemExit("error: the full --gpu-suite on a CPU would take hours (B=65536 forward+backward); "
                         "give --quick for a CPU smoke run, or run it where torch.cuda.is_available()")
    # correctness first (timings of a wrong kernel or graph mean nothing), then cheapest first, so
    # that a run cut short loses the kernel grid's last cells, not whole sections
    if device == "cuda":
        section("correctness on this GPU (pytest: Triton kernels, graphed planning steps)", _gpu_tests, "correctness")
    repeats = max(2, repeats // (5 if quick else 1))
    section(PLANNING_SECTION,
            lambda: _printed(rows(repeats, device, bf16), _print_planning), "planning")
    section("Dyna rollouts and agent updates", lambda: _printed(dyna_rows(repeats, device, bf16), _print_dyna), "dyna")
    grid = ["-E", "7", "-B", "1", "256", "4096", "65536", "--hidden", "200", "512", "--budget", "0.25"]
    if quick:
        grid = ["-E", "7", "-B", "1", "256", "--hidden", "200", "--budget", "0.05"]
    cells = ["--json", kernels_json] if kernels_json else []
    section("ensemble MLP kernels", lambda: kernel_bench.main(
        ["--device", device, *grid, "--variants", "baddbmm", "ours", "ours_graph", "--markdown", *cells]), "kernels")
    if device == "cuda":  # (ptxas builds for this GPU's architecture; no GPU needed, so last)
        major, minor = torch.cuda.get_device_capability()
        section("compile statistics", lambda: compile_check.main(["--arch", f"{major}{minor}"]), "compile")
    return report


def _section_in_child(key: str, device: str, repeats: int, bf16: bool, quick: bool,
                      kernels_json: str | None, limit_s: float | None = None) -> dict:
    """One suite section in a process of its own (its output streams through; SECTION_ENV's
    settings; stopped past limit_s, SECTION_LIMIT_S's by default): its JSON entry, rows or the
    child's error and traceback (a child that died or ran out of time: an error, and the kernel
    grid's finished cells from kernels_json)."""
    started = time.perf_counter()
    limit_s = SECTION_LIMIT_S.get(key) if limit_s is None else limit_s
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "section.json")
        cmd = [sys.executable, "-m", "planners.bench", "--gpu-suite", "--device", device, "--sections", key,
               "--repeats", str(repeats), "--json", path, *(["--kernels-json", kernels_json] if kernels_json else []),
               *([] if bf16 else ["--no-bf16"]), *(["--quick"] if quick else [])]
        try:
            code = subprocess.run(cmd, check=False, timeout=limit_s, env={**os.environ, **SECTION_ENV.get(key, {})}).returncode
            ended = f"ended (exit code {code})"
        except subprocess.TimeoutExpired:
            ended = f"was stopped at its {limit_s:g} s limit (SECTION_LIMIT_S)"
        sections = json.load(open(path))["sections"] if os.path.exists(path) else {}
    if sections:
        (result,) = sections.values()
        return result
    partial = json.load(open(kernels_json)) if key == "kernels" and kernels_json and os.path.exists(kernels_json) else []
    return {"error": f"the section's process {ended} before it wrote its results; its output is above",
            "rows": partial, "wall_s": time.perf_counter() - started}


def _gpu_tests(timeout_s: int = 240) -> list[dict]:
    """tests/test_kernels_triton.py and tests/test_graph.py on the GPU (with the heuristic tiles,
    so that autotuning's compiles do not eat the suite's minutes): pass/fail counts, failures printed."""
    tests = [t for t in ("tests/test_kernels_triton.py", "tests/test_graph.py") if Path(t).is_file()]
    if not tests:
        print("(no tests/ here: run the suite from the repository root to check correctness first)")
        return []
    env = {**os.environ, "WORLDMODEL_AUTOTUNE": "0"}
    # Triton compiles each kernel variant on the host: spread the files' tests over the host's cores
    workers = max(1, min(8, (os.cpu_count() or 1) // 2))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", str(workers), "--dist", "load",
           "-rfE", *tests]
    start, timed_out = time.perf_counter(), False
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        out, code = done.stdout, done.returncode
    except subprocess.TimeoutExpired as e:  # (its output comes as bytes whatever text= says)
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        code, timed_out = None, True
    lines = out.strip().splitlines()
    summary = next((line for line in reversed(lines) if re.search(r"\d+ (passed|failed|error)", line)), "")
    print("\n".join([*(line for line in lines if line.startswith(("FAILED", "ERROR"))), summary]
                    + ([f"timed out after {timeout_s} s"] if timed_out else [])))  # fmt: skip
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error")}
    for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary):
        counts[word.rstrip("s") if word != "passed" else word] = int(n)
    return [{"tests": tests, "exit_code": code, "timed_out": timed_out, **counts, "wall_s": time.perf_counter() - start}]


def _printed(table: list[dict], printer) -> list[dict]:
    printer(table)
    return table




if __name__ == "__main__":
    main()
