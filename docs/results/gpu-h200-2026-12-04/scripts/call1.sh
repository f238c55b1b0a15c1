set -o pipefail
source docs/results/gpu-h200-2026-12-04/scripts/setup.sh
( timeout 120 python3 -m kernels.compile_check --arch 90 > $OUT/compile90.log 2>&1; timeout 100 python3 -m kernels.compile_check --arch 80 > $OUT/compile80.log 2>&1 ) &
timeout ${SUITE_S:-450} python3 -m planners.bench --gpu-suite --sections ${SECTIONS:-correctness planning dyna kernels} --json $OUT/gpu.json 2>&1 | tee $OUT/suite.log
echo "suite exit $?"
wait
nvidia-smi --query-gpu=clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv >> $OUT/env.txt
