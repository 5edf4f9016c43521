"""Plain-loop twins of the LLVM-IR helpers of the CPU fused pass: the same results, no Numba internals.

The vector-IR run moments and the prefetch hint are written against Numba's extension internals
(``numba.extending.intrinsic``, ``numba.core.cgutils``, llvmlite IR), which a Numba release may
move. :mod:`.reduce_cpu` takes these loops instead when those internals cannot be imported, or when
``PETFEAT_LLVM_IR=0`` asks for them; the fused pass is then slower on short runs, never different.
``tests/test_run_moments.py`` checks both against the same exact oracle.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Same block sizes as the vector-IR helpers (callers keep a scalar loop for arrays shorter than these).
BLOCK = 32
FLOAT_BLOCK = 16


@njit(cache=True, inline="always")
def run_moments16(array, start, stop):
    """``(sum, sum of squares, min, max)`` of ``array[start:stop]`` (16-bit integers) as exact int64."""
    s = np.int64(0)
    q = np.int64(0)
    lo = np.int64(array[start])
    hi = lo
    for i in range(start, stop):
        v = np.int64(array[i])
        s += v
        q += v * v
        lo = min(lo, v)
        hi = max(hi, v)
    return s, q, lo, hi


@njit(cache=True, inline="always")
def run_moments_float(array, start, stop, slope, intercept, shift):
    """``(n, S1, S2, max, min)`` of the run as :func:`.run_moments.run_moments_float` defines them (NaN left out)."""
    n = np.int64(0)
    s1 = 0.0
    s2 = 0.0
    hi = -np.inf
    lo = np.inf
    for i in range(start, stop):
        x = np.float64(array[i])
        v = x * slope + intercept
        if v == v:
            n += 1
            d = v - shift
            s1 += d
            s2 += d * d
        if x == x:
            hi = max(hi, x)
            lo = min(lo, x)
    return n, s1, s2, hi, lo


@njit(cache=True, inline="always")
def prefetch(array, index):
    """No hint: the hardware prefetcher alone."""
    return None


@njit(cache=True, inline="always")
def trailing_zeros(x):
    """Number of trailing zero bits of a non-zero unsigned 64-bit word."""
    n = 0
    while (x & np.uint64(1)) == 0:
        x >>= np.uint64(1)
        n += 1
    return n
