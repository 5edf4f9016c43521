"""Study spec (YAML), endpoints from the clinical folder, models, result tables; the report (:mod:`petfeat.report`).

Clinical folder (CSV or Parquet, one file per table):

* ``patients``: ``patient_id, therapy_start`` (+ ``death_date``, baseline covariates such as
  ``baseline_haemoglobin``, ``age``, ``psa``, ``ecog``);
* ``labs``: ``patient_id, date, test, value, unit`` (+ ``lln``);
* ``scores``: ``patient_id, date, instrument, score`` (+ ``cycle``), instruments ``fact_p``,
  ``bpi_severity``, ``bpi_interference``, ``xerostomia`` (already-scored values), and/or
* ``questionnaires``: ``patient_id, date, instrument, item, response`` (+ ``cycle``), instruments
  ``fact_p`` (items GP1-GF7 and the 12 PCS items; gives ``fact_p``, ``fact_g``, ``pcs``,
  ``fact_p_toi`` and the four FACT-G subscales), ``fact_g``, ``bpi`` (gives ``bpi_severity``,
  ``bpi_interference`` and ``bpi_worst``, item 3), ``xq8``, ``xi11``, scored by
  :mod:`petfeat.stats.questionnaires`.

``patient_id`` must be the pseudonymised id of the feature table (``petfeat scan --linkage``
gives the map).
"""

from __future__ import annotations

import difflib
import io
import re
import warnings
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from petfeat.errors import PetfeatError, PetfeatWarning
from petfeat.io.parquet import read_parquet
from petfeat.stats.ctcae import (
    _ALIASES,
    CANONICAL_UNIT,
    TESTS,
    _check_plausible,
    _factor,
    _unit_key,
    canonical_test,
    grade,
    lab_test_key,
    unit_factors,
)
from petfeat.stats.endpoints import (
    DEATH_WINDOW_DAYS,
    Worsening,
    _dates,
    date_rule,
    time_to_first_grade,
    time_to_worsening,
)
from petfeat.stats.errors import ClinicalDataError
from petfeat.stats.models import fdr, fit_cox, fit_mixed, format_hr, holm
from petfeat.stats.questionnaires import FACT_P_PCS, ITEMS, bpi_scores, fact_scores, xerostomia_score
from petfeat.stats.spec import BASELINE_SCORE, ENDPOINT_TYPES, MODELS, StudySpecError, read_study  # noqa: F401

STUDY_SPEC = files("petfeat.stats") / "study_psma_lu.yaml"


def load_study(path: str | Path | None = None) -> dict:
    """Read and validate a study spec (default: the shipped 177Lu-PSMA study).

    Validation is strict (:mod:`petfeat.stats.spec`): an unknown key is an error with the closest
    allowed key, and a missing file or malformed YAML is a one-line :class:`StudySpecError`.
    """
    if path:
        return read_study(path)
    return read_study(STUDY_SPEC, "study_psma_lu.yaml")


def _multiplicity(spec: dict) -> tuple[list[str], str]:
    """Adjustment methods (``bh``, ``holm``) and family (``study``: all tests; ``analysis``: per analysis)."""
    m = spec.get("multiplicity")
    if m is None:
        return (["bh"] if spec.get("fdr", True) else []), "study"
    methods = m.get("methods", ["bh"])
    return ([methods] if isinstance(methods, str) else list(methods)), m.get("family", "study")


def _read_csv(p: Path) -> pd.DataFrame:
    """A clinical CSV file: UTF-8 (a byte order mark is allowed), comma-, semicolon- or tab-separated."""
    raw = p.read_bytes()
    if not raw.strip():
        raise ClinicalDataError(f"{p}: the file is empty ({len(raw)} bytes); export the table with its header row and "
                                "its rows, or remove the file.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ClinicalDataError(f"{p}: byte {exc.start} (line {line}, {raw[exc.start:exc.start + 1]!r}) is not UTF-8 "
                                "(an export in cp1252 or Latin-1?); save the file as UTF-8 (CSV UTF-8).") from None
    header = text.splitlines()[0]
    # a semicolon- or tab-separated export read as commas is one column holding whole lines
    sep = "," if "," in header else max((";", "\t"), key=header.count)
    try:
        return pd.read_csv(io.StringIO(text), sep=sep if sep in header else ",")
    except pd.errors.ParserError as exc:
        raise ClinicalDataError(f"{p}: not a table ({str(exc).strip().splitlines()[-1]}); export it as CSV with one "
                                "header row, separated by commas.") from None


def _read_table(folder: Path, name: str, required: bool = True) -> pd.DataFrame | None:
    """The clinical table ``name`` (Parquet or CSV) with its path in ``attrs["source"]``; None when optional.

    An empty file, a file without rows below its header and a CSV file that is not UTF-8 are refused
    naming the file and the fix; a semicolon- or tab-separated CSV is read by its separator.
    """
    for suffix, reader in ((".parquet", read_parquet), (".csv", _read_csv)):
        p = folder / f"{name}{suffix}"
        if p.exists():
            table = reader(p)
            if not len(table):
                raise ClinicalDataError(f"{p}: the table has no rows (columns: {', '.join(map(str, table.columns))}); "
                                        "add the rows, or remove the file when there are none.")
            table.attrs["source"] = str(p)
            return table
    if required:
        raise PetfeatError(f"{folder}: the clinical folder has no {name}.csv or {name}.parquet.")
    return None


def _row(table: pd.DataFrame, i: int, src: str, cols=("patient_id", "date")) -> str:
    """``FILE, row N (patient_id X, date D)`` for position ``i`` (N: the 1-based data row, header not counted)."""
    lab = table.index[i]
    n = int(lab) + 1 if isinstance(lab, (int, np.integer)) else i + 1
    bits = [f"{c} {table[c].iloc[i]}" for c in cols if c in table.columns and pd.notna(table[c].iloc[i])]
    return f"{src}, row {n}" + (f" ({', '.join(bits)})" if bits else "")


def _require_columns(table: pd.DataFrame, cols, src: str) -> None:
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise ClinicalDataError(f"{src}: column(s) {', '.join(map(repr, missing))} missing (columns: "
                                f"{', '.join(map(str, table.columns))}); the table needs {', '.join(cols)}.")


def _required_dates(table: pd.DataFrame, column: str, src: str, what: str, day_first=None) -> pd.Series:
    """Parse a date column by the file's rule (one error naming the row for a value that is not a date, or empty)."""
    parsed = _dates(table[column], src, column, day_first)
    empty = parsed.isna().to_numpy()
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise ClinicalDataError(f"{_row(table, i, src, ('patient_id',))}: {column} is empty ({int(empty.sum())} such "
                                f"row(s)); enter {what} as YYYY-MM-DD.")
    return parsed


def _numeric_column(table: pd.DataFrame, column: str, src: str, fix: str) -> None:
    """Make ``column`` numeric in place; a value that is not a number (empty cells are NaN) is refused."""
    if column not in table.columns:
        return
    num = pd.to_numeric(table[column], errors="coerce")
    bad = (num.isna() & table[column].notna() & (table[column].astype(str).str.strip() != "")).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ClinicalDataError(f"{_row(table, i, src)}, column {column!r}: {table[column].iloc[i]!r} is not a "
                                f"number ({int(bad.sum())} such row(s)); {fix}")
    table[column] = num


def _check_patients(patients: pd.DataFrame, src: str) -> tuple[pd.Series, pd.Series]:
    """Refuse a patient listed twice, a missing or unparseable first dose, a death before it; return the dates."""
    _require_columns(patients, ("patient_id", "therapy_start"), src)
    ids = patients["patient_id"]
    if ids.isna().any():
        i = int(np.flatnonzero(ids.isna().to_numpy())[0])
        raise ClinicalDataError(f"{_row(patients, i, src)}: patient_id is empty; every row needs the pseudonymised "
                                "patient_id.")
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        names = sorted(map(str, set(dup)))
        raise ClinicalDataError(f"{src}: patient_id {', '.join(names[:5])}{' ...' if len(names) > 5 else ''} listed "
                                f"more than once ({len(dup)} rows); keep one row per patient.")
    rule = date_rule({c: patients[c] for c in ("therapy_start", "death_date") if c in patients.columns}, src)
    start = _required_dates(patients, "therapy_start", src, "the date of the first dose", rule)
    death = _dates(patients["death_date"], src, "death_date", rule) if "death_date" in patients.columns else \
        pd.Series(pd.NaT, index=patients.index)
    early = (death.dt.normalize() < start.dt.normalize()).to_numpy()
    if early.any():
        i = int(np.flatnonzero(early)[0])
        raise ClinicalDataError(f"{_row(patients, i, src, ('patient_id',))}: death_date {death.iloc[i]:%Y-%m-%d} is "
                                f"before therapy_start {start.iloc[i]:%Y-%m-%d}; correct either date.")
    _baseline_labs(patients, src)
    return start, death


def _iso(dates: pd.Series) -> pd.Series:
    """Parsed dates written back as ``YYYY-MM-DD`` (``YYYY-MM-DD HH:MM[:SS]`` with a time of day; empty stays empty).

    Seconds are kept where given (08:00:10 and 08:00:50 are two times, not one).
    """
    text = dates.dt.strftime("%Y-%m-%d %H:%M:%S").str.removesuffix(" 00:00:00").str.replace(
        r"( \d\d:\d\d):00$", r"\1", regex=True)
    return text.where(dates.notna(), None)


def _baseline_labs(patients: pd.DataFrame, src: str) -> None:
    """Check (and convert in place) the ``baseline_<test>`` covariates of CTCAE lab tests (``baseline_haemoglobin``).

    The value is taken in the test's canonical unit (g/dL, 10^9/L) unless a column ``baseline_<test>_unit`` gives
    the unit of each row; a value outside the test's plausible range is refused naming the likely unit.
    """
    for test in TESTS:
        col = f"baseline_{test}"
        if col not in patients.columns:
            continue
        unit_col = f"{col}_unit"
        fix = (f"give {col} in {CANONICAL_UNIT[test]}, or its unit in a column {unit_col}." if unit_col not in
               patients.columns else f"correct the value or its unit in {unit_col}.")
        _numeric_column(patients, col, src, f"enter the value in {CANONICAL_UNIT[test]}, or leave the cell empty.")
        values = patients[col].to_numpy(dtype=np.float64)
        out = values.copy()
        for i, v in enumerate(values):
            if np.isnan(v):
                continue
            where = f"{_row(patients, i, src, ('patient_id',))}, column {col!r}"
            unit = patients[unit_col].iloc[i] if unit_col in patients.columns else CANONICAL_UNIT[test]
            out[i] = v * _factor(test, unit, where)
            try:
                _check_plausible(test, v, unit, out[i], where)
            except ClinicalDataError as exc:
                raise ClinicalDataError(f"{str(exc).rstrip('.')}; {fix}") from None
        patients[col] = out


def _drop_orphans(table: pd.DataFrame, ids: set, src: str, notes: list[str]) -> pd.DataFrame:
    orphan = ~table["patient_id"].isin(ids)
    if orphan.any():
        notes.append(f"{int(orphan.sum())} row(s) of {src} ({table.loc[orphan, 'patient_id'].nunique()} patient_id(s))")
    return table.loc[~orphan].copy()


def _after_death(table: pd.DataFrame, dates: pd.Series, deaths: dict, src: str, psrc: str) -> None:
    """Refuse an assessment dated after the patient's death (the date or the death_date is wrong)."""
    death = table["patient_id"].map(deaths)
    late = (dates.dt.normalize() > pd.to_datetime(death).dt.normalize()).to_numpy()
    if late.any():
        i = int(np.flatnonzero(late)[0])
        raise ClinicalDataError(f"{_row(table, i, src)}: dated after the death_date {death.iloc[i]:%Y-%m-%d} of "
                                f"{psrc} ({int(late.sum())} such row(s)); correct the date or the death_date.")


def _duplicates(table: pd.DataFrame, key: list[str], values: list[str], src: str, what: str,
                dropped: list[str]) -> pd.DataFrame:
    """Drop rows repeating another row of the same ``key`` with the same ``values``; refuse different values."""
    d = table[key].astype(str).join(table[values].astype(str).apply(lambda c: c.str.strip()))
    same_key = d.duplicated(key, keep=False).to_numpy()
    if not same_key.any():
        return table
    conflict = d[same_key].drop_duplicates().duplicated(key, keep=False)
    if conflict.any():
        first = d[same_key].drop_duplicates()[conflict].iloc[0]
        hits = np.flatnonzero((d[key] == first[key]).all(axis=1).to_numpy())
        shown = "; ".join(" ".join(str(table[c].iloc[j]) for c in values) for j in hits[:4])
        rows = ", ".join(str(int(table.index[j]) + 1) if isinstance(table.index[j], (int, np.integer)) else str(j + 1)
                         for j in hits[:4])
        ident = ", ".join(f"{c} {first[c]}" for c in key)
        raise ClinicalDataError(f"{src}, rows {rows}: {what} given {len(hits)} times with different values ({ident}: "
                                f"{shown}); keep the right row and delete the others.")
    repeat = d.duplicated(key + values).to_numpy()
    dropped.append(f"{int(repeat.sum())} in {src}")
    return table[~repeat]


def _percent_rows(table: pd.DataFrame, src: str, notes: list[str]) -> pd.DataFrame:
    """Drop rows of a graded count given in % (of the white cells): CTCAE grades absolute counts."""
    keys = [lab_test_key(t) for t in table["test"]]
    units = table["unit"].map(lambda u: "" if pd.isna(u) else _unit_key(u))
    pct = []
    for k, u in zip(keys, units, strict=True):
        named = "%" in k or re.search(r"(^|_)(pct|percent|rel|relative)(_|$)", k) is not None
        base = re.sub(r"(^|_)(%|pct|percent|rel|relative)(?=_|$)", "", k.replace("%", "_%_")).strip("_")
        test = _ALIASES.get(base, base)
        pct.append(test in TESTS and test != "haemoglobin" and (named or u.startswith("%") or u == "percent"))
    pct = np.asarray(pct, dtype=bool)
    if pct.any():
        names = sorted({str(t).strip() for t in table.loc[pct, "test"]})
        notes.append(f"{src}: {int(pct.sum())} row(s) of {', '.join(names)} in % are ignored: a percentage of the "
                     "white cells cannot be graded (CTCAE grades absolute counts); give the absolute count in 10^9/L.")
    return table.loc[~pct]


def _canonical_values(keyed: pd.DataFrame) -> np.ndarray:
    """Each row's value in its test's canonical unit; NaN where the test is not graded or the unit is unknown."""
    out = np.full(len(keyed), np.nan)
    values = pd.to_numeric(keyed["value"], errors="coerce").to_numpy(dtype=np.float64)
    for i, (test, unit) in enumerate(zip(keyed["test"], keyed["unit"], strict=True)):
        if test in TESTS and not pd.isna(unit):
            f = unit_factors(test).get(_unit_key(unit))
            out[i] = values[i] * f if f is not None else np.nan
    return out


def _worst_of_day(grp: pd.DataFrame):
    """The index of the row of highest CTCAE grade (then lowest value) among one day's values of one test.

    Haemoglobin in mmol/L is graded by CTCAE's printed mmol/L bounds, so 4.95 mmol/L (7.97 g/dL) is grade 2
    while 7.98 g/dL is grade 3: the lowest converted value is not always the worst grade.
    """
    raw = pd.to_numeric(grp["value"], errors="coerce").to_numpy(dtype=np.float64)
    ranks = []
    for (i, r), v in zip(grp.iterrows(), raw, strict=True):
        mmol = r["test"] == "haemoglobin" and _unit_key(r["unit"]) == "mmol/l"
        g = int(grade(r["test"], v if mmol else r["canon"], mmol=mmol))
        ranks.append((-g, r["canon"], i))
    return min(ranks)[2]


def _lab_duplicates(table: pd.DataFrame, keyed: pd.DataFrame, src: str, dropped: list[str],
                    notes: list[str], tests=TESTS) -> pd.DataFrame:
    """Lab rows of graded tests kept once per patient, time and test (``keyed``: canonical test names, ISO dates).

    Rows of tests that are not graded, or not among ``tests``, pass unchecked (no endpoint reads them). Equal
    values in equivalent units (13.5 g/dL, 13.5 g/dl, 135 g/L) are one value: the repeats are dropped. Different
    values on one date without a time of day: the worst value of the day (highest grade, then lowest value) is
    kept, as CTCAE grades the worst value of a period, with one warning counting such days. Different values at
    the same time of day are refused.
    """
    graded = keyed["test"].isin([t for t in tests if t in TESTS]).to_numpy()
    g = keyed[graded].assign(canon=_canonical_values(keyed[graded]))
    g["same"] = [f"{c:.9g}" if np.isfinite(c) else f"{str(v).strip()} {str(u).strip()}"
                 for c, v, u in zip(g["canon"], g["value"], g["unit"], strict=True)]
    key = ["patient_id", "date", "test"]
    repeat = g.astype({"patient_id": str}).duplicated(key + ["same"]).to_numpy()
    if repeat.any():
        dropped.append(f"{int(repeat.sum())} in {src}")
    g = g[~repeat]
    multi = g.astype({"patient_id": str}).duplicated(key, keep=False).to_numpy()
    drop = []
    days = 0
    for _, grp in g[multi].groupby(key, sort=False):
        timed = " " in str(grp["date"].iloc[0])
        if timed or grp["canon"].isna().any():
            lab = [table.index.get_loc(j) for j in grp.index[:4]]
            rows = ", ".join(str(int(table.index[j]) + 1) if isinstance(table.index[j], (int, np.integer))
                             else str(j + 1) for j in lab)
            shown = "; ".join(f"{table['value'].iloc[j]} {table['unit'].iloc[j]}" for j in lab)
            r0 = grp.iloc[0]
            why = "at the same time" if timed else "in a unit petfeat cannot compare"
            raise ClinicalDataError(f"{src}, rows {rows}: one lab test given {len(grp)} times {why} with different "
                                    f"values (patient_id {r0['patient_id']}, date {r0['date']}, test {r0['test']}: "
                                    f"{shown}); keep the right row and delete the others.")
        days += 1
        drop.extend(grp.index.drop(_worst_of_day(grp)))
    if days:
        notes.append(f"{src}: {days} day(s) with one lab test given more than once without a time of day and "
                     "different values: the worst value of each day (highest grade, then lowest value) is graded "
                     "(CTCAE grades the worst value of a period); give the time of day to keep them apart.")
    keep = pd.Series(True, index=keyed.index)
    keep[keyed.index[graded]] = keyed.index[graded].isin(g.index) & ~keyed.index[graded].isin(drop)
    return keyed[keep.to_numpy()]


def endpoint_tests(spec: dict) -> set[str]:
    """The lab tests the spec's toxicity (``first_grade``) endpoints grade."""
    return {t for e in spec.get("endpoints", {}).values() if e.get("type") == "first_grade" for t in e.get("tests", ())}


def read_clinical(folder: str | Path, tests=None) -> dict[str, pd.DataFrame]:
    """Read and check the clinical tables; item-level questionnaires are scored and appended to ``scores``.

    ``tests``: the lab tests the endpoints grade (:func:`endpoint_tests`); repeated rows of other tests are not
    checked, as no endpoint reads them (default: every graded CTCAE test is checked).

    Returns ``patients``, ``labs`` (None without the table), ``scores`` and ``sources`` (table name -> file).

    Raises
    ------
    ClinicalDataError
        One line naming the file, the row and the fix: a patient listed twice, an empty or unparseable
        ``therapy_start``, a death before it, an assessment dated after the death, a date, score or ``cycle``
        that is not one, an empty date, dates whose day/month order the file does not settle
        (:func:`petfeat.stats.endpoints.date_rule`), two rows of the same assessment with different values
        (labs: at the same time of day), a questionnaire item the instrument does not have, a ``baseline_<test>``
        covariate implausible in its unit; an empty, header-only or non-UTF-8 file.

    Rows of a patient_id not in ``patients`` are dropped with one warning (their count); rows that repeat
    another row exactly (labs: the same value in equivalent units) are dropped with one warning; lab counts in %
    are ignored with one warning; date-only lab rows of one test and day with different values keep the worst
    (lowest) value, with one warning. Dates are returned as ``YYYY-MM-DD`` (``YYYY-MM-DD HH:MM`` with a time).
    """
    folder = Path(folder)
    patients = _read_table(folder, "patients")
    psrc = patients.attrs["source"]
    start, death = _check_patients(patients, psrc)
    patients["therapy_start"] = _iso(start)
    if "death_date" in patients.columns:
        patients["death_date"] = _iso(death)
    ids = set(patients["patient_id"])
    deaths = dict(zip(patients["patient_id"], death, strict=True))
    orphans, dropped, notes = [], [], []
    sources = {"patients": psrc}

    def common(table: pd.DataFrame | None, name: str, cols: tuple, key: list[str], values: list[str],
               what: str) -> pd.DataFrame | None:
        if table is None:
            return None
        src = sources[name] = table.attrs["source"]
        _require_columns(table, cols, src)
        table = _drop_orphans(table, ids, src, orphans)
        if name == "labs":
            table = _percent_rows(table, src, notes)
        dates = _required_dates(table, "date", src, "the date of the assessment", date_rule({"date": table["date"]},
                                                                                            src))
        _after_death(table, dates, deaths, src, psrc)
        _numeric_column(table, "cycle", src, "write the treatment cycle as a number (0 = baseline, 1 = the first "
                        "cycle, ...), or leave the cell empty.")
        keyed = table.assign(date=_iso(dates))
        if name == "labs":
            keyed["test"] = [_lab_key(t) for t in table["test"]]
        if name == "questionnaires":
            keyed["item"] = table["item"].astype(str).str.strip().str.upper()
            keyed["instrument"] = table["instrument"].astype(str).str.strip().str.lower()
        present = keyed[values[0]].notna() & (keyed[values[0]].astype(str).str.strip() != "")
        if name == "labs":
            kept = _lab_duplicates(table[present.to_numpy()], keyed[present], src, dropped, notes,
                                   TESTS if tests is None else tuple(tests))
        else:
            kept = _duplicates(keyed[present], key, values, src, what, dropped)
        table = table.assign(date=_iso(dates))
        return table.loc[table.index.isin(kept.index) | ~present.to_numpy()]

    labs = common(_read_table(folder, "labs", required=False), "labs", ("patient_id", "date", "test", "value", "unit"),
                  ["patient_id", "date", "test"], ["value", "unit"], "one lab test on one date")
    scores = _read_table(folder, "scores", required=False)
    if scores is not None:
        _numeric_column(scores, "score", scores.attrs["source"], "enter the score as a number, or leave the cell "
                        "empty.")
    scores = common(scores, "scores", ("patient_id", "date", "instrument", "score"),
                    ["patient_id", "date", "instrument"], ["score"], "one score of one instrument on one date")
    items = _read_table(folder, "questionnaires", required=False)
    if items is not None:
        _numeric_column(items, "response", items.attrs["source"], "enter the item response as a number, or leave "
                        "the cell empty.")
    items = common(items, "questionnaires", ("patient_id", "date", "instrument", "item", "response"),
                   ["patient_id", "date", "instrument", "item"], ["response"],
                   "one questionnaire item of one assessment")
    if orphans:
        warnings.warn(f"{' and '.join(orphans)} name a patient_id not in {psrc}: not used; add the patients or "
                      "correct the ids.", PetfeatWarning, stacklevel=2)
    if dropped:
        warnings.warn(f"rows repeating another row exactly are dropped: {', '.join(dropped)}.", PetfeatWarning,
                      stacklevel=2)
    for note in notes:
        warnings.warn(note, PetfeatWarning, stacklevel=2)
    frames = [scores] if scores is not None else []
    if items is not None:
        frames.append(score_items(items, sources["questionnaires"]))
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["patient_id", "date", "instrument", "score"])
    return {"patients": patients, "labs": labs, "scores": scores, "sources": sources}


def _lab_key(name) -> str:
    """A lab test's canonical name, or its own spelling (lower case) for a test that is not graded."""
    try:
        return canonical_test(name)
    except PetfeatError:
        return str(name).strip().lower()


#: Blood count tests that are not graded, though spelled like a graded one.
_OTHER_BLOOD_COUNT = {"erythrocytes", "erythrocyte", "erythrocyte_count", "plateletcrit", "rbc", "red_blood_cells",
                      "monocytes", "eosinophils", "basophils", "hematocrit", "haematocrit", "mpv", "reticulocytes"}


def _closest_test(name: str) -> str | None:
    """The graded test a test name that is not graded was likely meant as (difflib over the names and aliases)."""
    key = lab_test_key(name)
    if key in TESTS or key in _OTHER_BLOOD_COUNT or "%" in key or re.search(
            r"(^|_)(pct|percent|rel|ratio|index|a1c|hba1c|free|cd\d+|bands?|stab|immature)(_|$)", key):
        return None  # another quantity that only shares a word with a graded test (HbA1c, CD4 lymphocytes...)
    close = difflib.get_close_matches(key, list(TESTS) + list(_ALIASES), 1, 0.78)
    return _ALIASES.get(close[0], close[0]) if close else None


def _spellings(test: str) -> str:
    """``platelets, plt, platelet_count, ...``: the names read as ``test``."""
    return ", ".join([test] + [a for a, t in _ALIASES.items() if t == test])


#: Characters read for one another in item names (GPl for GP1, GPO for GP0).
_LOOKALIKE = str.maketrans("LIO", "110")


def _closest_item(name: str, items: tuple[str, ...]) -> str:
    """``; did you mean 'X'?`` for the item ``name`` was likely meant as (look-alike characters, then difflib)."""
    alike = {i.translate(_LOOKALIKE): i for i in items}
    close = [alike[name.translate(_LOOKALIKE)]] if name.translate(_LOOKALIKE) in alike else \
        difflib.get_close_matches(name, items, 1, 0.5)
    return f"; did you mean {close[0]!r}?" if close else f" (items: {', '.join(items)})"


def score_items(items: pd.DataFrame, source: str = "the questionnaires table") -> pd.DataFrame:
    """Score item-level FACT-P/FACT-G, BPI-SF and xerostomia questionnaires into the long scores table.

    An item name the instrument does not have (:data:`petfeat.stats.questionnaires.ITEMS`) or an item
    answered twice in one assessment is refused, naming ``source``, the patient, the date and the closest
    item name; so is a response out of the instrument's range.
    """
    rows = []
    keys = ["patient_id", "date", "instrument"] + (["cycle"] if "cycle" in items.columns else [])
    for k, g in items.groupby(keys, dropna=False):
        rec = dict(zip(keys, k if isinstance(k, tuple) else (k,), strict=True))
        inst = str(rec["instrument"]).lower()
        where = f"{source} (patient_id {rec['patient_id']}, date {rec['date']}, {inst})"
        if inst not in ITEMS:
            raise PetfeatError(f"{where}: questionnaire instrument {inst!r} is not scored item by item; give fact_p, "
                               "fact_g, bpi, xq8 or xi11 items, or already-scored values in scores.csv.")
        names = [str(i).strip().upper() for i in g["item"]]

        def at(pos: int, g=g, rec=rec, inst=inst) -> str:  # the file's row of the item at ``pos``
            lab = g.index[pos]
            n = f", row {int(lab) + 1}" if isinstance(lab, (int, np.integer)) else ""
            return f"{source}{n} (patient_id {rec['patient_id']}, date {rec['date']}, {inst})"

        for pos, (raw, name) in enumerate(zip(g["item"], names, strict=True)):
            if name not in ITEMS[inst]:
                raise ClinicalDataError(f"{at(pos)}: item {str(raw).strip()!r} is not an item of {inst}"
                                        f"{_closest_item(name, ITEMS[inst])}")
        seen = pd.Series(names)
        if seen.duplicated().any():
            twice = sorted(set(seen[seen.duplicated()]))
            raise ClinicalDataError(f"{where}: item(s) {', '.join(twice)} answered more than once in one assessment; "
                                    "keep one answer per item.")
        resp = dict(zip(names, g["response"], strict=True))
        try:
            if inst in ("fact_p", "fact_g"):
                for name, v in fact_scores(resp, FACT_P_PCS if inst == "fact_p" else None).items():
                    rows.append({**rec, "instrument": name, "score": v})
            elif inst == "bpi":
                for name, v in bpi_scores(resp).items():
                    rows.append({**rec, "instrument": name, "score": v})
            else:
                rows.append({**rec, "instrument": "xerostomia", "score": xerostomia_score(resp, inst)})
        except ClinicalDataError:
            raise
        except PetfeatError as exc:
            m = re.search(r"item (\S+) = ", str(exc))
            pos = names.index(m.group(1).upper()) if m and m.group(1).upper() in names else None
            raise ClinicalDataError(f"{where if pos is None else at(pos)}: {exc}") from None
    return pd.DataFrame(rows)


def derive_endpoints(spec: dict, clinical: dict) -> dict[str, pd.DataFrame]:
    """One time-to-event table per endpoint of the spec (one row per patient; ``excluded`` says why not used).

    Lab rows of tests no endpoint uses (another test of the export, such as creatinine) are ignored with one
    warning listing them with their counts, and the graded test a name is close to (``platlets``: did you mean
    platelets?). A test an endpoint grades without any row in the labs table is a :class:`ClinicalDataError`
    naming the test, the file and the fix. A death more than the endpoint's ``death_window_days`` (default
    :data:`petfeat.stats.endpoints.DEATH_WINDOW_DAYS`) after the patient's last assessment is censored there.
    """
    sources = clinical.get("sources", {})
    endpoints = spec.get("endpoints", {})
    labs = clinical["labs"]
    missing: list[tuple[str, str]] = []
    used = {t for e in endpoints.values() if e["type"] == "first_grade" for t in e.get("tests", ())}
    if used and labs is not None and "test" in labs.columns:
        src = sources.get("labs", "the labs table")
        names = pd.Series([_lab_key(t) for t in labs["test"]], index=labs.index)
        unused = ~names.isin(used)
        guess = {t: _closest_test(t) for t in names[unused].unique()}
        missing = [(name, t) for name, e in endpoints.items() if e["type"] == "first_grade"
                   for t in e.get("tests", ()) if not (names == t).any()]
        if unused.any():
            counts = names[unused].value_counts()
            # rows whose name looks like a test an endpoint grades (a typo, a local name): ignoring them would
            # lose that test's events without a word ('Platlets' rows below 50 are the grade-3 events)
            meant = {t: n for t, n in counts.items() if guess[t] in used}
            if meant:
                listed = ", ".join(f"{t!r} ({n} rows; is it {guess[t]}?)" for t, n in meant.items())
                raise ClinicalDataError(
                    f"{src}: lab test name(s) not read as a graded test, but close to one an endpoint grades: "
                    f"{listed}. Rename the rows to the test they are (names read as each: see docs/analysis.md), "
                    "or, if they are another test, give them a name that does not look like one.")
            shown = ", ".join(f"{t} ({n})" for t, n in counts.items())
            warnings.warn(f"{src}: {int(unused.sum())} row(s) of tests no endpoint uses are ignored: {shown}.",
                          PetfeatWarning, stacklevel=2)
            labs = labs[~unused]
    if missing and labs is not None and not len(labs):  # no row of any graded test: nothing to grade first
        _refuse_missing(missing, guess, src)
    out = {}
    for name, e in endpoints.items():
        window = e.get("death_window_days", DEATH_WINDOW_DAYS)
        if e["type"] == "first_grade":
            if labs is None:
                raise PetfeatError(f"endpoint {name!r} needs the labs table.")
            out[name] = time_to_first_grade(labs, clinical["patients"], tuple(e.get("tests", ())),
                                            int(e.get("min_grade", 3)), bool(e.get("treatment_emergent", False)),
                                            e.get("death", "competing"), window,
                                            sources.get("labs", "the labs table"))
        else:
            sc = clinical["scores"]
            sc = sc[sc["instrument"] == e["score"]]
            if not len(sc):
                raise PetfeatError(f"endpoint {name!r}: no scores of instrument {e['score']!r} in the clinical folder.")
            w = Worsening(e["direction"], e.get("absolute"), e.get("relative"), bool(e.get("strict", True)),
                          bool(e.get("confirmed", False)), e.get("zero_baseline", "absolute"), e.get("death", "censor"),
                          window)
            out[name] = time_to_worsening(sc, clinical["patients"], w)
    if missing:  # after the endpoints, so that a value that is wrong in a present test is named first
        _refuse_missing(missing, guess, src)
    return out


def _refuse_missing(missing: list[tuple[str, str]], guess: dict, src: str) -> None:
    """Refuse an endpoint test without any row in the labs table, naming the names close to it."""
    name, t = missing[0]
    meant = [repr(str(k)) for k, v in guess.items() if v == t]
    hint = f" (is {', '.join(meant)} {t}?)" if meant else ""
    raise ClinicalDataError(f"{src}: endpoint {name!r} grades {t}, but the file has no {t} rows{hint}; add the {t} "
                            f"rows (test names read as {t}: {_spellings(t)}), or remove {t} from the endpoint's "
                            "tests in the study spec.")


def feature_wide(features: pd.DataFrame) -> pd.DataFrame:
    """``patient_id x (region, feature)`` table from the long feature table (first study per patient)."""
    f = features.sort_values(["patient_id", "study_date"] if "study_date" in features.columns else ["patient_id"])
    f = f.drop_duplicates(["patient_id", "region"])
    num = [c for c in ("suv_mean", "suv_max", "suv_min", "suv_std", "suv_peak_local", "suv_peak_global", "volume_ml",
                       "total_uptake", "voxel_count", "lesion_count") if c in f.columns]
    wide = f.pivot(index="patient_id", columns="region", values=num)
    wide.columns = [f"{region}.{feat}" for feat, region in wide.columns]
    return wide.reset_index()


#: Units of the patient-table covariates (``baseline_<test>`` of a CTCAE lab takes the test's unit).
COVARIATE_UNITS = {"age": "year", "psa": "ng/mL", "ecog": "ECOG grade", BASELINE_SCORE: "point"}


def covariate_unit(name: str) -> str:
    """The unit a covariate's effect is given per: ``baseline_haemoglobin`` -> ``g/dL``; "" when unknown."""
    from petfeat.stats.ctcae import CANONICAL_UNIT

    if name in COVARIATE_UNITS:
        return COVARIATE_UNITS[name]
    return CANONICAL_UNIT.get(name[9:], "") if name.startswith("baseline_") else ""


def _baseline_from_scores(scores: pd.DataFrame, patients: pd.DataFrame) -> pd.Series:
    """Last score on or before the first dose per patient (the worsening endpoints' baseline)."""
    from petfeat.stats.endpoints import after_first_dose

    sc = scores.dropna(subset=["score"]).assign(date=lambda t: pd.to_datetime(t["date"], format="ISO8601"))
    out = {}
    for pid, start in zip(patients["patient_id"], pd.to_datetime(patients["therapy_start"], format="ISO8601"),
                          strict=True):
        mine = sc[sc["patient_id"] == pid].sort_values("date", kind="stable")
        before = mine[~after_first_dose(mine["date"], start)]
        out[pid] = float(before["score"].iloc[-1]) if len(before) else np.nan
    return pd.Series(out, name=BASELINE_SCORE, dtype=float)


def _exclusions(d: pd.DataFrame, linked: set, col: str, needed: list[str]) -> pd.Series:
    """Why each patient (row of ``d``) is left out of a complete-case analysis; "" for the included.

    The first reason that applies: no features (the patient is not in the feature table), the
    endpoint table's own ``excluded`` reason (no baseline score, no follow-up), no time to event,
    no value of the feature, no value of a covariate.
    """
    why = pd.Series("", index=d.index, dtype=object)

    def mark(mask, text):
        mask = pd.Series(mask, index=d.index).fillna(False).astype(bool) & why.eq("")
        if isinstance(text, pd.Series):
            why[mask] = text[mask]
        else:
            why[mask] = text

    mark(~d["patient_id"].isin(linked), "no features")
    if "excluded" in d.columns:
        given = d["excluded"].where(d["excluded"].notna(), "").astype(str).str.strip()
        mark(given.ne("") & given.ne("False") & given.ne("0"),
             given.where(given.ne("True"), "excluded by the endpoint"))
    if "time_days" in d.columns:
        status = d["status"].astype(str) if "status" in d.columns else pd.Series("", index=d.index)
        mark(d["time_days"].isna() & status.eq("no_baseline"), "no baseline score")
        mark(d["time_days"].isna(), "no time to event")
    mark(d[col].isna(), f"no {col}")
    for c in needed:
        mark(d[c].isna() if c in d.columns else True, f"no {c}")
    return why


def _reasons(why: pd.Series) -> str:
    """``2 no features; 1 no baseline score``: the reasons, most frequent first, ties in alphabetical order."""
    counts = why[why.ne("")].value_counts()
    return "; ".join(f"{n} {r}" for r, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _singular_flag(r: dict) -> str:
    """``singular fit: <what is at the boundary>; kept ...`` (:func:`petfeat.stats.models.boundary_text`)."""
    if not r.get("singular"):
        return ""
    df = ("tests use lmerTest's Satterthwaite df on the Cholesky scale" if r.get("df_method") == "satterthwaite"
          else "Wald z tests")
    return f"singular fit: {r.get('boundary') or 'random-effect covariance at the boundary'}; kept, {df}"


def _deaths_by_outcome(d: pd.DataFrame, rule: str) -> dict:
    """Deaths among the analysed patients (rows of ``d``: endpoint table joined to ``patients``), by what they did.

    ``deaths_competing`` / ``deaths_as_event``: deaths that ended follow-up (endpoint ``status`` "death");
    ``deaths_censored_window``: deaths on record after the death window (no event, censored at the last
    assessment although the rule would count them); ``deaths_censored_rule``: deaths censored by the rule
    ``censor``. A death after the patient's event is not counted (follow-up had ended).
    """
    given = d["death_date"] if "death_date" in d.columns else pd.Series(np.nan, index=d.index)
    died = (given.notna() & given.astype(str).str.strip().ne("")).to_numpy()  # dates checked by read_clinical
    status = d["status"].astype(str).to_numpy() if "status" in d.columns else np.full(len(d), "")
    ended = died & (status == "death")
    censored = died & (status == "censored")
    return {"deaths_competing": int(ended.sum()) if rule == "competing" else 0,
            "deaths_as_event": int(ended.sum()) if rule == "event" else 0,
            "deaths_censored_window": 0 if rule == "censor" else int(censored.sum()),
            "deaths_censored_rule": int(censored.sum()) if rule == "censor" else 0}


def _p_text(p: float) -> str:
    return f"p = {p:.3f}" if p >= 0.001 else "p < 0.001" if np.isfinite(p) else "no p"


def run_analyses(features: pd.DataFrame, clinical: dict, spec: dict, progress=None) -> tuple[pd.DataFrame, dict]:
    """Fit every analysis of the spec; returns the result table and the data used.

    ``progress(i, n)``, when given, is called after each of the ``n`` models (analysis x feature).

    Every analysis is complete-case over the patients of the clinical ``patients`` table: a patient
    without features, without the endpoint (the endpoint table's ``excluded`` reason, e.g. no
    baseline score), without the feature's value or a covariate is left out of that model. Each row
    gives ``n_patients`` (the clinical table's), ``n_included``, ``n_excluded`` and ``excluded_reasons``
    (``1 no features; 1 no baseline score``).

    Covariate ``baseline_score`` of a worsening endpoint's Cox model: the endpoint's baseline score
    (its ``baseline`` column; from the scores table when the endpoint table has none), the
    adjustment for regression to the mean.

    Multiplicity (spec ``multiplicity``): ``p_fdr`` (Benjamini-Hochberg) and/or ``p_holm`` over a
    family of tests, all tests of the study (default) or each analysis. A tested row without a p
    (a model that failed, did not converge or has no df) is left out of the family and says so in
    ``flag``; ``in_family`` marks the rows in it, ``family_size`` counts them.

    One row per analysis and feature (``term`` = the tested term; ``status`` ``ok``, ``not converged``
    or the reason the model could not be fitted), followed for Cox models by one row per covariate
    (``status`` ``ok (covariate)``: reported, not part of the family). With ``interaction`` (mixed
    models) the tested term and the headline ``estimate``/``p`` are ``feature x time``; time is
    centred at its mean over the model's observations and the feature's main effect, its effect at
    that time, is in ``main_*``. ``flag`` names what weakens a row (not converged, events per
    variable below 10, a singular fit); ``warnings`` holds the fitter's.

    Deaths, per Cox row: ``death`` (the endpoint's rule), ``death_window_days`` (NaN: any time) and, over the
    analysed patients, ``deaths_competing``, ``deaths_as_event``, ``deaths_censored_window`` (a death more than
    the window after the patient's last assessment of the endpoint, censored there) and ``deaths_censored_rule``.
    Mixed rows give ``var_intercept_at``: the time at which ``var_intercept`` (and ``cov_intercept_slope``) is
    the random-intercept variance (the centred time with ``interaction``, else 0).
    """
    endpoints = derive_endpoints(spec, clinical)
    wide = feature_wide(features)
    patients = clinical["patients"]
    linked = set(wide["patient_id"]) & set(patients["patient_id"])
    if not linked:
        raise PetfeatError("no patient_id of the clinical tables matches the feature table; the clinical tables must "
                           "use the pseudonymised ids (petfeat scan --linkage writes the map).")
    base = patients.merge(wide, on="patient_id", how="left")  # every patient of the cohort; no features: NaN
    n_patients = int(patients["patient_id"].nunique())
    rows, data, mixed = [], {}, {}
    n_models, done = sum(len(a["features"]) for a in spec["analyses"]), 0
    for a in spec["analyses"]:
        for feat in a["features"]:
            if progress is not None and done:
                progress(done, n_models)
            done += 1
            col = f"{a['region']}.{feat}"
            if col not in base.columns:
                rows.append({"analysis": a.get("name", ""), "model": a["model"], "feature": col, "status":
                             f"feature {col} not in the feature table"})
                continue
            rec = {"analysis": a.get("name", ""), "model": a["model"], "region": a["region"], "feature": col,
                   "endpoint": a.get("endpoint", a.get("score")), "n_patients": n_patients}
            covs = list(a.get("covariates", []))
            if a["model"] == "cox":
                e = spec["endpoints"][a["endpoint"]]
                rule = e.get("death", "competing" if e["type"] == "first_grade" else "censor")
                last = "lab of the endpoint's tests" if e["type"] == "first_grade" else f"{e['score']} score"
                rec["death"] = {"competing": "competing event (cause-specific Cox)", "event": "event (composite)",
                                "censor": f"censored at the last {last}"}[rule]
                window = e.get("death_window_days", DEATH_WINDOW_DAYS)
                rec["death_window_days"] = np.nan if window is None else float(window)
            extra = []
            try:
                if a["model"] == "cox":
                    d = base.merge(endpoints[a["endpoint"]], on="patient_id", how="left")
                    if BASELINE_SCORE in covs:
                        if "baseline" in d.columns:
                            d[BASELINE_SCORE] = d["baseline"]
                        else:
                            sc = clinical["scores"]
                            d[BASELINE_SCORE] = d["patient_id"].map(_baseline_from_scores(
                                sc[sc["instrument"] == e["score"]], patients))
                    why = _exclusions(d, linked, col, covs)
                    rec.update(n_included=int(why.eq("").sum()), n_excluded=int(why.ne("").sum()),
                               excluded_reasons=_reasons(why))
                    d = d[why.eq("")]
                    rec.update(_deaths_by_outcome(d, rule))
                    r = fit_cox(d, "time_days", "event", col, covs, a.get("transform", "unit"),
                                ph_transform=spec.get("ph_transform", "km"), ridge=a.get("ridge", spec.get("ridge")))
                    data[(a.get("name", ""), col)] = d
                    terms = r.pop("terms")
                    rec.update(r, term=col, result=format_hr(r), status="ok")
                    if "ridge_hr" in r:
                        rec["ridge_result"] = f"ridge sensitivity (penalizer {r['ridge_penalizer']:g}): " + format_hr(
                            {"hr": r["ridge_hr"], "ci_low": r["ridge_ci_low"], "ci_high": r["ridge_ci_high"],
                             "p": r["ridge_p"]})
                    if not r["converged"]:
                        # an estimate at the step where the fitter stopped is no result: no HR, no p, no FDR
                        rec.update(hr=np.nan, ci_low=np.nan, ci_high=np.nan, p=np.nan, p_log10=np.nan, coef=np.nan,
                                   se=np.nan,
                                   result="not converged (monotone likelihood)", status="not converged")
                    else:
                        for t in terms[1:]:  # the covariates' own rows: reported, not tested
                            unit = covariate_unit(t["term"])
                            extra.append({**{k: rec[k] for k in ("analysis", "model", "region", "feature", "endpoint",
                                                                 "n", "events", "flag", "n_patients", "n_included",
                                                                 "n_excluded", "excluded_reasons")},
                                          **t, "transform": f"per {unit}" if unit else "per unit",
                                          "result": format_hr(t), "status": "ok (covariate)"})
                else:
                    sc = clinical["scores"]
                    sc = sc[sc["instrument"] == a["score"]]
                    if "cycle" not in sc.columns:
                        raise PetfeatError(f"mixed model {a.get('name')!r}: the {a['score']} scores need a 'cycle' "
                                           "column.")
                    tcol = a.get("time", "cycle")
                    obs = sc.dropna(subset=["score", tcol]) if tcol in sc.columns else sc.iloc[:0]
                    who = base.assign(n_obs=base["patient_id"].map(obs.groupby("patient_id").size()))
                    why = _exclusions(who, linked, col, covs)
                    why[why.eq("") & who["n_obs"].isna()] = f"no {a['score']} score"
                    rec.update(n_included=int(why.eq("").sum()), n_excluded=int(why.ne("").sum()),
                               excluded_reasons=_reasons(why))
                    d = sc.merge(base[why.eq("")], on="patient_id")
                    mixed[(a.get("name", ""), col)] = d
                    inter, slope = bool(a.get("interaction", False)), bool(a.get("random_slope", False))
                    centre = float(d[tcol].dropna().astype(float).mean()) if inter else None
                    r = fit_mixed(d, "score", col, tcol, "patient_id", covs, a.get("transform", "unit"),
                                  random_slope=slope, interaction=inter, df_method=a.get("df", "normal"),
                                  centre_time=centre)
                    flags = [f for f in ("" if r["converged"] else "not converged", _singular_flag(r)) if f]
                    rec.update(r, term=col, status="ok", flag="; ".join(flags), time=tcol)
                    if inter:
                        # the interaction is the tested term and the headline; the main effect is conditional
                        keys = ("estimate", "se", "df", "ci_low", "ci_high", "p", "p_log10")
                        rec.update({f"main_{k}": r.get(k, np.nan) for k in keys})
                        rec.update({k: r.get(f"interaction_{k}", np.nan) for k in keys})
                        rec["term"] = f"{col}:{tcol}"
                        rec["main_result"] = (f"{col} at {tcol} {centre:.3g} (the mean; conditional on {tcol}): "
                                              f"{r['estimate']:.3g}, 95% CI {r['ci_low']:.3g} to {r['ci_high']:.3g}, "
                                              + _p_text(r["p"]))
                        rec["interaction_result"] = (
                            f"x {tcol}: {r['interaction_estimate']:.3g} per {tcol}, 95% CI "
                            f"{r['interaction_ci_low']:.3g} to {r['interaction_ci_high']:.3g}, "
                            + _p_text(r["interaction_p"]))
                        rec["result"] = f"feature {rec['interaction_result']}"
                    else:
                        rec["result"] = (f"estimate = {r['estimate']:.3g}, 95% CI {r['ci_low']:.3g} to "
                                         f"{r['ci_high']:.3g}, " + _p_text(r["p"]))
                    if not np.isfinite(rec["p"]):
                        rec.update(status="no test: Satterthwaite df undefined", result="no test (df undefined)")
            except PetfeatError as exc:
                rec["status"] = str(exc)
            except (np.linalg.LinAlgError, ValueError, ArithmeticError) as exc:
                # a degenerate model (no spread, separation, singular design) is this row's result, not a crash
                rec["status"] = f"model failed: {type(exc).__name__}: {exc}"
            rows.append(rec)
            rows.extend(extra)
    res = pd.DataFrame(rows)
    methods, family = _multiplicity(spec)
    tested = res["status"].ne("ok (covariate)")
    ok = tested & res["status"].eq("ok") & (res["p"].notna() if "p" in res.columns else False)
    res["in_family"] = ok
    left_out = tested & ~ok
    if left_out.any():
        note = "no p: left out of the multiplicity family"
        if "flag" not in res.columns:
            res["flag"] = ""
        old = res.loc[left_out, "flag"].fillna("").astype(str)
        res.loc[left_out, "flag"] = [f"{o}; {note}" if o else note for o in old]
    groups = res.loc[ok, "analysis"] if family == "analysis" else pd.Series("study", index=res.index[ok])
    for _, idx in groups.groupby(groups).groups.items():
        res.loc[idx, "family_size"] = len(idx)
        if "bh" in methods:
            res.loc[idx, "p_fdr"] = fdr(res.loc[idx, "p"].to_numpy())
        if "holm" in methods:
            res.loc[idx, "p_holm"] = holm(res.loc[idx, "p"].to_numpy())
    return res, {"endpoints": endpoints, "data": data, "mixed": mixed, "base": base}


def write_report(results: pd.DataFrame, context: dict, spec: dict, out: str | Path, extra_html: str = "",
                 **kwargs) -> dict[str, Path]:
    """Tables (CSV, Markdown), figure files and the HTML report: :func:`petfeat.report.write_report`."""
    from petfeat.report import write_report as build

    return build(results, context, spec, out, extra_html, **kwargs)
