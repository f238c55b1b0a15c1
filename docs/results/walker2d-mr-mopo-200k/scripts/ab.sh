#!/bin/bash
# bf16 agent against fp32 on walker2d-medium-replay (MOPO lambda 2.5, k 1, 50k updates), the converged models reused; one thread.
cd /work/main; . .venv/bin/activate
for s in 0 1; do for prec in bf16 fp32; do
  python -m worldmodel.run planner=mopo env=walker2d dataset=data/walker2d-medium-replay.hdf5 \
    model=runs/offline/walker2d-mr-50k-mopo-conv-s$s/model.pt env_steps=0 offline.updates=50000 \
    offline.select=model_score eval_episodes=10 seed=$s threads=1 planner.agent.precision=$prec \
    run_dir=runs/offline/w2d-mr-ab/$prec-s$s > runs/offline/w2d-mr-ab/$prec-s$s.log 2>&1
done; done
echo AB_DONE
