"""PSMA reference quantities against values computed by hand on a synthetic study of known uptake."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from petfeat.errors import PetfeatError
from petfeat.extract import extract
from petfeat.quantities import MEASURABLE_MIN_ML, QUANTITY_NAMES, REFERENCE_REGIONS, study_quantities
from petfeat.regions import BUILTIN_REGIONS, LabelLayer

VOXEL_ML = 0.064  # 4 mm voxels
ORGANS = {1: "liver", 2: "aorta", 3: "parotid_gland_left", 4: "vertebrae_L1", 5: "prostate",
          6: "lung_upper_lobe_left"}
BOXES = {  # organ id -> (z, y, x) slices, and its SUV
    1: ((slice(2, 8), slice(2, 10), slice(2, 10)), 5.0),
    2: ((slice(2, 14), slice(12, 14), slice(12, 14)), 2.0),
    3: ((slice(12, 15), slice(2, 6), slice(2, 6)), 12.0),
    4: ((slice(4, 10), slice(16, 22), slice(16, 22)), 3.0),
    5: ((slice(10, 14), slice(16, 22), slice(2, 8)), 4.0),
    6: ((slice(9, 15), slice(2, 8), slice(12, 20)), 0.5),
}
LESIONS = {  # site -> box: 27 voxels each except the prostate lesion's 8 (0.512 mL: below a 10 mm sphere)
    "bone": (slice(5, 8), slice(17, 20), slice(17, 20)),
    "prostate": (slice(11, 13), slice(17, 19), slice(3, 5)),
    "visceral": (slice(10, 13), slice(3, 6), slice(14, 17)),
    "lymph_node_or_soft_tissue": (slice(1, 4), slice(12, 15), slice(18, 21)),
}
TUMOUR_REGIONS = ("whole_body_tumor", "tumor_bone", "tumor_prostate", "tumor_visceral",
                  "tumor_lymph_node_or_soft_tissue", "liver")


def _study(lesion_suv: dict, regions=None, suv_type="bw", study_id=None):
    shape = (16, 24, 24)
    organs = np.zeros(shape, np.uint8)
    pet = np.ones(shape, np.float32)
    for i, (box, suv) in BOXES.items():
        organs[box] = i
        pet[box] = suv
    mask = np.zeros(shape, bool)
    for site, box in LESIONS.items():
        mask[box] = True
        pet[box] = lesion_suv[site]
    spec = regions or {**{k: BUILTIN_REGIONS[k] for k in TUMOUR_REGIONS}, **REFERENCE_REGIONS}
    res = extract(pet, LabelLayer(organs, ORGANS, namespace="total"), spec, lesions=mask, spacing=(4.0, 4.0, 4.0),
                  backend="cpu", suv_type=suv_type, peaks=False)
    if study_id is not None:
        for df in (res.features, res.lesions):
            df.insert(0, "study_id", study_id)
    return res


A = {"bone": 25.0, "prostate": 15.0, "visceral": 9.0, "lymph_node_or_soft_tissue": 4.0}
B = {"bone": 18.0, "prostate": 6.0, "visceral": 12.0, "lymph_node_or_soft_tissue": 11.0}


def test_quantities_match_hand_computed_values_for_two_studies():
    a, b = _study(A, study_id="S_a"), _study(B, study_id="S_b")
    q = study_quantities(pd.concat([a.features, b.features]), pd.concat([a.lesions, b.lesions])).set_index("study_id")
    assert list(q.index) == ["S_a", "S_b"]
    assert list(q.columns) == ["patient_id", "study_date", "series_uid", "suv_type", *QUANTITY_NAMES]
    qa, qb = q.loc["S_a"], q.loc["S_b"]
    # study A: 27 bone voxels at 25, 8 prostate at 15, 27 lung at 9, 27 soft tissue at 4 -> 89 voxels, sum 1146
    assert qa.tumour_suv_mean == pytest.approx(1146 / 89)
    assert qa.tumour_suv_max == 25.0
    assert (qa.liver_suv_mean, qa.parotid_suv_mean, qa.blood_pool_suv_mean) == pytest.approx((5.0, 12.0, 2.0))
    assert qa.tumour_to_liver_ratio == pytest.approx(1146 / 89 / 5.0)
    assert qa.tumour_to_parotid_ratio == pytest.approx(1146 / 89 / 12.0)
    assert qa.psma_tv_ml == pytest.approx(89 * VOXEL_ML) and qa.tl_psma == pytest.approx(1146 * VOXEL_ML)
    assert (qa.psma_tv_bone_ml, qa.tl_psma_bone) == pytest.approx((27 * VOXEL_ML, 27 * 25 * VOXEL_ML))
    assert (qa.psma_tv_prostate_ml, qa.tl_psma_prostate) == pytest.approx((8 * VOXEL_ML, 8 * 15 * VOXEL_ML))
    assert (qa.psma_tv_visceral_ml, qa.tl_psma_visceral) == pytest.approx((27 * VOXEL_ML, 27 * 9 * VOXEL_ML))
    assert (qa.psma_tv_lymph_node_or_soft_tissue_ml, qa.tl_psma_lymph_node_or_soft_tissue) == pytest.approx(
        (27 * VOXEL_ML, 27 * 4 * VOXEL_ML))
    assert qa.lesion_count == 4
    assert qa.lesions_above_liver == 3  # 25, 15, 9 > 5; the soft-tissue lesion at 4 is not
    assert qa.measurable_lesion_count == 3  # 8 voxels = 0.512 mL < 0.5236 mL (10 mm sphere)
    # A: 25 >= 20; the measurable lesions at 9 and 4 are < 10. B: none reaches 20; every measurable lesion >= 10
    # (the 6 is the prostate's 0.512 mL lesion, not measurable)
    assert q.therap_suv_max_ge20_any.tolist() == [True, False]
    assert q.therap_suv_max_ge10_all_measurable.tolist() == [False, True]
    assert qa.notes == ""
    assert qb.tumour_suv_mean == pytest.approx((27 * 18 + 8 * 6 + 27 * 12 + 27 * 11) / 89)
    assert qb.lesions_above_liver == 4


def test_measurable_threshold_is_the_volume_of_a_10_mm_sphere():
    assert MEASURABLE_MIN_ML == pytest.approx(4 / 3 * np.pi * 0.5**3)
    b = _study(B)  # single study: keys patient_id/study_date/series_uid, no study_id
    q = study_quantities(b.features, b.lesions, measurable_min_ml=0.5)
    assert q.measurable_lesion_count.iloc[0] == 4
    assert q.therap_suv_max_ge10_all_measurable.tolist() == [False]  # the prostate lesion at 6 now counts


def test_missing_reference_regions_give_nan_and_a_note_naming_the_spec():
    spec = {k: BUILTIN_REGIONS[k] for k in TUMOUR_REGIONS}  # no parotid_glands, no aorta
    r = _study(A, regions=spec)
    q = study_quantities(r.features, r.lesions).iloc[0]
    assert np.isnan(q.parotid_suv_mean) and np.isnan(q.tumour_to_parotid_ratio) and np.isnan(q.blood_pool_suv_mean)
    assert q.tumour_to_liver_ratio == pytest.approx(1146 / 89 / 5.0)
    assert "no region 'aorta' in the features table (regions YAML: 'aorta: builtin')" in q.notes
    assert "no region 'parotid_glands' in the features table (regions YAML: 'parotid_glands: builtin')" in q.notes


def test_reference_regions_without_their_labels_name_the_label_they_need():
    shape = (8, 8, 8)
    organs = np.zeros(shape, np.uint8)
    organs[2:6, 2:6, 2:6] = 1
    mask = np.zeros(shape, bool)
    mask[3:5, 3:5, 3:5] = True
    spec = {k: BUILTIN_REGIONS[k] for k in ("whole_body_tumor", "liver", "parotid_glands", "aorta")}
    with pytest.warns(UserWarning) as caught:  # the total task alone, without head_glands_cavities or an aorta
        r = extract(np.full(shape, 3.0, np.float32), LabelLayer(organs, {1: "liver"}), spec, lesions=mask,
                    spacing=(4.0, 4.0, 4.0), backend="cpu", peaks=False)
    assert sorted(str(w.message).split("'")[1] for w in caught) == ["aorta", "parotid_glands"]
    q = study_quantities(r.features, r.lesions).iloc[0]
    assert np.isnan(q.parotid_suv_mean) and np.isnan(q.blood_pool_suv_mean) and q.liver_suv_mean == 3.0
    assert "parotid: region 'parotid_glands' matched no label (needs parotid_gland_left/right labels" in q.notes
    assert "head_glands_cavities" in q.notes
    assert "blood_pool: region 'aorta' matched no label (needs the aorta label" in q.notes


def test_default_regions_give_parotid_and_blood_pool_by_hand_with_lesion_voxels_excluded():
    """Every built-in region on a study with both parotid glands, an aorta of graded uptake and lesions inside both."""
    shape = (16, 24, 24)
    names = {**ORGANS, 7: "parotid_gland_right"}
    organs = np.zeros(shape, np.uint8)
    pet = np.ones(shape, np.float32)
    for i, (box, suv) in BOXES.items():
        organs[box] = i
        pet[box] = suv
    organs[12:15, 7:10, 2:6], pet[12:15, 7:10, 2:6] = 7, 10.0  # right parotid: 36 voxels at 10
    for z in range(2, 14):  # aorta (2 x 2 voxels a slice, z 2..13): SUV 1.5 + 0.1 z
        pet[z, 12:14, 12:14] = 1.5 + 0.1 * z
    mask = np.zeros(shape, bool)
    mask[2:5, 12:14, 12:14], pet[2:5, 12:14, 12:14] = True, 30.0  # 12 lesion voxels in the aorta
    mask[12, 2:4, 2:4], pet[12, 2:4, 2:4] = True, 20.0  # 4 in the left parotid (48 voxels at 12)
    res = extract(pet, LabelLayer(organs, names, namespace="total"), BUILTIN_REGIONS, lesions=mask,
                  spacing=(4.0, 4.0, 4.0), backend="cpu", peaks=False)  # no label missing: no warning
    q = study_quantities(res.features, res.lesions).iloc[0]
    assert q.notes == ""
    assert q.blood_pool_suv_mean == pytest.approx(np.mean([1.5 + 0.1 * z for z in range(5, 14)]))  # = 2.4
    assert q.parotid_suv_mean == pytest.approx((44 * 12.0 + 36 * 10.0) / 80)  # = 11.1, both glands voxel-weighted
    assert q.tumour_suv_mean == pytest.approx((12 * 30.0 + 4 * 20.0) / 16)  # = 27.5
    assert q.tumour_to_parotid_ratio == pytest.approx(27.5 / 11.1)
    assert q.tumour_to_liver_ratio == pytest.approx(27.5 / 5.0)


def test_other_region_names_as_references():
    spec = {**{k: BUILTIN_REGIONS[k] for k in TUMOUR_REGIONS}, "parotids": BUILTIN_REGIONS["parotid_glands"],
            "aorta": BUILTIN_REGIONS["aorta"]}
    r = _study(A, regions=spec)
    q = study_quantities(r.features, r.lesions, references={"parotid": "parotids"}).iloc[0]
    assert q.parotid_suv_mean == pytest.approx(12.0)
    with pytest.raises(PetfeatError, match="unknown role"):
        study_quantities(r.features, r.lesions, references={"spleen": "spleen"})


def test_sul_tables_get_no_therap_flags():
    r = _study(A, suv_type="lbm")
    q = study_quantities(r.features, r.lesions).iloc[0]
    assert q.suv_type == "lbm"
    assert q.therap_suv_max_ge20_any is pd.NA and q.therap_suv_max_ge10_all_measurable is pd.NA
    assert "thresholds are SUVbw values" in q.notes
    assert q.lesions_above_liver == 3  # a ratio-free comparison within one SUV type stays valid


def test_no_lesions_zero_burden_and_no_lesion_source_unknown():
    shape = (8, 8, 8)
    organs = np.zeros(shape, np.uint8)
    organs[2:6, 2:6, 2:6] = 1
    pet = np.full(shape, 5.0, np.float32)
    spec = {"whole_body_tumor": BUILTIN_REGIONS["whole_body_tumor"], "liver": BUILTIN_REGIONS["liver"]}
    empty = extract(pet, LabelLayer(organs, {1: "liver"}), spec, lesions=np.zeros(shape, bool),
                    spacing=(4.0, 4.0, 4.0), backend="cpu", peaks=False)
    t = study_quantities(empty.features, empty.lesions)
    q = t.iloc[0]
    assert q.psma_tv_ml == 0.0 and q.tl_psma == 0.0 and q.lesion_count == 0 and q.lesions_above_liver == 0
    assert t.therap_suv_max_ge20_any.tolist() == [False] and q.therap_suv_max_ge10_all_measurable is pd.NA
    with pytest.warns(UserWarning, match="whole_body_tumor"):  # no lesion layer at all
        none = extract(pet, LabelLayer(organs, {1: "liver"}), spec, spacing=(4.0, 4.0, 4.0), backend="cpu",
                       peaks=False)
    q = study_quantities(none.features, none.lesions).iloc[0]
    assert np.isnan(q.psma_tv_ml) and q.lesion_count is pd.NA and "no lesion rows" in q.notes


def test_a_site_whose_organ_is_not_segmented_is_unknown_not_zero():
    shape = (8, 8, 8)
    organs = np.zeros(shape, np.uint8)
    organs[1:4, 1:4, 1:4] = 1
    pet = np.full(shape, 2.0, np.float32)
    mask = np.zeros(shape, bool)
    mask[5:7, 5:7, 5:7] = True
    spec = {k: BUILTIN_REGIONS[k] for k in ("whole_body_tumor", "tumor_prostate", "liver")}
    with pytest.warns(UserWarning, match="tumor_prostate"):  # no prostate label
        r = extract(pet, LabelLayer(organs, {1: "liver"}), spec, lesions=mask, spacing=(4.0, 4.0, 4.0),
                    backend="cpu", peaks=False)
    q = study_quantities(r.features, r.lesions).iloc[0]
    assert np.isnan(q.psma_tv_prostate_ml) and np.isnan(q.tl_psma_prostate)
    assert "prostate site: region 'tumor_prostate' matched no label" in q.notes
    assert q.psma_tv_ml == pytest.approx(8 * VOXEL_ML)


def test_a_zero_reference_mean_gives_no_ratio_and_a_note_not_a_crash():
    """A scan zeroed in the head (parotid SUVmean 0) crashed a batch's consolidation with ZeroDivisionError."""
    r = _study(A)
    feats = r.features.copy()
    feats.loc[feats.region == "parotid_glands", "suv_mean"] = 0.0
    feats.loc[feats.region == "liver", "suv_mean"] = -0.5  # a negative mean (noise around 0, or a bad slope)
    q = study_quantities(feats, r.lesions).iloc[0]
    assert np.isnan(q.tumour_to_parotid_ratio) and np.isnan(q.tumour_to_liver_ratio)
    assert q.parotid_suv_mean == 0.0 and q.tumour_suv_mean == pytest.approx(1146 / 89)
    assert "parotid: SUVmean is 0, so tumour_to_parotid_ratio is not computed" in q.notes
    assert "liver: SUVmean is -0.5, so tumour_to_liver_ratio is not computed" in q.notes


def test_a_batch_writes_its_failure_records_before_the_derived_tables(tmp_path, monkeypatch):
    """Whatever a derived table (quantities) raises, the failure records of the run are on disk."""
    import petfeat.quantities
    from petfeat import batch

    def broken(*_a, **_k):
        raise RuntimeError("derived table")

    monkeypatch.setattr(petfeat.quantities, "study_quantities", broken)
    (tmp_path / "parts").mkdir()
    failed = {"status": "failed", "key": "k1", "error": {"study_id": "S1", "pet_path": "<S1>/pet",
                                                           "error_class": "SuvError", "message": "no weight"}}
    with pytest.raises(RuntimeError, match="derived table"):
        batch.consolidate(tmp_path, [failed])
    fails = pd.read_parquet(tmp_path / "failures.parquet")
    assert fails.to_dict("records") == [failed["error"]]
