"""Atomic writes and checked reads for everything the engine saves (models, buffers, runs).

A file is written beside its destination, flushed to disk, then renamed over it, so a
crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import torch

FORMAT_KEY = "format"
RUN_FORMAT = "worldmodel.RunState"  # worldmodel.run's checkpoint.pt (its model, planner, buffer and progress)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, truncated, or of the wrong kind."""


TEMP_SUFFIX = ".worldmodel-tmp"  # atomic_write's temporaries (RunDirLock clears a killed writer's)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`
    (readable by all, like a normally created file), on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save `obj` to `path` atomically; returns the path."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def rng_state() -> dict:
    """torch's random generators as they stand: the CPU's and, where CUDA is in use, every GPU's
    (a model on a GPU draws its minibatches and a policy its noise there), for a resumed run or fit
    to draw what an uninterrupted one would."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None}


def set_rng_state(state: dict | torch.Tensor) -> None:
    """Restore `rng_state()` (or a bare CPU state, as checkpoints before it hold); the GPUs' when
    this machine has as many."""
    if isinstance(state, torch.Tensor):
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


_CUDA_STATE_BYTES = 16  # a CUDA generator's get_state(): its seed and offset


def restore_generator(generator: torch.Generator, state: torch.Tensor) -> None:
    """Set `generator` to a saved `get_state()`; one saved from a generator of another kind (a CUDA
    stream resumed on a CPU, or back) cannot continue there: it is reseeded from that state
    (the same resume draws the same numbers) with a warning, instead of failing the resume."""
    try:
        generator.set_state(state)
    except RuntimeError:
        other = _CUDA_STATE_BYTES if generator.device.type == "cpu" else torch.Generator().get_state().numel()
        if state.numel() != other:  # (not another device's: damaged, as any other bad state)
            raise
        seed = int.from_bytes(hashlib.sha256(state.cpu().numpy().tobytes()).digest()[:8], "little") >> 1
        generator.manual_seed(seed)
        warnings.warn(f"a saved random stream ({state.numel()} bytes) is not a {generator.device.type} generator's (saved on "
                      "another device?): reseeded from it, so this resume draws other numbers than the saved "
                      "run would have", stacklevel=2)  # fmt: skip


def _load_error(e: Exception) -> str:
    """torch.load's reason, without its advice to load with weights_only=False (unsafe, and no help for
    a damaged file) or to file an issue: the weights-only unpickler's own words, else the first line."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0]
    return text.strip().split("\n")[0].split(". This is an internal")[0] or type(e).__name__


def load_checked(path: str | os.PathLike, kind: str, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written with `{"format": kind, ...}`; a clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no {kind} checkpoint at {path}: the file does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated/garbled files
        why = ("holds objects other than tensors and plain values, which are not loaded (not written by this "
               "engine's save, or edited since?)" if "Unsupported global" in str(e) else "corrupt or truncated?")
        raise CheckpointError(f"{path} is not a readable {kind} checkpoint ({why}): {_load_error(e)}") from e
    found = obj.get(FORMAT_KEY) if isinstance(obj, dict) else type(obj).__name__
    if found != kind:
        raise CheckpointError(f"{path} holds a {found!r} checkpoint, expected {kind!r}")
    return obj


class RunDirLock:
    """An exclusive lock on a run directory for as long as this process holds it (`run_dir/.lock`,
    flock: released when the process exits, however it exits), so that two processes (say, a
    sweep's retried job and an orphan of its first attempt) never write one run directory. Taking
    it removes the temporaries atomic_write left in the directory when a holder was killed mid-write.
    `guards=<file name>`: the lock of that one file in run_dir instead (`.<name>.lock`; only its
    temporaries removed), for a directory several runs share (e.g. behaviour runs)."""

    def __init__(self, run_dir: str | os.PathLike, guards: str | None = None):
        import fcntl

        path = Path(run_dir) / (f".{guards}.lock" if guards else ".lock")
        what = f"{Path(run_dir) / guards}" if guards else f"run_dir={run_dir}"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise ValueError(f"{what} is in use by {holder}: wait for it to end or stop it") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"process {os.getpid()}")
        self._file.flush()
        # half-written files of a killed holder (atomic_write's temporaries: checkpoints of hundreds of MB)
        for stale in Path(run_dir).glob(f".{guards + '.' if guards else ''}*{TEMP_SUFFIX}"):
            stale.unlink(missing_ok=True)

    @property
    def held(self) -> bool:
        return not self._file.closed

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # (closing drops the flock)
