"""What the GPU kernels need from Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``: CI, no device).

Two things, both inert on a device:

* :func:`simulator_pace`: while a simulated kernel runs, the GIL changes hands every 0.1 ms
  instead of 5 ms. The simulator runs each GPU thread as a Python thread, and a block barrier waits
  until every one of them has run; at the default interval each barrier costs milliseconds
  (integer kernel on a 32768-voxel tile: 50 s -> 4 s). Main thread only (see the function).
* :func:`install_shared_allocation_lock`: the simulator hands out a block's shared arrays from a
  dict, filled by whichever thread asks first, without a lock. Two threads asking at once can each
  make an array and keep their own, uninitialised, copy: that thread's atomics then go nowhere the
  block sees. Seen in 4 of ~1280 launches of the integer kernel at the faster pace (a wrong mean,
  an int32 overflow from recycled memory, a thread that left the tile loop early and hung the
  block). The replacement is the simulator's own lookup, under a lock: 2176 launches since, none
  wrong.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import traceback

from .config import SIMULATOR

_ALLOCATION_LOCK = threading.Lock()


@contextlib.contextmanager
def simulator_pace():
    """While a simulated kernel runs, hand the GIL between threads every 0.1 ms (nothing on a device).

    Only when called from the main thread: in a host such as a Dask worker, whose kernels run on a
    task thread, the process and its other threads are not ours to pace. There it also hung the
    GPU batch test once in a CI rehearsal. py-spy's native stacks showed every thread
    waiting: the worker's main thread in Dask's gc callback inside ``sys._current_frames`` (Dask's
    profiler), a simulator thread in an import, a thread starting up in a lock acquire. That fits a
    known CPython 3.11 deadlock between ``sys._current_frames`` and a garbage collection that runs
    Python code; a short switch interval makes the GIL change hands inside that window.
    """
    if not SIMULATOR or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def install_shared_allocation_lock() -> None:
    """Make the simulator's shared-array allocation thread-safe (once; nothing on a device)."""
    if not SIMULATOR:
        return
    import numpy as np
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    if getattr(kernelapi.FakeCUDAShared.array, "locked", False):
        return

    def array(self, shape, dtype):
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        if shape == 0:  # dynamic shared memory: one buffer, as in the simulator
            return np.frombuffer(self._dynshared.data, dtype=dtype, count=self._dynshared_size // dtype.itemsize)
        caller = tuple(traceback.extract_stack(sys._getframe(1), limit=1)[0][0:2])  # the kernel's file and line
        with _ALLOCATION_LOCK:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    array.locked = True
    kernelapi.FakeCUDAShared.array = array
