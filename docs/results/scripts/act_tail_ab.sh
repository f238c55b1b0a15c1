#!/usr/bin/env bash
# Issue #11's act() tail on the simulated hopper: the 200k-update MOPO agent of hopper-medium-replay
# (seed 0) deployed as a policy and fine-tuned in the background (the 20k rows' settings), 3,000
# robot steps per arm, one arm after another, every other worldmodel job paused (SIGSTOP) while
# it runs. Prints, per arm (robot_windows.py --act), the p99 of act()'s latency over the last 1,000 acts as the loop logs it
# each second (metrics.jsonl), from real step 1,000 on: median, min and max over those windows.
# Each run is killed once its loop is over (the learner's owed updates and the final evaluation
# are not needed here).
#
#   docs/results/scripts/act_tail_ab.sh default switch=0.5 switch=0.1 idle nolearn fifo
#
# arms: default; switch=<ms> (switch_interval_ms, the control process's GIL switch interval);
# idle (the planning and learning workers under SCHED_IDLE instead of SCHED_BATCH, through
# act_timing.py --idle); nolearn (no refits nor agent updates); fifo (control_priority=50: the control
# loop and the simulated robot's threads under SCHED_FIFO). Run directories: /tmp/act-tail-<arm>.
# Every arm but fifo runs under ordinary scheduling (control_priority=null; the command's default is auto).
# BUSY=1 leaves the other worldmodel jobs running (a machine busier than the robot's workers).
set -uo pipefail
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1
paused=$([ "${BUSY:-0}" = 1 ] || pgrep -f "worldmodel.run|worldmodel.datasets|planners.edge_of_reach" | tr '\n' ' ')
[ -n "$paused" ] && kill -STOP $paused
trap '[ -n "$paused" ] && kill -CONT $paused' EXIT
steps=${STEPS:-3000}
for arm in "$@"; do
  d=/tmp/act-tail-$arm; rm -rf "$d"
  run=(python -m planners.realtime); extra=(planner.updates_per_step=2 train_every=1000 control_priority=null)
  case $arm in
    default) ;;
    switch=*) extra+=(switch_interval_ms="${arm#switch=}") ;;
    idle) run=(python docs/results/scripts/act_timing.py --idle) ;;
    nolearn) extra=(planner.updates_per_step=0 train_every=1000000 control_priority=null) ;;
    fifo) extra+=(control_priority=50) ;;
    *) echo "unknown arm $arm (default, switch=<ms>, idle, nolearn, fifo)" >&2; exit 1 ;;
  esac
  "${run[@]}" env=hopper control_hz=20 latency_ms=10 real_steps="$steps" \
    pretrained=runs/offline/hopper-medium-replay-200k/mopo-s0 dataset=data/hopper-medium-replay.hdf5 \
    planner=mopo planner.symmetric_sampling=true planner.agent.actor_anchor=0.1 "${extra[@]}" \
    eval_at=[] eval_episodes=1 seed=2 run_dir="$d" > "$d.log" 2>&1 &
  pid=$!
  until grep -qs "$steps/$steps" "$d.log" || ! kill -0 $pid 2> /dev/null; do sleep 2; done
  sleep 3; pkill -9 -f "run_dir=$d"; wait $pid 2> /dev/null
  python docs/results/scripts/robot_windows.py --act "$d"
done
