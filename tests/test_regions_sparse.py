"""The compiled passes of the margins and codes: the zero-skipping table pass and the row-bit ball dilation,
each against a plain NumPy or EDT oracle on random, mostly-empty volumes (never all zeros)."""

from __future__ import annotations

import numpy as np
import pytest
from petfeat.kernels.label_codes import table_layout
from scipy import ndimage

from petfeat import regions
from petfeat.label_classes import build_region_codes
from petfeat.regions import LabelLayer, dilate_mm, margin_layers, or_sparse, region_codes


def _sparse_layer(rng, shape, dtype, top, fill):
    """Random ids in ``1..top`` on about ``fill`` of the voxels, in small clusters and single voxels."""
    a = np.zeros(shape, dtype)
    flat = a.reshape(-1)
    n = max(1, int(fill * a.size))
    at = rng.integers(0, a.size, n)
    flat[at] = rng.integers(1, top + 1, n)
    flat[np.minimum(at + 1, a.size - 1)] = rng.integers(1, top + 1, n)  # runs of two: groups with several ids
    return a


@pytest.mark.parametrize("shape", [(3, 5, 7), (4, 6, 64), (2, 3, 1000), (5, 9, 131)])  # tails of 1..7, none
@pytest.mark.parametrize("out_dtype", [np.uint8, np.uint16])
def test_or_sparse_matches_numpy_on_mixed_widths(shape, out_dtype):
    rng = np.random.default_rng(sum(shape) + np.dtype(out_dtype).itemsize)
    dtypes = [np.uint8, np.uint16, np.uint8, np.bool_, np.uint16]
    layers = [_sparse_layer(rng, shape, dt, 1 if dt == np.bool_ else 200, 0.03) for dt in dtypes]
    layers[4] = layers[4] * np.uint16(300)  # two-byte ids past 255
    starts, size = table_layout(layers)
    table = rng.integers(1, 1 << 16, size).astype(np.uint32)
    table[starts] = 0  # id 0 adds nothing
    want = np.zeros(shape, np.uint32)
    for a, s in zip(layers, starts):
        want |= table[s + a.astype(np.int64)]
    assert want.any() and (want == 0).any()
    out = np.full(shape, 77, out_dtype)  # every voxel is written, zeros included
    present = np.zeros(1 << 16, bool) if out_dtype == np.uint16 else None
    or_sparse(layers, table, starts, out, present)
    np.testing.assert_array_equal(out, want.astype(out_dtype))
    if present is not None:
        np.testing.assert_array_equal(np.flatnonzero(present), np.unique(np.concatenate([[0], want.ravel()])))
    fresh = np.zeros(shape, out_dtype)
    or_sparse(layers, table, starts, fresh, zeroed=True)
    np.testing.assert_array_equal(fresh, want.astype(out_dtype))
    untouched = np.full(shape, 77, out_dtype)  # zeroed: groups where every layer holds 0 are not written
    or_sparse(layers, table, starts, untouched, zeroed=True)
    stack = np.stack(layers).reshape(len(layers), -1)
    size = stack.shape[1] // 8 * 8
    empty = np.repeat(~stack[:, :size].reshape(len(layers), -1, 8).any(axis=(0, 2)), 8)
    got = untouched.reshape(-1)[:size]
    assert empty.any() and (got[empty] == 77).all()
    np.testing.assert_array_equal(got[~empty], want.astype(out_dtype).reshape(-1)[:size][~empty])


def test_or_sparse_writes_into_its_own_first_layer_and_refuses_a_table_that_marks_id_0():
    rng = np.random.default_rng(5)
    shape = (6, 7, 45)
    mark = _sparse_layer(rng, shape, np.uint8, 1, 0.02)
    other = _sparse_layer(rng, shape, np.uint16, 900, 0.02)
    starts, size = table_layout([mark, other])
    table = np.zeros(size, np.uint32)
    table[starts[0] + 1] = 1
    table[starts[1] + np.arange(1, 900, 3)] = 1
    want = (mark == 1) | (other % 3 == 1)
    or_sparse([mark, other], table, starts, mark)  # in place: each group read before it is written
    np.testing.assert_array_equal(mark.astype(bool), want)
    nothing = np.zeros(2, bool)
    or_sparse([np.zeros(shape, np.uint8)], table, starts[:1], np.ones(shape, np.uint8), nothing)
    assert nothing.tolist() == [True, False]  # key 0 only
    with pytest.raises(ValueError, match="1 or 2 bytes"):  # the wider ids and keys of other passes
        or_sparse([mark.astype(np.uint32)], table, starts[:1], np.empty(shape, np.uint8))
    with pytest.raises(ValueError, match="1 or 2 bytes"):
        or_sparse([mark], table, starts[:1], np.empty(shape, np.uint32))
    table[starts[1]] = 1
    with pytest.raises(ValueError, match="id 0"):
        or_sparse([mark, other], table, starts, np.empty(shape, np.uint8))


@pytest.mark.parametrize("shape, spacing, mm", [((9, 11, 130), (2.0, 2.0, 2.0), 10.0),  # rows of three words
                                                 ((7, 8, 128), (3.0, 1.5, 0.8), 6.0),  # two whole words, wide ball
                                                 ((6, 5, 64), (1.0, 1.0, 1.0), 2.0)])
def test_row_dilation_across_words_matches_the_edt(shape, spacing, mm):
    rng = np.random.default_rng(int(mm))
    mask = rng.random(shape) > 0.997
    mask[:, :, 63] |= rng.random(shape[:2]) > 0.7  # bits at a word edge
    mask[2, 1:4, shape[2] - 3:] = True  # a block at the right border
    mask[0, 0, 0] = True
    want = ndimage.distance_transform_edt(~mask, sampling=spacing) <= mm
    np.testing.assert_array_equal(dilate_mm(mask, spacing, mm), want)


def test_healthy_bone_margin_and_codes_of_a_sparse_study_match_the_unshared_oracle():
    """margin_layers + build_region_codes on sparse layers give the regions the EDT and plain masks give."""
    rng = np.random.default_rng(11)
    shape, spacing = (12, 20, 70), (3.0, 2.0, 2.0)
    organs = np.zeros(shape, np.uint8)
    organs[2:10, 4:15, 10:60] = 1  # vertebrae
    organs[2:10, 4:15, 30:40] = 2  # liver beside them
    lesions = _sparse_layer(rng, shape, np.uint8, 1, 0.001)
    layers = [LabelLayer(organs, {1: "vertebrae_L1", 2: "liver"}, namespace="total"),
              LabelLayer(lesions, {1: "lesion"}, namespace="lesions")]
    spec = {"healthy_bone": regions.BUILTIN_REGIONS["healthy_bone"], "bone": regions.BUILTIN_REGIONS["bone"],
            "tumor": ["lesion*"]}
    (margin,) = margin_layers(spec, layers, spacing)
    hot = (organs == 2) | (lesions == 1)
    near = ndimage.distance_transform_edt(~hot, sampling=spacing) <= 10.0
    np.testing.assert_array_equal(margin.array.astype(bool), near)
    cm = build_region_codes(spec, layers + [margin], shape)
    got = {r: np.isin(cm.codes, c) for r, c in region_codes(spec, cm).items()}
    np.testing.assert_array_equal(got["healthy_bone"], (organs == 1) & ~near)
    np.testing.assert_array_equal(got["bone"], organs == 1)
    np.testing.assert_array_equal(got["tumor"], lesions == 1)
