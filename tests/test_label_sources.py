"""A study's label sources: each in its own name space (never a file name), each checked to belong to the PET."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from petfeat.errors import LabelError, PetfeatWarning
from petfeat.io.dicom import read_pet_series
from petfeat.io.label_sources import read_label_sources


@pytest.fixture(scope="module")
def sts(reference_dir):
    d = reference_dir / "mirp-sts" / "STS_001" / "dicom"
    return read_pet_series(d / "image"), d / "mask" / "RS.dcm"


def test_the_real_rtstruct_of_the_study_is_read_under_rtstruct_not_its_file_name(sts, tmp_path):
    series, rs = sts
    named = tmp_path / "RS_Mueller_Hans.dcm"  # exports are often named after the patient
    shutil.copy(rs, named)
    layers = read_label_sources([(None, named)], series)
    assert {la.namespace for la in layers} == {"rtstruct"}
    assert any("GTV_Mass_PET" in la.names.values() for la in layers)


def test_an_rtstruct_of_another_frame_of_reference_is_refused(sts):
    series, rs = sts
    assert series.frame_uid  # read from the PET header
    other = type(series)(**{**series.__dict__, "frame_uid": "1.2.826.0.1.3680043.8.498.4242"})
    with pytest.raises(LabelError, match="FrameOfReferenceUID") as err:
        read_label_sources([(None, rs)], other)
    assert str(rs) in str(err.value)


def test_an_rtstruct_of_another_patient_is_refused(sts):
    series, rs = sts
    other = type(series)(**{**series.__dict__, "patient_id": "SOMEONE_ELSE"})
    with pytest.raises(LabelError, match="another patient"):
        read_label_sources([(None, rs)], other)


def _multilabel(path, series, ids):
    arr = np.zeros(series.geometry.shape, np.uint8)
    for i, (z, y, x) in enumerate(ids, start=1):
        arr[z, y, x] = i
    img = sitk.GetImageFromArray(arr)
    f = series.geometry.sitk_fields()
    img.SetSpacing(f["spacing"])
    img.SetOrigin(f["origin"])
    img.SetDirection(f["direction"])
    sitk.WriteImage(img, str(path), useCompression=True)
    return path


def test_two_unnamed_label_files_keep_separate_name_spaces(sts, tmp_path):
    series, _ = sts
    a = _multilabel(tmp_path / "DOE_JOHN_organs.nii.gz", series, [(5, 10, 10)])
    b = _multilabel(tmp_path / "DOE_JOHN_more.nii.gz", series, [(6, 11, 11), (7, 12, 12)])
    with pytest.warns(PetfeatWarning, match="'labels_2'"):
        layers = read_label_sources([(None, a), (None, b)], series)
    assert [la.namespace for la in layers] == ["labels", "labels_2"]
    assert all("DOE" not in la.namespace for la in layers)


def test_a_name_space_given_twice_or_reserved_is_an_error(sts, tmp_path):
    series, _ = sts
    a = _multilabel(tmp_path / "a.nii.gz", series, [(5, 10, 10)])
    b = _multilabel(tmp_path / "b.nii.gz", series, [(6, 11, 11)])
    with pytest.raises(LabelError, match="already used"):
        read_label_sources([("organs", a), ("organs", b)], series)
    with pytest.raises(LabelError, match="petfeat's own"):
        read_label_sources([("lesions", a)], series)
    layers = read_label_sources([("organs", a), ("other", b)], series)
    assert [la.namespace for la in layers] == ["organs", "other"]
