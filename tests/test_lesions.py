"""Lesions: connected components, per-lesion rows, lesion counts, threshold segmentation, refusals."""

from __future__ import annotations

import json

import naive
import numpy as np
import pandas as pd
import pytest
from conftest import RTOL
from scipy import ndimage

from petfeat.errors import LabelError
from petfeat.extract import extract
from petfeat.io.dicom import read_pet_series
from petfeat.io.labels import read_label_map, read_totalsegmentator_folder
from petfeat.lesions import connected_components
from petfeat.regions import BUILTIN_REGIONS, LabelLayer

#: The built-in regions whose labels these tests' organ maps have (no prostate, no salivary glands).
REGIONS = {k: BUILTIN_REGIONS[k] for k in ("whole_body_tumor", "tumor_bone", "tumor_visceral",
                                           "tumor_lymph_node_or_soft_tissue", "bone", "healthy_bone", "liver")}


@pytest.mark.parametrize("connectivity, structure", [(26, np.ones((3, 3, 3))), (6, None)])
def test_components_match_scipy(connectivity, structure):
    rng = np.random.default_rng(connectivity)
    mask = rng.random((12, 14, 16)) > 0.8
    comps = connected_components(mask, 0.001, connectivity)
    ref, n = ndimage.label(mask, structure=structure)
    assert comps.n == n
    ref_sizes = np.sort(np.bincount(ref.ravel())[1:])[::-1]
    np.testing.assert_array_equal(comps.voxel_counts, ref_sizes)  # largest first
    assert ((comps.ids > 0) == mask).all()


@pytest.mark.parametrize("density, n_min", [(0.75, 1), (0.93, 256)])  # few big ones; > 255 (uint16 ids)
def test_components_in_a_sub_box_match_scipy_on_the_whole_grid(density, n_min):
    # SimpleITK labels only the mask's bounding box; the ids must still partition the whole grid as
    # scipy's labelling of the whole grid does, numbered largest first with ties in scan order.
    rng = np.random.default_rng(7)
    mask = np.zeros((30, 34, 38), bool)
    mask[5:24, 7:30, 3:29] = rng.random((19, 23, 26)) > density
    comps = connected_components(mask, 0.001, 26)
    ref, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    assert comps.n == n >= n_min and comps.ids.dtype == (np.uint8 if n < 255 else np.uint16)
    pairs = np.unique(np.stack([comps.ids.ravel(), ref.ravel()], 1), axis=0)
    assert len(pairs) == n + 1  # the same partition
    sizes = np.bincount(ref.ravel())[1:]
    first = np.array([np.flatnonzero(ref.ravel() == k)[0] for k in range(1, n + 1)])
    order = np.lexsort((first, -sizes)) + 1  # scipy label of our id 1, 2, ...
    expect = np.zeros(n + 1, np.int64)
    expect[order] = np.arange(1, n + 1)
    np.testing.assert_array_equal(comps.ids, expect[ref])


def test_lesion_layer_reuses_the_mask_only_when_nothing_was_dropped():
    mask = np.zeros((10, 10, 10), bool)
    mask[1:4, 1:4, 1:4] = True
    mask[7, 7, 7] = True
    kept = connected_components(mask, 0.1, 26)
    layer = kept.as_layer("lesion", mask)
    assert np.shares_memory(layer.array, mask) and layer.array.dtype == np.uint8
    dropped = connected_components(mask, 0.1, 26, min_volume_ml=0.5)
    layer = dropped.as_layer("lesion", mask)
    assert not np.shares_memory(layer.array, mask) and layer.array.sum() == 27 and layer.array[7, 7, 7] == 0


@pytest.mark.parametrize("connectivity", [6, 26])
def test_gpu_components_match_cpu(connectivity):
    """The CuPy path (real GPU only: CuPy cannot run on Numba's simulator)."""
    cp = pytest.importorskip("cupy", reason="GPU lesion components need CuPy and a CUDA device")
    try:
        cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no CUDA device for CuPy: {exc}")
    rng = np.random.default_rng(connectivity + 1)
    mask = rng.random((20, 24, 28)) > 0.75
    a = connected_components(mask, 0.01, connectivity, min_volume_ml=0.03, backend="cpu")
    b = connected_components(mask, 0.01, connectivity, min_volume_ml=0.03, backend="gpu")
    assert a.n == b.n and a.dropped == b.dropped
    np.testing.assert_array_equal(a.voxel_counts, b.voxel_counts)
    # same partition of the voxels (ids may differ only between components of equal size)
    pairs = np.unique(np.stack([a.ids.ravel(), b.ids.ravel()], 1), axis=0)
    assert len(pairs) == a.n + 1


def test_min_volume_drops_small_components():
    mask = np.zeros((10, 10, 10), bool)
    mask[1:4, 1:4, 1:4] = True  # 27 voxels
    mask[7, 7, 7] = True  # 1 voxel
    comps = connected_components(mask, 0.1, 26, min_volume_ml=0.5)  # 0.5 mL = 5 voxels
    assert comps.n == 1 and comps.dropped == 1 and comps.voxel_counts.tolist() == [27]


def test_connectivity_refused():
    with pytest.raises(LabelError, match="connectivity is 18; choose 6"):
        connected_components(np.ones((2, 2, 2), bool), 1.0, 18)


def _layout():
    rng = np.random.default_rng(8)
    shape = (10, 12, 14)
    values = rng.gamma(2.0, 1.5, shape)
    organs = np.zeros(shape, np.uint8)
    organs[:, :6] = 1  # bone
    organs[:, 6:, :7] = 2  # liver
    lesions = np.zeros(shape, np.uint8)
    lesions[1:3, 1:3, 1:3] = 1  # bone lesion A
    lesions[5:8, 2:4, 8:11] = 1  # bone lesion B
    lesions[6:9, 8:10, 10:13] = 1  # soft-tissue lesion C (outside organs)
    return values, LabelLayer(organs, {1: "vertebrae_L1", 2: "liver"}), lesions


@pytest.mark.parametrize("mask_dtype", [np.uint8, bool])  # components first; components after the region pass
def test_lesion_rows_and_counts(backend, mask_dtype):
    values, organs, lesions = _layout()
    spacing = (2.0, 3.0, 3.0)
    res = extract(values, [organs], REGIONS, lesions=lesions.astype(mask_dtype), spacing=spacing,
                  backend=backend)
    f = res.features.set_index("region")
    assert f.loc["whole_body_tumor", "lesion_count"] == 3
    assert f.loc["bone", "lesion_count"] == 2 and f.loc["healthy_bone", "lesion_count"] == 0
    assert f.loc["liver", "lesion_count"] == 0
    assert f.loc["tumor_bone", "lesion_count"] == 2 and f.loc["tumor_lymph_node_or_soft_tissue", "lesion_count"] == 1
    assert f.loc["tumor_visceral", "voxel_count"] == 0 and f.loc["tumor_visceral", "status"] == "empty"
    ref_ids, n = ndimage.label(lesions, structure=np.ones((3, 3, 3)))
    assert len(res.lesions) == n == 3
    for _, row in res.lesions.iterrows():
        # match the petfeat component to the oracle's by voxel count and centroid
        cands = [k for k in range(1, n + 1) if (ref_ids == k).sum() == row.voxel_count]
        zyx = [np.argwhere(ref_ids == k).mean(0) for k in cands]
        k = cands[int(np.argmin([abs(z[0] * 2.0 - row.centroid_z_mm) for z in zyx]))]
        m = ref_ids == k
        ref = naive.region_stats(values, m)
        g, loc = naive.peaks(values, m, spacing)
        assert row.suv_mean == pytest.approx(ref["mean"], rel=RTOL) and row.suv_max == ref["max"]
        assert row.suv_peak_global == pytest.approx(g, rel=RTOL) and row.suv_peak_local == pytest.approx(loc, rel=RTOL)
        c = np.argwhere(m).mean(0) * np.array(spacing)
        assert (row.centroid_z_mm, row.centroid_y_mm, row.centroid_x_mm) == pytest.approx(tuple(c))
        assert row.site == ("vertebrae_L1" if c[1] < 6 * 3.0 else "soft_tissue")
    assert (res.features.lesion_method == "mask; 26-connected, >= 0 mL").all()


def test_deferred_and_upfront_components_give_identical_tables():
    values, organs, lesions = _layout()
    lesions[0, 9, 0] = 1  # one more, one-voxel lesion
    kw = dict(spacing=(2.0, 3.0, 3.0), backend="cpu")
    upfront = extract(values, [organs], REGIONS, lesions=lesions, **kw)
    deferred = extract(values, [organs], REGIONS, lesions=lesions.astype(bool), **kw)
    pd.testing.assert_frame_equal(upfront.features, deferred.features)
    pd.testing.assert_frame_equal(upfront.lesions, deferred.lesions)
    assert upfront.settings == deferred.settings
    # a minimum volume drops the one-voxel lesion on both paths (a boolean mask then goes upfront)
    small = extract(values, [organs], REGIONS, lesions=lesions.astype(bool), min_lesion_ml=0.05, **kw)
    assert len(small.lesions) == len(upfront.lesions) - 1 == 3


def test_lesion_mask_shape_refused():
    values, organs, lesions = _layout()
    with pytest.raises(LabelError, match="lesion mask shape .* differs from the PET grid"):
        extract(values, [organs], lesions=lesions[:-1], spacing=(1, 1, 1), backend="cpu")


@pytest.fixture(scope="module")
def study(synth_archive):
    out, truths = synth_archive
    truth = truths[0]
    d = out / truth["patient"]
    series = read_pet_series(d / "pet")
    organs = read_totalsegmentator_folder(d / "seg", series.geometry)
    lesion_map = read_label_map(d / "lesions.nii.gz", series.geometry, prefix="lesion").array
    return series, organs, lesion_map, truth


def test_planted_lesions_are_found(study):
    series, organs, lesion_map, truth = study
    res = extract(series, [organs], REGIONS, lesions=lesion_map, backend="cpu")
    _, n_expected = ndimage.label(lesion_map > 0, structure=np.ones((3, 3, 3)))
    assert len(res.lesions) == n_expected
    assert res.features.set_index("region").loc["whole_body_tumor", "lesion_count"] == n_expected
    found = 0
    for les in truth["lesions"]:  # each planted lesion that stands alone is one component with its numbers
        m = lesion_map == les["lesion_id"]
        ids, k = ndimage.label(lesion_map > 0, structure=np.ones((3, 3, 3)))
        if les["voxel_count"] == 0 or (ids == ids[m][0]).sum() != les["voxel_count"]:
            continue
        rows = res.lesions[res.lesions.voxel_count == les["voxel_count"]]
        assert any(np.isclose(rows.suv_max, les["suv_max"], rtol=1e-9)), les
        assert any(np.isclose(rows.volume_ml, les["volume_ml"]))
        found += 1
    assert found >= 1


def test_fixed_threshold_finds_hot_lesions(study):
    series, organs, lesion_map, truth = study
    res = extract(series, [organs], REGIONS, threshold={"method": "fixed", "threshold": 4.0},
                  min_lesion_ml=0.5, backend="cpu")
    assert res.settings["lesions"]["threshold_suv"] == 4.0
    assert res.features.lesion_method.iloc[0] == "threshold SUV >= 4; 26-connected, >= 0.5 mL"
    hot = [les for les in truth["lesions"] if les["voxel_count"] and les["suv_max"] > 8]
    # every hot planted lesion overlaps a thresholded component (its hottest voxel is inside one)
    assert len(res.lesions) >= 1 and res.lesions.suv_max.max() >= max(les["suv_max"] for les in hot) * (1 - 1e-9)
    assert (res.lesions.site != "liver").all() and (~res.lesions.site.str.startswith("kidney")).all()


def test_percist_threshold_uses_the_liver_sphere(study):
    series, organs, lesion_map, truth = study
    res = extract(series, [organs], REGIONS, threshold={"method": "percist"}, backend="cpu")
    s = res.settings["lesions"]
    # independent oracle of the liver reference: SUL in a 15 mm sphere around the reported centre
    from petfeat.suv import compute_suv_factors

    f = compute_suv_factors(series.suv_header)
    sul = series.rescaled(np.float64) * f.factor("lbm")[:, None, None]
    liver = organs.array == [i for i, nm in organs.names.items() if nm == "liver"][0]
    zz, yy, xx = np.indices(liver.shape)
    c = s["liver_sphere_centre_zyx"]
    sp = series.geometry.spacing
    ball = ((zz - c[0]) * sp[0]) ** 2 + ((yy - c[1]) * sp[1]) ** 2 + ((xx - c[2]) * sp[2]) ** 2 <= 15.0**2
    v = sul[ball & liver]
    assert s["liver_sul_mean"] == pytest.approx(v.mean(), rel=1e-5)
    assert s["threshold_sul"] == pytest.approx(1.5 * v.mean() + 2 * v.std(), rel=1e-5)
    assert res.features.lesion_method.iloc[0].startswith("PERCIST SUL >= ")


def test_percist_without_liver_refused():
    values, organs, _ = _layout()
    with pytest.raises(LabelError, match="PERCIST thresholding needs SUL"):
        extract(values, [organs], threshold={"method": "percist"}, spacing=(1, 1, 1), backend="cpu")


def test_synth_truth_is_consistent(synth_archive):
    out, truths = synth_archive
    t = json.loads((out / truths[0]["patient"] / "truth.json").read_text())
    assert t["lesion_mask_stats"]["voxel_count"] == sum(les["voxel_count"] for les in t["lesions"])
