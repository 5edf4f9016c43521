"""Label census: how many voxels hold each id, and the box of the non-zero ones, in one pass.

Every label file is read this way before it is resampled: its volume per id (the label table's
native volumes) and the box of its labelled voxels (only that box is resampled onto the PET grid).
A TotalSegmentator class file on a CT grid (600 x 512 x 512 in ``benchmarks/bench_label_census.py``,
one byte per voxel) is almost all background; ``np.bincount`` took 0.55 s on one, three times its
decompression (eight-byte indices, and every background voxel increments the same counter, one
dependent store after another), and the box three more passes. This pass takes 13 ms.

Here rows are read as 64-bit words where they can be: a word of background is one compare; the ids
of other words are counted by runs of equal ids in registers, so a counter in memory is touched
once per run, not once per voxel. Chunks of rows run in parallel, each with its own table (ids up
to :data:`PRIVATE_TABLE_IDS`; wider id ranges take one thread).
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros, trailing_zeros

from .borrowed import borrowed
from .threads import chunk_count, for_chunks

#: Largest id range for which every chunk keeps its own table of counts; above it one thread counts.
PRIVATE_TABLE_IDS = 1 << 16


class Census(NamedTuple):
    """What :func:`label_census` finds."""

    counts: np.ndarray  #: voxels per id, ``np.bincount(arr.ravel())`` (int64, length max id + 1)
    box: tuple[slice, ...] | None  #: per axis, the smallest slice holding every non-zero voxel; None if none


@njit(cache=True, nogil=True, inline="always")
def _close_row(ext, r, ny, first, last):  # pragma: no cover - compiled
    """Grow the extents ``(z0, z1, y0, y1, x0, x1)`` by row ``r``'s non-zero span ``[first, last]``."""
    z = r // ny
    y = r - z * ny
    if ext[1] < 0:
        ext[0] = z
    ext[1] = z
    ext[2] = min(ext[2], y)
    ext[3] = max(ext[3], y)
    ext[4] = min(ext[4], first)
    ext[5] = max(ext[5], last)


@njit(cache=True, nogil=True)
def _census(c0, c1, rows, words, bits, n_rows, ny, nx, counts, ext):  # pragma: no cover - compiled
    """Counts of non-zero ids (``counts[ch]``) and extents (``ext[ch]``) per chunk of the ``n_rows`` rows of ``nx`` ids.

    ``words`` are the volume's bytes as 64-bit words per row (``bits`` per id, little-endian); when
    rows are not whole aligned words, ``words`` is empty and ``rows``, the volume as ``(nz * ny, nx)``,
    gives the ids one by one. ``counts[ch, 0]`` is left meaningless (background is counted by difference).
    ``counts`` come zeroed. Chunks ``[c0, c1)`` (:func:`petfeat.kernels.threads.for_chunks`).
    """
    rows, words, counts, ext = borrowed(rows, words, counts, ext)
    n_chunks = counts.shape[0]
    per = 64 // bits
    mask = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
    for ch in range(c0, c1):
        e = ext[ch]
        e[0], e[1], e[2], e[3], e[4], e[5] = -1, -1, ny, -1, nx, -1
        cnt = counts[ch]
        cur = 0  # the id of the current run and its length (a run continues across background words)
        run = 0
        for r in range(ch * n_rows // n_chunks, (ch + 1) * n_rows // n_chunks):
            first = -1
            last = -1
            if words.shape[0] > 0:
                wr = words[r]
                for j in range(wr.shape[0]):
                    w = wr[j]
                    if w == 0:
                        continue
                    if first < 0:
                        first = j * per + np.int64(trailing_zeros(w)) // bits
                    last = j * per + (63 - np.int64(leading_zeros(w))) // bits
                    for k in range(per):
                        v = np.int64((w >> np.uint64(k * bits)) & mask)
                        if v != cur:
                            cnt[cur] += run
                            cur = v
                            run = 0
                        run += 1
            else:
                row = rows[r]
                for x in range(nx):
                    v = np.int64(row[x])
                    if v != 0:
                        if first < 0:
                            first = x
                        last = x
                    if v != cur:
                        cnt[cur] += run
                        cur = v
                        run = 0
                    run += 1
            if last >= 0:
                _close_row(e, r, ny, first, last)
        cnt[cur] += run


def _read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a`` (no copy)."""
    view = a.view()
    view.flags.writeable = False
    return view


def label_census(arr: np.ndarray) -> Census:
    """Voxel count of every id (as ``np.bincount``) and the box of the non-zero voxels of ``arr``.

    Parameters
    ----------
    arr : ndarray of unsigned integers or bool, 1 to 3 dimensions
        A label map or mask.

    Returns
    -------
    Census
        ``counts`` of length ``arr.max() + 1`` (``[arr.size]`` for an all-background map) and ``box``,
        a slice per axis, or None when no voxel is non-zero.
    """
    arr = np.asarray(arr)
    if arr.dtype != bool and arr.dtype.kind != "u":
        raise ValueError(f"label_census counts unsigned integer or boolean ids, not {arr.dtype}")
    if not 1 <= arr.ndim <= 3:
        raise ValueError(f"label_census takes 1 to 3 dimensions, not {arr.ndim}")
    if arr.size == 0:
        return Census(np.zeros(1, np.int64), None)
    vol = np.ascontiguousarray(arr.reshape((1,) * (3 - arr.ndim) + arr.shape))
    if vol.dtype == bool:
        vol = vol.view(np.uint8)
    rows = vol.reshape(-1, vol.shape[2])
    n_ids = 1 << (8 * vol.itemsize) if vol.itemsize <= 2 else int(rows.max()) + 1
    whole_words = (rows.shape[1] * vol.itemsize) % 8 == 0 and rows.ctypes.data % 8 == 0 and sys.byteorder == "little"
    n_rows, nx = rows.shape
    if whole_words:  # every id width reads words: one compiled kernel (rows is then a placeholder)
        words, rows = rows.view(np.uint64), np.zeros((1, 0), np.uint8)
    else:
        words = np.zeros((0, 1), np.uint64)
    # read-only views: writable and read-only inputs (memory-mapped files) share one compiled kernel
    rows, words = _read_only(rows), _read_only(words)
    n_chunks = 1
    if n_ids <= PRIVATE_TABLE_IDS:
        n_chunks = chunk_count(min(n_rows, n_rows * nx // 65536))
    counts, ext = np.zeros((n_chunks, n_ids), np.int64), np.empty((n_chunks, 6), np.int64)
    for_chunks(_census, n_chunks, rows, words, 8 * vol.itemsize, n_rows, vol.shape[1], nx, counts, ext)
    total = counts.sum(axis=0)
    total[0] = arr.size - total[1:].sum()
    nonzero = np.flatnonzero(total)
    total = total[:max(int(nonzero[-1]) + 1 if nonzero.size else 1, 1)]
    hit = ext[ext[:, 1] >= 0]
    if not len(hit):
        return Census(total, None)
    lo = hit[:, 0::2].min(axis=0)
    hi = hit[:, 1::2].max(axis=0)
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))
    return Census(total, box[3 - arr.ndim:])
