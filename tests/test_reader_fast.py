"""The per-slice fast header path gives exactly what pydicom's parse gives, and hands off what it cannot read."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import DRO
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

import petfeat.io.dicom as dicom
from petfeat.errors import DicomSeriesError
from petfeat.io.dicom import _WANTED, read_pet_series
from petfeat.io.dicom_fast import read_slice_header
from petfeat.synth.dicom_writer import VENDORS, Acquisition, write_pet_series


def _pydicom_only(monkeypatch, source):
    monkeypatch.setattr(dicom, "read_slice_header", lambda path, wanted: None)
    try:
        return read_pet_series(source)
    finally:
        monkeypatch.undo()


def _assert_same(a, b):
    assert a.stored.dtype == b.stored.dtype
    np.testing.assert_array_equal(a.stored, b.stored)
    np.testing.assert_array_equal(a.slope, b.slope)
    np.testing.assert_array_equal(a.intercept, b.intercept)
    assert a.geometry == b.geometry and a.files == b.files
    assert (a.series_uid, a.study_uid, a.study_date, a.patient_id, a.series_number) == (
        b.series_uid, b.study_uid, b.study_date, b.patient_id, b.series_number)
    for name, va in vars(a.suv_header).items():
        vb = getattr(b.suv_header, name)
        if isinstance(va, np.ndarray):
            np.testing.assert_array_equal(va, vb)
        else:
            assert va == vb, name


def _series(folder: Path, vendor="siemens", n=6, seed=0) -> list[Path]:
    rng = np.random.default_rng(seed)
    t = dt.datetime(2025, 5, 1, 10, 0)
    acq = Acquisition("FAST", "FAST^PATH", 81.5, 1.77, "M", 210e6, t - dt.timedelta(minutes=62), t)
    write_pet_series(folder, rng.gamma(2.0, 1.5, (n, 9, 11)), (3.0, 4.0, 4.0), (-20.0, -18.0, 5.0), acq,
                     vendor=vendor)
    return sorted(folder.glob("*.dcm"))


@pytest.mark.parametrize("name", sorted(p.name for p in DRO.iterdir() if p.is_dir()) if DRO.is_dir() else [])
def test_suv_dros_read_the_same_on_both_paths(monkeypatch, name):
    files = [f for f in (DRO / name).rglob("*") if f.is_file()]
    assert sum(read_slice_header(f, _WANTED) is not None for f in files) >= len(files) - 2  # fast path taken
    _assert_same(read_pet_series(DRO / name), _pydicom_only(monkeypatch, DRO / name))


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("implicit", [False, True])
def test_synthetic_vendors_read_the_same_explicit_and_implicit(monkeypatch, tmp_path, vendor, implicit):
    files = _series(tmp_path / "s", vendor)
    if implicit:
        for f in files:
            ds = pydicom.dcmread(f)
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            ds.save_as(f, implicit_vr=True, little_endian=True)
    assert all(read_slice_header(f, _WANTED) is not None for f in files)
    _assert_same(read_pet_series(tmp_path / "s"), _pydicom_only(monkeypatch, tmp_path / "s"))


def test_undefined_length_sequences_are_skipped(monkeypatch, tmp_path):
    # Nested undefined-length sequences and items (and a UN of undefined length, whose content is
    # implicit VR) ahead of the per-slice elements: the scan must step over them exactly.
    files = _series(tmp_path / "s")
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        inner = Dataset()
        inner.CodeValue, inner.CodeMeaning = "X", "inner item"
        item = Dataset()
        item.ReferencedSOPInstanceUID = "1.2.3"
        item.ConceptNameCodeSequence = Sequence([inner])
        item["ConceptNameCodeSequence"].is_undefined_length = True
        inner.is_undefined_length_sequence_item = True
        item.is_undefined_length_sequence_item = True
        ds.ReferencedImageSequence = Sequence([item, Dataset()])
        ds["ReferencedImageSequence"].is_undefined_length = True
        rp = ds.RadiopharmaceuticalInformationSequence
        ds["RadiopharmaceuticalInformationSequence"].is_undefined_length = True
        rp[0].is_undefined_length_sequence_item = True
        ds.save_as(f)
        if i == 2:  # a private UN element of undefined length holding an implicit-VR item
            raw = f.read_bytes()
            body = (b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\x10\x00\x20\x00\x02\x00\x00\x00AB"
                    + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
            un = b"\x19\x00\x10\x10UN\x00\x00\xff\xff\xff\xff" + body
            # put it before (0020,xxxx): after every (0018,...) element; find the first (0020,000D)
            at = raw.index(b"\x20\x00\x0d\x00UI")
            f.write_bytes(raw[:at] + un + raw[at:])
            assert 0x00191010 in pydicom.dcmread(f)  # pydicom reads the UN back as the sequence it holds
    assert all(read_slice_header(f, _WANTED) is not None for f in files)
    fast = read_pet_series(tmp_path / "s")
    _assert_same(fast, _pydicom_only(monkeypatch, tmp_path / "s"))
    assert fast.suv_header.total_dose_bq == 210e6  # the sequence itself still comes from pydicom's parse


def test_what_the_scan_cannot_read_goes_to_pydicom(monkeypatch, tmp_path):
    files = _series(tmp_path / "s")
    # another transfer syntax (the file claims big endian)
    raw = files[0].read_bytes()
    files[0].write_bytes(raw.replace(b"1.2.840.10008.1.2.1\x00", ExplicitVRBigEndian.encode() + b"\x00", 1))
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    assert read_slice_header(files[0], _WANTED) is None
    # a corrupt VR in the middle of the data set: malformed for the scan
    raw = bytearray(files[1].read_bytes())
    at = raw.index(b"\x28\x00\x10\x00US")  # Rows
    raw[at + 4:at + 6] = b"\x01\x02"
    files[1].write_bytes(bytes(raw))
    assert read_slice_header(files[1], _WANTED) is None
    # no preamble
    assert read_slice_header(Path(__file__), _WANTED) is None
    # both paths then agree on the error for the corrupt file, or on the volume
    try:
        fast = read_pet_series(tmp_path / "s")
    except DicomSeriesError as exc:
        with pytest.raises(DicomSeriesError) as slow:
            _pydicom_only(monkeypatch, tmp_path / "s")
        assert str(exc) == str(slow.value)
    else:
        _assert_same(fast, _pydicom_only(monkeypatch, tmp_path / "s"))


def test_non_ascii_transfer_syntax_goes_to_pydicom_and_errors_name_the_file(tmp_path):
    import warnings

    files = _series(tmp_path / "s", n=3)
    raw = bytearray(files[1].read_bytes())
    at = raw.index(b"1.2.840.10008.1.2.1\x00", 132)
    raw[at + 4] = 0xB0  # one flipped byte in the transfer syntax UID of the file meta
    files[1].write_bytes(bytes(raw))
    assert read_slice_header(files[1], _WANTED) is None  # was a UnicodeDecodeError
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the unknown transfer syntax
        try:
            ds = dicom._read_header(files[1])
        except DicomSeriesError as exc:
            assert files[1].name in str(exc)
        else:
            assert ds is None or isinstance(ds, pydicom.Dataset)
        try:
            read_pet_series(tmp_path / "s")
        except DicomSeriesError as exc:
            assert files[1].name in str(exc)
