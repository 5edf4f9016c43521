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
"""

from __future__ import annotations

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
_ALIASES = {"hb": "haemoglobin", "hgb": "haemoglobin", "hemoglobin": "haemoglobin", "anc": "neutrophils",
            "neutrophil": "neutrophils", "plt": "platelets", "platelet": "platelets", "wbc": "white_cells",
            "leukocytes": "white_cells", "white_blood_cells": "white_cells", "lymphocyte": "lymphocytes",
            "alc": "lymphocytes"}


def canonical_test(name: str) -> str:
    """Map a lab test name to one of :data:`TESTS` (case-insensitive; common aliases)."""
    key = str(name).strip().lower().replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in TESTS:
        raise PetfeatError(f"lab test {name!r} is not graded; known tests: {', '.join(TESTS)} (aliases: "
                           f"{', '.join(sorted(_ALIASES))}).")
    return key


def _unit_key(unit) -> str:
    return str(unit).strip().lower().replace(" ", "").replace("µ", "u").replace("**", "^").replace("e9", "^9")


def to_canonical(test: str, value, unit: str) -> np.ndarray:
    """Convert values to the canonical unit of ``test`` (g/dL for haemoglobin, 10^9/L for counts)."""
    u = _unit_key(unit)
    v = np.asarray(value, dtype=np.float64)
    if test == "haemoglobin":
        factors = {"g/dl": 1.0, "g/l": 0.1, "mmol/l": HB_GDL_PER_MMOLL}
    else:
        factors = {"10^9/l": 1.0, "x10^9/l": 1.0, "g/l": 1.0, "/nl": 1.0, "10^3/ul": 1.0, "x10^3/ul": 1.0,
                   "/mm3": 1e-3, "/ul": 1e-3, "cells/mm3": 1e-3, "cells/ul": 1e-3}
    if u not in factors:
        raise PetfeatError(f"unit {unit!r} of {test} is not known; use one of {', '.join(sorted(factors))}.")
    return v * factors[u]


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


def _numbers(col: pd.Series, name: str) -> pd.Series:
    """Numeric lab values; empty cells are NaN, anything else that is not a number is refused."""
    num = pd.to_numeric(col, errors="coerce")
    bad = num.isna() & col.notna() & (col.astype(str).str.strip() != "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ClinicalDataError(f"the labs table, column {name!r}, row {row + 1}: {col.iloc[row]!r} is not a number; "
                                f"enter the measured value ({bad.sum()} such row(s)), or leave the cell empty (a value "
                                "reported only as below or above a limit cannot be graded).")
    return num.astype(np.float64)


def grade_labs(labs: pd.DataFrame) -> pd.DataFrame:
    """Grade a long lab table (columns ``test, value, unit`` and optionally ``lln``, ``lln_unit``).

    Returns a copy (index 0..n-1) with ``test`` canonical, ``value`` numeric, ``value_canonical``,
    ``unit_canonical``, ``lln_used`` and ``grade`` (-1 for an empty value).

    Raises
    ------
    ClinicalDataError
        A value or LLN that is neither a number nor empty (``"<0.5"``), naming the row.
    """
    for col in ("test", "value", "unit"):
        if col not in labs.columns:
            raise PetfeatError(f"the labs table needs a '{col}' column (columns: patient_id, date, test, value, unit, "
                               "optional lln).")
    out = labs.reset_index(drop=True)  # row positions: a concatenated table may repeat index labels
    out["test"] = [canonical_test(t) for t in out["test"]]
    out["value"] = _numbers(out["value"], "value")
    if "lln" in out.columns:
        out["lln"] = _numbers(out["lln"], "lln")
    vals, llns = np.empty(len(out)), np.empty(len(out))
    for test, idx in out.groupby("test").groups.items():
        sub = out.loc[idx]
        vals[out.index.get_indexer(idx)] = [float(to_canonical(test, v, u)) for v, u in zip(sub["value"], sub["unit"],
                                                                                            strict=True)]
        if "lln" in out.columns:
            lln_units = sub["lln_unit"] if "lln_unit" in out.columns else sub["unit"]
            llns[out.index.get_indexer(idx)] = [float(to_canonical(test, v, u)) if pd.notna(v) else np.nan
                                                for v, u in zip(sub["lln"], lln_units, strict=True)]
        else:
            llns[out.index.get_indexer(idx)] = np.nan
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
