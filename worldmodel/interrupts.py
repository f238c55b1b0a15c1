"""Stopping a run cleanly: SIGINT (Ctrl-C) or SIGTERM asks the loop to stop at its next safe point.

The loop checks `stop.requested` after each step, saves what it has and exits with the resume
command; a second signal stops at once, without saving (the last checkpoint still resumes). The
same Ctrl-C also ends a pipe's reader (`... 2>&1 | tee log`): progress bars write through
`PipeSafe`, and the notice here guards its write, so a broken pipe silences stderr instead of
failing the run mid-save.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType


EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # the shell's 128 + signal number


class PipeSafe:
    """A stream (stdout, stderr, a progress bar's) whose reader may go away with the Ctrl-C that
    stops the run: a write or flush that finds the pipe broken points the stream's file descriptor
    at /dev/null from then on, instead of raising a BrokenPipeError where the run saves."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            silence(self.stream.fileno())
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            silence(self.stream.fileno())

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def silence(fd: int) -> None:
    """Point file descriptor `fd` at /dev/null (its reader is gone: what is written there is lost anyway)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class RunInterrupted(Exception):
    """Raised by a loop that stopped on request after saving; carries the signal's name."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = EXIT_CODES.get(signal_name, 1)


class StopRequest:
    """While active (`with StopRequest() as stop:`), SIGINT/SIGTERM set `stop.requested` to the
    signal's name instead of killing the process. Outside the main thread it does nothing."""

    def __init__(self, what: str = "the current step"):
        self.what = what
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:  # the second signal: stop now
            self.__exit__()
            raise KeyboardInterrupt(f"{name} again: stopped without saving")
        self.requested = name
        # (a raw write: the signal may land inside a buffered write to the same stream, which a
        # buffered one here would re-enter and fail; stderr, where the progress bars are)
        try:
            os.write(2, f"\n{name}: finishing {self.what}, then saving a checkpoint "
                        f"({name} again stops at once, without saving)\n".encode())  # fmt: skip
        except OSError:  # (stderr's reader ended with the same Ctrl-C: `| tee`)
            silence(2)
