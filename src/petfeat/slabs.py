"""Whole-volume NumPy steps done in Z slabs, so that their temporaries stay small.

NumPy widens integer indices and counts to ``intp`` (8 bytes per voxel): ``np.bincount`` of a
uint8 label map, ``lut[labels]`` and ``a.astype(np.int64)`` each allocate eight times the label
map. On a whole-body PET grid (18 M voxels at 2 mm) that is 144 MB per temporary, more than the
PET pixels themselves. Done slab by slab, the temporaries are bounded by :data:`SLAB_VOXELS`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

#: Voxels per slab (an 8 MB int64 temporary).
SLAB_VOXELS = 1 << 20


def z_slabs(shape: tuple[int, ...], voxels: int | None = None) -> Iterator[slice]:
    """Slices along the first axis covering ``shape[0]``, each about ``voxels`` (default :data:`SLAB_VOXELS`)."""
    plane = int(np.prod(shape[1:], dtype=np.int64)) or 1
    step = max(1, (voxels or SLAB_VOXELS) // plane)
    for z0 in range(0, shape[0], step):
        yield slice(z0, min(shape[0], z0 + step))


def label_counts(arr: np.ndarray) -> np.ndarray:
    """``np.bincount(arr.ravel())`` of a non-negative integer volume, with slab-sized temporaries."""
    if arr.size == 0:
        return np.zeros(1, np.int64)
    if arr.ndim < 2:
        return np.bincount(arr.ravel())
    counts = np.zeros(int(arr.max()) + 1, np.int64)
    for s in z_slabs(arr.shape):
        part = np.bincount(arr[s].ravel())
        counts[:len(part)] += part
    return counts


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box (one slice per axis) holding every non-zero voxel; None when there is none."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if not len(hit):
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)
