"""The PET series reader: shuffled and mixed folders, every refusal, and agreement with pydicom and SimpleITK."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import DRO

from petfeat.errors import DicomSeriesError, PetfeatWarning
from petfeat.io.dicom import list_series, read_pet_series
from petfeat.suv import compute_suv_factors
from petfeat.synth.dicom_writer import read_back_with_pydicom


def _copy(files, dest: Path, shuffle=True):
    dest.mkdir(parents=True, exist_ok=True)
    files = list(files)
    if shuffle:
        random.Random(3).shuffle(files)
    out = []
    for i, f in enumerate(files):  # names that sort in an order unrelated to the slices
        out.append(Path(shutil.copy(f, dest / f"x{(i * 7919) % 1000:04d}_{i}.dcm")))
    return out


@pytest.fixture
def pet_folder(synth_archive):
    out, truths = synth_archive
    return out / truths[0]["patient"] / "pet", truths[0]


def test_synthetic_series_reads_like_pydicom_and_simpleitk(synth_archive):
    out, truths = synth_archive
    for truth in truths:
        folder = out / truth["patient"] / "pet"
        s = read_pet_series(folder)
        f = compute_suv_factors(s.suv_header)
        ours = s.rescaled(np.float64) * f.suv_bw_per_slice[:, None, None]
        plain, dss = read_back_with_pydicom(folder)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        img = reader.Execute()
        itk = sitk.GetArrayFromImage(img).astype(np.float64)
        np.testing.assert_allclose(s.rescaled(np.float64), plain, rtol=0, atol=1e-9)
        np.testing.assert_allclose(s.rescaled(np.float64), itk, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(img.GetSpacing(), s.geometry.spacing[::-1])
        np.testing.assert_allclose(img.GetOrigin(), s.geometry.origin)
        np.testing.assert_allclose(img.GetDirection(), s.geometry.direction)
        assert s.stored.dtype == np.int16  # stored pixels, no float copy
        # the SUV the files encode (ground truth of the writer) equals ours
        # (Philips-like series are in counts of 2.5 Bq/mL each, so their factor is per count)
        assert f.suv_bw_per_slice[0] == pytest.approx(
            truth["suv_bw_factor"] * (2.5 if truth["vendor"] == "philips" else 1), rel=1e-8)
        assert ours.max() == pytest.approx(max(r["suv_max"] for r in truth["regions"].values()), rel=1e-8)


def test_shuffled_names_are_sorted_along_the_normal(pet_folder, tmp_path):
    folder, _ = pet_folder
    ref = read_pet_series(folder)
    _copy(sorted(folder.glob("*.dcm")), tmp_path / "shuffled")
    got = read_pet_series(tmp_path / "shuffled")
    np.testing.assert_array_equal(got.stored, ref.stored)
    np.testing.assert_array_equal(got.slope, ref.slope)


def test_mixed_folder_picks_the_pet_series_and_ignores_other_files(pet_folder, tmp_path):
    folder, _ = pet_folder
    mixed = tmp_path / "mixed"
    _copy(sorted(folder.glob("*.dcm")), mixed / "a")
    ct = pydicom.dcmread(next(folder.glob("*.dcm")))
    ct.Modality = "CT"
    ct.SeriesInstanceUID = pydicom.uid.generate_uid()
    ct.save_as(mixed / "ct.dcm")
    (mixed / "notes.txt").write_text("not dicom")
    s = read_pet_series(mixed)
    assert s.stored.shape == read_pet_series(folder).stored.shape
    assert {i.modality for i in list_series(mixed)} == {"PT", "CT"}


def test_two_pet_series_of_one_study_choice_is_warned_and_recorded(tmp_path):
    _copy((DRO / "DRO_0_0" / "PT").glob("*.dcm"), tmp_path / "two" / "a")
    _copy((DRO / "DRO_1_0" / "PT").glob("*.dcm"), tmp_path / "two" / "b")
    uids = sorted(pydicom.dcmread(next((DRO / n / "PT").glob("*.dcm"))).SeriesInstanceUID
                  for n in ("DRO_0_0", "DRO_1_0"))
    # same study, both attenuation-corrected, 20 files, one SeriesNumber: the UID decides
    with pytest.warns(PetfeatWarning, match=r"holds 2 PET series of one study.*--series-uid"):
        s = read_pet_series(tmp_path / "two")
    choice = s.notes["series_choice"]
    assert s.series_uid == choice["chosen"] == uids[0]
    assert [a["series_uid"] for a in choice["alternatives"]] == [uids[1]]
    assert "sorts after" in choice["alternatives"][0]["why_not"]
    given = read_pet_series(tmp_path / "two", series_uid=uids[1])  # the override: no warning
    assert given.series_uid == uids[1] and given.notes["series_choice"]["reason"] == "requested with series_uid"


def test_pet_series_of_two_studies_refused_with_a_list_and_the_fix(tmp_path):
    _copy((DRO / "DRO_0_0" / "PT").glob("*.dcm"), tmp_path / "two" / "a")
    other = _copy((DRO / "DRO_1_0" / "PT").glob("*.dcm"), tmp_path / "two" / "b")
    for f in other:
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = "1.2.3.4.5"
        ds.save_as(f)
    uid = pydicom.dcmread(other[0]).SeriesInstanceUID
    with pytest.raises(DicomSeriesError, match=r"two: holds 2 PET series of 2 studies.*study 1\.2\.3\.4\.5: "
                       rf"{uid} \(series 1, AC, 20 files\).*--series-uid"):
        read_pet_series(tmp_path / "two")
    assert read_pet_series(tmp_path / "two", series_uid=uid).series_uid == uid


def test_no_pet_series(tmp_path, pet_folder):
    folder, _ = pet_folder
    ds = pydicom.dcmread(next(folder.glob("*.dcm")))
    ds.Modality = "CT"
    (tmp_path / "ct").mkdir()
    ds.save_as(tmp_path / "ct" / "one.dcm")
    with pytest.raises(DicomSeriesError, match=r"no PET series \(Modality PT\); found modalities CT"):
        read_pet_series(tmp_path / "ct")


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomSeriesError, match="holds no files"):
        read_pet_series(tmp_path / "empty")
    with pytest.raises(DicomSeriesError, match="no such file or folder"):
        read_pet_series(tmp_path / "nope")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("hello")
    with pytest.raises(DicomSeriesError, match="no DICOM files found"):
        read_pet_series(tmp_path / "txt")


def test_truncated_file_is_named(pet_folder, tmp_path):
    folder, _ = pet_folder
    files = _copy(sorted(folder.glob("*.dcm")), tmp_path / "trunc", shuffle=False)
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) - 500])
    with pytest.raises(DicomSeriesError, match=rf"{files[3].name}.*(truncated|not readable)"):
        read_pet_series(tmp_path / "trunc")


def test_missing_slice_gives_non_uniform_spacing(pet_folder, tmp_path):
    folder, _ = pet_folder
    files = _copy(sorted(folder.glob("*.dcm")), tmp_path / "gap", shuffle=False)
    files[5].unlink()
    with pytest.raises(DicomSeriesError, match="slice spacing is not uniform.*missing or duplicated"):
        read_pet_series(tmp_path / "gap")


def test_two_images_at_one_position_refused(pet_folder, tmp_path):
    """Another image at a slice's position (a second frame or gate) is refused; a resent copy is not (see
    test_reader_review)."""
    folder, _ = pet_folder
    files = _copy(sorted(folder.glob("*.dcm")), tmp_path / "dup", shuffle=False)
    ds = pydicom.dcmread(files[4])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.PixelData = (ds.pixel_array + 1).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(tmp_path / "dup" / "extra.dcm")
    with pytest.raises(DicomSeriesError, match="same position.*with different images.*dynamic/gated"):
        read_pet_series(tmp_path / "dup")


@pytest.mark.parametrize("mutate, pattern", [
    (lambda ds: delattr(ds, "ImagePositionPatient"), "ImagePositionPatient is missing"),
    (lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]), "ImageOrientationPatient differs"),
    (lambda ds: setattr(ds, "PixelSpacing", [9.5, 9.5]), "PixelSpacing .* differs"),
    (lambda ds: setattr(ds, "RescaleSlope", "0"), "RescaleSlope is 0.0"),
    (lambda ds: setattr(ds, "BitsAllocated", 12), "BitsAllocated = 12 is not supported"),
    (lambda ds: delattr(ds, "PixelData"), r"PixelData \(7FE0,0010\) is missing"),
])
def test_inconsistent_slice_refused(pet_folder, tmp_path, mutate, pattern):
    folder, _ = pet_folder
    files = _copy(sorted(folder.glob("*.dcm")), tmp_path / "bad", shuffle=False)
    ds = pydicom.dcmread(files[2])
    mutate(ds)
    ds.save_as(files[2])
    with pytest.raises(DicomSeriesError, match=pattern):
        read_pet_series(tmp_path / "bad")
