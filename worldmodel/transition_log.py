"""A crash-safe, append-only log of real transitions: what a robot collected survives `kill -9`.

Each transition is one fixed-size record (float32 fields, then their CRC32) appended to a
segment file and fsync'd: `append` writes at most `sync_every` records between two fsyncs and
syncs before it returns, so once it returns its records are on disk. A crash can only tear the
records written since the last fsync (at most `sync_every`): reopening the log drops that torn
tail and appends after the last whole record. A damaged record anywhere else is an error naming
the file and the record. Layout: <dir>/segment-000000.bin, ... each starting with a 16-byte
header (magic, obs_dim, act_dim). Record fields: obs [O], action [A], reward, next_obs [O],
terminated, truncated.

`LogWriter` appends in a thread of its own, so that a control loop never waits on the disk.
"""

from __future__ import annotations

import os
import queue
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict

from worldmodel.transitions import validate_transitions

_MAGIC = b"WMTLOG01"
_HEADER = struct.Struct("<8sII")  # magic, obs_dim, act_dim


class LogCorruptError(ValueError):
    """A record in the middle of a log fails its checksum, or a header is not a log's."""


class TransitionLog:
    """Append-only transition log in `directory` (created if missing; an existing one is reopened,
    its torn tail, if any, dropped). len(log) counts the whole records on disk. sync_every: the
    most records written between two fsyncs (what a crash can tear, and LogWriter's group). repair=False
    reads a log another process is writing: it leaves the files as they are and must not append."""

    def __init__(self, directory: str | os.PathLike, obs_dim: int, act_dim: int, *, sync_every: int = 1,
                 segment_records: int = 100_000, repair: bool = True):  # fmt: skip
        if sync_every < 1 or segment_records < 1:
            raise ValueError(f"sync_every and segment_records must be >= 1, got {sync_every}, {segment_records}")
        self.directory, self.obs_dim, self.act_dim = Path(directory), obs_dim, act_dim
        self.sync_every, self.segment_records, self.repair = sync_every, segment_records, repair
        self.fields = 2 * obs_dim + act_dim + 3
        self.record_bytes = 4 * self.fields + 4
        made = [d for d in (self.directory, *self.directory.parents) if not d.exists()]
        self.directory.mkdir(parents=True, exist_ok=True)
        for directory in made:  # (made durable: a power loss must not take the directories its segments are in)
            _fsync_dir(directory.parent)
        found = sorted(self.directory.glob("segment-*.bin"))
        counts = [self._check_segment(p, last=i == len(found) - 1) for i, p in enumerate(found)]
        # [path, whole records] per segment; a last segment torn while being created is gone
        self._segments = [[p, n] for p, n in zip(found, counts) if p.exists()]
        self._file = None
        self._unsynced = 0

    # ---------------------------------------------------------------- reading

    def _check_segment(self, path: Path, last: bool) -> int:
        """Whole, valid records in `path`; the last segment's torn tail is cut off on disk."""
        with open(path, "rb") as f:
            head = f.read(_HEADER.size)
        if len(head) < _HEADER.size and last:  # torn while being created
            if self.repair:
                path.unlink()
            return 0
        magic, obs_dim, act_dim = _HEADER.unpack(head) if len(head) == _HEADER.size else (b"", 0, 0)
        if magic != _MAGIC:
            raise LogCorruptError(f"{path}: not a transition log segment (bad header)")
        if (obs_dim, act_dim) != (self.obs_dim, self.act_dim):
            raise LogCorruptError(f"{path}: logged obs_dim={obs_dim}, act_dim={act_dim}, but this log was opened "
                                  f"with obs_dim={self.obs_dim}, act_dim={self.act_dim}")  # fmt: skip
        records = self._records(path)
        good = _valid(records, self.fields)
        if not good.all():
            bad = int((~good).nonzero()[0][0])
            # only the records written since the last fsync (at most sync_every) can be torn
            if not (last and bad >= len(good) - self.sync_every):
                raise LogCorruptError(f"{path}: record {bad} of {len(good)} fails its checksum (damaged log)")
            records = records[:bad]
        whole = len(records)
        size = _HEADER.size + whole * self.record_bytes
        if last and self.repair and path.stat().st_size != size:  # a torn tail: keep only the whole records
            with open(path, "r+b") as f:
                f.truncate(size)
                f.flush()
                os.fsync(f.fileno())
        return whole

    def _records(self, path: Path) -> np.ndarray:
        if path.stat().st_size <= _HEADER.size:  # (a segment the writer has just begun: no record yet)
            return np.zeros((0, self.record_bytes), np.uint8)
        raw = np.fromfile(path, dtype=np.uint8, offset=_HEADER.size)
        whole = len(raw) // self.record_bytes
        return raw[: whole * self.record_bytes].reshape(whole, self.record_bytes)

    def __len__(self) -> int:
        return sum(n for _, n in self._segments)

    def read(self, start: int = 0) -> TensorDict:
        """The logged transitions from index `start` on, as a transitions TensorDict [N]."""
        self.sync()
        rows = [self._records(p)[:n] for p, n in self._segments]
        records = np.concatenate(rows)[start:] if rows else np.zeros((0, self.record_bytes), np.uint8)
        values = torch.from_numpy(records[:, :-4].copy().view(np.float32).reshape(len(records), self.fields))
        o, a = self.obs_dim, self.act_dim
        return TensorDict({
            "obs": values[:, :o], "action": values[:, o:o + a], "reward": values[:, o + a],
            "next_obs": values[:, o + a + 1:2 * o + a + 1], "terminated": values[:, -2] > 0.5,
            "truncated": values[:, -1] > 0.5,
        }, batch_size=[len(values)])  # fmt: skip

    # ---------------------------------------------------------------- writing

    def append(self, transitions: TensorDict) -> None:
        """Append transitions [N] (validated first: a bad batch writes nothing); on return they
        are on disk (fsync'd every `sync_every` records and at the end)."""
        data = validate_transitions(transitions, self.obs_dim, self.act_dim)
        values = torch.cat([data["obs"], data["action"], data["reward"].unsqueeze(-1), data["next_obs"],
                            data["terminated"].unsqueeze(-1).float(), data["truncated"].unsqueeze(-1).float()],
                           dim=-1).cpu().numpy()  # fmt: skip
        start = 0
        while start < len(values):
            file = self._writable()  # (a new segment every segment_records)
            room = min(self.sync_every - self._unsynced, self.segment_records - self._segments[-1][1])
            rows = values[start : start + room]
            file.write(b"".join(row.tobytes() + struct.pack("<I", zlib.crc32(row.tobytes())) for row in rows))
            self._segments[-1][1] += len(rows)
            self._unsynced += len(rows)
            start += len(rows)
            if self._unsynced >= self.sync_every:
                self.sync()
        self.sync()

    def _writable(self):
        if self._file is not None and self._segments[-1][1] < self.segment_records:
            return self._file
        if self._file is not None:
            self.sync()
            self._file.close()
        if not self._segments or self._segments[-1][1] >= self.segment_records:
            number = int(self._segments[-1][0].stem.split("-")[1]) + 1 if self._segments else 0
            path = self.directory / f"segment-{number:06d}.bin"
            with open(path, "wb") as f:
                f.write(_HEADER.pack(_MAGIC, self.obs_dim, self.act_dim))
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(self.directory)
            self._segments.append([path, 0])
        self._file = open(self._segments[-1][0], "ab")
        return self._file

    def sync(self) -> None:
        """Force what was appended onto the disk."""
        if self._file is not None and self._unsynced:
            self._file.flush()
            os.fsync(self._file.fileno())
        self._unsynced = 0

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None

    def __enter__(self) -> TransitionLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def export(self, path: str | os.PathLike, format: str = "d4rl", metadata: dict | None = None) -> None:
        """Write the log as an offline dataset (D4RL .hdf5 or a Minari directory)."""
        from worldmodel.datasets import save_d4rl, save_minari

        if format not in ("d4rl", "minari"):
            raise ValueError(f"format must be 'd4rl' or 'minari', got {format!r}")
        self.sync()
        (save_minari if format == "minari" else save_d4rl)(path, self.read(), metadata or {})


class LogWriter:
    """A TransitionLog's appends in a thread of its own, so that a control loop never waits on the
    disk (an fsync takes 0.1-3 ms on this machine's SSD, tens of ms on an SD card, seconds on a
    stalled disk). `put(item)` returns at once; the thread appends transitions [N] (those waiting
    together in one append: up to the log's sync_every rows a fsync), then hands every item put,
    transitions or not, to `then(item)` in the order put, so whatever `then` feeds sees only logged
    transitions. A failed append or `then` sets `error` and ends the thread (later puts raise);
    `close()` writes what waits first. A transition put but not yet written when the process is
    killed is lost: it was never logged (`backlog` counts those rows)."""

    def __init__(self, log: TransitionLog, then: Callable[[object], None] = lambda item: None):
        self.log, self.then = log, then
        self.error: BaseException | None = None
        self.backlog = 0  # rows put and not yet on disk
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def put(self, item: object) -> None:
        """Queue an item: transitions [N] (validated here, so a bad batch raises at its caller) or
        anything else for `then`."""
        if self.error is not None:
            raise RuntimeError(f"the transition log's writer failed: {self.error}") from self.error
        if self._queue is None:
            raise RuntimeError("put() on a closed LogWriter")
        if isinstance(item, TensorDict):
            item = validate_transitions(item, self.log.obs_dim, self.log.act_dim)
            with self._lock:
                self.backlog += len(item)
        self._queue.put(item)

    def close(self) -> None:
        """Write and hand on what waits, then end the thread (its error, if any, stays in `error`)."""
        if self._queue is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._queue = None

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not _STOP:
                group, rows = [], 0  # transitions waiting together (then `item`: what ends them, or None)
                while isinstance(item, TensorDict):
                    group.append(item)
                    rows += len(item)
                    item = None if rows >= self.log.sync_every or self._queue.empty() else self._queue.get()
                if group:
                    self.log.append(torch.cat(group) if len(group) > 1 else group[0])
                    with self._lock:
                        self.backlog -= rows
                    for g in group:
                        self.then(g)
                if item is _STOP:
                    break
                if item is not None:
                    self.then(item)
        except Exception as e:  # noqa: BLE001  (a full or failing disk: the control loop reads `error`)
            self.error = e


_STOP = object()  # LogWriter's end of the queue


def _valid(records: np.ndarray, fields: int) -> np.ndarray:
    """Per record: does its stored CRC32 match its payload? records [N, 4 fields + 4] uint8."""
    stored = records[:, -4:].copy().view("<u4").reshape(-1)
    return np.array([zlib.crc32(r[:-4].tobytes()) == c for r, c in zip(records, stored)], dtype=bool)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
