# sourced by the device calls: the carried wheels (tensordict/torchrl matching the image's torch 2.11, mujoco, gymnasium, omegaconf)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MUJOCO_GL=disable
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv; nproc;
  python3 -c "import sys,torch,triton,tensordict,torchrl,mujoco,gymnasium; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'tensordict', tensordict.__version__, 'torchrl', torchrl.__version__, 'mujoco', mujoco.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())"; } 2>&1 | tee -a $OUT/env.txt
