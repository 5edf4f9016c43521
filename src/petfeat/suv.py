"""Vendor-neutral SUV factors (QIBA algorithm) as a pure function of header fields.

The factors returned here multiply the *rescaled* pixel value (stored x RescaleSlope +
RescaleIntercept) to give SUV. Nothing here touches pixel data: the fused kernels fold the
factor into each slice's slope and intercept.

Branches (each one has a hand-computed test):

* Units ``BQML``: activity concentration; SUVbw = C x weight(g) / decayed dose(Bq).
* Units ``CNTS``: Philips private SUV scale factor (7053,1000) gives SUVbw directly; else the
  activity-concentration scale factor (7053,1009) turns counts into Bq/mL, then as BQML.
* Units ``GML``: already SUV. The SUVType (0054,1006) says which body-size normalisation was
  used; LBM, IBW and BSA variants are converted back to SUVbw with the patient's size.
* Units ``CM2ML``: SUVbsa; converted back to SUVbw with Du Bois BSA.
* DecayCorrection ``START``: decay the dose to the scan time; ``ADMIN``: no decay;
  ``NONE``: each slice decay-corrected from its own acquisition time and frame duration.
* Scan time: SeriesDate/Time unless later than the earliest AcquisitionDate/Time; then the GE
  private scan date/time (0009,100D), else a back-computation from FrameReferenceTime and
  ActualFrameDuration when both are positive, else the earliest acquisition date/time.
* Injection time: RadiopharmaceuticalStartDateTime, else RadiopharmaceuticalStartTime on the
  scan date, a day earlier when that lands after the scan (midnight crossing).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from petfeat.errors import SuvError, quoted_value

LN2 = math.log(2.0)

#: Half-lives in seconds of the PET nuclides, keyed by a lower-case name fragment.
NUCLIDE_HALF_LIFE_S: dict[str, float] = {
    "fluorine": 6586.2,  # F-18, 109.77 min
    "gallium": 4057.74,  # Ga-68, 67.629 min
    "carbon": 1221.84,  # C-11
    "nitrogen": 597.9,  # N-13
    "oxygen": 122.24,  # O-15
    "rubidium": 76.38,  # Rb-82
    "copper": 45721.1,  # Cu-64
    "zirconium": 282276.0,  # Zr-89
    "iodine": 360806.4,  # I-124
    "scandium": 14292.0,  # Sc-44
}
#: SNOMED/SRT code values of the nuclides in CID 4020.
NUCLIDE_CODES: dict[str, str] = {
    "C-111A1": "fluorine",
    "126502008": "fluorine",
    "C-131A3": "gallium",
    "C-131A1": "gallium",
    "C-105A1": "carbon",
    "C-107A1": "nitrogen",
    "C-B1038": "oxygen",
    "C-159A2": "rubidium",
    "C-127A1": "copper",
    "C-163AB": "zirconium",
    "C-114A4": "iodine",
}
#: Relative tolerance between a header half-life and the nuclide's known half-life.
HALF_LIFE_TOLERANCE = 0.02
#: Longest plausible uptake time in half-lives: a longer one means a wrong injection or scan date (an error).
MAX_UPTAKE_HALF_LIVES = 10

LbmFormula = Literal["janmahasatian", "james"]


@dataclass
class SuvHeader:
    """The header fields the SUV algorithm needs, parsed but not interpreted.

    Times are naive :class:`datetime.datetime` (DICOM local time; a timezone suffix is dropped).
    Per-slice fields are arrays in the slice order of the volume.
    """

    source: str
    units: str | None
    decay_correction: str | None
    corrected_image: tuple[str, ...]
    series_datetime: dt.datetime | None
    acquisition_datetimes: list[dt.datetime | None]
    frame_reference_times_ms: np.ndarray
    actual_frame_durations_ms: np.ndarray
    ge_private_scan_datetime: dt.datetime | None
    injection_datetime: dt.datetime | None
    injection_time: dt.time | None
    total_dose_bq: float | None
    half_life_s: float | None
    nuclide: str | None
    weight_kg: float | None
    height_m: float | None
    sex: str | None
    suv_type: str | None
    philips_suv_scale: float | None
    philips_activity_scale: float | None
    manufacturer: str | None = None
    #: Whether the RadiopharmaceuticalInformationSequence (0054,0016) is present; ``None``: not known (a header
    #: built by hand). Absent, half-life, dose and injection time are refused in one message.
    radiopharmaceutical_sequence: bool | None = None
    #: Header values present but not readable as their type, by DICOM keyword (``{"SeriesDate": "2024-13-45"}``),
    #: the first one of each field; the parsed field is ``None``, and messages say "malformed", not "missing".
    malformed: dict[str, str] = field(default_factory=dict)
    #: Fields that must be one value per series but differ between slices, by DICOM keyword, with a summary of the
    #: values (``{"PatientWeight": "70 kg in 99 slice(s), 52 kg in 1 slice(s) (slice 30)"}``).
    differing: dict[str, str] = field(default_factory=dict)


@dataclass
class SuvFactors:
    """SUV conversion factors for one series.

    Multiply the rescaled pixel value (stored x slope + intercept) by ``suv_bw_per_slice[z]``
    to get SUVbw in slice ``z``; ``sul_factor`` and ``suv_bsa_factor`` are the same for SUL and
    SUVbsa (``None`` when height or sex is missing). ``suv_bw_factor`` is the scalar factor when
    every slice shares it, else ``None`` (DecayCorrection NONE).

    ``warnings`` lists every note of the computation (the branch taken, what could not be computed);
    ``decisions`` the subset where a header value was reinterpreted or assumed (a dose read as MBq, a
    height read as centimetres, a missing DecayCorrection taken as START, a midnight crossing...): each
    names the DICOM field, the value read and what was assumed, and no file or patient. The command
    line shows each decision as a warning and the feature rows carry them in ``input_notes``.
    """

    suv_bw_per_slice: np.ndarray
    suv_bw_factor: float | None
    sul_factor: float | None
    suv_bsa_factor: float | None
    units: str
    decay_correction: str
    scan_datetime: dt.datetime | None
    injection_datetime: dt.datetime | None
    uptake_seconds: float | None
    half_life_seconds: float | None
    injected_dose_bq: float | None
    decayed_dose_bq: float | None
    weight_kg: float | None
    height_m: float | None
    sex: str | None
    lbm_kg: float | None
    lbm_formula: str
    bsa_m2: float | None
    scan_time_source: str
    warnings: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)

    def factor(self, suv_type: str = "bw") -> np.ndarray:
        """Per-slice factors for ``suv_type`` in ``{"bw", "lbm", "bsa"}``."""
        if suv_type == "bw":
            return self.suv_bw_per_slice
        ratio = {"lbm": self.sul_factor, "bsa": self.suv_bsa_factor}.get(suv_type, "bad")
        if ratio == "bad":
            raise ValueError(f"suv_type is {suv_type!r} and must be one of 'bw', 'lbm', 'bsa'.")
        if ratio is None:
            need = "PatientSize (0010,1020) and PatientSex (0010,0040)" if suv_type == "lbm" else (
                "PatientSize (0010,1020)")
            raise SuvError(f"{suv_type.upper()} SUV needs {need}; pass height_m=/sex= overrides.")
        # sul_factor and suv_bsa_factor are relative to the bw factor of the reference slice
        return self.suv_bw_per_slice * (ratio / self._reference_bw())

    def _reference_bw(self) -> float:
        return float(self.suv_bw_per_slice[0])

    def to_dict(self) -> dict:
        """JSON-ready dictionary (datetimes as ISO strings, arrays as lists).

        Where the SUVbw factor is per slice (a series not decay-corrected to one time), ``suv_bw_factor``,
        ``sul_factor`` and ``suv_bsa_factor`` are lists, one factor per slice.
        """
        out = asdict(self)
        out.pop("decisions")  # a subset of ``warnings``
        per_slice = out.pop("suv_bw_per_slice")
        if self.suv_bw_factor is None:  # per slice: SUL and SUVbsa too (the fields hold the reference slice's)
            out["suv_bw_factor"] = [float(x) for x in per_slice]
            for key, kind in (("sul_factor", "lbm"), ("suv_bsa_factor", "bsa")):
                if out[key] is not None:
                    out[key] = [float(x) for x in self.factor(kind)]
        for key in ("scan_datetime", "injection_datetime"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        return out


# ---------------------------------------------------------------------------------------------
# DICOM date/time parsing
# ---------------------------------------------------------------------------------------------
_TZ = re.compile(r"[+-]\d{4}$")


def parse_da(value: str | None) -> dt.date | None:
    """Parse a DICOM DA (``YYYYMMDD``; ``YYYY.MM.DD`` tolerated); ``None`` when empty."""
    if value is None or str(value).strip() == "":
        return None
    s = str(value).strip().replace(".", "").replace("-", "")
    try:
        return dt.date(int(s[0:4]), int(s[4:6]), int(s[6:8]))
    except (ValueError, IndexError) as exc:
        raise ValueError(f"not a DICOM date (YYYYMMDD): {value!r}") from exc


def parse_tm(value: str | None) -> dt.time | None:
    """Parse a DICOM TM (``HH``, ``HHMM``, ``HHMMSS``, ``HHMMSS.FFFFFF``; colons tolerated)."""
    if value is None or str(value).strip() == "":
        return None
    s = str(value).strip().replace(":", "")
    try:
        hh = int(s[0:2])
        mm = int(s[2:4]) if len(s) >= 4 else 0
        ss = int(s[4:6]) if len(s) >= 6 else 0
        frac = s[7:13] if len(s) > 7 and s[6] == "." else ""
        us = int(frac.ljust(6, "0")) if frac else 0
        return dt.time(hh, mm, min(ss, 59), us)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"not a DICOM time (HHMMSS.FFFFFF): {value!r}") from exc


def parse_dt(value: str | None) -> dt.datetime | None:
    """Parse a DICOM DT (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``); the timezone suffix is dropped."""
    if value is None or str(value).strip() == "":
        return None
    s = _TZ.sub("", str(value).strip())
    date = parse_da(s[:8])
    time = parse_tm(s[8:]) if len(s) > 8 else dt.time(0)
    return dt.datetime.combine(date, time)


def combine(date: dt.date | None, time: dt.time | None) -> dt.datetime | None:
    """Combine a date and a time; ``None`` when either is missing."""
    if date is None or time is None:
        return None
    return dt.datetime.combine(date, time)


# ---------------------------------------------------------------------------------------------
# Body size formulas
# ---------------------------------------------------------------------------------------------
def bmi(weight_kg: float, height_m: float) -> float:
    """Body mass index, kg/m2."""
    return weight_kg / height_m**2


def lbm_janmahasatian(weight_kg: float, height_m: float, sex: str) -> float:
    """Lean body mass (kg), Janmahasatian et al. 2005 (the PERCIST/EANM default for SUL)."""
    b = bmi(weight_kg, height_m)
    if sex == "M":
        return 9270.0 * weight_kg / (6680.0 + 216.0 * b)
    if sex == "F":
        return 9270.0 * weight_kg / (8780.0 + 244.0 * b)
    if sex == "O":
        return 0.5 * (lbm_janmahasatian(weight_kg, height_m, "M") + lbm_janmahasatian(weight_kg, height_m, "F"))
    raise ValueError(f"sex must be 'M', 'F' or 'O', got {sex!r}")


def lbm_james(weight_kg: float, height_m: float, sex: str) -> float:
    """Lean body mass (kg), James 1976 (``LBMJAMES128`` in DICOM SUVType for men)."""
    h_cm = height_m * 100.0
    if sex == "M":
        return 1.10 * weight_kg - 128.0 * (weight_kg / h_cm) ** 2
    if sex == "F":
        return 1.07 * weight_kg - 148.0 * (weight_kg / h_cm) ** 2
    if sex == "O":
        return 0.5 * (lbm_james(weight_kg, height_m, "M") + lbm_james(weight_kg, height_m, "F"))
    raise ValueError(f"sex must be 'M', 'F' or 'O', got {sex!r}")


def ibw(height_m: float, sex: str) -> float:
    """Ideal body weight (kg): men 48.0 + 1.06 (H - 152), women 45.5 + 0.91 (H - 152), H in cm.

    This is the IBW of the standardised SUV computation manual whose reference objects
    (``reference/suv-dro``, DRO_2_2) petfeat is tested against; sex ``O`` averages both.
    """
    h_cm = height_m * 100.0
    if sex == "M":
        return 48.0 + 1.06 * (h_cm - 152.0)
    if sex == "F":
        return 45.5 + 0.91 * (h_cm - 152.0)
    if sex == "O":
        return 0.5 * (ibw(height_m, "M") + ibw(height_m, "F"))
    raise ValueError(f"sex must be 'M', 'F' or 'O', got {sex!r}")


def bsa_du_bois(weight_kg: float, height_m: float) -> float:
    """Body surface area (m2), Du Bois & Du Bois 1916."""
    return 0.007184 * weight_kg**0.425 * (height_m * 100.0) ** 0.725


# ---------------------------------------------------------------------------------------------
# The algorithm
# ---------------------------------------------------------------------------------------------
def _avg_count_time_s(frame_s: float, lam: float) -> float:
    """Time within a frame at which the decaying activity equals its frame average."""
    x = lam * frame_s
    if x < 1e-9:
        return frame_s / 2.0
    return math.log(x / (1.0 - math.exp(-x))) / lam


def _nuclide_half_life(nuclide: str | None) -> tuple[str | None, float | None]:
    if not nuclide:
        return None, None
    key = NUCLIDE_CODES.get(nuclide.split("|")[0].strip())
    if key is None:
        low = nuclide.lower()
        key = next((k for k in NUCLIDE_HALF_LIFE_S if k in low), None)
    return key, (NUCLIDE_HALF_LIFE_S[key] if key else None)


#: Plausible patient weights (kg): newborns to the heaviest adults; outside, a wrong unit (grams) or a typo.
WEIGHT_KG = (1.0, 350.0)
#: Plausible patient heights (m); a header value in 50-260 is centimetres, an override there is refused.
HEIGHT_M = (0.5, 2.6)
#: Plausible injected activities of an override (Bq): 1 MBq to 100 GBq; outside, kBq or MBq typed as Bq.
DOSE_BQ = (1e6, 1e11)
#: How a :attr:`SuvFactors.scan_time_source` starts when the pixels needed no scan time (SUV or Philips scale).
NOT_NEEDED = "not needed"


def scan_time_origin(source: str) -> str:
    """Where factors' scan time came from ("from SeriesDate/SeriesTime"), or why none was needed."""
    return source if source.startswith(NOT_NEEDED) else f"from {source}"


def _positive(value: float | None) -> bool:
    return value is not None and np.isfinite(value) and value > 0


def compute_suv_factors(
    h: SuvHeader,
    *,
    weight_kg: float | None = None,
    height_m: float | None = None,
    sex: str | None = None,
    dose_bq: float | None = None,
    injection_datetime: dt.datetime | None = None,
    half_life_s: float | None = None,
    lbm_formula: LbmFormula = "janmahasatian",
) -> SuvFactors:
    """Compute SUV factors from parsed header fields, following the QIBA vendor-neutral algorithm.

    Parameters
    ----------
    h : SuvHeader
        Header fields of the series (see :func:`petfeat.io.dicom.read_pet_series`).
    weight_kg, height_m, sex, dose_bq, injection_datetime, half_life_s : optional
        Overrides for header fields that are missing or wrong. An override wins over the header.
    lbm_formula : {"janmahasatian", "james"}
        Lean body mass formula for SUL.

    Returns
    -------
    SuvFactors

    Raises
    ------
    SuvError
        When a needed field is missing or impossible; the message names the DICOM keyword and
        the override.
    """
    src = h.source
    notes: list[str] = []
    decided: list[str] = []  # the notes where a header value was reinterpreted or assumed

    def decide(note: str) -> None:
        notes.append(note)
        decided.append(note)

    def fail(keyword: str, problem: str, override: str | None = None, *, fix: str = "") -> SuvError:
        """A refusal naming the field; ``override`` the option that replaces it, else ``fix`` says what to do."""
        if override is not None:
            return SuvError(f"{src}: {keyword} {problem}. Fix the header or pass the override {override}.")
        return SuvError(f"{src}: {keyword} {problem}. No override replaces it: {fix}.")

    units = (h.units or "").strip().upper()
    if not units:
        raise fail("Units (0054,1001)", "is missing", fix="the series cannot be quantified; re-export it from the "
                   "scanner with Units BQML")
    if units not in ("BQML", "CNTS", "GML", "CM2ML"):
        raise fail(f"Units (0054,1001) = {quoted_value(units, 'CS')}", "is not supported (BQML, CNTS, GML, CM2ML)",
                   fix="convert the series to BQML")
    decay = (h.decay_correction or "").strip().upper()
    n_slices = len(h.acquisition_datetimes)
    for keyword, value in h.malformed.items():
        notes.append(f"{_field(h, keyword, value)}: not used")

    # --- overrides: the user's own values in the units they name (the header's are reinterpreted below) --------
    def wrong_override(name: str, value: float, problem: str) -> SuvError:
        return SuvError(f"{src}: the override {name}={value!r} {problem}.")

    for name, value, option in (("weight_kg", weight_kg, "--weight KG"), ("height_m", height_m, "--height M"),
                                ("dose_bq", dose_bq, "--dose BQ"), ("half_life_s", half_life_s, "--half-life S")):
        if value is not None and not _positive(value):
            raise wrong_override(name, value, f"(CLI: {option}) is not a positive number")
    if weight_kg is not None and not WEIGHT_KG[0] <= weight_kg <= WEIGHT_KG[1]:
        raise wrong_override("weight_kg", weight_kg, f"(CLI: --weight KG) is outside {WEIGHT_KG[0]:g}-{WEIGHT_KG[1]:g} "
                             "kg; give the weight in kilograms"
                             f"{f' ({weight_kg:g} g = {weight_kg / 1000:g} kg)' if weight_kg > WEIGHT_KG[1] else ''}")
    if height_m is not None and not HEIGHT_M[0] <= height_m <= HEIGHT_M[1]:
        raise wrong_override("height_m", height_m, f"(CLI: --height M) is outside {HEIGHT_M[0]:g}-{HEIGHT_M[1]:g} m; "
                             "give the height in metres"
                             f"{f' ({height_m:g} cm = {height_m / 100:g} m)' if 50 <= height_m <= 260 else ''}")
    if dose_bq is not None and dose_bq < 1e5:
        raise wrong_override("dose_bq", dose_bq, "(CLI: --dose BQ) is below 1e5 Bq, which no PET injection is; give "
                             f"the dose in Bq ({dose_bq:g} MBq = {dose_bq * 1e6:.6g} Bq)")
    if dose_bq is not None and not DOSE_BQ[0] <= dose_bq <= DOSE_BQ[1]:
        raise wrong_override("dose_bq", dose_bq, f"(CLI: --dose BQ) is outside {DOSE_BQ[0]:g}-{DOSE_BQ[1]:g} Bq "
                             "(1 MBq to 100 GBq); give the dose in Bq"
                             f"{f' ({dose_bq:g} kBq = {dose_bq * 1e3:.6g} Bq)' if dose_bq < DOSE_BQ[0] else ''}")
    # --- fields missing together: one message naming each and its override ----------------------------------
    needs_decay = units == "BQML" or (units == "CNTS" and not _positive(h.philips_suv_scale)
                                      and _positive(h.philips_activity_scale))
    if needs_decay:
        _refuse_missing_together(h, src, weight_kg=weight_kg, dose_bq=dose_bq,
                                 injection_datetime=injection_datetime, half_life_s=half_life_s)
    # --- weight -----------------------------------------------------------------------------
    weight = weight_kg if weight_kg is not None else h.weight_kg
    if not _positive(weight):
        raise fail(_field(h, "PatientWeight", h.weight_kg), _problem(h, "PatientWeight"),
                   "weight_kg= (CLI: --weight KG)")
    if weight_kg is None and "PatientWeight" in h.differing:
        # one patient, one weight: slices that disagree come from different exports or patients, and the first
        # slice's value would scale every SUV without anything saying which one is right
        raise fail("PatientWeight (0010,1030)",
                   f"differs between the slices of the series ({h.differing['PatientWeight']})",
                   "weight_kg= (CLI: --weight KG)")
    if not WEIGHT_KG[0] <= weight <= WEIGHT_KG[1]:
        raise fail(f"PatientWeight (0010,1030) = {weight!r} kg",
                   f"is outside {WEIGHT_KG[0]:g}-{WEIGHT_KG[1]:g} kg (grams entered?)",
                   "weight_kg= (CLI: --weight KG)")
    height = height_m if height_m is not None else h.height_m
    if height is not None and not HEIGHT_M[0] <= height <= HEIGHT_M[1]:
        if 50 <= height <= 260:  # centimetres written into a metres field
            decide(f"PatientSize (0010,1020) = {height:g} is outside {HEIGHT_M[0]:g}-{HEIGHT_M[1]:g} m: read as "
                   "centimetres and converted to "
                   f"{height / 100.0:g} m (override: --height M)")
            height = height / 100.0
        else:
            decide(f"PatientSize (0010,1020) = {height:g} m is implausible: ignored, SUL and SUVbsa are not computed "
                   "(override: --height M)")
            height = None
    sex_v = (sex or h.sex or "").strip().upper()[:1] or None

    lbm_fn = lbm_janmahasatian if lbm_formula == "janmahasatian" else lbm_james
    lbm = lbm_fn(weight, height, sex_v) if height and sex_v in ("M", "F") else None
    bsa = bsa_du_bois(weight, height) if height else None

    # --- GML / CM2ML: the pixels are already SUV of some kind ---------------------------------
    if units in ("GML", "CM2ML"):
        suv_type = (h.suv_type or ("BSA" if units == "CM2ML" else "BW")).strip().upper()
        if units == "CM2ML":
            suv_type = "BSA"
        # The pixels were normalised with the header's body size; an override corrects them:
        # SUVbw = pixel x (override weight / header weight) x (the header's SUVType -> BW conversion).
        vendor_w = h.weight_kg if _positive(h.weight_kg) and WEIGHT_KG[0] <= h.weight_kg <= WEIGHT_KG[1] else weight
        vendor_h = h.height_m
        if vendor_h is not None and 50 <= vendor_h <= 260:
            vendor_h = vendor_h / 100.0
        if vendor_h is None or not HEIGHT_M[0] <= vendor_h <= HEIGHT_M[1]:
            vendor_h = height
        vendor_sex = (h.sex or "").strip().upper()[:1] or sex_v
        to_bw = (weight / vendor_w) * _suvtype_to_bw(suv_type, vendor_w, vendor_h, vendor_sex, src)
        if weight != vendor_w:
            decide(f"Units (0054,1001) = {units}: the pixels are SUV of the header PatientWeight (0010,1030) "
                   f"{vendor_w:g} kg; rescaled to the weight {weight:g} kg (x{weight / vendor_w:.6g})")
        per_slice = np.full(n_slices, to_bw)
        return _finish(per_slice, units, decay or "UNKNOWN", None, None, None, None, None, None,
                       weight, height, sex_v, lbm, lbm_formula, bsa, f"{NOT_NEEDED} (Units {units})", notes, decided)

    # --- CNTS with the Philips SUV scale factor ----------------------------------------------
    activity_scale = 1.0
    if units == "CNTS":
        if _positive(h.philips_suv_scale):
            per_slice = np.full(n_slices, float(h.philips_suv_scale))
            notes.append("Units CNTS: Philips private SUV scale factor (7053,1000) used")
            return _finish(per_slice, units, decay or "UNKNOWN", None, None, None, None, None, None,
                           weight, height, sex_v, lbm, lbm_formula, bsa, f"{NOT_NEEDED} (Philips SUV scale)",
                           notes, decided)
        if not _positive(h.philips_activity_scale):
            raise fail("Units (0054,1001) = 'CNTS'", "needs the Philips private SUV scale factor (7053,1000) "
                       "or activity concentration scale factor (7053,1009), and neither is present",
                       fix="export the series in BQML")
        activity_scale = float(h.philips_activity_scale)
        notes.append("Units CNTS: Philips activity concentration scale factor (7053,1009) used")

    # --- half-life, dose -----------------------------------------------------------------------
    nuc_key, nuc_half = _nuclide_half_life(h.nuclide)
    half = half_life_s if half_life_s is not None else h.half_life_s
    if not _positive(half):
        hint = f" ({nuc_key}: {nuc_half} s)" if nuc_half else ""
        raise fail(_field(h, "RadionuclideHalfLife", h.half_life_s), _problem(h, "RadionuclideHalfLife"),
                   f"half_life_s={hint} (CLI: --half-life S)")
    if half_life_s is not None and nuc_half and abs(half * 60.0 / nuc_half - 1.0) <= HALF_LIFE_TOLERANCE:
        raise wrong_override("half_life_s", half_life_s, f"(CLI: --half-life S) is the half-life of the header's "
                             f"nuclide ({h.nuclide}) in minutes; give it in seconds ({nuc_half})")
    if half_life_s is None and nuc_half and abs(half / nuc_half - 1.0) > HALF_LIFE_TOLERANCE:
        raise fail(f"RadionuclideHalfLife (0018,1075) = {half} s",
                   f"disagrees with the nuclide code {h.nuclide!r} ({nuc_half} s)",
                   f"half_life_s={nuc_half} (CLI: --half-life {nuc_half})")
    dose = dose_bq if dose_bq is not None else h.total_dose_bq
    if not _positive(dose):
        raise fail(_field(h, "RadionuclideTotalDose", h.total_dose_bq), _problem(h, "RadionuclideTotalDose"),
                   "dose_bq= (CLI: --dose BQ)")
    if dose_bq is None and dose < DOSE_BQ[0]:
        # No PET injection is below 1 MBq. 1-1e4 is a dose written in MBq (a known vendor habit); 1e4-1e6 may be
        # kBq or a typo, and a guess there would scale every SUV by 1000: refused.
        if 1.0 <= dose <= 1e4:
            decide(f"RadionuclideTotalDose (0018,1074) = {dose:g} is below 1e5 Bq: read as MBq and converted to "
                   f"{dose * 1e6:.6g} Bq (override: --dose BQ)")
            dose = dose * 1e6
        else:
            kbq = f" (if it is {dose:g} kBq: --dose {dose * 1e3:.6g})" if 1e4 < dose < DOSE_BQ[0] else ""
            raise fail(f"RadionuclideTotalDose (0018,1074) = {dose:g}",
                       f"is not a plausible dose in Bq (below {DOSE_BQ[0]:g} Bq = 1 MBq) nor in MBq (1-1e4)",
                       f"dose_bq= (CLI: --dose BQ{kbq})")

    # --- times ---------------------------------------------------------------------------------
    acq = [t for t in h.acquisition_datetimes if t is not None]
    earliest_acq = min(acq) if acq else None
    scan, scan_source = _scan_datetime(h, earliest_acq, half, src)

    inj = injection_datetime or h.injection_datetime
    if inj is None:
        if h.injection_time is None:
            keywords, problem = _injection_time_problem(h)
            raise fail(keywords, problem, "injection_datetime= (CLI: --injection-time YYYY-MM-DDTHH:MM:SS)")
        inj = dt.datetime.combine(scan.date(), h.injection_time)
        if inj > scan:
            inj -= dt.timedelta(days=1)
            decide("RadiopharmaceuticalStartTime (0018,1072) is after the scan time on the scan date and there is no "
                   "RadiopharmaceuticalStartDateTime: injection taken on the day before (midnight crossing; override: "
                   "--injection-time)")
    uptake = (scan - inj).total_seconds()
    if uptake < 0:
        raise fail(f"RadiopharmaceuticalStartDateTime (0018,1078) = {inj.isoformat()}",
                   f"is after the scan time {scan.isoformat()} (negative uptake time)",
                   "injection_datetime= (CLI: --injection-time)")
    if uptake > MAX_UPTAKE_HALF_LIVES * half and units == "BQML" and decay != "ADMIN":
        if injection_datetime is None:
            # no PET is read after 10 half-lives (18 h of F-18, 11 h of Ga-68): the date of one of the two is wrong,
            # and decaying the dose that far gives a factor of 1e3 or more too large (or no number at all)
            raise fail(f"RadiopharmaceuticalStartDateTime (0018,1078) = {inj.isoformat()}",
                       f"lies {uptake / 3600:.1f} h ({uptake / half:.0f} half-lives) before the scan time "
                       f"{scan.isoformat()} (from {scan_source}), more than {MAX_UPTAKE_HALF_LIVES} half-lives",
                       "injection_datetime= (CLI: --injection-time YYYY-MM-DDTHH:MM:SS)")
        decide(f"uptake time {uptake:.0f} s is more than {MAX_UPTAKE_HALF_LIVES} half-lives (given injection time): "
               "kept as given")

    lam = LN2 / half
    weight_g = weight * 1000.0
    if decay in ("START", ""):
        if decay == "":
            decide("DecayCorrection (0054,1102) is missing: START assumed (the pixels decay-corrected to the scan "
                   "start)")
            decay = "START"
        decayed = dose * math.exp(-lam * uptake)
        if not decayed > 0:
            raise fail(f"RadiopharmaceuticalStartDateTime (0018,1078) = {inj.isoformat()}",
                       f"gives an uptake time of {uptake:.0f} s over which the dose decays to nothing",
                       "injection_datetime= (CLI: --injection-time YYYY-MM-DDTHH:MM:SS)")
        per_slice = np.full(n_slices, activity_scale * weight_g / decayed)
    elif decay == "ADMIN":
        decayed = dose
        per_slice = np.full(n_slices, activity_scale * weight_g / decayed)
    elif decay == "NONE":
        per_slice = np.empty(n_slices)
        for z, t in enumerate(h.acquisition_datetimes):
            if t is None:
                bad = [_field(h, k, None) for k in _SCAN_TIME_FIELDS[2:] if k in h.malformed]
                why = f"is missing or malformed ({', '.join(bad)} in the series)" if bad else "is missing"
                raise fail(f"AcquisitionDate/AcquisitionTime (0008,0022/0008,0032) of slice {z}",
                           f"{why} (DecayCorrection NONE needs every slice's own time)",
                           fix="decay-correct the series on the scanner")
            dur = float(h.actual_frame_durations_ms[z]) / 1000.0
            if not np.isfinite(dur) or dur < 0:
                raise fail(f"ActualFrameDuration (0018,1242) of slice {z}", "is missing or negative",
                           fix="decay-correct the series on the scanner")
            # value is the frame-average concentration: decay the dose to the frame's
            # average-count-rate time.
            t_mid = (t - inj).total_seconds() + (_avg_count_time_s(dur, lam) if dur > 0 else 0.0)
            left = dose * math.exp(-lam * t_mid)
            if not left > 0:
                raise fail(f"AcquisitionDate/AcquisitionTime (0008,0022/0008,0032) of slice {z}",
                           f"lies {t_mid:.0f} s after the injection: the dose decays to nothing",
                           "injection_datetime= (CLI: --injection-time YYYY-MM-DDTHH:MM:SS)")
            per_slice[z] = activity_scale * weight_g / left
        decayed = dose * math.exp(-lam * uptake)
        notes.append("DecayCorrection NONE: each slice decay-corrected from its own acquisition time")
    else:
        raise fail(f"DecayCorrection (0054,1102) = {quoted_value(decay, 'CS')}", "is not START, ADMIN or NONE",
                   fix="the series cannot be quantified; re-export it decay-corrected to START or ADMIN")
    return _finish(per_slice, units, decay, scan, inj, uptake, half, dose, decayed, weight, height, sex_v,
                   lbm, lbm_formula, bsa, scan_source, notes, decided)


#: The options of the command line that replace each field :func:`_refuse_missing_together` checks.
_OVERRIDES = {"weight": "weight_kg= (CLI: --weight KG)", "half_life": "half_life_s= (CLI: --half-life S)",
              "dose": "dose_bq= (CLI: --dose BQ)",
              "injection": "injection_datetime= (CLI: --injection-time YYYY-MM-DDTHH:MM:SS)"}
_RP_SEQUENCE = "RadiopharmaceuticalInformationSequence (0054,0016)"


def _refuse_missing_together(h: SuvHeader, src: str, *, weight_kg, dose_bq, injection_datetime, half_life_s) -> None:
    """One :class:`SuvError` for every field an activity-concentration series needs and lacks, with no override.

    Does nothing when at most one field is missing and the RadiopharmaceuticalInformationSequence is there:
    that field's own check then refuses it with its own message. Without the sequence, half-life, dose and
    injection time are unknown; the message names the sequence and every override still needed.
    """
    missing: dict[str, str] = {}
    if weight_kg is None and not _positive(h.weight_kg):
        missing["weight"] = _field(h, "PatientWeight", h.weight_kg)
    rp_absent = h.radiopharmaceutical_sequence is False
    if half_life_s is None and not _positive(h.half_life_s):
        _, nuc_half = _nuclide_half_life(h.nuclide)
        hint = f" (the nuclide's: {nuc_half} s)" if nuc_half else ""
        missing["half_life"] = f"{_field(h, 'RadionuclideHalfLife', h.half_life_s)}{hint}"
    if dose_bq is None and not _positive(h.total_dose_bq):
        missing["dose"] = _field(h, "RadionuclideTotalDose", h.total_dose_bq)
    if injection_datetime is None and h.injection_datetime is None and h.injection_time is None:
        missing["injection"] = _injection_time_problem(h)[0]
    rp_missing = [k for k in ("half_life", "dose", "injection") if k in missing]
    if not (len(missing) > 1 or (rp_absent and rp_missing)):
        return
    overrides = " ".join(_OVERRIDES[k].split("(CLI: ")[1].rstrip(")") for k in missing)
    keywords = ", ".join(_OVERRIDES[k].split(" ")[0] for k in missing)
    if rp_absent and rp_missing:
        names = [{"half_life": "half-life", "dose": "injected dose", "injection": "injection time"}[k]
                 for k in rp_missing]
        unknown = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        what = (f"{_RP_SEQUENCE} is missing, so the {unknown} {'is' if len(names) == 1 else 'are'} unknown"
                + (f"; {missing['weight']} {_problem(h, 'PatientWeight')} too" if "weight" in missing else ""))
    else:
        malformed = ", malformed" if any(k in h.malformed for k in _SUV_FIELDS) else ""
        what = (f"{len(missing)} fields the SUV needs are missing{malformed} or not positive: "
                + "; ".join(missing.values()))
    plural = "s" if len(missing) > 1 else ""
    raise SuvError(f"{src}: {what}. Fix the header or pass the override{plural} {keywords} (CLI: {overrides}).")


#: DICOM tags of the header fields whose malformed values messages name.
_SUV_FIELDS = {
    "PatientWeight": "(0010,1030)", "PatientSize": "(0010,1020)", "RadionuclideTotalDose": "(0018,1074)",
    "RadionuclideHalfLife": "(0018,1075)", "RadiopharmaceuticalStartDateTime": "(0018,1078)",
    "RadiopharmaceuticalStartTime": "(0018,1072)", "SeriesDate": "(0008,0021)", "SeriesTime": "(0008,0031)",
    "AcquisitionDate": "(0008,0022)", "AcquisitionTime": "(0008,0032)", "AcquisitionDateTime": "(0008,002A)",
}
#: The value representation of each SUV field that can be malformed (what a message may quote of it).
_FIELD_VR = {"RadiopharmaceuticalStartDateTime": "DT", "RadiopharmaceuticalStartTime": "TM", "SeriesDate": "DA",
             "SeriesTime": "TM", "AcquisitionDate": "DA", "AcquisitionTime": "TM", "AcquisitionDateTime": "DT"}
_SCAN_TIME_FIELDS = ("SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime")


def _field(h: SuvHeader, keyword: str, value) -> str:
    """``PatientWeight (0010,1030) = 70.0``, or ``... = 'abc' (malformed)`` when the header value did not parse."""
    bad = h.malformed.get(keyword)
    shown = f"{quoted_value(bad, _FIELD_VR.get(keyword, 'DS'))} (malformed)" if bad is not None else repr(value)
    tag = _SUV_FIELDS.get(keyword)
    return f"{keyword}{f' {tag}' if tag else ''} = {shown}"


def _problem(h: SuvHeader, keyword: str) -> str:
    """What is wrong with a numeric field that gave no positive value."""
    return "is not a number" if keyword in h.malformed else "is missing or not positive"


def _injection_time_problem(h: SuvHeader) -> tuple[str, str]:
    """The injection-time fields and why they give no injection time (missing, or malformed with their values)."""
    fields = ("RadiopharmaceuticalStartDateTime", "RadiopharmaceuticalStartTime")
    if not any(k in h.malformed for k in fields):
        return ("RadiopharmaceuticalStartDateTime (0018,1078) and RadiopharmaceuticalStartTime (0018,1072)",
                "are both missing")
    shown = [_field(h, k, None) if k in h.malformed else f"{k} {_SUV_FIELDS[k]} absent" for k in fields]
    return " and ".join(shown), "give no injection time (malformed: not a DICOM date-time DT or time TM)"


def _scan_datetime(h: SuvHeader, earliest_acq: dt.datetime | None, half: float, src: str):
    series = h.series_datetime
    if series is None and earliest_acq is None:
        bad = [f"{_field(h, k, None)}" for k in _SCAN_TIME_FIELDS if k in h.malformed]
        problem = "are missing" if not bad else f"give no scan time: {', '.join(bad)}"
        raise SuvError(f"{src}: SeriesDate/SeriesTime (0008,0021/0008,0031) and AcquisitionDate/AcquisitionTime "
                       f"(0008,0022/0008,0032) {problem}. No override replaces the scan time: fix the header or "
                       "re-export the series.")
    if earliest_acq is None:
        return series, "SeriesDate/SeriesTime"
    if series is not None and series <= earliest_acq:
        return series, "SeriesDate/SeriesTime"
    if h.ge_private_scan_datetime is not None:
        return h.ge_private_scan_datetime, "GE private scan date/time (0009,100D)"
    z0 = int(np.argmin([t.timestamp() if t else np.inf for t in h.acquisition_datetimes]))
    frt = float(h.frame_reference_times_ms[z0]) if len(h.frame_reference_times_ms) else np.nan
    dur = float(h.actual_frame_durations_ms[z0]) if len(h.actual_frame_durations_ms) else np.nan
    if np.isfinite(frt) and np.isfinite(dur) and frt > 0 and dur > 0:
        lam = LN2 / half
        back = earliest_acq + dt.timedelta(seconds=_avg_count_time_s(dur / 1000.0, lam) - frt / 1000.0)
        return back, "AcquisitionDateTime + average count time - FrameReferenceTime"
    return earliest_acq, "earliest AcquisitionDate/AcquisitionTime"


def _suvtype_to_bw(suv_type: str, weight: float, height: float | None, sex: str | None, src: str) -> float:
    """Factor from a GML/CM2ML pixel of the given SUVType to SUVbw."""
    if suv_type in ("BW", ""):
        return 1.0
    if height is None:
        raise SuvError(f"{src}: SUVType (0054,1006) = {suv_type!r} needs PatientSize (0010,1020) to convert to "
                       "SUVbw, and it is missing. Pass the override height_m= (CLI: --height M).")
    if suv_type == "BSA":
        return weight * 1000.0 / (bsa_du_bois(weight, height) * 1e4)
    if sex not in ("M", "F", "O"):
        raise SuvError(f"{src}: SUVType (0054,1006) = {suv_type!r} needs PatientSex (0010,0040) M, F or O, got "
                       f"{sex!r}. Pass the override sex= (CLI: --sex M|F).")
    if suv_type in ("LBM", "LBMJAMES128"):
        return weight / lbm_james(weight, height, sex)
    if suv_type == "LBMJANMA":
        return weight / lbm_janmahasatian(weight, height, sex)
    if suv_type == "IBW":
        return weight / ibw(height, sex)
    raise SuvError(f"{src}: SUVType (0054,1006) = {quoted_value(suv_type, 'CS')} is not one of BW, BSA, LBM, "
                   "LBMJAMES128, LBMJANMA, IBW. Convert the series to BQML or GML/BW.")


def _finish(per_slice, units, decay, scan, inj, uptake, half, dose, decayed, weight, height, sex, lbm,
            lbm_formula, bsa, scan_source, notes, decided=()) -> SuvFactors:
    per_slice = np.asarray(per_slice, dtype=np.float64)
    uniform = bool(np.all(per_slice == per_slice[0])) if per_slice.size else True
    ref = float(per_slice[0]) if per_slice.size else float("nan")
    sul = ref * lbm / weight if lbm else None
    suvbsa = ref * bsa * 1e4 / (weight * 1000.0) if bsa else None
    if lbm is None:
        notes.append("SUL not computed: needs PatientSize and PatientSex M or F")
    return SuvFactors(
        suv_bw_per_slice=per_slice, suv_bw_factor=ref if uniform else None, sul_factor=sul,
        suv_bsa_factor=suvbsa, units=units, decay_correction=decay, scan_datetime=scan,
        injection_datetime=inj, uptake_seconds=uptake, half_life_seconds=half, injected_dose_bq=dose,
        decayed_dose_bq=decayed, weight_kg=weight, height_m=height, sex=sex, lbm_kg=lbm,
        lbm_formula=lbm_formula, bsa_m2=bsa, scan_time_source=scan_source, warnings=list(notes),
        decisions=list(decided),
    )
