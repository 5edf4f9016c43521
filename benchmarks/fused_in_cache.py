"""Compute cost of the CPU fused pass without memory traffic: ns per labelled voxel and per run.

    python benchmarks/fused_in_cache.py [REV ...]   # this checkout, and the kernel of each earlier REV

One thread, a 10-slice slab of the 60-label benchmark volume (1.2 MB of pixels and codes, which
stay in L2) reduced 60 times per timing, kernels interleaved, best of 9. The whole-volume
benchmarks mix this cost with the memory reads; here a change to the per-run work shows alone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from petfeat.kernels import reduce_cpu
from petfeat.kernels.threads import set_cpu_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_fused_word_scan import int_partials, load_old  # noqa: E402
from conftest import SHAPE, blocky_codes  # noqa: E402

REPEATS = 60


def main() -> None:
    kernels = {"this checkout": reduce_cpu} | {rev: load_old(rev) for rev in sys.argv[1:]}
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 32000, SHAPE, dtype=np.int16)
    scale = rng.uniform(1e-4, 2e-4, SHAPE[0])
    codes = blocky_codes(np.random.default_rng(60), SHAPE, 60)
    frac = (codes != 0).mean(axis=(1, 2))  # a slab as labelled as the whole volume
    z0 = min(int(np.argmin(np.abs(frac - (codes != 0).mean()))), SHAPE[0] - 10)
    st, co = np.ascontiguousarray(stored[z0:z0 + 10]), np.ascontiguousarray(codes[z0:z0 + 10])
    sc, of = scale[z0:z0 + 10], np.zeros(10)
    rows = co.reshape(-1, SHAPE[2])
    starts = (rows[:, 1:] != rows[:, :-1]) & (rows[:, 1:] != 0)
    n_runs = int((rows[:, 0] != 0).sum() + starts.sum())
    n_vox = int((co != 0).sum())
    set_cpu_threads(1)
    best = dict.fromkeys(kernels, np.inf)
    for m in kernels.values():
        int_partials(m, st, co, sc, of, 61, 4)
    for _ in range(9):
        for name, m in kernels.items():
            t = time.perf_counter()
            for _ in range(REPEATS):
                int_partials(m, st, co, sc, of, 61, 4)
            best[name] = min(best[name], (time.perf_counter() - t) / REPEATS)
    print(f"slab z {z0}..{z0 + 10}: {n_vox} labelled voxels in {n_runs} runs; 1 thread, best of 9 x {REPEATS}")
    for name, t in best.items():
        print(f"{name:>16s}: {t * 1e3:.3f} ms  {t / n_vox * 1e9:.3f} ns/voxel  {t / n_runs * 1e9:.1f} ns/run")


if __name__ == "__main__":
    main()
