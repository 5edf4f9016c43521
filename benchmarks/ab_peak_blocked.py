"""A/B of the CPU SUVpeak in one process: this checkout against an earlier commit's ``peak_cpu``.

    python benchmarks/ab_peak_blocked.py [REV [float32]]   # REV defaults to 4f5abdb (before blocks, strips)

The old module runs with the run scan of its own commit (see ``load_old``). Inputs are the
kernel benchmark's (600 x 200 x 200 int16, or the same values as float32; 10 and 60 blocky
labels); 4 and 2 mm spheres; old, new and the fused pass interleaved, 9 rounds, best time each.
Peaks are checked to agree first (1e-12).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from petfeat.kernels import peak_cpu
from petfeat.kernels.reduce_cpu import fused_reduce_cpu

from petfeat.features import sphere_offsets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_fused_word_scan import load_old  # noqa: E402
from conftest import SHAPE, blocky_codes  # noqa: E402


def main() -> None:
    rev = sys.argv[1] if len(sys.argv) > 1 else "4f5abdb"
    pixels = sys.argv[2] if len(sys.argv) > 2 else "int16"
    old = load_old(rev, "peak_cpu")
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 32000, SHAPE, dtype=np.int16).astype(pixels)
    scale, offset = rng.uniform(1e-4, 2e-4, SHAPE[0]), np.zeros(SHAPE[0])
    print(f"{SHAPE} {pixels}; best of 9 interleaved rounds; old = {rev}")
    for n_labels in (10, 60):
        codes = blocky_codes(np.random.default_rng(n_labels), SHAPE, n_labels)
        p = fused_reduce_cpu(stored, codes, scale, offset, n_labels + 1)
        ptr = np.concatenate([[0, 0], np.arange(1, n_labels + 1)]).astype(np.int64)
        regs = np.arange(n_labels, dtype=np.int64)
        for mm in (4.0, 2.0):
            args = (stored, codes, scale, offset, sphere_offsets((mm,) * 3), ptr, regs, p.max[1:], n_labels)
            (g_old, l_old), (g_new, l_new) = old.suv_peak_cpu(*args), peak_cpu.suv_peak_cpu(*args)
            for u, v in ((g_old, g_new), (l_old, l_new)):  # same regions without voxels; else equal to 1e-12
                assert np.array_equal(np.isfinite(u), np.isfinite(v))
                assert np.allclose(u[np.isfinite(u)], v[np.isfinite(v)], rtol=1e-12, atol=0)
            runs = {"fused": lambda: fused_reduce_cpu(stored, codes, scale, offset, n_labels + 1),
                    "old": lambda: old.suv_peak_cpu(*args), "new": lambda: peak_cpu.suv_peak_cpu(*args)}
            best = dict.fromkeys(runs, np.inf)
            for _ in range(9):
                for name, f in runs.items():
                    t = time.perf_counter()
                    f()
                    best[name] = min(best[name], time.perf_counter() - t)
            print(f"{n_labels} labels, {mm:.0f} mm: fused {best['fused'] * 1e3:.1f} ms  old {best['old'] * 1e3:.1f} ms"
                  f" ({best['old'] / best['fused']:.2f}x fused)  new {best['new'] * 1e3:.1f} ms"
                  f" ({best['new'] / best['fused']:.2f}x fused)  old/new {best['old'] / best['new']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
