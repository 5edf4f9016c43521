"""CTCAE v5.0 grades of the haematological laboratory adverse events.

Grades follow the CTCAE v5.0 (Common Terminology Criteria for Adverse Events, NCI, 2017) lower
bounds, converted to one canonical unit per test:

============================  ==========  ================  ==============  ==============  ===========
test                          unit        grade 1           grade 2         grade 3         grade 4
============================  ==========  ================  ==============  ==============  ===========
haemoglobin (anaemia)         g/dL        <LLN - 10.0       <10.0 - 8.0     <8.0            (clinical)
neutrophils (count decreased) 10^9/L      <LLN - 1.5        <1.5 - 1.0      <1.0 - 0.5      <0.5
platelets (count decreased)   10^9/L      <LLN - 75         <75 - 50        <50 - 25        <25
white cells (count decreased) 10^9/L      <LLN - 3.0        <3.0 - 2.0      <2.0 - 1.0      <1.0
lymphocytes (count decreased) 10^9/L      <LLN - 0.8        <0.8 - 0.5      <0.5 - 0.2      <0.2
============================  ==========  ================  ==============  ==============  ===========

"<a - b" means b <= value < a. Haemoglobin reported in mmol/L is graded by CTCAE's own printed
mmol/L bounds (grade 2 below 6.2, grade 3 below 4.9 mmol/L; grade 1 below the LLN in mmol/L), not by
converting to g/dL: the printed bounds are rounded (8.0 g/dL is 4.966 mmol/L), and the two disagree
at 4.9-4.966 and 6.2-6.207 mmol/L. ``value_canonical`` still holds g/dL (factor 1.611).
Anaemia grade 4 needs clinical information (life-threatening
consequences), so laboratory values grade anaemia 0-3. Grade 1 needs the lower limit of normal
(LLN): the lab's own when given, else :data:`DEFAULT_LLN` (recorded in the output).

A value outside :data:`PLAUSIBLE` (physiological, generous limits in the canonical unit) or below 0 is
refused with the row and the unit that would make it plausible: a value in the wrong unit (haemoglobin in
g/dL labelled g/L, platelets per uL labelled 10^9/L) would otherwise be graded as a toxicity or hide one.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from petfeat.errors import PetfeatError
from petfeat.stats.errors import ClinicalDataError

TESTS = ("haemoglobin", "neutrophils", "platelets", "white_cells", "lymphocytes")
#: Grade-2, -3, -4 lower bounds in the canonical unit (a value below bound k has at least grade k).
BOUNDS = {
    "haemoglobin": (10.0, 8.0, None),
    "neutrophils": (1.5, 1.0, 0.5),
    "platelets": (75.0, 50.0, 25.0),
    "white_cells": (3.0, 2.0, 1.0),
    "lymphocytes": (0.8, 0.5, 0.2),
}
CANONICAL_UNIT = {"haemoglobin": "g/dL", "neutrophils": "10^9/L", "platelets": "10^9/L", "white_cells": "10^9/L",
                  "lymphocytes": "10^9/L"}
#: Lower limits of normal used when a lab row has none (adult men).
DEFAULT_LLN = {"haemoglobin": 13.0, "neutrophils": 2.0, "platelets": 150.0, "white_cells": 4.0, "lymphocytes": 1.0}
#: Haemoglobin: g/dL per mmol/L (CTCAE: 8.0 g/dL = 4.9 mmol/L).
HB_GDL_PER_MMOLL = 1.611
#: CTCAE v5.0 anaemia grade-2 and -3 bounds as printed in mmol/L.
HB_BOUNDS_MMOLL = (6.2, 4.9, None)
#: Plausible values in the canonical unit (physiological, generous); outside them the unit is likely wrong.
PLAUSIBLE = {"haemoglobin": (2.0, 25.0), "neutrophils": (0.0, 100.0), "platelets": (0.0, 2000.0),
             "white_cells": (0.0, 500.0), "lymphocytes": (0.0, 500.0)}
#: Known units as written in exports (UCUM ``10*9/L``, ``K/uL``, ``Gpt/L``, ...) and their factors to the canonical
#: unit, per kind of test; the first spelling of each factor is the one suggested in messages.
_HB_SPELLINGS = {"g/dL": 1.0, "g/L": 0.1, "mmol/L": HB_GDL_PER_MMOLL, "g/100mL": 1.0}
_COUNT_SPELLINGS = {"10^9/L": 1.0, "x10^9/L": 1.0, "10*9/L": 1.0, "G/L": 1.0, "Gpt/L": 1.0, "/nL": 1.0,
                    "10^3/uL": 1.0, "x10^3/uL": 1.0, "10*3/uL": 1.0, "K/uL": 1.0, "10^3/mm3": 1.0,
                    "/uL": 1e-3, "/mm3": 1e-3, "cells/uL": 1e-3, "cells/mm3": 1e-3}
#: Names of lab tests read as one of :data:`TESTS` (after lower case, and any run of characters other than
#: letters, digits and ``%`` written as ``_``).
_ALIAS_NAMES = {
    "haemoglobin": ("hb", "hgb", "hemoglobin", "haemoglobin_hb"),
    "neutrophils": ("anc", "neutrophil", "neutrophils_abs", "neutrophils_absolute", "neutrophil_count",
                    "neutrophils_count", "absolute_neutrophil_count", "absolute_neutrophils", "neut_abs", "neut",
                    # German exports
                    "neutrophile", "neutrophile_abs", "neutrophile_granulozyten", "neutrophile_granulozyten_abs"),
    "platelets": ("plt", "platelet", "platelet_count", "platelets_count", "plt_count", "thrombocytes", "thrombocyte",
                  "thrombocyte_count", "thrombocytes_count",
                  # Sysmex's fluorescent and impedance counts: the platelet count, reported in its place when low
                  "plt_f", "plt_i", "pltf", "plt_o",
                  "thrombozyten"),
    "white_cells": ("wbc", "leukocytes", "leucocytes", "leukocyte", "leukocyte_count", "white_blood_cells",
                    "white_blood_cell_count", "white_cell_count", "wbc_count", "white_cell",
                    "leukozyten", "leukozyten_wbc"),
    "lymphocytes": ("lymphocyte", "alc", "lymphocytes_abs", "lymphocytes_absolute", "lymphocyte_count",
                    "lymphocytes_count", "absolute_lymphocyte_count", "absolute_lymphocytes", "lymph_abs", "lymph",
                    "lymphozyten", "lymphozyten_abs"),
}
_ALIASES = {a: t for t, names in _ALIAS_NAMES.items() for a in names}


def lab_test_key(name) -> str:
    """A lab test name as compared with :data:`TESTS` and their aliases (``"Platelet Count"``: ``platelet_count``)."""
    text = str(name).strip().lower().translate(_UMLAUTS)  # Hämoglobin: haemoglobin
    return re.sub(r"[^a-z0-9%]+", "_", text).strip("_")


_UMLAUTS = str.maketrans({"\u00e4": "ae", "\u00f6": "oe", "\u00fc": "ue", "\u00df": "ss"})


def canonical_test(name: str) -> str:
    """Map a lab test name to one of :data:`TESTS` (case-insensitive; common aliases)."""
    key = lab_test_key(name)
    key = _ALIASES.get(key, key)
    if key not in TESTS:
        raise PetfeatError(f"lab test {name!r} is not graded; known tests: {', '.join(TESTS)} (aliases: "
                           f"{', '.join(sorted(_ALIASES))}).")
    return key


def _unit_key(unit) -> str:
    u = str(unit).strip().lower().replace(" ", "").replace("\u00b5", "u").replace("\u03bc", "u")
    return u.replace("**", "^").replace("*", "^").replace("e9", "^9").replace("e3", "^3")


_HB_UNITS = {_unit_key(u): f for u, f in _HB_SPELLINGS.items()}
_COUNT_UNITS = {_unit_key(u): f for u, f in _COUNT_SPELLINGS.items()}


def _first_spellings(spellings: dict[str, float]) -> dict[str, str]:
    out, seen = {}, set()
    for u, f in spellings.items():
        if f not in seen:
            out[_unit_key(u)] = u
            seen.add(f)
    return out


#: How a unit is suggested in messages, per kind of test (the first spelling of each factor).
_HB_SUGGESTED, _COUNT_SUGGESTED = _first_spellings(_HB_SPELLINGS), _first_spellings(_COUNT_SPELLINGS)


def known_units(test: str) -> str:
    """The units of ``test`` as written in messages (``g/dL, g/L, ...``; ``G/L`` is giga per litre)."""
    return ", ".join(_HB_SPELLINGS if test == "haemoglobin" else _COUNT_SPELLINGS)


def unit_factors(test: str) -> dict[str, float]:
    """Known units of a canonical ``test`` (normalised spelling) and their factors to its canonical unit."""
    return _HB_UNITS if test == "haemoglobin" else _COUNT_UNITS


def to_canonical(test: str, value, unit: str) -> np.ndarray:
    """Convert values to the canonical unit of ``test`` (g/dL for haemoglobin, 10^9/L for counts)."""
    u = _unit_key(unit)
    v = np.asarray(value, dtype=np.float64)
    factors = unit_factors(test)
    if u not in factors:
        raise PetfeatError(f"unit {unit!r} of {test} is not known; use one of {known_units(test)}.")
    return v * factors[u]


def _likely_unit(test: str, value: float) -> str | None:
    """The unit (one per factor) under which ``value`` is plausible and nearest the LLN, or None."""
    lo, hi = PLAUSIBLE[test]
    best, best_d = None, np.inf
    for u, f in unit_factors(test).items():
        spelled = (_HB_SUGGESTED if test == "haemoglobin" else _COUNT_SUGGESTED).get(u)
        c = value * f
        if spelled is None or not lo < c <= hi:
            continue
        d = abs(np.log(c / DEFAULT_LLN[test]))
        if d < best_d:
            best, best_d = spelled, d
    return best


def grade(test: str, value, lln=None, mmol: bool = False) -> np.ndarray:
    """CTCAE v5.0 grade (0-4) of values in the canonical unit; NaN values give grade -1 (missing).

    ``mmol``: haemoglobin value and LLN in mmol/L, graded by CTCAE's printed mmol/L bounds.
    """
    test = canonical_test(test)
    v = np.asarray(value, dtype=np.float64)
    default = DEFAULT_LLN[test] / HB_GDL_PER_MMOLL if mmol else DEFAULT_LLN[test]
    lln_v = np.asarray(default if lln is None else lln, dtype=np.float64)
    lln_v = np.where(np.isnan(lln_v), default, lln_v)
    g = np.zeros(v.shape, np.int64)
    g = np.where(v < lln_v, 1, g)
    if mmol and test != "haemoglobin":
        raise PetfeatError(f"mmol/L grading applies to haemoglobin only, not {test}.")
    for k, bound in enumerate(HB_BOUNDS_MMOLL if mmol else BOUNDS[test], start=2):
        if bound is not None:
            g = np.where(v < bound, k, g)
    return np.where(np.isnan(v), -1, g)


def _numbers(col: pd.Series, name: str, source: str = "the labs table", rows=None,
             table: pd.DataFrame | None = None) -> pd.Series:
    """Numeric lab values; empty cells are NaN, anything else that is not a number is refused.

    ``table``: the rows of ``col``, whose ``patient_id`` and ``date`` the message names.
    """
    num = pd.to_numeric(col, errors="coerce")
    bad = num.isna() & col.notna() & (col.astype(str).str.strip() != "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        n = _row_number(rows, row)
        who = "".join(f", {c} {table[c].iloc[row]}" for c in ("patient_id", "date")
                      if table is not None and c in table.columns)
        text = str(col.iloc[row]).strip()
        fix = ("write the decimal with a point" if re.fullmatch(r"[-+]?\d+,\d+", text) else "enter the measured value")
        raise ClinicalDataError(f"{source}{who}, column {name!r}, row {n}: {col.iloc[row]!r} is not a number; "
                                f"{fix} ({bad.sum()} such row(s)), or leave the cell empty (a value "
                                "reported only as below or above a limit cannot be graded).")
    return num.astype(np.float64)


def _row_number(rows, pos: int) -> int:
    """The 1-based data row (header not counted) of position ``pos``: from an integer index when given."""
    if rows is not None and isinstance(rows[pos], (int, np.integer)):
        return int(rows[pos]) + 1
    return pos + 1


def _is_empty(v) -> bool:
    return v is None or pd.isna(v) or str(v).strip() == ""


def _factor(test: str, unit, where: str, what: str = "unit") -> float:
    """Factor of ``unit`` to the canonical unit of ``test``; an empty or unknown unit is refused naming the row."""
    factors = unit_factors(test)
    known = known_units(test)
    if _is_empty(unit):
        raise ClinicalDataError(f"{where}: the {what} of {test} is empty; enter the unit the value was measured in "
                                f"(one of {known}).")
    u = _unit_key(unit)
    if u not in factors:
        raise ClinicalDataError(f"{where}: {what} {unit!r} of {test} is not known; use one of {known}.")
    return factors[u]


def _check_plausible(test: str, value: float, unit, canonical: float, where: str, what: str = "value") -> None:
    """Refuse a negative value or one outside :data:`PLAUSIBLE`, with the unit that would make it plausible."""
    if value < 0:
        raise ClinicalDataError(f"{where}: {test} {what} {value:g} {unit} is negative; a count or concentration is "
                                "never below 0: correct the value.")
    lo, hi = PLAUSIBLE[test]
    if lo <= canonical <= hi:
        return
    alt = _likely_unit(test, value)
    fix = f"is the unit {alt}?" if alt else "check the value and its unit."
    raise ClinicalDataError(f"{where}: {value:g} {unit} is impossible for {test} (plausible {lo:g}-{hi:g} "
                            f"{CANONICAL_UNIT[test]}); {fix}")


def grade_labs(labs: pd.DataFrame, source: str = "the labs table") -> pd.DataFrame:
    """Grade a long lab table (columns ``test, value, unit`` and optionally ``lln``, ``lln_unit``).

    Parameters
    ----------
    labs
        The lab rows; an integer index is taken as the 0-based data row of the file in messages.
    source
        How messages name the table (its file).

    Returns
    -------
    pandas.DataFrame
        A copy (index 0..n-1) with ``test`` canonical, ``value`` numeric, ``value_canonical``,
        ``unit_canonical``, ``lln_used`` and ``grade`` (-1 for an empty value).

    Raises
    ------
    ClinicalDataError
        A value or LLN that is neither a number nor empty (``"<0.5"``); an empty or unknown unit; a negative
        value or one outside :data:`PLAUSIBLE` (with the unit that would make it plausible). Each names the row.
    """
    for col in ("test", "value", "unit"):
        if col not in labs.columns:
            raise PetfeatError(f"{source} needs a '{col}' column (columns: patient_id, date, test, value, unit, "
                               "optional lln).")
    rows = labs.index
    out = labs.reset_index(drop=True)  # row positions: a concatenated table may repeat index labels
    out["test"] = [canonical_test(t) for t in out["test"]]
    out["value"] = _numbers(out["value"], "value", source, rows, out)
    if "lln" in out.columns:
        out["lln"] = _numbers(out["lln"], "lln", source, rows, out)

    def where(i: int) -> str:
        bits = [f"{c} {out[c].iloc[i]}" for c in ("patient_id", "date") if c in out.columns]
        return f"{source}, row {_row_number(rows, i)}" + (f" ({', '.join(bits)})" if bits else "")

    vals, llns = np.full(len(out), np.nan), np.full(len(out), np.nan)
    lln_units = out["lln_unit"] if "lln_unit" in out.columns else out["unit"]
    for i, (test, v, unit) in enumerate(zip(out["test"], out["value"], out["unit"], strict=True)):
        if not np.isnan(v):  # a row without a value is no assessment: its unit is not needed
            vals[i] = v * _factor(test, unit, where(i))
            _check_plausible(test, v, unit, vals[i], where(i))
        if "lln" in out.columns and not np.isnan(out["lln"].iloc[i]):
            lv, lu = out["lln"].iloc[i], lln_units.iloc[i]
            llns[i] = lv * _factor(test, lu, where(i), "LLN unit" if "lln_unit" in out.columns else "unit")
            _check_plausible(test, lv, lu, llns[i], where(i), "LLN")
    out["value_canonical"] = vals
    out["unit_canonical"] = [CANONICAL_UNIT[t] for t in out["test"]]
    out["lln_used"] = [DEFAULT_LLN[t] if np.isnan(lv) else lv for t, lv in zip(out["test"], llns, strict=True)]
    grades = [int(grade(t, v, lv)) for t, v, lv in zip(out["test"], vals, out["lln_used"], strict=True)]
    mmol = ((out["test"] == "haemoglobin") & (out["unit"].map(_unit_key) == "mmol/l")).to_numpy()
    for i in np.flatnonzero(mmol):  # CTCAE's printed mmol/L bounds, on the value as reported
        lln_raw, lln_unit = (out["lln"].iloc[i], (out["lln_unit"].iloc[i] if "lln_unit" in out.columns
                                                   else out["unit"].iloc[i])) if "lln" in out.columns else (np.nan, "")
        lln_mmol = (lln_raw if pd.notna(lln_raw) and _unit_key(lln_unit) == "mmol/l"
                    else out["lln_used"].iloc[i] / HB_GDL_PER_MMOLL)
        grades[i] = int(grade("haemoglobin", out["value"].iloc[i], lln_mmol, mmol=True))
    out["grade"] = grades
    return out
