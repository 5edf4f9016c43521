"""Merging labels that no region tells apart leaves every region's voxels unchanged and shrinks the codes."""

from __future__ import annotations

import numpy as np
import pytest

from petfeat.label_classes import build_region_codes, class_tables, merge_equivalent_labels
from petfeat.regions import BUILTIN_REGIONS, LabelLayer, build_codes, margin_layers, normalise_spec, region_codes

ORGANS = ["liver", "spleen", "kidney_left", "kidney_right", "prostate", "urinary_bladder", "aorta", "brain",
          "vertebrae_L1", "vertebrae_L2", "rib_left_3", "rib_right_7", "hip_left", "femur_right", "sacrum", "skull",
          "lung_upper_lobe_left", "heart", "stomach", "gluteus_maximus_left", "autochthon_right"]
GLANDS = ["parotid_gland_left", "parotid_gland_right", "submandibular_gland_left", "nasal_cavity", "optic_nerve"]


def _layers(rng, shape):
    organs = rng.integers(0, len(ORGANS) + 1, shape).astype(np.uint8)
    organs[rng.random(shape) < 0.3] = 0
    glands = rng.integers(0, len(GLANDS) + 1, shape).astype(np.uint16)
    glands[rng.random(shape) < 0.6] = 0
    lesion = (rng.random(shape) < 0.08).astype(np.uint8)
    return [LabelLayer(organs, {i + 1: n for i, n in enumerate(ORGANS)}, "organs", namespace="total"),
            LabelLayer(glands, {i + 1: n for i, n in enumerate(GLANDS)}, "glands", namespace="head_glands_cavities"),
            LabelLayer(lesion, {1: "lesion"}, "lesions", namespace="lesions")]


def _region_voxels(spec, layers):
    codemap = build_codes(layers, layers[0].array.shape)
    return {r: np.isin(codemap.codes, c) for r, c in region_codes(spec, codemap).items()}, codemap.n_codes


SPECS = {
    "builtin": BUILTIN_REGIONS,
    "globs": {"kidneys": ["kidney_*"], "bone_no_lesion": {"include": ["vertebrae_*", "rib_*"], "exclude": ["lesion"]},
              "lesion_in_organ": {"include": ["lesion*"], "within": [["liver", "spleen"], ["total:*"]]},
              "glands": {"include": ["head_glands_cavities:*gland*"], "exclude": ["lesion", "skull"]},
              "nasal": ["nasal_cavity"]},
    "margin": {"bone": {"include": ["vertebrae_*", "rib_*", "hip_*", "sacrum"], "exclude": ["lesion", "liver"],
                        "exclude_margin_mm": 4.0},
               "liver": {"include": ["liver"], "exclude": ["lesion"]}},
}


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("seed", [0, 1])
def test_merged_labels_give_every_region_the_same_voxels(name, seed):
    rng = np.random.default_rng(seed)
    spec = normalise_spec(SPECS[name])
    layers = _layers(rng, (9, 11, 13))
    layers = layers + margin_layers(spec, layers, (2.0, 2.0, 2.0))
    want, n_raw = _region_voxels(spec, layers)
    merged = merge_equivalent_labels(spec, layers)
    got, n_merged = _region_voxels(spec, merged)
    assert set(got) == set(want)
    for region in want:
        np.testing.assert_array_equal(got[region], want[region], err_msg=region)
    assert any(m.any() for m in want.values())
    assert n_merged < n_raw  # random overlaps of 21 x 5 x 2 labels: many combinations collapse


def test_class_tables_by_hand():
    spec = normalise_spec({"bone": {"include": ["vertebrae_*", "rib_*"], "exclude": ["lesion"]},
                           "liver": ["liver"]})
    names = {1: "liver", 2: "vertebrae_L1", 3: "heart", 4: "rib_left_3", 5: "vertebrae_L2", 7: "aorta"}
    layer = LabelLayer(np.zeros((2, 2, 2), np.uint8), names, "organs", namespace="total")
    lesion = LabelLayer(np.zeros((2, 2, 2), np.uint8), {1: "lesion"}, "lesions", namespace="lesions")
    (lut, kept), same = class_tables(spec, [layer, lesion])
    assert same is None  # the lesion label is referenced and alone: nothing to merge
    # liver alone; the three bones one class under id 2; heart and aorta belong to no region: background
    np.testing.assert_array_equal(lut, [0, 1, 2, 0, 2, 2, 0, 0])
    assert kept == {1: "liver", 2: "vertebrae_L1"}


def test_merge_drops_layers_no_region_uses_and_keeps_one():
    spec = normalise_spec({"liver": ["liver"]})
    arr = np.arange(8, dtype=np.uint8).reshape(2, 2, 2) % 3
    used = LabelLayer(arr, {1: "liver", 2: "spleen"}, "organs", namespace="total")
    unused = LabelLayer(arr, {1: "nasal_cavity", 2: "optic_nerve"}, "glands", namespace="head_glands_cavities")
    merged = merge_equivalent_labels(spec, [used, unused])
    assert len(merged) == 1 and merged[0].names == {1: "liver"}
    np.testing.assert_array_equal(merged[0].array, (arr == 1).astype(np.uint8))
    only = merge_equivalent_labels(spec, [unused])
    assert len(only) == 1 and not only[0].array.any()


def _voxels_of(spec, codemap):
    return {r: np.isin(codemap.codes, c) for r, c in region_codes(spec, codemap).items()}


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("variant", ["one pass", "wide keys", "wide ids", "many layers"])
def test_region_codes_in_one_pass_give_every_region_the_same_voxels(monkeypatch, name, variant):
    import petfeat.label_classes

    if variant == "wide keys":  # keys past two bytes: or_tables and apply_lut instead of the zero-skipping pass
        monkeypatch.setattr(petfeat.label_classes, "_SPARSE_KEY_BITS", 0)
    rng = np.random.default_rng(7)
    spec = normalise_spec(SPECS[name])
    shape = (300, 17, 19)  # parallel chunks in the passes
    layers = _layers(rng, shape)
    if variant == "wide ids":  # 4-byte ids: merged, then coded by build_codes
        layers[0] = LabelLayer(layers[0].array.astype(np.uint32), layers[0].names, "organs", namespace="total")
    if variant == "many layers":  # more layers than one pass reads
        layers = layers + [LabelLayer((rng.random(shape) < 0.2).astype(np.uint8), {1: f"extra_{i}"}, f"x{i}",
                                      namespace=f"x{i}") for i in range(8)]
    layers = layers + margin_layers(spec, layers, (2.0, 2.0, 2.0))
    want, n_raw = _region_voxels(spec, layers)
    codemap = build_region_codes(spec, layers, shape)
    got = _voxels_of(spec, codemap)
    for region in want:
        np.testing.assert_array_equal(got[region], want[region], err_msg=region)
    assert codemap.n_codes < n_raw
    # every code occurs (code 0 aside, which stands for no label) and its combination is what its voxels hold
    assert set(np.unique(codemap.codes)) - {0} == set(range(1, codemap.n_codes))
    if variant not in ("one pass", "wide keys"):
        return  # merged layers (some dropped) coded by build_codes, whose combos its own tests check
    tables = class_tables(spec, layers)  # each code's combination is the classes its voxels hold
    assert codemap.combos.shape[1] == len(layers)
    flat = codemap.codes.ravel()
    for c, at in zip(*np.unique(flat, return_index=True)):
        for j, (raw, tab) in enumerate(zip(layers, tables)):
            rid = int(raw.array.ravel()[at])
            assert codemap.combos[c, j] == (rid if tab is None else tab[0][rid])
