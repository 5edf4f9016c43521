"""Region algebra: within (intersection), name spaces, exclusion margins, per-site tumour regions,
SUVpeak over region voxels only, and regions that match no label."""

from __future__ import annotations

import ast
import fnmatch

import naive
import numpy as np
import pytest
from conftest import REFERENCE, RTOL
from scipy import ndimage

from petfeat import kernels
from petfeat.errors import LabelError, PetfeatWarning
from petfeat.extract import config_hash, extract
from petfeat.features import region_peaks, sphere_offsets
from petfeat.regions import (
    BONE_PATTERNS,
    BUILTIN_REGIONS,
    PROSTATE_PATTERNS,
    VISCERAL_PATTERNS,
    LabelLayer,
    build_codes,
    default_spec,
    dilate_mm,
    load_spec,
    margin_layers,
    normalise_spec,
    region_codes,
    unmatched_regions,
)

SITES = ("tumor_bone", "tumor_prostate", "tumor_visceral", "tumor_lymph_node_or_soft_tissue")
ORGANS = {1: "vertebrae_L3", 2: "rib_left_4", 3: "prostate", 4: "liver", 5: "lung_lower_lobe_left",
          6: "adrenal_gland_right", 7: "urinary_bladder", 8: "costal_cartilages"}


def _members_mask(cm, members):
    return np.isin(cm.codes, members)


def _site_case(rng, shape=(12, 14, 16)):
    organs = rng.integers(0, 9, shape).astype(np.uint8)
    lesions = (rng.random(shape) > 0.6).astype(np.uint8)
    return organs, lesions


def test_within_is_an_intersection_and_the_sites_partition_the_tumour():
    organs, lesions = _site_case(np.random.default_rng(1))
    layers = [LabelLayer(organs, ORGANS, namespace="total"), LabelLayer(lesions, {1: "lesion"}, namespace="lesions")]
    cm = build_codes(layers, organs.shape)
    members = region_codes({k: v for k, v in BUILTIN_REGIONS.items() if k != "healthy_bone"}, cm)  # no margin
    les = lesions > 0
    bone, prostate = np.isin(organs, [1, 2]), organs == 3
    visceral = np.isin(organs, [4, 5, 6])
    oracle = {"whole_body_tumor": les, "tumor_bone": les & bone, "tumor_prostate": les & prostate,
              "tumor_visceral": les & visceral, "tumor_lymph_node_or_soft_tissue": les & ~(bone | prostate | visceral)}
    for name, m in oracle.items():
        np.testing.assert_array_equal(_members_mask(cm, members[name]), m, err_msg=name)
    counts = {s: int(_members_mask(cm, members[s]).sum()) for s in SITES}
    assert all(counts.values()) and sum(counts.values()) == int(les.sum())
    # bladder and costal cartilage lesions are soft tissue; costal cartilage is not bone
    assert (_members_mask(cm, members["tumor_lymph_node_or_soft_tissue"]) & (organs == 8) & les).any()


def test_every_group_of_within_must_match():
    rng = np.random.default_rng(2)
    a, b, c = (rng.integers(0, 3, (6, 7, 8)).astype(np.uint8) for _ in range(3))
    layers = [LabelLayer(a, {1: "a1", 2: "a2"}), LabelLayer(b, {1: "b1", 2: "b2"}), LabelLayer(c, {1: "c1", 2: "c2"})]
    cm = build_codes(layers, a.shape)
    spec = {"r": {"include": ["a*"], "within": [["b1", "b2"], ["c2"]], "exclude": ["a2"]},
            "alias": {"include": ["a*"], "require": [["b1", "b2"], ["c2"]], "exclude": ["a2"]}}
    got = region_codes(spec, cm)
    want = (a == 1) & (b > 0) & (c == 2)
    np.testing.assert_array_equal(_members_mask(cm, got["r"]), want)
    np.testing.assert_array_equal(got["r"], got["alias"])
    assert normalise_spec({"x": {"include": "a", "within": "b"}})["x"]["within"] == [["b"]]


def test_builtin_classes_are_totalsegmentator_classes():
    # the patterns against TotalSegmentator's own class map (reference copy) and petfeat's module of it
    src = (REFERENCE / "totalsegmentator" / "map_to_binary.py").read_text()
    class_map = next(ast.literal_eval(n.value) for n in ast.parse(src).body if isinstance(n, ast.Assign)
                     and getattr(n.targets[0], "id", "") == "class_map")
    from petfeat.io.totalsegmentator import TASK_CLASSES

    total = set(class_map["total"].values())
    assert set(TASK_CLASSES["total"]) == total
    for p in BONE_PATTERNS + VISCERAL_PATTERNS + PROSTATE_PATTERNS:
        assert fnmatch.filter(total, p), p
    bones = {c for c in total if any(fnmatch.fnmatchcase(c, p) for p in BONE_PATTERNS)}
    assert "costal_cartilages" not in bones and {"skull", "sternum", "vertebrae_S1", "rib_right_12"} <= bones
    visceral = {c for c in total if any(fnmatch.fnmatchcase(c, p) for p in VISCERAL_PATTERNS)}
    assert {"lung_middle_lobe_right", "adrenal_gland_left", "kidney_right", "liver", "spleen", "brain"} <= visceral
    assert not visceral & bones and "prostate" not in visceral
    glands = set(class_map["head_glands_cavities"].values())
    for p in BUILTIN_REGIONS["salivary_glands"]["include"]:
        assert fnmatch.filter(glands, p) and not fnmatch.filter(total, p), p


def test_namespace_patterns_and_default_names():
    shape = (4, 5, 6)
    a = np.zeros(shape, np.uint8)
    a[:2] = 1
    a[2:, :2] = 2
    b = np.zeros(shape, np.uint8)
    b[1:3] = 1
    b[3, 3, 3] = 2
    layers = [LabelLayer(a, {1: "liver", 2: "spleen"}, namespace="total"),
              LabelLayer(b, {1: "liver", 2: "GTV:boost"}, namespace="organs")]
    cm = build_codes(layers, shape)
    got = region_codes({"t": ["total:liver"], "o": ["organs:liv*"], "any": ["liver"], "roi": ["GTV:boost"],
                        "nospace": ["nosuch:liver"]}, cm)
    np.testing.assert_array_equal(_members_mask(cm, got["t"]), a == 1)
    np.testing.assert_array_equal(_members_mask(cm, got["o"]), b == 1)
    np.testing.assert_array_equal(_members_mask(cm, got["any"]), (a == 1) | (b == 1))
    np.testing.assert_array_equal(_members_mask(cm, got["roi"]), b == 2)  # "GTV" is no name space: a literal name
    assert len(got["nospace"]) == 0
    assert cm.code_labels(int(cm.codes[1, 0, 0])) == [("total", "liver"), ("organs", "liver")]
    spec = default_spec(layers)
    assert list(spec) == ["total:liver", "spleen", "organs:liver", "GTV:boost"]
    members = region_codes(spec, cm)
    np.testing.assert_array_equal(_members_mask(cm, members["total:liver"]), a == 1)
    np.testing.assert_array_equal(_members_mask(cm, members["GTV:boost"]), b == 2)
    odd = [LabelLayer(a, {1: "lesion[1]", 2: "a*"})]
    assert list(region_codes(default_spec(odd), build_codes(odd, shape)).values())[0].size == 1  # glob chars escaped


@pytest.mark.parametrize("method", ["rows", "maurer"])
@pytest.mark.parametrize("spacing, mm", [((3.0, 2.0, 2.0), 5.0), ((2.7, 1.3, 0.9), 4.4), ((4.0, 4.0, 4.0), 8.0)])
def test_dilation_is_the_exact_physical_distance(monkeypatch, method, spacing, mm):
    import petfeat.regions

    monkeypatch.setattr(petfeat.regions, "_STAMP_OPS_PER_VOXEL", 10**9 if method == "rows" else 0)
    rng = np.random.default_rng(int(mm * 10))
    mask = rng.random((14, 16, 18)) > 0.995
    mask[0, 0, 0] = True
    mask[5:11, 6:12, 7:14] = True  # a solid block
    want = ndimage.distance_transform_edt(~mask, sampling=spacing) <= mm
    np.testing.assert_array_equal(dilate_mm(mask, spacing, mm), want)
    assert not dilate_mm(np.zeros((3, 4, 5), bool), spacing, mm).any()


def test_margin_layer_in_the_lesions_box_matches_the_whole_grid_oracle():
    shape, spacing = (20, 22, 24), (3.0, 2.0, 2.5)
    lesions = np.zeros(shape, np.uint8)
    lesions[8:10, 9:12, 10:12] = 1
    lesions[2, 20, 22] = 2  # near a corner: the grown box is clipped
    organs = np.ones(shape, np.uint8)
    layers = [LabelLayer(organs, {1: "rib_left_1"}), LabelLayer(lesions, {1: "lesion_1", 2: "lesion_2"})]
    spec = {"h": {"include": ["rib_*"], "exclude": ["lesion_1"], "exclude_margin_mm": 7.0},
            "h2": {"include": ["rib_*"], "exclude": ["lesion*"], "exclude_margin_mm": 7.0},
            "same": {"include": ["rib_*"], "exclude": ["lesion*"], "exclude_margin_mm": 7.0}}
    margins = margin_layers(spec, layers, spacing)
    assert len(margins) == 2 and all(m.namespace == "margin" for m in margins)  # one per (exclude, margin)
    for m, ids in zip(margins, ([1], [1, 2])):
        near = ndimage.distance_transform_edt(~np.isin(lesions, ids), sampling=spacing) <= 7.0
        np.testing.assert_array_equal(m.array.astype(bool), near)
    cm = build_codes(layers + margins, shape)
    got = region_codes(spec, cm)
    near_all = margins[1].array.astype(bool)
    np.testing.assert_array_equal(_members_mask(cm, got["h2"]), ~near_all)
    np.testing.assert_array_equal(got["h2"], got["same"])
    assert margin_layers(spec, [layers[0]], spacing) == []  # nothing excluded: no margin needed
    with pytest.raises(LabelError, match="no margin layer.*margin_layers"):
        region_codes(spec, build_codes(layers, shape))  # the margin layer forgotten
    assert region_codes({"lesion": ["lesion*"]}, cm)["lesion"].size == 2  # a bare glob never matches a margin


def test_healthy_bone_margin_in_one_fused_pass(monkeypatch):
    rng = np.random.default_rng(3)
    shape, spacing = (16, 18, 20), (2.0, 2.0, 2.0)
    values = rng.gamma(2.0, 1.0, shape)
    organs = np.zeros(shape, np.uint8)
    organs[:, :10] = 1
    organs[:3, 14:] = 2  # a kidney next to the bone: its spill-in is kept out as well
    lesions = np.zeros(shape, np.uint8)
    lesions[6:9, 7:11, 8:12] = 1  # half in bone, half out
    values[lesions > 0] += 40.0  # hot: spills into its neighbours' SUVpeak
    layers = [LabelLayer(organs, {1: "vertebrae_L1", 2: "kidney_left"}, namespace="total"),
              LabelLayer(lesions, {1: "lesion"}, namespace="lesions")]
    calls = []
    real = kernels.fused_reduce
    monkeypatch.setattr(kernels, "fused_reduce", lambda *a, **k: calls.append(1) or real(*a, **k))
    regions = {k: BUILTIN_REGIONS[k] for k in ("bone", "healthy_bone", "tumor_bone")}
    res = extract(values, layers, regions, spacing=spacing, backend="cpu")
    assert len(calls) == 1  # margins are label layers: still one pass
    f = res.features.set_index("region")
    bone = organs == 1
    healthy = bone & (ndimage.distance_transform_edt((lesions == 0) & (organs != 2), sampling=spacing) > 10.0)
    assert healthy.sum() < (bone & (ndimage.distance_transform_edt(lesions == 0, sampling=spacing) > 10.0)).sum()
    ref = naive.region_stats(values, healthy)
    assert f.loc["healthy_bone", "voxel_count"] == ref["count"] and f.loc["healthy_bone", "suv_max"] == ref["max"]
    g, loc = naive.peaks(values, healthy, spacing)
    assert f.loc["healthy_bone", "suv_peak_global"] == pytest.approx(g, rel=RTOL)
    assert f.loc["healthy_bone", "suv_max"] < 40  # no lesion voxel, no spill-in at 10 mm
    assert f.loc["tumor_bone", "voxel_count"] == int((bone & (lesions > 0)).sum())
    assert res.settings["regions"]["healthy_bone"]["exclude_margin_mm"] == 10.0
    assert res.warnings == []


def _peak_oracle(values, mask, spacing):
    """Brute force: sphere means over the region's finite voxels only."""
    pts = np.argwhere(np.ones(values.shape, bool)) * np.asarray(spacing, float)
    flat = values.ravel()
    ok = mask.ravel() & np.isfinite(flat)
    roi = np.flatnonzero(ok)
    if roi.size == 0:
        return np.nan, np.nan
    means = np.array([flat[ok & (((pts - pts[i]) ** 2).sum(1) <= naive.PEAK_RADIUS_MM**2 * (1 + 1e-12))].mean()
                      for i in roi])
    return means.max(), means[flat[roi] == flat[roi].max()].max()


def test_region_peaks_against_a_numpy_oracle():
    rng = np.random.default_rng(5)
    shape, spacing = (9, 10, 11), (3.0, 2.5, 2.0)
    stored = rng.normal(5, 2, shape)
    stored[rng.random(shape) > 0.97] = np.nan
    stored[4, 5, 5] = stored[1, 1, 1] = 30.0  # a tie of the hottest voxel
    codes = rng.integers(0, 4, shape).astype(np.uint8)
    member = np.zeros((4, 3), bool)
    member[1, 0] = member[2, 0] = True  # region 0 = codes 1, 2
    member[3, 1] = True  # region 1 = code 3
    # region 2: no code
    scale, offset = rng.uniform(0.5, 2, shape[0]), rng.uniform(-1, 1, shape[0])
    glob, loc = region_peaks(stored, codes, scale, offset, sphere_offsets(spacing), member)
    values = stored * scale[:, None, None] + offset[:, None, None]
    for r in range(2):
        g, lo = _peak_oracle(values, member[codes, r], spacing)
        assert glob[r] == pytest.approx(g, rel=1e-12) and loc[r] == pytest.approx(lo, rel=1e-12)
    assert np.isnan(glob[2]) and np.isnan(loc[2])


def test_peak_neighbours_region_option(backend):
    rng = np.random.default_rng(6)
    shape, spacing = (10, 12, 12) if backend == "cpu" else (6, 12, 8), (2.0, 2.0, 2.0)  # the GPU simulator is slow
    values = rng.uniform(1, 2, shape)
    organs = np.zeros(shape, np.uint8)
    organs[:, :6] = 1
    organs[:, 6:] = 2
    values[4:6, 6:8, 4:8] = 50.0  # hot organ-2 voxels next to organ 1
    layers = [LabelLayer(organs, {1: "vertebrae_L1", 2: "liver"})]
    kw = dict(spacing=spacing, backend=backend)
    image = extract(values, layers, peak_neighbours="image", **kw)
    region = extract(values, layers, peak_neighbours="region", **kw)
    fi, fr = image.features.set_index("region"), region.features.set_index("region")
    for name, lab in (("vertebrae_L1", 1), ("liver", 2)):
        g, lo = _peak_oracle(values, organs == lab, spacing)
        assert fr.loc[name, "suv_peak_global"] == pytest.approx(g, rel=RTOL)
        assert fr.loc[name, "suv_peak_local"] == pytest.approx(lo, rel=RTOL)
    assert fi.loc["vertebrae_L1", "suv_peak_global"] > 5 > fr.loc["vertebrae_L1", "suv_peak_global"]  # no spill-in
    assert fr.loc["vertebrae_L1", "suv_peak_global"] <= fr.loc["vertebrae_L1", "suv_max"]
    assert (region.features.backend == backend).all()  # the fused pass ran there; the region-only peak on the CPU
    assert region.settings["peak_neighbours"] == "region" and image.settings["peak_neighbours"] == "image"
    assert config_hash(region.settings) != config_hash(image.settings)
    assert region.features.config_hash.iloc[0] != image.features.config_hash.iloc[0]
    lesions = (values > 40).astype(np.uint8)
    les = extract(values, layers, lesions=lesions, peak_neighbours="region", spacing=spacing, backend="cpu").lesions
    g, lo = _peak_oracle(values, lesions > 0, spacing)
    assert les.suv_peak_global.iloc[0] == pytest.approx(g, rel=RTOL) == 50.0
    with pytest.raises(Exception, match="peak_neighbours is 'sphere'"):
        extract(values, layers, peak_neighbours="sphere", **kw)


def test_unmatched_region_warns_with_the_labels_that_exist_and_strict_refuses():
    shape = (4, 5, 6)
    organs = np.zeros(shape, np.uint8)
    organs[:2] = 1
    organs[2:] = 2
    layers = [LabelLayer(organs, {1: "liver", 2: "vertebrae_L1"}, namespace="total")]
    regions = {"salivary_glands": BUILTIN_REGIONS["salivary_glands"], "livr": ["livr"], "liver": ["liver"],
               "tumor_bone": BUILTIN_REGIONS["tumor_bone"]}
    with pytest.warns(PetfeatWarning) as caught:
        res = extract(np.ones(shape), layers, regions, spacing=(1, 1, 1), backend="cpu")
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 3 and res.warnings == msgs
    assert "'salivary_glands' matches no label" in msgs[0] and "head_glands_cavities" in msgs[0]
    assert "Labels that exist: liver, vertebrae_L1." in msgs[0]
    assert "'livr' matches no label" in msgs[1] and "did you mean 'liver'?" in msgs[1]
    assert "'tumor_bone' matches no label: no label name matches 'lesion*'" in msgs[2]
    status = res.features.set_index("region").status
    assert (status[["salivary_glands", "livr", "tumor_bone"]] == "no_matching_label").all()
    assert status["liver"] == "ok"
    with pytest.raises(LabelError, match="'salivary_glands' matches no label.*strict"):
        extract(np.ones(shape), layers, regions, spacing=(1, 1, 1), backend="cpu", strict=True)
    # a within group that matches nothing makes the region unmatched too; an exclude pattern does not
    msg = unmatched_regions({"r": {"include": ["liver"], "within": [["prostate"]], "exclude": ["lesion*"]}}, layers)
    assert list(msg) == ["r"] and "'prostate'" in msg["r"] and "lesion" not in msg["r"]
    assert "TotalSegmentator's total task segments such classes, but the 'total' labels here lack them" in msg["r"]
    assert unmatched_regions({"r": {"include": ["liver"], "exclude": ["lesion*"]}}, layers) == {}
    msg = unmatched_regions({"p": ["head_glands_cavities:parotid_gland_*"]}, layers)["p"]
    assert "No label source has the name space 'head_glands_cavities' (name spaces: 'total')" in msg
    assert "TotalSegmentator's head_glands_cavities task" in msg


def test_load_spec_builtin_overrides_and_typos(tmp_path):
    p = tmp_path / "regions.yaml"
    p.write_text("regions:\n  healthy_bone: {builtin: true, exclude_margin_mm: 6}\n  tumor_bone: builtin\n"
                 "  ln: {include: ['lesion*'], require: [[vertebrae_*], [total:rib_*]]}\n")
    spec = load_spec(p)
    assert spec["healthy_bone"]["exclude_margin_mm"] == 6.0
    assert spec["healthy_bone"]["include"] == BUILTIN_REGIONS["healthy_bone"]["include"]
    assert spec["tumor_bone"] == BUILTIN_REGIONS["tumor_bone"]
    assert spec["ln"]["within"] == [["vertebrae_*"], ["total:rib_*"]]
    p.write_text("regions:\n  x: {include: [liver], whithin: [[bone]]}\n")
    with pytest.raises(LabelError, match=r"regions.yaml: region 'x': unknown keys 'whithin' \(did you mean 'within'"):
        load_spec(p)


def test_pattern_matching_equals_fnmatchcase_per_glob():
    import fnmatch

    from petfeat.regions import _escape, _matching

    names = ["vertebrae_L1", "vertebrae_T12", "rib_left_3", "Rib_left_4", "lesion", "lesion_12", "a[1]", "a1",
             "kidney_cyst_left", "hip_right", "x*y", "xzy", "line\nbreak", ""]
    labels = [("total", n) for n in names] + [("lesions", "lesion"), ("margin", "lesion_margin_10mm")]
    globs = ["vertebrae_*", "rib_?eft_[0-3]", "lesion*", "[!k]*_right", _escape("a[1]"), _escape("x*y"), "line*",
             "*", "total:rib_*", "lesions:les*"]
    for k in range(1, len(globs) + 1):
        pats = globs[:k]
        want = set()
        for p in pats:
            ns, sep, g = p.partition(":")
            if sep:
                want |= {lab for lab in labels if lab[0] == ns and fnmatch.fnmatchcase(lab[1], g)}
            else:
                want |= {lab for lab in labels if lab[0] != "margin" and fnmatch.fnmatchcase(lab[1], p)}
        assert _matching(pats, labels, {"total", "lesions", "margin"}) == want, pats


def test_a_misspelt_exclude_pattern_is_warned_and_refused_when_strict():
    from petfeat import extract_features
    from petfeat.errors import LabelError, PetfeatWarning

    rng = np.random.default_rng(3)
    values = rng.gamma(2.0, 1.0, (5, 6, 7))
    organs = LabelLayer(rng.integers(0, 3, values.shape).astype(np.uint8), {1: "vertebrae_L1", 2: "liver"}, "o",
                        namespace="total")
    lesion = LabelLayer((rng.random(values.shape) < 0.2).astype(np.uint8), {1: "lesion"}, "l", namespace="lesions")
    typo = {"hb": {"include": ["vertebrae_*"], "exclude": ["lesoin*", "lung_*"]}}
    with pytest.warns(PetfeatWarning, match=r"exclude pattern 'lesoin\*' \(did you mean 'lesion'\?\) matches no "
                                            r"label, so those voxels stay in the region") as rec:
        extract_features(values, [organs, lesion], typo, spacing=(2, 2, 2), backend="cpu", peaks=False)
    assert not any("lung" in str(w.message) for w in rec)  # absent organs are not typos
    with pytest.raises(LabelError, match="lesoin.*strict"):
        extract_features(values, [organs, lesion], typo, spacing=(2, 2, 2), backend="cpu", peaks=False, strict=True)
    ok = {"hb": {"include": ["vertebrae_*"], "exclude": ["lesion*", "lung_*"]}}
    extract_features(values, [organs, lesion], ok, spacing=(2, 2, 2), backend="cpu", peaks=False, strict=True)
