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
set -euo pipefail
finished() { grep -qs '"status": "finished"' "$1/summary.json"; }
task=$1; hz=$2; shift 2
export OMP_NUM_THREADS=1
data=data/$task-medium-replay.hdf5
agent=runs/offline/$task-mr-50k-mopo${TAG:-}-s0
[ -f "$data" ] || python -m worldmodel.datasets make env="$task" quality=medium-replay size="${DATA_SIZE:-200000}" \
    out="$data" threads=1
if finished "$agent"; then :
elif [ -f "$agent/config.yaml" ]; then python -m worldmodel.run resume="$agent"
else
  python -m worldmodel.run planner=mopo env="$task" dataset="$data" env_steps=0 offline.updates=50000 \
      offline.select=model_score eval_episodes=10 seed=0 threads=1 run_dir="$agent" ${OFFLINE_ARGS:-}
fi
[ "${STAGE:-all}" = offline ] && exit 0
for seed in "$@"; do
  out=runs/realtime/$task-mopo50k${TAG:-}-guided-ft20k-anchor0.1-${hz}hz-s$seed
  finished "$out" && continue
  if [ -f "$out/config.yaml" ]; then python -m planners.realtime resume="$out"; continue; fi
  python -m planners.realtime env="$task" control_hz="$hz" latency_ms=10 real_steps=20000 \
      pretrained="$agent" dataset="$data" planner.symmetric_sampling=true planner.horizon=5 \
      planner.policy_samples=24 planner.policy_guided=true planner.noise_std=0.2 planner.temperature=0.1 \
      planner.propagation=tsinf planner.value_agent.actor_anchor=0.1 train_every=1000 \
      eval_at=[0,5000] eval_episodes=10 seed="$seed" run_dir="$out"
done
