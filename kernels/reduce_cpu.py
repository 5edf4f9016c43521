"""CPU (Numba) fused pass: stored pixels -> SUV in registers -> per-code partial statistics.

One pass over the raw stored pixels and the code volume. Each voxel's value is
``stored * scale[z] + offset[z]`` in float64, where ``scale``/``offset`` fold the per-slice
RescaleSlope/Intercept and the SUV factor. Code 0 means "in no region" and is skipped.

Work is split into contiguous chunks of image rows, one partial per chunk and code. A row whose
codes are all 0 is recognised by one vectorised OR over its codes and skipped; inside a row, runs
of one code are found a 64-bit word of codes at a time and reduced together, flushed once per run.

* 8- and 16-bit integer pixels (the PET norm): each run's moments are the exact int64 sums of
  ``stored`` and ``stored**2`` plus integer min/max, a loop the compiler vectorises. The run's
  (n, mean, M2) in SUV space is ``(n, a S1/n + b, a^2 (n S2 - S1^2)/n)`` for the slice's
  ``a = scale[z]``, ``b = offset[z]``, where ``n S2 - S1^2`` is an exact integer (rows up to
  :data:`MAX_EXACT_ROW` voxels), merged into the chunk with Chan's formula. The argmin/argmax
  rescans the run only when it beats the chunk's current extreme.
* Other pixels (float, 32-bit) and longer rows: SUV per voxel in float64; NaN voxels are counted,
  never reduced (they add 0 through a select, so the loop vectorises). Each run's sums are shifted
  by its first non-NaN value, min/max are taken on the stored values (four chains), then the run
  is merged the same way.

Chunks merge with :func:`petfeat.kernels.partials.merge_stack`.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange
from numba.core.extending import overload
from numba.cpython.unsafe.numbers import trailing_zeros

from .config import CPU_CHUNKS_PER_THREAD
from .partials import INDEX_NONE, Partials, merge_stack

#: Longest image row (voxels) the integer kernel takes: there ``n * sum(s^2)`` and ``sum(s)^2`` of a
#: run of 16-bit values stay below 2**63, so the run's squared deviations are an exact integer.
MAX_EXACT_ROW = 32768


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


@njit(cache=True, nogil=True, inline="always")
def _run_moments(seg):  # pragma: no cover - compiled
    """Sum of s and of s^2 (exact, int64), min and max of an integer run ``seg`` (a 0-based view).

    The loop indexes a 0-based view: with a signed start index Numba adds a negative-index
    wraparound test per element, which stops the compiler from vectorising the loop.
    """
    s1 = np.int64(0)
    s2 = np.int64(0)
    smin = np.int32(seg[0])
    smax = smin
    for t in range(seg.shape[0]):
        v = np.int32(seg[t])
        s1 += v
        s2 += np.int64(v) * v
        smin = min(smin, v)
        smax = max(smax, v)
    return s1, s2, smin, smax


@njit(cache=True, nogil=True, inline="always")
def _flush_int(cnt, mean, m2, vmin, vmax, amin, amax, ch, c, seg, s1, s2, smin, smax, a, b,
               base):  # pragma: no cover - compiled
    """Merge an integer run (``seg``, first voxel at flat index ``base``) into partial [ch, c]."""
    n = seg.shape[0]
    # n * s2 - s1^2 is an exact integer (below 2**63 for rows up to MAX_EXACT_ROW voxels)
    _chan(cnt, mean, m2, ch, c, n, a * (s1 / n) + b, a * a * ((n * s2 - s1 * s1) / n))
    _merge_extremes(vmin, vmax, amin, amax, ch, c, seg, smin, smax, a, b, base)


@njit(cache=True, nogil=True, inline="always")
def _merge_extremes(vmin, vmax, amin, amax, ch, c, seg, smin, smax, a, b, base):  # pragma: no cover - compiled
    """Merge a run's extremes (its smallest and largest stored value) into partial [ch, c].

    The run's SUV extremes are the stored ones mapped by the slice's slope (swapped when it is
    negative); the run is rescanned for the voxel index only when it beats the partial.
    """
    hi = smax if a >= 0 else smin  # stored value of the run's highest SUV
    lo = smin if a >= 0 else smax
    vhi = hi * a + b
    vlo = lo * a + b
    if vhi > vmax[ch, c]:
        vmax[ch, c] = vhi
        amax[ch, c] = base + _first(seg, hi)
    if vlo < vmin[ch, c]:
        vmin[ch, c] = vlo
        amin[ch, c] = base + _first(seg, lo)


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _run_sums_float(seg, a, b):  # pragma: no cover - compiled
    """Non-NaN count, shift ``k`` (the first non-NaN value) and the sums of ``v - k``, ``(v - k)^2`` of a float run.

    ``v = seg * a + b`` in float64. NaN voxels add 0 through a select, so the loop vectorises
    (reassociated sums; not inlined, so the caller keeps strict IEEE order).
    """
    m = seg.shape[0]
    k = 0.0
    for t in range(m):
        v = seg[t] * a + b
        if v == v:
            k = v
            break
    n = 0
    s1 = 0.0
    s2 = 0.0
    for t in range(m):
        v = seg[t] * a + b
        ok = v == v
        d = v - k if ok else 0.0
        n += ok
        s1 += d
        s2 += d * d
    return n, k, s1, s2


@njit(cache=True, nogil=True, inline="always")
def _run_extremes(seg):  # pragma: no cover - compiled
    """Largest and smallest non-NaN value of a run, in four independent chains (NaN fails every comparison)."""
    n = seg.shape[0]
    h0 = h1 = h2 = h3 = -np.inf
    l0 = l1 = l2 = l3 = np.inf
    j = 0
    while j + 4 <= n:
        v0, v1, v2, v3 = seg[j], seg[j + 1], seg[j + 2], seg[j + 3]
        h0 = v0 if v0 > h0 else h0
        h1 = v1 if v1 > h1 else h1
        h2 = v2 if v2 > h2 else h2
        h3 = v3 if v3 > h3 else h3
        l0 = v0 if v0 < l0 else l0
        l1 = v1 if v1 < l1 else l1
        l2 = v2 if v2 < l2 else l2
        l3 = v3 if v3 < l3 else l3
        j += 4
    while j < n:
        h0 = seg[j] if seg[j] > h0 else h0
        l0 = seg[j] if seg[j] < l0 else l0
        j += 1
    return max(max(h0, h1), max(h2, h3)), min(min(l0, l1), min(l2, l3))


@njit(cache=True, nogil=True, inline="always")
def _first(seg, value):  # pragma: no cover - compiled
    """Index of the first element of ``seg`` equal to ``value`` (which it holds)."""
    for t in range(seg.shape[0]):
        if seg[t] == value:
            return t
    return 0


def _code_word(seg, j):
    """Codes ``seg[j:j + 64 // bits]`` packed little-endian in one uint64 (compiled to one unaligned load)."""


@overload(_code_word, inline="always")
def _code_word_impl(seg, j):
    bits = seg.dtype.bitwidth
    if bits == 8:
        def word(seg, j):  # pragma: no cover - compiled
            return (np.uint64(seg[j]) | (np.uint64(seg[j + 1]) << np.uint64(8))
                    | (np.uint64(seg[j + 2]) << np.uint64(16)) | (np.uint64(seg[j + 3]) << np.uint64(24))
                    | (np.uint64(seg[j + 4]) << np.uint64(32)) | (np.uint64(seg[j + 5]) << np.uint64(40))
                    | (np.uint64(seg[j + 6]) << np.uint64(48)) | (np.uint64(seg[j + 7]) << np.uint64(56)))
    elif bits == 16:
        def word(seg, j):  # pragma: no cover - compiled
            return (np.uint64(seg[j]) | (np.uint64(seg[j + 1]) << np.uint64(16))
                    | (np.uint64(seg[j + 2]) << np.uint64(32)) | (np.uint64(seg[j + 3]) << np.uint64(48)))
    elif bits == 32:
        def word(seg, j):  # pragma: no cover - compiled
            return np.uint64(seg[j]) | (np.uint64(seg[j + 1]) << np.uint64(32))
    else:
        def word(seg, j):  # pragma: no cover - compiled
            return np.uint64(seg[j])
    return word


def _code_lanes(seg):
    """``(codes per word, log2 of the bits per code, a word with 1 in each code's lowest bit)``."""


@overload(_code_lanes, inline="always")
def _code_lanes_impl(seg):
    bits = seg.dtype.bitwidth
    per = 64 // bits
    log2 = bits.bit_length() - 1
    ones = sum(1 << (t * bits) for t in range(per))

    def lanes(seg):  # pragma: no cover - compiled
        return per, log2, np.uint64(ones)
    return lanes


@njit(cache=True, nogil=True, inline="always")
def _row_is_background(crow, nx):  # pragma: no cover - compiled
    """True when every code of the row is 0 (an OR reduction the compiler vectorises, no early exit)."""
    acc = crow[0]
    for x in range(1, nx):
        acc |= crow[x]
    return acc == 0


@njit(cache=True, nogil=True, inline="always")
def _next_run(crow, x, nx):  # pragma: no cover - compiled
    """``(start, end, code)`` of the next run of one non-zero code in ``crow[x:nx]``; start is nx when none.

    Codes are compared a 64-bit word at a time (8 uint8 codes): a word XOR the run's code
    repeated is 0 while the run goes on, and its trailing zero count locates the first other
    code. Indices run over a 0-based view so that no negative-index test is needed.
    """
    seg = crow[x:nx]
    n = nx - x
    per, log2, ones = _code_lanes(seg)
    j = 0
    if seg[0] == 0:  # skip background
        while j + per <= n:
            w = _code_word(seg, j)
            if w != 0:
                j += np.int64(trailing_zeros(w)) >> log2
                break
            j += per
        else:
            while j < n and seg[j] == 0:
                j += 1
            if j >= n:
                return nx, nx, np.int64(0)
        seg = seg[j:]
        n -= j
        x += j
    cx = seg[0]
    pattern = np.uint64(cx) * ones
    j = 1
    while j + per <= n:
        w = _code_word(seg, j) ^ pattern
        if w != 0:
            return x, x + j + (np.int64(trailing_zeros(w)) >> log2), np.int64(cx)
        j += per
    while j < n and seg[j] == cx:
        j += 1
    return x, x + j, np.int64(cx)


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
                seg = row[x:e]
                s1, s2, smin, smax = _run_moments(seg)
                _flush_int(cnt, mean, m2, vmin, vmax, amin, amax, ch, c, seg, s1, s2, smin, smax, a, b, base + x)
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
                seg = row[x:e]
                n, k, s1, s2 = _run_sums_float(seg, a, b)
                nans[ch, c] += (e - x) - n
                if n > 0:
                    _chan(cnt, mean, m2, ch, c, n, k + s1 / n, max(s2 - s1 * (s1 / n), 0.0))
                    smax, smin = _run_extremes(seg)
                    _merge_extremes(vmin, vmax, amin, amax, ch, c, seg, smin, smax, a, b, base + x)
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
    exact = stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2 and stored.shape[2] <= MAX_EXACT_ROW
    kernel = _fused_chunks_int if exact else _fused_chunks_float
    return merge_stack(*kernel(stored, codes, np.ascontiguousarray(scale, np.float64),
                               np.ascontiguousarray(offset, np.float64), int(n_codes), int(n_chunks)))
