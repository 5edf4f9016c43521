"""Compile the SUVpeak kernel in a second process while this one reads a study (fresh installs).

Every kernel compiles once per machine, then Numba's on-disk cache holds it. On a fresh install a
study's kernels take about 20 s of CPU to compile on the 2-core machine, half of it the SUVpeak
kernel (``benchmarks/bench_cold_start.py`` prints both processes' shares). When that kernel is not
cached for a study's pixel type, :func:`start_peak_compile` starts ``python -m petfeat.kernels.warmup``
to compile it on a tiny volume of the same types (writing the cache) while this process reads the
labels and compiles the other kernels; :func:`wait_peak_compile`, called before the first SUVpeak,
waits for it, so that the kernel loads from the cache instead of compiling twice. If the helper
fails, or the study's codes differ from the guess (more than 255 codes), this process compiles what
it needs itself, as it would without a helper. A helper still running when this process exits (a
study that failed before its SUVpeak) is stopped: no process outlives the command.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from collections.abc import Sequence

import numpy as np

#: Longest wait for the helper (s); past it this process compiles the kernel itself.
WAIT_S = 300.0

_helper: subprocess.Popen | None = None


def _types(stored_dtype, spacing_zyx: Sequence[float]) -> tuple[np.dtype, np.dtype]:
    """The study's pixel dtype and the dtype its SUVpeak row and disc sums take."""
    from petfeat.features import sphere_offsets

    from .peak_cpu import sphere_plan, sums_dtype

    stored_dtype = np.dtype(stored_dtype)
    plan = sphere_plan(sphere_offsets(spacing_zyx))
    return stored_dtype, sums_dtype(np.zeros(1, stored_dtype), plan) if plan is not None else np.dtype(np.float64)


def kernels_cached() -> bool:
    """Whether Numba's cache holds petfeat's fused-pass and SUVpeak kernels (``NUMBA_CACHE_DIR`` or ``__pycache__``).

    Both: a cache left by an interrupted first run, or by a run without SUVpeak, may hold one only.
    """
    from pathlib import Path

    from numba.core import config

    if config.CACHE_DIR:
        where = [d for d in Path(config.CACHE_DIR).glob("kernels_*") if d.is_dir()]
    else:
        where = [Path(__file__).parent / "__pycache__"]
    return any(any(d.glob("reduce_cpu._fused_chunks_int-*.nbi")) and any(d.glob("peak_cpu._peak_chunks-*.nbi"))
               for d in where)


def peak_cached(stored_dtype, spacing_zyx: Sequence[float]) -> bool:
    """Whether Numba's cache holds the separable SUVpeak kernel for these pixels and this machine.

    Reads the kernel's cache index (Numba internals); True when it cannot tell, so that nothing is
    started on a guess.
    """
    from .peak_cpu import _peak_chunks

    try:
        pixels, sums = _types(stored_dtype, spacing_zyx)
        cache = _peak_chunks._cache
        magic = _peak_chunks.targetctx.codegen().magic_tuple()
        for key in cache._cache_file._load_index():
            args = getattr(key[0], "args", key[0])
            if key[1] == magic and args[2].dtype.name == pixels.name and args[21].dtype.name == sums.name:
                return True
        return False
    except Exception:  # noqa: BLE001 - a Numba without these internals: compile in this process, as always
        return True


def start_peak_compile(stored_dtype, spacing_zyx: Sequence[float], nx: int) -> bool:
    """Start the helper process when the SUVpeak kernel of these pixels is not cached; True if started.

    ``nx`` is the study's row length: rows of whole 64-bit words of codes take the word-scan region
    boxes, others the voxel scan, so the helper compiles the one the study will use.
    """
    global _helper
    if _helper is not None or os.environ.get("NUMBA_DISABLE_JIT") == "1" or peak_cached(stored_dtype, spacing_zyx):
        return False
    args = [np.dtype(stored_dtype).name, *(repr(float(s)) for s in spacing_zyx), str(16 if nx % 8 == 0 else 12)]
    _helper = subprocess.Popen([sys.executable, "-m", "petfeat.kernels.warmup", *args],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    atexit.register(_stop_helper, _helper)
    return True


def _stop_helper(helper: subprocess.Popen) -> None:
    """Stop a helper that is still compiling when this process exits."""
    if helper.poll() is None:
        helper.kill()
        helper.wait(10)


def wait_peak_compile(timeout: float = WAIT_S) -> None:
    """Wait for the helper started by :func:`start_peak_compile`, if any (no-op otherwise)."""
    global _helper
    if _helper is None:
        return
    helper, _helper = _helper, None
    try:
        helper.wait(timeout)
    except subprocess.TimeoutExpired:
        helper.kill()


def compile_peak(stored_dtype, spacing_zyx: Sequence[float], nx: int) -> None:
    """Run the SUVpeak kernel on a tiny volume of these types (compiling and caching it)."""
    from petfeat.features import sphere_offsets

    from .peak_cpu import suv_peak_cpu

    offsets = sphere_offsets(spacing_zyx)
    reach = np.abs(offsets).max(axis=0)
    shape = (int(2 * reach[0] + 3), 8, int(nx))
    stored = np.ones(shape, np.dtype(stored_dtype))
    codes = np.zeros(shape, np.uint8)
    codes[:, 2:5, 3:9] = 1  # every non-zero code in a region: the word-scan boxes where rows allow
    ptr, flat = np.array([0, 0, 1], np.int64), np.array([0], np.int64)
    suv_peak_cpu(stored, codes, np.ones(shape[0]), np.zeros(shape[0]), offsets, ptr, flat, np.ones(1), 1)


def main(argv: list[str] | None = None) -> int:
    """``python -m petfeat.kernels.warmup DTYPE DZ DY DX NX``: compile the SUVpeak kernel for these types."""
    argv = sys.argv[1:] if argv is None else argv
    compile_peak(argv[0], [float(v) for v in argv[1:4]], int(argv[4]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
