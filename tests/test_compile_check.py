"""The fused ensemble-MLP kernel builds without register spills for H100/H200 (sm_90) and A100
(sm_80): compiled through Triton's own pipeline and bundled ptxas, so no GPU is needed (issue #14).
A spilling fused kernel can lose to the unfused chain it was meant to beat."""

import pytest

pytest.importorskip("triton", reason="triton is installed on Linux only")
from kernels import compile_check  # noqa: E402

FUSED = [(label, fn, c, warps, stages) for label, fn, c, warps, stages in compile_check.configs()
         if label.startswith("fused")]


@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("label,fn,constexprs,warps,stages", FUSED, ids=[f[0] for f in FUSED])
def test_fused_kernel_builds_without_spills(arch, label, fn, constexprs, warps, stages):
    built = compile_check.build(fn, constexprs, warps, stages, arch)
    assert built["spill_stack_bytes"] == 0, f"{label} on sm_{arch} spills: {built}"
    assert built["regs"] <= 255 and built["shared_bytes"] <= 101_376  # (sm_80/86's smallest per-block limit)
    assert built["wgmma"] == (arch == 90)  # Hopper's warpgroup MMA where it exists


def test_the_autotuner_never_offers_the_fused_tile_that_was_wrong_on_an_h200():
    """128 rows over 8 warps, bf16 with the Gaussian head, wrote wrong outputs (NaN) on an H200
    (docs/results/gpu-h200-2026-12-04); every other flavour keeps it where the batch is large."""
    import triton

    from kernels import triton_mlp as tm

    configs = [triton.Config(dict(BLOCK_M=bm), num_warps=w) for bm, w in tm._FUSED_CANDIDATES]

    def rows(**flags):
        return {c.kwargs["BLOCK_M"] for c in tm._fused_candidates(configs, {"B": 4096}, **flags)}

    assert 128 not in rows(GAUSS=True, PREC=tm.PREC_CODES["bf16"])
    assert 128 in rows(GAUSS=True, PREC=tm.PREC_CODES["tf32"]) and 128 in rows(GAUSS=False, PREC=tm.PREC_CODES["bf16"])
