"""worldmodel.allocator: freed tensor memory is reused without page faults (glibc)."""

import subprocess
import sys

import pytest

# An EDAC update (RAVL's 10 critics of 3 x 256, batch 256: MB-sized activations freed and made again
# every update), the workload keep_freed_memory is for, in two fresh processes that differ only by the
# call, made where an entry point makes it (set_threads: after the imports, before the run is built).
# Page faults come in bursts (0 to 12,000 an update), so the mean over 12 updates is compared: here
# 1,300-1,900 an update by default, 65-160 with the call. (A 4 MiB loop, used before 2026-12-07,
# stopped faulting with glibc's defaults once the process was large: it showed nothing.)
_LOOP = """
import resource, sys, torch
torch.set_num_threads(1)
from tensordict import TensorDict
from planners import RAVL, RAVLConfig
from worldmodel import EnsembleDynamics, make_env
from worldmodel.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
spec = make_env("halfcheetah").task_spec
torch.manual_seed(0)
n, no = 2000, torch.zeros(2000, dtype=torch.bool)
ravl = RAVL(EnsembleDynamics(spec.obs_dim, spec.act_dim), spec, RAVLConfig())
ravl.observe(TensorDict({"obs": torch.randn(n, spec.obs_dim), "action": torch.rand(n, spec.act_dim) * 2 - 1,
                         "reward": torch.randn(n), "next_obs": torch.randn(n, spec.obs_dim), "terminated": no,
                         "truncated": no}, [n]))
ravl.rollout(torch.randn(500, spec.obs_dim))  # (imagined rows for the agent's batches)
ravl.learn(4)  # (warm: the heap grows to the update's size)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ravl.learn(12)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 12)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_ends_most_page_faults_of_an_edac_update():
    faults = {mode: float(subprocess.run([sys.executable, "-c", _LOOP, mode], capture_output=True, text=True,
                                         check=True).stdout) for mode in ("default", "keep")}  # fmt: skip
    if faults["default"] < 500:  # (glibc 2.36 here; other versions or settings may not fault)
        pytest.skip(f"this C library's defaults fault little on an EDAC update ({faults['default']:.0f} an update)")
    assert faults["keep"] < faults["default"] / 4, faults


def test_set_threads_keeps_freed_memory(monkeypatch):
    from worldmodel import threads

    calls = []
    monkeypatch.setattr(threads, "keep_freed_memory", lambda: calls.append(1))
    threads.set_threads(1)
    assert calls == [1]
