"""Label layers -> code volume: which keys occur, and each voxel's code through a lookup table.

:func:`petfeat.regions.build_codes` combines label layers into one code per voxel: a key per
voxel (a layer's id, or a mixed-radix key of several layers), the set of keys that occur, and a
lookup table from key to code. NumPy's fancy indexing did the last two at 2-4 ns per voxel, four
times the fused pass itself on a 600 x 200 x 200 volume; these loops read each key once, in
parallel over chunks of the flat volume.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .config import CPU_CHUNKS_PER_THREAD

#: Largest key range for which every chunk keeps its own table of the keys it saw (then OR-ed);
#: above it one thread marks them all.
PRIVATE_TABLE_KEYS = 1 << 16


@njit(parallel=True, cache=True, nogil=True)
def _mark_private(key, present, n_chunks):  # pragma: no cover - compiled
    total = present.shape[0]
    seen = np.zeros((n_chunks, total), np.bool_)
    n = key.shape[0]
    for ch in prange(n_chunks):
        for i in range(ch * n // n_chunks, (ch + 1) * n // n_chunks):
            seen[ch, key[i]] = True
    for ch in range(n_chunks):
        for k in range(total):
            present[k] |= seen[ch, k]


@njit(cache=True, nogil=True)
def _mark_serial(key, present):  # pragma: no cover - compiled
    for i in range(key.shape[0]):
        present[key[i]] = True


def _n_chunks(size: int) -> int:
    """Parallel chunks of a flat array: a few per thread, none under 65536 values."""
    return max(1, min(size // 65536, numba.get_num_threads() * CPU_CHUNKS_PER_THREAD))


def mark_present(key: np.ndarray, present: np.ndarray) -> None:
    """Set ``present[k]`` for every value ``k`` of ``key`` (integers in ``[0, present.size)``, any shape).

    ``present`` is a 1-D bool table, updated in place, so that one table serves every slab.
    """
    flat = np.ascontiguousarray(key).reshape(-1)
    if present.shape[0] <= PRIVATE_TABLE_KEYS:
        _mark_private(flat, present, _n_chunks(flat.size))
    else:
        _mark_serial(flat, present)


@njit(parallel=True, cache=True, nogil=True)
def _apply(key, lut, out, n_chunks):  # pragma: no cover - compiled
    n = key.shape[0]
    for ch in prange(n_chunks):
        for i in range(ch * n // n_chunks, (ch + 1) * n // n_chunks):
            out[i] = lut[key[i]]


def apply_lut(key: np.ndarray, lut: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = lut[key]`` (``out`` C-contiguous, the shape of ``key``), in parallel."""
    if not out.flags.c_contiguous or out.shape != key.shape:
        raise ValueError("apply_lut writes into a C-contiguous array of the key's shape")
    flat = np.ascontiguousarray(key).reshape(-1)
    _apply(flat, lut, out.reshape(-1), _n_chunks(flat.size))
