"""worldmodel.allocator: freed tensor memory is reused without page faults (glibc)."""

import subprocess
import sys

import pytest

# Both modes in the state an entry point calls keep_freed_memory in (set_threads, after its imports):
# before 2026-12-07 only "keep" imported the package's modules, whose allocations changed the heap,
# so the test compared a small process's faults with a large one's; with the package's names loaded
# lazily, keep_freed_memory in a process holding torch alone faulted as often as the default
# (6,144 each), and in a large process the default faults little on this loop (it then skips)
_LOOP = """
import resource, sys, torch
import worldmodel.ensemble, worldmodel.replay, worldmodel.transition_log, worldmodel.envs
from worldmodel.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(3):
    torch.empty(2**20).fill_(1.0)  # 4 MiB, above glibc's default mmap threshold
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    torch.empty(2**20).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_ends_the_page_faults_of_reallocated_tensors():
    faults = {mode: int(subprocess.run([sys.executable, "-c", _LOOP, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("default", "keep")}  # fmt: skip
    if faults["default"] < 1000:  # (glibc 2.36 here: about 6,000; other versions or settings may not fault)
        pytest.skip(f"this C library's defaults fault little on this loop ({faults['default']} faults)")
    assert faults["keep"] < 100


def test_set_threads_keeps_freed_memory(monkeypatch):
    from worldmodel import threads

    calls = []
    monkeypatch.setattr(threads, "keep_freed_memory", lambda: calls.append(1))
    threads.set_threads(1)
    assert calls == [1]
