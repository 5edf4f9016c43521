"""Device side of :mod:`petfeat.kernels.partials`: a block's running partial, one row of the outputs.

Both GPU fused kernels keep each block's partial in its row ``b`` of the output arrays (count,
mean, M2, min, max, argmin, argmax, NaN count) and merge each tile into it with Chan's formula;
the host merges the rows with :func:`~petfeat.kernels.partials.merge_stack`.
"""

from __future__ import annotations

import math

from numba import cuda

from .partials import INDEX_NONE

_BIG = INDEX_NONE


@cuda.jit(device=True, inline=True)
def clear_row(o_cnt, o_mean, o_m2, o_min, o_max, o_amin, o_amax, o_nan, b, c):  # pragma: no cover
    """Code ``c`` of block ``b``'s partial: the empty partial (the merge's identity)."""
    o_cnt[b, c] = 0
    o_mean[b, c] = 0.0
    o_m2[b, c] = 0.0
    o_min[b, c] = math.inf
    o_max[b, c] = -math.inf
    o_amin[b, c] = _BIG
    o_amax[b, c] = _BIG
    o_nan[b, c] = 0


@cuda.jit(device=True, inline=True)
def merge_into_row(o_cnt, o_mean, o_m2, o_min, o_max, o_amin, o_amax, b, c, nb, mb, m2b, vlo, lo_at, vhi,
                   hi_at):  # pragma: no cover
    """Merge ``nb > 0`` values (mean ``mb``, M2 ``m2b``, extremes at ``lo_at``/``hi_at``) into [b, c].

    The tiles of a block come in voxel order, so an equal extreme keeps the earlier (smaller) index.
    """
    na = o_cnt[b, c]
    nn = na + nb
    ma = o_mean[b, c]
    delta = mb - ma
    o_mean[b, c] = ma + delta * nb / nn
    o_m2[b, c] = o_m2[b, c] + m2b + delta * delta * na * nb / nn
    o_cnt[b, c] = nn
    if vhi > o_max[b, c]:
        o_max[b, c] = vhi
        o_amax[b, c] = hi_at
    if vlo < o_min[b, c]:
        o_min[b, c] = vlo
        o_amin[b, c] = lo_at
