"""The CPU kernels' thread runner and borrowed views: every chunk once, errors raised, memory kept alive."""

from __future__ import annotations

import sys
import threading

import numba
import numpy as np
import pytest
from numba import njit
from petfeat.kernels.borrowed import borrowed
from petfeat.kernels.threads import cpu_threads, for_chunks, limited_threads


@njit(nogil=True)
def _count_chunks(c0, c1, hits, owner, who):
    for c in range(c0, c1):
        hits[c] += 1
        owner[c] = who[0]


def test_every_chunk_runs_once_on_several_threads():
    """Each chunk of 97 runs exactly once; with two threads the chunks are shared (the calling thread works)."""
    hits = np.zeros(97, np.int64)
    seen = set()

    def kernel(c0, c1, hits):
        seen.add(threading.get_ident())
        _count_chunks(c0, c1, hits, np.zeros(97, np.int64), np.zeros(1, np.int64))

    with limited_threads(2):
        for_chunks(kernel, 97, hits)
        assert cpu_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
    np.testing.assert_array_equal(hits, np.ones(97, np.int64))
    assert threading.get_ident() in seen


def test_one_thread_runs_all_chunks_in_one_call_in_the_calling_thread():
    calls = []
    before = cpu_threads()
    with limited_threads(1):
        for_chunks(lambda c0, c1: calls.append((c0, c1, threading.get_ident())), 5)
        for_chunks(lambda c0, c1: calls.append((c0, c1)), 0)
        assert cpu_threads() == 1
    assert calls == [(0, 5, threading.get_ident())]
    assert cpu_threads() == before  # the count before the block


def test_a_threads_count_is_the_setting_threads_own():
    """A count set in one thread leaves the others at NUMBA_NUM_THREADS; counts are clipped to 1..NUMBA_NUM_THREADS."""
    seen = {}

    def other():
        seen["other"] = cpu_threads()

    with limited_threads(1):
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert seen["other"] == numba.config.NUMBA_NUM_THREADS
    with limited_threads(10**6):
        assert cpu_threads() == numba.config.NUMBA_NUM_THREADS
    with limited_threads(0):
        assert cpu_threads() == 1


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads (NUMBA_NUM_THREADS=1 here)")
def test_an_error_in_a_helper_thread_is_raised_after_the_other_chunks_ran():
    done = []

    def kernel(c0, c1):
        if c0 == 3:
            raise ValueError("chunk 3 failed")
        done.append(c0)

    with limited_threads(2), pytest.raises(ValueError, match="chunk 3 failed"):  # a batch task here may have set 1
        for_chunks(kernel, 8)
    assert sorted(done) == [0, 1, 2, 4, 5, 6, 7]


@njit
def _borrow_and_sum(a, b):
    x = borrowed(a)
    y, z = borrowed(a, b)
    v = y[1:].reshape(-1)  # views of a borrowed array are borrowed too
    v[0] += 10.0
    return x.sum() + z.sum()


def test_borrowed_views_share_memory_and_leave_reference_counts_alone():
    """Borrowed views (and their views) read and write the caller's memory; the caller's arrays keep their
    reference counts (a borrowed view holds none)."""
    a = np.arange(5.0)
    b = np.arange(3, dtype=np.int64)
    refs = sys.getrefcount(a), sys.getrefcount(b)
    total = _borrow_and_sum(a, b)
    assert total == 20.0 + 3  # a summed after the write through the view: 0 + 11 + 2 + 3 + 4
    assert a[1] == 11.0
    assert (sys.getrefcount(a), sys.getrefcount(b)) == refs
    for _ in range(1000):  # no count drifts with repeated calls
        _borrow_and_sum(a, b)
    assert (sys.getrefcount(a), sys.getrefcount(b)) == refs


def test_borrowed_refuses_what_is_not_an_array():
    @njit
    def bad(x):
        return borrowed(x)

    with pytest.raises(numba.TypingError):
        bad(3.0)
