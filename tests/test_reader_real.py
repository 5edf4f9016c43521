"""The reader on real PET files: a JPEG Lossless GE slice, MIRP's already-SUV crops, and compressed syntaxes."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import REFERENCE
from pydicom.pixels import pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

import petfeat.io.dicom as dicom
from petfeat.cli import main
from petfeat.errors import PetfeatWarning
from petfeat.io.dicom import _WANTED, read_pet_header, read_pet_series
from petfeat.io.dicom_fast import read_slice_header
from petfeat.suv import compute_suv_factors
from petfeat.synth.dicom_writer import Acquisition, write_pet_series

GH184 = REFERENCE / "compressed-pet" / "GH184.dcm"
STS = ["STS_001", "STS_002", "STS_003"]
#: GH184.dcm is one slice of a 267-slice series (its NumberOfSlices): read with a warning.
ONE_OF_267 = r"NumberOfSlices \(0054,0081\) is 267, but 1 slice\(s\) were read: 266 slice\(s\) missing"


def test_jpeg_lossless_ge_slice_decodes_like_two_independent_decoders():
    assert read_slice_header(GH184, _WANTED) is None  # JPEG Lossless: the fast scan hands it to pydicom
    with pytest.warns(PetfeatWarning, match=ONE_OF_267):
        s = read_pet_series(GH184)
    assert s.stored.shape == (1, 128, 128) and s.stored.dtype == np.int16
    assert s.notes == {"number_of_slices": {"header": 267, "read": 1}}
    by_libjpeg = pixel_array(GH184, decoding_plugin="pylibjpeg")
    by_gdcm = pixel_array(GH184, decoding_plugin="gdcm")
    np.testing.assert_array_equal(by_libjpeg, by_gdcm)
    np.testing.assert_array_equal(s.stored[0], by_libjpeg)
    assert int(s.stored.max()) == 32767 and s.slope[0] == pytest.approx(0.234542)


def test_jpeg_lossless_ge_slice_suv_factor_from_its_header():
    ds = pydicom.dcmread(GH184, stop_before_pixels=True)
    rp = ds.RadiopharmaceuticalInformationSequence[0]
    # the README: the header dose agrees with GE's private tracer activity; it is the dose at administration
    assert float(rp.RadionuclideTotalDose) == 474_592_928
    with pytest.warns(PetfeatWarning, match=ONE_OF_267):
        f = compute_suv_factors(read_pet_series(GH184).suv_header)
    scan = dt.datetime.strptime(ds.SeriesDate + ds.SeriesTime[:6], "%Y%m%d%H%M%S")
    injection = dt.datetime.strptime(ds.SeriesDate + rp.RadiopharmaceuticalStartTime[:6], "%Y%m%d%H%M%S")
    decayed = 474_592_928 * 2 ** (-(scan - injection).total_seconds() / float(rp.RadionuclideHalfLife))
    assert math.isfinite(f.suv_bw_factor) and f.suv_bw_factor > 0
    assert f.suv_bw_factor == pytest.approx(float(ds.PatientWeight) * 1000 / decayed, rel=1e-9)
    assert (f.units, f.decay_correction, f.weight_kg) == ("BQML", "START", 90.0)


def test_petfeat_suv_reads_headers_only(monkeypatch, capsys):
    def no_pixels(*a, **k):
        raise AssertionError("pixel data was read")

    monkeypatch.setattr(dicom, "_read_pixels", no_pixels)
    monkeypatch.setattr(dicom, "_pixels", no_pixels)
    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(no_pixels))
    with pytest.warns(PetfeatWarning, match=ONE_OF_267):
        assert main(["suv", str(GH184), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["units"] == "BQML" and d["injected_dose_bq"] == 474_592_928 and d["suv_bw_factor"] > 0
    with pytest.warns(PetfeatWarning, match=ONE_OF_267):
        header = read_pet_header(GH184)
    assert header.geometry.shape == (1, 128, 128) and header.files == [GH184]


@pytest.mark.parametrize("study", STS)
def test_mirp_crops_are_already_suv(study):
    folder = REFERENCE / "mirp-sts" / study / "dicom" / "image"
    s = read_pet_series(folder)
    assert s.suv_header.units == "GML"
    f = compute_suv_factors(s.suv_header)
    np.testing.assert_array_equal(f.suv_bw_per_slice, 1.0)  # Units GML: the rescaled pixels are SUVbw
    assert s.notes == {}
    # MIRP's own NIfTI export of the same image: same voxels, same grid
    img = sitk.ReadImage(str(REFERENCE / "mirp-sts" / study / "nifti" / "image" / "image.nii.gz"))
    np.testing.assert_allclose(s.rescaled(np.float64), sitk.GetArrayFromImage(img), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(s.geometry.origin, img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(s.geometry.spacing[::-1], img.GetSpacing(), atol=1e-6)
    assert 5 < float((s.rescaled(np.float64) * f.suv_bw_per_slice[:, None, None]).max()) < 30  # FDG sarcoma SUVmax


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless, DeflatedExplicitVRLittleEndian])
def test_compressed_series_equal_the_uncompressed_one(tmp_path, syntax):
    t = dt.datetime(2025, 5, 1, 10, 0)
    acq = Acquisition("CMP", "CMP^PET", 70.0, 1.70, "F", 200e6, t - dt.timedelta(minutes=60), t)
    vol = np.random.default_rng(5).gamma(2.0, 1.5, (3, 32, 32))
    plain = write_pet_series(tmp_path / "plain", vol, (3.0, 4.0, 4.0), (0.0, 0.0, 0.0), acq)
    packed = write_pet_series(tmp_path / "packed", vol, (3.0, 4.0, 4.0), (0.0, 0.0, 0.0), acq,
                              study_uid=plain["study_uid"], transfer_syntax=syntax)
    files = sorted((tmp_path / "packed").glob("*.dcm"))
    assert pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    assert all(read_slice_header(f, _WANTED) is None for f in files)  # handed to pydicom
    a, b = read_pet_series(tmp_path / "plain"), read_pet_series(tmp_path / "packed")
    assert b.series_uid == packed["series_uid"]
    np.testing.assert_array_equal(a.stored, b.stored)
    np.testing.assert_array_equal(a.slope, b.slope)
    assert a.geometry == b.geometry
