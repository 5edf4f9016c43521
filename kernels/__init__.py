"""Compute kernels of petfeat: CPU (Numba) and GPU (CUDA through Numba) twins.

``fused_reduce`` and ``suv_peak`` dispatch on ``backend`` (``"cpu"`` or ``"gpu"``; resolve
``"auto"`` with :func:`petfeat.backend.resolve_backend` first). The GPU module is imported only
when the GPU backend is used, so importing petfeat never initialises CUDA or imports CuPy.
"""

from __future__ import annotations

from .partials import Partials, combine_codes, merge, merge_stack
from .peak_cpu import suv_peak_cpu
from .reduce_cpu import fused_reduce_cpu

__all__ = ["Partials", "combine_codes", "fused_reduce", "merge", "merge_stack", "suv_peak"]


def _gpu():
    from . import reduce_gpu  # lazy: numba.cuda initialisation only on first GPU use

    return reduce_gpu


def fused_reduce(stored, codes, scale, offset, n_codes: int, backend: str = "cpu") -> Partials:
    """Fused SUV conversion and per-code reduction on ``backend`` (``"cpu"`` or ``"gpu"``)."""
    if backend == "cpu":
        return fused_reduce_cpu(stored, codes, scale, offset, n_codes)
    if backend == "gpu":
        return _gpu().fused_reduce_gpu(stored, codes, scale, offset, n_codes)
    raise ValueError(f"backend is {backend!r}; the kernels take 'cpu' or 'gpu' (resolve 'auto' first).")


def suv_peak(stored, codes, scale, offset, offsets, code_ptr, code_regions, region_max, n_regions: int,
             backend: str = "cpu"):
    """IBSI global and local intensity peaks of several regions on ``backend``."""
    if backend == "cpu":
        return suv_peak_cpu(stored, codes, scale, offset, offsets, code_ptr, code_regions, region_max, n_regions)
    if backend == "gpu":
        return _gpu().suv_peak_gpu(stored, codes, scale, offset, offsets, code_ptr, code_regions, region_max,
                                   n_regions)
    raise ValueError(f"backend is {backend!r}; the kernels take 'cpu' or 'gpu' (resolve 'auto' first).")
