"""Tunables of the kernels, in one place (threads per block, values per thread, code limits).

Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the launch shapes are made small so
that the simulator, which runs every thread as a Python thread, stays fast in CI.
"""

from __future__ import annotations

import contextlib
import os
import sys

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


@contextlib.contextmanager
def simulator_pace():
    """While a simulated kernel runs, hand the GIL between threads every 0.1 ms instead of 5 ms.

    The simulator runs each GPU thread as a Python thread, and a block barrier waits until every
    one of them has run; at the default interval each barrier costs milliseconds of waiting
    (integer kernel on a 32768-voxel tile: 50 s -> 4 s; the GPU batch test: 39 s -> 21 s).
    Does nothing on a device; the interval is restored afterwards.
    """
    if not SIMULATOR:
        yield
        return
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        yield
    finally:
        sys.setswitchinterval(before)

#: Threads per CUDA block of the fused reduction and the SUVpeak kernels.
THREADS_PER_BLOCK = int(os.environ.get("PETFEAT_CUDA_TPB", 32 if SIMULATOR else 256))
#: Voxels each thread reduces per tile of the fused reduction (two passes per tile).
VALUES_PER_THREAD = int(os.environ.get("PETFEAT_CUDA_VPT", 3 if SIMULATOR else 16))
#: Largest number of codes the GPU reduction holds in shared memory (codes are label combinations).
MAX_GPU_CODES = int(os.environ.get("PETFEAT_CUDA_MAX_CODES", 64 if SIMULATOR else 384))
#: Resident blocks per multiprocessor for the persistent grid.
BLOCKS_PER_SM = 8
#: Integer GPU kernel: groups of 8 consecutive voxels (one 64-bit word of uint8 codes) per lane and step.
GPU_GROUPS_PER_LANE = int(os.environ.get("PETFEAT_CUDA_GROUPS", 1 if SIMULATOR else 4))
#: Integer GPU kernel: block steps per tile (a tile is reduced in shared memory, then merged once).
GPU_STEPS_PER_TILE = int(os.environ.get("PETFEAT_CUDA_STEPS", 2 if SIMULATOR else 4))
#: CPU chunks per thread (load balance of the parallel loop over rows).
CPU_CHUNKS_PER_THREAD = 4
#: How many image rows ahead the CPU fused pass prefetches pixels (after a row that held a region).
CPU_PREFETCH_ROWS = 8
