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

from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from petfeat.errors import PetfeatError
from petfeat.io.parquet import read_parquet
from petfeat.stats.endpoints import (
    Worsening,
    time_to_first_grade,
    time_to_worsening,
)
from petfeat.stats.models import fdr, fit_cox, fit_mixed, format_hr, holm
from petfeat.stats.questionnaires import FACT_P_PCS, bpi_scores, fact_scores, xerostomia_score
from petfeat.stats.spec import ENDPOINT_TYPES, MODELS, StudySpecError, read_study  # noqa: F401 - re-exported

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


def _read_table(folder: Path, name: str, required: bool = True) -> pd.DataFrame | None:
    for suffix, reader in ((".parquet", read_parquet), (".csv", pd.read_csv)):
        p = folder / f"{name}{suffix}"
        if p.exists():
            return reader(p)
    if required:
        raise PetfeatError(f"{folder}: the clinical folder has no {name}.csv or {name}.parquet.")
    return None


def read_clinical(folder: str | Path) -> dict[str, pd.DataFrame]:
    """Read the clinical tables; item-level questionnaires are scored and appended to ``scores``."""
    folder = Path(folder)
    patients = _read_table(folder, "patients")
    for col in ("patient_id", "therapy_start"):
        if col not in patients.columns:
            raise PetfeatError(f"{folder}/patients: column {col!r} is missing.")
    labs = _read_table(folder, "labs", required=False)
    scores = _read_table(folder, "scores", required=False)
    items = _read_table(folder, "questionnaires", required=False)
    frames = [scores] if scores is not None else []
    if items is not None:
        frames.append(score_items(items))
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["patient_id", "date", "instrument", "score"])
    return {"patients": patients, "labs": labs, "scores": scores}


def score_items(items: pd.DataFrame) -> pd.DataFrame:
    """Score item-level FACT-P/FACT-G, BPI-SF and xerostomia questionnaires into the long scores table."""
    rows = []
    keys = ["patient_id", "date", "instrument"] + (["cycle"] if "cycle" in items.columns else [])
    for k, g in items.groupby(keys, dropna=False):
        rec = dict(zip(keys, k if isinstance(k, tuple) else (k,), strict=True))
        resp = {str(i).strip().upper(): r for i, r in zip(g["item"], g["response"], strict=True)}
        inst = str(rec["instrument"]).lower()
        if inst in ("fact_p", "fact_g"):
            for name, v in fact_scores(resp, FACT_P_PCS if inst == "fact_p" else None).items():
                rows.append({**rec, "instrument": name, "score": v})
        elif inst == "bpi":
            for name, v in bpi_scores(resp).items():
                rows.append({**rec, "instrument": name, "score": v})
        elif inst in ("xq8", "xi11"):
            rows.append({**rec, "instrument": "xerostomia", "score": xerostomia_score(resp, inst)})
        else:
            raise PetfeatError(f"questionnaire instrument {inst!r} is not scored item by item; give fact_p, fact_g, "
                               "bpi, xq8 or xi11 items, or already-scored values in scores.csv.")
    return pd.DataFrame(rows)


def derive_endpoints(spec: dict, clinical: dict) -> dict[str, pd.DataFrame]:
    """One time-to-event table per endpoint of the spec."""
    out = {}
    for name, e in spec.get("endpoints", {}).items():
        if e["type"] == "first_grade":
            if clinical["labs"] is None:
                raise PetfeatError(f"endpoint {name!r} needs the labs table.")
            out[name] = time_to_first_grade(clinical["labs"], clinical["patients"], tuple(e.get("tests", ())),
                                            int(e.get("min_grade", 3)), bool(e.get("treatment_emergent", False)),
                                            e.get("death", "competing"))
        else:
            sc = clinical["scores"]
            sc = sc[sc["instrument"] == e["score"]]
            if not len(sc):
                raise PetfeatError(f"endpoint {name!r}: no scores of instrument {e['score']!r} in the clinical folder.")
            w = Worsening(e["direction"], e.get("absolute"), e.get("relative"), bool(e.get("strict", True)),
                          bool(e.get("confirmed", False)), e.get("zero_baseline", "absolute"), e.get("death", "censor"))
            out[name] = time_to_worsening(sc, clinical["patients"], w)
    return out


def feature_wide(features: pd.DataFrame) -> pd.DataFrame:
    """``patient_id x (region, feature)`` table from the long feature table (first study per patient)."""
    f = features.sort_values(["patient_id", "study_date"] if "study_date" in features.columns else ["patient_id"])
    f = f.drop_duplicates(["patient_id", "region"])
    num = [c for c in ("suv_mean", "suv_max", "suv_min", "suv_std", "suv_peak_local", "suv_peak_global", "volume_ml",
                       "total_uptake", "voxel_count", "lesion_count") if c in f.columns]
    wide = f.pivot(index="patient_id", columns="region", values=num)
    wide.columns = [f"{region}.{feat}" for feat, region in wide.columns]
    return wide.reset_index()


def run_analyses(features: pd.DataFrame, clinical: dict, spec: dict, progress=None) -> tuple[pd.DataFrame, dict]:
    """Fit every analysis of the spec; returns the result table and the data used.

    ``progress(i, n)``, when given, is called after each of the ``n`` models (analysis x feature).

    Multiplicity (spec ``multiplicity``): ``p_fdr`` (Benjamini-Hochberg) and/or ``p_holm`` over a
    family of tests, all tests of the study (default) or each analysis.

    One row per analysis and feature (``term`` = the feature; ``status`` ``ok``, ``not converged``
    or the reason the model could not be fitted), followed for Cox models by one row per covariate
    (``status`` ``ok (covariate)``: reported, not part of the FDR family). ``flag`` names what
    weakens a row (not converged, events per variable below 10); ``warnings`` holds the fitter's.
    """
    endpoints = derive_endpoints(spec, clinical)
    wide = feature_wide(features)
    base = clinical["patients"].merge(wide, on="patient_id", how="inner")
    if not len(base):
        raise PetfeatError("no patient_id of the clinical tables matches the feature table; the clinical tables must "
                           "use the pseudonymised ids (petfeat scan --linkage writes the map).")
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
                   "endpoint": a.get("endpoint", a.get("score"))}
            if a["model"] == "cox":
                e = spec["endpoints"][a["endpoint"]]
                rule = e.get("death", "competing" if e["type"] == "first_grade" else "censor")
                rec["death"] = {"competing": "competing event (cause-specific Cox)", "event": "event (composite)",
                                "censor": "censored at last assessment"}[rule]
            extra = []
            try:
                if a["model"] == "cox":
                    d = base.merge(endpoints[a["endpoint"]], on="patient_id").dropna(subset=["time_days"])
                    r = fit_cox(d, "time_days", "event", col, a.get("covariates", []), a.get("transform", "unit"),
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
                        rec.update(hr=np.nan, ci_low=np.nan, ci_high=np.nan, p=np.nan, coef=np.nan, se=np.nan,
                                   result="not converged (monotone likelihood)", status="not converged")
                    else:
                        for t in terms[1:]:  # the covariates' own rows: reported, not tested
                            extra.append({**{k: rec[k] for k in ("analysis", "model", "region", "feature", "endpoint",
                                                                 "n", "events", "flag")},
                                          **t, "transform": "per unit", "result": format_hr(t),
                                          "status": "ok (covariate)"})
                else:
                    sc = clinical["scores"]
                    sc = sc[sc["instrument"] == a["score"]]
                    if "cycle" not in sc.columns:
                        raise PetfeatError(f"mixed model {a.get('name')!r}: the {a['score']} scores need a 'cycle' "
                                           "column.")
                    d = sc.merge(base, on="patient_id")
                    mixed[(a.get("name", ""), col)] = d
                    r = fit_mixed(d, "score", col, a.get("time", "cycle"), "patient_id", a.get("covariates", []),
                                  a.get("transform", "unit"), random_slope=bool(a.get("random_slope", False)),
                                  interaction=bool(a.get("interaction", False)), df_method=a.get("df", "normal"))
                    p = f"p = {r['p']:.3f}" if r["p"] >= 0.001 else "p < 0.001"
                    rec.update(r, term=col, result=f"estimate = {r['estimate']:.3g}, 95% CI {r['ci_low']:.3g} to "
                                                   f"{r['ci_high']:.3g}, {p}", status="ok",
                               flag="" if r["converged"] else "not converged")
                    if "interaction_estimate" in r:
                        pi = r["interaction_p"]
                        rec["interaction_result"] = (
                            f"x {a.get('time', 'cycle')}: {r['interaction_estimate']:.3g} per "
                            f"{a.get('time', 'cycle')}, 95% CI {r['interaction_ci_low']:.3g} to "
                            f"{r['interaction_ci_high']:.3g}, " + (f"p = {pi:.3f}" if pi >= 0.001 else "p < 0.001"))
            except PetfeatError as exc:
                rec["status"] = str(exc)
            except (np.linalg.LinAlgError, ValueError, ArithmeticError) as exc:
                # a degenerate model (no spread, separation, singular design) is this row's result, not a crash
                rec["status"] = f"model failed: {type(exc).__name__}: {exc}"
            rows.append(rec)
            rows.extend(extra)
    res = pd.DataFrame(rows)
    methods, family = _multiplicity(spec)
    if "p" in res.columns:
        ok = res["p"].notna() & (res["status"] == "ok")  # the tested features, not the covariates
        groups = res.loc[ok, "analysis"] if family == "analysis" else pd.Series("study", index=res.index[ok])
        for _, idx in groups.groupby(groups).groups.items():
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
