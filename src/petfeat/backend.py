"""Choosing the compute backend: ``auto`` | ``cpu`` | ``gpu``, never a silent fallback."""

from __future__ import annotations

import os

from petfeat.errors import BackendError

BACKENDS = ("auto", "cpu", "gpu")


def gpu_available() -> tuple[bool, str]:
    """Whether a CUDA device can run the GPU kernels, and why not when it cannot.

    Under ``NUMBA_ENABLE_CUDASIM=1`` Numba's simulator counts as a device (for CI).
    """
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1":
        return True, "Numba CUDA simulator"
    try:
        from numba import cuda
    except ImportError as exc:  # pragma: no cover - numba is a core dependency
        return False, f"numba.cuda cannot be imported ({exc})"
    try:
        if not cuda.is_available():
            return False, "no CUDA driver or device found by numba.cuda"
        return True, str(cuda.get_current_device().name.decode() if hasattr(
            cuda.get_current_device().name, "decode") else cuda.get_current_device().name)
    except Exception as exc:  # noqa: BLE001 - driver errors come in many types
        return False, f"CUDA initialisation failed ({type(exc).__name__}: {exc})"


def resolve_backend(backend: str) -> str:
    """Turn ``auto``/``cpu``/``gpu`` into the backend that will run (``cpu`` or ``gpu``).

    Raises
    ------
    BackendError
        ``gpu`` was asked for and no device is usable, or the name is unknown.
    """
    if backend not in BACKENDS:
        raise BackendError(f"backend is {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend == "cpu":
        return "cpu"
    ok, why = gpu_available()
    if backend == "gpu" and not ok:
        raise BackendError(f"backend='gpu' was asked for but {why}. Install the GPU extra "
                           "(pip install 'petfeat[gpu]') on a machine with an NVIDIA GPU, or use backend='cpu' "
                           "(CLI: --backend cpu).")
    return "gpu" if ok else "cpu"
