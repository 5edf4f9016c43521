"""Chunks of a compiled CPU kernel on Python threads.

Every CPU kernel is a serial Numba function over a range of chunks ``[c0, c1)`` that releases the
GIL (``nogil=True``); :func:`for_chunks` hands its chunks to threads, one chunk at a time (a thread
that finishes early takes the next chunk). Numba's ``parallel=True`` would do the same with a
``prange``, but its parfor passes more than double a kernel's compile time (SUVpeak: 24 s against
12 s of CPU on a fresh install), and a kernel runs for milliseconds, so a thread pool's dispatch
(tens of microseconds per chunk) costs nothing measurable.

The thread count is ``NUMBA_NUM_THREADS`` (default: the machine's cores), lowered for the calling
thread with :func:`set_cpu_threads` or :func:`limited_threads` (a batch task uses 1: the workers
are the parallelism). Numba's own threading layer is never started.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numba

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_local = threading.local()  # this thread's count, when set


def _forget_pool() -> None:  # a forked child has none of its parent's threads
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool)


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, numba.config.NUMBA_NUM_THREADS - 1),
                                       thread_name_prefix="petfeat-kernel")
        return _pool


def cpu_threads() -> int:
    """Threads a kernel call of this thread may use: its :func:`set_cpu_threads`, else ``NUMBA_NUM_THREADS``."""
    return getattr(_local, "threads", None) or max(1, numba.config.NUMBA_NUM_THREADS)


def chunk_count(n: int) -> int:
    """Chunks of a kernel call over ``n`` items (slices, rows, blocks): a few per thread, at most ``n``, at least 1."""
    from .config import CPU_CHUNKS_PER_THREAD

    return max(1, min(int(n), cpu_threads() * CPU_CHUNKS_PER_THREAD))


def set_cpu_threads(threads: int) -> None:
    """Let the kernel calls of this thread use ``threads`` threads (1 to ``NUMBA_NUM_THREADS``)."""
    _local.threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))


@contextlib.contextmanager
def limited_threads(threads: int) -> Iterator[None]:
    """:func:`set_cpu_threads` for the calling thread inside the ``with`` block, then the count before."""
    before = getattr(_local, "threads", None)
    set_cpu_threads(threads)
    try:
        yield
    finally:
        _local.threads = before


def for_chunks(kernel, n_chunks: int, *args) -> None:
    """Run ``kernel(c, c + 1, *args)`` for each chunk ``c`` of ``range(n_chunks)`` on :func:`cpu_threads` threads.

    With one thread, ``kernel(0, n_chunks, *args)`` runs in the calling thread. Else the calling
    thread works too, so a call makes progress even when the pool is busy with other callers' chunks.
    An exception in any chunk is raised here, after every started chunk ended.
    """
    n_chunks = int(n_chunks)
    threads = min(n_chunks, cpu_threads())
    if threads <= 1:
        if n_chunks > 0:
            kernel(0, n_chunks, *args)
        return
    chunks = itertools.count()  # next() is atomic under the GIL: each chunk is taken once

    def work() -> None:
        while (c := next(chunks)) < n_chunks:
            kernel(c, c + 1, *args)

    pool = _get_pool()
    helpers = [pool.submit(work) for _ in range(threads - 1)]
    try:
        work()
    finally:
        errors = [f.exception() for f in helpers]  # waits for each
    for err in errors:
        if err is not None:
            raise err
