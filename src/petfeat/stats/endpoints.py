"""Time-to-event endpoints from long clinical tables (dates as ISO strings or datetimes).

Time origin is the first dose (``patients.therapy_start``); times are in days. An event is the
first assessment after the origin that meets the definition; patients without an event are
censored at their last assessment after the origin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from petfeat.errors import PetfeatError
from petfeat.stats.ctcae import grade_labs


def _dates(s: pd.Series) -> pd.Series:
    return pd.to_datetime(s, errors="raise")


def _require(df: pd.DataFrame, cols, name: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise PetfeatError(f"the {name} table lacks column(s) {', '.join(missing)}.")


def time_to_first_grade(labs: pd.DataFrame, patients: pd.DataFrame, tests=("haemoglobin", "neutrophils", "platelets"),
                        min_grade: int = 3) -> pd.DataFrame:
    """Time to the first lab of grade >= ``min_grade`` among ``tests`` after the first dose.

    Returns one row per patient: ``time_days``, ``event`` (0/1), ``baseline_grade_ge`` (the last
    value on or before the first dose already had grade >= ``min_grade``), ``n_assessments``.
    """
    _require(labs, ("patient_id", "date", "test", "value", "unit"), "labs")
    _require(patients, ("patient_id", "therapy_start"), "patients")
    g = grade_labs(labs)
    g = g[g["test"].isin(tests)].copy()
    g["date"] = _dates(g["date"])
    rows = []
    for pid, start in zip(patients["patient_id"], _dates(patients["therapy_start"]), strict=True):
        mine = g[g["patient_id"] == pid].sort_values("date")
        before = mine[mine["date"] <= start]
        after = mine[mine["date"] > start]
        baseline = bool(len(before) and before.groupby("test")["grade"].last().max() >= min_grade)
        hit = after[after["grade"] >= min_grade]
        if len(hit):
            t, e = (hit["date"].iloc[0] - start).days, 1
        else:
            t, e = ((after["date"].iloc[-1] - start).days if len(after) else 0), 0
        rows.append({"patient_id": pid, "time_days": float(t), "event": e, "baseline_grade_ge": baseline,
                     "n_assessments": int(after["date"].nunique())})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Worsening:
    """Definition of worsening of a score relative to its baseline.

    ``direction``: ``"decrease"`` (FACT-P: lower is worse) or ``"increase"`` (BPI: higher is worse).
    ``absolute``: change in points; ``relative``: fraction of baseline; with both, either suffices.
    ``strict``: the change must exceed the threshold (``>``) rather than reach it (``>=``).
    ``confirmed``: the next assessment must also meet the definition (a last assessment cannot confirm).
    ``zero_baseline``: with a relative threshold and a baseline of 0, ``"absolute"`` judges by the
    absolute threshold only, ``"any"`` counts any change in the worse direction.
    ``death``: ``"event"`` counts death before worsening as an event at the death date, ``"censor"``
    censors at the last assessment.
    """

    direction: str
    absolute: float | None = None
    relative: float | None = None
    strict: bool = True
    confirmed: bool = False
    zero_baseline: str = "absolute"
    death: str = "censor"

    def worse(self, baseline: float, value: float) -> bool:
        """Whether ``value`` is worse than ``baseline`` by this definition."""
        change = (baseline - value) if self.direction == "decrease" else (value - baseline)
        if self.direction not in ("decrease", "increase"):
            raise PetfeatError(f"direction is {self.direction!r}; use 'decrease' or 'increase'.")

        def beyond(x, thr):
            return x > thr if self.strict else x >= thr

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
                      score_col: str = "score") -> pd.DataFrame:
    """Time to the first worsening of a score after the first dose (one row per patient).

    ``scores``: columns ``patient_id, date, <score_col>``; the baseline is the last score on or before
    the first dose. ``patients`` may hold ``death_date``. Patients without a baseline get NaN time.
    """
    _require(scores, ("patient_id", "date", score_col), "scores")
    _require(patients, ("patient_id", "therapy_start"), "patients")
    sc = scores.dropna(subset=[score_col]).copy()
    sc["date"] = _dates(sc["date"])
    deaths = _dates(patients["death_date"]) if "death_date" in patients.columns else pd.Series([pd.NaT] * len(patients))
    rows = []
    for pid, start, death in zip(patients["patient_id"], _dates(patients["therapy_start"]), deaths, strict=True):
        mine = sc[sc["patient_id"] == pid].sort_values("date")
        before, after = mine[mine["date"] <= start], mine[mine["date"] > start]
        if not len(before):
            rows.append({"patient_id": pid, "time_days": np.nan, "event": 0, "baseline": np.nan,
                         "status": "no_baseline"})
            continue
        base = float(before[score_col].iloc[-1])
        flags = [definition.worse(base, float(v)) for v in after[score_col]]
        event_at = None
        for i, f in enumerate(flags):
            if f and (not definition.confirmed or (i + 1 < len(flags) and flags[i + 1])):
                event_at = after["date"].iloc[i]
                break
        last = after["date"].iloc[-1] if len(after) else start
        status = "worsened"
        if event_at is None and pd.notna(death) and definition.death == "event":
            event_at, status = death, "death"
        if event_at is not None and pd.notna(death) and death < event_at and definition.death == "event":
            event_at, status = death, "death"
        if event_at is None:
            rows.append({"patient_id": pid, "time_days": float((last - start).days), "event": 0, "baseline": base,
                         "status": "censored"})
        else:
            rows.append({"patient_id": pid, "time_days": float((event_at - start).days), "event": 1, "baseline": base,
                         "status": status})
    return pd.DataFrame(rows)
