import itertools, os, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1"}
cases = [(bm, w, p, ga, me, B) for (bm, w), p, ga, me, B in itertools.product(
    [(64, 8), (32, 4), (128, 8)], ["tf32", "bf16"], ["0", "1"], ["0", "1"], ["103", "4096"])]
def run(c):
    r = subprocess.run([sys.executable, "docs/results/gpu-h200-2026-12-04/scripts/fused_case.py", *map(str, c)], env=env, capture_output=True, text=True, timeout=120)
    lines = [l for l in (r.stdout + r.stderr).splitlines() if l.startswith(("OK", "WRONG", "FAIL"))]
    return lines[-1] if lines else f"CRASH {c} rc={r.returncode} {(r.stderr or '')[-300:]}"
with ThreadPoolExecutor(8) as ex:
    for line in ex.map(run, cases):
        print(line, flush=True)
