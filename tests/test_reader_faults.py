"""The PET reader and SUV header on planted faults: a pixel format that does not match the pixel data, nonsense
geometry, absurd rescale values, malformed dates and times, a weight that differs between slices, multi-frame and
invalid PixelRepresentation slices. Each test feeds the fault to the reader (both the fast header scan and pydicom
where they differ) and checks that it is refused by name, or read as it should be."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import DRO
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.tag import BaseTag

import petfeat.io.dicom as dicom
from petfeat.errors import DicomSeriesError, SuvError
from petfeat.io.dicom import read_pet_header, read_pet_series
from petfeat.suv import compute_suv_factors

PATHS = ["fast", "pydicom"]


def _dro(tmp_path: Path, edit=None, which=None, name: str = "DRO_1_0") -> tuple[Path, list[Path]]:
    """A copy of one SUV reference object's PET series (20 slices, 256 x 256, int16); ``edit(ds, k)`` applied to
    the slices ``which`` (all when ``None``)."""
    dest = tmp_path / name
    dest.mkdir(parents=True)
    out = []
    for k, f in enumerate(sorted((DRO / name / "PT").glob("*.dcm"))):
        target = dest / f.name
        if edit is not None and (which is None or k in which):
            ds = pydicom.dcmread(f)
            edit(ds, k)
            ds.save_as(target)
        else:
            shutil.copy(f, target)
        out.append(target)
    return dest, out


def _raw(tag: int, vr: str, value: str):
    """An edit writing ``value`` as it is (no validation: the faults are invalid values)."""
    def edit(ds, k):
        ds[tag] = DataElement(tag, vr, value, validation_mode=0)
    return edit


def _on(path: str, monkeypatch) -> None:
    if path == "pydicom":
        monkeypatch.setattr(dicom, "read_slice_header", lambda path, wanted: None)


# --- 1. the pixel format must match the pixel data ------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_bits_allocated_8_on_16_bit_pixel_data_is_refused(tmp_path, monkeypatch, path):
    """8/8/7 bits over 2-byte pixels read as 8-bit halves gave SUVmean ~0.001; the length now names the mismatch."""
    def eight_bits(ds, k):
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7

    folder, files = _dro(tmp_path, eight_bits)
    _on(path, monkeypatch)
    with pytest.raises(DicomSeriesError) as err:
        read_pet_series(folder)
    msg = str(err.value)
    assert msg.startswith(f"{files[0]}: PixelData (7FE0,0010) holds 131072 bytes, but BitsAllocated (0028,0100) = 8 "
                          "with Rows x Columns = 256 x 256 gives 65536 bytes per frame (it holds 2 bytes per pixel: "
                          "16-bit values).")
    assert "Replace the file or re-export the series." in msg


@pytest.mark.parametrize("path", PATHS)
def test_pixel_data_longer_than_the_header_says_is_refused(tmp_path, monkeypatch, path):
    def longer(ds, k):
        ds.PixelData = ds.PixelData + b"\0" * 10

    folder, files = _dro(tmp_path, longer, which={5})
    _on(path, monkeypatch)
    with pytest.raises(DicomSeriesError, match=rf"^{files[5]}: PixelData \(7FE0,0010\) holds 131082 bytes, but "
                                               r"BitsAllocated \(0028,0100\) = 16 .* gives 131072 bytes per frame\. "):
        read_pet_series(folder)


@pytest.mark.parametrize("path", PATHS)
def test_odd_8_bit_slices_with_their_pad_byte_read_exactly(tmp_path, monkeypatch, path):
    """An odd number of 8-bit pixels is padded to an even length: one byte more than the pixels is accepted."""
    src = sorted((DRO / "DRO_1_0" / "PT").glob("*.dcm"))[:3]
    expected = []
    (tmp_path / "odd").mkdir()
    for k, f in enumerate(src):
        ds = pydicom.dcmread(f)
        pixels = (np.arange(15 * 17, dtype=np.uint16).reshape(15, 17) * (k + 1) % 256).astype(np.uint8)
        ds.Rows, ds.Columns = 15, 17
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = pixels.tobytes()
        ds.save_as(tmp_path / "odd" / f.name)
        assert len(pydicom.dcmread(tmp_path / "odd" / f.name).PixelData) == 15 * 17 + 1
        expected.append(pixels)
    _on(path, monkeypatch)
    series = read_pet_series(tmp_path / "odd")
    assert series.stored.dtype == np.uint8
    np.testing.assert_array_equal(series.stored, np.stack(expected))


@pytest.mark.parametrize("path", PATHS)
def test_pixel_representation_7_is_refused(tmp_path, monkeypatch, path):
    """Read as unsigned before; PixelRepresentation has only the values 0 and 1."""
    folder, files = _dro(tmp_path, lambda ds, k: setattr(ds, "PixelRepresentation", 7))
    _on(path, monkeypatch)
    with pytest.raises(DicomSeriesError, match=rf"^{files[0]}: PixelRepresentation \(0028,0103\) is 7; it must be 0 "
                                               r"\(unsigned\) or 1 \(two's complement\)"):
        read_pet_series(folder)


@pytest.mark.parametrize("path", PATHS)
def test_one_slice_with_two_frames_is_refused(tmp_path, monkeypatch, path):
    """Only the first slice's NumberOfFrames was checked: slice 12 saying 2 frames was read as one."""
    folder, files = _dro(tmp_path, lambda ds, k: setattr(ds, "NumberOfFrames", 2), which={12})
    _on(path, monkeypatch)
    with pytest.raises(DicomSeriesError, match=rf"^{files[12]}: NumberOfFrames \(0028,0008\) is 2: multi-frame PET "
                                               "is not supported"):
        read_pet_series(folder)


def test_number_of_frames_zero_is_refused(tmp_path):
    folder, files = _dro(tmp_path, lambda ds, k: setattr(ds, "NumberOfFrames", 0), which={3})
    with pytest.raises(DicomSeriesError, match=rf"^{files[3]}: NumberOfFrames \(0028,0008\) is '0', not a whole "
                                               "number of frames"):
        read_pet_series(folder)


# --- 2. geometry: unit, orthogonal orientation; positive pixel spacing and slice thickness ---------------------


IOP, PS = 0x00200037, 0x00280030


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("value, problem", [
    ("1\\0\\0\\0.5\\1\\0", r"the column direction \(values 4-6\) has length 1\.118; the two directions are not at "
                           r"right angles \(dot product 0\.5\)\."),
    ("0\\0\\0\\0\\0\\0", r"the row direction \(values 1-3\) has length 0; the column direction \(values 4-6\) has "
                         r"length 0\."),
    ("2\\0\\0\\0\\2\\0", r"the row direction \(values 1-3\) has length 2; the column direction \(values 4-6\) has "
                         r"length 2\."),
], ids=["not_orthogonal", "zero", "length_2"])
def test_nonsense_orientation_in_every_slice_is_refused(tmp_path, monkeypatch, path, value, problem):
    """Non-orthogonal gave wrong volumes silently; all zeros blamed 'two slices at the same position'."""
    folder, files = _dro(tmp_path, _raw(IOP, "DS", value))
    _on(path, monkeypatch)
    with pytest.raises(DicomSeriesError) as err:
        read_pet_header(folder)
    msg = str(err.value)
    assert msg.startswith(f"{files[0]}: ImageOrientationPatient (0020,0037) is {value} in 20 of 20 slice(s): ")
    assert len(re.findall(problem, msg)) == 1, msg
    assert "same position" not in msg and "re-export the series" in msg


def test_one_slice_with_a_non_orthogonal_orientation_is_named(tmp_path):
    folder, files = _dro(tmp_path, _raw(IOP, "DS", "1\\0\\0\\0.5\\1\\0"), which={9})
    with pytest.raises(DicomSeriesError, match=rf"^{files[9]}: ImageOrientationPatient \(0020,0037\) is "
                                               r"1\\0\\0\\0\.5\\1\\0 in this slice: "):
        read_pet_series(folder)


def test_orientation_rounded_by_the_writer_is_read(tmp_path):
    """Cosines written with four decimals (length 1 +- 1e-4) are no fault."""
    folder, _ = _dro(tmp_path, _raw(IOP, "DS", "0.9999\\0.0141\\0\\-0.0141\\0.9999\\0"))
    header = read_pet_header(folder)
    assert header.geometry.direction[0] == pytest.approx(0.9999)
    assert header.geometry.shape == (20, 256, 256)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("value", ["0\\0", "-4\\-4", "4\\0", "nan\\4"], ids=["zero", "negative", "one_zero", "nan"])
def test_pixel_spacing_not_positive_is_refused(tmp_path, monkeypatch, path, value):
    """0 and negative spacings gave 'none of the classes overlaps the PET field of view' from the label reader."""
    folder, files = _dro(tmp_path, _raw(PS, "DS", value))
    _on(path, monkeypatch)
    pattern = (rf"^{files[0]}: PixelSpacing \(0028,0030\) is .* in 20 of 20 slice\(s\); it must be two positive finite "
               "numbers" if value != "nan\\4" else rf"^{files[0]}: ImageOrientationPatient needs 6 and PixelSpacing 2 "
               "finite numbers")
    with pytest.raises(DicomSeriesError, match=pattern):
        read_pet_series(folder)


def test_one_slice_with_zero_pixel_spacing_is_named_for_its_value(tmp_path):
    folder, files = _dro(tmp_path, _raw(PS, "DS", "0\\0"), which={4})
    with pytest.raises(DicomSeriesError, match=rf"^{files[4]}: PixelSpacing \(0028,0030\) is 0\\0 in this slice; it "
                                               "must be two positive finite numbers"):
        read_pet_series(folder)


@pytest.mark.parametrize("value", ["0", "-4", "inf"])
def test_one_slice_volume_needs_a_positive_slice_thickness(tmp_path, value):
    """A single slice takes its spacing from SliceThickness; 0 became 1 mm and -4 a negative voxel size."""
    folder, files = _dro(tmp_path, _raw(0x00180050, "DS", value), which={10})
    with pytest.raises(DicomSeriesError, match=rf"^{files[10]}: SliceThickness \(0018,0050\) is '{value}'; a "
                                               "one-slice volume takes its slice spacing from it"):
        read_pet_header([files[10]])
    assert read_pet_header([files[11]]).geometry.spacing[0] == 4.0


# --- 3. rescale values --------------------------------------------------------------------------------------------


SLOPE, INTERCEPT = 0x00281053, 0x00281052


@pytest.mark.parametrize("path", PATHS)
def test_one_slice_slope_1e300_is_refused_against_the_median(tmp_path, monkeypatch, path):
    """Gave bone SUVmax 1e300 with only a numpy overflow warning."""
    folder, files = _dro(tmp_path, _raw(SLOPE, "DS", "1e300"), which={8})
    _on(path, monkeypatch)
    with pytest.raises(DicomSeriesError, match=rf"^{files[8]}: RescaleSlope \(0028,1053\) is 1e\+300; 2\.5e\+299 "
                                               r"times the series' median slope 4; .*more than 1e\+06 is no scaling"):
        read_pet_series(folder)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_intercept_is_refused(tmp_path, value):
    """An infinite intercept on one slice gave suv_max inf and suv_mean NaN with no warning."""
    folder, files = _dro(tmp_path, _raw(INTERCEPT, "DS", value), which={14})
    with pytest.raises(DicomSeriesError, match=rf"^{files[14]}: RescaleIntercept \(0028,1052\) is {value}; it must "
                                               "be a finite number"):
        read_pet_series(folder)


def test_negative_slope_in_every_slice_is_refused(tmp_path):
    """Every SUV came out negative (tumour SUVmean about -18)."""
    folder, files = _dro(tmp_path, _raw(SLOPE, "DS", "-4"))
    with pytest.raises(DicomSeriesError, match=rf"^{files[0]}: RescaleSlope \(0028,1053\) is -4 \(and in 19 other of "
                                               r"the 20 slices\); a negative slope turns every activity negative"):
        read_pet_series(folder)


@pytest.mark.parametrize("tag, keyword, reach", [(SLOPE, "RescaleSlope", "3.28e+304"),
                                                 (INTERCEPT, "RescaleIntercept", "1e+300")], ids=["slope", "intercept"])
def test_absurd_rescale_in_every_slice_is_refused_by_the_float32_range(tmp_path, tag, keyword, reach):
    """1e300 in every slice passes the median check; int16 values times it leave float32."""
    folder, files = _dro(tmp_path, _raw(tag, "DS", "1e300"))
    pattern = (rf"^{files[0]}: {keyword} \(0028,105[23]\) is 1e\+300 \(and in 19 other of the 20 slices\); "
               rf"rescaled 16-bit values reach {re.escape(reach)}, beyond the range of 32-bit floats")
    with pytest.raises(DicomSeriesError, match=pattern):
        read_pet_series(folder)


def test_slopes_that_differ_by_100_between_slices_are_read(tmp_path):
    """Per-slice scaling of 16-bit data gives slopes a factor ~100 apart within real series: no fault."""
    def scale(ds, k):
        ds.RescaleSlope = f"{4.0 * (100.0 if k % 2 else 0.01):g}"

    folder, _ = _dro(tmp_path, scale)
    series = read_pet_series(folder)
    assert series.slope.min() == pytest.approx(0.04) and series.slope.max() == pytest.approx(400.0)


# --- 4. malformed dates and times, a weight that differs between slices -----------------------------------------


def test_malformed_series_and_acquisition_dates_are_named_as_malformed(tmp_path):
    def dates(ds, k):
        for tag in (0x00080021, 0x00080022):
            ds[tag] = DataElement(tag, "DA", "2024-13-45", validation_mode=0)

    folder, _ = _dro(tmp_path, dates)
    header = read_pet_header(folder)
    assert header.suv_header.malformed == {"SeriesDate": "2024-13-45", "AcquisitionDate": "2024-13-45"}
    with pytest.raises(SuvError) as err:
        compute_suv_factors(header.suv_header)
    msg = str(err.value)
    assert "give no scan time: SeriesDate (0008,0021) = '2024-13-45' (malformed), AcquisitionDate (0008,0022) = " \
           "'2024-13-45' (malformed)." in msg
    assert "missing" not in msg


def test_malformed_series_date_beside_a_good_acquisition_time_is_noted(tmp_path):
    folder, _ = _dro(tmp_path, _raw(0x00080021, "DA", "2024-13-45"))
    factors = compute_suv_factors(read_pet_header(folder).suv_header)
    assert "SeriesDate (0008,0021) = '2024-13-45' (malformed): not used" in factors.warnings
    assert "SeriesDate" not in factors.scan_time_source


def test_malformed_injection_times_are_named_with_their_values(tmp_path):
    """Gave 'RadiopharmaceuticalStartDateTime ... and RadiopharmaceuticalStartTime ... are both missing'."""
    def times(ds, k):
        rp = ds.RadiopharmaceuticalInformationSequence[0]
        rp[0x00181072] = DataElement(0x00181072, "TM", "ABCDEF", validation_mode=0)
        rp[0x00181078] = DataElement(0x00181078, "DT", "2024XX18", validation_mode=0)

    folder, _ = _dro(tmp_path, times)
    with pytest.raises(SuvError) as err:
        compute_suv_factors(read_pet_header(folder).suv_header)
    msg = str(err.value)
    assert msg.endswith(": RadiopharmaceuticalStartDateTime (0018,1078) = '2024XX18' (malformed) and "
                        "RadiopharmaceuticalStartTime (0018,1072) = 'ABCDEF' (malformed) give no injection time "
                        "(malformed: not a DICOM date-time DT or time TM). Fix the header or pass the override "
                        "injection_datetime= (CLI: --injection-time YYYY-MM-DDTHH:MM:SS).")


def test_malformed_dose_is_named_as_not_a_number(tmp_path):
    def dose(ds, k):
        rp = ds.RadiopharmaceuticalInformationSequence[0]
        rp[0x00181074] = RawDataElement(BaseTag(0x00181074), "DS", 4, b"lots", 0, False, True)

    folder, _ = _dro(tmp_path, dose)
    with pytest.raises(SuvError, match=r"RadionuclideTotalDose \(0018,1074\) = 'lots' \(malformed\) is not a "
                                       r"number\. Fix the header or pass the override dose_bq="):
        compute_suv_factors(read_pet_header(folder).suv_header)


@pytest.mark.parametrize("path", PATHS)
def test_a_weight_that_differs_between_slices_is_refused_unless_overridden(tmp_path, monkeypatch, path):
    """The first slice's weight was used whatever the others said (52 kg in one slice of a 70 kg patient)."""
    folder, files = _dro(tmp_path, _raw(0x00101030, "DS", "52.0"), which={13})
    _on(path, monkeypatch)
    header = read_pet_header(folder)
    z = header.files.index(files[13])
    with pytest.raises(SuvError) as err:
        compute_suv_factors(header.suv_header)
    assert str(err.value).endswith(
        f": PatientWeight (0010,1030) differs between the slices of the series (70 kg in 19 slice(s), 52 kg in 1 "
        f"slice(s) (slice {z})). Fix the header or pass the override weight_kg= (CLI: --weight KG).")
    assert compute_suv_factors(header.suv_header, weight_kg=70.0).weight_kg == 70.0


def test_the_same_weight_written_differently_is_one_weight(tmp_path):
    folder, _ = _dro(tmp_path, _raw(0x00101030, "DS", "70"), which={2, 3})
    header = read_pet_header(folder)
    assert header.suv_header.differing == {}
    assert compute_suv_factors(header.suv_header).weight_kg == 70.0


def test_bits_allocated_8_in_a_deflated_file_is_refused_too(tmp_path):
    """Deflated files are inflated by pydicom and then checked like uncompressed ones."""
    ds = pydicom.dcmread(sorted((DRO / "DRO_1_0" / "PT").glob("*.dcm"))[10])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm")
    assert len((tmp_path / "deflated.dcm").read_bytes()) < 131072  # really deflated
    with pytest.raises(DicomSeriesError, match=r"PixelData \(7FE0,0010\) holds 131072 bytes, but BitsAllocated "
                                               r"\(0028,0100\) = 8 .* \(it holds 2 bytes per pixel: 16-bit values\)"):
        read_pet_series([tmp_path / "deflated.dcm"])


def test_a_malformed_acquisition_time_under_decay_correction_none_is_named(tmp_path):
    """DecayCorrection NONE needs each slice's time: a malformed one is named with its value, not as missing."""
    def edit(ds, k):
        ds.DecayCorrection = "NONE"
        if k == 5:
            ds[0x00080032] = DataElement(0x00080032, "TM", "99:99", validation_mode=0)

    folder, files = _dro(tmp_path, edit)
    header = read_pet_header(folder)
    z = header.files.index(files[5])
    with pytest.raises(SuvError, match=rf"AcquisitionDate/AcquisitionTime \(0008,0022/0008,0032\) of slice {z} is "
                                       r"missing or malformed \(AcquisitionTime \(0008,0032\) = '99:99' \(malformed\) "
                                       r"in the series\) \(DecayCorrection NONE needs every slice's own time\)"):
        compute_suv_factors(header.suv_header)


def test_a_value_run_on_by_a_damaged_length_quotes_no_text_of_the_elements_after_it(tmp_path):
    """A damaged length ran PixelSpacing into the next elements, a patient's name included, and the refusal quoted
    it all (14,037 characters in one fuzzed file); an intact malformed value is still quoted as it is."""
    from petfeat.errors import quoted_value

    run_on = "8.0000\\8.0000 (\x00Q\x00CS\x1c\x00NORM\\DTIM\\ATTN (\x00T\x02LO\x18\x00Doe^John MRN1234567 PET"

    def spacing(ds, k):
        ds[0x00280030] = RawDataElement(BaseTag(0x00280030), "DS", len(run_on), run_on.encode("latin-1"), 0,
                                        False, True)

    folder, _ = _dro(tmp_path, spacing, which={7})
    with pytest.raises(DicomSeriesError) as info:
        read_pet_series(folder)
    msg = str(info.value)
    assert "PixelSpacing is '8.0000\\\\8.0000 ????????????\\\\????\\\\...', not a number" in msg
    assert "Doe" not in msg and "John" not in msg and "1234567" not in msg and len(msg) < 400
    assert quoted_value("lots", "DS") == "'lots'" and quoted_value("2024XX18", "DA") == "'2024XX18'"
    assert quoted_value("1.2.840.10008.1.2.1\x00\x02Doe^John", "UI") == "'1.2.840.10008.1.2.1??????????'"
    assert quoted_value("BQML" + "X" * 20, "CS") == "'BQMLXXXXXXXXXXXXXXXXXXXX'"  # letters a CS holds, capped
