"""A/B in one process: the SUVpeak interior path per sphere offset vs per row run (integer pixels).

    python benchmarks/ab_peak_row_runs.py

600 x 200 x 200 int16, 10 blocky labels; the same compiled kernel with ``integer=False`` (one
multiply-add and NaN check per offset) and ``integer=True`` (exact integer sums per run of offsets
along x, then one multiply-add per run). Prints the best of 5 per variant, twice, interleaved.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numba
import numpy as np
from petfeat.kernels import peak_cpu as rc

from petfeat.features import sphere_offsets

sys.path.insert(0, str(Path(__file__).parent))
from blocky import blocky_codes, blocky_volume  # noqa: E402


def main():
    rng = np.random.default_rng(0)
    stored, scale, offset = blocky_volume(rng)
    codes = blocky_codes(rng, 10)
    ptr = np.concatenate([[0, 0], np.arange(1, 11)]).astype(np.int64)  # code k -> region k - 1
    regs = np.arange(10, dtype=np.int64)
    rmax = np.full(10, np.inf)
    n_chunks = numba.get_num_threads() * rc.CPU_CHUNKS_PER_THREAD
    for mm in (4.0, 2.0):
        offs = np.ascontiguousarray(sphere_offsets((mm, mm, mm)), np.int64)
        runs = rc._row_segments(offs)
        best, peaks = {False: [], True: []}, {}
        for integer in (False, True, False, True):
            args = (stored, codes, scale, offset, offs, *runs, integer, ptr, regs, rmax, 10, n_chunks)
            rc._peak_direct(*args)
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                glob, _loc = rc._peak_direct(*args)
                times.append(time.perf_counter() - t0)
            best[integer].append(min(times))
            peaks[integer] = glob.max(axis=0)
        diff = float(np.max(np.abs(peaks[True] / peaks[False] - 1)))
        print(f"{mm} mm ({len(offs)} offsets, {len(runs[3])} runs): per offset "
              f"{', '.join(f'{v:.3f}' for v in best[False])} s; per run {', '.join(f'{v:.3f}' for v in best[True])} s; "
              f"speedup {min(best[False]) / min(best[True]):.2f}; max relative difference {diff:.1e}")


if __name__ == "__main__":
    main()
