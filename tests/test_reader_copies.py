"""A series folder that holds two copies of each slice (a backup beside the series) is read once, with a note."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import DRO

from petfeat.errors import PetfeatWarning
from petfeat.io.dicom import read_pet_series


def test_copies_of_slices_are_read_once_with_a_warning(tmp_path):
    shutil.copytree(DRO / "DRO_0_0" / "PT", tmp_path / "study" / "pet")
    shutil.copytree(DRO / "DRO_0_0" / "PT", tmp_path / "study" / "pet_backup")
    one = read_pet_series(DRO / "DRO_0_0" / "PT")
    with pytest.warns(PetfeatWarning, match="copies of other slices"):
        both = read_pet_series(tmp_path / "study")
    assert both.stored.shape == one.stored.shape and np.array_equal(both.stored, one.stored)
    assert both.notes["duplicate_files"] == len(one.files)
    assert all(f.parent.name == "pet" for f in both.files)


def test_a_series_without_attenuation_correction_is_read_with_a_warning_and_a_note(tmp_path):
    import pydicom

    shutil.copytree(DRO / "DRO_0_0" / "PT", tmp_path / "nac")
    for f in (tmp_path / "nac").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.CorrectedImage = ["DECY", "NORM"]
        ds.save_as(f)
    with pytest.warns(PetfeatWarning, match="not attenuation-corrected"):
        s = read_pet_series(tmp_path / "nac")
    assert s.notes["attenuation_corrected"] is False


def test_a_damaged_transfer_syntax_says_the_header_is_damaged(tmp_path):
    import pydicom

    from petfeat.errors import DicomSeriesError

    shutil.copytree(DRO / "DRO_0_0" / "PT", tmp_path / "pt")
    f = sorted((tmp_path / "pt").glob("*.dcm"))[3]
    ts = str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID).encode()
    data = f.read_bytes()
    f.write_bytes(data.replace(ts, ts.replace(b"10008", b"10009"), 1))  # one flipped digit in the meta header
    with pytest.raises(DicomSeriesError, match="is not a DICOM transfer syntax; the file's header is damaged"):
        read_pet_series(tmp_path / "pt")


def test_scan_attaches_only_the_rtstruct_of_the_chosen_series(tmp_path):
    """17 PET series of one study, each with its RTSTRUCT: the study's row gets the chosen series' RTSTRUCT only."""
    import pydicom

    from petfeat.io.archive import scan_archive

    shutil.copytree(DRO, tmp_path / "archive" / "DRO")
    rows = scan_archive(tmp_path / "archive", bytes(32))
    assert len(rows) == 1 and len(rows[0].labels) == 1
    rs = pydicom.dcmread(rows[0].labels[0])
    refs = {s.SeriesInstanceUID for fr in rs.ReferencedFrameOfReferenceSequence for st in fr.RTReferencedStudySequence
            for s in st.RTReferencedSeriesSequence}
    assert rows[0].series_uid in refs
