"""Every branch of the SUV algorithm against a hand-computed value, and every refusal with its message."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest

from petfeat.errors import SuvError
from petfeat.suv import (
    SuvHeader,
    bsa_du_bois,
    compute_suv_factors,
    ibw,
    lbm_james,
    lbm_janmahasatian,
    parse_dt,
    parse_tm,
)

F18 = 6586.2
T_INJ = dt.datetime(2025, 3, 4, 10, 0, 0)
T_SCAN = dt.datetime(2025, 3, 4, 11, 0, 0)


def header(**kw) -> SuvHeader:
    n = kw.pop("n", 3)
    base = dict(
        source="test-series", units="BQML", decay_correction="START", corrected_image=("ATTN", "DECY"),
        series_datetime=T_SCAN, acquisition_datetimes=[T_SCAN] * n,
        frame_reference_times_ms=np.full(n, np.nan), actual_frame_durations_ms=np.full(n, 180000.0),
        ge_private_scan_datetime=None, injection_datetime=T_INJ, injection_time=T_INJ.time(),
        total_dose_bq=370e6, half_life_s=F18, nuclide="C-111A1|^18^Fluorine", weight_kg=80.0, height_m=1.80,
        sex="M", suv_type=None, philips_suv_scale=None, philips_activity_scale=None,
    )
    base.update(kw)
    return SuvHeader(**base)


def bw(weight_kg, dose, seconds, half=F18):
    # hand formula: weight(g) / (dose * 2^(-t/T))
    return weight_kg * 1000.0 / (dose * 2.0 ** (-seconds / half))


def test_bqml_start():
    f = compute_suv_factors(header())
    assert f.suv_bw_factor == pytest.approx(bw(80, 370e6, 3600), rel=1e-12)
    assert f.uptake_seconds == 3600 and f.decayed_dose_bq == pytest.approx(370e6 * 2 ** (-3600 / F18))
    assert f.scan_time_source == "SeriesDate/SeriesTime"


def test_bqml_admin_does_not_decay():
    f = compute_suv_factors(header(decay_correction="ADMIN"))
    assert f.suv_bw_factor == pytest.approx(80_000 / 370e6, rel=1e-12)


def test_none_decays_each_slice_from_its_own_time():
    times = [T_SCAN, T_SCAN + dt.timedelta(minutes=3), T_SCAN + dt.timedelta(minutes=6)]
    f = compute_suv_factors(header(decay_correction="NONE", acquisition_datetimes=times,
                                   actual_frame_durations_ms=np.full(3, 180000.0)))
    lam = math.log(2) / F18
    for z, t in enumerate(times):
        x = lam * 180.0
        t_avg = (t - T_INJ).total_seconds() + math.log(x / (1 - math.exp(-x))) / lam
        assert f.suv_bw_per_slice[z] == pytest.approx(80_000 / (370e6 * math.exp(-lam * t_avg)), rel=1e-12)
    assert f.suv_bw_factor is None and isinstance(f.to_dict()["suv_bw_factor"], list)
    assert f.suv_bw_per_slice[2] > f.suv_bw_per_slice[0]


def test_none_without_slice_time_is_refused():
    with pytest.raises(SuvError, match=r"AcquisitionDate/AcquisitionTime .* of slice 1"):
        compute_suv_factors(header(decay_correction="NONE", acquisition_datetimes=[T_SCAN, None, T_SCAN]))


def test_cnts_philips_suv_scale_factor():
    f = compute_suv_factors(header(units="CNTS", philips_suv_scale=0.000321, philips_activity_scale=7.0))
    assert f.suv_bw_factor == 0.000321


def test_cnts_philips_activity_scale_factor_then_bqml():
    f = compute_suv_factors(header(units="CNTS", philips_activity_scale=2.5))
    assert f.suv_bw_factor == pytest.approx(2.5 * bw(80, 370e6, 3600), rel=1e-12)


def test_cnts_without_philips_factors_is_refused():
    with pytest.raises(SuvError, match=r"\(7053,1000\).*\(7053,1009\)"):
        compute_suv_factors(header(units="CNTS"))


def test_gml_bw_is_already_suv():
    assert compute_suv_factors(header(units="GML", suv_type="BW")).suv_bw_factor == 1.0


def test_gml_weight_override_rescales_the_pixels_and_the_sul_alike():
    """A GML/BW pixel is activity x header weight / dose: the true SUVbw of weight W is pixel x W / header weight.

    Hand case: header 80 kg, override 64 kg -> SUVbw factor 0.8; SUL = SUVbw x LBM(64 kg) / 64.
    """
    f = compute_suv_factors(header(units="GML", suv_type="BW"), weight_kg=64.0)
    assert f.suv_bw_factor == pytest.approx(0.8, rel=1e-12)
    lbm64 = 9270 * 64 / (6680 + 216 * 64 / 1.8**2)  # Janmahasatian, men
    assert f.sul_factor == pytest.approx(0.8 * lbm64 / 64, rel=1e-12)
    assert any("rescaled to the weight 64 kg" in w for w in f.warnings)


def test_gml_lbm_with_weight_override_converts_with_the_header_body_size():
    lbm_header = 1.10 * 80 - 128 * (80 / 180) ** 2  # the vendor's LBM (header 80 kg, 1.80 m)
    f = compute_suv_factors(header(units="GML", suv_type="LBMJAMES128"), weight_kg=90.0)
    assert f.suv_bw_factor == pytest.approx(90 / lbm_header, rel=1e-12)


def test_gml_lbm_james128_converted_back_to_bw():
    # James, men: 1.10 W - 128 (W/H)^2 with H in cm: 1.10*80 - 128*(80/180)^2 = 62.7160...
    lbm = 1.10 * 80 - 128 * (80 / 180) ** 2
    f = compute_suv_factors(header(units="GML", suv_type="LBMJAMES128"))
    assert f.suv_bw_factor == pytest.approx(80 / lbm, rel=1e-12)


def test_gml_ibw_sex_o_averages():
    ibw_m, ibw_f = 48.0 + 1.06 * 28, 45.5 + 0.91 * 28
    f = compute_suv_factors(header(units="GML", suv_type="IBW", sex="O"))
    assert f.suv_bw_factor == pytest.approx(80 / ((ibw_m + ibw_f) / 2), rel=1e-12)


def test_cm2ml_is_suvbsa():
    bsa_cm2 = 0.007184 * 80**0.425 * 180**0.725 * 1e4
    f = compute_suv_factors(header(units="CM2ML"))
    assert f.suv_bw_factor == pytest.approx(80_000 / bsa_cm2, rel=1e-12)


def test_sul_janmahasatian_and_james_and_bsa():
    f = compute_suv_factors(header())
    bmi = 80 / 1.8**2
    lbm_j = 9270 * 80 / (6680 + 216 * bmi)
    assert f.lbm_kg == pytest.approx(lbm_j) and lbm_janmahasatian(80, 1.8, "M") == pytest.approx(lbm_j)
    assert f.sul_factor == pytest.approx(bw(80, 370e6, 3600) * lbm_j / 80, rel=1e-12)
    assert lbm_janmahasatian(60, 1.65, "F") == pytest.approx(9270 * 60 / (8780 + 244 * 60 / 1.65**2))
    assert lbm_james(60, 1.65, "F") == pytest.approx(1.07 * 60 - 148 * (60 / 165) ** 2)
    fj = compute_suv_factors(header(), lbm_formula="james")
    assert fj.lbm_kg == pytest.approx(1.10 * 80 - 128 * (80 / 180) ** 2)
    assert f.bsa_m2 == pytest.approx(bsa_du_bois(80, 1.8)) and f.suv_bsa_factor == pytest.approx(
        bw(80, 370e6, 3600) * bsa_du_bois(80, 1.8) * 1e4 / 80_000)
    assert np.allclose(f.factor("lbm"), f.sul_factor) and np.allclose(f.factor("bsa"), f.suv_bsa_factor)
    assert ibw(1.52, "M") == pytest.approx(48.0)


def test_sul_not_computed_without_height():
    f = compute_suv_factors(header(height_m=None))
    assert f.sul_factor is None and any("SUL not computed" in w for w in f.warnings)
    with pytest.raises(SuvError, match="PatientSize"):
        f.factor("lbm")


def test_dose_in_mbq_is_detected():
    f = compute_suv_factors(header(total_dose_bq=370.0))
    assert f.injected_dose_bq == 370e6 and any("MBq" in w for w in f.warnings)


@pytest.mark.parametrize("dose", [1e6, 5e6, 370e6, 9.9e9])
def test_header_dose_from_one_mbq_is_read_as_bq(dose):
    f = compute_suv_factors(header(total_dose_bq=dose))
    assert f.injected_dose_bq == dose and not f.decisions


def test_series_time_after_acquisition_uses_ge_private():
    ge = dt.datetime(2025, 3, 4, 10, 55)
    f = compute_suv_factors(header(series_datetime=T_SCAN + dt.timedelta(minutes=30),
                                   acquisition_datetimes=[T_SCAN] * 3, ge_private_scan_datetime=ge))
    assert f.scan_datetime == ge and f.suv_bw_factor == pytest.approx(bw(80, 370e6, 3300), rel=1e-12)


def test_series_time_after_acquisition_back_computes_from_frame_reference_time():
    frt, dur = 150_000.0, 300_000.0
    f = compute_suv_factors(header(series_datetime=T_SCAN + dt.timedelta(minutes=30),
                                   frame_reference_times_ms=np.full(3, frt),
                                   actual_frame_durations_ms=np.full(3, dur)))
    lam = math.log(2) / F18
    x = lam * dur / 1000
    expected = T_SCAN + dt.timedelta(seconds=math.log(x / (1 - math.exp(-x))) / lam - frt / 1000)
    assert f.scan_datetime == expected
    assert "FrameReferenceTime" in f.scan_time_source


def test_series_time_after_acquisition_falls_back_to_earliest_acquisition():
    early = T_SCAN - dt.timedelta(minutes=2)
    f = compute_suv_factors(header(series_datetime=T_SCAN + dt.timedelta(minutes=30),
                                   acquisition_datetimes=[T_SCAN, early, T_SCAN]))
    assert f.scan_datetime == early and f.scan_time_source == "earliest AcquisitionDate/AcquisitionTime"


def test_injection_start_time_used_when_no_datetime():
    f = compute_suv_factors(header(injection_datetime=None, injection_time=dt.time(9, 30)))
    assert f.uptake_seconds == 5400


def test_injection_before_midnight():
    scan = dt.datetime(2025, 3, 5, 0, 30)
    f = compute_suv_factors(header(series_datetime=scan, acquisition_datetimes=[scan] * 3, injection_datetime=None,
                                   injection_time=dt.time(23, 30)))
    assert f.injection_datetime == dt.datetime(2025, 3, 4, 23, 30) and f.uptake_seconds == 3600


def test_overrides_win_over_header():
    f = compute_suv_factors(header(weight_kg=None, total_dose_bq=None), weight_kg=75.0, dose_bq=300e6)
    assert f.suv_bw_factor == pytest.approx(bw(75, 300e6, 3600), rel=1e-12)
    f = compute_suv_factors(header(), injection_datetime=dt.datetime(2025, 3, 4, 10, 30), half_life_s=4057.74)
    assert f.uptake_seconds == 1800 and f.half_life_seconds == 4057.74


@pytest.mark.parametrize("kw, pattern", [
    (dict(weight_kg=None), r"PatientWeight \(0010,1030\).*weight_kg="),
    (dict(weight_kg=0.0), r"PatientWeight \(0010,1030\).*not positive"),
    (dict(weight_kg=75000.0), r"PatientWeight.*grams"),
    (dict(total_dose_bq=None), r"RadionuclideTotalDose \(0018,1074\).*dose_bq="),
    (dict(total_dose_bq=0.0), r"RadionuclideTotalDose.*not positive"),
    # 370e3: 370 MBq written in kBq, or 0.37 MBq, which no PET injection is; either guess could be 1000x wrong
    (dict(total_dose_bq=370e3), r"RadionuclideTotalDose \(0018,1074\) = 370000 is not a plausible dose in Bq "
     r"\(below 1e\+06 Bq = 1 MBq\).*--dose BQ \(if it is 370000 kBq: --dose 3.7e\+08\)"),
    (dict(total_dose_bq=2e4), r"RadionuclideTotalDose \(0018,1074\) = 20000 is not a plausible"),
    (dict(total_dose_bq=0.5), r"RadionuclideTotalDose \(0018,1074\) = 0.5 is not a plausible.*--dose BQ\)"),
    (dict(half_life_s=None), r"RadionuclideHalfLife \(0018,1075\).*half_life_s=.*fluorine: 6586.2"),
    (dict(half_life_s=4057.74), r"RadionuclideHalfLife.*disagrees with the nuclide code"),
    (dict(injection_datetime=None, injection_time=None), r"RadiopharmaceuticalStartDateTime.*injection_datetime="),
    (dict(injection_datetime=T_SCAN + dt.timedelta(hours=1)), r"negative uptake time"),
    # six months before the scan: exp(-lambda t) underflows to 0 (was a ZeroDivisionError)
    (dict(injection_datetime=T_SCAN - dt.timedelta(days=182)), r"\(0018,1078\).*half-lives\) before the scan "
     r"time 2025-03-04T11:00:00 \(from .*more than 10 half-lives.*--injection-time"),
    # two days: a factor 1e8 too large, not a note
    (dict(injection_datetime=T_SCAN - dt.timedelta(days=2)), r"\(0018,1078\).*48.0 h \(26 half-lives\)"),
    (dict(units=None), r"Units \(0054,1001\) is missing"),
    (dict(units="PROPCNTS"), r"Units.*'PROPCNTS'.*not supported"),
    (dict(decay_correction="WEIRD"), r"DecayCorrection.*'WEIRD'"),
    (dict(series_datetime=None, acquisition_datetimes=[None] * 3),
     r"SeriesDate/SeriesTime.*are missing\. No override replaces the scan time: fix the header or re-export"),
    (dict(units="GML", suv_type="LBMJAMES128", height_m=None), r"SUVType.*PatientSize.*height_m="),
])
def test_refusals_name_the_tag_and_the_fix(kw, pattern):
    with pytest.raises(SuvError, match=pattern) as info:
        compute_suv_factors(header(**kw))
    assert str(info.value).startswith("test-series: ")


def test_dicom_time_parsing():
    assert parse_tm("101530.25") == dt.time(10, 15, 30, 250000)
    assert parse_tm("1015") == dt.time(10, 15)
    assert parse_tm("10:15:30") == dt.time(10, 15, 30)
    assert parse_dt("20250304101530.000000+0100") == dt.datetime(2025, 3, 4, 10, 15, 30)
    with pytest.raises(ValueError, match="not a DICOM time"):
        parse_tm("ab")


def test_an_injection_time_given_by_hand_decides_even_far_from_the_scan():
    """The override is the user's word: long uptake is a note, and a dose decayed to nothing an error."""
    f = compute_suv_factors(header(), injection_datetime=T_SCAN - dt.timedelta(hours=20))
    assert any("more than 10 half-lives" in n for n in f.warnings) and np.isfinite(f.suv_bw_factor)
    with pytest.raises(SuvError, match=r"\(0018,1078\).*decays to nothing.*--injection-time"):
        compute_suv_factors(header(), injection_datetime=T_SCAN - dt.timedelta(days=182))


@pytest.mark.parametrize("override, message", [
    (dict(dose_bq=368.08), r"override dose_bq=368.08 \(CLI: --dose BQ\) is below 1e5 Bq.*368.08 MBq = 3.6808e\+08 Bq"),
    (dict(weight_kg=70000.0), r"override weight_kg=70000.0 \(CLI: --weight KG\).*70000 g = 70 kg"),
    (dict(height_m=175.0), r"override height_m=175.0 \(CLI: --height M\).*175 cm = 1.75 m"),
    (dict(height_m=0.2), r"override height_m=0.2 \(CLI: --height M\) is outside 0.5-2.6 m; give the height in "
                         r"metres\.$"),
    (dict(dose_bq=368.08e3), r"override dose_bq=368080.0 \(CLI: --dose BQ\) is outside 1e\+06-1e\+11 Bq.*"
                             r"368080 kBq = 3.6808e\+08 Bq"),
    (dict(dose_bq=3.68e12), r"override dose_bq=3680000000000.0 .*is outside 1e\+06-1e\+11 Bq"),
    (dict(weight_kg=-70.0), r"override weight_kg=-70.0 \(CLI: --weight KG\) is not a positive number"),
    (dict(dose_bq=0.0), r"override dose_bq=0.0 \(CLI: --dose BQ\) is not a positive number"),
    (dict(half_life_s=109.77), r"override half_life_s=109.77 \(CLI: --half-life S\) is the half-life of the header's "
                               r"nuclide \(.*Fluorine\) in minutes; give it in seconds \(6586.2\)"),
])
def test_an_override_in_the_wrong_unit_is_refused_not_reinterpreted(override, message):
    """The header's MBq dose or centimetre height is read as such (a decision); the user's own value is taken at its
    word, so one in the wrong unit is refused (a dose in MBq gave SUVs a million times too high)."""
    with pytest.raises(SuvError, match=message) as err:
        compute_suv_factors(header(), **override)
    assert "Fix the header" not in str(err.value)


def test_overrides_in_their_units_are_taken():
    f = compute_suv_factors(header(), dose_bq=368.08e6, weight_kg=70.0, height_m=1.75, half_life_s=6586.2)
    assert f.injected_dose_bq == 368.08e6 and f.weight_kg == 70.0 and f.height_m == 1.75 and not f.decisions


@pytest.mark.parametrize("where", ["header", "override"])
def test_a_child_of_15_kg_gets_suvs(where):
    """Paediatric PET: a weight under 20 kg is in range (1-350 kg), from the header and as an override."""
    f = compute_suv_factors(header(weight_kg=15.0)) if where == "header" else \
        compute_suv_factors(header(), weight_kg=15.0)
    adult = compute_suv_factors(header(weight_kg=80.0))
    assert f.weight_kg == 15.0 and f.suv_bw_per_slice[0] == pytest.approx(adult.suv_bw_per_slice[0] * 15.0 / 80.0)
