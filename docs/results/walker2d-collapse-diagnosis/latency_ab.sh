#!/bin/bash
# walker2d robot, learning off: the same agent with 0 and 10 ms latency (is the collapse the delay compensation?)
# run from the repository root with its virtual environment active (as they ran); the guided
# planner's flags are finetune_chain.sh's
P=$(pgrep -f "worldmodel.run" | tr '\n' ' ')
kill -STOP $P; trap "kill -CONT $P" EXIT
for lat in ${LATS:-0 10}; do
  out=runs/realtime/w2d-nolearn-lat$lat-s0
  python -m planners.realtime env=walker2d control_hz=20 latency_ms=$lat jitter_ms=0 real_steps=1500 \
      pretrained=runs/offline/walker2d-mr-50k-mopo-fit20-s0 planner.horizon=5 \
      planner.policy_samples=24 planner.policy_guided=true planner.noise_std=0.2 planner.temperature=0.1 \
      planner.propagation=tsinf train_every=1000000 planner.value_updates_per_step=0 eval_episodes=3 seed=0 run_dir=$out > $out.log 2>&1
  python3 -c "
import json;d=json.load(open('$out/summary.json'));print('$lat', {k:d.get(k) for k in ('final_eval_return','act_latency_p99_ms','fresh_rate','fallback_rate','deadline_miss_rate','plan_lead','episodes','robot_return_mean')})"
done
