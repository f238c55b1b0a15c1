#!/bin/bash
# walker2d robot, the fine-tuning command of docs/results.md (learning on), 1500 real steps: when does the collapse start?
# run from the repository root with its virtual environment active (as they ran); the guided
# planner's flags are finetune_chain.sh's
P=$(pgrep -f "worldmodel.run" | tr '\n' ' ')
kill -STOP $P; trap "kill -CONT $P" EXIT
out=runs/realtime/w2d-learn-${TAG:-a}-s0
python -m planners.realtime env=walker2d control_hz=20 latency_ms=10 real_steps=${STEPS:-1500} \
      pretrained=${AGENT:-runs/offline/walker2d-mr-50k-mopo-fit20-s0} dataset=data/walker2d-medium-replay.hdf5 planner.symmetric_sampling=true planner.horizon=5 \
      planner.policy_samples=24 planner.policy_guided=true planner.noise_std=0.2 planner.temperature=0.1 \
      planner.propagation=tsinf planner.value_agent.actor_anchor=0.1 train_every=1000 eval_episodes=3 seed=0 run_dir=$out $EXTRA > $out.log 2>&1
grep -h '"kind": "episode"' $out/metrics.jsonl | cut -c1-120
