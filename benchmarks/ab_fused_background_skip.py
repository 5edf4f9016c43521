"""Fused CPU pass over the floor on blocky labels (10 labels, 4% labelled; 60 labels, 35%), two rounds.

    python benchmarks/ab_fused_background_skip.py LABEL

Run it on two checkouts (before/after a kernel change) back to back; prints the medians of 9 calls.
"""

import sys
import time
from pathlib import Path

import numpy as np
from petfeat.kernels.reduce_cpu import fused_reduce_cpu

sys.path.insert(0, str(Path(__file__).parent))
from blocky import blocky_codes, blocky_volume  # noqa: E402
from test_bench_kernels import _floor  # noqa: E402

rng = np.random.default_rng(0)
stored, scale, offset = blocky_volume(rng)
codes = blocky_codes(rng, 10)
codes60 = blocky_codes(rng, 60, box=(60, 60, 60))

def best(f, *a):
    f(*a)
    ts = []
    for _ in range(9):
        t = time.perf_counter()
        f(*a)
        ts.append(time.perf_counter() - t)
    return np.median(ts)


out = []
for _ in range(2):
    fl = best(_floor, stored, codes)
    out.append((fl, best(fused_reduce_cpu, stored, codes, scale, offset, 11) / fl,
                best(fused_reduce_cpu, stored, codes60, scale, offset, 61) / fl))
print(sys.argv[1] if len(sys.argv) > 1 else "", " ".join(f"floor {a * 1e3:.1f} ms fused10 {b:.2f}x fused60 {c:.2f}x"
                                                        for a, b, c in out),
      f"labelled {(codes > 0).mean():.3f} {(codes60 > 0).mean():.3f}")
