"""CPU (Numba) fused pass: stored pixels -> SUV in registers -> per-code partial statistics.

One pass over the raw stored pixels and the code volume. Each voxel's value is
``stored * scale[z] + offset[z]`` in float64, where ``scale``/``offset`` fold the per-slice
RescaleSlope/Intercept and the SUV factor. Code 0 means "in no region" and is skipped.

Work is split into contiguous chunks of image rows, one partial per chunk and code. A row whose
codes are all 0 is recognised by one vectorised OR over its codes and skipped; inside a row,
background is skipped 16 codes at a time, and runs of equal codes are reduced together and flushed
once per run.

* 8- and 16-bit integer pixels (the PET norm): each run's moments are exact sums of
  ``stored - stored[first]`` and their squares (integers below 2**53 held in float64, so any
  summation order gives the same result) plus integer min/max, a loop the compiler vectorises;
  the run's (n, mean, M2) in SUV space is ``(n, a mean_s + b, a^2 M2_s)`` for the slice's
  ``a = scale[z]``, ``b = offset[z]``, merged into the chunk with Chan's formula. The
  argmin/argmax rescans the run only when it beats the chunk's current extreme.
* Other pixels (float, 32-bit): SUV per voxel in float64 with a NaN check (NaN voxels are counted,
  never reduced); each run's sums are shifted by its first value, then merged the same way.

Chunks merge with :func:`petfeat.kernels.partials.merge_stack`.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .config import CPU_CHUNKS_PER_THREAD
from .partials import INDEX_NONE, Partials, merge_stack


@njit(cache=True, nogil=True, inline="always")
def _chan(cnt, mean, m2, ch, c, n, mu, q):  # pragma: no cover - compiled
    """Merge a run's (n, mean, M2) into partial [ch, c] (Chan et al.)."""
    na = cnt[ch, c]
    if na == 0:
        cnt[ch, c] = n
        mean[ch, c] = mu
        m2[ch, c] = q
    else:
        nn = na + n
        delta = mu - mean[ch, c]
        mean[ch, c] += delta * n / nn
        m2[ch, c] += q + delta * delta * (na * n / nn)
        cnt[ch, c] = nn


@njit(cache=True, nogil=True)
def _alloc(n_chunks, n_codes):  # pragma: no cover - compiled
    """Per-chunk partial arrays: count, mean, M2, min, max, argmin, argmax, NaN count."""
    return (np.zeros((n_chunks, n_codes), np.int64), np.zeros((n_chunks, n_codes), np.float64),
            np.zeros((n_chunks, n_codes), np.float64), np.full((n_chunks, n_codes), np.inf),
            np.full((n_chunks, n_codes), -np.inf), np.full((n_chunks, n_codes), INDEX_NONE),
            np.full((n_chunks, n_codes), INDEX_NONE), np.zeros((n_chunks, n_codes), np.int64))


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _run_moments(row, x, e, k):  # pragma: no cover - compiled
    """Sums of (s - k) and (s - k)^2, min and max of an integer run; exact (integers below 2**53)."""
    s1 = 0.0
    s2 = 0.0
    smin = np.int32(k)
    smax = np.int32(k)
    for xx in range(x, e):
        v = np.int32(row[xx])
        d = np.float64(v - k)
        s1 += d
        s2 += d * d
        smin = min(smin, v)
        smax = max(smax, v)
    return s1, s2, smin, smax


@njit(cache=True, nogil=True, inline="always")
def _flush_int(cnt, mean, m2, vmin, vmax, amin, amax, ch, c, n, k, s1, s2, smin, smax, a, b, row, x0, x1,
               base):  # pragma: no cover - compiled
    mu_s = k + s1 / n
    q_s = max(s2 - s1 * (s1 / n), 0.0)
    _chan(cnt, mean, m2, ch, c, n, a * mu_s + b, a * a * q_s)
    hi = smax if a >= 0 else smin  # stored value of the run's highest SUV
    lo = smin if a >= 0 else smax
    vhi = hi * a + b
    vlo = lo * a + b
    if vhi > vmax[ch, c]:
        vmax[ch, c] = vhi
        for xx in range(x0, x1):
            if row[xx] == hi:
                amax[ch, c] = base + xx
                break
    if vlo < vmin[ch, c]:
        vmin[ch, c] = vlo
        for xx in range(x0, x1):
            if row[xx] == lo:
                amin[ch, c] = base + xx
                break


@njit(cache=True, nogil=True, inline="always")
def _skip_background(crow, x, nx):  # pragma: no cover - compiled
    """First index >= x whose code is not 0: 16 codes per step while a whole block is background."""
    while x + 16 <= nx:
        acc = crow[x]
        for t in range(1, 16):
            acc |= crow[x + t]
        if acc != 0:
            break
        x += 16
    while x < nx and crow[x] == 0:
        x += 1
    return x


@njit(cache=True, nogil=True, inline="always")
def _row_is_background(crow, nx):  # pragma: no cover - compiled
    """True when every code of the row is 0 (an OR reduction the compiler vectorises, no early exit)."""
    acc = crow[0]
    for x in range(1, nx):
        acc |= crow[x]
    return acc == 0


@njit(cache=True, nogil=True, inline="always")
def _next_run(crow, x, nx):  # pragma: no cover - compiled
    """``(start, end, code)`` of the next run of one non-zero code at or after ``x``; start is nx when none."""
    if crow[x] == 0:
        x = _skip_background(crow, x, nx)
        if x >= nx:
            return nx, nx, np.int64(0)
    e = x + 1
    while e < nx and crow[e] == crow[x]:
        e += 1
    return x, e, np.int64(crow[x])


@njit(parallel=True, cache=True, nogil=True)
def _fused_chunks_int(stored, codes, scale, offset, n_codes, n_chunks):  # pragma: no cover - compiled
    """Integer pixels (8/16 bit): exact moments per run of equal codes (vectorisable run loop)."""
    nz, ny, nx = stored.shape
    n_rows = nz * ny
    cnt, mean, m2, vmin, vmax, amin, amax, nans = _alloc(n_chunks, n_codes)
    for ch in prange(n_chunks):
        r0 = ch * n_rows // n_chunks
        r1 = (ch + 1) * n_rows // n_chunks
        for r in range(r0, r1):
            z = r // ny
            y = r - z * ny
            a = scale[z]
            b = offset[z]
            crow = codes[z, y]
            if _row_is_background(crow, nx):  # most rows of a whole-body grid: no run scan at all
                continue
            row = stored[z, y]
            base = r * nx
            x = 0
            while x < nx:
                x, e, c = _next_run(crow, x, nx)
                if x >= nx:
                    break
                k = np.int32(row[x])
                s1, s2, smin, smax = _run_moments(row, x, e, k)
                _flush_int(cnt, mean, m2, vmin, vmax, amin, amax, ch, c, e - x, k, s1, s2, smin, smax, a, b,
                           row, x, e, base)
                x = e
    return cnt, mean, m2, vmin, vmax, amin, amax, nans


@njit(parallel=True, cache=True, nogil=True)
def _fused_chunks_float(stored, codes, scale, offset, n_codes, n_chunks):  # pragma: no cover - compiled
    """Other pixels (float, 32-bit): SUV per voxel in float64, NaN counted; moments per run of equal codes."""
    nz, ny, nx = stored.shape
    n_rows = nz * ny
    cnt, mean, m2, vmin, vmax, amin, amax, nans = _alloc(n_chunks, n_codes)
    for ch in prange(n_chunks):
        r0 = ch * n_rows // n_chunks
        r1 = (ch + 1) * n_rows // n_chunks
        for r in range(r0, r1):
            z = r // ny
            y = r - z * ny
            a = scale[z]
            b = offset[z]
            crow = codes[z, y]
            if _row_is_background(crow, nx):  # most rows of a whole-body grid: no run scan at all
                continue
            row = stored[z, y]
            base = r * nx
            x = 0
            while x < nx:
                x, e, c = _next_run(crow, x, nx)
                if x >= nx:
                    break
                n = 0
                k = 0.0
                s1 = 0.0
                s2 = 0.0
                lo = np.inf
                hi = -np.inf
                ilo = INDEX_NONE
                ihi = INDEX_NONE
                for xx in range(x, e):
                    v = row[xx] * a + b
                    if v != v:
                        nans[ch, c] += 1
                        continue
                    if n == 0:
                        k = v  # shift: the run's first value
                    d = v - k
                    n += 1
                    s1 += d
                    s2 += d * d
                    if v < lo:
                        lo = v
                        ilo = base + xx
                    if v > hi:
                        hi = v
                        ihi = base + xx
                if n > 0:
                    _chan(cnt, mean, m2, ch, c, n, k + s1 / n, max(s2 - s1 * (s1 / n), 0.0))
                    if hi > vmax[ch, c]:
                        vmax[ch, c] = hi
                        amax[ch, c] = ihi
                    if lo < vmin[ch, c]:
                        vmin[ch, c] = lo
                        amin[ch, c] = ilo
                x = e
    return cnt, mean, m2, vmin, vmax, amin, amax, nans


def fused_reduce_cpu(stored: np.ndarray, codes: np.ndarray, scale: np.ndarray, offset: np.ndarray,
                     n_codes: int) -> Partials:
    """Reduce ``stored * scale[z] + offset[z]`` over each code of ``codes`` in one pass.

    Parameters
    ----------
    stored : (Z, Y, X) ndarray
        Raw stored pixels (int16, uint16, int32, float32, float64...).
    codes : (Z, Y, X) ndarray of unsigned int
        Code per voxel, ``0 <= code < n_codes``; code 0 is not reduced.
    scale, offset : (Z,) ndarray of float64
        Per-slice factors: value = stored x scale + offset.
    n_codes : int
        Number of codes (one more than the largest code).

    Returns
    -------
    Partials
        ``(n_codes,)`` partial statistics; argmin/argmax are flat C-order voxel indices.
    """
    n_chunks = max(1, min(stored.shape[0] * stored.shape[1],
                          numba.get_num_threads() * CPU_CHUNKS_PER_THREAD))
    kernel = _fused_chunks_int if stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2 else _fused_chunks_float
    return merge_stack(*kernel(stored, codes, np.ascontiguousarray(scale, np.float64),
                               np.ascontiguousarray(offset, np.float64), int(n_codes), int(n_chunks)))


def _row_segments(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The sphere's offsets as runs along x: ``(dz, dy, dx_first, length)`` per run (sorted offsets)."""
    o = offsets[np.lexsort((offsets[:, 2], offsets[:, 1], offsets[:, 0]))]
    start = np.ones(len(o), bool)
    start[1:] = (o[1:, 0] != o[:-1, 0]) | (o[1:, 1] != o[:-1, 1]) | (o[1:, 2] != o[:-1, 2] + 1)
    first = np.flatnonzero(start)
    length = np.diff(np.append(first, len(o)))
    return o[first, 0].copy(), o[first, 1].copy(), o[first, 2].copy(), length.astype(np.int64)


@njit(parallel=True, cache=True, nogil=True)
def _peak_chunks(stored, codes, scale, offset, offs, seg_dz, seg_dy, seg_dx, seg_len, integer, code_ptr,
                 code_regions, region_max, n_regions, n_chunks):  # pragma: no cover - compiled
    nz, ny, nx = stored.shape
    n_rows = nz * ny
    flat = stored.reshape(-1)
    glob = np.full((n_chunks, n_regions), -np.inf)
    loc = np.full((n_chunks, n_regions), -np.inf)
    n_off = offs.shape[0]
    n_seg = seg_len.shape[0]
    # interior fast path: voxels at least the sphere's reach from every face need no bounds checks
    dflat = offs[:, 0] * (ny * nx) + offs[:, 1] * nx + offs[:, 2]
    seg_flat = seg_dz * (ny * nx) + seg_dy * nx + seg_dx
    rz = np.abs(offs[:, 0]).max()
    ry = np.abs(offs[:, 1]).max()
    rx = np.abs(offs[:, 2]).max()
    for ch in prange(n_chunks):
        r0 = ch * n_rows // n_chunks
        r1 = (ch + 1) * n_rows // n_chunks
        sc = np.empty(n_off)
        of = np.empty(n_off)
        ssc = np.empty(n_seg)
        sof = np.empty(n_seg)
        for r in range(r0, r1):
            z = r // ny
            y = r - z * ny
            inner_row = rz <= z < nz - rz and ry <= y < ny - ry
            if inner_row:
                for k in range(n_off):
                    sc[k] = scale[z + offs[k, 0]]
                    of[k] = offset[z + offs[k, 0]]
                for k in range(n_seg):  # a run shares its slice's factors: a x (sum of stored) + n b
                    ssc[k] = scale[z + seg_dz[k]]
                    sof[k] = offset[z + seg_dz[k]] * seg_len[k]
            for x in range(nx):
                c = np.int64(codes[z, y, x])
                if c == 0 or code_ptr[c] == code_ptr[c + 1]:
                    continue
                v = stored[z, y, x] * scale[z] + offset[z]
                if v != v:
                    continue
                total = 0.0
                n_in = 0
                if integer and inner_row and rx <= x < nx - rx:
                    # integer pixels cannot be NaN: sum each run of stored values exactly, then scale
                    i = r * nx + x
                    for k in range(n_seg):
                        j0 = i + seg_flat[k]
                        acc = np.int64(0)
                        for j in range(j0, j0 + seg_len[k]):
                            acc += np.int64(flat[j])
                        total += ssc[k] * acc + sof[k]
                    n_in = n_off
                elif inner_row and rx <= x < nx - rx:
                    i = r * nx + x
                    for k in range(n_off):
                        w = flat[i + dflat[k]] * sc[k] + of[k]
                        if w == w:
                            total += w
                            n_in += 1
                else:
                    for k in range(n_off):
                        zz = z + offs[k, 0]
                        yy = y + offs[k, 1]
                        xx = x + offs[k, 2]
                        if 0 <= zz < nz and 0 <= yy < ny and 0 <= xx < nx:
                            w = stored[zz, yy, xx] * scale[zz] + offset[zz]
                            if w == w:
                                total += w
                                n_in += 1
                m = total / n_in
                for j in range(code_ptr[c], code_ptr[c + 1]):
                    reg = code_regions[j]
                    if m > glob[ch, reg]:
                        glob[ch, reg] = m
                    if v == region_max[reg] and m > loc[ch, reg]:
                        loc[ch, reg] = m
    return glob, loc


def suv_peak_cpu(stored, codes, scale, offset, offsets, code_ptr, code_regions, region_max, n_regions):
    """IBSI local and global intensity peaks for several regions in one pass over ROI voxels.

    Parameters
    ----------
    stored, codes, scale, offset
        As in :func:`fused_reduce_cpu`.
    offsets : (K, 3) ndarray of int64
        ``(dz, dy, dx)`` offsets of the voxel centres inside the peak sphere.
    code_ptr, code_regions : ndarray of int64
        CSR map code -> regions: the regions of code ``c`` are
        ``code_regions[code_ptr[c]:code_ptr[c + 1]]``.
    region_max : (R,) ndarray of float64
        Maximum value of each region (from the fused pass), for the local peak.
    n_regions : int
        Number of regions ``R``.

    Returns
    -------
    global_peak, local_peak : (R,) ndarray of float64
        ``-inf`` where a region has no voxel.
    """
    n_chunks = max(1, min(stored.shape[0] * stored.shape[1], numba.get_num_threads() * CPU_CHUNKS_PER_THREAD))
    offsets = np.ascontiguousarray(offsets, np.int64)
    seg_dz, seg_dy, seg_dx, seg_len = _row_segments(offsets)
    integer = stored.dtype.kind in "iu" and stored.dtype.itemsize <= 4
    glob, loc = _peak_chunks(stored, codes, np.ascontiguousarray(scale, np.float64),
                             np.ascontiguousarray(offset, np.float64), offsets, seg_dz, seg_dy, seg_dx, seg_len,
                             integer, np.ascontiguousarray(code_ptr, np.int64),
                             np.ascontiguousarray(code_regions, np.int64),
                             np.ascontiguousarray(region_max, np.float64), int(n_regions), int(n_chunks))
    return glob.max(axis=0), loc.max(axis=0)
