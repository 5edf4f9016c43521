"""extract_features end to end: oracle on random volumes, the IBSI phantom, empty regions, refusals."""

from __future__ import annotations

import naive
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import IBSI, RTOL
from scipy import ndimage

from petfeat import extract_features
from petfeat.backend import resolve_backend
from petfeat.errors import BackendError, LabelError, PetfeatError, PetfeatWarning
from petfeat.features import FEATURE_NAMES, FEATURES
from petfeat.regions import BUILTIN_REGIONS, HEALTHY_BONE_MARGIN_MM, LabelLayer, build_codes, region_codes


def _ibsi():
    img = sitk.ReadImage(str(IBSI / "phantom.nii.gz"))
    values = sitk.GetArrayFromImage(img).astype(np.float64)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(IBSI / "mask.nii.gz"))).astype(np.uint8)
    return values, mask, img.GetSpacing()[::-1]


#: IBSI reference values (README of reference/ibsi-digital-phantom) for every feature petfeat computes.
IBSI_REFERENCE = {
    "suv_peak_local": (2.6, 0.05),  # VJGA
    "suv_peak_global": (3.1, 0.05),  # 0F91
    "suv_mean": (2.15, 0.005),  # Q4LE
    "suv_min": (1.0, 0.0),  # 1GSF
    "suv_max": (6.0, 0.0),  # 84IY
    "voxel_count": (74, 0),
    "volume_ml": (0.592, 1e-9),  # YEKZ 592 mm3
}


def test_ibsi_phantom(backend):
    values, mask, spacing = _ibsi()
    df = extract_features(values, mask, {"roi": ["label_1"]}, spacing=spacing, backend=backend)
    row = df.iloc[0]
    for name, (ref, tol) in IBSI_REFERENCE.items():
        assert row[name] == pytest.approx(ref, abs=tol), name
    assert row.suv_std**2 == pytest.approx(3.05, abs=0.005)  # ECT3 variance (1/N)
    assert row.suv_std / row.suv_mean == pytest.approx(0.812, abs=0.0005)  # 7TET coefficient of variation
    assert row.backend == backend and row.status == "ok"


def test_every_registered_feature_is_an_output_column_with_a_reference():
    values, mask, spacing = _ibsi()
    df = extract_features(values, mask, {"roi": ["label_1"]}, spacing=spacing, backend="cpu")
    assert [f.name for f in FEATURES] == list(FEATURE_NAMES)
    assert set(FEATURE_NAMES) <= set(df.columns)
    checked_here = set(IBSI_REFERENCE) | {"suv_std", "total_uptake", "nan_voxel_count", "touches_border",
                                          "lesion_count"}  # lesion_count: tests/test_lesions.py
    assert set(FEATURE_NAMES) == checked_here, "a registered feature lacks a reference test"
    assert df.total_uptake.iloc[0] == pytest.approx(df.suv_mean.iloc[0] * df.volume_ml.iloc[0])


def _random_study(rng, shape):
    stored = rng.integers(0, 25000, shape).astype(np.int16)
    organs = np.zeros(shape, np.uint16)
    organs[:, : shape[1] // 2] = 1  # "vertebrae_L1"
    organs[:, shape[1] // 2 :, : shape[2] // 2] = 2  # "rib_left_1"
    organs[0, -1, -1] = 3  # "liver": one voxel
    lesions = np.zeros(shape, np.uint16)
    lesions[1:3, 1:4, 1:5] = 1
    lesions[-2:, -3:, -3:] = 2
    layers = [LabelLayer(organs, {1: "vertebrae_L1", 2: "rib_left_1", 3: "liver", 4: "spleen"}),
              LabelLayer(lesions, {1: "lesion_1", 2: "lesion_2"})]
    return stored, organs, lesions, layers


def test_regions_against_oracle(backend):
    rng = np.random.default_rng(4)
    shape = (5, 6, 7) if backend == "gpu" else (10, 12, 14)
    stored, organs, lesions, layers = _random_study(rng, shape)
    spacing = (3.0, 2.0, 2.0)
    values = stored.astype(np.float64)
    regions = {k: BUILTIN_REGIONS[k] for k in ("whole_body_tumor", "bone", "healthy_bone", "salivary_glands", "liver")}
    regions["spleen"] = ["spleen"]  # a named label with no voxels
    regions["nothing"] = ["no_such_label*"]
    with pytest.warns(PetfeatWarning) as caught:
        df = extract_features(values, layers, regions, spacing=spacing, backend=backend).set_index("region")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "'salivary_glands' matches no label" in messages[0]
    assert "'nothing' matches no label" in messages[1]
    bone = np.isin(organs, [1, 2])
    # healthy bone keeps its margin from lesions and from high-uptake organs (here the one-voxel liver)
    near_lesion = ndimage.distance_transform_edt((lesions == 0) & (organs != 3), sampling=spacing) \
        <= HEALTHY_BONE_MARGIN_MM
    masks = {
        "whole_body_tumor": lesions > 0,
        "bone": bone,
        "healthy_bone": bone & ~near_lesion,
        "salivary_glands": np.zeros(shape, bool),
        "liver": (organs == 3) & (lesions == 0),
    }
    vox_ml = np.prod(spacing) / 1000
    for name, m in masks.items():
        row = df.loc[name]
        ref = naive.region_stats(values, m)
        assert row.voxel_count == ref["count"], name
        if ref["count"] == 0:
            assert np.isnan(row.suv_mean) and row.status in ("empty", "no_matching_label")
            continue
        g, loc = naive.peaks(values, m, spacing)
        assert row.suv_mean == pytest.approx(ref["mean"], rel=RTOL)
        assert row.suv_std == pytest.approx(np.sqrt(ref["var"]), rel=RTOL)
        assert row.suv_max == ref["max"] and row.suv_min == ref["min"]
        assert row.volume_ml == pytest.approx(ref["count"] * vox_ml)
        assert row.total_uptake == pytest.approx(ref["mean"] * ref["count"] * vox_ml, rel=RTOL)
        assert row.suv_peak_global == pytest.approx(g, rel=RTOL) and row.suv_peak_local == pytest.approx(loc, rel=RTOL)
    # healthy bone + bone within the lesions' margin = bone; the margin took more than the lesion voxels
    assert df.loc["healthy_bone"].voxel_count + (bone & near_lesion).sum() == df.loc["bone"].voxel_count
    assert (bone & near_lesion).sum() > (bone & (lesions > 0)).sum()
    assert df.loc["spleen"].status == "empty" and df.loc["nothing"].status == "no_matching_label"
    assert df.loc["salivary_glands"].status == "no_matching_label"
    assert bool(df.loc["whole_body_tumor"].touches_border) and not np.isnan(df.loc["liver"].suv_mean)


@pytest.mark.parametrize("slab_voxels, lut_limit", [(None, None), (100, None), (64, 8)])
def test_codes_are_compact_and_complete(monkeypatch, slab_voxels, lut_limit):
    # whole volume in one slab; slabs of one or two planes (100 voxels); and the sort path for
    # key spaces too large for a lookup table
    import petfeat.regions
    import petfeat.slabs

    if slab_voxels:
        monkeypatch.setattr(petfeat.slabs, "SLAB_VOXELS", slab_voxels)
    if lut_limit:
        monkeypatch.setattr(petfeat.regions, "_LUT_LIMIT", lut_limit)
    rng = np.random.default_rng(0)
    _, organs, lesions, layers = _random_study(rng, (6, 8, 8))
    cm = build_codes(layers, organs.shape)
    assert cm.n_codes == len({(a, b) for a, b in zip(organs.ravel(), lesions.ravel(), strict=True)} | {(0, 0)})
    for c in range(1, cm.n_codes):
        o, les = cm.combos[c]
        np.testing.assert_array_equal(cm.codes == c, (organs == o) & (lesions == les))
    members = region_codes({"x": {"include": ["rib_*"], "exclude": ["lesion_2"]}}, cm)["x"]
    assert all(cm.combos[c][0] == 2 and cm.combos[c][1] != 2 for c in members)


def test_more_layers_than_one_int64_key_holds():
    """70 overlapping binary layers (2**70 combinations) and a multi-id layer: coded in groups of layers."""
    rng = np.random.default_rng(7)
    shape = (8, 10, 12)
    layers = []
    for k in range(70):
        a = np.zeros(shape, np.uint8)
        z, y, x = rng.integers(0, 6, 3)
        a[z:z + 3, y:y + 3, x:x + 3] = 1
        layers.append(LabelLayer(a, {1: f"roi_{k}"}, f"segment {k}"))
    layers.append(LabelLayer(rng.integers(0, 300, shape).astype(np.uint16), {i: f"organ_{i}" for i in range(1, 300)}))
    cm = build_codes(layers, shape)
    stack = np.stack([la.array for la in layers], -1).reshape(-1, len(layers))
    np.testing.assert_array_equal(cm.combos[cm.codes.reshape(-1)], stack)  # every voxel's code gives its labels
    assert len(np.unique(cm.combos, axis=0)) == cm.n_codes and not cm.combos[0].any()  # one code per combination
    members = region_codes({"r": {"include": ["roi_6*"], "exclude": ["organ_1*"]}}, cm)["r"]
    want = [c for c in range(1, cm.n_codes) if cm.combos[c, 60:70].any() or cm.combos[c, 6]]
    want = [c for c in want if not str(cm.combos[c, 70]).startswith("1")]
    assert sorted(members) == want


def test_z_slabs_cover_the_slices_in_order():
    import petfeat.slabs

    assert list(petfeat.slabs.z_slabs((7, 9, 11), voxels=200)) == [slice(0, 2), slice(2, 4), slice(4, 6),
                                                                   slice(6, 7)]
    assert list(petfeat.slabs.z_slabs((3, 9, 11), voxels=1)) == [slice(0, 1), slice(1, 2), slice(2, 3)]


@pytest.mark.parametrize("dtype, word", [(np.int16, "signed"), (np.float32, "floating-point")])
def test_float_or_signed_labels_refused(dtype, word):
    with pytest.raises(LabelError, match=f"{word} dtype.*unsigned integers"):
        extract_features(np.ones((2, 2, 2)), np.ones((2, 2, 2), dtype), spacing=(1, 1, 1), backend="cpu")


def test_label_shape_mismatch_refused():
    with pytest.raises(LabelError, match=r"shape \(2, 2, 3\) differs from the PET grid \(2, 2, 2\).*Resample"):
        extract_features(np.ones((2, 2, 2)), np.ones((2, 2, 3), np.uint8), spacing=(1, 1, 1), backend="cpu")


@pytest.mark.parametrize("spec, pattern", [
    ({"a": {"exclude": ["x"]}}, "'include'"),
    ({"a": {"include": ["x"], "typo": 1}}, "unknown keys"),
    ({"a": {"include": ["x"], "exlude": ["y"]}}, "unknown keys 'exlude' \\(did you mean 'exclude'\\?\\)"),
    ({"a": {"include": ["x"], "within": ["bone", "liver"]}}, "flat list"),
    ({"a": {"include": ["x"], "within": [[]]}}, "a 'within' group is empty"),
    ({"a": {"include": ["x"], "within": [["y"]], "require": [["z"]]}}, "not both"),
    ({"a": {"include": ["x"], "exclude_margin_mm": 5}}, "needs 'exclude' patterns"),
    ({"a": {"include": ["x"], "exclude": ["y"], "exclude_margin_mm": -1}}, "exclude_margin_mm is -1"),
    ({"a": {"include": ["x"], "exclude": ["y"], "exclude_margin_mm": "ten"}}, "give a distance in mm"),
    ({"a": {"include": []}}, "'include' is empty"),
    (["bone"], "must be a mapping"),
])
def test_bad_region_specs_refused(spec, pattern):
    with pytest.raises(LabelError, match=pattern):
        extract_features(np.ones((2, 2, 2)), np.ones((2, 2, 2), np.uint8), spec, spacing=(1, 1, 1), backend="cpu")


def test_array_pet_needs_spacing():
    with pytest.raises(PetfeatError, match="spacing"):
        extract_features(np.ones((2, 2, 2)), np.ones((2, 2, 2), np.uint8), backend="cpu")


def test_backend_names_and_gpu_without_device(monkeypatch):
    with pytest.raises(BackendError, match="choose one of auto, cpu, gpu"):
        resolve_backend("cuda")
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    import petfeat.backend as b

    monkeypatch.setattr(b, "gpu_available", lambda: (False, "no CUDA driver or device found by numba.cuda"))
    with pytest.raises(BackendError, match="backend='gpu' was asked for but no CUDA driver.*backend='cpu'"):
        resolve_backend("gpu")
    assert resolve_backend("auto") == "cpu"


def test_importing_petfeat_does_not_import_cupy_or_cuda():
    import subprocess
    import sys

    code = "import sys, petfeat; print('cupy' in sys.modules, 'numba.cuda' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_series_features_schema(synth_archive):
    from petfeat.io.dicom import read_pet_series
    from petfeat.io.labels import read_label_map, read_totalsegmentator_folder

    out, truths = synth_archive
    study = out / truths[1]["patient"]
    series = read_pet_series(study / "pet")
    organs = read_totalsegmentator_folder(study / "seg", series.geometry)
    lesions = read_label_map(study / "lesions.nii.gz", series.geometry, prefix="lesion")
    # the synthetic study has a label for every built-in region: none warns (warnings are errors here)
    df = extract_features(series, [organs, lesions], BUILTIN_REGIONS, backend="cpu", id_key=b"k")
    assert list(df.columns[:4]) == ["patient_id", "study_date", "series_uid", "region"]
    assert df.patient_id.str.match(r"^P[0-9a-f]{12}$").all() and "MRN" not in df.to_csv()
    assert df.series_uid.iloc[0] == truths[1]["series_uid"]
    tumour = df.set_index("region").loc["whole_body_tumor"]
    assert tumour.voxel_count == truths[1]["lesion_mask_stats"]["voxel_count"]
    assert tumour.suv_mean == pytest.approx(truths[1]["lesion_mask_stats"]["suv_mean"], rel=1e-8)
    assert isinstance(df, pd.DataFrame) and (df.config_hash == df.config_hash.iloc[0]).all()
    by = df.set_index("region")
    sites = ["tumor_bone", "tumor_prostate", "tumor_visceral", "tumor_lymph_node_or_soft_tissue"]
    assert by.loc[sites, "voxel_count"].sum() == tumour.voxel_count  # the four sites partition the tumour
    assert (by.status != "no_matching_label").all() and by.loc["tumor_bone", "voxel_count"] > 0
    for region in ("parotid_glands", "aorta"):  # the reference organs of the PSMA quantities
        assert by.loc[region, "voxel_count"] > 0 and np.isfinite(by.loc[region, "suv_mean"])


def test_auto_reduces_on_the_cpu_when_the_codes_exceed_the_gpu_table():
    """More label combinations than the GPU's shared-memory table: auto falls back (warned), gpu is refused."""
    from petfeat.kernels.config import MAX_GPU_CODES, SIMULATOR

    from petfeat.errors import BackendError

    assert SIMULATOR  # the tests run the GPU backend on Numba's CUDA simulator: it counts as a device
    rng = np.random.default_rng(5)
    values = rng.gamma(2.0, 1.5, (6, 9, 10))
    n = MAX_GPU_CODES + 6  # every label its own region: no label classes merge
    labels = (np.arange(values.size) % (n + 1)).reshape(values.shape).astype(np.uint8)
    cpu = extract_features(values, labels, spacing=(2, 2, 2), backend="cpu", peaks=False)
    with pytest.warns(PetfeatWarning, match=f"{n + 1} label combinations .background included.*reduced on the CPU"):
        auto = extract_features(values, labels, spacing=(2, 2, 2), backend="auto", peaks=False)
    assert set(auto.backend) == {"cpu"} and len(auto) == n
    pd.testing.assert_frame_equal(auto.drop(columns=["config_hash"]), cpu.drop(columns=["config_hash"]))
    with pytest.raises(BackendError, match="more than the GPU reduction's table"):
        extract_features(values, labels, spacing=(2, 2, 2), backend="gpu", peaks=False)
