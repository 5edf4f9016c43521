"""The reader on what real exports contain: bed-junction jitter, stray files, corrupt headers, huge headers, and
study folders with several PET series."""

from __future__ import annotations

import datetime as dt
import itertools
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import REFERENCE

import petfeat.io.dicom as dicom
from petfeat.errors import DicomSeriesError, PetfeatError, PetfeatWarning
from petfeat.io.dicom import SeriesSummary, choose_pet_series, read_pet_header, read_pet_series
from petfeat.synth.dicom_writer import Acquisition, write_pet_series

DZ = 3.27  # the GE Discovery ST series' slice spacing


def _acq() -> Acquisition:
    t = dt.datetime(2025, 5, 1, 10, 0)
    return Acquisition("ROBUST", "ROBUST^READER", 81.5, 1.77, "M", 210e6, t - dt.timedelta(minutes=62), t)


def _write(folder: Path, n: int = 6, shape=(9, 11), seed: int = 0, **kw) -> dict:
    rng = np.random.default_rng(seed)
    return write_pet_series(folder, rng.gamma(2.0, 1.5, (n, *shape)), (DZ, 4.0, 4.0), (-20.0, -18.0, 5.0), _acq(),
                            **kw)


def _positions(files) -> np.ndarray:
    return np.array([float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files])


# --- 1. bed-junction jitter -------------------------------------------------------------------------------------


def _three_beds(junction_gaps=(3.19, 3.29), per_bed=11) -> np.ndarray:
    gaps = [DZ] * (per_bed - 1) + [junction_gaps[0]] + [DZ] * (per_bed - 1) + [junction_gaps[1]] + [DZ] * (per_bed - 1)
    return 5.0 + np.concatenate([[0.0], np.cumsum(gaps)])


def test_bed_junction_jitter_is_read_with_a_warning_and_a_note(tmp_path):
    z = _three_beds()
    _write(tmp_path / "jitter", n=len(z), positions_mm=z)
    _write(tmp_path / "regular", n=len(z))
    with pytest.warns(PetfeatWarning, match=r"largest deviation, 0\.080 mm, lies between slices 10 and 11.*median"):
        s = read_pet_series(tmp_path / "jitter")
    assert s.geometry.spacing[0] == pytest.approx(DZ)
    assert s.notes["slice_spacing_mm"] == pytest.approx(DZ)
    assert s.notes["slice_spacing_max_deviation_mm"] == pytest.approx(0.08, abs=1e-4)
    assert s.notes["slice_spacing_max_deviation_after_slice"] == 10
    # every slice lies within 0.08 mm of its grid position
    grid_z = s.geometry.index_to_lps(np.stack([np.arange(len(z)), np.zeros(len(z)), np.zeros(len(z))], 1))[:, 2]
    assert np.abs(grid_z - _positions(s.files)).max() <= 0.08 + 1e-6
    assert s.notes["slice_position_max_offset_mm"] == pytest.approx(0.08, abs=1e-4)
    assert not any(str(tmp_path) in str(v) for v in s.notes.values())  # no file names in the notes
    np.testing.assert_array_equal(s.stored, read_pet_series(tmp_path / "regular").stored)


def test_missing_slice_in_the_middle_names_the_gap_files(tmp_path):
    _write(tmp_path / "gap", n=8)
    (tmp_path / "gap" / "slice_0004.dcm").unlink()
    with pytest.raises(DicomSeriesError, match=r"between \S*slice_0003\.dcm \(at 14\.810 mm\) and "
                                               r"\S*slice_0005\.dcm \(at 21\.350 mm\) is 6\.540 mm.*missing"):
        read_pet_series(tmp_path / "gap")


def test_the_first_irregular_gap_is_named_not_the_largest(tmp_path):
    z = _three_beds()
    _write(tmp_path / "gaps", n=len(z), positions_mm=z)
    for k in (5, 20, 21):  # one slice missing in bed 1, then two in bed 2 (the larger gap)
        (tmp_path / "gaps" / f"slice_{k:04d}.dcm").unlink()
    with pytest.raises(DicomSeriesError, match=r"slice_0004\.dcm .* and \S*slice_0006\.dcm .*2 such gap"):
        read_pet_series(tmp_path / "gaps")


# --- 2. empty, truncated and stray files ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["end", "middle"])
def test_zero_byte_slice_is_named_at_the_end_and_in_the_middle(tmp_path, where):
    _write(tmp_path / "s", n=6)
    empty = tmp_path / "s" / ("slice_0006.dcm" if where == "end" else "slice_0003.dcm")
    empty.write_bytes(b"")
    with pytest.raises(DicomSeriesError, match=rf"{empty.name}: empty file \(0 bytes\)"):
        read_pet_series(tmp_path / "s")
    with pytest.raises(DicomSeriesError, match=rf"{empty.name}: empty file"):
        read_pet_header(tmp_path / "s")


def test_truncated_header_file_is_named(tmp_path):
    _write(tmp_path / "s", n=6)
    cut = tmp_path / "s" / "slice_0006.dcm"
    cut.write_bytes((tmp_path / "s" / "slice_0000.dcm").read_bytes()[:90])  # cut inside the preamble
    with pytest.raises(DicomSeriesError, match=rf"{cut.name}: not readable as a DICOM slice \(90 bytes"):
        read_pet_series(tmp_path / "s")


def test_non_dicom_files_beside_the_slices_are_ignored(tmp_path):
    _write(tmp_path / "s", n=6)
    (tmp_path / "s" / "README.txt").write_text("exported by the PACS")
    (tmp_path / "s" / "notes.json").write_text("{}")
    (tmp_path / "s" / "DICOMDIR").write_bytes(b"")
    (tmp_path / "s" / "mask.nii.gz").write_bytes(b"\x1f\x8b")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "empty.dcm").write_bytes(b"")  # not in the series' folder
    assert read_pet_series(tmp_path).stored.shape == (6, 9, 11)


def test_uid_named_slices_count_as_named_alike(tmp_path):
    _write(tmp_path / "s", n=4)
    for i, f in enumerate(sorted((tmp_path / "s").glob("*.dcm"))):
        f.rename(f.with_name(f"1.2.840.113619.2.55.{i + 1}"))
    (tmp_path / "s" / "1.2.840.113619.2.55.9").write_bytes(b"")
    (tmp_path / "s" / "README").write_text("no DICOM")
    with pytest.raises(DicomSeriesError, match=r"113619\.2\.55\.9: empty file"):
        read_pet_series(tmp_path / "s")
    (tmp_path / "s" / "1.2.840.113619.2.55.9").unlink()
    assert read_pet_series(tmp_path / "s").stored.shape[0] == 4


# --- 3. corrupt headers: a fuzz of single flipped bytes ---------------------------------------------------------


def _flip_positions(data: bytes, rng: np.random.Generator, n: int = 200) -> list[int]:
    head = rng.choice(min(2048, len(data)), size=n - 20, replace=False)
    tail = rng.integers(max(0, len(data) - 64), len(data), size=10)  # the last bytes: pixel data
    ts = data.find(b"1.2.840.10008.1.2", 132)  # the transfer syntax value (its decode crashed the fast scan)
    return sorted({int(p) for p in itertools.chain(head, tail, range(ts, ts + 10))})


def _flipped(data: bytes, pos: int, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    b[pos] ^= int(rng.integers(1, 256))
    return bytes(b)


@pytest.mark.parametrize("source", ["synthetic", "GH184"])
def test_fuzz_flipped_bytes_give_a_header_or_an_error_naming_the_file(tmp_path, source):
    if source == "synthetic":
        _write(tmp_path / "orig", n=1, shape=(8, 8))
        original = (tmp_path / "orig" / "slice_0000.dcm").read_bytes()
    else:
        original = (REFERENCE / "compressed-pet" / "GH184.dcm").read_bytes()
    rng = np.random.default_rng(184)
    outcomes = {"header": 0, "not DICOM": 0, "refused": 0}
    target = tmp_path / "fuzzed.dcm"
    for pos in _flip_positions(original, rng):
        target.write_bytes(_flipped(original, pos, rng))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about invalid values: not exceptions
            try:
                ds = dicom._read_header(target)
            except PetfeatError as exc:
                assert str(target) in str(exc), (pos, exc)
                outcomes["refused"] += 1
                continue
        outcomes["header" if ds is not None else "not DICOM"] += 1
        assert ds is None or isinstance(ds, pydicom.Dataset)
    assert outcomes["header"] > 100 and sum(outcomes.values()) >= 190, outcomes


def test_fuzz_flipped_bytes_through_read_pet_series(tmp_path):
    _write(tmp_path / "s", n=3, shape=(8, 8))
    middle = tmp_path / "s" / "slice_0001.dcm"
    original = middle.read_bytes()
    rng = np.random.default_rng(7)
    read = refused = 0
    for pos in _flip_positions(original, rng):
        middle.write_bytes(_flipped(original, pos, rng))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                s = read_pet_series(tmp_path / "s")
            except PetfeatError as exc:
                assert str(tmp_path / "s") in str(exc), (pos, exc)  # names a file of the series or the folder
                refused += 1
                continue
        assert isinstance(s.stored, np.ndarray)
        read += 1
    assert read > 50 and refused > 5, (read, refused)


def test_fuzz_flipped_bytes_in_compressed_pixels(tmp_path):
    original = (REFERENCE / "compressed-pet" / "GH184.dcm").read_bytes()
    rng = np.random.default_rng(11)
    target = tmp_path / "GH184.dcm"
    for pos in rng.integers(len(original) - 4000, len(original), size=40):
        target.write_bytes(_flipped(original, int(pos), rng))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                read_pet_series(target)
            except PetfeatError as exc:
                assert str(target) in str(exc)


# --- 4. header memory bombs -------------------------------------------------------------------------------------


def _set_size(files, rows, cols):
    for f in files:
        ds = pydicom.dcmread(f)
        ds.Rows, ds.Columns = rows, cols
        ds.save_as(f)


def test_huge_rows_columns_refused_before_allocating(tmp_path, monkeypatch):
    _write(tmp_path / "s", n=2)
    _set_size(sorted((tmp_path / "s").glob("*.dcm")), 65535, 65535)

    def no_alloc(*a, **k):
        raise AssertionError("allocated")

    monkeypatch.setattr(dicom.np, "empty", no_alloc)
    with pytest.raises(DicomSeriesError, match=r"slice_0000\.dcm: Rows x Columns = 65535 x 65535 .* 16\.00 GiB, more "
                                               r"than the limit of 8\.00 GiB.*PETFEAT_MAX_VOLUME_GB"):
        read_pet_series(tmp_path / "s")


def test_volume_limit_from_the_environment(tmp_path, monkeypatch):
    _write(tmp_path / "s", n=2)
    monkeypatch.setenv("PETFEAT_MAX_VOLUME_GB", str(300 / 1024**3))  # 300 bytes < 2 x 9 x 11 x 2
    with pytest.raises(DicomSeriesError, match=r"more than the limit"):
        read_pet_series(tmp_path / "s")
    monkeypatch.setenv("PETFEAT_MAX_VOLUME_GB", "1")
    assert read_pet_series(tmp_path / "s").stored.shape == (2, 9, 11)
    monkeypatch.setenv("PETFEAT_MAX_VOLUME_GB", "lots")
    with pytest.raises(DicomSeriesError, match=r"PETFEAT_MAX_VOLUME_GB is 'lots'"):
        read_pet_series(tmp_path / "s")


def test_short_pixel_data_refused_before_allocating(tmp_path, monkeypatch):
    _write(tmp_path / "s", n=2)
    _set_size(sorted((tmp_path / "s").glob("*.dcm"))[1:], 9, 12)
    _set_size(sorted((tmp_path / "s").glob("*.dcm"))[:1], 9, 12)
    monkeypatch.setattr(dicom.np, "empty", lambda *a, **k: pytest.fail("allocated"))
    with pytest.raises(DicomSeriesError, match=r"slice_0000\.dcm: PixelData holds 198 bytes but 9x12x2 = 216"):
        read_pet_series(tmp_path / "s")


# --- 5. several PET series in a study folder --------------------------------------------------------------------

NAC = ["NORM", "DTIM", "SCAT", "DECY", "RAN"]


def _study(root: Path) -> dict[str, str]:
    """AC (6 slices), NAC (7), a one-image MIP, a rotating MIP (8 images at one position), a derived SUV series (4)."""
    study = "1.2.826.0.1.3680043.8.498.77"
    uids = {}
    uids["ac"] = _write(root / "ac", n=6, study_uid=study, description="PET AC")["series_uid"]
    uids["nac"] = _write(root / "nac", n=7, study_uid=study, series_number=4, description="PET NAC",
                         corrected_image=NAC)["series_uid"]
    uids["mip"] = _write(root / "mip", n=1, study_uid=study, series_number=1, description="MIP",
                         image_type=["ORIGINAL", "PRIMARY"])["series_uid"]
    uids["rot"] = _write(root / "rot", n=8, study_uid=study, series_number=2, description="rotating MIP",
                         positions_mm=[5.0] * 8)["series_uid"]
    for k, f in enumerate(sorted((root / "rot").glob("*.dcm"))):  # each image turned about the patient's axis
        ds = pydicom.dcmread(f)
        a = np.deg2rad(45 * k)
        ds.ImageOrientationPatient = [f"{np.cos(a):.6f}", f"{np.sin(a):.6f}", "0", "0", "0", "-1"]
        ds.save_as(f)
    uids["suv"] = _write(root / "suv", n=4, study_uid=study, series_number=9, description="PET SUV (derived)",
                         image_type=["DERIVED", "SECONDARY"])["series_uid"]
    return uids


def test_study_folder_reads_the_attenuation_corrected_volume_and_records_the_others(tmp_path):
    uids = _study(tmp_path)
    with pytest.warns(PetfeatWarning, match=rf"holds 5 PET series of one study; read {uids['ac']} \(series 3, AC, 6 "
                      r"files\), attenuation-corrected .*Not read: .*\(series 4, NAC, 7 files\): not attenuation"):
        s = read_pet_series(tmp_path)
    assert s.series_uid == uids["ac"] and s.stored.shape == (6, 9, 11)
    choice = s.notes["series_choice"]
    assert choice["chosen"] == uids["ac"] and choice["reason"].startswith("attenuation-corrected volume of 6 files")
    why = {a["series_uid"]: a["why_not"] for a in choice["alternatives"]}
    assert why == {
        uids["nac"]: "not attenuation-corrected (CorrectedImage lacks ATTN)",
        uids["mip"]: "projection (MIP): 1 image(s) at 1 position",
        uids["rot"]: "projection (MIP): 8 image(s) at 1 position",
        uids["suv"]: "fewer files (4 < 6)",
    }
    assert {a["n_files"] for a in choice["alternatives"]} == {7, 1, 8, 4}
    kinds = {a["series_uid"]: (a["series_number"], a["kind"]) for a in choice["alternatives"]}
    assert kinds == {uids["nac"]: (4, "NAC"), uids["mip"]: (1, "MIP"), uids["rot"]: (2, "MIP"), uids["suv"]: (9, "AC")}
    assert dicom.notes_json(s.notes).startswith('{"series_choice":{"alternatives":[')
    # the header-only path makes the same choice
    with pytest.warns(PetfeatWarning, match="holds 5 PET series"):
        assert read_pet_header(tmp_path).series_uid == uids["ac"]
    # the derived SUV series is a full volume: readable when asked for (and without a warning)
    suv = read_pet_series(tmp_path, series_uid=uids["suv"])
    assert suv.stored.shape == (4, 9, 11) and suv.notes["series_choice"]["chosen"] == uids["suv"]


def test_study_folder_without_the_ac_series_prefers_the_nac_volume_over_projections(tmp_path):
    uids = _study(tmp_path)
    shutil.rmtree(tmp_path / "ac")
    with pytest.warns(PetfeatWarning, match="holds 4 PET series"):
        s = read_pet_series(tmp_path)
    assert s.series_uid == uids["suv"]  # attenuation-corrected beats more slices (NAC 7)


def _summary(uid, study="S", n=5, pos=5, ac=True, number=None, orientations=1):
    return SeriesSummary(uid, study, number, n, pos, ac, orientations)


def test_choose_pet_series_is_total_and_independent_of_order():
    cands = [_summary("1.9", number=None), _summary("1.10", number=7), _summary("1.2", number=7),
             _summary("1.3", n=9, ac=False), _summary("1.4", n=1, pos=1), _summary("1.5", n=12, pos=1)]
    results = {choose_pet_series(list(p))[0] for p in itertools.permutations(cands)}
    assert results == {"1.10"}  # SeriesNumber 7 before none; "1.10" < "1.2" as text
    uid, notes = choose_pet_series([_summary("1.4", n=1, pos=1), _summary("1.5", n=12, pos=1)])
    assert uid == "1.5" and notes["series_choice"]["reason"].startswith("attenuation-corrected image")
    assert choose_pet_series([_summary("1.7")]) == ("1.7", {})
    # rotating-MIP planes that turn (each image its own position and orientation) are no volume either
    uid, notes = choose_pet_series([_summary("1.1", n=36, pos=36, orientations=36), _summary("1.2")])
    assert uid == "1.2"
    assert notes["series_choice"]["alternatives"][0]["why_not"] == "projection (MIP): 36 image(s) in 36 orientations"
    with pytest.raises(DicomSeriesError, match=r"holds 2 PET series of 2 studies.*study A: 1\.1 .*study B: 1\.2"):
        choose_pet_series([_summary("1.1", study="A"), _summary("1.2", study="B")])
    assert choose_pet_series([_summary("1.1", study="A"), _summary("1.2", study="B")], "1.2")[0] == "1.2"
    with pytest.raises(DicomSeriesError, match="1.8 is not among"):
        choose_pet_series([_summary("1.1")], "1.8")


# --- provenance: the notes reach the tables and run.json --------------------------------------------------------


def test_reader_notes_reach_feature_and_lesion_rows_and_run_json(tmp_path):
    import json

    import pandas as pd

    from petfeat.cli import main

    z = _three_beds(per_bed=4)
    _write(tmp_path / "pet", n=len(z), positions_mm=z)
    with pytest.warns(PetfeatWarning, match="slice spacing varies"):
        notes = read_pet_header(tmp_path / "pet").notes
    with warnings.catch_warnings(record=True) as seen:  # built-in regions without organ labels warn too
        warnings.simplefilter("always")
        rc = main(["extract", "--pet", str(tmp_path / "pet"), "--threshold", "fixed:2", "--backend", "cpu",
                   "--no-peak", "-o", str(tmp_path / "out")])
    assert rc == 0
    assert any(issubclass(w.category, PetfeatWarning) and "slice spacing varies" in str(w.message) for w in seen)
    features = pd.read_parquet(tmp_path / "out" / "features.parquet")
    lesions = pd.read_parquet(tmp_path / "out" / "lesions.parquet")
    assert len(lesions) > 0
    for table in (features, lesions):
        assert set(table.input_notes) == {dicom.notes_json(notes)}
        assert json.loads(table.input_notes.iloc[0])["slice_spacing_max_deviation_mm"] == pytest.approx(0.08, abs=1e-4)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["pet_series"] == json.loads(dicom.notes_json(notes))
    assert str(tmp_path) not in features.input_notes.iloc[0]
