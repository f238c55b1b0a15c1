"""The Triton kernels build without register spills for H100/H200 (sm_90) and A100 (sm_80), each
launch as the launchers make it (kernels.compile_check: meta tensors, Triton's own argument
specialisation): compiled through Triton's own pipeline and bundled ptxas, so no GPU is needed
(issue #14). A spilling fused kernel can lose to the unfused chain it was meant to beat."""

import pytest
import torch

pytest.importorskip("triton", reason="triton is installed on Linux only")
from kernels import compile_check  # noqa: E402
from kernels import triton_mlp as tm  # noqa: E402

LAUNCHES = compile_check.launches()
FUSED = [launch for launch in LAUNCHES if launch.kernel is tm._fused_mlp_kernel]
BUILDS = [(90, launch) for launch in LAUNCHES] + [(80, launch) for launch in FUSED]  # (sm_90: the GPUs lent;
# on sm_80 exact fp32's per-layer tiles spill 8-40 B, kernels/README.md)


def test_the_check_sees_every_kernel_and_flavour_a_training_step_and_a_plan_launch():
    labels = {compile_check._label(launch) for launch in LAUNCHES}
    # the model's tf32 and bf16 with and without the Gaussian head, the critics' tf32 and bf16
    # (fp32 takes the per-layer kernels on CUDA); 256 and 65,536 rows build alike
    assert len(FUSED) == 6
    for what in ("fwd+store_z", "bwd dX*act'", "bwd dW", "bwd dX", "gaussian head raw", "gaussian head inference",
                 "fwd out 256->1", "64x64x32 w4", "128x64x32 w8", "128x16x32 w8"):
        assert any(what in label for label in labels), (what, labels)


@pytest.mark.parametrize("arch,launch", BUILDS, ids=[f"sm{a}-{compile_check._label(x)}" for a, x in BUILDS])
def test_every_launch_builds_without_spills(arch, launch):
    built = compile_check.build(launch, arch)
    assert built["spill_stack_bytes"] == 0, f"{compile_check._label(launch)} on sm_{arch} spills: {built}"
    assert built["regs"] <= 255 and built["shared_bytes"] <= 101_376  # (sm_80/86's smallest per-block limit)
    if launch.constexprs["PREC"]:  # (tf32, bf16)
        assert built["wgmma"] == (arch == 90)  # Hopper's warpgroup MMA where it exists


def test_the_build_takes_triton_s_launch_specialisation():
    """A unit stride is folded in as the constant 1 and 16-divisible ints and pointers are marked,
    as Triton's JIT does at a launch; the old check declared every stride an unmarked int64."""
    launch = next(x for x in LAUNCHES if x.kernel is tm._linear_kernel and x.constexprs["STORE_Z"])
    signature, constexprs, attrs = compile_check.specialise(launch)
    names = tm._linear_kernel.arg_names
    assert signature["s_ak"] == "constexpr" and constexprs["s_ak"] == 1  # x [E, B, in] is contiguous
    assert signature["s_ar"] == "i32" and signature["R"] == "i32"
    assert (names.index("a_ptr"),) in attrs and (names.index("R"),) in attrs  # 65536 rows: 16-divisible
    assert (names.index("K"),) not in attrs  # 23 inputs


def test_a_launch_is_captured_not_run():
    x = torch.empty(3, 40, 5, device="meta")
    with tm.captured_launches() as seen:
        tm._linear(x, torch.empty(3, 5, 8, device="meta"), None, None, 0, 1)
    assert [launch.kernel for launch in seen] == [tm._linear_kernel]
    assert seen[0].constexprs["BLOCK_M"] == tm._tiles(40, 8)[0]


def test_the_autotuner_never_offers_the_fused_tile_that_was_wrong_on_an_h200():
    """128 rows over 8 warps, bf16 with the Gaussian head, wrote wrong outputs (NaN) on an H200
    (docs/results/gpu-h200-2026-12-04); every other flavour keeps it where the batch is large."""
    import triton

    configs = [triton.Config(dict(BLOCK_M=bm), num_warps=w) for bm, w in tm._FUSED_CANDIDATES]

    def rows(**flags):
        return {c.kwargs["BLOCK_M"] for c in tm._fused_candidates(configs, {"B": 4096}, **flags)}

    assert 128 not in rows(GAUSS=True, PREC=tm.PREC_CODES["bf16"])
    assert 128 in rows(GAUSS=True, PREC=tm.PREC_CODES["tf32"]) and 128 in rows(GAUSS=False, PREC=tm.PREC_CODES["bf16"])
