"""CPU (Numba) fused pass: stored pixels -> SUV in registers -> per-code partial statistics.

One pass over the raw stored pixels and the code volume. Each voxel's value is
``stored * scale[z] + offset[z]`` in float64, where ``scale``/``offset`` fold the per-slice
RescaleSlope/Intercept and the SUV factor. Code 0 means "in no region" and is skipped.

Work is split into contiguous chunks of image rows, one partial per chunk and code. Inside a row,
runs of one code are found a 64-bit word of codes at a time (background too: a row in no region
costs one word compare per 8 uint8 codes) and each run is reduced in one vectorised loop. After a
row that held a region, the pixels of the row :data:`~petfeat.kernels.config.CPU_PREFETCH_ROWS`
ahead are prefetched, so that memory is read while the current row is computed.

The loops index flat (1-D) views of the volumes with unsigned indices and make no array slices.
A slice is a new array object: Numba updates its parent's reference count with atomic operations,
on a counter every thread shares, a few times per run. Unsigned indices also spare the
negative-index wraparound test, which would stop the compiler from vectorising the run loops.

* 8- and 16-bit integer pixels (the PET norm): each run's sums of ``stored`` and ``stored**2``
  (exact, int64) and its integer min/max are added to its code's *group*: the code's runs in the
  same slice, at most :data:`MAX_EXACT_GROUP` voxels (a group ends with the slice or after as many
  rows as that bound allows). A group's (n, mean, M2) in SUV space is
  ``(n, a S1/n + b, a^2 (n S2 - S1^2)/n)`` for the slice's ``a = scale[z]``, ``b = offset[z]``,
  where ``n S2 - S1^2`` is an exact integer; it is merged into the chunk's partial with Chan's
  formula once per group, not once per run. The group keeps where its extreme values first
  occur (the run's start); the voxel index is searched for only when the group beats the chunk.
* Other pixels (float, 32-bit) and longer rows: SUV per voxel in float64; NaN voxels are counted,
  never reduced (they add 0 through a select). Each run's sums are shifted by its first non-NaN
  value and min/max are taken on the stored values, in one vector-IR pass for float32/float64
  pixels (:func:`~petfeat.kernels.run_moments.run_moments_float`), in two loops for others; the
  run is then merged with Chan's formula.

Chunks merge with :func:`petfeat.kernels.partials.merge_stack`.
"""

from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic, overload

from .borrowed import borrowed
from .config import CPU_FUSED_CHUNKS, CPU_PREFETCH_ROWS, LLVM_IR
from .partials import INDEX_NONE, Partials, merge_stack
from .threads import for_chunks

try:  # vector-IR run moments, a prefetch hint and a bit scan, written against Numba's extension internals
    if not LLVM_IR:
        raise ImportError("PETFEAT_LLVM_IR=0")
    from numba.cpython.unsafe.numbers import trailing_zeros

    from .prefetch import prefetch
    from .run_moments import BLOCK, FLOAT_BLOCK, run_moments16, run_moments_float
except ImportError:  # those internals moved (a newer Numba), or turned off: plain loops, the same results
    from .run_loops import BLOCK, FLOAT_BLOCK, prefetch, run_moments16, run_moments_float, trailing_zeros

_LITTLE_ENDIAN = sys.byteorder == "little"

#: Index type of the hot loops: an unsigned index needs no negative-index wraparound test.
_u = np.uint64

#: Longest image row (voxels) the integer kernel takes (a group holds at least one row).
MAX_EXACT_ROW = 32768

#: Most voxels of one code in one group of the integer kernel: for ``n`` values of at most 65535 in
#: magnitude, ``n * sum(s^2)`` and ``sum(s)^2`` stay below 2**63 (46340 x 65535 < 2**31.5), so the
#: group's ``n S2 - S1^2`` is an exact int64.
MAX_EXACT_GROUP = 46340

# Columns of the per-code group accumulator (one 64-byte row per code): voxel count, sum of
# stored values, sum of their squares, smallest and largest stored value, and the start of the
# first run holding each.
_N, _S1, _S2, _MIN, _MAX, _MIN_AT, _MAX_AT = range(7)


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


def _alloc(n_chunks: int, n_codes: int) -> tuple[np.ndarray, ...]:
    """Per-chunk partial arrays: count, mean, M2, min, max, argmin, argmax, NaN count."""
    shape = (n_chunks, n_codes)
    return (np.zeros(shape, np.int64), np.zeros(shape, np.float64), np.zeros(shape, np.float64),
            np.full(shape, np.inf), np.full(shape, -np.inf), np.full(shape, INDEX_NONE, np.int64),
            np.full(shape, INDEX_NONE, np.int64), np.zeros(shape, np.int64))


def _group_alloc(n_chunks: int, n_codes: int, exact: bool) -> np.ndarray:
    """Per chunk: the group accumulator (rows ``[ch, :n_codes]``, one per code), then the codes it holds (flat)."""
    return np.zeros((n_chunks, n_codes + -(-n_codes // 8), 8) if exact else (1, 1, 8), np.int64)


@njit(cache=True, nogil=True, inline="always")
def _run_moments_loop(s, x, e):  # pragma: no cover - compiled
    """Sum of s and of s^2 (exact, int64), min and max of the integer run ``s[x:e]`` (a vectorised loop)."""
    s1 = np.int64(0)
    s2 = np.int64(0)
    smin = np.int32(s[_u(x)])
    smax = smin
    for t in range(x, e):
        v = np.int32(s[_u(t)])
        s1 += v
        s2 += np.int64(v) * v
        smin = min(smin, v)
        smax = max(smax, v)
    return s1, s2, np.int64(smin), np.int64(smax)


def _run_moments(s, x, e):
    """Sum of s and of s^2 (exact, int64), min and max of the integer run ``s[x:e]``."""


@overload(_run_moments, inline="always")
def _run_moments_impl(s, x, e):
    if s.dtype.bitwidth == 16:
        def moments(s, x, e):  # pragma: no cover - compiled
            if s.size >= BLOCK:
                return run_moments16(s, np.int64(x), np.int64(e))
            return _run_moments_loop(s, x, e)
    else:
        def moments(s, x, e):  # pragma: no cover - compiled
            return _run_moments_loop(s, x, e)
    return moments


@njit(cache=True, nogil=True, inline="always")
def _group_add(g, touched, nt, c, x, e, s1, s2, smin, smax):  # pragma: no cover - compiled
    """Add the integer run ``[x, e)`` (sums ``s1``, ``s2``, extremes ``smin``, ``smax``) to code ``c``'s group.

    ``touched[:nt]`` lists the codes with a non-empty group; returns the new ``nt``.
    """
    if g[c, _N] == 0:
        touched[nt] = c
        nt += 1
        g[c, _MIN] = smin
        g[c, _MIN_AT] = x
        g[c, _MAX] = smax
        g[c, _MAX_AT] = x
    else:  # strict comparisons: the first run holding the extreme wins (C order)
        if smax > g[c, _MAX]:
            g[c, _MAX] = smax
            g[c, _MAX_AT] = x
        if smin < g[c, _MIN]:
            g[c, _MIN] = smin
            g[c, _MIN_AT] = x
    g[c, _N] += e - x
    g[c, _S1] += s1
    g[c, _S2] += s2
    return nt


@njit(cache=True, nogil=True, inline="always")
def _group_flush(g, touched, nt, s, a, b, cnt, mean, m2, vmin, vmax, amin, amax, ch):  # pragma: no cover - compiled
    """Merge the groups of ``touched[:nt]`` (one slice: slope ``a``, intercept ``b``) into partial [ch, :].

    Empties them and returns 0, the new number of touched codes.
    """
    for k in range(nt):
        c = touched[k]
        n = g[c, _N]
        s1 = g[c, _S1]
        # n * S2 - S1^2 is an exact integer (n <= MAX_EXACT_GROUP)
        _chan(cnt, mean, m2, ch, c, n, a * (s1 / n) + b, a * a * ((n * g[c, _S2] - s1 * s1) / n))
        # each extreme lies in the run starting at its recorded index
        _merge_extremes(vmin, vmax, amin, amax, ch, c, s, g[c, _MIN], g[c, _MIN_AT], g[c, _MAX], g[c, _MAX_AT],
                        s.size, a, b)
        g[c, _N] = 0
        g[c, _S1] = 0
        g[c, _S2] = 0
    return 0


@njit(cache=True, nogil=True, inline="always")
def _merge_extremes(vmin, vmax, amin, amax, ch, c, s, smin, min_at, smax, max_at, end, a,
                    b):  # pragma: no cover - compiled
    """Merge stored extremes ``smin`` and ``smax`` into partial [ch, c]; each first occurs in ``s[at:end]``.

    The SUV extremes are the stored ones mapped by the slice's slope (swapped when it is negative);
    ``s`` is searched for the voxel index only when an extreme beats the partial.
    """
    hi, hi_at = (smax, max_at) if a >= 0 else (smin, min_at)  # stored value of the highest SUV
    lo, lo_at = (smin, min_at) if a >= 0 else (smax, max_at)
    vhi = hi * a + b
    vlo = lo * a + b
    if vhi > vmax[ch, c]:
        vmax[ch, c] = vhi
        amax[ch, c] = _first(s, hi_at, end, hi)
    if vlo < vmin[ch, c]:
        vmin[ch, c] = vlo
        amin[ch, c] = _first(s, lo_at, end, lo)


@njit(cache=True, nogil=True, inline="always")
def _run_shift(s, x, e, a, b):  # pragma: no cover - compiled
    """The shift of a float run's sums: its first non-NaN ``v = s * a + b`` (0 if there is none)."""
    for t in range(x, e):
        v = s[_u(t)] * a + b
        if v == v:
            return v
    return 0.0


@njit(cache=True, nogil=True, inline="always")
def _run_float_loops(s, x, e, a, b):  # pragma: no cover - compiled
    """:func:`_run_float_moments` as two loops: the shifted sums, then the stored extremes."""
    n, k, s1, s2 = _run_sums_float(s, x, e, a, b)
    smax, smin = _run_extremes(s, x, e)
    return n, k, s1, s2, smax, smin


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _run_sums_float(s, x, e, a, b):  # pragma: no cover - compiled
    """Non-NaN count, shift ``k`` (the first non-NaN value) and the sums of ``v - k``, ``(v - k)^2`` of run ``s[x:e]``.

    ``v = s * a + b`` in float64. NaN voxels add 0 through a select, so the loop vectorises
    (reassociated sums; not inlined, so the caller keeps strict IEEE order).
    """
    k = _run_shift(s, x, e, a, b)
    n = 0
    s1 = 0.0
    s2 = 0.0
    for t in range(x, e):
        v = s[_u(t)] * a + b
        ok = v == v
        d = v - k if ok else 0.0
        n += ok
        s1 += d
        s2 += d * d
    return n, k, s1, s2


@njit(cache=True, nogil=True, inline="always")
def _run_extremes(s, x, e):  # pragma: no cover - compiled
    """Largest and smallest non-NaN value of run ``s[x:e]``, in four independent chains (NaN fails every comparison)."""
    h0 = h1 = h2 = h3 = -np.inf
    l0 = l1 = l2 = l3 = np.inf
    j = x
    while j + 4 <= e:
        v0, v1, v2, v3 = s[_u(j)], s[_u(j + 1)], s[_u(j + 2)], s[_u(j + 3)]
        h0 = v0 if v0 > h0 else h0
        h1 = v1 if v1 > h1 else h1
        h2 = v2 if v2 > h2 else h2
        h3 = v3 if v3 > h3 else h3
        l0 = v0 if v0 < l0 else l0
        l1 = v1 if v1 < l1 else l1
        l2 = v2 if v2 < l2 else l2
        l3 = v3 if v3 < l3 else l3
        j += 4
    while j < e:
        v = s[_u(j)]
        h0 = v if v > h0 else h0
        l0 = v if v < l0 else l0
        j += 1
    return max(max(h0, h1), max(h2, h3)), min(min(l0, l1), min(l2, l3))


def _run_float_moments(s, x, e, a, b):
    """``(n, k, S1, S2, max, min)`` of run ``s[x:e]``: :func:`_run_sums_float` and :func:`_run_extremes` in one.

    float32 and float64 pixels (arrays of at least ``FLOAT_BLOCK`` values) take the vector-IR kernel
    :func:`~petfeat.kernels.run_moments.run_moments_float`: one pass, no scalar epilogue, one
    reduction per run; other pixels the two loops.
    """


@overload(_run_float_moments, inline="always")
def _run_float_moments_impl(s, x, e, a, b):
    if s.dtype not in (types.float32, types.float64):
        def loops(s, x, e, a, b):  # pragma: no cover - compiled
            return _run_float_loops(s, x, e, a, b)
        return loops

    def moments(s, x, e, a, b):  # pragma: no cover - compiled
        if s.size < FLOAT_BLOCK:
            return _run_float_loops(s, x, e, a, b)
        k = _run_shift(s, x, e, a, b)
        n, s1, s2, smax, smin = run_moments_float(s, np.int64(x), np.int64(e), a, b, k)
        return n, k, s1, s2, smax, smin
    return moments


@njit(cache=True, nogil=True, inline="always")
def _first(s, x, e, value):  # pragma: no cover - compiled
    """Index of the first element of ``s[x:e]`` equal to ``value`` (which it holds), as an index of ``s``."""
    for t in range(x, e):
        if s[_u(t)] == value:
            return t
    return x


@intrinsic
def _code_word(typingctx, c, i):
    """Codes ``c[i:i + 64 // bits]`` packed little-endian in one uint64: one unaligned 64-bit load.

    ``c`` is a 1-D C-contiguous array of codes, ``i`` an index with 64 bits of codes from it in the
    array (not checked). An intrinsic: typed and lowered once per signature (an inlined helper of
    loads and shifts is typed and lowered again at each call site, seconds of a fresh install's compile).
    """
    if not (isinstance(c, types.Array) and c.ndim == 1 and c.layout == "C" and isinstance(c.dtype, types.Integer)
            and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aty, ary, [args[1]], wraparound=False, boundscheck=False)
        i64 = ir.IntType(64)
        if _LITTLE_ENDIAN:
            return builder.load(builder.bitcast(ptr, i64.as_pointer()), align=1)
        bits = aty.dtype.bitwidth  # other byte orders: lane by lane, lane k into bits [k * bits, (k + 1) * bits)
        word = ir.Constant(i64, 0)
        for k in range(64 // bits):
            lane = builder.zext(builder.load(builder.gep(ptr, [ir.Constant(i64, k)])), i64)
            word = builder.or_(word, builder.shl(lane, ir.Constant(i64, k * bits)))
        return word

    return types.uint64(c, i), codegen


def _code_lanes(c):
    """``(codes per word, log2 of the bits per code, a word with 1 in each code's lowest bit)``."""


@overload(_code_lanes, inline="always")
def _code_lanes_impl(c):
    bits = c.dtype.bitwidth
    per = 64 // bits
    log2 = bits.bit_length() - 1
    ones = sum(1 << (t * bits) for t in range(per))

    def lanes(c):  # pragma: no cover - compiled
        return per, log2, _u(ones)
    return lanes


@njit(cache=True, nogil=True, inline="always")
def _next_run(c, x, end):  # pragma: no cover - compiled
    """``(start, end, code)`` of the next run of one non-zero code in ``c[x:end]``; start is ``end`` when none.

    Indices are into ``c`` (a flat code volume or one row). Codes are compared a 64-bit word at a
    time (8 uint8 codes): a word XOR the run's code repeated is 0 while the run goes on, and its
    trailing zero count locates the first other code. The last few codes before ``end`` are read as
    the word ending at ``end``, its lanes before the scan position shifted out (no per-code loop).
    """
    per, log2, ones = _code_lanes(c)
    if c[_u(x)] == 0:  # skip background
        while x + per <= end:
            w = _code_word(c, x)
            if w != 0:
                x += np.int64(trailing_zeros(w)) >> log2
                break
            x += per
        else:
            if x >= end:
                return end, end, np.int64(0)
            if end < per:  # too short for a word
                while x < end and c[_u(x)] == 0:
                    x += 1
                if x >= end:
                    return end, end, np.int64(0)
            else:  # the last word of c[:end], its lanes before x shifted out
                w = _code_word(c, end - per) >> _u((x - (end - per)) << log2)
                if w == 0:
                    return end, end, np.int64(0)
                x += np.int64(trailing_zeros(w)) >> log2
    cx = c[_u(x)]
    pattern = _u(cx) * ones
    j = x + 1
    while j + per <= end:
        w = _code_word(c, j) ^ pattern
        if w != 0:
            return x, j + (np.int64(trailing_zeros(w)) >> log2), np.int64(cx)
        j += per
    if j >= end:
        return x, end, np.int64(cx)
    if end < per:
        while j < end and c[_u(j)] == cx:
            j += 1
        return x, j, np.int64(cx)
    w = (_code_word(c, end - per) ^ pattern) >> _u((j - (end - per)) << log2)  # lanes past end are 0: the run
    if w == 0:
        return x, end, np.int64(cx)
    return x, j + (np.int64(trailing_zeros(w)) >> log2), np.int64(cx)


@njit(cache=True, nogil=True, inline="always")
def _prefetch_row(s, x, nx):  # pragma: no cover - compiled
    """Prefetch ``s[x:x + nx]`` (the pixels of one image row), one hint per 64-byte line."""
    for t in range(x, x + nx, max(1, 64 // s.itemsize)):
        prefetch(s, _u(t))


@njit(cache=True, nogil=True, error_model="numpy")
def _fused_chunks_int(c0, c1, stored, codes, scale, offset, n_chunks, groups, cnt, mean, m2, vmin, vmax, amin, amax,
                      nans):  # pragma: no cover - compiled
    """Integer pixels (8/16 bit): exact moments per run of equal codes, added up per code and slice.

    Chunks ``[c0, c1)`` of ``n_chunks``; ``groups`` is :func:`_group_alloc`'s, the partials :func:`_alloc`'s.
    """
    nz, ny, nx = stored.shape
    n_rows = nz * ny
    s = borrowed(stored).reshape(-1)  # flat views: voxel (z, y, x) at (z * ny + y) * nx + x
    cf = borrowed(codes).reshape(-1)
    scale, offset, groups, cnt, mean, m2, vmin, vmax, amin, amax = borrowed(scale, offset, groups, cnt, mean, m2, vmin,
                                                                            vmax, amin, amax)
    group_rows = max(1, MAX_EXACT_GROUP // nx)  # rows per group at most
    for ch in range(c0, c1):
        r0 = ch * n_rows // n_chunks
        r1 = (ch + 1) * n_rows // n_chunks
        n_codes = cnt.shape[1]  # the partials' width: _group_alloc's rows of codes
        g = groups[ch][:n_codes]
        touched = groups[ch][n_codes:].reshape(-1)
        nt = 0
        z = r0 // ny
        y = r0 - z * ny
        rows = 0
        hot = True
        for r in range(r0, r1 + 1):  # r1: the last flush (one call site: the helper is inlined once)
            if r == r1 or y == ny or rows == group_rows:
                nt = _group_flush(g, touched, nt, s, scale[z], offset[z], cnt, mean, m2, vmin, vmax, amin, amax, ch)
                if r == r1:
                    break
                rows = 0
                if y == ny:
                    y = 0
                    z += 1
            y += 1
            rows += 1
            x = r * nx
            end = x + nx
            if hot:  # regions come in blocks of rows: read ahead after a row that held one
                _prefetch_row(s, x + CPU_PREFETCH_ROWS * nx, nx)
                hot = False
            while x < end:
                x, e, c = _next_run(cf, x, end)
                if x >= end:
                    break
                hot = True
                s1, s2, smin, smax = _run_moments(s, x, e)
                nt = _group_add(g, touched, nt, c, x, e, s1, s2, smin, smax)
                x = e


@njit(cache=True, nogil=True)
def _fused_chunks_float(c0, c1, stored, codes, scale, offset, n_chunks, groups, cnt, mean, m2, vmin, vmax, amin,
                        amax, nans):  # pragma: no cover - compiled
    """Other pixels (float, 32-bit): SUV per voxel in float64, NaN counted; moments per run of equal codes.

    As :func:`_fused_chunks_int` (``groups`` unused).
    """
    nz, ny, nx = stored.shape
    n_rows = nz * ny
    s = borrowed(stored).reshape(-1)  # flat views: voxel (z, y, x) at (z * ny + y) * nx + x
    cf = borrowed(codes).reshape(-1)
    scale, offset, cnt, mean, m2, vmin, vmax, amin, amax, nans = borrowed(scale, offset, cnt, mean, m2, vmin, vmax,
                                                                          amin, amax, nans)
    for ch in range(c0, c1):
        r0 = ch * n_rows // n_chunks
        r1 = (ch + 1) * n_rows // n_chunks
        z = r0 // ny
        y = r0 - z * ny
        hot = True
        for r in range(r0, r1):
            if y == ny:
                y = 0
                z += 1
            y += 1
            a = scale[z]
            b = offset[z]
            x = r * nx
            end = x + nx
            if hot:  # regions come in blocks of rows: read ahead after a row that held one
                _prefetch_row(s, x + CPU_PREFETCH_ROWS * nx, nx)
                hot = False
            while x < end:
                x, e, c = _next_run(cf, x, end)
                if x >= end:
                    break
                hot = True
                n, k, s1, s2, smax, smin = _run_float_moments(s, x, e, a, b)
                nans[ch, c] += (e - x) - n
                if n > 0:
                    _chan(cnt, mean, m2, ch, c, n, k + s1 / n, max(s2 - s1 * (s1 / n), 0.0))
                    _merge_extremes(vmin, vmax, amin, amax, ch, c, s, smin, x, smax, x, e, a, b)
                x = e


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
    # a fixed number of chunks, not one per thread share: the same merge order, the same bits, on any thread count
    n_chunks = max(1, min(stored.shape[0] * stored.shape[1], CPU_FUSED_CHUNKS))
    exact = stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2 and stored.shape[2] <= MAX_EXACT_ROW
    return merge_stack(*fused_partials(stored, codes, scale, offset, n_codes, n_chunks, exact))


def fused_partials(stored: np.ndarray, codes: np.ndarray, scale: np.ndarray, offset: np.ndarray, n_codes: int,
                   n_chunks: int, exact: bool) -> tuple[np.ndarray, ...]:
    """:func:`fused_reduce_cpu`'s ``(n_chunks, n_codes)`` partial arrays, one row per chunk of image rows.

    ``exact`` takes the integer kernel (8/16-bit pixels, rows of at most :data:`MAX_EXACT_ROW`), else the
    float kernel. The rows merge with :func:`petfeat.kernels.partials.merge_stack`.
    """
    kernel = _fused_chunks_int if exact else _fused_chunks_float
    width = -(-int(n_codes) // 8) * 8  # rows of whole cache lines: chunks on other threads share none
    partials = _alloc(int(n_chunks), width)
    for_chunks(kernel, n_chunks, np.ascontiguousarray(stored), np.ascontiguousarray(codes),
               np.ascontiguousarray(scale, np.float64), np.ascontiguousarray(offset, np.float64), int(n_chunks),
               _group_alloc(int(n_chunks), width, exact), *partials)
    return tuple(p[:, :n_codes] for p in partials)
