"""Time-to-event endpoints from long clinical tables (dates as ISO strings or datetimes).

Time origin is the first dose (``patients.therapy_start``); times are whole calendar days from the
day of the first dose. An event is the first assessment after the first dose that meets the
definition; patients without an event are censored at their last assessment after the first dose.
Lab rows without a value and score rows without a score are not assessments: they neither
extend follow-up nor count.

Baseline and follow-up on the day of the first dose: an assessment dated before that day is
baseline, one dated after it is follow-up. On the day itself an assessment is baseline (taken
before the dose), unless both the dose and the assessment carry a time of day
(``therapy_start = "2024-03-01 10:30"``, ``date = "2024-03-01 14:00"``) and the assessment is
later than the dose. A value at exactly midnight counts as a date without a time.

Death (``patients.death_date``), per endpoint: ``"competing"`` ends follow-up at death as a
competing event (``event`` 0, ``competing`` 1, time = day of death): a Cox model of ``event`` is then
the cause-specific hazard, and the cumulative incidence is Aalen-Johansen's (:func:`cumulative_incidence`),
not 1 - Kaplan-Meier; ``"event"`` counts death as an event (composite endpoint); ``"censor"``
censors at the last assessment. Toxicity endpoints default to ``"competing"``, worsening endpoints
to ``"censor"``. A death more than ``death_window_days`` (:data:`DEATH_WINDOW_DAYS`) after the
patient's last assessment was not seen by the follow-up: it is censored at the last assessment whatever
the rule.

A patient without a baseline (worsening) or without any assessment after the first dose, and without a
death that ends follow-up, keeps a row with NaN time and the reason in ``excluded``.

Dates: ISO 8601 (``YYYY-MM-DD`` or ``YYYY-MM-DD HH:MM``; date-only and timed values may be mixed).
Dates written day and month in either order (``16.11.2023``) are read by one rule per file
(:func:`date_rule`): only when some date of the file has a number above 12 in the day or the month
place, and then every date of the file is read in that order; otherwise they are refused.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from petfeat.errors import PetfeatError, PetfeatWarning
from petfeat.stats.ctcae import canonical_test, grade_labs
from petfeat.stats.errors import ClinicalDataError

_ISO = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?$")
#: Day and month in either order, then the year, by ``.``, ``/`` or ``-`` (``16.11.2023``, ``11/16/2023 08:30``).
#: Year first with ``/`` or ``.`` (``2024/03/01``): read as ISO.
_YEAR_FIRST = re.compile(r"^(\d{4})([./])(\d{1,2})\2(\d{1,2})(?:[ T](\d{1,2}:\d{2}(?::\d{2})?))?$")
_NUMERIC = re.compile(r"^(\d{1,2})([./-])(\d{1,2})\2(\d{4})(?:[ T](\d{1,2}:\d{2}(?::\d{2})?))?$")


def _text(v) -> str | None:
    """A date cell as text (None when empty); Timestamps and dates of a Parquet file are written in ISO."""
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return None
    t = str(v).strip()
    m = _YEAR_FIRST.match(t)
    if m:
        t = f"{m.group(1)}-{m.group(3)}-{m.group(4)}" + (f" {m.group(5)}" if m.group(5) else "")
    return t or None


def _where(table: str) -> str:
    return table if any(ch in table for ch in " /.") else f"the {table} table"


def _label(s: pd.Series, pos: int) -> int:
    lab = s.index[pos]
    return int(lab) + 1 if isinstance(lab, (int, np.integer)) else pos + 1


def date_rule(columns: dict[str, pd.Series], table: str = "clinical") -> bool | None:
    """The one way every date of a file is read: None (ISO only), True (day first) or False (month first).

    ISO 8601 (``YYYY-MM-DD`` or ``YYYY-MM-DD HH:MM``) is always read, and so is year-month-day with ``/`` or
    ``.`` (``2024/03/01``). Dates written with the day and the
    month in either order (``16.11.2023``, ``11/16/2023``) are read only when the file shows which order it
    uses: a first number above 12 somewhere makes the whole file day-first, a second number above 12
    month-first. Both, or neither (``08.09.2024`` alone is 8 September or 9 August), is refused, as is a value
    that is not a date, and day/month dates with different separators (``16.03.2024`` beside ``04/05/2024``:
    two exports merged, each with its own order).

    Raises
    ------
    ClinicalDataError
        Naming the file, the column, a value and the fix (write ISO dates).
    """
    where = _where(table)
    day_first, month_first, sample = None, None, None
    separators: dict[str, tuple[str, str]] = {}
    for column, s in columns.items():
        if pd.api.types.is_datetime64_any_dtype(s):
            continue
        for pos, v in enumerate(s):
            t = _text(v)
            if t is None or _ISO.match(t):
                continue
            m = _NUMERIC.match(t)
            if m is None:
                raise ClinicalDataError(f"{where}, column {column!r}: {t!r} does not parse as a date (row "
                                        f"{_label(s, pos)}; not YYYY-MM-DD); write every date as YYYY-MM-DD or "
                                        "'YYYY-MM-DD HH:MM'.")
            sample = sample or (column, t)
            separators.setdefault(m.group(2), (column, t))
            if int(m.group(1)) > 12:
                day_first = day_first or (column, t)
            if int(m.group(3)) > 12:
                month_first = month_first or (column, t)
    if sample is None:
        return None
    if day_first and month_first:
        raise ClinicalDataError(f"{where}: dates are written day first ({day_first[0]!r}: {day_first[1]!r}) and month "
                                f"first ({month_first[0]!r}: {month_first[1]!r}); write every date as YYYY-MM-DD.")
    if len(separators) > 1:  # '16.03.2024' beside '04/05/2024': two exports' conventions merged, each may differ
        shown = " and ".join(f"{c!r}: {t!r}" for c, t in separators.values())
        raise ClinicalDataError(f"{where}: day/month dates are written with different separators ({shown}), as when "
                                "two exports with their own date order are merged; write every date as YYYY-MM-DD.")
    if not (day_first or month_first):
        raise ClinicalDataError(f"{where}, column {sample[0]!r}: {sample[1]!r} does not parse as one date: it may be "
                                "day or month first, and no date of the file tells which (none has a number above 12 "
                                "in the first or second place); write every date as YYYY-MM-DD.")
    return bool(day_first)


def _dates(s: pd.Series, table: str = "clinical", column: str = "date", day_first: bool | None | str = "column"
           ) -> pd.Series:
    """Parse a date column: ISO 8601 (date-only and timed mixed), or day/month dates by the file's rule.

    ``day_first``: the rule of the file (:func:`date_rule`); ``"column"`` takes the rule of this column alone.
    ``table`` names the table in messages: a short name (``labs``: "the labs table") or a file path.
    """
    if pd.api.types.is_datetime64_any_dtype(s):
        return s
    if day_first == "column":
        day_first = date_rule({column: s}, table)
    iso = []
    for pos, v in enumerate(s):
        t = _text(v)
        m = None if t is None or _ISO.match(t) else _NUMERIC.match(t)
        if m is not None:
            if day_first is None:  # a rule for ISO only: refuse what it would not read
                raise ClinicalDataError(f"{_where(table)}, column {column!r}: {t!r} is not YYYY-MM-DD (row "
                                        f"{_label(s, pos)}); write every date as YYYY-MM-DD or 'YYYY-MM-DD HH:MM'.")
            d, mo = (m.group(1), m.group(3)) if day_first else (m.group(3), m.group(1))
            t = f"{m.group(4)}-{int(mo):02d}-{int(d):02d}" + (f" {m.group(5)}" if m.group(5) else "")
        iso.append(t)
    out = pd.Series(iso, index=s.index, dtype=object)
    try:
        return pd.to_datetime(out, format="ISO8601")
    except (ValueError, TypeError):
        pass
    parsed = pd.to_datetime(out, format="ISO8601", errors="coerce")
    pos = int(np.flatnonzero((parsed.isna() & out.notna()).to_numpy())[0])
    raw = str(s.iloc[pos]).strip()
    raise ClinicalDataError(f"{_where(table)}, column {column!r}: {raw!r} does not parse as a date (row "
                            f"{_label(s, pos)}; no such day); write every date as YYYY-MM-DD or "
                            "'YYYY-MM-DD HH:MM'.") from None


def _has_time(ts: pd.Series) -> np.ndarray:
    return (ts != ts.dt.normalize()).to_numpy()


def after_first_dose(dates: pd.Series, start: pd.Timestamp) -> np.ndarray:
    """Which assessments are follow-up (True) rather than baseline, by the rule of the module docstring."""
    day, start_day = dates.dt.normalize(), start.normalize()
    later_day = (day > start_day).to_numpy()
    if start == start_day:  # no dose time: the day of the first dose is baseline
        return later_day
    same_day_after = ((day == start_day) & (dates > start)).to_numpy() & _has_time(dates)
    return later_day | same_day_after


def _days(when: pd.Timestamp, start: pd.Timestamp) -> float:
    return float((when.normalize() - start.normalize()).days)


def _require(df: pd.DataFrame, cols, name: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise PetfeatError(f"the {name} table lacks column(s) {', '.join(missing)}.")


DEATH_RULES = ("competing", "event", "censor")


def _no_empty_dates(table: pd.DataFrame, source: str) -> None:
    """Refuse an assessment without a date (it could be neither baseline nor follow-up)."""
    empty = table["date"].isna().to_numpy()
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        lab = table.index[i]
        n = lab + 1 if isinstance(lab, (int, np.integer)) else i + 1
        raise ClinicalDataError(f"{source}, column 'date', row {n} (patient_id {table['patient_id'].iloc[i]}): the "
                                f"date is empty ({int(empty.sum())} such row(s)); enter the date of the assessment "
                                "as YYYY-MM-DD, or delete the row.")


def _deaths(patients: pd.DataFrame) -> pd.Series:
    if "death_date" in patients.columns:
        return _dates(patients["death_date"], "patients", "death_date")
    return pd.Series([pd.NaT] * len(patients), dtype="datetime64[ns]")


#: Default window (days after the last assessment) within which a death ends follow-up as an event or competing
#: event; a later death is censored at the last assessment (nothing was observed in between).
DEATH_WINDOW_DAYS = 30.0


def _death_counts(died, last_seen, start: pd.Timestamp, window: float | None) -> bool:
    """Whether a death ends follow-up: on record, and within ``window`` days of the last assessment (or the dose)."""
    if pd.isna(died):
        return False
    if window is None:
        return True
    ref = max(last_seen.normalize(), start.normalize()) if pd.notna(last_seen) else start.normalize()
    return (died.normalize() - ref).days <= window


def _known_test(name) -> str | None:
    try:
        return canonical_test(name)
    except PetfeatError:
        return None


#: Labs dated at most this many days before the first dose are baseline; older ones are ignored with a warning.
BASELINE_WINDOW_DAYS = 90.0


def time_to_first_grade(labs: pd.DataFrame, patients: pd.DataFrame, tests=("haemoglobin", "neutrophils", "platelets"),
                        min_grade: int = 3, treatment_emergent: bool = False, death: str = "competing",
                        death_window_days: float | None = DEATH_WINDOW_DAYS, source: str = "the labs table",
                        baseline_window_days: float | None = BASELINE_WINDOW_DAYS) -> pd.DataFrame:
    """Time to the first lab of grade >= ``min_grade`` among ``tests`` after the first dose.

    ``tests`` may name any of :data:`petfeat.stats.ctcae.TESTS` (``white_cells``, ``lymphocytes``
    too); rows of other tests are not read. With ``treatment_emergent`` a lab counts only when its
    grade is also worse than the baseline grade of the same test (the last baseline value; 0 without one).

    ``death``: how a death without a prior event ends follow-up (module docstring). A death more than
    ``death_window_days`` after the patient's last lab (None: any time) is not seen by the lab follow-up: the
    patient is censored at the last lab instead.

    Baseline labs are those dated at most ``baseline_window_days`` (:data:`BASELINE_WINDOW_DAYS`; None: any
    time) before the day of the first dose; older labs (a date decades off) are ignored with one warning.

    Returns one row per patient: ``time_days``, ``event`` (0/1), ``competing`` (0/1: death first,
    with ``death="competing"``), ``status`` (``event``, ``death``, ``censored``, ``no_follow_up``),
    ``baseline_grade_ge`` (the last value on or before the first dose already had grade >=
    ``min_grade``), ``n_assessments``, ``excluded`` (why the patient is not in the analysis, with NaN
    time: no lab after the first dose and no death that ends follow-up; empty otherwise).
    """
    if death not in DEATH_RULES:
        raise PetfeatError(f"death is {death!r}; choose one of {', '.join(DEATH_RULES)}.")
    _require(labs, ("patient_id", "date", "test", "value", "unit"), "labs")
    _require(patients, ("patient_id", "therapy_start"), "patients")
    used = labs[[_known_test(t) in tests for t in labs["test"]]]
    g = grade_labs(used, source).set_axis(used.index)  # the file's rows, for messages
    g = g[g["grade"] >= 0].copy()  # a row without a value is no assessment
    g["date"] = _dates(g["date"], source, "date")
    _no_empty_dates(g, source)
    rows, old, old_patients = [], 0, 0
    for pid, start, died in zip(patients["patient_id"], _dates(patients["therapy_start"], "patients", "therapy_start"),
                                _deaths(patients), strict=True):
        mine = g[g["patient_id"] == pid].sort_values("date", kind="stable")
        if baseline_window_days is not None and pd.notna(start):
            stale = ((start.normalize() - mine["date"].dt.normalize()).dt.days > baseline_window_days).to_numpy()
            if stale.any():
                old, old_patients, mine = old + int(stale.sum()), old_patients + 1, mine[~stale]
        later = after_first_dose(mine["date"], start)
        before, after = mine[~later], mine[later]
        base_grades = before.groupby("test")["grade"].last()
        baseline = bool(len(before) and base_grades.max() >= min_grade)
        emergent = after["grade"] > after["test"].map(base_grades).fillna(0) if treatment_emergent else True
        hit = after[(after["grade"] >= min_grade) & emergent]
        counts = _death_counts(died, mine["date"].max() if len(mine) else pd.NaT, start, death_window_days)
        c, status, excluded = 0, "censored", ""
        if len(hit) and not (pd.notna(died) and died.normalize() < hit["date"].iloc[0].normalize()):
            t, e, status = _days(hit["date"].iloc[0], start), 1, "event"
        elif counts and death != "censor":
            t, e, c, status = _days(died, start), int(death == "event"), int(death == "competing"), "death"
        elif len(after):
            t, e = _days(after["date"].iloc[-1], start), 0
        else:
            t, e, status, excluded = np.nan, 0, "no_follow_up", "no lab after the first dose"
        rows.append({"patient_id": pid, "time_days": float(t), "event": e, "competing": c, "status": status,
                     "baseline_grade_ge": baseline, "n_assessments": int(after["date"].nunique()),
                     "excluded": excluded})
    if old:
        warnings.warn(f"{source}: {old} lab row(s) of {old_patients} patient(s) dated more than "
                      f"{baseline_window_days:g} days before the first dose are not baseline and are ignored; check "
                      "their dates.", PetfeatWarning, stacklevel=2)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Worsening:
    """Definition of worsening of a score relative to its baseline.

    ``direction``: ``"decrease"`` (FACT-P: lower is worse) or ``"increase"`` (BPI: higher is worse).
    ``absolute``: change in points; ``relative``: fraction of baseline; with both, either suffices.
    ``strict``: the change must exceed the threshold (``>``) rather than reach it (``>=``); a change
    within 1e-9 (relative) of the threshold counts as equal to it (prorated scores carry rounding error).
    ``confirmed``: the next assessment must also meet the definition (a last assessment cannot confirm).
    ``zero_baseline``: with a relative threshold and a baseline of 0, ``"absolute"`` judges by the
    absolute threshold only, ``"any"`` counts any change in the worse direction.
    ``death``: ``"event"`` counts death before worsening as an event at the death date, ``"censor"``
    censors at the last assessment, ``"competing"`` ends follow-up at death as a competing event.
    ``death_window_days``: a death later than this after the last assessment (None: any time) is censored
    at the last assessment whatever ``death`` says.
    """

    direction: str
    absolute: float | None = None
    relative: float | None = None
    strict: bool = True
    confirmed: bool = False
    zero_baseline: str = "absolute"
    death: str = "censor"
    death_window_days: float | None = DEATH_WINDOW_DAYS

    def worse(self, baseline: float, value: float) -> bool:
        """Whether ``value`` is worse than ``baseline`` by this definition."""
        change = (baseline - value) if self.direction == "decrease" else (value - baseline)
        if self.direction not in ("decrease", "increase"):
            raise PetfeatError(f"direction is {self.direction!r}; use 'decrease' or 'increase'.")

        def beyond(x, thr):
            # prorated scores carry rounding error (62.1667 - 52.1667 = 10.000000000000007): a change equal to
            # the threshold within 1e-9 of it is equal, not more
            tol = 1e-9 * max(1.0, abs(thr))
            return x > thr + tol if self.strict else x >= thr - tol

        hits = []
        if self.absolute is not None:
            hits.append(beyond(change, self.absolute))
        if self.relative is not None:
            if baseline == 0:
                if self.zero_baseline == "any":
                    hits.append(change > 0)
            else:
                hits.append(beyond(change / abs(baseline), self.relative))
        if not hits:
            raise PetfeatError("a worsening definition needs an absolute or a relative threshold.")
        return any(hits)


#: Definitions of the study: FACT-P total decrease of more than 10 points; BPI increase of 30% or 2 points.
FACT_P_WORSENING = Worsening("decrease", absolute=10.0, strict=True)
BPI_WORSENING = Worsening("increase", absolute=2.0, relative=0.30, strict=False)


def time_to_worsening(scores: pd.DataFrame, patients: pd.DataFrame, definition: Worsening,
                      score_col: str = "score", source: str = "the scores table") -> pd.DataFrame:
    """Time to the first worsening of a score after the first dose (one row per patient).

    ``scores``: columns ``patient_id, date, <score_col>``; the baseline is the last score on or before
    the first dose. ``patients`` may hold ``death_date``.

    Returns one row per patient: ``time_days``, ``event``, ``competing``, ``baseline``, ``status``
    (``worsened``, ``death``, ``censored``, ``no_baseline``, ``no_follow_up``) and ``excluded``: why the
    patient is not in the analysis (NaN time): no baseline score, or no score after the first dose and
    no death that ends follow-up; empty otherwise.
    """
    _require(scores, ("patient_id", "date", score_col), "scores")
    _require(patients, ("patient_id", "therapy_start"), "patients")
    sc = scores.dropna(subset=[score_col]).copy()
    sc["date"] = _dates(sc["date"], source, "date")
    _no_empty_dates(sc, source)
    deaths = _deaths(patients)
    if definition.death not in DEATH_RULES:
        raise PetfeatError(f"death is {definition.death!r}; choose one of {', '.join(DEATH_RULES)}.")
    what = f"{scores['instrument'].iloc[0]} score" if "instrument" in scores.columns and len(scores) else "score"
    rows = []
    for pid, start, death in zip(patients["patient_id"], _dates(patients["therapy_start"], "patients",
                                                                "therapy_start"), deaths, strict=True):
        mine = sc[sc["patient_id"] == pid].sort_values("date", kind="stable")
        later = after_first_dose(mine["date"], start)
        before, after = mine[~later], mine[later]
        if not len(before):
            rows.append({"patient_id": pid, "time_days": np.nan, "event": 0, "competing": 0, "baseline": np.nan,
                         "status": "no_baseline", "excluded": f"no baseline {what}"})
            continue
        base = float(before[score_col].iloc[-1])
        flags = [definition.worse(base, float(v)) for v in after[score_col]]
        event_at = None
        for i, f in enumerate(flags):
            if f and (not definition.confirmed or (i + 1 < len(flags) and flags[i + 1])):
                event_at = after["date"].iloc[i]
                break
        status = "worsened"
        counts = _death_counts(death, mine["date"].iloc[-1], start, definition.death_window_days)
        dies_first = counts and (event_at is None or death < event_at)
        if dies_first and definition.death == "event":
            event_at, status = death, "death"
        rec = {"patient_id": pid, "baseline": base, "excluded": ""}
        if dies_first and definition.death == "competing":
            rec.update(time_days=_days(death, start), event=0, competing=1, status="death")
        elif event_at is not None:
            rec.update(time_days=_days(event_at, start), event=1, competing=0, status=status)
        elif len(after):
            rec.update(time_days=_days(after["date"].iloc[-1], start), event=0, competing=0, status="censored")
        else:
            rec.update(time_days=np.nan, event=0, competing=0, status="no_follow_up",
                       excluded=f"no {what} after the first dose")
        rows.append(rec)
    cols = ["patient_id", "time_days", "event", "competing", "baseline", "status", "excluded"]
    return pd.DataFrame(rows, columns=cols)


def cumulative_incidence(time, event, competing) -> pd.DataFrame:
    """Aalen-Johansen cumulative incidence of ``event`` with ``competing`` events (e.g. death).

    ``CIF(t) = sum over event times t_j <= t of S(t_j-) d_j / n_j``, with ``S`` the Kaplan-Meier
    of being free of either event, ``d_j`` the events of interest and ``n_j`` the number at risk at
    ``t_j``. Without competing events it equals 1 - Kaplan-Meier. Returns ``time, cif`` at each
    distinct time with an event of either kind (and 0 at time 0).
    """
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=np.int64) == 1
    c = np.asarray(competing, dtype=np.int64) == 1
    if np.any(e & c):
        raise PetfeatError("a row is both an event and a competing event; each patient ends follow-up once.")
    times = np.unique(t[e | c])
    surv, cif, out = 1.0, 0.0, [(0.0, 0.0)]
    for tj in times:
        n = float(np.sum(t >= tj))
        d1, d2 = float(np.sum(e & (t == tj))), float(np.sum(c & (t == tj)))
        cif += surv * d1 / n
        surv *= 1.0 - (d1 + d2) / n
        out.append((float(tj), cif))
    return pd.DataFrame(out, columns=["time", "cif"])
