#!/bin/bash
# MOPO lambda 1.0, k 1 (the grid's pick), bf16 agent, 200k updates on walker2d-medium-replay; seed $1, model from $2; one thread.
cd /work/main; . .venv/bin/activate
python -m worldmodel.run planner=mopo env=walker2d dataset=data/walker2d-medium-replay.hdf5 model=$2 env_steps=0 \
  offline.updates=200000 offline.select=model_score eval_episodes=10 seed=$1 threads=1 planner.penalty=1.0 \
  planner.rollout_length=1 planner.agent.precision=bf16 run_dir=runs/offline/w2d-mr-200k/mopo-l1.0-s$1 \
  > runs/offline/w2d-mr-200k/mopo-l1.0-s$1.log 2>&1
