"""Scan and batch on archives with planted faults: names that are not UTF-8, stray slices of another patient,
headers the fast scanner cannot parse, label paths outside the study folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from petfeat.batch import BatchError, BatchSettings, _check_inputs, _failure, run_study
from petfeat.errors import PetfeatError
from petfeat.io.archive import read_manifest, scan_archive, write_manifest
from petfeat.regions import BUILTIN_REGIONS

KEY = bytes(range(32))
LATIN1 = b"M\xfcller_Hans"  # a Latin-1 folder name from an old export: not UTF-8


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    """Two synthetic studies at 20 mm (pet/, seg/, lesions.nii.gz each)."""
    from petfeat.synth import generate_archive

    out = tmp_path_factory.mktemp("two")
    generate_archive(out, 2, seed=5, voxel_mm=20.0)
    (out / "archive.json").unlink(missing_ok=True)
    return out


def _archive(tmp_path: Path, two: Path) -> Path:
    root = tmp_path / "arch"
    for s in ("SYN0001", "SYN0002"):
        shutil.copytree(two / s, root / s, ignore=shutil.ignore_patterns("truth.json"))
    return root


def _latin1(root: Path, name: str = "SYN0002") -> str:
    """Rename a study folder to a Latin-1 name; the path as Python holds it (surrogate escapes)."""
    new = os.fsencode(root) + b"/" + LATIN1
    os.rename(os.fsencode(root / name), new)
    return os.fsdecode(new)


def _settings() -> BatchSettings:
    return BatchSettings(regions=BUILTIN_REGIONS, backend="cpu", peaks=False)


# ----------------------------------------------------------------------------------- names that are not UTF-8

def test_a_folder_name_that_is_not_utf8_is_written_to_the_manifest_and_read_back(two, tmp_path):
    root = _archive(tmp_path, two)
    (root / "SYN0001").rename(root / "J\u00fcrgen")  # a UTF-8 name beside it
    folder = _latin1(root)
    rows = scan_archive(root, KEY)
    assert sorted(Path(r.study_path).name for r in rows) == sorted(["J\u00fcrgen", os.fsdecode(LATIN1)])
    write_manifest(rows, tmp_path / "m.csv")  # raised UnicodeEncodeError: no manifest for the whole archive
    assert LATIN1 in (tmp_path / "m.csv").read_bytes() and "J\u00fcrgen".encode() in (tmp_path / "m.csv").read_bytes()
    back = read_manifest(tmp_path / "m.csv")
    assert [(r.study_path, r.pet_path, r.labels, r.lesions) for r in back] == \
           [(r.study_path, r.pet_path, r.labels, r.lesions) for r in rows]
    assert any(r.study_path == folder for r in back)


def test_a_study_whose_paths_are_not_utf8_is_refused_naming_the_column_not_the_name(two, tmp_path):
    root = _archive(tmp_path, two)
    _latin1(root)
    (row,) = [r for r in scan_archive(root, KEY) if os.fsencode(r.study_path).endswith(LATIN1)]
    with pytest.raises(BatchError, match="this study's pet_path is not UTF-8.*convmv") as info:
        _check_inputs(row, _settings())  # before any reader: SimpleITK aborted the worker on such a path
    rec = _failure(row, "BatchError", str(info.value), tmp_path / "out")
    assert rec["message"].startswith(f"<{row.study_id}>/<pet folder>: a folder or file name") and "ller" not in str(rec)
    pd.DataFrame([rec]).to_parquet(tmp_path / "f.parquet")  # a surrogate escape cannot be written to Parquet


@pytest.mark.parametrize("where", ["lesions", "a file in the label folder"])
def test_a_label_path_that_is_not_utf8_is_refused_before_simpleitk_sees_it(two, tmp_path, where):
    root = _archive(tmp_path, two)
    (row,) = [r for r in scan_archive(root, KEY) if r.study_path.endswith("SYN0001")]
    if where == "lesions":
        new = os.fsencode(row.lesions)[:-7] + b"_\xe9.nii.gz"
        os.rename(os.fsencode(row.lesions), new)
        row.lesions, column = os.fsdecode(new), "lesions"
    else:
        shutil.copy(Path(row.labels[0]) / "liver.nii.gz", os.fsencode(row.labels[0]) + b"/f\xf6o.nii.gz")
        column = "labels"
    with pytest.raises(BatchError, match=f"in this study's {column} is not UTF-8"):
        _check_inputs(row, _settings())


def test_a_non_utf8_study_fails_alone_in_run_study_with_a_clear_record(two, tmp_path):
    root = _archive(tmp_path, two)
    _latin1(root)
    (row,) = [r for r in scan_archive(root, KEY) if os.fsencode(r.study_path).endswith(LATIN1)]
    with pytest.raises(BatchError):  # else SimpleITK would abort this test process on the label path
        _check_inputs(row, _settings())
    res = run_study(row, _settings(), str(tmp_path / "out"), KEY.hex())
    assert res["status"] == "failed" and res["error"]["error_class"] == "BatchError"
    assert "not UTF-8" in res["error"]["message"] and "ller" not in res["error"]["message"]
    assert "ller" not in next((tmp_path / "out" / "parts").glob("*.failure.json")).read_text()


# --------------------------------------------------------------------------- stray slices of another patient

@pytest.mark.parametrize("how", ["copied", "linked"])
def test_stray_slices_of_another_patient_leave_both_studies_whole(two, tmp_path, how):
    root = _archive(tmp_path, two)
    b_slices = sorted((root / "SYN0002" / "pet").glob("*.dcm"))
    for i, f in enumerate(b_slices[:3]):
        stray = root / "SYN0001" / "pet" / f"stray_{i}.dcm"
        shutil.copy(f, stray) if how == "copied" else os.symlink(f, stray)
    rows = scan_archive(root, KEY)
    a = [r for r in rows if r.study_path.endswith("SYN0001") and r.study_id.startswith("S")]
    b = [r for r in rows if r.study_path.endswith("SYN0002")]
    assert len(a) == 1 and len(b) == 1
    (a,), (b,) = a, b
    assert b.study_id.startswith("S") and b.match_status == "ok" and b.n_files == len(b_slices)
    assert a.match_status == "ok" and a.labels and a.lesions  # it was unattributed_labels: two "studies" in its folder
    if how == "linked":  # links inside a study are never followed
        assert len(rows) == 2 and a.n_other == 3 and "3 link to a file (not followed)" in a.scan_notes
        return
    (frag,) = [r for r in rows if r.study_id.startswith("D")]
    assert frag.n_files == 3 and frag.pet_path == a.pet_path and not (frag.labels or frag.lesions)
    assert frag.match_status.startswith(f"duplicate of {b.study_id}: 3 stray slice(s) of that study's series lie in "
                                        f"this folder (the PET folder of study {a.study_id});")
    assert "not read: 3 stray slice(s)" in a.scan_notes
    assert b.series_choice.endswith(f"chosen over 3 stray slice(s) in another folder ({frag.study_id})")
    with pytest.raises(BatchError, match="stray slice"):
        _check_inputs(frag, _settings())


def test_stray_slices_in_a_folder_sorting_after_the_study_are_still_the_fragment(two, tmp_path):
    root = tmp_path / "arch"
    shutil.copytree(two / "SYN0001", root / "B_patient", ignore=shutil.ignore_patterns("truth.json"))
    shutil.copytree(two / "SYN0002", root / "A_patient", ignore=shutil.ignore_patterns("truth.json"))
    for i, f in enumerate(sorted((root / "A_patient" / "pet").glob("*.dcm"))[:2]):
        shutil.copy(f, root / "B_patient" / "pet" / f"stray_{i}.dcm")
    rows = scan_archive(root, KEY)
    assert [(Path(r.study_path).name, r.study_id[0], r.match_status[:9]) for r in rows] == [
        ("A_patient", "S", "ok"), ("B_patient", "S", "ok"), ("B_patient", "D", "duplicate")]


# ------------------------------------------------------------------------ headers the fast scanner cannot parse

def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "tag out of order":  # SeriesDescription (0008,103E) -> (F008,103E): past the last tag it reads
        i = data.index(b"\x08\x00\x3e\x10")
        path.write_bytes(data[:i] + b"\x08\xf0\x3e\x10" + data[i + 4:])
    elif how == "tag out of order, pixels cut":
        _corrupt(path, "tag out of order")
        path.write_bytes(path.read_bytes()[:-100])
    else:  # the header cut before the UIDs
        path.write_bytes(data[:data.index(b"\x10\x00\x20\x00") + 20])


@pytest.mark.parametrize("how, unreadable", [("tag out of order", 0), ("tag out of order, pixels cut", 1),
                                             ("header cut before the UIDs", 1)])
def test_a_slice_the_fast_scanner_cannot_parse_never_becomes_a_study(two, tmp_path, how, unreadable):
    root = _archive(tmp_path, two)
    n = len(list((root / "SYN0001" / "pet").glob("*.dcm")))
    for s in ("SYN0001", "SYN0002"):  # the same fault in two patients: their phantoms shared one study_id
        _corrupt(sorted((root / s / "pet").glob("*.dcm"))[4], how)
    rows = scan_archive(root, KEY)
    assert len(rows) == 2 and all(r.study_id.startswith("S") and r.series_uid for r in rows)
    assert all(r.match_status == "ok" and r.labels for r in rows)
    assert [r.n_unreadable for r in rows] == [unreadable] * 2
    assert [r.n_files for r in rows] == [n - (how.startswith("header cut"))] * 2
    if how.startswith("header cut"):
        assert rows[0].scan_notes == ("unreadable: 1 header without StudyInstanceUID or SeriesInstanceUID (cut short "
                                      "or corrupt): pet/slice_0004.dcm")
    elif unreadable:
        assert "pixel data truncated or missing: pet/slice_0004.dcm" in rows[0].scan_notes


def test_one_slice_whose_study_uid_is_damaged_stays_in_its_study(two, tmp_path):
    """One flipped byte in one slice's StudyInstanceUID made a 1-slice study beside its series, and both rows
    failed as unattributed_labels; the slice is now counted as damaged and read with its series."""
    from petfeat.io.dicom import read_pet_series

    root = _archive(tmp_path, two)
    slices = sorted((root / "SYN0001" / "pet").glob("*.dcm"))
    data = bytearray(slices[3].read_bytes())
    at = data.find(b"\x20\x00\x0d\x00UI")  # (0020,000D) StudyInstanceUID, explicit VR little endian
    data[at + 8 + 10] = 0x92  # a byte no UID holds
    slices[3].write_bytes(bytes(data))
    rows = sorted(scan_archive(root, KEY), key=lambda r: r.study_path)
    assert len(rows) == 2 and [r.match_status for r in rows] == ["ok", "ok"]
    assert rows[0].labels and rows[0].n_unreadable == 1 and rows[0].n_files == len(slices) - 1
    assert rows[0].scan_notes.startswith("unreadable: 1 StudyInstanceUID unlike the rest of its series (a damaged "
                                         "header): pet/slice_0003.dcm")
    assert read_pet_series(rows[0].pet_path, series_uid=rows[0].series_uid).stored.shape[0] == len(slices)


@pytest.mark.parametrize("how", ["pet folder linked", "slices linked"])
def test_a_study_whose_slices_are_behind_links_says_so_with_the_fix(two, tmp_path, how):
    """A pet/ folder that is a link, or holds only linked slices, gave a bare "no pet series"."""
    root = _archive(tmp_path, two)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(root / "SYN0001" / "pet", elsewhere)
    if how == "pet folder linked":
        (root / "SYN0001" / "pet").symlink_to(elsewhere, target_is_directory=True)
    else:
        (root / "SYN0001" / "pet").mkdir()
        for f in sorted(elsewhere.glob("*.dcm")):
            (root / "SYN0001" / "pet" / f.name).symlink_to(f)
    (row,) = [r for r in scan_archive(root, KEY) if r.study_path.endswith("SYN0001")]
    n = 1 if how == "pet folder linked" else len(list(elsewhere.glob("*.dcm")))
    assert row.match_status == (f"no_pet_series: {n} symbolic link(s) inside the study are not followed (see "
                                "scan_notes; a link may point to another patient's files); replace each by what it "
                                "points to (cp -rL) and scan again")
    assert f"link to a {'folder' if n == 1 else 'file'} (not followed)" in row.scan_notes


# ----------------------------------------------------------------------------- label paths outside the study

def test_label_and_lesion_paths_outside_the_study_folder_are_redacted_in_failures(two, tmp_path):
    root = _archive(tmp_path, two)
    (row,) = [r for r in scan_archive(root, KEY) if r.study_path.endswith("SYN0001")]
    elsewhere = tmp_path / "labels" / "Smith_John_1950"
    shutil.move(row.labels[0], elsewhere / "seg")
    shutil.move(row.lesions, elsewhere / "Smith_lesions.nii.gz")
    aorta = elsewhere / "seg" / "aorta.nii.gz"
    aorta.write_bytes(aorta.read_bytes()[:300])  # a truncated label file: its reader names it
    write_manifest([row], tmp_path / "m.csv")
    text = (tmp_path / "m.csv").read_text().replace(str(row.labels[0]), str(elsewhere / "seg"))
    (tmp_path / "m.csv").write_text(text.replace(row.lesions, str(elsewhere / "Smith_lesions.nii.gz")))
    (edited,) = read_manifest(tmp_path / "m.csv")
    res = run_study(edited, _settings(), str(tmp_path / "out"), KEY.hex())
    assert res["status"] == "failed" and "Smith" not in str(res)
    assert res["error"]["message"].startswith(f"<{row.study_id}>/<labels 1>/aorta.nii.gz: ")
    assert "Smith" not in next((tmp_path / "out" / "parts").glob("*.failure.json")).read_text()
    rec = _failure(edited, "X", f"{elsewhere / 'Smith_lesions.nii.gz'}: bad", tmp_path / "out")
    assert rec["message"] == f"<{row.study_id}>/<lesions>: bad"


# ------------------------------------------------------------------ label folders by content, unreadable folders

def test_a_totalsegmentator_folder_of_two_tasks_is_found_by_its_class_names_whatever_its_name(two, tmp_path):
    from petfeat.io.totalsegmentator import identify_task, split_by_task

    root = _archive(tmp_path, two)
    seg = root / "SYN0001" / "seg"
    classes = [f.name[:-7] for f in seg.glob("*.nii.gz")]
    assert identify_task(classes) is None and len(split_by_task(classes)) == 2  # total + head_glands_cavities
    seg.rename(seg.parent / "totalseg_out")
    rows = scan_archive(root, KEY)
    assert rows[0].labels == [str(seg.parent / "totalseg_out")] and rows[0].match_status == "ok"


@pytest.mark.parametrize("closed, status", ids=["seg", "pet", "study"], argvalues=[
    ("SYN0001/seg", "unreadable_folder: 1 folder(s) of the study (see scan_notes) cannot be listed; give the account "
                    "that runs petfeat read access (chmod -R u+rX) and scan again, or set match_status to ok to "
                    "extract the study without them"),
    ("SYN0001/pet", "no_pet_series: 1 folder(s) of the study (see scan_notes) cannot be listed; give the account "
                    "that runs petfeat read access (chmod -R u+rX) and scan again"),
    ("SYN0001", "no_pet_series: the study folder itself cannot be listed; give the account that runs petfeat read "
                "access (chmod -R u+rX) and scan again")])
def test_a_folder_that_cannot_be_listed_is_named_with_the_fix(two, tmp_path, monkeypatch, closed, status):
    root = _archive(tmp_path, two)
    listed = os.scandir

    def scandir(path="."):  # what a folder of mode 000 does for an account that is not root
        if os.fspath(path) == str(root / closed):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return listed(path)

    monkeypatch.setattr(os, "scandir", scandir)
    rows = scan_archive(root, KEY)
    monkeypatch.undo()
    (row,) = [r for r in rows if r.study_path.endswith("SYN0001")]
    assert row.match_status == status and row.n_unreadable == 1 and "1 folder cannot be listed" in row.scan_notes
    if closed.endswith("seg"):  # scan found the lesion mask, so the study looked complete ("ok") and ran without organs
        assert row.lesions and not row.labels
    with pytest.raises(PetfeatError, match=r"cannot be listed; .*chmod -R u\+rX"):
        _check_inputs(row, _settings())
