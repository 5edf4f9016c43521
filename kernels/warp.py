"""Warp-level primitives of the GPU kernels, with twins for Numba's CUDA simulator.

On a device these are CUDA's warp shuffles and votes over the full warp. The simulator has none
of them, so under ``NUMBA_ENABLE_CUDASIM=1`` each is an exchange through a buffer between two
block barriers. That twin is exact on the condition the kernels keep: the block is one warp
(:data:`~petfeat.kernels.config.THREADS_PER_BLOCK` is 32 under the simulator) and every thread of
the warp calls the primitive, in the same order (warp-uniform control flow, which the device's
``*_sync`` forms with a full mask require too). The kernel logic built on them, the code that
decides what to exchange and how to combine it, is then the same in CI as on a device.
"""

from __future__ import annotations

from numba import cuda

from .config import SIMULATOR

#: Every lane of the warp takes part.
FULL_MASK = 0xFFFFFFFF

if SIMULATOR:
    # Plain Python, not simulated device functions: the simulator runs a device function of another
    # module with that module's ``cuda`` swapped for its fake one, and a thread leaving the function
    # swaps it back while others are still inside (seen as "module 'numba.cuda' has no attribute
    # 'threadIdx'"). These use the simulator's thread objects directly. The simulator runs one block
    # at a time, so one exchange buffer serves every block.
    import threading

    _SLOTS: list = [None] * 32

    def _exchange(values, source):
        """Publish this lane's ``values`` and return those of lane ``source(lane)``, between barriers."""
        thread = threading.current_thread()
        lane = thread.threadIdx.x % 32
        thread.syncthreads()
        _SLOTS[lane] = values
        thread.syncthreads()
        return _SLOTS[source(lane)]

    def shfl_down(value, delta):
        """Value of lane ``lane + delta``; a lane past the warp's end gets its own value."""
        return _exchange(value, lambda lane: lane + delta if lane + delta < 32 else lane)

    def shfl_down_7(delta, v0, v1, v2, v3, v4, v5, v6):
        """:func:`shfl_down` of seven values, in one exchange."""
        return _exchange((v0, v1, v2, v3, v4, v5, v6), lambda lane: lane + delta if lane + delta < 32 else lane)

    def shfl_down_3(delta, v0, v1, v2):
        """:func:`shfl_down` of three values, in one exchange."""
        return _exchange((v0, v1, v2), lambda lane: lane + delta if lane + delta < 32 else lane)

    def shfl_up(value, delta):
        """Value of lane ``lane - delta``; a lane before the warp's start gets its own value."""
        return _exchange(value, lambda lane: lane - delta if lane >= delta else lane)

    def any_lane(predicate):
        """True on every lane when ``predicate`` holds on at least one lane of the warp."""
        return threading.current_thread().syncthreads_or(1 if predicate else 0) != 0

else:  # pragma: no cover - compiled for a device

    @cuda.jit(device=True, inline=True)
    def shfl_down(value, delta):
        """Value of lane ``lane + delta``; a lane past the warp's end gets its own value."""
        return cuda.shfl_down_sync(FULL_MASK, value, delta)

    @cuda.jit(device=True, inline=True)
    def shfl_down_7(delta, v0, v1, v2, v3, v4, v5, v6):
        """:func:`shfl_down` of seven values."""
        return (shfl_down(v0, delta), shfl_down(v1, delta), shfl_down(v2, delta), shfl_down(v3, delta),
                shfl_down(v4, delta), shfl_down(v5, delta), shfl_down(v6, delta))

    @cuda.jit(device=True, inline=True)
    def shfl_down_3(delta, v0, v1, v2):
        """:func:`shfl_down` of three values."""
        return shfl_down(v0, delta), shfl_down(v1, delta), shfl_down(v2, delta)

    @cuda.jit(device=True, inline=True)
    def shfl_up(value, delta):
        """Value of lane ``lane - delta``; a lane before the warp's start gets its own value."""
        return cuda.shfl_up_sync(FULL_MASK, value, delta)

    @cuda.jit(device=True, inline=True)
    def any_lane(predicate):
        """True on every lane when ``predicate`` holds on at least one lane of the warp."""
        return cuda.any_sync(FULL_MASK, predicate) != 0
