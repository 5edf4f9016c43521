"""Label layers -> code volume, and the voxels that carry chosen ids, in compiled passes.

:func:`petfeat.regions.build_codes` combines label layers into one code per voxel: a mixed-radix
key of the layers' ids per voxel, the set of keys that occur, and a lookup table from key to code.
Each pass here reads every layer once and keeps the keys of a block of voxels in a small
thread-local buffer (no volume-sized key, no per-layer temporaries): :func:`mark_keys` marks the
keys that occur, :func:`apply_keys` writes each voxel's code through the table, :func:`or_tables`
ORs per-layer table entries (the label classes' keys), :func:`fill_keys` writes int64 keys (the sort
path of key ranges too wide for a table).

Every layer count, layer dtype and output dtype goes through one compiled signature of
:func:`_pass`: it takes a tuple of :data:`MAX_LAYERS` flat byte views (:func:`pack_layers`:
little-endian bytes, each layer's item size beside it, unused slots a one-byte stand-in), uint32
tables and the output's bytes. Compiling it takes about 3 s of CPU on a fresh install (then it
is cached); :func:`fill_keys` compiles its own, only when a key range needs sorting.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

from .borrowed import borrowed
from .threads import chunk_count, for_chunks

#: Most layers one pass reads (more are coded in groups by :func:`petfeat.regions.build_codes`).
MAX_LAYERS = 8
#: Voxels whose keys a thread holds at once (an 8 KB buffer that stays in L1).
_BLOCK = 2048
_SPARE = np.zeros(1, np.uint8)


def _n_chunks(size: int) -> int:
    """Parallel chunks of a flat array: a few per thread, none under 65536 values."""
    return chunk_count(size // 65536)


def pack_layers(arrays: Sequence[np.ndarray]) -> tuple[tuple[np.ndarray, ...], np.ndarray, int]:
    """The arrays as a pass reads them: ``(byte views, item sizes, voxels)``.

    Parameters
    ----------
    arrays : sequence of ndarray
        Up to :data:`MAX_LAYERS` arrays of one size, of unsigned integers or bool (non-negative
        ``int64`` keys also work; values of eight-byte items must stay below ``2**63``).

    Returns
    -------
    tuple
        :data:`MAX_LAYERS` flat little-endian byte views (unused slots hold a one-byte stand-in),
        the item size of each (int64, 0 for the unused slots) and the number of values per array.
        C-contiguous little-endian arrays are viewed, not copied.
    """
    if not 1 <= len(arrays) <= MAX_LAYERS:
        raise ValueError(f"a pass reads 1 to {MAX_LAYERS} layers, not {len(arrays)}")
    views, widths, size = [], np.zeros(MAX_LAYERS, np.int64), None
    for j, a in enumerate(arrays):
        a = np.asarray(a)
        if a.dtype.kind not in "biu" or a.itemsize not in (1, 2, 4, 8):
            raise ValueError(f"layer {j} has dtype {a.dtype}; passes read unsigned integers or bool")
        if size is None:
            size = a.size
        elif a.size != size:
            raise ValueError(f"layer {j} has {a.size} values, layer 0 has {size}")
        a = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False)
        views.append(a.reshape(-1).view(np.uint8))
        widths[j] = a.itemsize
    views += [_SPARE] * (MAX_LAYERS - len(views))
    return tuple(views), widths, int(size)


@njit(cache=True, nogil=True, inline="always")
def _borrowed_layers(layers):  # pragma: no cover - compiled
    """The :data:`MAX_LAYERS` views of :func:`pack_layers`, borrowed (:mod:`petfeat.kernels.borrowed`)."""
    return (borrowed(layers[0]), borrowed(layers[1]), borrowed(layers[2]), borrowed(layers[3]), borrowed(layers[4]),
            borrowed(layers[5]), borrowed(layers[6]), borrowed(layers[7]))


MARK, APPLY, HIT, HIT_MARK = 0, 1, 2, 3  # what a pass does with each voxel's key (see _pass)


@njit(cache=True, nogil=True)
def _block_keys(layers, widths, mults, n_layers, hit, tab, lo, m, key):  # pragma: no cover - compiled
    """``key[:m]`` of voxels ``lo:lo + m``: the sum of id x ``mults[j]``, or (``hit``) the OR of ``tab[mults[j] + id]``.

    Sums are in the key's dtype. Indices are unsigned: the loops carry no negative-index
    wrap-around and vectorise.
    """
    for j in range(n_layers):
        a = layers[j]
        w = widths[j]
        mult = mults[j]
        if w == 1 and hit:
            s = np.uint64(mult)
            if j == 0:
                for b in range(m):
                    key[b] = tab[s + np.uint64(a[np.uint64(lo + b)])]
            else:
                for b in range(m):
                    key[b] |= tab[s + np.uint64(a[np.uint64(lo + b)])]
        elif w == 1:
            if j == 0:
                for b in range(m):
                    key[b] = a[np.uint64(lo + b)] * mult
            else:
                for b in range(m):
                    key[b] += a[np.uint64(lo + b)] * mult
        else:
            for b in range(m):
                i = np.uint64(w * (lo + b))
                v = np.int64(0)
                for k in range(w):
                    v |= np.int64(a[i + np.uint64(k)]) << (8 * k)
                if hit:
                    v = np.int64(tab[np.uint64(mult + v)])
                else:
                    v *= mult
                if j == 0:
                    key[b] = v
                elif hit:
                    key[b] |= v
                else:
                    key[b] += v


@njit(cache=True, nogil=True)
def _pass(c0, c1, layers, widths, mults, n_layers, size, mode, present, lut, out,
          n_chunks):  # pragma: no cover - compiled
    """Chunks ``[c0, c1)`` of a pass over the voxels of the layers, in blocks of keys (:func:`_block_keys`).

    ``mode`` MARK sets ``present[key]``; APPLY writes ``out[i] = lut[key]``; HIT writes
    ``out[i] = OR_j lut[mults[j] + id_j]``; HIT_MARK writes that and sets ``present`` of it. Keys
    are int32 (every key below ``2**31``). ``out`` is the bytes of the output (its item size is
    ``out.size // size``), so that one compiled signature serves every output dtype.
    """
    ow = out.size // size if size else 1
    layers = _borrowed_layers(layers)
    widths, mults, present, lut, out = borrowed(widths, mults, present, lut, out)
    key = np.empty(_BLOCK, np.int32)
    for ch in range(c0, c1):
        last = -1
        end = (ch + 1) * size // n_chunks
        for lo in range(ch * size // n_chunks, end, _BLOCK):
            m = min(_BLOCK, end - lo)
            _block_keys(layers, widths, mults, n_layers, mode >= HIT, lut, lo, m, key)
            if mode == MARK or mode == HIT_MARK:
                for b in range(m):
                    k = key[b]
                    if k != last:  # runs of one key are common; a marked key is only read (no shared writes)
                        last = k
                        if not present[np.uint64(k)]:
                            present[np.uint64(k)] = True
                if mode == MARK:
                    continue
            if mode == APPLY:
                for b in range(m):
                    key[b] = lut[np.uint64(key[b])]
            if ow == 1:
                for b in range(m):
                    out[np.uint64(lo + b)] = key[b]
            elif ow == 2:
                o2 = out.view(np.uint16)
                for b in range(m):
                    o2[np.uint64(lo + b)] = key[b]
            else:
                o4 = out.view(np.uint32)
                for b in range(m):
                    o4[np.uint64(lo + b)] = key[b]


@njit(cache=True, nogil=True)
def _fill(c0, c1, layers, widths, mults, n_layers, size, out, n_chunks):  # pragma: no cover - compiled
    """``out[i]`` = int64 key of voxel ``i`` (the sort path of key ranges past ``2**31``), chunks ``[c0, c1)``."""
    layers = _borrowed_layers(layers)
    widths, mults, out = borrowed(widths, mults, out)
    for ch in range(c0, c1):
        end = (ch + 1) * size // n_chunks
        for lo in range(ch * size // n_chunks, end, _BLOCK):
            _block_keys(layers, widths, mults, n_layers, False, mults, lo, min(_BLOCK, end - lo), out[lo:])


def _mults(mults, n: int, dtype) -> np.ndarray:
    m = np.zeros(MAX_LAYERS, dtype)
    m[:n] = 1 if mults is None else np.asarray(mults, np.int64)
    return m


def _run(layers, mults, mode: int, present=None, lut=None, out=None) -> None:
    """:func:`_pass` over ``layers`` (the casts here touch only tables of a few entries per key)."""
    table = present if mode == MARK else lut
    if mode == HIT_MARK and present.size < 1 << int(np.bitwise_or.reduce(lut.astype(np.uint32))).bit_length():
        raise ValueError("the present table must hold every key the tables' bits can form")
    if table.size > 1 << 31:
        raise ValueError(f"keys of {table.size} entries do not fit the passes' int32 keys")
    views, widths, size = pack_layers(layers)
    m = _mults(mults, len(layers), np.int32)
    present = _SPARE.view(bool) if present is None else present
    lut = np.zeros(1, np.uint32) if lut is None else lut.astype(np.uint32, copy=False)
    out = _SPARE if out is None else out.reshape(-1).view(np.uint8)
    n_chunks = _n_chunks(size)
    for_chunks(_pass, n_chunks, views, widths, m, len(layers), size, mode, present, lut, out, n_chunks)


def _check_out(layers, out: np.ndarray, what: str) -> None:
    if not out.flags.c_contiguous or out.shape != np.shape(layers[0]):
        raise ValueError(f"{what} writes into a C-contiguous array of the layers' shape")


def mark_keys(layers: Sequence[np.ndarray], mults: Sequence[int] | None, present: np.ndarray) -> None:
    """Set ``present[k]`` for every key ``k = sum_j layers[j] * mults[j]`` that occurs.

    ``present`` is a 1-D bool table longer than the largest key (at most ``2**31`` entries),
    updated in place. ``mults`` default to 1 (then one layer's values are the keys).
    """
    _run(layers, mults, MARK, present=present)


def apply_keys(layers: Sequence[np.ndarray], mults: Sequence[int] | None, lut: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = lut[key]`` with the key of :func:`mark_keys`.

    ``lut`` is read as uint32 (pass a uint32 table to skip a cast); ``out`` is C-contiguous, of the
    layers' shape, with items of 1, 2 or 4 bytes (the code volume).
    """
    _check_out(layers, out, "apply_keys")
    if out.itemsize not in (1, 2, 4):
        raise ValueError(f"apply_keys writes items of 1, 2 or 4 bytes, not {out.dtype}")
    _run(layers, mults, APPLY, lut=lut, out=out)


def fill_keys(layers: Sequence[np.ndarray], mults: Sequence[int], out: np.ndarray) -> None:
    """``out[...] = sum_j layers[j] * mults[j]`` (int64 ``out``, C-contiguous, the layers' shape)."""
    _check_out(layers, out, "fill_keys")
    if out.dtype != np.int64:
        raise ValueError("fill_keys writes int64 keys")
    views, widths, size = pack_layers(layers)
    n_chunks = _n_chunks(size)
    for_chunks(_fill, n_chunks, views, widths, _mults(mults, len(layers), np.int64), len(layers), size, out.reshape(-1),
               n_chunks)


def mark_present(key: np.ndarray, present: np.ndarray) -> None:
    """Set ``present[k]`` for every value ``k`` of ``key`` (integers in ``[0, present.size)``, any shape).

    ``present`` is a 1-D bool table, updated in place, so that one table serves every slab.
    """
    mark_keys([key], None, present)


def apply_lut(key: np.ndarray, lut: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = lut[key]`` (``out`` C-contiguous, the shape of ``key``), in parallel."""
    if not out.flags.c_contiguous or out.shape != key.shape:
        raise ValueError("apply_lut writes into a C-contiguous array of the key's shape")
    apply_keys([key], None, lut, out)


def table_layout(layers: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
    """Where each layer's entries start in one table of :func:`or_tables`, and the table's length.

    Each layer gets an entry for every id its dtype holds (256 for one byte, 65536 for two), so a
    pass needs no range checks.
    """
    lens = [1 << (8 * np.asarray(a).itemsize) for a in layers]
    return np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64), int(sum(lens))


def or_tables(layers: Sequence[np.ndarray], table: np.ndarray, starts: Sequence[int], out: np.ndarray,
              present: np.ndarray | None = None) -> None:
    """``out[...] = OR_j table[starts[j] + layers[j]]`` in one compiled pass.

    With ``present`` (a bool table longer than any key), the same pass also sets ``present[key]``
    for every key that occurs.

    ``layers`` hold one- or two-byte ids; ``table`` (read as uint32) has an entry for every id each
    layer's dtype holds from ``starts[j]`` on; ``out`` is C-contiguous, of the layers' shape, with
    items of 1, 2 or 4 bytes. With each layer's entries in bits of their own, the result is a
    mixed-radix key of all layers whose radices are powers of two.
    """
    _check_out(layers, out, "or_tables")
    if out.itemsize not in (1, 2, 4):
        raise ValueError(f"or_tables writes items of 1, 2 or 4 bytes, not {out.dtype}")
    if max(np.asarray(a).itemsize for a in layers) > 2:
        raise ValueError("or_tables reads one- or two-byte ids")
    _run(layers, starts, HIT if present is None else HIT_MARK, present=present, lut=table, out=out)
