#!/usr/bin/env bash
# Issue #10 from a fresh machine, resumable (rerun it): `nohup docs/results/scripts/queue_walker2d_halfcheetah.sh
# > runs/queue.log 2>&1 &`. The walker2d-medium and halfcheetah-medium data from their shipped
# behaviour policies (docs/results/policies; minutes each), then, where walker2d-medium's data are
# the ones seed 0 and BC ran on (fingerprint ae233efcc03f5c63), its MOPO seeds 1-2 two at a time and
# then halfcheetah-medium's whole table; otherwise walker2d-medium's MOPO and BC and
# halfcheetah-medium's whole table side by side, one worker each (the exit status: 1 if either failed).
set -u
cd "$(dirname "$0")/../../.." && . .venv/bin/activate || { echo "no .venv here: install first (README)" >&2; exit 1; }
mkdir -p data runs/offline
make() {  # task out
  [ -f "$2" ] || OMP_NUM_THREADS=1 python -m worldmodel.datasets make env="$1" quality=medium size=200000 out="$2" \
      policy="docs/results/policies/$1-medium-seed0.pt" threads=1 >> "runs/data-$1-medium.log" 2>&1
}
make walker2d data/walker2d-medium.hdf5 || exit 1
make halfcheetah data/halfcheetah-medium.hdf5 || exit 1
fp=$(python -c "import h5py; print(h5py.File('data/walker2d-medium.hdf5').attrs.get('metadata/fingerprint', ''))")
echo "$(date -u +%FT%TZ) walker2d-medium fingerprint $fp"
if [ "$fp" = ae233efcc03f5c63 ]; then
  SEEDS="1 2" PLANNERS=mopo WORKERS=2 docs/results/scripts/offline_table.sh walker2d medium
  [ $? = 75 ] && exit 75  # (walker2d's table already running: not two tables' workers on 2 cores)
  WORKERS=2 docs/results/scripts/offline_table.sh halfcheetah medium
else
  PLANNERS="mopo bc" WORKERS=1 docs/results/scripts/offline_table.sh walker2d medium &
  walker=$!
  WORKERS=1 docs/results/scripts/offline_table.sh halfcheetah medium
  cheetah=$?
  wait "$walker" && exit "$cheetah"
fi
