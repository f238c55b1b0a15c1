#!/bin/bash
# RAVL (EDAC agent, bf16) 200k updates on walker2d-medium-replay, seed $1, the converged fp32 model $2 used as it is; one thread; resumable
cd /work/main; . .venv/bin/activate
python -m worldmodel.run planner=ravl env=walker2d dataset=data/walker2d-medium-replay.hdf5 model=$2 env_steps=0 \
  offline.updates=200000 offline.select=model_score eval_episodes=10 seed=$1 threads=1 planner.agent.precision=bf16 \
  run_dir=runs/offline/w2d-mr-200k/ravl-s$1 > runs/offline/w2d-mr-200k/ravl-s$1.log 2>&1
