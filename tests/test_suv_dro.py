"""All 17 SUV digital reference objects: SUVbw min/median/max inside the mask must be 0.20/1.00/4.00."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DRO

from petfeat.io.dicom import read_pet_series
from petfeat.suv import compute_suv_factors

CASES = sorted(p.name for p in DRO.glob("DRO_*") if p.is_dir()) if DRO.exists() else []
#: Tolerances: the reference README allows +-0.02 for CM2ML (DRO_2_3, values quantised by the slope);
#: GML variants store SUV_lbm/SUV_ibw truncated to a 0.001/0.002 slope, so the converted values sit
#: within 0.2% (DRO_2_1) and 0.16% (DRO_2_2) of the targets.
TOL = {"DRO_2_3": 0.021, "DRO_2_1": 0.0025, "DRO_2_2": 0.0025}


def test_all_seventeen_cases_present():
    assert len(CASES) == 17, f"expected 17 DRO cases under {DRO}, found {CASES}"


@pytest.mark.parametrize("case", CASES)
def test_dro(case):
    series = read_pet_series(DRO / case / "PT")
    f = compute_suv_factors(series.suv_header)
    suv = series.rescaled(np.float64) * f.suv_bw_per_slice[:, None, None]
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(DRO / case / "mask" / "DRO_mask.nii.gz"))) > 0
    assert mask.shape == suv.shape
    v = suv[mask]
    tol = TOL.get(case, 0.001)
    assert v.min() == pytest.approx(0.20, abs=tol)
    assert np.median(v) == pytest.approx(1.00, abs=tol * 5 if case == "DRO_2_3" else tol)
    assert v.max() == pytest.approx(4.00, abs=tol * 2 if case == "DRO_2_3" else 2 * tol)


def test_dro_feature_volumes():
    """DRO_0_0: voxel 0.064 mL, hot sphere of 515 voxels at SUV 4.0, mask SUVmean 1.00558."""
    from petfeat.extract import extract_features

    series = read_pet_series(DRO / "DRO_0_0" / "PT")
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(DRO / "DRO_0_0" / "mask" / "DRO_mask.nii.gz"))).astype(np.uint8)
    df = extract_features(series, mask, {"roi": ["label_1"]}, backend="cpu", peaks=False)
    row = df.iloc[0]
    assert series.geometry.voxel_volume_ml == pytest.approx(0.064)
    assert row.suv_mean == pytest.approx(1.00558, abs=5e-6)
    assert row.volume_ml == pytest.approx(13004.9, abs=0.1)
    f = compute_suv_factors(series.suv_header)
    suv = series.rescaled(np.float64) * f.suv_bw_factor
    assert int((np.abs(suv[mask > 0] - 4.0) < 1e-3).sum()) == 515
