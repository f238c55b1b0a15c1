"""One-off GPU probe: where ours and baddbmm spend device time (torch.profiler), per case."""
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from kernels import bench as kb

cases = [("ours", 65536, 200, "tf32", "forward"), ("baddbmm", 65536, 200, "tf32", "forward"),
         ("ours", 65536, 200, "bf16", "forward+backward"), ("baddbmm", 65536, 200, "bf16", "forward+backward"),
         ("ours", 1, 200, "tf32", "forward"), ("baddbmm", 1, 200, "tf32", "forward"),
         ("ours", 256, 512, "tf32", "forward"), ("ours_graph", 1, 200, "tf32", "forward")]
print(kb.launch_floor("cuda"))
def probe(v, B, h, dt, p):
    c = kb.Case(v, 7, B, h, dt, p)
    call, n = kb.make_call(c, "cuda")
    for i in range(3):
        call(i % n)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(10):
        call(i % n)
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t) / 10 * 1e3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(5):
            call(i % n)
        torch.cuda.synchronize()
    ev = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0) > 0 and "CUDA" in str(e.device_type)]
    dev = sum(e.device_time_total for e in ev) / 5 / 1e3
    print(f"\n### {v} {dt} {p} B={B} h={h}: wall {wall:.3f} ms/call (back to back), device kernels {dev:.3f} ms/call")
    for e in sorted(ev, key=lambda e: -e.device_time_total)[:8]:
        print(f"  {e.device_time_total / 5 / 1e3:8.3f} ms  x{e.count // 5:<3d} {e.key[:110]}")
    sys.stdout.flush()


for case in cases:
    try:
        probe(*case)
    except Exception as e:
        print("probe failed:", case, repr(e))
