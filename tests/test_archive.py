"""Archive scanning: studies and series, label sources by content, DICOM references, duplicates, bad files,
manifests from spreadsheets, the linkage file and the keyed ids."""

from __future__ import annotations

import csv
import gzip
import hashlib
import hmac
import os
import shutil
import stat
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from petfeat.io.archive import MANIFEST_COLUMNS, ManifestError, read_manifest, scan_archive, write_manifest

KEY = bytes(range(32))


def _hid(prefix: str, message: str) -> str:
    return prefix + hmac.new(KEY, message.encode(), hashlib.sha256).hexdigest()[:12]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One coarse synthetic study (PET, seg/ folder, lesions.nii.gz) and its PET header."""
    from petfeat.synth import generate_archive

    out = tmp_path_factory.mktemp("base")
    generate_archive(out, 1, seed=3, voxel_mm=20.0)
    study = out / "SYN0001"
    ds = pydicom.dcmread(next((study / "pet").glob("*.dcm")), stop_before_pixels=True)
    return study, ds


def _copy_series(src: Path, dst: Path, **changes) -> None:
    """Copy a PET series folder, setting ``changes`` (DICOM keywords) in every file."""
    dst.mkdir(parents=True)
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        for k, v in changes.items():
            setattr(ds, k, v)
        ds.save_as(dst / f.name)


def _write_dicom(path: Path, sop_class: str, **fields) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for k, v in fields.items():
        setattr(ds, k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _rtstruct(path: Path, study_uid: str, frame_uid: str, series_uid: str) -> None:
    """A minimal RTSTRUCT whose contours were drawn on ``series_uid`` in ``frame_uid``."""
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = series_uid
    ref_study = Dataset()
    ref_study.RTReferencedSeriesSequence = [ref_series]
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    frame.RTReferencedStudySequence = [ref_study]
    _write_dicom(path, "1.2.840.10008.5.1.4.1.1.481.3", Modality="RTSTRUCT", StudyInstanceUID=study_uid,
                 SeriesInstanceUID=generate_uid(), ReferencedFrameOfReferenceSequence=[frame])


def _archive(tmp_path: Path, base, name="P1", labels=True) -> Path:
    study, _ = base
    root = tmp_path / "arch"
    shutil.copytree(study, root / name, ignore=None if labels else shutil.ignore_patterns("seg", "*.nii.gz"))
    return root


def test_ac_nac_and_mip_of_one_study_give_one_row_with_the_ac_series(base, tmp_path):
    study, ds = base
    root = _archive(tmp_path, base)
    nac, mip = generate_uid(), generate_uid()
    _copy_series(study / "pet", root / "P1" / "pet_nac", SeriesInstanceUID=nac,
                 CorrectedImage=["NORM", "DTIM", "DECY"])
    (root / "P1" / "mip").mkdir()
    for i, f in enumerate(sorted((study / "pet").glob("*.dcm"))[:4]):  # a rotating MIP: 4 images, one position
        d = pydicom.dcmread(f)
        d.SeriesInstanceUID, d.ImagePositionPatient = mip, ds.ImagePositionPatient
        d.save_as(root / "P1" / "mip" / f"{i}.dcm")
    (row,) = scan_archive(root, KEY)
    assert row.match_status == "ok" and row.series_uid == ds.SeriesInstanceUID
    assert row.series_choice.startswith("attenuation-corrected volume of") and row.alternatives == sorted([nac, mip])
    assert "not attenuation-corrected" in row.series_choice and "projection (MIP)" in row.series_choice
    assert row.pet_path == str(root / "P1" / "pet") and row.study_path == str(root / "P1")
    assert row.n_files == len(list((study / "pet").glob("*.dcm")))
    # the MIP alone against the NAC series: the projection loses although it is attenuation-corrected
    shutil.rmtree(root / "P1" / "pet")
    (row,) = scan_archive(root, KEY)
    assert row.series_uid == nac and row.series_choice.startswith("not attenuation-corrected volume")


def test_two_time_points_in_one_folder_are_two_studies(base, tmp_path):
    study, ds = base
    root = _archive(tmp_path, base)
    follow_study, follow_series = generate_uid(), generate_uid()
    # the same patient on the same day: the ids still differ (they hash the UIDs, not PatientID + date)
    _copy_series(study / "pet", root / "P1" / "followup" / "pet", StudyInstanceUID=follow_study,
                 SeriesInstanceUID=follow_series)
    rows = scan_archive(root, KEY)
    assert len(rows) == 2 and len({r.study_id for r in rows}) == 2
    assert {r.series_uid for r in rows} == {ds.SeriesInstanceUID, follow_series}
    assert {r.study_id for r in rows} == {_hid("S", f"study|{ds.StudyInstanceUID}|{ds.SeriesInstanceUID}"),
                                          _hid("S", f"study|{follow_study}|{follow_series}")}
    assert rows[0].patient_id == rows[1].patient_id == _hid("P", f"patient|{ds.PatientID}")
    # the NIfTI labels of the folder cannot be attributed to one of the two studies
    for r in rows:
        assert r.match_status.startswith("unattributed_labels") and r.labels == [] and r.lesions == ""
    by_series = {r.series_uid: r for r in rows}
    assert by_series[follow_series].pet_path == str(root / "P1" / "followup" / "pet")
    write_manifest(rows, tmp_path / "m.csv")
    assert read_manifest(tmp_path / "m.csv") == rows


def test_anonymised_studies_do_not_merge_into_one_patient(base, tmp_path):
    study, _ = base
    root = tmp_path / "arch"
    uids = [(generate_uid(), generate_uid()) for _ in range(2)]
    for i, (st, se) in enumerate(uids):
        _copy_series(study / "pet", root / f"A{i}" / "pet", StudyInstanceUID=st, SeriesInstanceUID=se, PatientID="  ")
    rows = scan_archive(root, KEY)
    assert [r.patient_id for r in rows] == [_hid("P", f"patient-of-study|{st}") for st, _ in uids]


def test_a_copied_study_folder_is_a_duplicate_row(base, tmp_path):
    root = _archive(tmp_path, base)
    (alone,) = scan_archive(root, KEY)
    shutil.copytree(root / "P1", root / "P1 copy")
    first, dup = scan_archive(root, KEY)
    assert first == alone
    assert dup.study_id == _hid("D", "duplicate|P1 copy") and "copy" not in dup.study_id
    assert dup.match_status == (f"duplicate of {first.study_id}: the same series is also in another folder; "
                                "remove one copy")
    write_manifest([first, dup], tmp_path / "m.csv")
    assert [r.study_id for r in read_manifest(tmp_path / "m.csv")] == [first.study_id, dup.study_id]


def test_rtstruct_on_the_ct_is_matched_by_frame_of_reference_or_study(base, tmp_path):
    _, ds = base
    root = _archive(tmp_path, base, labels=False)
    study = root / "P1"
    ct_uid, other_ct = generate_uid(), generate_uid()
    # a CT series of the same study on its own frame of reference
    _write_dicom(study / "ct" / "1.dcm", "1.2.840.10008.5.1.4.1.1.2", Modality="CT",
                 StudyInstanceUID=ds.StudyInstanceUID, SeriesInstanceUID=ct_uid, FrameOfReferenceUID=generate_uid())
    by_frame, by_study, unrelated = study / "rs" / "frame.dcm", study / "rs" / "study.dcm", study / "rs" / "other.dcm"
    _rtstruct(by_frame, ds.StudyInstanceUID, ds.FrameOfReferenceUID, generate_uid())  # CT not in the archive
    _rtstruct(by_study, generate_uid(), generate_uid(), ct_uid)
    _rtstruct(unrelated, generate_uid(), generate_uid(), other_ct)
    (row,) = scan_archive(root, KEY)
    assert row.match_status == "ok" and sorted(row.labels) == sorted([str(by_frame), str(by_study)])


def _with_label_table(path: Path, table: dict[int, str]) -> None:
    """A small NIfTI with a TotalSegmentator-style XML label table in a header extension."""
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.uint8)), str(path.with_suffix(".tmp.nii")))
    raw = path.with_suffix(".tmp.nii").read_bytes()
    path.with_suffix(".tmp.nii").unlink()
    xml = ("<CaretExtension><LabelTable>" + "".join(f'<Label Key="{k}">{v}</Label>' for k, v in table.items())
           + "</LabelTable></CaretExtension>").encode()
    size = -(-(8 + len(xml)) // 16) * 16
    header = bytearray(raw[:348])
    struct.pack_into("<f", header, 108, float(352 + size))
    ext = struct.pack("<ii", size, 0) + xml + b"\x00" * (size - 8 - len(xml))
    path.write_bytes(gzip.compress(bytes(header) + b"\x01\x00\x00\x00" + ext + raw[352:]))


def test_totalsegmentator_outputs_are_recognised_by_their_class_names(base, tmp_path):
    study, _ = base
    root = _archive(tmp_path, base, labels=False)
    s = root / "P1"
    liver = study / "seg" / "liver.nii.gz"
    total = s / "derived" / "ct_out"
    vessels = s / "derived" / "lung"
    for d, names in ((total, ["liver", "spleen", "kidney_left", "urinary_bladder"]),
                     (vessels, ["lung_airways", "lung_airways_wall", "lung_arteries", "lung_veins"])):
        d.mkdir(parents=True)
        for n in names:
            shutil.copy(liver, d / f"{n}.nii.gz")
    (s / "misc").mkdir()
    shutil.copy(liver, s / "misc" / "not_a_class.nii.gz")  # a lone image that no task explains: not a label source
    _with_label_table(s / "misc" / "total.nii.gz", {1: "liver", 2: "spleen"})  # --ml output, found by its table
    shutil.copy(study / "lesions.nii.gz", s / "misc" / "lesions.nii.gz")
    (row,) = scan_archive(root, KEY)
    assert row.labels == [str(s / "misc" / "total.nii.gz"), str(total), str(vessels)]  # shallow folders first
    assert row.lesions == str(s / "misc" / "lesions.nii.gz") and row.match_status == "ok"


def _flip(src: Path, dst: Path, offset: int, mask: int) -> None:
    b = bytearray(src.read_bytes())
    b[offset] ^= mask
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(bytes(b))


def test_corrupt_headers_are_skipped_and_counted(base, tmp_path, capsys):
    from petfeat.cli import main

    study, _ = base
    root = _archive(tmp_path, base)
    f = sorted((study / "pet").glob("*.dcm"))[2]
    data = f.read_bytes()
    # the meta group length (BytesLengthException in pydicom), the transfer syntax's VR (NotImplementedError)
    _flip(f, root / "P1" / "other" / "a.dcm", data.index(b"DICM") + 10, 0xFF)
    _flip(f, root / "P1" / "other" / "b.dcm", data.index(b"1.2.840.10008.1.2.1\x00") - 3, 0x80)
    assert main(["scan", str(root), "-o", str(tmp_path / "m.csv"), "--key-file", str(tmp_path / "k")]) == 0
    (row,) = read_manifest(tmp_path / "m.csv")
    assert row.n_unreadable == 2 and row.match_status == "ok"
    err = capsys.readouterr().err
    assert "2 file(s) could not be read" in err and "scanned 1/1 folders" in err
    assert "P1" not in err and "a.dcm" not in err and str(pydicom.dcmread(f).PatientID) not in err


def test_links_loops_and_fifos_neither_hang_nor_stop_the_scan(base, tmp_path):
    root = _archive(tmp_path, base)
    s = root / "P1"
    os.symlink("b.dcm", s / "a.dcm")
    os.symlink("a.dcm", s / "b.dcm")
    os.symlink("nowhere.dcm", s / "broken.dcm")
    os.symlink("..", s / "up")  # a loop back into the archive
    os.symlink(root, root / "alias")  # the archive inside itself
    os.mkfifo(s / "pipe.dcm")  # opening it would block forever
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "linked")  # a study folder linked from outside: scanned
    row, linked = scan_archive(root, KEY)
    assert row.match_status == "ok" and row.n_unreadable == 3  # the two looping links and the broken one
    assert stat.S_ISFIFO(os.lstat(s / "pipe.dcm").st_mode)
    assert linked.study_id == _hid("F", "folder|linked") and linked.match_status == "no_pet_series"


def test_manifests_from_spreadsheets_load(base, tmp_path):
    root = _archive(tmp_path, base)
    (row,) = scan_archive(root, KEY)
    rel = tmp_path / "rel"
    rel.mkdir()
    # relative paths (against the manifest's folder), n_files as a float, an empty line, a BOM, Latin-1
    lines = [",".join(MANIFEST_COLUMNS),
             f"{row.study_id},{row.patient_id},{row.study_date},../arch/P1,../arch/P1/pet,{row.series_uid},"
             f"Pr\u00e9f\u00e9r\u00e9,,../arch/P1/seg,../arch/P1/lesions.nii.gz,ok,{row.n_files}.0,0", "", ""]
    text = "\r\n".join(lines)
    for name, data in (("bom.csv", b"\xef\xbb\xbf" + text.encode()), ("latin1.csv", text.encode("latin-1"))):
        (rel / name).write_bytes(data)
        (got,) = read_manifest(rel / name)
        assert got.series_choice == "Pr\u00e9f\u00e9r\u00e9" and got.n_files == row.n_files
        assert (got.pet_path, got.labels, got.lesions, got.study_path) == (row.pet_path, row.labels, row.lesions,
                                                                             row.study_path)


@pytest.mark.parametrize("line, message", [
    ("S1,,,,{pet}/a\x00b,,,,,,ok,1,0", r"line 3 \(study S1\): .*a\x00b does not exist"),
    ("S1,,,,{pet},,,,,,ok,many,0", r"line 3: n_files is 'many', not a number"),
    ("S1,,,,{pet},,,,,,ok,2.5,0", r"line 3: n_files is '2.5'; write a whole number"),
    ("S1,,,,{pet},,,,,,ok,1,0,extra", r"line 3: 14 fields where the header has 13"),
    ("S0,,,,{pet},,,,,,ok,1,0", r"line 3: study_id S0 appears twice \(also on line 2\)"),
])
def test_manifest_errors_name_the_line_and_the_field(tmp_path, line, message):
    first = f"S0,,,,{tmp_path},,,,,,ok,1,0"
    header = ",".join(MANIFEST_COLUMNS[:13])  # up to n_unreadable; the later columns are optional
    (tmp_path / "m.csv").write_text("\n".join([header, first, line.format(pet=tmp_path)]) + "\n")
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path / "m.csv")


def test_old_manifests_without_the_new_columns_load(tmp_path):
    (tmp_path / "m.csv").write_text(f"study_id,study_date,pet_path,series_uid,labels,lesions,match_status,n_files\n"
                                    f"S1,20240101,{tmp_path},1.2.3,,,ok,5\n")
    (row,) = read_manifest(tmp_path / "m.csv")
    assert (row.study_path, row.patient_id, row.alternatives, row.n_unreadable) == (str(tmp_path), "", [], 0)


def test_linkage_file_is_private_and_keeps_commas_in_one_field(base, tmp_path):
    from petfeat.cli import main

    study, ds = base
    root = tmp_path / "arch"
    _copy_series(study / "pet", root / "P1" / "pet", PatientID="DOE,JOHN 0815")
    link = tmp_path / "link.csv"
    assert main(["scan", str(root), "-o", str(tmp_path / "m.csv"), "--linkage", str(link)]) == 0
    assert stat.S_IMODE(os.stat(link).st_mode) == 0o600
    with open(link, newline="") as f:
        (rec,) = list(csv.DictReader(f))
    (row,) = read_manifest(tmp_path / "m.csv")
    assert rec == {"study_id": row.study_id, "patient_id": row.patient_id, "PatientID": "DOE,JOHN 0815"}
    assert "DOE" not in (tmp_path / "m.csv").read_text()


def test_a_folder_without_pet_gets_a_keyed_id_without_its_name(tmp_path):
    (tmp_path / "arch" / "Mustermann_Max").mkdir(parents=True)
    (tmp_path / "arch" / "Mustermann_Max" / "notes.txt").write_text("x")
    (row,) = scan_archive(tmp_path / "arch", KEY)
    assert row.study_id == _hid("F", "folder|Mustermann_Max") and row.match_status == "no_pet_series"


def test_real_totalsegmentator_outputs_and_rtstruct_beside_a_pet_series(reference_dir, tmp_path):
    # DRO_0_0: a PET series and its RTSTRUCT; TotalSegmentator's own test outputs: a --fast class folder and an
    # --ml file, under names no convention knows
    study = tmp_path / "arch" / "S1"
    shutil.copytree(reference_dir / "suv-dro" / "DRO" / "DRO_0_0", study)
    ts = reference_dir / "totalsegmentator"
    shutil.copytree(ts / "example_seg_fast", study / "ct_out" / "fast")
    shutil.copy(ts / "example_seg_ml.nii.gz", study / "ct_out" / "total.nii.gz")
    (row,) = scan_archive(tmp_path / "arch", KEY)
    rs = next((study / "RS").glob("*.dcm"))
    assert row.labels == [str(study / "ct_out" / "total.nii.gz"), str(study / "ct_out" / "fast"), str(rs)]
    assert row.match_status == "ok" and row.n_unreadable == 0


def test_time_points_in_their_own_subfolders_get_their_own_labels(tmp_path, synth_archive):
    """baseline/{pet,seg,lesions} and follow_up/{pet,seg,lesions} of one patient: each study gets its own labels."""
    src, truths = synth_archive
    study = tmp_path / "archive" / "patient"
    for name, t in (("baseline", truths[0]), ("follow_up", truths[1])):
        shutil.copytree(src / t["patient"], study / name)
        uid = generate_uid()
        for f in (study / name / "pet").glob("*.dcm"):
            ds = pydicom.dcmread(f)
            ds.PatientID, ds.StudyInstanceUID = "MRN1", uid
            ds.save_as(f)
    rows = scan_archive(tmp_path / "archive", bytes(32))
    assert len(rows) == 2 and [r.match_status for r in rows] == ["ok", "ok"]
    for r in rows:
        time_point = Path(r.pet_path).parent
        assert r.labels == [str(time_point / "seg")] and r.lesions == str(time_point / "lesions.nii.gz")
    assert len({r.patient_id for r in rows}) == 1


def test_labels_beside_two_time_points_stay_unattributed(tmp_path, synth_archive):
    """A label folder at the level of both time points belongs to neither: the rows say so."""
    src, truths = synth_archive
    study = tmp_path / "archive" / "patient"
    for name, t in (("baseline", truths[0]), ("follow_up", truths[1])):
        shutil.copytree(src / t["patient"] / "pet", study / name)
        uid = generate_uid()
        for f in (study / name).glob("*.dcm"):
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID = uid
            ds.save_as(f)
    shutil.copytree(src / truths[0]["patient"] / "seg", study / "seg")
    rows = scan_archive(tmp_path / "archive", bytes(32))
    assert len(rows) == 2 and all(r.match_status.startswith("unattributed_labels") for r in rows)
    assert all(r.labels == [] for r in rows)


def test_scan_of_one_study_folder_reads_it_as_that_study(synth_archive):
    """Pointed at SYN0001 itself, scan gave pet/ (no labels) and seg/ (no PET series) as two rows."""
    root, _ = synth_archive
    whole = {r.study_id: r for r in scan_archive(root, KEY)}
    (row,) = scan_archive(root / "SYN0001", KEY)
    assert row.match_status == "ok" and row.study_id in whole
    assert row.labels == whole[row.study_id].labels and row.lesions == whole[row.study_id].lesions
    assert row.labels and row.lesions.endswith("lesions.nii.gz")
    assert len(whole) == 3  # an archive root is still one row per study
