"""Whole-volume NumPy steps done in Z slabs, so that their temporaries stay small.

NumPy widens integer keys to ``int64`` (8 bytes per voxel): ``a.astype(np.int64)`` of a label
map allocates eight times the map. On a whole-body PET grid (18 M voxels at 2 mm) that is 144 MB
per temporary, more than the PET pixels themselves. Done slab by slab, the temporaries are
bounded by :data:`SLAB_VOXELS`.
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

