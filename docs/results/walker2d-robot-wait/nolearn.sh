#!/bin/bash
# issue #11: the walker2d robot with learning off (the no-learning reference's command, docs/results.md,
# 2026-12-05), seed 0, 10k real steps, alone: every other python job on the machine is paused meanwhile.
#   nolearn.sh wait35 wait_ms=35   # act() waits for the plan from its own reading (lead 1 instead of 2)
#   nolearn.sh fixed               # after the episode-end fix (commit b8c2eff), otherwise as the reference
# Run from the repository root with its virtual environment active; rerun the same line to resume.
tag=$1; shift
export OMP_NUM_THREADS=1
P=$(pgrep -f "worldmodel.run|planner_episodes" | tr '\n' ' ')
[ -n "$P" ] && kill -STOP $P; trap "[ -n \"$P\" ] && kill -CONT $P" EXIT
out=runs/realtime/walker2d-mopo-l1.0-200k-guided-nolearn-$tag-20hz-s0
grep -qs '"status": "finished"' $out/summary.json && exit 0
[ -f $out/config.yaml ] && { python -m planners.realtime resume=$out > $out.log 2>&1; exit; }
python -m planners.realtime env=walker2d control_hz=20 latency_ms=10 real_steps=10000 "$@" \
    pretrained=runs/offline/w2d-mr-200k/mopo-l1.0-s1 dataset=data/walker2d-medium-replay.hdf5 planner.symmetric_sampling=true \
    planner.horizon=5 planner.policy_samples=24 planner.policy_guided=true planner.noise_std=0.2 planner.temperature=0.1 \
    planner.propagation=tsinf planner.value_agent.actor_anchor=0.1 train_every=1000000 planner.value_updates_per_step=0 \
    eval_at=[0] eval_episodes=5 seed=0 run_dir=$out > $out.log 2>&1
