"""Borrowed array views inside compiled kernels: no reference counting in the hot loops.

A Numba array carries a pointer to its memory's reference count (its *meminfo*). Each slice, view
or array handed to a helper updates that count with an atomic instruction (``lock inc``/``lock
dec``) on a counter every thread shares; in the fused pass's loop over runs of voxels these updates
took 70% of the time. :func:`borrowed` returns the same arrays with no meminfo, the way Numba's own
``parallel=True`` loops see theirs: every count update on them, and on any view of them, becomes a
test of a null pointer. The caller's arrays must outlive the borrowed ones: a kernel borrows its
own arguments, which its Python caller holds for the whole call (never an array the kernel
allocates itself, which Numba frees after its last use).
"""

from __future__ import annotations

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def borrowed(typingctx, *arrays):
    """``arrays`` without their reference counts (meminfo null): one array, or a tuple of them for several."""
    arrays = tuple(arrays[0]) if len(arrays) == 1 and isinstance(arrays[0], types.StarArgTuple) else tuple(arrays)
    if not arrays or not all(isinstance(a, types.Array) for a in arrays):
        return None
    out = arrays[0] if len(arrays) == 1 else types.Tuple(arrays)
    sig = out(types.StarArgTuple(arrays))

    def codegen(context, builder, signature, args):
        values = cgutils.unpack_tuple(builder, args[0], len(arrays))
        views = []
        for aty, value in zip(arrays, values):
            ary = context.make_array(aty)(context, builder, value)
            ary.meminfo = cgutils.get_null_value(ary.meminfo.type)
            ary.parent = cgutils.get_null_value(ary.parent.type)
            views.append(ary._getvalue())
        return views[0] if len(views) == 1 else context.make_tuple(builder, signature.return_type, views)

    return sig, codegen
