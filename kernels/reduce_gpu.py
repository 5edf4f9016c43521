"""GPU (Numba CUDA) twins of :mod:`petfeat.kernels.reduce_cpu`: same inputs, same partials.

The fused reduction runs a persistent grid. Each block walks tiles of
``THREADS_PER_BLOCK x VALUES_PER_THREAD`` voxels (coalesced: thread ``t`` takes voxels
``t, t + TPB, ...`` of the tile); a thread keeps its voxels' SUV and code in registers and the
tile is reduced in two passes in shared memory: first count, sum, min and max, then the squared
deviations from the tile mean and the smallest index of the tile's min and max. In both passes a
thread accumulates runs of equal codes in registers and flushes a run with one set of
shared-memory atomics, so spatially coherent labels (the common case) cost few atomics. The tile's (count, mean, M2) is merged into the block's running
partial with Chan's formula, and each block writes one partial per code. The host merges the
blocks' partials with the same :func:`~petfeat.kernels.partials.merge_stack` as the CPU chunks.
So the GPU reads every voxel once from device memory and never accumulates raw sums of squares.

This module imports ``numba.cuda`` only; CuPy, when present, supplies device arrays through the
CUDA array interface.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64, int32, int64

from .config import BLOCKS_PER_SM, MAX_GPU_CODES, THREADS_PER_BLOCK, VALUES_PER_THREAD
from .partials import INDEX_NONE, Partials, merge_stack

TPB = THREADS_PER_BLOCK
VPT = VALUES_PER_THREAD
MAXC = MAX_GPU_CODES
_BIG = INDEX_NONE


@cuda.jit
def _fused_kernel(stored, codes, scale, offset, slice_size, n, n_codes,
                  o_cnt, o_mean, o_m2, o_min, o_max, o_amin, o_amax, o_nan):  # pragma: no cover
    t_cnt = cuda.shared.array(MAXC, int32)
    t_sum = cuda.shared.array(MAXC, float64)
    t_m2 = cuda.shared.array(MAXC, float64)
    t_min = cuda.shared.array(MAXC, float64)
    t_max = cuda.shared.array(MAXC, float64)
    t_amin = cuda.shared.array(MAXC, int64)
    t_amax = cuda.shared.array(MAXC, int64)
    r_cnt = cuda.shared.array(MAXC, int64)
    r_mean = cuda.shared.array(MAXC, float64)
    r_m2 = cuda.shared.array(MAXC, float64)
    r_min = cuda.shared.array(MAXC, float64)
    r_max = cuda.shared.array(MAXC, float64)
    r_amin = cuda.shared.array(MAXC, int64)
    r_amax = cuda.shared.array(MAXC, int64)
    r_nan = cuda.shared.array(MAXC, int64)
    xs = cuda.local.array(VPT, float64)
    cs = cuda.local.array(VPT, int32)

    tid = cuda.threadIdx.x
    c = tid
    while c < n_codes:
        t_cnt[c] = 0
        t_sum[c] = 0.0
        t_m2[c] = 0.0
        t_min[c] = math.inf
        t_max[c] = -math.inf
        t_amin[c] = _BIG
        t_amax[c] = _BIG
        r_cnt[c] = 0
        r_mean[c] = 0.0
        r_m2[c] = 0.0
        r_min[c] = math.inf
        r_max[c] = -math.inf
        r_amin[c] = _BIG
        r_amax[c] = _BIG
        r_nan[c] = 0
        c += TPB
    cuda.syncthreads()

    tile = TPB * VPT
    n_tiles = (n + tile - 1) // tile
    t = cuda.blockIdx.x
    while t < n_tiles:
        base = t * tile
        # pass 1: load and convert; per-thread runs of equal codes flush count/sum/min/max
        rc = -1
        rn = 0
        rs = 0.0
        rmn = math.inf
        rmx = -math.inf
        for j in range(VPT + 1):
            code = -1
            v = 0.0
            if j < VPT:
                i = base + j * TPB + tid
                if i < n:
                    code = int32(codes[i])
                    if code > 0:
                        z = i // slice_size
                        v = stored[i] * scale[z] + offset[z]
                        if v != v:
                            cuda.atomic.add(r_nan, code, 1)
                            code = -1
                xs[j] = v
                cs[j] = code
            if code != rc:
                if rc > 0:
                    cuda.atomic.add(t_cnt, rc, rn)
                    cuda.atomic.add(t_sum, rc, rs)
                    cuda.atomic.min(t_min, rc, rmn)
                    cuda.atomic.max(t_max, rc, rmx)
                rc = code
                rn = 0
                rs = 0.0
                rmn = math.inf
                rmx = -math.inf
            if code > 0:
                rn += 1
                rs += v
                rmn = min(rmn, v)
                rmx = max(rmx, v)
        cuda.syncthreads()
        # pass 2: squared deviations from the tile mean; smallest index of the tile min and max
        rc = -1
        rm2 = 0.0
        ramn = _BIG
        ramx = _BIG
        for j in range(VPT + 1):
            code = cs[j] if j < VPT else -1
            if code != rc:
                if rc > 0:
                    cuda.atomic.add(t_m2, rc, rm2)
                    if ramx != _BIG:
                        cuda.atomic.min(t_amax, rc, ramx)
                    if ramn != _BIG:
                        cuda.atomic.min(t_amin, rc, ramn)
                rc = code
                rm2 = 0.0
                ramn = _BIG
                ramx = _BIG
            if code > 0:
                v = xs[j]
                i = base + j * TPB + tid
                d = v - t_sum[code] / t_cnt[code]
                rm2 += d * d
                if v == t_max[code] and ramx == _BIG:
                    ramx = i
                if v == t_min[code] and ramn == _BIG:
                    ramn = i
        cuda.syncthreads()
        # merge the tile into the block's running partial (Chan), reset the tile
        c = tid
        while c < n_codes:
            nt = t_cnt[c]
            if nt > 0:
                na = r_cnt[c]
                nb = int64(nt)
                mb = t_sum[c] / nb
                nn = na + nb
                delta = mb - r_mean[c]
                r_mean[c] = r_mean[c] + delta * nb / nn
                r_m2[c] = r_m2[c] + t_m2[c] + delta * delta * na * nb / nn
                r_cnt[c] = nn
                if t_max[c] > r_max[c]:
                    r_max[c] = t_max[c]
                    r_amax[c] = t_amax[c]
                if t_min[c] < r_min[c]:
                    r_min[c] = t_min[c]
                    r_amin[c] = t_amin[c]
                t_cnt[c] = 0
                t_sum[c] = 0.0
                t_m2[c] = 0.0
                t_min[c] = math.inf
                t_max[c] = -math.inf
                t_amin[c] = _BIG
                t_amax[c] = _BIG
            c += TPB
        cuda.syncthreads()
        t += cuda.gridDim.x

    b = cuda.blockIdx.x
    c = tid
    while c < n_codes:
        o_cnt[b, c] = r_cnt[c]
        o_mean[b, c] = r_mean[c]
        o_m2[b, c] = r_m2[c]
        o_min[b, c] = r_min[c]
        o_max[b, c] = r_max[c]
        o_amin[b, c] = r_amin[c]
        o_amax[b, c] = r_amax[c]
        o_nan[b, c] = r_nan[c]
        c += TPB


def _sm_count() -> int:
    try:
        return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    except Exception:  # noqa: BLE001 - the simulator has no such attribute
        return 2


def _flat_device(a):
    """A 1-D device view of a host or device array (no copy for contiguous device arrays)."""
    if hasattr(a, "__cuda_array_interface__"):
        d = cuda.as_cuda_array(a)
        return d.reshape(d.size) if d.ndim != 1 else d
    return cuda.to_device(np.ascontiguousarray(a).reshape(-1))


def fused_reduce_gpu(stored, codes, scale, offset, n_codes: int, *, blocks: int | None = None) -> Partials:
    """GPU twin of :func:`petfeat.kernels.reduce_cpu.fused_reduce_cpu`.

    ``stored`` and ``codes`` may be host (NumPy) or device arrays (CuPy or Numba); host arrays are
    copied to the device. Returns host :class:`Partials` identical in schema to the CPU's.
    """
    if n_codes > MAXC:
        raise ValueError(f"n_codes = {n_codes} exceeds the GPU limit MAX_GPU_CODES = {MAXC}; "
                         "set PETFEAT_CUDA_MAX_CODES higher (shared memory permitting) or use backend='cpu'.")
    nz = int(stored.shape[0])
    n = int(np.prod(stored.shape))
    slice_size = n // nz if nz else 1
    d_stored, d_codes = _flat_device(stored), _flat_device(codes)
    d_scale = cuda.to_device(np.ascontiguousarray(scale, np.float64))
    d_offset = cuda.to_device(np.ascontiguousarray(offset, np.float64))
    n_tiles = max(1, -(-n // (TPB * VPT)))
    grid = blocks or max(1, min(n_tiles, _sm_count() * BLOCKS_PER_SM))
    outs = [cuda.device_array((grid, n_codes), dtype=dt)
            for dt in (np.int64, np.float64, np.float64, np.float64, np.float64, np.int64, np.int64, np.int64)]
    _fused_kernel[grid, TPB](d_stored, d_codes, d_scale, d_offset, slice_size, n, int(n_codes), *outs)
    cuda.synchronize()
    return merge_stack(*(o.copy_to_host() for o in outs))


@cuda.jit
def _peak_kernel(stored, codes, scale, offset, nz, ny, nx, offs, code_ptr, code_regions, region_max,
                 o_glob, o_loc):  # pragma: no cover
    n = nz * ny * nx
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    n_off = offs.shape[0]
    while i < n:
        c = int64(codes[i])
        if c > 0 and code_ptr[c] != code_ptr[c + 1]:
            z = i // (ny * nx)
            rem = i - z * ny * nx
            y = rem // nx
            x = rem - y * nx
            v = stored[i] * scale[z] + offset[z]
            if v == v:
                total = 0.0
                n_in = 0
                for k in range(n_off):
                    zz = z + offs[k, 0]
                    yy = y + offs[k, 1]
                    xx = x + offs[k, 2]
                    if zz >= 0 and zz < nz and yy >= 0 and yy < ny and xx >= 0 and xx < nx:
                        w = stored[(zz * ny + yy) * nx + xx] * scale[zz] + offset[zz]
                        if w == w:
                            total += w
                            n_in += 1
                m = total / n_in
                for j in range(code_ptr[c], code_ptr[c + 1]):
                    reg = code_regions[j]
                    cuda.atomic.max(o_glob, reg, m)
                    if v == region_max[reg]:
                        cuda.atomic.max(o_loc, reg, m)
        i += stride


def suv_peak_gpu(stored, codes, scale, offset, offsets, code_ptr, code_regions, region_max, n_regions):
    """GPU twin of :func:`petfeat.kernels.reduce_cpu.suv_peak_cpu`."""
    nz, ny, nx = (int(s) for s in stored.shape)
    d_stored, d_codes = _flat_device(stored), _flat_device(codes)
    args = [cuda.to_device(np.ascontiguousarray(a, dt)) for a, dt in (
        (scale, np.float64), (offset, np.float64), (offsets, np.int64), (code_ptr, np.int64),
        (code_regions, np.int64), (region_max, np.float64))]
    o_glob = cuda.to_device(np.full(n_regions, -np.inf))
    o_loc = cuda.to_device(np.full(n_regions, -np.inf))
    grid = max(1, min(-(-(nz * ny * nx) // TPB), _sm_count() * BLOCKS_PER_SM * 8))
    _peak_kernel[grid, TPB](d_stored, d_codes, args[0], args[1], nz, ny, nx, args[2], args[3], args[4],
                            args[5], o_glob, o_loc)
    cuda.synchronize()
    return o_glob.copy_to_host(), o_loc.copy_to_host()
