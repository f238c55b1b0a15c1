#!/bin/bash
# issue #11 at 50 Hz: the walker2d fine-tuning command of docs/results.md (lambda 1.0 agent, guided planner,
# anchored actor, 10 ms latency) at control_hz=50, 20k real steps, evaluated at the switch, 1k, 5k and 20k;
# seeds 0-2, each alone: every other python job on the machine is paused meanwhile. Rerun to resume.
# TAG=-fixed: the runs after the episode-end fix (commit b8c2eff); without: the runs before it.
# Run from the repository root with its virtual environment active.
export OMP_NUM_THREADS=1
P=$(pgrep -f "worldmodel.run|planner_episodes" | tr '\n' ' ')
[ -n "$P" ] && kill -STOP $P; trap "[ -n \"$P\" ] && kill -CONT $P" EXIT
for seed in ${SEEDS:-0 1 2}; do
  out=runs/realtime/walker2d-mopo-l1.0-200k-guided-ft20k-anchor0.1-50hz${TAG:-}-s$seed
  grep -qs '"status": "finished"' $out/summary.json && continue
  if [ -f $out/config.yaml ]; then python -m planners.realtime resume=$out > $out.log 2>&1; continue; fi
  python -m planners.realtime env=walker2d control_hz=50 latency_ms=10 real_steps=20000 \
      pretrained=runs/offline/w2d-mr-200k/mopo-l1.0-s1 dataset=data/walker2d-medium-replay.hdf5 planner.symmetric_sampling=true \
      planner.horizon=5 planner.policy_samples=24 planner.policy_guided=true planner.noise_std=0.2 planner.temperature=0.1 \
      planner.propagation=tsinf planner.value_agent.actor_anchor=0.1 train_every=1000 \
      eval_at=[0,1000,5000] eval_episodes=5 seed=$seed run_dir=$out > $out.log 2>&1
done
