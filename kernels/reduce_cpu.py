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
    """``(start, end, code)`` of the next run of one non-zero code in ``[x, nx)``; start is nx when none."""
    if crow[x] == 0:
        x = _skip_background(crow, x, nx)
        if x >= nx:
            return nx, nx, np.int64(0)
    cx = crow[x]
    e = x + 1
    while e + 8 <= nx:  # 8 codes per step while the whole block continues the run
        acc = crow[e] ^ cx
        for t in range(1, 8):
            acc |= crow[e + t] ^ cx
        if acc != 0:
            break
        e += 8
    while e < nx and crow[e] == cx:
        e += 1
    return x, e, np.int64(cx)


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
