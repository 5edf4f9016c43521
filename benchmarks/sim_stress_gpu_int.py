"""Stress the GPU integer kernel on Numba's CUDA simulator: many launches, each checked against the oracle.

Each seed runs the 16 cases of ``tests/test_kernels_gpu_int.py`` (int16/uint16 x 8 layouts) on fresh
random data; a launch that raises, hangs (20 s) or disagrees with the float64 oracle is printed.
This is how the simulator's shared-array race was counted (4 of ~1280 launches before the lock in
``petfeat.kernels.simulator``, none in 2176 after)::

    python benchmarks/sim_stress_gpu_int.py --seeds 100 200
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import naive  # noqa: E402
import numpy as np  # noqa: E402
import test_kernels_gpu_int as cases  # noqa: E402

from petfeat import kernels  # noqa: E402

LAYOUTS = ["stripes_1", "stripes_8", "stripes_9", "stripes_100", "stripes_259", "speckle", "organs", "one_voxel"]


def _hang(*_):
    raise TimeoutError("no result in 20 s (a hung block)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs=2, default=[0, 10], metavar=("FIRST", "STOP"))
    args = p.parse_args(argv)
    signal.signal(signal.SIGALRM, _hang)
    launches = failures = 0
    for seed in range(*args.seeds):
        for dtype in (np.int16, np.uint16):
            for layout in LAYOUTS:
                rng = np.random.default_rng(seed)
                stored = cases._stored(rng, cases.SHAPE, dtype)
                codes, n_codes = cases._codes(rng, cases.SHAPE, layout)
                scale = rng.uniform(1e-4, 2e-3, cases.SHAPE[0])
                scale[1] *= -1
                offset = rng.uniform(-0.01, 0.01, cases.SHAPE[0])
                launches += 1
                signal.alarm(20)
                try:
                    got = kernels.fused_reduce(stored, codes, scale, offset, n_codes, backend="gpu")
                    naive.assert_partials_match(got, stored, codes, scale, offset, n_codes, 1e-6)
                except BaseException:  # noqa: BLE001 - every kind of failure is counted and shown
                    failures += 1
                    print(f"FAIL seed {seed} {np.dtype(dtype).name} {layout}", flush=True)
                    traceback.print_exc()
                finally:
                    signal.alarm(0)
        print(f"seed {seed}: {launches} launches, {failures} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
