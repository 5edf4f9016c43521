"""Numbers as a paper prints them: Table 1, Table 2 per analysis, the methods text and the demo's planted effects.

Every function here formats what the statistics layer computed; none fits a model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

from petfeat.stats.analysis import covariate_unit

#: Display names of the feature table's columns, with units.
FEATURE_NAMES = {
    "suv_mean": ("SUVmean", ""), "suv_max": ("SUVmax", ""), "suv_min": ("SUVmin", ""), "suv_std": ("SUV SD", ""),
    "suv_peak_local": ("SUVpeak (local)", ""), "suv_peak_global": ("SUVpeak (global)", ""),
    "volume_ml": ("volume", "mL"), "total_uptake": ("total uptake", "SUV x mL"), "voxel_count": ("voxels", ""),
    "lesion_count": ("lesions", ""),
}
#: Display names of the built-in regions.
REGION_NAMES = {
    "whole_body_tumor": "whole-body tumour", "healthy_bone": "healthy bone", "salivary_glands": "salivary glands",
    "bone": "bone", "liver": "liver", "tumor_bone": "bone tumour", "tumor_prostate": "prostate tumour",
    "tumor_visceral": "visceral tumour", "tumor_lymph_node_or_soft_tissue": "nodal/soft-tissue tumour",
}
#: Feature of the whole-body tumour region under its PSMA name.
PSMA_NAMES = {"volume_ml": "PSMA-TV", "total_uptake": "TL-PSMA"}
Z975 = 1.959963984540054


def fmt_p(p: float | None) -> str:
    """``<0.001`` below 0.001, else three decimals; empty for a missing value."""
    if p is None or not np.isfinite(p):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_num(v: float | None, digits: int = 2) -> str:
    """A number with ``digits`` decimals (fewer above 100, none above 1000); empty when missing."""
    if v is None or not np.isfinite(v):
        return ""
    a = abs(v)
    return f"{v:,.0f}" if a >= 1000 else f"{v:.1f}" if a >= 100 else f"{v:.{digits}f}"


def fmt_ci(est: float, lo: float, hi: float, digits: int = 2) -> str:
    """``1.23 (0.45 to 3.40)``: the estimate with its 95% interval, one separator everywhere.

    An estimate without an interval is ``1.23 (no CI)``, never an empty pair of bounds.
    """
    if est is None or not np.isfinite(est):
        return ""
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{fmt_num(est, digits)} (no CI)"
    return f"{fmt_num(est, digits)} ({fmt_num(lo, digits)} to {fmt_num(hi, digits)})"


def fmt_median_iqr(x: pd.Series, digits: int = 1) -> str:
    """``12.3 [10.1-14.0]``: median and interquartile range of the finite values."""
    x = pd.to_numeric(x, errors="coerce").dropna()
    if not len(x):
        return "n/a"
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    return f"{fmt_num(med, digits)} [{fmt_num(q1, digits)}-{fmt_num(q3, digits)}]"


#: How the instruments and grades in endpoint and score names are written in the report.
_NAME_WORDS = {"bpi": "BPI", "xq8": "XQ-8", "xi11": "XI", "g3": "grade \u22653", "g4": "grade 4",
               "toi": "TOI", "pcs": "PCS", "fact_p": "FACT-P", "fact_g": "FACT-G"}


def endpoint_label(name: str) -> str:
    """An endpoint or score name as the report writes it (``fact_p_worsening`` -> ``FACT-P worsening``)."""
    text = str(name)
    for key in ("fact_p", "fact_g"):
        text = re.sub(rf"(?<![a-z0-9]){key}(?![a-z0-9])", _NAME_WORDS[key], text)
    return " ".join(_NAME_WORDS.get(w, w) for w in text.split("_"))


def feature_label(column: str, with_region: bool = False, units: bool = True) -> str:
    """``whole_body_tumor.total_uptake`` -> ``TL-PSMA (SUV x mL)``; the region prefixed on request."""
    region, _, feat = column.partition(".")
    if not feat:
        region, feat = "", region
    name, unit = FEATURE_NAMES.get(feat, (feat.replace("_", " "), ""))
    if region == "whole_body_tumor" and feat in PSMA_NAMES:
        name = PSMA_NAMES[feat]
    text = f"{name} ({unit})" if unit and units else name
    return f"{REGION_NAMES.get(region, region.replace('_', ' '))} {text}" if with_region and region else text


def transform_label(transform: str) -> str:
    """``per SD (2.345)`` -> ``per SD (2.35)``; ``per doubling (log2)`` -> ``per doubling``."""
    t = str(transform or "")
    if t.startswith("per SD (") and t.endswith(")"):
        try:
            return f"per SD ({fmt_num(float(t[8:-1]), 3 if abs(float(t[8:-1])) < 10 else 1)})"
        except ValueError:
            return t
    return "per doubling" if t.startswith("per doubling") else t


#: Table 1 rows of the PSMA reference quantities (columns of the quantities table, petfeat.quantities).
REFERENCE_ROWS = (
    ("liver_suv_mean", "Liver SUVmean"),
    ("parotid_suv_mean", "Parotid SUVmean"),
    ("blood_pool_suv_mean", "Blood-pool (aorta) SUVmean"),
    ("tumour_to_liver_ratio", "Tumour-to-liver SUVmean ratio"),
    ("tumour_to_parotid_ratio", "Tumour-to-parotid SUVmean ratio"),
)


def table1(base: pd.DataFrame, features: pd.DataFrame | None = None,
           quantities: pd.DataFrame | None = None) -> list[tuple[str, str]]:
    """Rows of Table 1 (characteristic, value) from the analysis' patient table (patients joined to features).

    Age, every ``baseline_*`` lab, PSA and ECOG when present, lesions per patient and the whole-body
    PSMA-TV and TL-PSMA as median [IQR] (labs with their unit); the number of studies when ``features`` is
    given; ``base`` holds every patient of the clinical table, with or without features. With
    ``quantities`` (the table of :func:`petfeat.quantities.study_quantities`), the reference uptake and the
    tumour-to-liver and tumour-to-parotid ratios as median [IQR] over the patients of ``base``, each at the
    first study, as the features of ``base`` are; "n/a" when no study has the value.
    """
    rows = [("Patients, n", str(len(base)))]
    if features is not None and "study_id" in features.columns:
        rows.append(("PET studies, n", str(features["study_id"].nunique())))
    if "age" in base.columns:
        rows.append(("Age, years, median [IQR]", fmt_median_iqr(base["age"], 0)))
    for c in base.columns:
        if c.startswith("baseline_"):
            unit = covariate_unit(c)
            rows.append((f"Baseline {c[9:].replace('_', ' ')}{', ' + unit if unit else ''}, median [IQR]",
                         fmt_median_iqr(base[c])))
    if "psa" in base.columns:
        rows.append(("PSA, ng/mL, median [IQR]", fmt_median_iqr(base["psa"])))
    if "ecog" in base.columns:
        counts = base["ecog"].value_counts().sort_index()
        rows.append(("ECOG performance status, n (%)", "; ".join(
            f"{int(k) if float(k).is_integer() else k}: {v} ({100 * v / len(base):.0f}%)" for k, v in counts.items())))
    for col, label in (("whole_body_tumor.lesion_count", "Lesions per patient, median [IQR]"),
                       ("whole_body_tumor.volume_ml", "Whole-body PSMA-TV, mL, median [IQR]"),
                       ("whole_body_tumor.total_uptake", "Whole-body TL-PSMA, SUV x mL, median [IQR]"),
                       ("whole_body_tumor.suv_max", "Whole-body SUVmax, median [IQR]")):
        if col in base.columns:
            rows.append((label, fmt_median_iqr(base[col], 0 if col.endswith("lesion_count") else 1)))
    if quantities is not None and "patient_id" in quantities.columns and "patient_id" in base.columns:
        order = [c for c in ("patient_id", "study_date") if c in quantities.columns]
        first = quantities.sort_values(order, kind="mergesort").drop_duplicates("patient_id")
        first = first[first["patient_id"].isin(base["patient_id"])]
        for col, label in REFERENCE_ROWS:
            if col in first.columns:
                rows.append((f"{label}, median [IQR]", fmt_median_iqr(first[col], 2)))
    return rows


def _notes(r: Mapping) -> str:
    parts = [str(r.get("flag") or "").strip()]
    if r.get("status") not in ("ok", "ok (covariate)", None) and not str(r.get("status", "")).startswith("ok"):
        parts.append(str(r.get("status")))
    return "; ".join(p for p in parts if p and p != "nan")


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _cohort_note(r: Mapping) -> str:
    """``11 of 12 patients analysed (complete case); left out: 1 no features``; "" without the counts."""
    n, total = _num(r.get("n_included")), _num(r.get("n_patients"))
    if not (np.isfinite(n) and np.isfinite(total)):
        return ""
    why = str(r.get("excluded_reasons") or "")
    why = "" if why == "nan" else why
    return f"{int(n)} of {int(total)} patients analysed (complete case)" + (f"; left out: {why}" if why else "")


def _death_note(r: Mapping) -> str:
    """``2 deaths as competing events; 1 death more than 30 days after the last assessment censored there``."""
    counts = {k: _num(r.get(k)) for k in ("deaths_competing", "deaths_as_event", "deaths_censored_window",
                                          "deaths_censored_rule")}
    if not any(np.isfinite(v) for v in counts.values()):
        return ""
    window = _num(r.get("death_window_days"))

    def n(k, what, plural=None):
        v = int(counts[k]) if np.isfinite(counts[k]) else 0
        return f"{v} death{'s' if v != 1 else ''} {what if v == 1 else plural or what}"

    rule = str(r.get("death") or "")
    if rule.startswith("censored"):
        return n("deaths_censored_rule", "censored at the last assessment (rule censor)")
    parts = [n("deaths_competing", "as a competing event", "as competing events") if rule.startswith("competing")
             else n("deaths_as_event", "counted as an event", "counted as events")]
    if np.isfinite(window):
        parts.append(n("deaths_censored_window", f"more than {window:g} days after the last assessment of the "
                                                  "endpoint, censored there (death window)"))
    return "; ".join(parts)


def table2(results: pd.DataFrame) -> list[dict]:
    """One Table 2 block per analysis: a caption, rows shaped like a paper's results table, and notes.

    Cox blocks have the columns feature, HR (95% CI), p, q (Benjamini-Hochberg), Holm, n/events,
    EPV, PH test p and notes, with the covariates' rows (effect per unit of the covariate) beneath
    their feature. Mixed-model blocks have feature, estimate (95% CI), p, q, Holm,
    observations/patients and notes; with a feature x time interaction the estimate, p, q and Holm
    are the interaction's (the tested term) and a column gives the feature's main effect at the
    centred time, conditional on it. ``notes`` of a block: the patients included of the cohort and
    why the others were left out (complete case), for Cox blocks the deaths among them (ending
    follow-up as competing events or events, or censored by the death window or the rule), and the
    tested rows without a p, left out of the multiplicity family.
    """
    blocks = []
    if not len(results):
        return blocks
    for name, g in results.groupby("analysis", sort=False):
        model = str(g["model"].iloc[0])
        first = g.iloc[0]
        region = REGION_NAMES.get(str(first.get("region", "")), str(first.get("region", "")))
        endpoint = endpoint_label(str(first.get("endpoint", "")))
        rows, cohorts, outside, deaths = [], [], [], []
        for _, r in g.iterrows():
            r = r.to_dict()
            cov = r.get("status") == "ok (covariate)"
            feat = (f"adjusted for {str(r.get('term', '')).replace('_', ' ')}" if cov else feature_label(r["feature"]))
            row = {"feature": feat, "covariate": cov, "transform": transform_label(r.get("transform")),
                   "p": fmt_p(r.get("p")), "q": "" if cov else fmt_p(r.get("p_fdr")),
                   "holm": "" if cov else fmt_p(r.get("p_holm")), "notes": _notes(r)}
            if not cov:
                cohorts.append((feat, _cohort_note(r)))
                if model == "cox":
                    deaths.append((feat, _death_note(r)))
                if "in_family" in r and not bool(r.get("in_family")):
                    outside.append(feat)
            if model == "cox":
                row["effect"] = fmt_ci(r.get("hr", np.nan), r.get("ci_low", np.nan), r.get("ci_high", np.nan))
                ev = r.get("events")
                row["n"] = (f"{int(r['n'])}/{int(ev)}" if pd.notna(r.get("n")) and pd.notna(ev) else "")
                epv = r.get("events_per_variable")
                row["epv"] = "" if cov or epv is None or not np.isfinite(epv) else f"{epv:.1f}"
                row["ph"] = fmt_p(r.get("ph_test_p"))
                if pd.notna(r.get("ridge_hr", np.nan)) and not cov:
                    row["sensitivity"] = (f"ridge {r['ridge_penalizer']:g}: " + fmt_ci(
                        r["ridge_hr"], r["ridge_ci_low"], r["ridge_ci_high"]) + f", p {fmt_p(r['ridge_p'])}")
            else:
                row["effect"] = fmt_ci(r.get("estimate", np.nan), r.get("ci_low", np.nan), r.get("ci_high", np.nan))
                no, ng = r.get("n_obs"), r.get("n_groups")
                row["n"] = f"{int(no)}/{int(ng)}" if pd.notna(no) and pd.notna(ng) else ""
                if pd.notna(r.get("main_estimate", np.nan)):
                    row["conditional"] = (fmt_ci(r["main_estimate"], r.get("main_ci_low"), r.get("main_ci_high"))
                                          + f", p {fmt_p(r.get('main_p')) or 'none'}")
            rows.append(row)
        transforms = sorted({row["transform"].split(" (")[0] for row in rows if row["transform"]
                             and not row["covariate"]})
        death = str(first.get("death", "")) if model == "cox" and pd.notna(first.get("death", np.nan)) else ""
        # "censored at the last fact_p score": the instrument as the report writes it
        death = re.sub(r"last (\w+) score", lambda m: f"last {endpoint_label(m.group(1))} score", death)
        notes = []
        texts = {t for _, t in cohorts}
        if len(texts) == 1 and "" not in texts:
            notes.append(f"{texts.pop()}.")
        else:
            notes += [f"{feat}: {t}." for feat, t in cohorts if t]
        texts = {t for _, t in deaths}
        if len(texts) == 1 and "" not in texts:
            notes.append(f"Deaths among the patients analysed: {texts.pop()}.")
        else:
            notes += [f"{feat}, deaths among the patients analysed: {t}." for feat, t in deaths if t]
        if outside:
            notes.append("Without a p, left out of the multiplicity family (q, Holm p): " + ", ".join(outside) + ".")
        inter = any("conditional" in r for r in rows)
        time, centre = str(first.get("time", "time")), _num(first.get("time_centre"))
        if inter:
            notes.append(f"Tested term: feature x {time} (change of the score per {time} per the stated change of "
                         f"the feature); the feature's main effect is its effect at {time} {fmt_num(centre, 2)} (the "
                         f"mean {time}, which the model is centred at), conditional on {time}.")
        blocks.append({"name": str(name), "model": model, "region": region, "endpoint": endpoint,
                       "transform": ", ".join(transforms), "death": death, "rows": rows,
                       "has_interaction": inter, "time": time,
                       "centre": fmt_num(centre, 2) if np.isfinite(centre) else "",
                       "has_sensitivity": any("sensitivity" in r for r in rows), "notes": notes})
    return blocks


def results_markdown(results: pd.DataFrame, title: str) -> str:
    """``results.md``: Table 2 of every analysis as Markdown pipe tables (tabulate)."""
    from tabulate import tabulate

    parts = [f"# {title}", "",
             "HR: hazard ratio per the stated change of the feature; q: Benjamini-Hochberg adjusted p; EPV: events "
             "per variable; PH test p: cox.zph score test of the feature; Notes: the row's flag and the fitter's "
             "warnings. Every number in full precision, with the global PH test (ph_global_p), the fitter's "
             "warnings and the covariate rows, is in results.csv.", ""]
    for b in table2(results):
        cox = b["model"] == "cox"
        effect = ("HR (95% CI)" if cox else f"Feature x {b['time']} (95% CI)" if b["has_interaction"]
                  else "Estimate (95% CI)")
        head = ["Feature", "Transform", effect, "p", "q (BH)", "p (Holm)", "n/events" if cox else "obs/patients"]
        head += (["EPV", "PH test p"] if cox else [f"Feature at {b['time']} {b['centre']} (95% CI), p"]
                 if b["has_interaction"] else [])
        head += ["Notes"]
        rows = []
        for r in b["rows"]:
            row = [("  " if r["covariate"] else "") + r["feature"], r["transform"], r["effect"], r["p"], r["q"],
                   r["holm"], r["n"]]
            row += [r.get("epv", ""), r.get("ph", "")] if cox else ([r.get("conditional", "")]
                                                                     if b["has_interaction"] else [])
            row += [r["notes"]]
            rows.append(row)
        parts += [f"## {b['name']}", "", f"Endpoint: {b['endpoint']}; model: {'Cox' if cox else 'linear mixed'}"
                  + (f"; death: {b['death']}" if b["death"] else ""), "",
                  tabulate(rows, headers=head, tablefmt="github", disable_numparse=True), ""]
        parts += [" ".join(b["notes"]), ""] if b["notes"] else []
    return "\n".join(parts)


def power_two_sided(effect: float, se: float, alpha: float = 0.05) -> float:
    """Power of a two-sided Wald test at level ``alpha`` for a true ``effect`` measured with standard error ``se``."""
    if not (np.isfinite(effect) and np.isfinite(se) and se > 0):
        return float("nan")
    from statistics import NormalDist

    nd, z = NormalDist(), NormalDist().inv_cdf(1 - alpha / 2)
    k = abs(effect) / se
    return nd.cdf(k - z) + nd.cdf(-k - z)


def planted_table(pv: pd.DataFrame, results: pd.DataFrame | None = None) -> pd.DataFrame:
    """The demo's planted effects beside the recovered ones, on the scale the report uses elsewhere.

    Cox effects as hazard ratios (``exp`` of the planted log-HR), mixed-model effects as slopes per SD.
    ``contains planted``: the 95% CI covers the planted value; ``excludes no effect``: the CI excludes
    HR 1 (slope 0), i.e. the effect was detected at the 5% level; ``power``: the two-sided 5% test's
    power for the planted effect at the standard error this cohort gave (from the CI width).
    """
    rows = []
    for _, r in pv.iterrows():
        cox = _is_cox(r, results)
        planted, est, lo, hi = (float(r[c]) for c in ("planted", "recovered", "ci_low", "ci_high"))
        se = (hi - lo) / (2 * Z975) if np.isfinite(hi - lo) else float("nan")
        null = 0.0
        f = math.exp if cox else (lambda v: v)
        found = bool(np.isfinite(lo) and (lo > null or hi < null))
        rows.append({"endpoint": endpoint_label(str(r["endpoint"])),
                     "feature": f"{feature_label(str(r['feature']), with_region=True)}, "
                                f"{transform_label('per doubling' if r['transform'] == 'log2' else 'per SD')}",
                     "scale": "HR" if cox else "slope",
                     "planted": fmt_num(f(planted)),
                     "recovered (95% CI)": fmt_ci(f(est), f(lo), f(hi)) if np.isfinite(est) else "not estimated",
                     "contains planted": "yes" if bool(r.get("inside_ci")) else "no",
                     "excludes no effect": "yes" if found else "no",
                     "power": f"{100 * power_two_sided(planted, se):.0f}%" if np.isfinite(se) else "n/a",
                     "_found": found, "_power": power_two_sided(planted, se)})
    return pd.DataFrame(rows)


def _is_cox(r, results: pd.DataFrame | None) -> bool:
    if results is None or not len(results) or "model" not in results.columns:
        return True
    hit = results[(results["feature"] == r["feature"]) & (results["endpoint"] == r["endpoint"])]
    return not len(hit) or hit["model"].iloc[0] == "cox"


#: Patients of the study the demo mirrors (61 men treated with 177Lu-PSMA-617).
STUDY_PATIENTS = 61


def planted_verdict(table: pd.DataFrame, n_patients: int) -> str:
    """One plain sentence on what the cohort could recover."""
    if not len(table):
        return ""
    found, k = int(table["_found"].sum()), len(table)
    pw = table["_power"].dropna()
    power = (f"; the power to detect the planted effects at this size is {100 * pw.min():.0f}-{100 * pw.max():.0f}%"
             if len(pw) else "")
    if found == k:
        return f"All {k} planted effects were detected (95% CI excludes no effect) in {n_patients} patients{power}."
    text = (f"{found} of {k} planted effects were detected (95% CI excludes no effect) in {n_patients} "
            f"patients{power}. An interval that contains the planted value but also no effect is not a recovery")
    if n_patients < STUDY_PATIENTS:
        return (f"{text}: {n_patients} patients cannot recover these effects; the study's size is {STUDY_PATIENTS} "
                f"(petfeat demo --patients {STUDY_PATIENTS}).")
    missed = k - found
    return (f"{text}: at this size {missed} planted effect{'s' if missed > 1 else ''} went undetected, as a power "
            "below 100% allows.")
