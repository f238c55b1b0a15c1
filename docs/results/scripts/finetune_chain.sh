#!/usr/bin/env bash
# Issue #11's fine-tuning chain for one task, every step skipped when its output exists (rerun it to
# resume): the behaviour data (worldmodel.datasets), a 50k-update MOPO agent on it (the actor
# selected by its return in the model), then the guided planner fine-tuning it on the simulated
# robot, actor anchored, one run per seed. Offline steps use one thread; the robot runs need the
# machine alone (they plan in real time), so STAGE=offline stops before them. TAG names a variant
# (its agent and robot runs get it in their directory names), OFFLINE_ARGS are the MOPO run's extra
# overrides, DATA_SIZE the dataset's size= (200000).
#
#   docs/results/scripts/finetune_chain.sh walker2d 20 0 1 2        # task, control_hz, seeds
#   STAGE=offline nohup docs/results/scripts/finetune_chain.sh walker2d 20 > runs/chain.log 2>&1 &
#   TAG=-fit20 OFFLINE_ARGS="offline.fit_epochs=20" docs/results/scripts/finetune_chain.sh walker2d 20 0 1 2
#   DATA_SIZE=100000 OFFLINE_ARGS="offline.fit_epochs=20" docs/results/scripts/finetune_chain.sh hopper 20 0 1 2  # the hopper of
#       docs/results.md (runs/offline/hmr-50k-mopo-s0 there: a 20-epoch model)
#   AGENT=runs/offline/hopper-medium-replay-200k/mopo-s0 TAG=-200k docs/results/scripts/finetune_chain.sh hopper 20 0 1 2
#       (a finished offline agent of the same data instead of the 50k one; TAG keeps its robot runs apart)
#   AGENT=runs/offline/hopper-medium-replay-200k/mopo-s0 TAG=-200k-imagine ROBOT_ARGS="planner.value_imagination.real_ratio=0.05
#       planner.value_imagination.penalty=2.5 planner.value_imagination.uncertainty_elites_only=false
#       planner.value_imagination.uncertainty_include_reward=true" docs/results/scripts/finetune_chain.sh hopper 20 0 1 2
#       (ROBOT_ARGS: the robot runs' extra overrides; here the value keeps MOPO's recipe, imagined rows
#       with its penalty, as the agent was trained offline)
#   AGENT=runs/offline/hopper-medium-replay-200k/mopo-s0 TAG=-200k-policy PLANNER=mopo docs/results/scripts/finetune_chain.sh hopper 20 0 1 2
#       (PLANNER=mopo: the MOPO agent deployed as it is, its policy acting, fine-tuned in the background
#       with its own recipe, 2 updates a real transition, actor anchored; no planning around it)
# DATA (default data/<task>-medium-replay.hdf5) names the data file; an existing one is used as it is,
# so DATA_SIZE and OFFLINE_ARGS are refused where their outputs exist already without a TAG of their own.
set -euo pipefail
here=$(dirname "$0")
. "$here/work_queue.sh"
task=$1; hz=$2; shift 2
export OMP_NUM_THREADS=1
data=${DATA:-data/$task-medium-replay.hdf5}
agent=${AGENT:-runs/offline/$task-mr-50k-mopo${TAG:-}-s0}
mkdir -p runs; exec 7> "runs/.finetune-$task${TAG:-}.lock"; flock -n 7 || { echo "a chain for $task${TAG:-} is running already" >&2; exit 75; }
if [ -f "$data" ] && [ -n "${DATA_SIZE:-}" ]; then
  echo "$data exists: DATA_SIZE=$DATA_SIZE would not be used (give DATA=<another file>)" >&2; exit 1
fi
for given in AGENT DATA PLANNER; do  # (each changes what the robot runs are: they need a directory of their own)
  if [ -n "${!given:-}" ] && [ "$given=${!given}" != PLANNER=mppi ] && [ -z "${TAG:-}" ]; then
    echo "$given=${!given} needs a TAG=<variant> of its own (its runs would mix with the default ones)" >&2; exit 1
  fi
done
if [ -n "${ROBOT_ARGS:-}" ] && [ -z "${TAG:-}" ]; then
  echo "ROBOT_ARGS needs a TAG=<variant> of its own (its robot runs would mix with the default ones); without" \
       "AGENT=<offline run> the TAG names a new offline agent too" >&2; exit 1
fi
if [ -n "${OFFLINE_ARGS:-}" ] && [ -z "${TAG:-}" ] && [ -d "$agent" ]; then
  echo "$agent exists: OFFLINE_ARGS would not be used (give TAG=<variant> for a run of its own)" >&2; exit 1
fi
[ -f "$data" ] || python -m worldmodel.datasets make env="$task" quality=medium-replay size="${DATA_SIZE:-200000}" \
    out="$data" threads=1
if finished "$agent"; then :
elif [ -n "${AGENT:-}" ]; then echo "AGENT=$agent has not finished its offline run" >&2; exit 1
elif resumable "$agent"; then python -m worldmodel.run resume="$agent"
else
  python -m worldmodel.run planner=mopo env="$task" dataset="$data" env_steps=0 offline.updates=50000 \
      offline.select=model_score eval_episodes=10 seed=0 threads=1 run_dir="$agent" ${OFFLINE_ARGS:-}
fi
[ "${STAGE:-all}" = offline ] && exit 0
case ${PLANNER:-mppi} in
  mppi) deploy="guided"  # the guided MPPI around the agent's actor, its critics the learned value
        robot=(planner.horizon=5 planner.policy_samples=24 planner.policy_guided=true planner.noise_std=0.2
               planner.temperature=0.1 planner.propagation=tsinf planner.value_agent.actor_anchor=0.1) ;;
  mbpo|mopo|ravl) deploy="policy"  # the agent itself (its training settings, from its run)
        robot=(planner="$PLANNER" planner.agent.actor_anchor=0.1 planner.updates_per_step=2) ;;
  *) echo "PLANNER must be mppi (the default) or a Dyna planner (mbpo, mopo, ravl), got $PLANNER" >&2; exit 1 ;;
esac
for seed in "$@"; do
  out=runs/realtime/$task-mopo50k${TAG:-}-$deploy-ft20k-anchor0.1-${hz}hz-s$seed
  finished "$out" && continue
  if [ -f "$out/config.yaml" ]; then python -m planners.realtime resume="$out"; continue; fi  # (its log and agent.pt)
  python -m planners.realtime env="$task" control_hz="$hz" latency_ms=10 real_steps=20000 \
      pretrained="$agent" dataset="$data" planner.symmetric_sampling=true "${robot[@]}" train_every=1000 \
      eval_at=[0,5000] eval_episodes=10 seed="$seed" run_dir="$out" ${ROBOT_ARGS:-}
done
