"""The code volume and the exclusion margins of the compiled passes against plain NumPy / SciPy oracles."""

from __future__ import annotations

import numpy as np
import pytest
from petfeat.kernels import label_codes
from scipy import ndimage

from petfeat import regions, slabs
from petfeat.regions import LabelLayer, build_codes, margin_layers, region_codes


def _random_layers(rng, shape, dtypes, max_ids, fill=0.5):
    """Label layers with random non-zero ids (a few distinct ones each) over a random part of the volume."""
    layers = []
    for k, (dtype, top) in enumerate(zip(dtypes, max_ids)):
        ids = rng.choice(np.arange(1, top + 1), size=min(top, 5), replace=False)
        a = np.where(rng.random(shape) < fill, rng.choice(ids, size=shape), 0).astype(dtype)
        layers.append(LabelLayer(a, {int(i): f"l{k}_{int(i)}" for i in ids}, f"layer {k}", namespace=f"ns{k}"))
    return layers


def _check_against_oracle(layers, shape, numbering: bool):
    """Every voxel's code gives its ids; one code per occurring combination; with ``numbering``, codes in key order."""
    cm = build_codes(layers, shape)
    stack = np.stack([np.asarray(la.array, np.int64).reshape(-1) for la in layers], axis=1)
    combos = np.unique(np.concatenate([np.zeros((1, len(layers)), np.int64), stack]), axis=0)
    assert cm.n_codes == len(combos)
    assert not cm.combos[0].any()  # code 0: no label in any layer
    np.testing.assert_array_equal(cm.combos[cm.codes.reshape(-1)], stack)  # codes -> combos: exact round trip
    assert len(np.unique(cm.combos, axis=0)) == cm.n_codes
    assert cm.codes.dtype == regions._code_dtype(cm.n_codes) and cm.codes.flags.c_contiguous
    if numbering:  # one table: codes follow the mixed-radix key (the last layer most significant), as always
        np.testing.assert_array_equal(cm.combos, np.unique(combos[:, ::-1], axis=0)[:, ::-1])
    return cm


@pytest.mark.parametrize("shape, dtypes, max_ids", [
    ((7, 11, 13), [np.uint8], [200]),
    ((1, 5, 3), [np.uint8, np.uint16], [3, 9]),
    ((9, 10, 17), [np.uint8, np.uint16, np.uint8, bool], [117, 700, 20, 1]),
    ((17, 99, 101), [np.uint8, np.uint8, np.uint16], [117, 19, 300]),  # several chunks in parallel
    ((5, 6, 7), [np.uint32, np.uint8], [100_000, 9]),  # four-byte ids
])
def test_codes_equal_the_numpy_oracle(shape, dtypes, max_ids):
    rng = np.random.default_rng(sum(shape))
    _check_against_oracle(_random_layers(rng, shape, dtypes, max_ids), shape, numbering=True)


def test_more_layers_than_one_pass_reads_and_key_ranges_past_one_table():
    """Eleven layers (more than MAX_LAYERS) with id ranges that multiply far past a table: coded in groups."""
    rng = np.random.default_rng(5)
    shape = (6, 13, 15)
    n = label_codes.MAX_LAYERS + 3
    layers = _random_layers(rng, shape, [np.uint8, np.uint16] * n, [117, 5000] * n)[:n]
    assert np.prod([float(la.array.max()) + 1 for la in layers]) > 1e30
    cm = _check_against_oracle(layers, shape, numbering=False)
    members = region_codes({"r": {"include": ["ns0:*"], "exclude": ["ns1:*"]}}, cm)["r"]
    want = (layers[0].array > 0) & (layers[1].array == 0)
    np.testing.assert_array_equal(np.isin(cm.codes, members), want)


def test_packed_class_layers_are_coded_by_tables_not_by_sorting(monkeypatch):
    """Six one-byte layers of ~117 ids each (TotalSegmentator's packed class files): 2**41 keys, no sort."""
    rng = np.random.default_rng(6)
    shape = (8, 20, 22)
    layers = _random_layers(rng, shape, [np.uint8] * 6 + [bool], [114, 117, 101, 116, 37, 19, 1], fill=0.3)

    def refuse(*args, **kwargs):
        raise AssertionError("int64 keys of the whole volume were built (the sort path)")

    monkeypatch.setattr(regions, "_combined_key", refuse)
    cm = build_codes(layers, shape)
    stack = np.stack([la.array.reshape(-1).astype(np.int64) for la in layers], axis=1)
    np.testing.assert_array_equal(cm.combos[cm.codes.reshape(-1)], stack)
    assert cm.n_codes == len(np.unique(np.concatenate([np.zeros((1, 7), np.int64), stack]), axis=0))


@pytest.mark.parametrize("lut_limit", [8, 1 << 40])  # the sort path (int64 keys filled in slabs); tables
def test_sort_path_and_tables_give_the_same_combinations(monkeypatch, lut_limit):
    monkeypatch.setattr(regions, "_LUT_LIMIT", lut_limit)
    monkeypatch.setattr(slabs, "SLAB_VOXELS", 150)  # several slabs of one or two planes
    rng = np.random.default_rng(8)
    shape = (5, 9, 11)
    layers = _random_layers(rng, shape, [np.uint16, np.uint8, np.uint8], [3000, 40, 2])
    _check_against_oracle(layers, shape, numbering=lut_limit > 8)


def test_byte_order_and_strides_of_a_layer_are_read_as_values():
    rng = np.random.default_rng(9)
    shape = (4, 6, 8)
    base = _random_layers(rng, shape, [np.uint16, np.uint8], [4000, 7])
    big = base[0].array.astype(">u2")  # NIfTI written on a big-endian machine
    strided = np.asfortranarray(base[1].array)
    layers = [LabelLayer(big, base[0].names), LabelLayer(strided, base[1].names)]
    cm = _check_against_oracle(layers, shape, numbering=True)
    np.testing.assert_array_equal(cm.codes, build_codes(base, shape).codes)


def _near(mask, spacing, mm):
    return ndimage.distance_transform_edt(~mask, sampling=spacing) <= mm


@pytest.mark.parametrize("n_layers", [2, label_codes.MAX_LAYERS + 2])  # one pass; the mark carried into a second
def test_margin_layer_equals_the_edt_oracle(n_layers):
    rng = np.random.default_rng(n_layers)
    shape, spacing, mm = (11, 13, 15), (2.5, 2.0, 1.5), 4.0
    dtypes = [np.uint8 if k % 2 else np.uint16 for k in range(n_layers)]
    layers = _random_layers(rng, shape, dtypes, [30] * n_layers, fill=0.004)
    for la in layers:  # one excluded name per layer; the other ids stay
        la.names = {i: ("hot" if i == min(la.names) else n) for i, n in la.names.items()}
    spec = {"r": {"include": ["ns0:*"], "exclude": ["hot"], "exclude_margin_mm": mm}}
    (margin,) = margin_layers(spec, layers, spacing)
    hot = np.zeros(shape, bool)
    for la in layers:
        hot |= la.array == min(la.names)
    assert hot.any()
    assert margin.array.dtype == np.uint8 and margin.array.shape == shape
    np.testing.assert_array_equal(margin.array.astype(bool), _near(hot, spacing, mm))
    cm = build_codes(layers + [margin], shape)
    got = np.isin(cm.codes, region_codes(spec, cm)["r"])
    want = (layers[0].array > 0) & ~_near(hot, spacing, mm)
    np.testing.assert_array_equal(got, want)


def test_passes_refuse_what_they_cannot_read_or_write():
    a = np.zeros((2, 3, 4), np.uint8)
    with pytest.raises(ValueError, match="1, 2 or 4 bytes"):
        label_codes.apply_keys([a], None, np.zeros(1, np.uint32), np.zeros(a.shape, np.int64))
    with pytest.raises(ValueError, match="1 to 8 layers"):
        label_codes.mark_keys([a] * (label_codes.MAX_LAYERS + 1), None, np.zeros(2, bool))
    with pytest.raises(ValueError, match="int32 keys"):
        label_codes.mark_keys([a], None, np.broadcast_to(np.zeros(1, bool), ((1 << 31) + 1,)))
