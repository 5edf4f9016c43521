"""The reader and SUV messages on faults found in real data: missing rescale, patient names in SeriesDescription,
slice counts, a missing radiopharmaceutical sequence, resent slices, and refusals without an override."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pydicom
import pytest
from conftest import DRO

import petfeat.io.dicom as dicom
from petfeat.cli import main
from petfeat.errors import DicomSeriesError, PetfeatWarning, SuvError
from petfeat.io.dicom import list_series, read_pet_header, read_pet_series
from petfeat.suv import SuvHeader, compute_suv_factors
from petfeat.synth.dicom_writer import Acquisition, write_pet_series

NAME = "MUSTERMANN"
DESCRIPTION = f"NAC {NAME} ERIKA 1961"


def _dro(tmp_path: Path, name: str = "DRO_1_0", edit=None, which=None) -> tuple[Path, list[Path]]:
    """A copy of one SUV reference object's PET series; ``edit(ds)`` applied to the slices ``which`` (all)."""
    dest = tmp_path / name
    dest.mkdir(parents=True)
    files = sorted((DRO / name / "PT").glob("*.dcm"))
    out = []
    for k, f in enumerate(files):
        target = dest / f.name
        if edit is not None and (which is None or k in which):
            ds = pydicom.dcmread(f)
            edit(ds)
            ds.save_as(target)
        else:
            shutil.copy(f, target)
        out.append(target)
    return dest, out


def _pydicom_only(monkeypatch):
    monkeypatch.setattr(dicom, "read_slice_header", lambda path, wanted: None)


# --- 1. RescaleSlope / RescaleIntercept are Type 1 ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["fast", "pydicom"])
def test_missing_rescale_slope_is_refused_naming_files_count_and_tag(tmp_path, monkeypatch, path):
    """DRO_1_0 without RescaleSlope gave SUVmax 1.333 instead of 4.0 (a slope of 1 assumed); now refused."""
    folder, files = _dro(tmp_path, edit=lambda ds: delattr(ds, "RescaleSlope"))
    if path == "pydicom":
        _pydicom_only(monkeypatch)
    with pytest.raises(DicomSeriesError) as err:
        read_pet_series(folder)
    msg = str(err.value)
    assert msg.startswith(r"RescaleSlope (0028,1053) is missing or empty in 20 of 20 slice(s) (")
    assert "and 19 other slice(s))" in msg and str(folder) in msg and "RescaleIntercept" not in msg
    assert "Type 1 in the PET Image module (DICOM PS3.3 C.8.9.4)" in msg and "Re-export the series" in msg
    assert "\n" not in msg


def test_one_slice_without_rescale_intercept_is_named(tmp_path):
    folder, files = _dro(tmp_path, edit=lambda ds: delattr(ds, "RescaleIntercept"), which={7})
    ds = pydicom.dcmread(files[7], stop_before_pixels=True)
    with pytest.raises(DicomSeriesError, match=r"^RescaleIntercept \(0028,1052\) is missing or empty in 1 of 20 "
                                               rf"slice\(s\) \({files[7]}\)\. Both are Type 1"):
        read_pet_series(folder)
    assert "RescaleIntercept" not in ds


def test_slices_without_either_rescale_value_name_both_in_one_message(tmp_path):
    def strip(ds):
        del ds.RescaleSlope, ds.RescaleIntercept

    folder, _ = _dro(tmp_path, edit=strip, which={0, 1})
    with pytest.raises(DicomSeriesError, match=r"RescaleSlope \(0028,1053\) is missing or empty in 2 of 20 .*; "
                                               r"RescaleIntercept \(0028,1052\) is missing or empty in 2 of 20"):
        read_pet_series(folder)


def test_the_untouched_reference_object_still_gives_suv_4(tmp_path):
    s = read_pet_series(DRO / "DRO_1_0" / "PT")
    f = compute_suv_factors(s.suv_header)
    suv = s.rescaled(np.float64) * f.suv_bw_per_slice[:, None, None]
    assert suv.max() == pytest.approx(4.0, rel=1e-3)


# --- 2. SeriesDescription (free text, may hold the patient's name) reaches no output -----------------------------


def _acq() -> Acquisition:
    t = dt.datetime(2025, 5, 1, 10, 0)
    return Acquisition("MRN0001", "Mustermann^Erika", 70.0, 1.70, "F", 200e6, t - dt.timedelta(minutes=60), t)


def _study_with_named_series(root: Path) -> dict[str, str]:
    """An AC and a NAC series of one study whose SeriesDescription holds the patient's name (as real MIRP data)."""
    rng = np.random.default_rng(1)
    vol = rng.gamma(2.0, 1.5, (6, 12, 12))
    vol[2:4, 4:8, 4:8] = 9.0  # a hot spot for the threshold
    study = "1.2.826.0.1.3680043.8.498.6001"
    ac = write_pet_series(root / "ac", vol, (4.0, 4.0, 4.0), (0.0, 0.0, 0.0), _acq(), study_uid=study,
                          series_number=3, description=f"AC {NAME} ERIKA 1961")
    nac = write_pet_series(root / "nac", vol, (4.0, 4.0, 4.0), (0.0, 0.0, 0.0), _acq(), study_uid=study,
                           series_number=4, description=DESCRIPTION,
                           corrected_image=["NORM", "DTIM", "SCAT", "DECY", "RAN"])
    return {"ac": ac["series_uid"], "nac": nac["series_uid"]}


def test_series_description_reaches_no_output_of_extract_pet(tmp_path, capsys):
    uids = _study_with_named_series(tmp_path / "study")
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rc = main(["extract", "--pet", str(tmp_path / "study"), "--threshold", "fixed:5", "--backend", "cpu",
                   "--no-peak", "--csv", "-o", str(out)])
    assert rc == 0
    console = capsys.readouterr()
    messages = [str(w.message) for w in seen]
    choice = [m for m in messages if "holds 2 PET series of one study" in m]
    assert choice and "(series 4, NAC, 6 files): not attenuation-corrected" in choice[0]
    texts = [console.out, console.err, *messages]
    for f in sorted(out.rglob("*")):
        if f.suffix in (".json", ".csv"):
            texts.append(f.read_text())
        elif f.suffix == ".parquet":
            df = pd.read_parquet(f)
            texts.append(df.astype(str).to_csv())
            texts.append(str(pq.read_schema(f).metadata))
    assert len(texts) > 8
    assert not [t for t in texts if NAME in t.upper()]
    features = pd.read_parquet(out / "features.parquet")
    notes = json.loads(features.input_notes.iloc[0])["series_choice"]
    assert notes["chosen"] == uids["ac"]
    assert notes["alternatives"] == [{"series_uid": uids["nac"], "series_number": 4, "kind": "NAC", "n_files": 6,
                                      "why_not": "not attenuation-corrected (CorrectedImage lacks ATTN)"}]
    run = json.loads((out / "run.json").read_text())
    assert run["pet_series"]["series_choice"] == notes


def test_series_description_reaches_no_exception_or_listing(tmp_path):
    _study_with_named_series(tmp_path / "study")
    for f in (tmp_path / "study" / "nac").glob("*.dcm"):  # the NAC series now belongs to another study
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.6002"
        ds.save_as(f)
    with pytest.raises(DicomSeriesError, match=r"2 studies.*\(series 3, AC, 6 files\).*\(series 4, NAC, 6 files\)") \
            as err:
        read_pet_series(tmp_path / "study")
    assert NAME not in str(err.value).upper()
    listing = list_series(tmp_path / "study")
    assert sorted(s.series_number for s in listing) == [3, 4] and NAME not in repr(listing).upper()
    with pytest.warns(PetfeatWarning, match="not attenuation-corrected"):
        header = read_pet_header(tmp_path / "study" / "nac")
    assert header.series_number == 4 and NAME not in repr(vars(header)).upper()


# --- 3. NumberOfSlices (0054,0081) against the slices read -------------------------------------------------------


def _series(folder: Path, positions=None, n=8) -> list[Path]:
    vol = np.random.default_rng(2).gamma(2.0, 1.5, (n if positions is None else len(positions), 9, 11))
    write_pet_series(folder, vol, (3.27, 4.0, 4.0), (0.0, 0.0, 5.0), _acq(), positions_mm=positions)
    return sorted(folder.glob("*.dcm"))


@pytest.mark.parametrize("end", [0, -1])
def test_a_missing_first_or_last_slice_warns_and_is_noted(tmp_path, end):
    files = _series(tmp_path / "s")
    assert pydicom.dcmread(files[0]).NumberOfSlices == 8
    files[end].unlink()
    with pytest.warns(PetfeatWarning, match=r"NumberOfSlices \(0054,0081\) is 8, but 7 slice\(s\) were read: 1 "
                                            r"slice\(s\) missing \(the first or last"):
        s = read_pet_series(tmp_path / "s")
    assert s.stored.shape[0] == 7 and s.notes == {"number_of_slices": {"header": 8, "read": 7}}
    with pytest.warns(PetfeatWarning, match="NumberOfSlices"):
        assert read_pet_header(tmp_path / "s").notes == s.notes


def test_number_of_slices_counts_every_bed_of_a_multi_bed_series(tmp_path):
    """NumberOfSlices is the whole series' count: three beds of 11 slices with junction jitter are 33."""
    gaps = [3.27] * 10 + [3.19] + [3.27] * 10 + [3.29] + [3.27] * 10
    z = 5.0 + np.concatenate([[0.0], np.cumsum(gaps)])
    files = _series(tmp_path / "beds", positions=z)
    with pytest.warns(PetfeatWarning, match="slice spacing varies") as seen:
        s = read_pet_series(tmp_path / "beds")
    assert s.stored.shape[0] == 33 and "number_of_slices" not in s.notes
    assert not any("NumberOfSlices" in str(w.message) for w in seen)
    files[-1].unlink()  # the last bed's last slice
    with pytest.warns(PetfeatWarning) as seen:  # the jitter and the count
        s = read_pet_series(tmp_path / "beds")
    assert any("slice spacing varies" in str(w.message) for w in seen)
    assert any("NumberOfSlices (0054,0081) is 33, but 32 slice(s)" in str(w.message) for w in seen)
    assert s.notes["number_of_slices"] == {"header": 33, "read": 32}


def test_slice_count_note_reaches_input_notes_and_run_json(tmp_path):
    files = _series(tmp_path / "s")
    files[0].unlink()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["extract", "--pet", str(tmp_path / "s"), "--threshold", "fixed:2", "--backend", "cpu",
                     "--no-peak", "-o", str(tmp_path / "out")]) == 0
    assert any("NumberOfSlices (0054,0081) is 8, but 7" in str(w.message) for w in seen)
    features = pd.read_parquet(tmp_path / "out" / "features.parquet")
    assert json.loads(features.input_notes.iloc[0])["number_of_slices"] == {"header": 8, "read": 7}
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["pet_series"]["number_of_slices"] == {"header": 8, "read": 7}


# --- 4. a missing RadiopharmaceuticalInformationSequence: one message, every override ----------------------------


def test_missing_radiopharmaceutical_sequence_is_one_message_with_every_override(tmp_path, capsys):
    folder, _ = _dro(tmp_path, "DRO_0_0", edit=lambda ds: delattr(ds, "RadiopharmaceuticalInformationSequence"))
    header = read_pet_header(folder)
    assert header.suv_header.radiopharmaceutical_sequence is False
    with pytest.raises(SuvError) as err:
        compute_suv_factors(header.suv_header)
    assert str(err.value) == (
        f"{folder}: RadiopharmaceuticalInformationSequence (0054,0016) is missing, so the half-life, injected dose "
        "and injection time are unknown. Fix the header or pass the overrides half_life_s=, dose_bq=, "
        "injection_datetime= (CLI: --half-life S --dose BQ --injection-time YYYY-MM-DDTHH:MM:SS).")
    # the overrides from the original header give the original factors
    rp = pydicom.dcmread(next((DRO / "DRO_0_0" / "PT").glob("*.dcm"))).RadiopharmaceuticalInformationSequence[0]
    original = compute_suv_factors(read_pet_header(DRO / "DRO_0_0" / "PT").suv_header)
    given = compute_suv_factors(header.suv_header, half_life_s=float(rp.RadionuclideHalfLife),
                                dose_bq=float(rp.RadionuclideTotalDose), injection_datetime=original.injection_datetime)
    assert given.suv_bw_factor == pytest.approx(original.suv_bw_factor, rel=1e-12)
    # one override still missing: the message names only it
    with pytest.raises(SuvError, match=r"so the injection time is unknown\. Fix the header or pass the override "
                                       r"injection_datetime= \(CLI: --injection-time YYYY-MM-DDTHH:MM:SS\)\.$"):
        compute_suv_factors(header.suv_header, half_life_s=6586.2, dose_bq=370e6)
    # the command line says it in one line
    assert main(["suv", str(folder)]) != 0
    err_line = capsys.readouterr().err.strip()
    assert "--half-life S --dose BQ --injection-time" in err_line and "\n" not in err_line


def _header(**kw) -> SuvHeader:
    t = dt.datetime(2025, 3, 4, 11, 0)
    base = dict(source="test-series", units="BQML", decay_correction="START", corrected_image=("ATTN",),
                series_datetime=t, acquisition_datetimes=[t] * 2, frame_reference_times_ms=np.full(2, np.nan),
                actual_frame_durations_ms=np.full(2, 180000.0), ge_private_scan_datetime=None,
                injection_datetime=t - dt.timedelta(hours=1), injection_time=None, total_dose_bq=370e6,
                half_life_s=6586.2, nuclide="C-111A1|^18^Fluorine", weight_kg=80.0, height_m=1.8, sex="M",
                suv_type=None, philips_suv_scale=None, philips_activity_scale=None)
    base.update(kw)
    return SuvHeader(**base)


def test_several_missing_fields_are_refused_together():
    with pytest.raises(SuvError) as err:
        compute_suv_factors(_header(weight_kg=0.0, total_dose_bq=None, half_life_s=None))
    assert str(err.value) == (
        "test-series: 3 fields the SUV needs are missing or not positive: PatientWeight (0010,1030) = 0.0; "
        "RadionuclideHalfLife (0018,1075) = None (the nuclide's: 6586.2 s); RadionuclideTotalDose (0018,1074) = None. "
        "Fix the header or pass the overrides weight_kg=, half_life_s=, dose_bq= (CLI: --weight KG --half-life S "
        "--dose BQ).")
    # one missing field keeps its own message
    with pytest.raises(SuvError, match=r"^test-series: RadionuclideTotalDose \(0018,1074\) = None is missing or not "
                                       r"positive\. Fix the header or pass the override dose_bq="):
        compute_suv_factors(_header(total_dose_bq=None))
    # already SUV (GML): dose and half-life are not needed, so not asked for
    f = compute_suv_factors(_header(units="GML", total_dose_bq=None, half_life_s=None, injection_datetime=None))
    assert f.suv_bw_factor == 1.0


# --- 5. a slice resent under a new SOPInstanceUID ----------------------------------------------------------------


def _resend(folder: Path, files: list[Path], k: int, edit=None) -> Path:
    ds = pydicom.dcmread(files[k])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    if edit is not None:
        edit(ds)
    target = folder / files[k].name.replace(".dcm", "_resent.dcm")
    ds.save_as(target)
    return target


@pytest.mark.parametrize("path", ["fast", "pydicom"])
def test_a_resent_identical_slice_is_read_once_and_noted(tmp_path, monkeypatch, path):
    folder, files = _dro(tmp_path, "DRO_0_0")
    _resend(folder, files, 5)
    if path == "pydicom":
        _pydicom_only(monkeypatch)
    with pytest.warns(PetfeatWarning, match=r"1 file\(s\) of the series repeat a slice under another "
                                            r"SOPInstanceUID .*read once"):
        s = read_pet_series(folder)
    reference = read_pet_series(DRO / "DRO_0_0" / "PT")
    np.testing.assert_array_equal(s.stored, reference.stored)
    assert s.geometry == reference.geometry and s.notes == {"duplicate_files": 1}
    assert files[5] in s.files and len(s.files) == 20


@pytest.mark.parametrize("edit", [
    lambda ds: setattr(ds, "PixelData", (ds.pixel_array + 1).astype(ds.pixel_array.dtype).tobytes()),
    lambda ds: setattr(ds, "AcquisitionTime", "235959"),
], ids=["other pixels", "other time"])
def test_another_image_at_one_position_keeps_the_dynamic_message(tmp_path, edit):
    folder, files = _dro(tmp_path, "DRO_0_0")
    _resend(folder, files, 5, edit)
    with pytest.raises(DicomSeriesError, match=r"two slices at the same position .* with different images.*"
                                               r"dynamic/gated\); split it"):
        read_pet_series(folder)


# --- 6. refusals without an override read naturally --------------------------------------------------------------


@pytest.mark.parametrize("kw, message", [
    (dict(units=None), "test-series: Units (0054,1001) is missing. No override replaces it: the series cannot be "
                       "quantified; re-export it from the scanner with Units BQML."),
    (dict(units="CNTS"), "test-series: Units (0054,1001) = 'CNTS' needs the Philips private SUV scale factor "
                         "(7053,1000) or activity concentration scale factor (7053,1009), and neither is present. "
                         "No override replaces it: export the series in BQML."),
    (dict(units="PROPCNTS"), "test-series: Units (0054,1001) = 'PROPCNTS' is not supported (BQML, CNTS, GML, "
                             "CM2ML). No override replaces it: convert the series to BQML."),
    (dict(decay_correction="WEIRD"), "test-series: DecayCorrection (0054,1102) = 'WEIRD' is not START, ADMIN or "
                                     "NONE. No override replaces it: the series cannot be quantified; re-export it "
                                     "decay-corrected to START or ADMIN."),
    (dict(decay_correction="NONE", acquisition_datetimes=[None, None]),
     "test-series: AcquisitionDate/AcquisitionTime (0008,0022/0008,0032) of slice 0 is missing (DecayCorrection "
     "NONE needs every slice's own time). No override replaces it: decay-correct the series on the scanner."),
], ids=["no units", "cnts without scale", "unsupported units", "unknown decay correction", "no slice time"])
def test_refusals_without_an_override_read_naturally(kw, message):
    with pytest.raises(SuvError) as err:
        compute_suv_factors(_header(**kw))
    assert str(err.value) == message
    assert "override none" not in message and "none exists" not in message
