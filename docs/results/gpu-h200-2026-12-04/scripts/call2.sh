set -o pipefail
source docs/results/gpu-h200-2026-12-04/scripts/setup.sh
timeout 200 python3 -m planners.bench --gpu-suite --sections planning dyna --json $OUT/gpu2.json 2>&1 | tee $OUT/suite2.log
echo "suite exit $?"
timeout 60 python3 docs/results/gpu-h200-2026-12-04/scripts/probe.py 2>&1 | tee $OUT/probe.log
timeout 90 python3 -m kernels.bench -E 7 -B 65536 --hidden 200 512 --dtypes tf32 --passes forward --variants baddbmm ours compile --budget 0.2 --json $OUT/compile_variant.json 2>&1 | tail -12 | tee $OUT/compile_variant.log
