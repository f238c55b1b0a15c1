"""Multirun on Ray: `python -m worldmodel.run --multirun seed=0,1,2 env=hopper,walker2d ...`.

Sweep overrides use Hydra's grammar (`a=1,2`, `range(0,3)`, `choice(x,y)`); the jobs are their
cartesian product, as Hydra's basic sweeper makes them. `hydra/launcher=ray` (the default)
runs each job on Ray: a local instance unless `hydra.launcher.address` or RAY_ADDRESS names a
cluster; `hydra/launcher=basic` runs them one after another here. Job i writes its run
directory `<hydra.sweep.dir>/<i>`; the sweep directory keeps `multirun.yaml` (the jobs) and
`sweep.json` (each job's status, attempts and final score), rewritten as jobs end.

Each job is a `python -m worldmodel.run` process with `cpus_per_job` Ray CPUs and as many
torch threads, so that jobs never oversubscribe a machine. A job whose process is killed (or
whose Ray worker or node is lost) is retried on Ray up to `max_retries` times and resumes from its
run directory's last checkpoint (under hydra/launcher=basic it is marked failed: re-running the
command resumes it); a job that fails on its own (a bad setting, a crash) is not.
Every job's config is checked before the first one starts. Re-running the same command with
the same `hydra.sweep.dir` resumes the sweep: finished jobs are kept, the others continue.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from worldmodel.metrics import write_json
from worldmodel.threads import available_cores

MULTIRUN_FLAGS = ("--multirun", "-m")
LAUNCHERS = ("ray", "basic")
PATH_KEYS = ("dataset", "pretrained", "model")  # made absolute: a cluster's workers start elsewhere
STOPPED = (130, 143)  # worldmodel.run's exit after SIGINT / SIGTERM: stopped cleanly, checkpoint saved


@dataclass
class LauncherConfig:
    """hydra.launcher.<key>=... settings."""

    address: str | None = None  # a Ray cluster ("auto", "ray://host:10001", ...); default RAY_ADDRESS, else local
    cpus_per_job: float = 1.0  # Ray CPUs each job reserves
    gpus_per_job: float = 0.0  # Ray GPUs (fractions allowed) each job reserves
    threads_per_job: int | None = None  # torch threads of a job (default: cpus_per_job, at least 1)
    max_workers: int | None = None  # local Ray: jobs at once (default: the cores / max(cpus_per_job, threads))
    max_retries: int = 2  # Ray's retries of a killed job (each resumes from its last checkpoint; basic: none)

    @property
    def cluster(self) -> str | None:
        """The Ray cluster's address (address, else RAY_ADDRESS), or None: a local instance."""
        return self.address or os.environ.get("RAY_ADDRESS")

    @property
    def threads(self) -> int:
        return self.threads_per_job or max(1, int(self.cpus_per_job))


def check_cores(launcher: str, config: LauncherConfig) -> None:
    """On this machine (not a cluster's), a ValueError where a job's threads, or max_workers jobs'
    threads at once, exceed its cores (two 2-thread jobs on 2 cores ran one fit 30x slower)."""
    if config.cluster and launcher != "basic":  # (a cluster's machines may have more)
        return
    if config.threads > available_cores():
        raise ValueError(f"{config.threads} thread(s) a job, but this machine gives {available_cores()} core(s): "
                         "every job would fail; lower hydra.launcher.threads_per_job (or cpus_per_job)")  # fmt: skip
    if launcher == "ray" and config.max_workers and config.max_workers * config.threads > available_cores():
        raise ValueError(f"hydra.launcher.max_workers={config.max_workers} jobs of {config.threads} thread(s) at once "
                         f"would oversubscribe this machine's {available_cores()} core(s): lower max_workers or "
                         "threads_per_job")  # fmt: skip


@dataclass
class Job:
    num: int
    overrides: list[str]
    run_dir: Path
    status: str = "pending"  # pending | finished | failed
    attempts: list[dict] = field(default_factory=list)
    result: dict = field(default_factory=dict)

    def row(self) -> dict:
        return {"num": self.num, "overrides": self.overrides, "run_dir": str(self.run_dir), "status": self.status,
                "attempts": len(self.attempts), **self.result}  # fmt: skip


class JobKilled(RuntimeError):
    """The job's process died of a signal (killed): worth a retry, which resumes it."""


class JobFailed(RuntimeError):
    """The job failed on its own (a bad setting, an exception): a retry would fail again."""


# ---------------------------------------------------------------- the sweep's jobs


def split_args(argv: list[str]) -> tuple[list[str], str, Path | None, LauncherConfig]:
    """argv -> (run overrides, launcher name, sweep dir or None, launcher settings)."""
    launcher, sweep_dir, settings, rest = "ray", None, {}, []
    for arg in argv:
        if arg in MULTIRUN_FLAGS:
            continue
        key, _, value = arg.partition("=")
        if key == "hydra/launcher":
            launcher = value
        elif key == "hydra.sweep.dir":
            sweep_dir = Path(value)
        elif key.startswith("hydra.launcher."):
            settings[key.removeprefix("hydra.launcher.")] = value
        elif key.startswith("hydra"):
            raise ValueError(f"{arg}: the multirun takes hydra/launcher=, hydra.sweep.dir= and hydra.launcher.<key>=")
        else:
            rest.append(arg)
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown hydra/launcher={launcher}; choose from {list(LAUNCHERS)}")
    return rest, launcher, sweep_dir, _launcher_config(settings)


def _launcher_config(settings: dict[str, str]) -> LauncherConfig:
    import yaml

    fields = {f.name for f in dataclasses.fields(LauncherConfig)}
    if unknown := sorted(set(settings) - fields):
        raise ValueError(f"unknown hydra.launcher.{unknown[0]}; valid: {', '.join(sorted(fields))}")
    values = {k: yaml.safe_load(v) for k, v in settings.items()}
    numbers = {"cpus_per_job": (int, float), "gpus_per_job": (int, float), "threads_per_job": int, "max_workers": int,
               "max_retries": int}  # fmt: skip
    for key, value in values.items():
        if key in numbers and value is not None and (isinstance(value, bool) or not isinstance(value, numbers[key])):
            raise ValueError(f"hydra.launcher.{key} must be a number, got {value!r}")
    config = LauncherConfig(**values)
    if config.cpus_per_job <= 0 or config.gpus_per_job < 0 or config.max_retries < 0:
        raise ValueError("hydra.launcher: cpus_per_job must be > 0, gpus_per_job >= 0 and max_retries >= 0")
    if config.max_workers is not None and config.max_workers < 1:
        raise ValueError(f"hydra.launcher.max_workers must be >= 1, got {config.max_workers}")
    if config.threads_per_job is not None and config.threads_per_job < 1:
        raise ValueError(f"hydra.launcher.threads_per_job must be >= 1, got {config.threads_per_job}")
    return config


def expand(overrides: list[str]) -> list[list[str]]:
    """Hydra sweep overrides -> one override list per job (their cartesian product, in order)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ValueError(f"cannot parse the sweep: {e}") from None
    axes = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise ValueError(f"{override.input_line}: only lists, range() and choice() sweep here")
            axes.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            axes.append([override.input_line])
    return [list(combo) for combo in itertools.product(*axes)]


def plan_jobs(overrides: list[str], sweep_dir: Path) -> list[Job]:
    """The jobs of a sweep, each checked as `python -m worldmodel.run` would check it."""
    from worldmodel.run import check_config

    jobs = [Job(i, shared_overrides(combo), sweep_dir / str(i)) for i, combo in enumerate(expand(overrides))]
    for job in jobs:
        try:
            check_config(job.overrides)
        except SystemExit as e:
            raise ValueError(f"job {job.num} ({' '.join(job.overrides)}): {str(e).removeprefix('error: ')}") from None
    return jobs


def shared_overrides(overrides: list[str]) -> list[str]:
    """Overrides as a multirun's or a search's jobs get them: paths made absolute (a Ray worker
    starts elsewhere); a key the launcher sets for each job (run_dir, resume, threads) refused."""
    if any(o.split("=")[0] in ("run_dir", "resume") for o in overrides):
        raise ValueError("a multirun or a search sets each job's run_dir itself (in hydra.sweep.dir)")
    if any(o.split("=")[0] == "threads" for o in overrides):
        raise ValueError("a multirun or a search sets each job's threads itself: hydra.launcher.threads_per_job=N "
                         "(default: cpus_per_job)")  # fmt: skip
    return [_absolute(o) for o in overrides]


def _absolute(override: str) -> str:
    key, _, value = override.partition("=")
    if key in PATH_KEYS and value and Path(value).exists():
        return f"{key}={Path(value).resolve()}"
    return override


# ---------------------------------------------------------------- one job


def run_job(overrides: list[str], run_dir: str, threads: int) -> dict:
    """Run (or resume, where a checkpoint is there) one job as a `python -m worldmodel.run`
    process; its summary. JobKilled when a signal killed or stopped it (a retry resumes it),
    JobFailed when it failed on its own."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resumed = (run_dir / "checkpoint.pt").is_file()
    argv = [f"resume={run_dir}"] if resumed else [*overrides, f"run_dir={run_dir}"]
    argv.append(f"threads={threads}")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    record = {"argv": argv, "resumed_at_step": _summary(run_dir).get("env_steps") if resumed else None,
              "started": time.time(), "host": os.uname().nodename}  # fmt: skip
    with open(run_dir / "job.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "worldmodel.run", *argv], stdout=out, stderr=subprocess.STDOUT,
                                env=env, preexec_fn=_die_with(os.getpid()))  # fmt: skip
        (run_dir / "job.pid").write_text(str(proc.pid))
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # (Ctrl-C reached the job too: let it save before this process goes)
            proc.wait()
            raise
    record.update(returncode=code, ended=time.time())
    _append_attempt(run_dir, record)
    if code < 0 or code in STOPPED:
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else "stopped by SIGINT/SIGTERM"
        raise JobKilled(f"{run_dir}: {how}")
    summary = _summary(run_dir)
    if code != 0 or summary.get("status") != "finished":
        raise JobFailed(f"{run_dir}: exit status {code}, run {summary.get('status', 'without a summary')}; "
                        f"see {run_dir / 'job.log'}")  # fmt: skip
    return summary


_LIBC = None
if sys.platform == "linux":  # (loaded here: a child between fork and exec must not load libraries)
    import ctypes

    _LIBC = ctypes.CDLL(None)


def _die_with(parent: int):
    """preexec_fn for a job's process: die when `parent`, the process that started it, dies
    (Linux), so that a lost Ray worker leaves no orphan writing the run directory its retry resumes."""

    def arm() -> None:
        if _LIBC is not None:
            _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # (the parent died before the line above)
                os._exit(1)

    return arm


def _summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def _attempts(run_dir: Path) -> list[dict]:
    try:
        return json.loads((run_dir / "job.json").read_text())["attempts"]
    except (OSError, ValueError, KeyError):
        return []


def _append_attempt(run_dir: Path, record: dict) -> None:
    write_json({"attempts": [*_attempts(run_dir), record]}, run_dir / "job.json")


# ---------------------------------------------------------------- the launchers


class JobPool:
    """Jobs run on Ray (a local instance unless an address is given) or here one at a time
    ("basic"): `submit` them, `wait` for those that ended (status and result or error set)."""

    def __init__(self, launcher: str, config: LauncherConfig):
        self.launcher, self.config, self.pending, self._started_ray = launcher, config, {}, False
        if launcher == "ray":
            import ray

            address = config.cluster
            self._started_ray = not ray.is_initialized()
            if self._started_ray and address:
                ray.init(address=address, log_to_driver=False)
            elif self._started_ray:  # a new local instance (address="local": not one `ray start` left running)
                workers = config.max_workers or max(1, int(available_cores() // max(config.cpus_per_job, config.threads)))
                ray.init(address="local", num_cpus=workers * config.cpus_per_job,
                         num_gpus=None if config.gpus_per_job else 0, include_dashboard=False, log_to_driver=False)  # fmt: skip
            self._remote = ray.remote(run_job).options(num_cpus=config.cpus_per_job, num_gpus=config.gpus_per_job,
                                                       max_retries=config.max_retries, retry_exceptions=[JobKilled])  # fmt: skip

    @property
    def capacity(self) -> int:
        """Jobs that can run at once."""
        if self.launcher == "basic":
            return 1
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1) // self.config.cpus_per_job))

    def submit(self, job: Job) -> None:
        if self.launcher == "basic":
            self.pending[job.num] = job
        else:
            self.pending[self._remote.remote(job.overrides, str(job.run_dir), self.config.threads)] = job

    def wait(self, timeout: float = 2.0) -> list[Job]:
        """The jobs that ended within `timeout` seconds (basic: the next job, run to its end)."""
        if not self.pending:
            return []
        if self.launcher == "basic":
            job = self.pending.pop(next(iter(self.pending)))
            _finish(job, lambda: run_job(job.overrides, str(job.run_dir), self.config.threads))
            return [job]
        import ray

        done, _ = ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        ended = []
        for ref in done:
            job = self.pending.pop(ref)
            _finish(job, lambda r=ref: ray.get(r))
            ended.append(job)
        return ended

    def close(self) -> None:
        if self._started_ray:  # (a local instance goes with the sweep; a cluster stays)
            import ray

            ray.shutdown()


def launch(jobs: list[Job], launcher: str, config: LauncherConfig, sweep_dir: Path, progress: bool = True) -> list[Job]:
    """Run the jobs not finished yet; sweep.json says where each stands as they end."""
    from tqdm.auto import tqdm

    for job in jobs:
        if _summary(job.run_dir).get("status") == "finished":
            job.status, job.result = "finished", _result(_summary(job.run_dir))
        job.attempts = _attempts(job.run_dir)
    todo = [job for job in jobs if job.status != "finished"]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"multirun ({launcher})", unit="job",
               disable=not progress, smoothing=0)  # fmt: skip
    _write_status(jobs, sweep_dir, bar)
    pool = JobPool(launcher, config)
    try:
        for job in todo:
            pool.submit(job)
        while pool.pending:
            bar.update(len(pool.wait()))
            _write_status(jobs, sweep_dir, bar)
    finally:
        pool.close()
        bar.close()
    return jobs


def _finish(job: Job, get) -> None:
    """Record a job's end: its summary, or why it failed."""
    try:
        job.result, job.status = _result(get()), "finished"
    except Exception as e:  # noqa: BLE001  (Ray wraps the job's exception; the message says what happened)
        job.status, job.result = "failed", {"error": str(e).strip().splitlines()[-1][:500]}
    job.attempts = _attempts(job.run_dir)


def _result(summary: dict) -> dict:
    keys = ("final_eval_return", "normalized_score", "offline_eval_return", "env_steps", "offline_updates", "wall_s")
    return {k: summary[k] for k in keys if k in summary}


def _write_status(jobs: list[Job], sweep_dir: Path, bar) -> None:
    running = sum(job.status == "pending" and _summary(job.run_dir).get("status") == "running" for job in jobs)
    counts = {s: sum(job.status == s for job in jobs) for s in ("finished", "failed")}
    counts.update(running=running, waiting=len(jobs) - counts["finished"] - counts["failed"] - running)
    bar.set_postfix(counts)
    write_json({"jobs": len(jobs), **counts, "runs": [job.row() for job in jobs]}, sweep_dir / "sweep.json")


# ---------------------------------------------------------------- the command


def main(argv: list[str]) -> dict:
    """`python -m worldmodel.run --multirun ...` (see the module docstring); returns sweep.json's content."""
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        raise SystemExit(0)
    try:
        overrides, launcher, sweep_dir, config = split_args(argv)
        sweep_dir = (sweep_dir or Path("runs") / "multirun" / time.strftime("%Y%m%d-%H%M%S")).resolve()
        jobs = plan_jobs(overrides, sweep_dir)
        _check_same_sweep(sweep_dir, jobs)
        check_cores(launcher, config)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _write_multirun(sweep_dir, overrides, launcher, config, jobs)
    print(f"multirun: {len(jobs)} job(s) in {sweep_dir} on {launcher}" + (
        f" ({config.cpus_per_job:g} CPU, {config.threads} thread(s) each)" if launcher == "ray" else ""))  # fmt: skip
    launch(jobs, launcher, config, sweep_dir)
    status = json.loads((sweep_dir / "sweep.json").read_text())
    print(f"multirun: {status['finished']} finished, {status['failed']} failed; "
          f"python -m worldmodel.report {sweep_dir} --out {sweep_dir / 'report'}")  # fmt: skip
    if status["failed"]:
        for row in status["runs"]:
            if row["status"] == "failed":
                print(f"  job {row['num']} ({' '.join(row['overrides'])}): {row.get('error')}", file=sys.stderr)
        raise SystemExit(1)
    return status


def _check_same_sweep(sweep_dir: Path, jobs: list[Job]) -> None:
    """A sweep directory resumes the sweep it holds, never another one."""
    import yaml

    path = sweep_dir / "multirun.yaml"
    if path.is_file():
        saved = [job["overrides"] for job in (yaml.safe_load(path.read_text()) or {}).get("jobs", [])]
        if saved != [job.overrides for job in jobs]:
            raise ValueError(f"hydra.sweep.dir={sweep_dir} holds another sweep (its multirun.yaml lists other "
                             "jobs): give the same command to resume it, or another hydra.sweep.dir")  # fmt: skip


def _write_multirun(sweep_dir: Path, overrides: list[str], launcher: str, config: LauncherConfig, jobs: list[Job]) -> None:
    import yaml

    from worldmodel.checkpoint import atomic_write

    text = yaml.safe_dump({"overrides": overrides, "launcher": launcher, "launcher_config": dataclasses.asdict(config),
                           "jobs": [{"num": j.num, "overrides": j.overrides, "run_dir": str(j.run_dir)} for j in jobs]},
                          sort_keys=False)  # fmt: skip
    with atomic_write(sweep_dir / "multirun.yaml") as tmp:
        Path(tmp).write_text(text)
