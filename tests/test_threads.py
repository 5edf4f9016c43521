"""The CPU kernels' thread runner and borrowed views: every chunk once, errors raised, memory kept alive."""

from __future__ import annotations

import sys
import threading

import numba
import numpy as np
import pytest
from numba import njit
from petfeat.kernels.borrowed import borrowed
from petfeat.kernels.threads import cpu_threads, for_chunks


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

    before = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        for_chunks(kernel, 97, hits)
        assert cpu_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(hits, np.ones(97, np.int64))
    assert threading.get_ident() in seen


def test_one_thread_runs_all_chunks_in_one_call_in_the_calling_thread():
    calls = []
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        for_chunks(lambda c0, c1: calls.append((c0, c1, threading.get_ident())), 5)
        for_chunks(lambda c0, c1: calls.append((c0, c1)), 0)
    finally:
        numba.set_num_threads(before)
    assert calls == [(0, 5, threading.get_ident())]


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads (NUMBA_NUM_THREADS=1 here)")
def test_an_error_in_a_helper_thread_is_raised_after_the_other_chunks_ran():
    done = []

    def kernel(c0, c1):
        if c0 == 3:
            raise ValueError("chunk 3 failed")
        done.append(c0)

    before = numba.get_num_threads()
    numba.set_num_threads(2)  # this thread's setting (a batch task run here earlier may have set 1)
    try:
        with pytest.raises(ValueError, match="chunk 3 failed"):
            for_chunks(kernel, 8)
    finally:
        numba.set_num_threads(before)
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
