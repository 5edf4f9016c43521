"""Label census (voxels per id and the box of the labelled voxels, one compiled pass) against NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from petfeat.kernels import label_census as lc


def numpy_box(arr):
    """The oracle box: per axis, the first and last index where any voxel is non-zero."""
    box = []
    for axis in range(arr.ndim):
        hit = np.flatnonzero(np.any(arr, axis=tuple(a for a in range(arr.ndim) if a != axis)))
        if not len(hit):
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def random_map(rng, shape, dtype, top):
    """Background with a random block of ids (runs of equal ids and single voxels) and stray voxels."""
    arr = np.zeros(shape, dtype)
    block = tuple(slice(rng.integers(0, s), None) for s in shape)
    sub = arr[block]
    ids = rng.integers(0, top, sub.shape)
    runs = np.repeat(ids.reshape(-1)[: sub.size // 3 + 1], 3)[: sub.size].reshape(sub.shape)
    sub[...] = np.where(rng.random(sub.shape) < 0.5, runs, ids).astype(dtype)
    stray = tuple(rng.integers(0, s, 3) for s in shape)
    arr[stray] = top - 1
    return arr


@pytest.mark.parametrize("dtype, top", [(np.uint8, 256), (np.uint16, 300), (np.uint16, 65536), (np.uint32, 70000),
                                        (np.uint64, 40), (np.bool_, 2)])
@pytest.mark.parametrize("shape", [(6, 10, 64), (5, 7, 11), (4, 3, 8), (300, 40, 48), (45,), (9, 13)])
def test_counts_and_box_match_numpy(dtype, top, shape):
    """Rows of whole words (64, 48, 8 ids) and not (11, 13, 45 for bytes); one chunk and many; 70000 ids: one thread."""
    rng = np.random.default_rng(sum(shape) + top)
    arr = random_map(rng, shape, dtype, top)
    got = lc.label_census(arr)
    np.testing.assert_array_equal(got.counts, np.bincount(arr.reshape(-1).astype(np.int64)))
    assert got.box == numpy_box(arr)


def test_background_only_an_empty_map_and_a_single_voxel():
    for dtype in (np.uint8, np.uint32):
        got = lc.label_census(np.zeros((4, 5, 16), dtype))
        np.testing.assert_array_equal(got.counts, [320])
        assert got.box is None
        one = np.zeros((4, 5, 16), dtype)
        one[3, 0, 15] = 7
        got = lc.label_census(one)
        np.testing.assert_array_equal(got.counts, [319, 0, 0, 0, 0, 0, 0, 1])
        assert got.box == (slice(3, 4), slice(0, 1), slice(15, 16))
    got = lc.label_census(np.zeros((0, 4, 4), np.uint8))
    np.testing.assert_array_equal(got.counts, [0])
    assert got.box is None


def test_strided_unaligned_and_read_only_views_give_the_contiguous_answer():
    rng = np.random.default_rng(3)
    base = random_map(rng, (6, 12, 72), np.uint8, 9)
    frozen = base.copy()
    frozen.flags.writeable = False  # as SimpleITK's array views are
    for view in (base[:, ::2, 1:65], base.reshape(-1)[1:1 + 6 * 12 * 64].reshape(6, 12, 64), base[::-1], frozen):
        got = lc.label_census(view)
        np.testing.assert_array_equal(got.counts, np.bincount(view.reshape(-1)))
        assert got.box == numpy_box(view)


@pytest.mark.parametrize("bad", [np.zeros((2, 3), np.int16), np.zeros((2, 3), np.float32),
                                 np.zeros((2, 3, 4, 5), np.uint8)])
def test_refuses_signed_float_and_4d_ids(bad):
    with pytest.raises(ValueError, match="label_census"):
        lc.label_census(bad)
