"""Scan and batch on archives as PACS exports write them: patient-named folders and files, damaged slices,
non-DICOM files, two copies of one series, and SUV header values the manifest overrides per study."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from petfeat.batch import BatchSettings, batch_advice, redact, run_batch, run_study, study_key
from petfeat.io.archive import MANIFEST_COLUMNS, ManifestError, read_manifest, scan_archive, write_manifest
from petfeat.regions import BUILTIN_REGIONS

KEY = bytes(range(32))
#: What a PACS export puts in folder and file names: none of it may reach an output or the console.
SECRETS = ("SCHMIDT", "HANS", "19570312", "KRAUSE", "PETRA")


def _settings() -> BatchSettings:
    return BatchSettings(regions=BUILTIN_REGIONS, backend="cpu", peaks=False)


@pytest.fixture(scope="module")
def coarse(tmp_path_factory):
    """One synthetic study at 20 mm (pet/, seg/, lesions.nii.gz): enough for scanning."""
    from petfeat.synth import generate_archive

    out = tmp_path_factory.mktemp("coarse")
    generate_archive(out, 1, seed=3, voxel_mm=20.0)
    return out / "SYN0001"


def _slices(study: Path) -> list[Path]:
    return sorted((study / "pet").glob("*.dcm"))


def _cut(path: Path, keep: int) -> None:
    """Keep the first ``keep`` bytes of a file (all but ``-keep`` when negative)."""
    path.write_bytes(path.read_bytes()[:keep])


def _before_pixels(path: Path) -> int:
    """Where a slice's PixelData element starts."""
    return path.read_bytes().rindex(b"\xe0\x7f\x10\x00")


def _dicomdir(study: Path, dst: Path) -> None:
    """A real DICOMDIR (a DICOM file of the Media Storage Directory class) listing two slices."""
    from pydicom.fileset import FileSet

    fs = FileSet()
    try:
        for f in _slices(study)[:2]:
            fs.add(pydicom.dcmread(f))
        fs.write(dst.parent / "fileset")
    finally:  # the FileSet's staging folder, else removed (with a ResourceWarning) during some later test
        fs._stage["t"].cleanup()
    shutil.copy(dst.parent / "fileset" / "DICOMDIR", dst)
    shutil.rmtree(dst.parent / "fileset")


# ---------------------------------------------------------------------------------------------- scan: counts

def test_scan_counts_empty_and_truncated_slices_and_only_them(coarse, tmp_path):
    study = tmp_path / "arch" / "P1"
    shutil.copytree(coarse, study)
    slices = _slices(study)
    slices[0].write_bytes(b"")  # a 0-byte slice
    _cut(slices[-1], 300)  # the header cut after the meta group: no Modality, no UIDs
    _cut(slices[5], -40)  # the header whole, the pixel data 40 bytes short
    _cut(slices[6], _before_pixels(slices[6]))  # the header whole, the file ends before the pixel data
    (study / "pet" / "notes.txt").write_text("Patient exported 2025\n")
    (study / "pet" / "Thumbs.db").write_bytes(os.urandom(4096))
    _dicomdir(coarse, study / "DICOMDIR")
    (row,) = scan_archive(tmp_path / "arch", KEY)
    assert row.match_status == "ok"
    # was (0, uncounted): the manifest said nothing was wrong; truth.json is the third file that is not DICOM
    assert (row.n_unreadable, row.n_other) == (4, 4)
    names = [p.name for p in slices]
    assert row.scan_notes == (f"unreadable: 1 empty (0 bytes): pet/{names[0]}; 1 header truncated or without "
                              f"Modality: pet/{names[-1]}; 2 pixel data truncated or missing: pet/{names[5]}, "
                              f"pet/{names[6]}; ignored: 1 DICOMDIR, 3 not DICOM")
    write_manifest([row], tmp_path / "m.csv")
    (back,) = read_manifest(tmp_path / "m.csv")
    assert (back.n_unreadable, back.n_other, back.scan_notes) == (4, 4, row.scan_notes)


def test_a_file_named_dcm_that_is_not_dicom_is_unreadable_not_other(coarse, tmp_path):
    study = tmp_path / "arch" / "P1"
    shutil.copytree(coarse, study)
    (study / "pet" / "slice_9999.dcm").write_bytes(b"\x00" * 64 + b"not a DICOM file" * 20)
    (row,) = scan_archive(tmp_path / "arch", KEY)
    assert (row.n_unreadable, row.n_other) == (1, 1)  # the other: truth.json
    assert row.scan_notes == "unreadable: 1 named .dcm but not DICOM: pet/slice_9999.dcm; ignored: 1 not DICOM"


# ------------------------------------------------------------------------------------- scan: two copies of a series

@pytest.mark.parametrize("damage", ["pixels cut", "header cut", "empty"])
def test_of_two_copies_of_a_series_the_complete_one_is_the_study(coarse, tmp_path, damage):
    root = tmp_path / "arch"
    shutil.copytree(coarse, root / "A_copy")  # first by name: it used to be the study, whatever its state
    shutil.copytree(coarse, root / "B_copy")
    bad = _slices(root / "A_copy")[7]
    {"pixels cut": lambda: _cut(bad, -40), "header cut": lambda: _cut(bad, 300),
     "empty": lambda: bad.write_bytes(b"")}[damage]()
    first, second = scan_archive(root, KEY)
    study, dup = (first, second) if first.study_id.startswith("S") else (second, first)
    assert Path(study.study_path).name == "B_copy" and Path(dup.study_path).name == "A_copy"
    assert dup.study_id.startswith("D") and dup.match_status.startswith(f"duplicate of {study.study_id}: ")
    assert "copy was chosen as it is complete (this copy has 1 unreadable or truncated file(s)" in dup.match_status
    assert study.series_choice.endswith(f"the complete copy of the series, chosen over {dup.study_id} (1 unreadable "
                                        "or truncated file(s) there)")


def test_copies_in_the_same_state_keep_the_first_folder_as_the_study(coarse, tmp_path):
    root = tmp_path / "arch"
    for name in ("A_copy", "B_copy"):
        shutil.copytree(coarse, root / name)
        _cut(_slices(root / name)[3], -40)  # both damaged alike: nothing to prefer
    study, dup = scan_archive(root, KEY)
    assert Path(study.study_path).name == "A_copy" and study.study_id.startswith("S")
    assert dup.match_status == (f"duplicate of {study.study_id}: the same series is also in another folder; "
                                "remove one copy")


# ------------------------------------------------------------------------------------------ manifest: overrides

def test_manifest_override_columns_round_trip_and_are_checked(tmp_path):
    import datetime as dt

    pet = tmp_path / "pet"
    pet.mkdir()
    overrides = {"weight_kg": 71.5, "height_m": 1.8, "sex": "F", "dose_bq": 3.7e8,
                 "injection_datetime": dt.datetime(2025, 3, 15, 9, 12), "half_life_s": 6586.2}
    from petfeat.io.archive import StudyRow

    row = StudyRow("S1", "20250315", str(pet), "1.2.3", [], "", "ok", 1, study_path=str(tmp_path),
                   suv_overrides=overrides)
    write_manifest([row], tmp_path / "m.csv")
    header = (tmp_path / "m.csv").read_text().splitlines()[0].split(",")
    assert header[-6:] == ["weight_kg", "height_m", "sex", "dose_bq", "injection_time", "half_life_s"]
    (back,) = read_manifest(tmp_path / "m.csv")
    assert back.suv_overrides == overrides
    for column, value, message in (("weight_kg", "seventy", r"weight_kg is 'seventy', not a number; write the weight"),
                                   ("sex", "X", r"sex is 'X'; write M or F"),
                                   ("injection_time", "09:12", r"injection_time is '09:12', not a date and time")):
        text = f"{','.join(MANIFEST_COLUMNS)}\n" + ",".join(
            value if c == column else {"study_id": "S1", "pet_path": str(pet)}.get(c, "") for c in MANIFEST_COLUMNS)
        (tmp_path / "bad.csv").write_text(text + "\n")
        with pytest.raises(ManifestError, match=rf"line 2 \(study S1\): {message}"):
            read_manifest(tmp_path / "bad.csv")
    (tmp_path / "old.csv").write_text(f"study_id,pet_path\nS1,{pet}\n")
    assert read_manifest(tmp_path / "old.csv")[0].suv_overrides == {}


def test_the_part_key_includes_the_overrides_and_is_unchanged_without_them(tmp_path):
    import hashlib

    from petfeat.batch import _stat_signature
    from petfeat.io.archive import StudyRow

    row = StudyRow("S1", "", str(tmp_path), "1.2.3", [], "", "ok", 1)
    settings = _settings()
    plain = [settings.digest(), "S1", "1.2.3", _stat_signature(tmp_path), [], None]  # the key before overrides
    assert study_key(row, settings) == hashlib.sha256(json.dumps(plain, default=str).encode()).hexdigest()[:20]
    keys = {study_key(dataclasses.replace(row, suv_overrides=o), settings)
            for o in ({}, {"weight_kg": 70.0}, {"weight_kg": 80.0}, {"weight_kg": 70.0, "sex": "M"})}
    assert len(keys) == 4


def test_advice_names_the_manifest_column_a_batch_reads():
    from petfeat.io.archive import StudyRow

    row = StudyRow("S1", "", "/x", "", [], "", "ok", 1)
    msg = ("/x: RadiopharmaceuticalStartDateTime (0018,1078) is missing. Fix the header or pass the override "
           "injection_datetime= (CLI: --injection-time YYYY-MM-DDTHH:MM:SS).")
    assert batch_advice(msg, row) == (
        "/x: RadiopharmaceuticalStartDateTime (0018,1078) is missing. Fix the header or add injection_time to this "
        "study's row in the manifest, or run it alone with --pet ... --injection-time YYYY-MM-DDTHH:MM:SS.")
    note = "PatientSize (0010,1020) = 178 is outside 0.3-2.6 m: read as centimetres (override: --height M)"
    assert batch_advice(note, row).endswith("(add height_m to this study's row in the manifest, or run it alone with "
                                            "--pet ... --height M)")
    note = "injection taken on the day before (midnight crossing; override: --injection-time)"
    assert batch_advice(note, row) == ("injection taken on the day before (midnight crossing; override: the "
                                       "manifest's injection_time column)")


# ----------------------------------------------------------------------------------------------------- redaction

def test_redaction_names_every_file_of_a_study_by_its_place(tmp_path):
    from petfeat.io.archive import StudyRow

    study = tmp_path / "SCHMIDT_HANS_19570312"
    pet = study / "SCHMIDT_HANS_19570312_PET"
    (pet / "sub dir").mkdir(parents=True)
    for i in range(1, 6):
        (pet / f"SCHMIDT HANS.PT.{i:04d}.dcm").write_bytes(b"x")  # a space in the name
    (pet / ".hidden").write_bytes(b"x")
    (pet / "sub dir" / "HANS.dcm").write_bytes(b"x")
    seg = study / "seg"
    seg.mkdir()
    (seg / "liver.nii.gz").write_bytes(b"x")
    (seg / "SCHMIDT_extra.nii.gz").write_bytes(b"x")
    (study / "SCHMIDT_lesions.nii.gz").write_bytes(b"x")
    os.symlink(study, tmp_path / "alias")
    row = StudyRow("S1a2b3c4d5e6f", "", str(pet), "", [str(seg)], str(study / "SCHMIDT_lesions.nii.gz"), "ok", 5,
                   study_path=str(tmp_path / "alias"))  # the manifest names the study through a link
    sid = "<S1a2b3c4d5e6f>"
    text = (f"{pet}/SCHMIDT HANS.PT.0003.dcm: truncated; '{pet}/sub dir/HANS.dcm', {pet}/gone SCHMIDT.dcm and "
            f"{tmp_path / 'alias'}/SCHMIDT_HANS_19570312_PET. {seg}/liver.nii.gz {seg}/SCHMIDT_extra.nii.gz "
            f"{study / 'SCHMIDT_lesions.nii.gz'} {study}/other/x.dcm")
    got = redact(text, row)
    assert got == (f"{sid}/<pet folder>/file 3 of 5 (sorted by name): truncated; '{sid}/<pet folder>/folder 1 of 1/"
                   f"file 1 of 1 (sorted by name)', {sid}/<pet folder>/(a name not in the folder) SCHMIDT.dcm and "
                   f"{sid}/<pet folder>. {sid}/<labels 1>/liver.nii.gz {sid}/<labels 1>/file 1 of 2 (sorted by name) "
                   f"{sid}/<lesions> {sid}/(a name not in the folder)")
    # the one name a withheld path can leave is the word after a space: the file is gone from its folder


# ------------------------------------------------------------------------------------------ end to end on Dask

def _pacs_copy(src: Path, dst: Path, pet_name: str, stem: str, edit=None) -> list[Path]:
    """``src`` (a synthetic study) as a PACS exports it: patient-named PET folder and files."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("pet", "truth.json"))
    (dst / pet_name).mkdir()
    files = []
    for i, f in enumerate(sorted((src / "pet").glob("*.dcm")), start=1):
        ds = pydicom.dcmread(f)
        if edit is not None:
            edit(ds)
        files.append(dst / pet_name / f"{stem}.PT.{i:04d}.dcm")
        ds.save_as(files[-1])
    return files


def _outputs_text(out: Path) -> str:
    blob = ""
    for p in sorted(out.rglob("*")):
        if p.suffix == ".parquet":
            blob += pd.read_parquet(p).to_csv()
        elif p.suffix in (".json", ".csv"):
            blob += p.read_text()
    return blob


def test_a_pacs_export_fails_privately_and_a_manifest_override_reruns_it(synth_archive, tmp_path):
    src, truths = synth_archive
    root = tmp_path / "archive"

    def no_weight(ds):
        ds.PatientWeight = 0

    _pacs_copy(src / truths[0]["patient"], root / "SCHMIDT_HANS_19570312", "SCHMIDT_HANS_19570312_PET",
               "SCHMIDT_HANS", edit=no_weight)
    broken = _pacs_copy(src / truths[1]["patient"], root / "KRAUSE_PETRA", "KRAUSE_PETRA_PET", "KRAUSE_PETRA")
    _pacs_copy(src / truths[1]["patient"], root / "KRAUSE_PETRA_2", "KRAUSE_PETRA_PET", "KRAUSE_PETRA")
    _cut(broken[5], -1000)
    rows = scan_archive(root, KEY)
    krause, krause_2, weight0 = rows  # sorted by folder name
    assert Path(krause_2.study_path).name == "KRAUSE_PETRA_2" and krause_2.study_id.startswith("S")
    assert krause.study_id.startswith("D")
    # a manifest as scan wrote it before it compared the copies: the study is the damaged copy
    paths = ("study_path", "pet_path", "labels", "lesions")
    study = dataclasses.replace(krause_2, **{p: getattr(krause, p) for p in paths})
    dup = dataclasses.replace(krause, **{p: getattr(krause_2, p) for p in paths})
    manifest = tmp_path / "manifest.csv"
    write_manifest([weight0, study, dup], manifest)

    out, log = tmp_path / "out", io.StringIO()
    rep = run_batch(read_manifest(manifest), out, _settings(), KEY, n_workers=1, progress=log, csv=True)
    assert (rep.done, rep.failed) == (0, 3)
    fails = pd.read_parquet(out / "failures.parquet").set_index("study_id")
    n = len(broken)
    w = fails.loc[weight0.study_id]
    assert w.error_class == "SuvError" and w.pet_path == f"<{weight0.study_id}>/<pet folder>"
    assert w.message.endswith("Fix the header or add weight_kg to this study's row in the manifest, or run it alone "
                              "with --pet ... --weight KG.")
    k = fails.loc[study.study_id]
    assert k.error_class == "DicomSeriesError"
    assert k.message.startswith(f"<{study.study_id}>/<pet folder>/file 6 of {n} (sorted by name): ")
    assert k.message.endswith(f"Another copy of this series is in the manifest as {dup.study_id} (match_status "
                              f"duplicate of {study.study_id}): to use it, copy that row's pet_path, labels and "
                              "lesions into this row, or remove the damaged copy and scan again.")
    assert fails.loc[dup.study_id].error_class == "BatchError"
    failure_parts = list((out / "parts").glob("*.failure.json"))
    assert len(failure_parts) == 3
    for text in (_outputs_text(out), log.getvalue()):  # tables, parts, run.json, CSV copies, the console
        for secret in (*SECRETS, str(root)):
            assert secret not in text

    # the user adds the weight to that study's row: the rerun redoes it with that weight
    with manifest.open(newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    new_weight = 70.0
    for rec in table:
        if rec["study_id"] == weight0.study_id:
            rec["weight_kg"] = "70"
    with manifest.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    rows2 = read_manifest(manifest)
    rep2 = run_batch(rows2, out, _settings(), KEY, n_workers=1, progress=None)
    assert (rep2.done, rep2.failed) == (1, 2)
    key = study_key(rows2[0], _settings())
    assert key != study_key(weight0, _settings())
    timing = json.loads((out / "parts" / f"{key}.timing.json").read_text())
    truth = truths[0]
    scale = new_weight / truth["weight_kg"]
    assert timing["suv"]["suv_bw_factor"] == pytest.approx(truth["suv_bw_factor"] * scale, rel=1e-6)
    feats = pd.read_parquet(out / "features.parquet").set_index("region")
    assert set(feats.study_id) == {weight0.study_id}

    # a study done with one weight is new work with another: not skipped
    done = run_study(rows2[0], _settings(), str(out), KEY.hex())
    assert done["status"] == "skipped"
    heavier = dataclasses.replace(rows2[0], suv_overrides={"weight_kg": 80.0})
    again = run_study(heavier, _settings(), str(out), KEY.hex())
    assert again["status"] == "done"
    assert again["suv"]["suv_bw_factor"] == pytest.approx(truth["suv_bw_factor"] * 80.0 / truth["weight_kg"], rel=1e-6)
    heavy = pd.read_parquet(again["part"]).set_index("region")  # every SUV 80/70 of the 70 kg run's
    ratio = (heavy["suv_mean"] / feats["suv_mean"]).dropna()
    assert len(ratio) >= 5 and ratio.to_numpy() == pytest.approx(80.0 / 70.0, rel=1e-9)
    # a value in the column that the SUV code refuses names that column, not a command-line option
    grams = run_study(dataclasses.replace(rows2[0], suv_overrides={"weight_kg": 70000.0}), _settings(), str(out),
                      KEY.hex())
    assert "the override weight_kg=70000.0 (the weight_kg column of this study's row in the manifest) is outside" in \
        grams["error"]["message"]


def test_a_batch_refusing_weight_points_to_the_manifest_column(tmp_path, capsys):
    from petfeat.cli import main
    from petfeat.io.archive import StudyRow

    write_manifest([StudyRow("S1", "", str(tmp_path), "1.2.3", [], "", "ok", 1)], tmp_path / "m.csv")
    assert main(["extract", str(tmp_path / "m.csv"), "-o", str(tmp_path / "out"), "--weight", "70"]) == 2
    err = capsys.readouterr().err
    assert "--weight: options of one study (--pet)" in err and "weight_kg" in err
