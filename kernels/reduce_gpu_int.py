"""GPU fused reduction for 16-bit integer pixels (the DICOM norm) and uint8 codes: exact tile sums.

The same partials as :func:`petfeat.kernels.reduce_cpu.fused_reduce_cpu`, computed the way its
integer kernel computes them, laid out for a GPU:

* **Tiles.** The volume is cut into tiles of at most :data:`TILE` voxels that never cross a slice,
  so one slope and intercept hold for a whole tile. Blocks take tiles from a global counter until
  none is left (a persistent grid, balanced whatever the block count).
* **Lanes.** Each step of a block, lane ``l`` of the block reads :data:`LANE_VOXELS` consecutive
  voxels: 64-bit words of 8 codes and of 4 pixels, all of them issued before any is used (two
  memory round trips per step: the codes, then the pixels). A group of 8 background codes is one
  compare, and its pixels are never read. Consecutive voxels of one code form a *run*; a lane sums each run
  in registers: count, ``sum(s)`` and ``sum(s^2)`` of the stored values (exact integers) and two
  32-bit keys, ``value << 15 | index`` for the minimum and ``value << 15 | (32767 - index)`` for
  the maximum (``index`` within the tile), so that one integer min or max keeps the extreme *and*
  the smallest index holding it.
* **Warp merge.** A run that ends inside a lane's voxels is added to the tile's per-code sums in
  shared memory (integer atomics). The lanes' last runs usually continue one another: lanes of a
  warp with the same code are merged by a segmented reduction over warp shuffles, and the first
  lane of each segment adds it, once. So a warp inside one organ issues one set of atomics per
  step, not 32.
* **Tile merge.** At the tile's end each code's exact sums become its SUV partial, as on the CPU:
  ``(n, a S1/n + b, a^2 (n S2 - S1^2)/n)`` with the slice's slope ``a`` and intercept ``b``
  (``n <= TILE <= 32768``, so ``n S2 - S1^2`` is an exact int64) and the extremes mapped by the
  slope (swapped when it is negative). It is merged into the block's running partial with Chan's
  formula; the host merges the blocks' partials with :func:`~petfeat.kernels.partials.merge_stack`.

It takes ``int16``/``uint16`` pixels, ``uint8`` codes and slices of a multiple of 8 voxels (every
PET matrix in use: 128, 144, 168, 192, 200, 256, 400, 440, 512); anything else goes to the general
kernel of :mod:`petfeat.kernels.reduce_gpu`.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, int32, int64

from .config import (
    GPU_GROUPS_PER_LANE,
    GPU_MAX_REGISTERS,
    GPU_STEPS_PER_TILE,
    MAX_GPU_CODES,
    SIMULATOR,
    THREADS_PER_BLOCK,
)
from .partials_gpu import clear_row, merge_into_row
from .simulator import simulator_pace
from .warp import any_lane, shfl_down_7, shfl_up

TPB = THREADS_PER_BLOCK
MAXC = MAX_GPU_CODES
GROUPS = GPU_GROUPS_PER_LANE
_PIXEL_WORDS = 2 * GROUPS  # 64-bit words of 16-bit pixels per lane and step
#: Consecutive voxels a lane reads per step (groups of 8: one 64-bit word of uint8 codes).
LANE_VOXELS = 8 * GROUPS
#: Voxels a block reads per step.
STEP_VOXELS = TPB * LANE_VOXELS
#: Most voxels of one tile (reduced in shared memory, then merged into the block's partial once).
TILE = STEP_VOXELS * GPU_STEPS_PER_TILE
#: Bits of the in-tile voxel index in a min/max key.
INDEX_BITS = 15
_IDX = (1 << INDEX_BITS) - 1
#: Identity of the min key (larger than any key: a 16-bit value above 15 index bits stays below 2**31).
_KEY_NONE = 0x7FFFFFFF

if TPB % 32 or (SIMULATOR and TPB != 32):  # pragma: no cover - a configuration error
    raise ValueError(f"the integer GPU kernel needs whole warps (PETFEAT_CUDA_TPB a multiple of 32; exactly 32 under "
                     f"the simulator, whose warp primitives take the block for the warp), got {TPB}.")
if TILE > 1 << INDEX_BITS:  # pragma: no cover - a configuration error
    raise ValueError(f"GPU tile of {TILE} voxels (PETFEAT_CUDA_TPB {TPB} x PETFEAT_CUDA_GROUPS {GROUPS} x 8 x "
                     f"PETFEAT_CUDA_STEPS {GPU_STEPS_PER_TILE}) exceeds the {1 << INDEX_BITS} voxels the 32-bit "
                     f"min/max keys index; lower PETFEAT_CUDA_GROUPS or PETFEAT_CUDA_STEPS.")


@cuda.jit(device=True, inline=True)
def _add_run(t_n, t_s1, t_s2, t_lo, t_hi, c, n, s1, s2, lo, hi):  # pragma: no cover
    """Add a run's sums and keys to code ``c`` of the tile, with 32-bit atomics only.

    ``s2`` goes in two parts, ``s2 >> 16`` and ``s2 & 0xFFFF`` (a 64-bit add on shared memory is a
    compare-and-swap loop). Over a tile of at most 32768 voxels of magnitude at most 65535, the
    sums of ``s1``, of the high parts and of the low parts all stay below 2**31.
    """
    cuda.atomic.add(t_n, c, n)
    cuda.atomic.add(t_s1, c, s1)
    cuda.atomic.add(t_s2, (c, 0), s2 >> 16)
    cuda.atomic.add(t_s2, (c, 1), s2 & 0xFFFF)
    cuda.atomic.min(t_lo, c, lo)
    cuda.atomic.max(t_hi, c, hi)


@cuda.jit(device=True, inline=True)
def _clear_tile(t_n, t_s1, t_s2, t_lo, t_hi, c):  # pragma: no cover
    """Code ``c`` of the tile: no voxel yet."""
    t_n[c] = 0
    t_s1[c] = 0
    t_s2[c, 0] = 0
    t_s2[c, 1] = 0
    t_lo[c] = _KEY_NONE
    t_hi[c] = -1


@cuda.jit(device=True, inline=True)
def _value(p, wrap):  # pragma: no cover
    """The stored value of 16-bit pattern ``p`` (two's complement when ``wrap`` is 65536, else unsigned)."""
    return p - ((p >> 15) & 1) * wrap


@cuda.jit(device=True, inline=True)
def _stored(key, sign_bit, wrap):  # pragma: no cover
    """The stored value of a min/max key's upper bits."""
    return _value((key >> INDEX_BITS) ^ sign_bit, wrap)


@cuda.jit(device=True, inline=True)
def _take(c, p, i, rc, rn, rs1, rs2, rlo, rhi, t_n, t_s1, t_s2, t_lo, t_hi, sign_bit, wrap):  # pragma: no cover
    """Voxel ``i`` of the tile (code ``c``, 16-bit pattern ``p``) into the lane's run; a run it ends is added."""
    if c != rc:
        if rc > 0:
            _add_run(t_n, t_s1, t_s2, t_lo, t_hi, rc, rn, rs1, rs2, rlo, rhi)
        rc = c
        rn = 0
        rs1 = 0
        rs2 = 0
        rlo = _KEY_NONE
        rhi = -1
    if c > 0:
        v = _value(p, wrap)
        key = (p ^ sign_bit) << INDEX_BITS  # order-preserving unsigned 16-bit value, above the index
        rn += 1
        rs1 += v
        rs2 += v * v
        rlo = min(rlo, key | i)
        rhi = max(rhi, key | (_IDX - i))
    return rc, rn, rs1, rs2, rlo, rhi


@cuda.jit(device=True, inline=True)
def _merge_warp_runs(lane, rc, rn, rs1, rs2, rlo, rhi):  # pragma: no cover
    """Segmented reduction of the lanes' runs over runs of equal code in consecutive lanes.

    After it, the first lane of each segment holds the segment's sums and keys; returns whether
    this lane is such a first lane, and its values. Every lane of the warp must call it.
    """
    reach = lane  # this lane's values cover lanes lane..reach
    d = 1
    while d < 32:
        oc, o_reach, on, os1, os2, olo, ohi = shfl_down_7(d, rc, reach, rn, rs1, rs2, rlo, rhi)
        if lane + d < 32 and reach == lane + d - 1 and oc == rc:
            rn += on
            rs1 += os1
            rs2 += os2
            rlo = min(rlo, olo)
            rhi = max(rhi, ohi)
            reach = o_reach
        d *= 2
    before = shfl_up(rc, 1)
    return lane == 0 or before != rc, rn, rs1, rs2, rlo, rhi


@cuda.jit
def _reset(counter):  # pragma: no cover
    counter[0] = 0


#: Compile options of the kernel: a register cap when one is set (the simulator compiles nothing).
_JIT_OPTIONS = {"max_registers": GPU_MAX_REGISTERS} if GPU_MAX_REGISTERS and not SIMULATOR else {}


@cuda.jit(**_JIT_OPTIONS)
def _fused_int_kernel(words, code_words, scale, offset, slice_size, n_slices, signed, n_codes, counter,
                      o_cnt, o_mean, o_m2, o_min, o_max, o_amin, o_amax, o_nan):  # pragma: no cover
    t_n = cuda.shared.array(MAXC, int32)
    t_s1 = cuda.shared.array(MAXC, int32)
    t_s2 = cuda.shared.array((MAXC, 2), int32)  # sum of s^2 = 65536 x [c, 0] + [c, 1]
    t_lo = cuda.shared.array(MAXC, int32)
    t_hi = cuda.shared.array(MAXC, int32)
    s_tile = cuda.shared.array(1, int64)
    cw = cuda.local.array(GROUPS, int64)  # the lane's code words of a step
    pw = cuda.local.array(_PIXEL_WORDS, int64)  # and its pixel words

    tid = cuda.threadIdx.x
    lane = tid % 32
    b = cuda.blockIdx.x
    sign_bit = signed << 15
    wrap = signed << 16
    c = tid
    while c < n_codes:
        _clear_tile(t_n, t_s1, t_s2, t_lo, t_hi, c)
        clear_row(o_cnt, o_mean, o_m2, o_min, o_max, o_amin, o_amax, o_nan, b, c)
        c += TPB
    tiles_per_slice = (slice_size + TILE - 1) // TILE
    n_tiles = n_slices * tiles_per_slice

    while True:
        if tid == 0:
            s_tile[0] = cuda.atomic.add(counter, 0, 1)
        cuda.syncthreads()
        t = s_tile[0]
        if t >= n_tiles:
            break
        z = t // tiles_per_slice
        start = z * slice_size + (t - z * tiles_per_slice) * TILE
        end = min(start + TILE, (z + 1) * slice_size)
        for step in range(GPU_STEPS_PER_TILE):
            x0 = start + step * STEP_VOXELS + tid * LANE_VOXELS
            rc = -1
            rn = 0
            rs1 = 0
            rs2 = 0
            rlo = _KEY_NONE
            rhi = -1
            # every load of the step is issued before any is used: two memory round trips per step (the
            # codes, then the pixels of the groups that hold a region), not two per group
            for g in range(GROUPS):
                x = x0 + 8 * g
                cw[g] = code_words[x >> 3] if x < end else 0
            for g in range(GROUPS):
                if cw[g] != 0:
                    q = (x0 + 8 * g) >> 2
                    pw[2 * g] = words[q]
                    pw[2 * g + 1] = words[q + 1]
            for g in range(GROUPS):
                w = cw[g]
                if w == 0:  # 8 background voxels (or past the tile): ends the run; no pixel was read
                    if rc > 0:
                        _add_run(t_n, t_s1, t_s2, t_lo, t_hi, rc, rn, rs1, rs2, rlo, rhi)
                    rc = 0
                    continue
                w0 = pw[2 * g]
                w1 = pw[2 * g + 1]
                i = x0 + 8 * g - start
                for k in range(8):
                    p = ((w0 if k < 4 else w1) >> (16 * (k & 3))) & 0xFFFF
                    rc, rn, rs1, rs2, rlo, rhi = _take((w >> (8 * k)) & 0xFF, p, i + k, rc, rn, rs1, rs2, rlo, rhi,
                                                       t_n, t_s1, t_s2, t_lo, t_hi, sign_bit, wrap)
            if any_lane(rc > 0):  # warp-uniform: every lane takes part in the merge
                head, rn, rs1, rs2, rlo, rhi = _merge_warp_runs(lane, rc, rn, rs1, rs2, rlo, rhi)
                if head and rc > 0:
                    _add_run(t_n, t_s1, t_s2, t_lo, t_hi, rc, rn, rs1, rs2, rlo, rhi)
        cuda.syncthreads()
        # the tile's exact sums -> SUV partial (one slice: slope a, intercept bb), merged into the block's
        a = scale[z]
        bb = offset[z]
        c = tid
        while c < n_codes:
            n = t_n[c]
            if n > 0:
                s1 = int64(t_s1[c])
                s2 = int64(t_s2[c, 0]) * 65536 + t_s2[c, 1]
                lo_v = _stored(t_lo[c], sign_bit, wrap)
                lo_at = start + (t_lo[c] & _IDX)
                hi_v = _stored(t_hi[c], sign_bit, wrap)
                hi_at = start + (_IDX - (t_hi[c] & _IDX))
                if a < 0:  # the highest SUV is the lowest stored value
                    lo_v, hi_v = hi_v, lo_v
                    lo_at, hi_at = hi_at, lo_at
                nb = int64(n)  # n <= TILE <= 46340: n S2 - S1^2 is an exact int64, as on the CPU
                merge_into_row(o_cnt, o_mean, o_m2, o_min, o_max, o_amin, o_amax, b, c, nb, a * (s1 / nb) + bb,
                               a * a * ((nb * s2 - s1 * s1) / nb), lo_v * a + bb, lo_at, hi_v * a + bb, hi_at)
                _clear_tile(t_n, t_s1, t_s2, t_lo, t_hi, c)
            c += TPB
        cuda.syncthreads()


def int_kernel_applies(stored_dtype, codes_dtype, slice_size: int) -> bool:
    """Whether the integer kernel takes these inputs (else the general GPU kernel does).

    Parameters
    ----------
    stored_dtype, codes_dtype : numpy dtype-like
        Pixel and code dtypes: int16 or uint16 pixels, uint8 codes.
    slice_size : int
        Voxels per slice: a positive multiple of 8, so that no 64-bit word of codes crosses a slice.
    """
    return (np.dtype(stored_dtype) in (np.dtype(np.int16), np.dtype(np.uint16))
            and np.dtype(codes_dtype) == np.dtype(np.uint8) and slice_size % 8 == 0 and slice_size > 0)


def _aligned(d) -> bool:
    face = getattr(d, "__cuda_array_interface__", None)
    return face is None or face["data"][0] % 8 == 0  # the simulator's arrays are host arrays


class IntLaunch:
    """A prepared launch of the integer kernel: device inputs and per-block outputs bound."""

    kernel = "int"

    def __init__(self, d_stored, d_codes, scale, offset, slice_size: int, n_slices: int, n_codes: int, grid: int):
        self.grid = grid
        self.args = (d_stored.view(np.int64), d_codes.view(np.int64), scale, offset, slice_size, n_slices,
                     int(d_stored.dtype == np.int16), n_codes)
        self.counter = cuda.device_array(1, np.int64)
        self.outputs = [cuda.device_array((grid, n_codes), dtype=dt)
                        for dt in (np.int64, np.float64, np.float64, np.float64, np.float64, np.int64, np.int64,
                                   np.int64)]

    def __call__(self):
        """Launch (asynchronously on a device): the tile counter is reset first."""
        _reset[1, 1](self.counter)
        with simulator_pace():
            _fused_int_kernel[self.grid, TPB](*self.args, self.counter, *self.outputs)


def prepare_int(d_stored, d_codes, d_scale, d_offset, n_slices: int, n_codes: int, max_grid: int) -> IntLaunch | None:
    """An :class:`IntLaunch` on flat device arrays, or None where the integer kernel does not apply.

    Parameters
    ----------
    d_stored, d_codes : 1-D device arrays
        Flat pixels and codes of a (Z, Y, X) volume, C order; both 8-byte aligned on the device.
    d_scale, d_offset : 1-D device arrays of float64
        Per-slice slope and intercept: SUV = stored x scale + offset.
    n_slices, n_codes : int
        Z, and the number of codes (each code's partial is a column of the outputs).
    max_grid : int
        Most blocks to launch (fewer when there are fewer tiles).
    """
    slice_size = d_stored.size // n_slices if n_slices else 0
    if not (int_kernel_applies(d_stored.dtype, d_codes.dtype, slice_size) and _aligned(d_stored) and _aligned(d_codes)):
        return None
    grid = max(1, min(n_slices * -(-slice_size // TILE), max_grid))
    return IntLaunch(d_stored, d_codes, d_scale, d_offset, slice_size, n_slices, n_codes, grid)
