"""A synthetic clinical cohort whose outcomes depend on image features with planted effects.

For each patient of a feature table: six 177Lu-PSMA cycles every 6 weeks, labs every 2 weeks
(haemoglobin, neutrophils, platelets, white cells),
FACT-P (item responses, scored by petfeat) and BPI (scored) at every visit (day 1 and mid-cycle), a
xerostomia score per cycle.

Event times are drawn from exponential hazards ``base x exp(beta x t(feature))``, where ``t`` is
the spec's transform, centred. The raw tables are written so that the derived endpoints reproduce
those times: platelets fall to grade 3, FACT-P drops by 15 points and BPI severity rises by 3
points at the first assessment after the event. Xerostomia follows
``20 + slope x z(feature) + 4 x cycle + patient effect + noise``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from petfeat.stats.analysis import feature_wide
from petfeat.stats.questionnaires import FACT_G, FACT_P_PCS

#: (endpoint or score, feature column, transform) -> planted log-HR (Cox) or slope (mixed model).
PLANTED = {
    ("fact_p_worsening", "whole_body_tumor.total_uptake", "log2"): 0.6,
    ("haematological_toxicity_g3", "healthy_bone.total_uptake", "sd"): 0.7,
    ("bpi_severity_worsening", "healthy_bone.suv_mean", "sd"): 0.6,
    ("xerostomia", "salivary_glands.suv_mean", "sd"): 4.0,
}
BASE_RATE_PER_DAY = {"fact_p_worsening": 1 / 200, "haematological_toxicity_g3": 1 / 300,
                     "bpi_severity_worsening": 1 / 220, "bpi_interference_worsening": 1 / 250}
CYCLE_DAYS, N_CYCLES, LAB_EVERY = 42, 6, 14


def _t(x: pd.Series, how: str) -> np.ndarray:
    v = np.log2(x.to_numpy(float)) if how == "log2" else x.to_numpy(float)
    v = v - v.mean()
    return v / v.std(ddof=1) if how == "sd" else v


def fact_p_items(total: float) -> dict[str, int]:
    """FACT-P v4 item responses (0-4) whose FACIT-scored total is ``round(total)`` clipped to 0-156.

    Each of the 39 items contributes ``total // 39`` or one more; reversed items answer ``4 - contribution``.
    """
    t = int(np.clip(round(total), 0, 156))
    keys = {**{k: v for sub in FACT_G.values() for k, v in sub.items()}, **FACT_P_PCS}
    base, extra = divmod(t, len(keys))
    contrib = [base + (i < extra) for i in range(len(keys))]
    return {item: 4 - c if rev else c for (item, rev), c in zip(keys.items(), contrib, strict=True)}


def generate_clinical(features: pd.DataFrame, out: str | Path, seed: int = 0) -> dict:
    """Write patients/labs/scores CSVs under ``out`` for the patients of ``features``; returns the planted effects."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wide = feature_wide(features)
    # Draw patients in an order fixed by their image features, not by their pseudonyms: the pseudonyms depend on the
    # site key, which is random per archive, and a seed must give the same cohort whatever the key.
    num = wide.drop(columns="patient_id").round(6)
    wide = wide.iloc[np.lexsort(num.to_numpy(float).T[::-1])].reset_index(drop=True)
    n = len(wide)
    start = [dt.date(2023, 1, 2) + dt.timedelta(days=int(d)) for d in rng.integers(0, 500, n)]
    horizon = N_CYCLES * CYCLE_DAYS
    times = {}
    for endpoint, rate in BASE_RATE_PER_DAY.items():
        eta = np.zeros(n)
        for (ep, col, how), beta in PLANTED.items():
            if ep == endpoint and col in wide.columns:
                eta += beta * _t(wide[col], how)
        times[endpoint] = rng.exponential(1.0 / (rate * np.exp(eta)))
    patients = pd.DataFrame({"patient_id": wide["patient_id"], "therapy_start": [s.isoformat() for s in start],
                             "baseline_haemoglobin": np.round(rng.normal(12.3, 1.1, n), 1),
                             "age": rng.integers(55, 85, n), "ecog": rng.integers(0, 3, n)})
    labs, scores, items = [], [], []
    wbc_rng = np.random.default_rng([seed, 1])  # its own stream: the other tables draw as without white cells
    sal = _t(wide["salivary_glands.suv_mean"], "sd") if "salivary_glands.suv_mean" in wide.columns else np.zeros(n)
    for i, pid in enumerate(wide["patient_id"]):
        s0 = start[i]
        for day in range(-3, horizon + 1, LAB_EVERY):
            date = (s0 + dt.timedelta(days=day)).isoformat()
            tox = day > 0 and day >= times["haematological_toxicity_g3"][i]
            labs += [(pid, date, "platelets", 38.0 if tox else float(rng.normal(230, 30)), "10^9/L"),
                     (pid, date, "haemoglobin", float(rng.normal(12.3, 0.6)), "g/dL"),
                     (pid, date, "neutrophils", float(rng.normal(3.5, 0.5)), "10^9/L"),
                     (pid, date, "white_cells", float(wbc_rng.normal(6.5, 0.8)), "10^9/L")]
        fact0, bpi0, int0 = rng.normal(105, 12), rng.uniform(2, 5), rng.uniform(2, 5)
        u = rng.normal(0, 3)
        for v in range(2 * N_CYCLES + 1):  # questionnaires at every visit: day 1 and mid-cycle
            c = (v + 1) // 2
            day = -2 if v == 0 else v * CYCLE_DAYS // 2
            date = (s0 + dt.timedelta(days=day)).isoformat()
            after = lambda ep: day > 0 and day >= times[ep][i]  # noqa: B023, E731 - evaluated at once
            fact = fact0 - 15 if after("fact_p_worsening") else fact0 + rng.normal(0, 2)
            items += [(pid, date, "fact_p", item, r, c) for item, r in fact_p_items(fact).items()]
            scores.append((pid, date, "bpi_severity", bpi0 + 3 if after("bpi_severity_worsening") else
                           bpi0 + rng.uniform(-0.2, 0.2), c))
            scores.append((pid, date, "bpi_interference", int0 + 3 if after("bpi_interference_worsening") else
                           int0 + rng.uniform(-0.2, 0.2), c))
            if v >= 1 and v % 2 == 0:  # xerostomia once per cycle
                slope = PLANTED[("xerostomia", "salivary_glands.suv_mean", "sd")]
                xq = 20 + slope * sal[i] + 4 * c + u + rng.normal(0, 3)
                scores.append((pid, date, "xerostomia", float(np.clip(xq, 0, 100)), c))
    patients.to_csv(out / "patients.csv", index=False)
    pd.DataFrame(labs, columns=["patient_id", "date", "test", "value", "unit"]).to_csv(out / "labs.csv", index=False)
    pd.DataFrame(items, columns=["patient_id", "date", "instrument", "item", "response", "cycle"]).to_csv(
        out / "questionnaires.csv", index=False)
    pd.DataFrame(scores, columns=["patient_id", "date", "instrument", "score", "cycle"]).to_csv(out / "scores.csv",
                                                                                               index=False)
    return {f"{ep} | {col} | {how}": beta for (ep, col, how), beta in PLANTED.items()}


def planted_vs_recovered(results: pd.DataFrame) -> pd.DataFrame:
    """Planted effects beside the recovered ones (log-HR or slope, 95% CI, inside or not)."""
    rows = []
    for (ep, col, how), beta in PLANTED.items():
        hit = results[(results["feature"] == col) & (results["endpoint"] == ep)] if len(results) else results
        if not len(hit) or hit.iloc[0].get("status") != "ok":
            rows.append({"endpoint": ep, "feature": col, "transform": how, "planted": beta, "recovered": np.nan,
                         "ci_low": np.nan, "ci_high": np.nan, "inside_ci": False})
            continue
        r = hit.iloc[0]
        if r["model"] == "cox":
            est, lo, hi = np.log(r["hr"]), np.log(r["ci_low"]), np.log(r["ci_high"])
        else:
            est, lo, hi = r["estimate"], r["ci_low"], r["ci_high"]
        rows.append({"endpoint": ep, "feature": col, "transform": how, "planted": beta, "recovered": est,
                     "ci_low": lo, "ci_high": hi, "inside_ci": bool(lo <= beta <= hi)})
    return pd.DataFrame(rows)
