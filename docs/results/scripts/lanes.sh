#!/usr/bin/env bash
# The results still owed, in the order they matter, as two one-thread lanes for a 2-core machine;
# every step resumable, so each session starts the same line (and stops it with
# `kill -TERM -- -<pgid>`: each run saves; a lane stopped by a signal does not go on to its next step):
#   . .venv/bin/activate; nohup setsid docs/results/scripts/lanes.sh >> runs/lanes.log 2>&1 < /dev/null &
# offline (issue #10): halfcheetah-medium's data from the shipped policy and its RAVL seed 2; then
#   hopper-medium-replay's data (a behaviour SAC's replay, until its medium policy: on this AVX2-only
#   machine 180,000 transitions, fingerprint 9a7078783a3738b2, made 2026-12-07 by a run resumed once)
#   and its whole table (3 models fitted to convergence, then BC, MOPO and RAVL x 3 seeds).
# online (issue #12): cartpole-swingup seeds 1-2 (seed 0's figures are in docs/results/online), then
#   reacher-easy and cheetah-run seeds 0-2, 50k decisions each.
# LANES="offline" or "online" runs one of them (the other core left to other work).
set -u
cd "$(dirname "$0")/../../.." && . .venv/bin/activate || { echo "no .venv here: install first (README)" >&2; exit 1; }
here=docs/results/scripts
mkdir -p data runs/offline runs/online


offline() {
  [ -f data/halfcheetah-medium.hdf5 ] || OMP_NUM_THREADS=1 python -m worldmodel.datasets make env=halfcheetah \
      quality=medium size=200000 policy=docs/results/policies/halfcheetah-medium-seed0.pt \
      out=data/halfcheetah-medium.hdf5 threads=1 >> runs/data-halfcheetah-medium.log 2>&1 || return
  THREADS=1 WORKERS=1 SEEDS=2 PLANNERS=ravl "$here/offline_table.sh" halfcheetah medium || return
  [ -f data/hopper-medium-replay.hdf5 ] || OMP_NUM_THREADS=1 python -m worldmodel.datasets make env=hopper \
      quality=medium-replay size=100000 out=data/hopper-medium-replay.hdf5 threads=1 \
      >> runs/data-hopper-medium-replay.log 2>&1 || return
  THREADS=1 WORKERS=1 "$here/offline_table.sh" hopper medium-replay
}

online() {
  TASKS=dmc/cartpole-swingup SEEDS="1 2" "$here/online_table.sh" || return
  TASKS="dmc/reacher-easy dmc/cheetah-run" "$here/online_table.sh"
}

lanes=(${LANES:-offline online})
for lane in "${lanes[@]}"; do
  case $lane in offline|online) ;; *) echo "unknown lane $lane (offline, online)" >&2; exit 1 ;; esac
done
exec 7> runs/.lanes.lock  # (one copy at a time: a dataset being made has no lock of its own)
flock -n 7 || { echo "lanes.sh is running already (stop it with kill -TERM -- -<its process group>)" >&2; exit 75; }
pids=()
for lane in "${lanes[@]}"; do
  ( "$lane"; code=$?; echo "$(date -u +%FT%TZ) lane $lane ended (exit $code)"; exit $code ) &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
