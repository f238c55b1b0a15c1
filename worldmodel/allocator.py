"""glibc's allocator told to keep freed memory for the next tensor of the same size.

By default glibc serves a block above its mmap threshold (128 KiB at the start, raised as such
blocks are freed) with a fresh mmap, and hands freed memory at the top of its heap back to the
kernel. A training step that frees and reallocates a few MB-sized tensors then pays a page fault
for every 4 KiB page it writes, every step: an EDAC critic step with 10 critics of 3 x 256 took
4,300-4,900 minor faults and 44 ms a step here in bf16, 37 ms with this setting and none (one
thread, alone; docs/benchmarks.md). What it costs: freed blocks stay in the process (its resident
memory stays near its peak) and up to TRIM_THRESHOLD of free heap top is kept.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # blocks up to this size come from the heap (glibc's upper limit on 64-bit)
TRIM_THRESHOLD = 128 * 2**20  # free memory at the heap's top kept up to this much
_tried, _done = False, False


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process (once; a no-op off glibc). Returns
    whether they are set."""
    global _tried, _done
    if _tried or not sys.platform.startswith("linux"):
        return _done
    _tried = True
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # (the running process's own C library)
    if mallopt is not None:
        _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
