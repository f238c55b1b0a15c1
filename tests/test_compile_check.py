"""The fused ensemble-MLP kernel builds without register spills for H100/H200 (sm_90) and A100
(sm_80): compiled through Triton's own pipeline and bundled ptxas, so no GPU is needed (issue #14).
A spilling fused kernel can lose to the unfused chain it was meant to beat."""

import pytest

from kernels import compile_check

FUSED = [(label, fn, c, warps, stages) for label, fn, c, warps, stages in compile_check.configs()
         if label.startswith("fused")]


@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("label,fn,constexprs,warps,stages", FUSED, ids=[f[0] for f in FUSED])
def test_fused_kernel_builds_without_spills(arch, label, fn, constexprs, warps, stages):
    built = compile_check.build(fn, constexprs, warps, stages, arch)
    assert built["spill_stack_bytes"] == 0, f"{label} on sm_{arch} spills: {built}"
    assert built["regs"] <= 255 and built["shared_bytes"] <= 101_376  # (sm_80/86's smallest per-block limit)
    assert built["wgmma"] == (arch == 90)  # Hopper's warpgroup MMA where it exists
