"""What the CPU kernels compile: one kernel where inputs differ only in ways the kernel need not see.

Every compiled specialisation costs seconds on a fresh install (Numba compiles it once, then
caches it), so inputs that can share a kernel must: label maps of any id width and writable or
read-only arrays share one census kernel when their rows are whole 64-bit words.
"""

from __future__ import annotations

import naive
import numpy as np
import pytest
from conftest import RTOL
from petfeat.kernels import label_census as lc
from petfeat.kernels.peak_cpu import suv_peak_cpu

from petfeat.features import sphere_offsets


def test_census_compiles_one_kernel_for_every_id_width_and_read_only_input():
    """uint8, uint16, uint32 and bool maps, writable or read-only (a memory-mapped file), rows of whole words:
    the census adds at most one compiled specialisation for all of them, and counts as ``np.bincount``."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 4, (3, 5, 16)).astype(np.uint8)
    read_only = base.copy()
    read_only.flags.writeable = False
    inputs = [base, base.astype(np.uint16), base.astype(np.uint32), base > 1, read_only]
    before = set(lc._census.signatures)
    for arr in inputs:
        got = lc.label_census(arr)
        np.testing.assert_array_equal(got.counts, np.bincount(np.asarray(arr, np.int64).ravel()))
    assert len(set(lc._census.signatures) - before) <= 1, lc._census.signatures


def test_census_rows_not_whole_words_still_read_id_by_id():
    """Rows of 11 ids (not whole words) take the id-by-id loop, for read-only input too."""
    arr = np.zeros((2, 3, 11), np.uint16)
    arr[1, 2, 4:9] = 700
    arr.flags.writeable = False
    got = lc.label_census(arr)
    assert got.counts[700] == 5 and got.counts[0] == arr.size - 5
    assert got.box == (slice(1, 2), slice(2, 3), slice(4, 9))


@pytest.mark.parametrize("nz", [1, 4, 7])
def test_separable_peak_on_fewer_slices_than_the_sphere_spans(nz):
    """At 2 mm the sphere reaches 3 slices each way: volumes of 1, 4 and 7 slices (no slice, or one, whose
    sphere lies inside the image) with per-slice slopes and offsets against the oracle."""
    rng = np.random.default_rng(nz)
    shape = (nz, 9, 16)
    stored = rng.integers(0, 3000, shape).astype(np.int16)
    codes = np.zeros(shape, np.uint8)
    codes[:, 2:6, 3:9] = 1
    codes[nz // 2, 5:8, 10:14] = 2
    scale = rng.uniform(5e-4, 1e-3, nz)
    offset = rng.uniform(-0.5, 0.5, nz)
    values = naive.suv(stored, scale, offset)
    ptr = np.array([0, 0, 1, 2], np.int64)
    flat = np.array([0, 1], np.int64)
    rmax = np.array([values[codes == c].max() for c in (1, 2)])
    spacing = (2.0, 2.0, 2.0)
    glob, loc = suv_peak_cpu(stored, codes, scale, offset, sphere_offsets(spacing), ptr, flat, rmax, 2)
    for k, c in enumerate((1, 2)):
        g_ref, l_ref = naive.peaks(values, codes == c, spacing)
        assert glob[k] == pytest.approx(g_ref, rel=RTOL) and loc[k] == pytest.approx(l_ref, rel=RTOL)
