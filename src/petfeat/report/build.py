"""The HTML report, ``results.csv``, ``results.md`` and the figure files of one analysis run."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from petfeat.report import figures as figs
from petfeat.report.tables import (
    REGION_NAMES,
    endpoint_label,
    feature_label,
    planted_table,
    planted_verdict,
    results_markdown,
    table1,
    table2,
)

SECTIONS = ("Cohort", "Methods", "Results", "Figures", "Model warnings", "Quality control", "Provenance")


def spec_hash(spec: dict) -> str:
    """First 12 hex digits of the SHA-256 of the study spec (canonical JSON)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("petfeat", "numpy", "pandas", "lifelines", "statsmodels", "matplotlib", "pydicom", "SimpleITK"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def _death_text(e: dict) -> str:
    """How a death without a prior event ends follow-up, with the death window and what it is counted from."""
    from petfeat.stats.endpoints import DEATH_WINDOW_DAYS

    death = e.get("death", "competing" if e.get("type") == "first_grade" else "censor")
    last = (f"the patient's last lab of {', '.join(e.get('tests', []))}" if e.get("type") == "first_grade"
            else f"the patient's last {endpoint_label(str(e.get('score')))} score")
    if death == "censor":
        return f"death censored at {last}"
    what = "as a competing event" if death == "competing" else "counted as an event"
    window = e.get("death_window_days", DEATH_WINDOW_DAYS)
    if window is None:
        return f"death {what} at any time (no death window)"
    return (f"death {what} when at most {window:g} days after {last} (or the first dose, when later); a later "
            "death was censored at that "
            f"{'lab' if e.get('type') == 'first_grade' else 'score'}, not counted {what.removeprefix('counted ')}"
            " (death window)")


def _endpoint_text(name: str, e: dict) -> str:
    death_txt = _death_text(e)
    if e.get("type") == "first_grade":
        return (f"{endpoint_label(name)}: time from the first dose to the first CTCAE v5 grade "
                f"\u2265{e.get('min_grade', 3)} of {', '.join(e.get('tests', []))}"
                f"{' (treatment-emergent only)' if e.get('treatment_emergent') else ''}; {death_txt}")
    thr = []
    if e.get("absolute") is not None:
        thr.append(f"{e['absolute']:g} points")
    if e.get("relative") is not None:
        thr.append(f"{100 * e['relative']:.0f}%")
    change = "decrease" if e.get("direction") == "decrease" else "increase"
    strict = "strictly more" if e.get("strict", True) else "at least"
    return (f"{endpoint_label(name)}: time to the first {change} of {endpoint_label(str(e.get('score')))} from "
            f"baseline by {' or '.join(thr)} ({strict}{', confirmed' if e.get('confirmed') else ''}); {death_txt}")


def _region_text(name: str, r: dict) -> str:
    inc = ", ".join(r.get("include", []))
    parts = [f"{REGION_NAMES.get(name, name)}: labels {inc}"]
    for w in r.get("within", []) or []:
        parts.append(f"within {', '.join(w) if isinstance(w, list | tuple) else w}")
    if r.get("exclude"):
        m = r.get("exclude_margin_mm", 0.0)
        parts.append(f"excluding {', '.join(r['exclude'])}" + (f" with a {m:g} mm margin" if m else ""))
    return " ".join(parts)


def methods_text(spec: dict, features: pd.DataFrame | None = None, regions: dict | None = None,
                 results: pd.DataFrame | None = None) -> list[str]:
    """Paragraphs of a methods section generated from the study spec and the feature table's provenance.

    With ``results`` (:func:`petfeat.stats.analysis.run_analyses`) the multiplicity paragraph counts
    the tests of the family and the rows left out of it.
    """
    from petfeat.regions import BUILTIN_REGIONS

    regions = regions or BUILTIN_REGIONS
    suv = "body weight (SUVbw)"
    lesion = ""
    if features is not None and "suv_type" in features.columns and len(features):
        st = sorted(features["suv_type"].dropna().astype(str).unique())
        names = {"bw": "body weight (SUVbw)", "lbm": "lean body mass (SUL, Janmahasatian)",
                 "bsa": "body surface area (SUVbsa, Du Bois)"}
        suv = ", ".join(names.get(s, s) for s in st) or suv
    if features is not None and "lesion_method" in features.columns and len(features):
        lesion = ", ".join(sorted(features["lesion_method"].dropna().astype(str).unique()))
    used = list(dict.fromkeys(a["region"] for a in spec.get("analyses", [])))
    paras = [
        f"PET activity concentrations were converted to SUV normalised to {suv} with the vendor-neutral QIBA "
        "algorithm (decay correction and scan time from each series' header). Region features were computed on "
        "the PET grid: SUVmean, SUVmax, SUVpeak (IBSI local and global, 1 mL sphere), volume (voxel count x voxel "
        "volume) and total uptake (SUVmean x volume; TL-PSMA for the whole-body tumour, whose volume is the PSMA-TV). "
        + (f"Lesions as recorded in the feature table: {lesion}." if lesion else
           "Lesions are connected components of the lesion mask."),
        "Regions: " + "; ".join(_region_text(r, regions[r]) for r in used if r in regions) + ".",
        "Endpoints: " + "; ".join(_endpoint_text(n, e) for n, e in (spec.get("endpoints") or {}).items()) + ".",
    ]
    if any(e.get("type") == "first_grade" for e in (spec.get("endpoints") or {}).values()):
        from petfeat.stats.endpoints import BASELINE_WINDOW_DAYS

        paras.append(f"Laboratory values: the baseline grade is that of the last value within {BASELINE_WINDOW_DAYS:g} "
                     "days before the first dose; of repeated values on one day without a time of day the worst "
                     "(highest grade) counts; counts given in percent of the white cells are not graded.")
    cox = [a for a in spec.get("analyses", []) if a.get("model") == "cox"]
    mixed = [a for a in spec.get("analyses", []) if a.get("model") == "mixed"]
    tr = {"unit": "per unit", "sd": "per standard deviation", "log2": "per doubling (log2)"}
    if cox:
        ts = sorted({tr.get(a.get("transform", "unit"), a.get("transform")) for a in cox})
        paras.append(
            "Each feature was related to each time-to-event endpoint in its own Cox proportional hazards model "
            f"(Efron ties; hazard ratios {' or '.join(ts)}), adjusted where stated. Proportional hazards were "
            f"checked with the Schoenfeld-residual score test (R cox.zph, {spec.get('ph_transform', 'km')} time "
            "transform); models with fewer than 10 events per variable or without convergence are flagged"
            + (f"; a ridge-penalised fit (penalizer {spec['ridge']:g}) is reported as a sensitivity analysis"
               if spec.get("ridge") else "") + "."
            + (" Time to worsening of a score was adjusted for the patient's baseline score of that instrument "
               "(regression to the mean)." if any("baseline_score" in a.get("covariates", []) for a in cox) else ""))
    if mixed:
        slope = any(a.get("random_slope") for a in mixed)
        df = sorted({a.get("df", "normal") for a in mixed})
        paras.append(
            "Repeated scores were modelled with linear mixed models (REML) with a random intercept"
            + (" and a random slope for time" if slope else "") + " per patient, the feature and time as fixed "
            "effects (and their interaction where stated); tests used "
            + " or ".join("Satterthwaite degrees of freedom" if d == "satterthwaite" else "Wald z statistics"
                          for d in df) + "."
            + (" Satterthwaite degrees of freedom were computed as lmerTest computes them, on the scale of the "
               "relative Cholesky factor of the random-effect covariance; a singular fit (a random-effect variance "
               "or correlation at the boundary) is kept and flagged in its row." if "satterthwaite" in df else "")
            + (" In the analyses of a feature x time interaction the interaction is the tested term; time was centred "
               "at its mean over the model's observations, so that the feature's main effect, reported beside it, is "
               "its effect at the mean time (conditional on time), not an extrapolation to time 0."
               if any(a.get("interaction") for a in mixed) else ""))
    m = spec.get("multiplicity") or {}
    methods = m.get("methods", ["bh"] if spec.get("fdr", True) else [])
    methods = [methods] if isinstance(methods, str) else list(methods)
    fam = m.get("family", "study")
    mt = {"bh": "Benjamini-Hochberg false discovery rate (q)", "holm": "Holm family-wise error rate"}
    count, left = "", ""
    if results is not None and "in_family" in results.columns:
        tested = results[results["status"].astype(str) != "ok (covariate)"]
        k, out = int(tested["in_family"].astype(bool).sum()), int((~tested["in_family"].astype(bool)).sum())
        count = f" ({k} tests)" if fam == "study" else f" ({k} tests in all)"
        left = (f"; {out} tested row{'s' if out != 1 else ''} without a p (a model that failed or gave no test) "
                f"{'are' if out != 1 else 'is'} left out of the family and flagged") if out else ""
    if methods:
        paras.append("P values were adjusted for multiple testing by " + " and ".join(mt.get(x, x) for x in methods)
                     + (" over all tests of the study" if fam == "study" else " within each analysis") + count
                     + "; covariate rows are not tested" + left + ". Two-sided p < 0.05 is called significant; a p "
                     "below 1e-300 is written as 1e-300 (its log10 in results.csv).")
    paras.append("All analyses are complete-case: a patient without features, without the endpoint (for example no "
                 "baseline score or no assessment after the first dose), or without a covariate is left out of that "
                 "analysis only; the notes under each table give the patients analysed and why the others were left "
                 "out (n_included, n_excluded and excluded_reasons in results.csv).")
    return paras


def _warnings(results: pd.DataFrame) -> list[str]:
    """One line per model with a fitter warning, a flag or a failure.

    A message shared by every model of an analysis is given once for the analysis; the fitter's
    singular-fit note is left out where the row's flag names the singular fit.
    """
    per: dict[str, list[tuple[str, str]]] = {}
    sizes: dict[str, int] = {}
    for _, r in results.iterrows():
        status = str(r.get("status", ""))
        if status == "ok (covariate)":
            continue
        name = str(r.get("analysis", ""))
        sizes[name] = sizes.get(name, 0) + 1
        w = r.get("warnings", "")
        w = [" ".join(str(x).split()) for x in w] if isinstance(w, list) else str(w or "").split(" | ")
        flag = str(r.get("flag") or "")
        if "singular fit: " in flag:  # the flag says what is at the boundary; the fitter's note repeats it
            w = [x for x in w if not x.startswith("boundary (singular) fit: ")]
        w = " | ".join(x for x in w if x)
        parts = [p for p in (w if w != "nan" else "", flag if flag != "nan" else "") if p]
        if not status.startswith("ok") and status != "not converged":
            parts.append(status)
        if parts:
            per.setdefault(name, []).append((str(r.get("feature", "")), "; ".join(parts)))
    out = []
    for name, items in per.items():
        msgs = {m for _, m in items}
        if len(items) > 1 and len(items) == sizes[name] and len(msgs) == 1:
            out.append(f"{name} (all {len(items)} models): {msgs.pop()}")
        else:
            out += [f"{name} / {feat}: {m}" for feat, m in items]
    return out


def _km_feature(g: pd.DataFrame) -> str:
    ok = g[(g["status"] == "ok") & g["p"].notna()]
    return str(ok.sort_values("p")["feature"].iloc[0]) if len(ok) else str(g["feature"].iloc[0])


def write_report(results: pd.DataFrame, context: dict, spec: dict, out: str | Path, extra_html: str = "", *,
                 features: pd.DataFrame | None = None, qc: list[dict] | None = None, demo: dict | None = None,
                 regions: dict | None = None, quantities: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write ``results.csv``, ``results.md``, the figure files and ``report.html`` under ``out``.

    Parameters
    ----------
    results, context, spec
        What :func:`petfeat.stats.analysis.run_analyses` returned and the study spec it ran.
    out
        Report folder (created). Figures are written beside the page as PNG and SVG (``forest_NN``,
        ``km_NN``, ``mixed_NN``; NN the analysis' position in the spec).
    extra_html
        Trusted HTML placed after the cohort section (kept for callers that add their own section).
    features
        The feature table: the provenance (SUV type, config hash, version) and the QC key numbers.
    qc
        One dict per study: ``study_id`` (pseudonymised) and ``png`` (base64 from
        :func:`petfeat.report.qc.qc_png`); shown as the QC gallery with each study's key numbers.
    demo
        For the demo: ``planted`` (:func:`petfeat.synth.clinical.planted_vs_recovered`), ``n_patients``,
        ``backend``, ``timings`` (stage -> seconds) and ``text`` (a plain-text introduction).
    regions
        Region definitions used by the methods text (default: the built-in set).
    quantities
        The PSMA reference quantities (``quantities.parquet``, :func:`petfeat.quantities.study_quantities`):
        reference uptake and tumour-to-liver and tumour-to-parotid ratios in Table 1.

    Returns
    -------
    dict
        ``csv``, ``md``, ``html`` and ``figures`` (the list of figure files).
    """
    import jinja2

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figdir = out
    paths: dict = {"csv": out / "results.csv", "md": out / "results.md", "html": out / "report.html"}
    flat = results
    if "warnings" in results.columns:
        flat = results.assign(warnings=[" | ".join(" ".join(str(w).split()) for w in ws)
                                        if isinstance(ws, list) else "" for ws in results["warnings"]])
    flat.drop(columns=["covariates"], errors="ignore").to_csv(paths["csv"], index=False)
    title = str(spec.get("name", "petfeat report"))
    paths["md"].write_text(results_markdown(results, title) + "\n")

    forest, curves, trajectories = [], [], []
    if len(results) and "model" in results.columns:
        analyses = {a.get("name", ""): a for a in spec.get("analyses", [])}
        for i, (name, g) in enumerate(results.groupby("analysis", sort=False), start=1):
            ok = g[(g["status"] == "ok") & g.get("hr", pd.Series(np.nan, index=g.index)).notna()]
            a = analyses.get(name, {})
            if g["model"].iloc[0] == "cox" and len(ok):
                forest.append(figs.forest(ok, str(name), figdir, f"forest_{i:02d}"))
                col = _km_feature(g)
                d = context.get("data", {}).get((name, col))
                if d is not None and "time_days" in d.columns:
                    ep = endpoint_label(str(g["endpoint"].iloc[0]))
                    curves.append(figs.km(d, col, ep, figdir, f"km_{i:02d}", endpoint=ep,
                                          adjusted_for=list(a.get("covariates", [])),
                                          note="Drawn for the analysis' feature with the smallest p."))
            elif g["model"].iloc[0] == "mixed":
                col = _km_feature(g)
                d = context.get("mixed", {}).get((name, col))
                row = g[g["feature"] == col].iloc[0]
                if d is not None and row.get("status") == "ok":
                    trajectories.append(figs.mixed(d, col, str(a.get("score", row.get("endpoint"))),
                                                   str(a.get("time", "cycle")), row, str(name), figdir,
                                                   f"mixed_{i:02d}", note="Drawn for the analysis' feature with "
                                                   "the smallest p."))
    paths["figures"] = [p for f in forest + curves + trajectories for p in f.files]

    base = context.get("base")
    cohort = table1(base, features, quantities) if base is not None else []
    qc_rows = []
    for q in qc or []:
        qc_rows.append({"study_id": q["study_id"], "png": q["png"], "numbers": _key_numbers(features, q["study_id"]),
                        "missing": _missing_regions(features, q["study_id"])})
    demo_ctx = None
    if demo is not None:
        pt = planted_table(demo["planted"], results) if demo.get("planted") is not None else pd.DataFrame()
        demo_ctx = {"text": demo.get("text", ""), "backend": demo.get("backend", ""),
                    "planted": pt.drop(columns=[c for c in pt.columns if c.startswith("_")]).to_dict("records"),
                    "planted_columns": [c for c in pt.columns if not c.startswith("_")],
                    "verdict": planted_verdict(pt, int(demo.get("n_patients", len(base) if base is not None else 0))),
                    "timings": [(k.replace("_s", "").replace("_", " "), f"{v:.1f}")
                                for k, v in (demo.get("timings") or {}).items()]}
    chashes = sorted(features["config_hash"].dropna().astype(str).unique()) if (
        features is not None and "config_hash" in features.columns) else []
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = _versions()
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(files("petfeat.report") / "templates")),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True,
                             lstrip_blocks=True)
    page = env.get_template("report.html.j2").render(
        title=title, css=(files("petfeat.report") / "report.css").read_text(), cohort=cohort,
        n_patients=len(base) if base is not None else None, methods=methods_text(spec, features, regions, results),
        blocks=table2(results), forest=forest, curves=curves, trajectories=trajectories,
        warnings=_warnings(results), qc=qc_rows, demo=demo_ctx, extra_html=extra_html, versions=versions,
        config_hashes=chashes, spec_hash=spec_hash(spec), date=now, ph_transform=spec.get("ph_transform", "km"),
        suv_type=", ".join(sorted(features["suv_type"].dropna().astype(str).unique()))
        if features is not None and "suv_type" in features.columns else "", sections=SECTIONS)
    paths["html"].write_text(page)
    return paths


def _missing_regions(features: pd.DataFrame | None, study_id: str) -> str:
    if features is None or "study_id" not in features.columns or "status" not in features.columns:
        return ""
    f = features[features["study_id"] == study_id]
    by: dict[str, list[str]] = {}
    for r, s in zip(f["region"], f["status"]):
        if isinstance(s, str) and s not in ("ok", ""):
            by.setdefault(s.replace("_", " "), []).append(str(r).replace("_", " "))
    return "; ".join(f"{s}: {', '.join(rs)}" for s, rs in by.items())


def _key_numbers(features: pd.DataFrame | None, study_id: str) -> list[tuple[str, str]]:
    """A study's key numbers for the QC gallery: tumour burden, reference organs (liver, parotid, blood pool)."""
    if features is None or "study_id" not in features.columns:
        return []
    f = features[features["study_id"] == study_id].set_index("region")
    out = []
    for region, col, label, digits in (
            ("whole_body_tumor", "lesion_count", "lesions", 0),
            ("whole_body_tumor", "suv_max", "tumour SUVmax", 1),
            ("whole_body_tumor", "volume_ml", "PSMA-TV, mL", 1),
            ("whole_body_tumor", "total_uptake", "TL-PSMA", 0),
            ("liver", "suv_mean", "liver SUVmean", 2),
            ("parotid_glands", "suv_mean", "parotid SUVmean", 1),
            ("aorta", "suv_mean", "blood-pool SUVmean", 2),
            ("healthy_bone", "suv_mean", "bone SUVmean", 2),
            ("salivary_glands", "suv_mean", "salivary SUVmean", 1)):
        if region in f.index and col in f.columns:
            v = f.loc[region, col]
            v = v.iloc[0] if isinstance(v, pd.Series) else v
            if pd.notna(v):
                out.append((label, f"{float(v):.{digits}f}"))
    return out


__all__ = ["SECTIONS", "feature_label", "methods_text", "spec_hash", "write_report"]
