"""A/B in one process: SUVpeak by the direct kernel (every sphere voxel) vs the separable kernel.

    python benchmarks/ab_peak_separable.py

The kernel benchmarks' volume (600 x 200 x 200 int16, 10 and 60 blocky labels from
``benchmarks/conftest.py``), spheres at 4 mm and 2 mm; the fused pass is timed in the same loop
for the ratio the issue's goal is stated in. Prints the best of 5 per variant, twice, interleaved,
and the largest relative difference between the two kernels' peaks.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from petfeat.kernels import peak_cpu
from petfeat.kernels.reduce_cpu import fused_reduce_cpu

from petfeat.features import sphere_offsets

sys.path.insert(0, str(Path(__file__).parent))
from conftest import SHAPE, blocky_codes  # noqa: E402


def best_of(f, repeats=5):
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 32000, SHAPE, dtype=np.int16)
    scale = rng.uniform(1e-4, 2e-4, SHAPE[0])
    offset = np.zeros(SHAPE[0])
    for n_labels in (10, 60):
        codes = blocky_codes(np.random.default_rng(n_labels), SHAPE, n_labels)
        n_codes = n_labels + 1
        p = fused_reduce_cpu(stored, codes, scale, offset, n_codes)
        ptr = np.concatenate([[0, 0], np.arange(1, n_codes)]).astype(np.int64)
        regs = np.arange(n_labels, dtype=np.int64)
        rmax = p.max[1:]
        for mm in (4.0, 2.0):
            offs = sphere_offsets((mm, mm, mm))
            seg = peak_cpu._row_segments(offs)
            plan = peak_cpu.sphere_plan(offs)
            sums = peak_cpu.sums_dtype(stored, plan)
            n_chunks = peak_cpu.peak_chunks(SHAPE[0], int(np.abs(plan[0]).max()))

            def direct():
                return peak_cpu._peak_direct(stored, codes, scale, offset, offs, *seg, True, ptr, regs, rmax,
                                             n_labels, n_chunks)

            def separable():
                return peak_cpu._peak_separable(stored, codes, scale, offset, *plan, np.diff(ptr) > 0, ptr, regs,
                                                rmax, n_labels, n_chunks, np.zeros(1, sums),
                                                peak_cpu.PLANE_BLOCK, peak_cpu.RING_BYTES,
                                                *peak_cpu.code_words(codes, np.diff(ptr) > 0))

            def fused():
                return fused_reduce_cpu(stored, codes, scale, offset, n_codes)

            t = {"fused": [], "direct": [], "separable": []}
            for _ in range(2):
                for name, f in (("fused", fused), ("direct", direct), ("separable", separable)):
                    t[name].append(best_of(f))
            g_d, l_d = (a.max(axis=0) for a in direct())
            g_s, l_s = (a.max(axis=0) for a in separable()[:2])
            ok = np.isfinite(g_d)  # a region whose label later boxes covered has no voxel: -inf in both
            assert np.array_equal(ok, np.isfinite(g_s)) and np.array_equal(np.isfinite(l_d), np.isfinite(l_s))
            diff = max(float(np.max(np.abs(g_s[ok] / g_d[ok] - 1))), float(np.max(np.abs(l_s[ok] / l_d[ok] - 1))))
            fu, di, se = (min(t[k]) for k in ("fused", "direct", "separable"))
            print(f"{n_labels} labels, {mm} mm ({len(offs)} sphere voxels): fused "
                  f"{', '.join(f'{v * 1e3:.1f}' for v in t['fused'])} ms; direct "
                  f"{', '.join(f'{v * 1e3:.1f}' for v in t['direct'])} ms; separable "
                  f"{', '.join(f'{v * 1e3:.1f}' for v in t['separable'])} ms; direct/separable {di / se:.1f}; "
                  f"separable/fused {se / fu:.2f}; max relative difference {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
