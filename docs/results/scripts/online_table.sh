#!/usr/bin/env bash
# Issue #12's online protocol, every run resumable: each task x arm x seed is one
# `python -m worldmodel.run` from scratch, one thread, evaluations of EVAL_EPISODES deterministic
# episodes every EVAL_EVERY decisions (defaults 10 and 10000: the evaluations then cost half the
# training's decisions; a dm-control episode is 500). Rerun the same line to continue (a run
# resumes from its last checkpoint; a finished one is skipped).
#   TASKS="dmc/cartpole-swingup dmc/reacher-easy dmc/cheetah-run" docs/results/scripts/online_table.sh
#   EVAL_EVERY=5000 EVAL_EPISODES=5 TASKS=dmc/reacher-easy ARMS="default utd4 beta" STEPS=10000 docs/results/scripts/online_table.sh
# TASKS: env names (default: issue #12's six dm-control tasks); SEEDS (default "0 1 2");
# STEPS: agent decisions (dm-control repeats each action twice: 50000 is 100k simulator steps);
# ARMS: names from arm() below; WORKERS (default 1; 2 on an otherwise idle 2-core machine).
# Runs: runs/online/<task without dmc/>-<arm>-<steps>/s<seed> (logs beside them); then
#   python -m worldmodel.report runs/online/<task>-<arm>-<steps>/s? --out docs/results/online/<task>-<arm>-<steps>
# Run from the repository root with its virtual environment active.
set -uo pipefail
tasks=(${TASKS:-dmc/cartpole-swingup dmc/reacher-easy dmc/cheetah-run dmc/walker-walk dmc/finger-spin dmc/hopper-stand})
arms=(${ARMS:-default}) seeds=(${SEEDS:-0 1 2})
steps=${STEPS:-50000} every=${EVAL_EVERY:-10000} episodes=${EVAL_EPISODES:-10}
export OMP_NUM_THREADS=1
. "$(dirname "$0")/work_queue.sh"

arm() {  # name -> its planner overrides
  case $1 in
    default) echo "" ;;                                    # configs/config.yaml's MPPI with its learned value
    novalue) echo "planner.value_learning=false" ;;
    guided) echo "planner.horizon=5 planner.policy_samples=24" ;;  # TD-MPC's: the actor's sequences among the candidates
    icem) echo "planner=icem" ;;
    beta) echo "model.fit.beta=0.5" ;;                    # the first fit's beta-NLL as the refits' (fit_beta)
    utd4) echo "planner.value_updates_per_step=4" ;;      # four value updates per decision
    tau) echo "planner.value_agent.tau=0.02" ;;          # the value's target network 4x faster
    std1) echo "planner.noise_std=1.0" ;;                 # MPPI's sampling spread twice as wide
    g95) echo "planner.value_agent.discount=0.95" ;;      # the learned value's horizon 20 decisions, not 100
    *) echo "unknown arm $1 (default, novalue, guided, icem, beta, utd4, tau, std1, g95)" >&2; return 1 ;;
  esac
}
for a in "${arms[@]}"; do arm "$a" > /dev/null || exit 1; done

run() {  # task arm seed (a run another instance of this script holds is left to it)
  local d=runs/online/${1#dmc/}-$2-$steps/s$3
  saved_as "$d" eval_every="$every" eval_episodes="$episodes" || return 1  # (the name does not hold them)
  finished "$d" && return
  mkdir -p "$(dirname "$d")"
  (
    flock -n 9 || { echo "$d: run by another instance" >&2; exit 0; }
    finished "$d" && exit 0  # (it may have finished while this instance waited its turn)
    if resumable "$d"; then logged "$d.log" python -m worldmodel.run resume="$d"; exit; fi
    # shellcheck disable=SC2046
    logged "$d.log" python -m worldmodel.run env="$1" $(arm "$2") env_steps="$steps" eval_every="$every" \
        eval_episodes="$episodes" seed="$3" threads=1 run_dir="$d"
  ) 9> "$d.running"
}

jobs=()
for t in "${tasks[@]}"; do for s in "${seeds[@]}"; do for a in "${arms[@]}"; do jobs+=("run $t $a $s"); done; done; done
mkdir -p runs/online
queue=runs/online/.next-$$
trap 'rm -f "$queue" "$queue.failed"' EXIT
run_jobs "$queue" "${WORKERS:-1}" || exit 1
echo "$(date -u +%FT%TZ) done"
