#!/usr/bin/env bash
# Issue #10 from a fresh machine, resumable (rerun it; 2026-12-05: nohup docs/results/scripts/queue_walker2d_halfcheetah.sh &): the walker2d-medium and halfcheetah-medium data
# (each resumes its behaviour run), then, where walker2d-medium's data are the ones seed 0 and BC
# ran on (fingerprint ae233efcc03f5c63), its MOPO seeds 1-2 two at a time and then halfcheetah-medium's
# whole table; otherwise both tables side by side, one worker each.
cd /work/main && . .venv/bin/activate
make() {  # task size out
  while pgrep -f "datasets make env=$1 quality=medium size=$2 " > /dev/null; do sleep 60; done
  [ -f "$3" ] || OMP_NUM_THREADS=1 python -m worldmodel.datasets make env="$1" quality=medium size="$2" out="$3" threads=1 \
      >> "runs/data-$1-medium.log" 2>&1
}
make walker2d 200000 data/walker2d-medium.hdf5 || exit 1
make halfcheetah 200000 data/halfcheetah-medium.hdf5 || exit 1
fp=$(python -c "import h5py; print(h5py.File('data/walker2d-medium.hdf5').attrs.get('metadata/fingerprint', ''))")
echo "$(date -u +%FT%TZ) walker2d-medium fingerprint $fp"
if [ "$fp" = ae233efcc03f5c63 ]; then
  SEEDS="1 2" PLANNERS=mopo WORKERS=2 docs/results/scripts/offline_table.sh walker2d medium
  WORKERS=2 docs/results/scripts/offline_table.sh halfcheetah medium
else
  PLANNERS="mopo bc" WORKERS=1 docs/results/scripts/offline_table.sh walker2d medium &
  WORKERS=1 docs/results/scripts/offline_table.sh halfcheetah medium
  wait
fi
