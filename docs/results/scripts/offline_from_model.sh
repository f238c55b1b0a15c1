#!/usr/bin/env bash
# One offline run from a fitted model used as it is (model=<model.pt>: no refit), the way the
# walker2d results of 2026-12-04 ran: one thread, 10-episode evaluations, the actor whose model
# return was best kept (offline.select=model_score). Rerunning the same line resumes a cut-off run
# (its saved settings: the arguments are then not read) and leaves a finished one as it is.
#
#   docs/results/scripts/offline_from_model.sh <planner> <task> <dataset> <model.pt> <seed> <run_dir> [key=value ...]
#   docs/results/scripts/offline_from_model.sh mopo walker2d data/walker2d-medium-replay.hdf5 \
#       runs/offline/walker2d-mr-50k-mopo-conv-s0/model.pt 0 runs/offline/w2d-mr-200k/mopo-l1.0-s0 \
#       offline.updates=200000 planner.penalty=1.0 planner.rollout_length=1 planner.agent.precision=bf16
set -euo pipefail
planner=$1 task=$2 dataset=$3 model=$4 seed=$5 run_dir=$6; shift 6
. "$(dirname "$0")/work_queue.sh"
threads=${THREADS:-1}  # (torch threads, one by default; a resumed run takes it too)
export OMP_NUM_THREADS=$threads
finished "$run_dir" && { echo "$run_dir: finished already"; exit 0; }
if resumable "$run_dir"; then
  echo "$run_dir: resuming with its saved settings" >&2
  args=(resume="$run_dir" threads="$threads")
else
  args=(planner="$planner" env="$task" dataset="$dataset" model="$model" env_steps=0
        offline.select=model_score eval_episodes=10 seed="$seed" threads="$threads" run_dir="$run_dir" "$@")
fi
mkdir -p "$(dirname "$run_dir")"
logged "$run_dir.log" python -m worldmodel.run "${args[@]}"
