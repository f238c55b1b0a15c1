"""Stopping a run cleanly: SIGINT (Ctrl-C) or SIGTERM asks the loop to stop at its next safe point.

The loop checks `stop.requested` after each step, saves what it has and exits with the resume
command; a second signal stops at once, without saving (the last checkpoint still resumes).
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType


EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # the shell's 128 + signal number


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
        os.write(2, f"\n{name}: finishing {self.what}, then saving a checkpoint "
                    f"({name} again stops at once, without saving)\n".encode())  # fmt: skip
