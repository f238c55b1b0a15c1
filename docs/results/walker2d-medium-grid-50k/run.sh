#!/bin/bash
# MOPO lambda/k grid on walker2d-medium (ae233efcc03f5c63), seed 0's bf16-fitted converged model used as it is; bf16 agent; 50k updates; one thread
cd /work/main; . .venv/bin/activate
python -m worldmodel.run planner=mopo env=walker2d dataset=data/walker2d-medium.hdf5 \
  model=runs/offline/walker2d-medium-model-bf16-s0/model.pt env_steps=0 offline.updates=50000 \
  offline.select=model_score eval_episodes=10 seed=0 threads=1 planner.penalty=$1 planner.rollout_length=$2 \
  planner.agent.precision=bf16 run_dir=runs/offline/w2d-m-grid/l$1-k$2-s0 > runs/offline/w2d-m-grid/l$1-k$2-s0.log 2>&1
