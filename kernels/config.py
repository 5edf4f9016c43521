"""Tunables of the kernels, in one place (threads per block, values per thread, code limits).

Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the launch shapes are made small so
that the simulator, which runs every thread as a Python thread, stays fast in CI.
"""

from __future__ import annotations

import os

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"

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
#: Integer GPU kernel: register cap per thread (0: the compiler's choice, 88 on sm_90; 64 fits 4 blocks per SM).
GPU_MAX_REGISTERS = int(os.environ.get("PETFEAT_CUDA_MAX_REGISTERS", 0))
#: The CPU fused pass's vector-IR helpers (``run_moments``, ``prefetch``); ``PETFEAT_LLVM_IR=0`` takes plain loops.
LLVM_IR = os.environ.get("PETFEAT_LLVM_IR", "1") != "0"
#: CPU chunks per thread (load balance of a kernel's chunks over threads, :mod:`petfeat.kernels.threads`).
CPU_CHUNKS_PER_THREAD = 4
#: Chunks of the CPU fused pass, whatever the thread count: its per-chunk moments merge in one order, so a
#: study's numbers are the same bits on 1 thread, on 2 or on 64 (a few chunks per thread up to 16 threads).
CPU_FUSED_CHUNKS = 64
#: How many image rows ahead the CPU fused pass prefetches pixels (after a row that held a region).
CPU_PREFETCH_ROWS = 8
