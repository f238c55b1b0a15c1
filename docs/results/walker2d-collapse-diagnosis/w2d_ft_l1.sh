#!/bin/bash
# issue #11 on walker2d with a positive-valued agent: MOPO lambda 1.0 (200k updates, seed 1's converged model,
# model-selected actor) fine-tuned on the simulated robot, 3 seeds x 10k real steps, alone (the offline runs paused)
# run from the repository root with its virtual environment active (as they ran); the guided
# planner's flags are finetune_chain.sh's
export OMP_NUM_THREADS=1
P=$(pgrep -f "worldmodel.run" | tr '\n' ' ')
kill -STOP $P; trap "kill -CONT $P" EXIT
for seed in 0 1 2; do
  out=runs/realtime/walker2d-mopo-l1.0-200k-guided-ft10k-anchor0.1-20hz-s$seed
  grep -qs '"status": "finished"' $out/summary.json && continue
  if [ -f $out/config.yaml ]; then python -m planners.realtime resume=$out > $out.log 2>&1; continue; fi
  python -m planners.realtime env=walker2d control_hz=20 latency_ms=10 real_steps=10000 \
      pretrained=runs/offline/w2d-mr-200k/mopo-l1.0-s1 dataset=data/walker2d-medium-replay.hdf5 planner.symmetric_sampling=true \
      planner.horizon=5 planner.policy_samples=24 planner.policy_guided=true planner.noise_std=0.2 planner.temperature=0.1 \
      planner.propagation=tsinf planner.value_agent.actor_anchor=0.1 train_every=1000 \
      eval_at=[0] eval_episodes=5 seed=$seed run_dir=$out > $out.log 2>&1
done
