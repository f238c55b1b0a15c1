#!/bin/bash
# MOPO penalty/rollout grid on walker2d-medium-replay, seed 0's converged model reused (one thread).
cd /work/main; . .venv/bin/activate
for lk in "1.0 1" "0.5 1" "1.0 5" "0.25 1"; do
  set -- $lk
  python -m worldmodel.run planner=mopo env=walker2d dataset=data/walker2d-medium-replay.hdf5 \
    model=runs/offline/walker2d-mr-50k-mopo-conv-s0/model.pt env_steps=0 offline.updates=50000 \
    offline.select=model_score eval_episodes=10 seed=0 threads=1 planner.penalty=$1 planner.rollout_length=$2 \
    run_dir=runs/offline/w2d-mr-grid/l$1-k$2-s0 > runs/offline/w2d-mr-grid/l$1-k$2-s0.log 2>&1
done
echo GRID_DONE
