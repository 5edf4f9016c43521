"""GPU (Numba CUDA) twins of :mod:`petfeat.kernels.reduce_cpu`: same inputs, same partials.

16-bit integer pixels with uint8 codes (DICOM PET) take the exact integer kernel of
:mod:`petfeat.kernels.reduce_gpu_int`. Everything else (float or 8/32-bit pixels, uint16 codes,
slices of a size not a multiple of 8) takes the general kernel below.

The general fused reduction runs a persistent grid. Each block walks tiles of
``THREADS_PER_BLOCK x VALUES_PER_THREAD`` voxels (coalesced: thread ``t`` takes voxels
``t, t + TPB, ...`` of the tile) and reduces each tile in two passes over shared-memory
accumulators: first count, sum, min and max, then (re-reading the tile, now in L1) the squared
deviations from the tile mean and the smallest index of the tile's min and max. In both passes a
thread accumulates runs of equal codes in registers; its last run is merged with its warp
neighbours' runs of the same code in a shared-memory tree before the atomics, so a warp inside one
label issues one set of atomics. The tile's (count, mean, M2) is merged into the block's running
partial (its row of the output arrays) with Chan's formula. The host merges the blocks' partials
with the same :func:`~petfeat.kernels.partials.merge_stack` as the CPU chunks. The GPU therefore
reads every voxel from device memory once and never accumulates raw sums of squares.

This module imports ``numba.cuda`` only; CuPy, when present, supplies device arrays through the
CUDA array interface. Measured performance and its limits: ``benchmarks/results/README.md``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64, int32, int64

from .config import BLOCKS_PER_SM, MAX_GPU_CODES, THREADS_PER_BLOCK, VALUES_PER_THREAD
from .partials import INDEX_NONE, Partials, merge_stack
from .partials_gpu import clear_row, merge_into_row
from .peak_cpu import _row_segments
from .reduce_gpu_int import prepare_int
from .simulator import install_shared_allocation_lock, simulator_pace
from .warp import any_lane, shfl_down_3, shfl_up

TPB = THREADS_PER_BLOCK
VPT = VALUES_PER_THREAD
MAXC = MAX_GPU_CODES
_BIG = INDEX_NONE


def _numpy_compat() -> None:  # pragma: no cover - environment-specific
    """Give numba-cuda the ``row_stack`` alias of ``np.vstack`` it overloads on its first compile.

    Seen with numba-cuda 0.30.4 on NumPy 2.5.2, where the alias is gone from NumPy's namespace and
    only reachable through NumPy's deprecation hook, which fails inside numba-cuda's compile.
    Written with ``setattr`` on a string: lint autofixes (ruff NPY201) rewrite the attribute name.
    Called before every launch that may compile; petfeat itself never uses the alias.
    """
    name = "row" + "_stack"
    if name not in np.__dict__:
        setattr(np, name, np.vstack)


_numpy_compat()
install_shared_allocation_lock()


@cuda.jit(device=True)
def _flush1(t_cnt, t_sum, t_min, t_max, c, rn, rs, rmn, rmx):  # pragma: no cover
    cuda.atomic.add(t_cnt, c, rn)
    cuda.atomic.add(t_sum, c, rs)
    cuda.atomic.min(t_min, c, rmn)
    cuda.atomic.max(t_max, c, rmx)


@cuda.jit(device=True)
def _flush2(t_m2, t_amin, t_amax, c, rm2, ramn, ramx):  # pragma: no cover
    cuda.atomic.add(t_m2, c, rm2)
    if ramx != _BIG:
        cuda.atomic.min(t_amax, c, ramx)
    if ramn != _BIG:
        cuda.atomic.min(t_amin, c, ramn)


@cuda.jit(device=True, inline=True)
def _load(stored, codes, scale, offset, i, n, zc, bound, slice_size):  # pragma: no cover
    """Code and SUV of voxel i (code -1 outside the volume); advances the slice cursor."""
    code = -1
    v = 0.0
    if i < n:
        code = int32(codes[i])
        while i >= bound:
            zc += 1
            bound += slice_size
        if code > 0:
            v = stored[i] * scale[zc] + offset[zc]
    return code, v, zc, bound


@cuda.jit(device=True, inline=True)
def _run1(code, v, rc, rn, rs, rmn, rmx, t_cnt, t_sum, t_min, t_max):  # pragma: no cover
    if code != rc:
        if rc > 0:
            _flush1(t_cnt, t_sum, t_min, t_max, rc, rn, rs, rmn, rmx)
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
    return rc, rn, rs, rmn, rmx


@cuda.jit(device=True, inline=True)
def _run2(code, v, i, rc, rm2, ramn, ramx, t_sum, t_cnt, t_min, t_max, t_m2, t_amin, t_amax):  # pragma: no cover
    if code != rc:
        if rc > 0:
            _flush2(t_m2, t_amin, t_amax, rc, rm2, ramn, ramx)
        rc = code
        rm2 = 0.0
        ramn = _BIG
        ramx = _BIG
    if code > 0:
        d = v - t_sum[code] / t_cnt[code]
        rm2 += d * d
        if v == t_max[code] and ramx == _BIG:
            ramx = i
        if v == t_min[code] and ramn == _BIG:
            ramn = i
    return rc, rm2, ramn, ramx


@cuda.jit
def _fused_kernel(stored, codes, scale, offset, slice_size, n, n_codes,
                  o_cnt, o_mean, o_m2, o_min, o_max, o_amin, o_amax, o_nan):  # pragma: no cover
    # tile accumulators in shared memory; the block's running partial lives in its row of o_*
    t_cnt = cuda.shared.array(MAXC, int32)
    t_sum = cuda.shared.array(MAXC, float64)
    t_m2 = cuda.shared.array(MAXC, float64)
    t_min = cuda.shared.array(MAXC, float64)
    t_max = cuda.shared.array(MAXC, float64)
    t_amin = cuda.shared.array(MAXC, int64)
    t_amax = cuda.shared.array(MAXC, int64)
    # one slot per thread for the in-warp aggregation of runs
    s_code = cuda.shared.array(TPB, int32)
    s_n = cuda.shared.array(TPB, int32)
    s_f = cuda.shared.array(TPB, float64)
    s_g = cuda.shared.array(TPB, float64)
    s_h = cuda.shared.array(TPB, float64)
    s_i = cuda.shared.array(TPB, int64)
    s_k = cuda.shared.array(TPB, int64)

    tid = cuda.threadIdx.x
    b = cuda.blockIdx.x
    c = tid
    while c < n_codes:
        t_cnt[c] = 0
        t_sum[c] = 0.0
        t_m2[c] = 0.0
        t_min[c] = math.inf
        t_max[c] = -math.inf
        t_amin[c] = _BIG
        t_amax[c] = _BIG
        clear_row(o_cnt, o_mean, o_m2, o_min, o_max, o_amin, o_amax, o_nan, b, c)
        c += TPB
    cuda.syncthreads()

    tile = TPB * VPT
    n_tiles = (n + tile - 1) // tile
    t = b
    while t < n_tiles:
        base = t * tile
        # pass 1: per-thread runs of equal codes. A thread's interior runs flush straight to the
        # tile accumulators; its last run goes to a shared slot, and slots of equal code are merged
        # in a tree inside each warp first, so a warp on one label issues one set of atomics.
        zc = (base + tid) // slice_size
        bound = (zc + 1) * slice_size
        rc = -1
        rn = 0
        rs = 0.0
        rmn = math.inf
        rmx = -math.inf
        for j in range(VPT):
            code, v, zc, bound = _load(stored, codes, scale, offset, base + j * TPB + tid, n, zc, bound, slice_size)
            if code > 0 and v != v:
                cuda.atomic.add(o_nan, (b, code), 1)
                code = -1
            rc, rn, rs, rmn, rmx = _run1(code, v, rc, rn, rs, rmn, rmx, t_cnt, t_sum, t_min, t_max)
        s_code[tid] = rc
        s_n[tid] = rn
        s_f[tid] = rs
        s_g[tid] = rmn
        s_h[tid] = rmx
        lane = tid % 32
        step = 16
        while step >= 1:
            cuda.syncthreads()
            if lane < step:
                o = tid + step
                c = s_code[tid]
                if c > 0 and s_code[o] == c:
                    s_n[tid] += s_n[o]
                    s_f[tid] += s_f[o]
                    s_g[tid] = min(s_g[tid], s_g[o])
                    s_h[tid] = max(s_h[tid], s_h[o])
                    s_code[o] = -1
            step //= 2
        cuda.syncthreads()
        if s_code[tid] > 0:
            _flush1(t_cnt, t_sum, t_min, t_max, s_code[tid], s_n[tid], s_f[tid], s_g[tid], s_h[tid])
        cuda.syncthreads()
        # pass 2: the tile again (now in L1): squared deviations from the tile mean and the
        # smallest index of the tile's min and max, aggregated the same way
        zc = (base + tid) // slice_size
        bound = (zc + 1) * slice_size
        rc = -1
        rm2 = 0.0
        ramn = _BIG
        ramx = _BIG
        for j in range(VPT):
            i = base + j * TPB + tid
            code, v, zc, bound = _load(stored, codes, scale, offset, i, n, zc, bound, slice_size)
            if v != v:
                code = -1
            rc, rm2, ramn, ramx = _run2(code, v, i, rc, rm2, ramn, ramx, t_sum, t_cnt, t_min, t_max, t_m2, t_amin,
                                        t_amax)
        s_code[tid] = rc
        s_f[tid] = rm2
        s_i[tid] = ramn
        s_k[tid] = ramx
        step = 16
        while step >= 1:
            cuda.syncthreads()
            if lane < step:
                o = tid + step
                c = s_code[tid]
                if c > 0 and s_code[o] == c:
                    s_f[tid] += s_f[o]
                    s_i[tid] = min(s_i[tid], s_i[o])
                    s_k[tid] = min(s_k[tid], s_k[o])
                    s_code[o] = -1
            step //= 2
        cuda.syncthreads()
        if s_code[tid] > 0:
            _flush2(t_m2, t_amin, t_amax, s_code[tid], s_f[tid], s_i[tid], s_k[tid])
        cuda.syncthreads()
        # merge the tile into the block's running partial (Chan), reset the tile
        c = tid
        while c < n_codes:
            nt = t_cnt[c]
            if nt > 0:
                nb = int64(nt)
                merge_into_row(o_cnt, o_mean, o_m2, o_min, o_max, o_amin, o_amax, b, c, nb, t_sum[c] / nb, t_m2[c],
                               t_min[c], t_amin[c], t_max[c], t_amax[c])
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
    copied to the device. 16-bit integer pixels with uint8 codes take the exact integer kernel of
    :mod:`petfeat.kernels.reduce_gpu_int`, other inputs the general kernel of this module. Returns
    host :class:`Partials` identical in schema to the CPU's.
    """
    if n_codes > MAXC:
        raise ValueError(f"n_codes = {n_codes} exceeds the GPU limit MAX_GPU_CODES = {MAXC}; "
                         "set PETFEAT_CUDA_MAX_CODES higher (shared memory permitting) or use backend='cpu'.")
    launch = prepare_fused(stored, codes, scale, offset, n_codes, blocks=blocks)
    _numpy_compat()
    launch()
    return launch_partials(launch)


def launch_partials(launch) -> Partials:
    """The partials a launch of :func:`prepare_fused` computed: its blocks' rows, merged on the host."""
    cuda.synchronize()
    return merge_stack(*(o.copy_to_host() for o in launch.outputs))


class _Launch:
    """A prepared launch of the general kernel: device inputs and outputs bound, callable to run."""

    kernel = "general"

    def __init__(self, args, grid, outputs):
        self.args, self.grid, self.outputs = args, grid, outputs

    def __call__(self):
        with simulator_pace():
            _fused_kernel[self.grid, TPB](*self.args, *self.outputs)


def prepare_fused(stored, codes, scale, offset, n_codes: int, *, blocks: int | None = None, kernel: str = "auto"):
    """Bind device inputs and allocate per-block outputs; calling the result launches the kernel.

    Lets a benchmark time the kernel alone, apart from transfers and the host-side merge.
    ``kernel``: ``"auto"`` (the integer kernel where it applies), ``"int"`` or ``"general"``.
    The result's ``kernel`` attribute names the one chosen.
    """
    if len(stored.shape) != 3 or tuple(codes.shape) != tuple(stored.shape) or len(scale) != stored.shape[0]:
        raise ValueError(f"stored {tuple(stored.shape)} and codes {tuple(codes.shape)} must be the same (Z, Y, X) "
                         f"shape with one scale/offset per slice (got {len(scale)}).")
    if kernel not in ("auto", "int", "general"):
        raise ValueError(f"kernel is {kernel!r}; use 'auto', 'int' or 'general'.")
    nz = int(stored.shape[0])
    n = int(np.prod(stored.shape))
    slice_size = n // nz if nz else 1
    d_stored, d_codes = _flat_device(stored), _flat_device(codes)
    d_scale = cuda.to_device(np.ascontiguousarray(scale, np.float64))
    d_offset = cuda.to_device(np.ascontiguousarray(offset, np.float64))
    max_grid = blocks or _sm_count() * BLOCKS_PER_SM
    if kernel != "general":
        launch = prepare_int(d_stored, d_codes, d_scale, d_offset, nz, int(n_codes), max_grid)
        if launch is not None:
            return launch
        if kernel == "int":
            raise ValueError(f"the integer GPU kernel takes int16/uint16 pixels, uint8 codes and slices of a multiple "
                             f"of 8 voxels (8-byte aligned on the device); got {stored.dtype} pixels, {codes.dtype} "
                             f"codes, {slice_size} voxels per slice; use kernel='auto' or 'general' for these.")
    n_tiles = max(1, -(-n // (TPB * VPT)))
    grid = max(1, min(n_tiles, max_grid))
    outs = [cuda.device_array((grid, n_codes), dtype=dt)
            for dt in (np.int64, np.float64, np.float64, np.float64, np.float64, np.int64, np.int64, np.int64)]
    return _Launch((d_stored, d_codes, d_scale, d_offset, slice_size, n, int(n_codes)), grid, outs)


@cuda.jit(device=True, inline=True)
def _merge_warp_max(lane, c, m):  # pragma: no cover
    """Segmented max of the lanes' sphere means over runs of equal code in consecutive lanes.

    Returns whether this lane is the first of its run and, on that lane, the run's largest mean.
    Every lane of the warp must call it (warp-uniform control flow).
    """
    reach = lane  # this lane's value covers lanes lane..reach
    d = 1
    while d < 32:
        oc, o_reach, om = shfl_down_3(d, c, reach, m)
        if lane + d < 32 and reach == lane + d - 1 and oc == c:
            m = max(m, om)
            reach = o_reach
        d *= 2
    before = shfl_up(c, 1)
    return lane == 0 or before != c, m


@cuda.jit
def _peak_kernel(stored, codes, scale, offset, nz, ny, nx, offs, seg_dz, seg_dy, seg_dx, seg_len, reach, integer,
                 code_ptr, code_regions, region_max, o_glob, o_loc):  # pragma: no cover
    """Sphere mean at every region voxel; per warp, one global max per run of equal codes.

    A float64 atomic max is a compare-and-swap loop on the device, and every voxel of a region
    used to issue one on the same address. A warp's 32 consecutive voxels now merge their means
    by code first (:func:`_merge_warp_max`): a warp inside one region issues one atomic per region.
    The loop is warp-uniform (a warp's lanes take voxels ``i0 .. i0 + 31`` together; blocks hold
    whole warps). The local peak's atomics stay per voxel: only voxels at the region's maximum make them.

    Integer pixels of a voxel at least the sphere's ``reach`` (rz, ry, rx) from every face are
    summed by x-segments of the sphere, as exact integers, with one slope and intercept per segment
    (as the CPU's direct kernel does): no bounds test, and two float64 loads and one multiply-add
    per segment instead of per voxel (21 segments for the 123 voxels of a 2 mm sphere).
    """
    n = nz * ny * nx
    lane = cuda.threadIdx.x % 32
    i0 = cuda.grid(1) - lane  # this warp's first voxel
    stride = cuda.gridsize(1)
    n_off = offs.shape[0]
    while i0 < n:
        i = i0 + lane
        c = int64(0)  # 0: no region voxel on this lane
        m = -math.inf
        if i < n:
            cc = int64(codes[i])
            if cc > 0 and code_ptr[cc] != code_ptr[cc + 1]:
                z = i // (ny * nx)
                rem = i - z * ny * nx
                y = rem // nx
                x = rem - y * nx
                v = stored[i] * scale[z] + offset[z]
                if integer and reach[0] <= z < nz - reach[0] and reach[1] <= y < ny - reach[1] \
                        and reach[2] <= x < nx - reach[2]:
                    total = 0.0
                    for k in range(seg_len.shape[0]):
                        zz = z + seg_dz[k]
                        j0 = (zz * ny + y + seg_dy[k]) * nx + x + seg_dx[k]
                        acc = int64(0)
                        for j in range(j0, j0 + seg_len[k]):
                            acc += int64(stored[j])
                        total += scale[zz] * acc + offset[zz] * seg_len[k]
                    m = total / n_off
                    c = cc
                elif v == v:
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
                    c = cc
                if c > 0:
                    for j in range(code_ptr[c], code_ptr[c + 1]):
                        reg = code_regions[j]
                        if v == region_max[reg]:
                            cuda.atomic.max(o_loc, reg, m)
        if any_lane(c > 0):  # warp-uniform: every lane takes part in the merge
            head, m = _merge_warp_max(lane, c, m)
            if head and c > 0:
                for j in range(code_ptr[c], code_ptr[c + 1]):
                    cuda.atomic.max(o_glob, code_regions[j], m)
        i0 += stride


def suv_peak_gpu(stored, codes, scale, offset, offsets, code_ptr, code_regions, region_max, n_regions):
    """GPU twin of :func:`petfeat.kernels.reduce_cpu.suv_peak_cpu`."""
    nz, ny, nx = (int(s) for s in stored.shape)
    d_stored, d_codes = _flat_device(stored), _flat_device(codes)
    offsets = np.ascontiguousarray(offsets, np.int64)
    reach = np.abs(offsets).max(axis=0)  # (rz, ry, rx): voxels this far from every face take the segment sums
    integer = stored.dtype.kind in "iub" and stored.dtype.itemsize <= 4  # exact int64 sums, never NaN
    segments = [(x, np.int64) for x in _row_segments(offsets)]  # (dz, dy, first dx, length) per x-segment
    args = [cuda.to_device(np.ascontiguousarray(a, dt)) for a, dt in (
        (scale, np.float64), (offset, np.float64), (offsets, np.int64), *segments, (reach, np.int64),
        (code_ptr, np.int64), (code_regions, np.int64), (region_max, np.float64))]
    o_glob = cuda.to_device(np.full(n_regions, -np.inf))
    o_loc = cuda.to_device(np.full(n_regions, -np.inf))
    grid = max(1, min(-(-(nz * ny * nx) // TPB), _sm_count() * BLOCKS_PER_SM * 8))
    _numpy_compat()
    with simulator_pace():
        _peak_kernel[grid, TPB](d_stored, d_codes, args[0], args[1], nz, ny, nx, *args[2:8], integer, *args[8:],
                                o_glob, o_loc)
    cuda.synchronize()
    return o_glob.copy_to_host(), o_loc.copy_to_host()
