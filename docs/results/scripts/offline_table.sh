#!/usr/bin/env bash
# Issue #10's protocol for one dataset, every run resumable: for seeds 0-2 a converged model
# each (bf16 where the CPU has bf16 units, fp32 elsewhere; PRECISION=bf16|fp32 picks), then behaviour cloning, MOPO (configs/offline.yaml's preset for the dataset) and RAVL at
# 200k updates, MOPO and RAVL from their seed's model as it is; one thread per run, two runs at a
# time (a 2-core machine: WORKERS=1 beside another job; THREADS=2 WORKERS=1 runs one at a time on two
# threads, which gives EDAC 1.7x, docs/benchmarks.md; a resumed run takes THREADS too). Rerun the same line to continue.
# SEEDS="0 1 2" and PLANNERS="bc mopo ravl" (the defaults) pick a part of the table; DATA=<file>
# reads another dataset of the task and quality (runs named after the file: <name>-200k, ...).
# MODEL_TAG=<variant> MODEL_ARGS="<model.* overrides>" fit the models another way, in directories of
# their own (<name>-model-<precision><variant>-s<seed>, runs in <name>-200k<variant>/): the same seed
# fits the same weights, so an A/B differs only in what MODEL_ARGS changes.
#   MODEL_TAG=-recal MODEL_ARGS="model.fit.recalibrate=true" PLANNERS=mopo docs/results/scripts/offline_table.sh hopper medium-replay
#   docs/results/scripts/offline_table.sh halfcheetah medium      # reads data/halfcheetah-medium.hdf5
#   PLANNERS=mopo WORKERS=1 docs/results/scripts/offline_table.sh walker2d medium
#   DATA=data/halfcheetah-medium-1m.hdf5 docs/results/scripts/offline_table.sh halfcheetah medium
# Models: runs/offline/<name>-model-<precision>-s<seed>; runs: runs/offline/<name>-200k/ (<name>: <task>-<quality>, or DATA's)
# {bc,mopo,ravl}-s<seed> (logs beside them); then
#   python -m worldmodel.report runs/offline/<name>-200k/{bc,mopo,ravl}-s? --out docs/results/<name>-200k --raw
# Run from the repository root with its virtual environment active.
set -uo pipefail
task=$1 quality=$2
data=${DATA:-data/$task-$quality.hdf5} name=$(basename "${DATA:-$task-$quality}" .hdf5)
precision=${PRECISION:-$(python -c "from kernels.cpu import bf16_units; print('bf16' if bf16_units() else 'fp32')")}
case $precision in bf16|fp32) ;; *) echo "PRECISION must be bf16 or fp32, got $precision" >&2; exit 1 ;; esac
variant=${MODEL_TAG:-}
[ -n "${MODEL_ARGS:-}" ] && [ -z "$variant" ] && { echo "MODEL_ARGS needs MODEL_TAG=<variant> (its models and runs would mix with the default ones)" >&2; exit 1; }
out=runs/offline/$name-200k$variant models=runs/offline/$name-model-$precision$variant
seeds=(${SEEDS:-0 1 2}) planners=(${PLANNERS:-bc mopo ravl})
[ -f "$data" ] || { echo "no $data: make it first, python -m worldmodel.datasets make env=$task quality=$quality size=<transitions> out=$data threads=1" >&2; exit 1; }
mkdir -p "$out"
exec 8> "$out/.running"; flock -n 8 || { echo "$out: already running (stop it with kill -TERM -- -<its process group>)" >&2; exit 75; }
threads=${THREADS:-1}
case $threads in [1-9]) ;; *) echo "THREADS must be a whole number 1-9, got $threads" >&2; exit 1 ;; esac
[ $((threads * ${WORKERS:-2})) -le "$(nproc)" ] || { echo "WORKERS x THREADS exceeds this machine's $(nproc) cores" >&2; exit 1; }
export OMP_NUM_THREADS=$threads THREADS=$threads
here=$(dirname "$0")
. "$here/work_queue.sh"
# models and runs of data since remade at the same path are not this table's: refuse them
fingerprint=$(python -c "import sys; from worldmodel.datasets import read_metadata; print(read_metadata(sys.argv[1]).get('fingerprint', ''))" "$data") \
  || { echo "cannot read $data's metadata" >&2; exit 1; }
[ -n "$fingerprint" ] && for summary in "$models"-s*/summary.json "$out"/*/summary.json; do  # (a file make did not write: no record)
  [ -f "$summary" ] || continue
  if grep -q '"dataset_fingerprint"' "$summary" && ! grep -q "\"dataset_fingerprint\": \"$fingerprint\"" "$summary"; then
    echo "$(dirname "$summary") learned from other data than $data holds now ($fingerprint): move it aside" >&2; exit 1
  fi
done

fit() {  # seed: the seed's model, fitted once (the other worker waits for it under the seed's lock)
  local d=$models-s$1
  (
    flock 9
    [ -f "$d/model.pt" ] && exit 0
    if resumable "$d"; then logged "$d.log" python -m worldmodel.run resume="$d" threads="$threads"; exit; fi
    logged "$d.log" python -m worldmodel.run planner=mopo env="$task" dataset="$data" env_steps=0 offline.updates=0 \
        model.precision=$precision eval_episodes=1 seed="$1" threads="$threads" run_dir="$d" ${MODEL_ARGS:-}
  ) 9> "$d.fitting"
}

bc() {  # seed
  local d=$out/bc-s$1
  finished "$d" && return
  if resumable "$d"; then logged "$d.log" python -m worldmodel.run resume="$d" threads="$threads"; return; fi
  logged "$d.log" python -m worldmodel.run planner=bc env="$task" dataset="$data" env_steps=0 offline.updates=200000 \
      eval_episodes=10 seed="$1" threads="$threads" run_dir="$d"
}

from_model() {  # planner seed
  local d=$out/$1-s$2 model=$models-s$2/model.pt
  # (the run directory's name does not hold the precision: a run begun in another, on another
  # machine, is neither mixed into this table nor resumed as this machine's)
  saved_as "$d" planner.agent.precision="$precision" || return 1
  finished "$d" && return
  if resumable "$d"; then  # (its own model and settings: nothing to fit for it)
    "$here/offline_from_model.sh" "$1" "$task" "$data" "$model" "$2" "$d"; return
  fi
  fit "$2"; local code=$?
  case $code in 130|143) return $code ;; esac  # (a fit stopped by a signal stops the worker, as a run does)
  [ $code -eq 0 ] && [ -f "$model" ] || { echo "$(date -u +%FT%TZ) seed $2 has no model ($models-s$2.log says why)" >&2; return 1; }
  local extra=(); [ "$1" = ravl ] && extra=(planner.agent.compile_critic_step=true)  # (EDAC's step: 10% faster in bf16, 1.33x in fp32 on an AVX2 CPU)
  "$here/offline_from_model.sh" "$1" "$task" "$data" "$model" "$2" "$d" offline.updates=200000 planner.agent.precision=$precision "${extra[@]}"
}

jobs=()
for s in "${seeds[@]}"; do jobs+=("fit $s"); done
for p in "${planners[@]}"; do
  case $p in
    bc) for s in "${seeds[@]}"; do jobs+=("bc $s"); done ;;
    mopo|ravl) for s in "${seeds[@]}"; do jobs+=("from_model $p $s"); done ;;
    *) echo "unknown planner $p in PLANNERS (bc, mopo, ravl)" >&2; exit 1 ;;
  esac
done
run_jobs "$out/.next" "${WORKERS:-2}" || exit 1
echo "$(date -u +%FT%TZ) done: python -m worldmodel.report $out/{bc,mopo,ravl}-s? --out docs/results/$name-200k$variant --raw"
