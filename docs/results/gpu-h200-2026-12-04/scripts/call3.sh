set -o pipefail
source docs/results/gpu-h200-2026-12-04/scripts/setup.sh
timeout 70 python3 docs/results/gpu-h200-2026-12-04/scripts/fused_matrix.py 2>&1 | tee $OUT/matrix.log
timeout 180 python3 -m planners.bench --gpu-suite --sections planning dyna --no-bf16 --json $OUT/gpu3.json 2>&1 | tee $OUT/suite3.log
echo "suite exit $?"
