"""A biostatistician's review of the models and result tables: singular fits, interaction terms, the study's
toxicity and worsening endpoints, exclusions, units and p values that underflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from petfeat.report import write_report
from petfeat.report.build import methods_text
from petfeat.report.tables import fmt_ci, table1, table2
from petfeat.stats.analysis import load_study, read_clinical, run_analyses
from petfeat.stats.models import P_FLOOR, fit_mixed, format_hr
from petfeat.stats.spec import StudySpecError, validate_study

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def xerostomia():
    return pd.read_csv(DATA / "xerostomia_singular_slope.csv")


def test_singular_random_slope_fit_gets_lmertest_df_an_interval_and_a_flag(xerostomia):
    # volume_ml: intercept-slope correlation -1; Satterthwaite on the variance scale gave df -2.56 and no p
    r = fit_mixed(xerostomia, "score", "volume_ml", "cycle", "patient", how="sd", random_slope=True,
                  df_method="satterthwaite")
    assert r["singular"] and any("singular" in w for w in r["warnings"])
    assert r["cov_intercept_slope"] / np.sqrt(r["var_intercept"] * r["var_slope"]) == pytest.approx(-1, abs=1e-3)
    assert 9 < r["df"] < 13 and 0 < r["p"] < 1 and np.isfinite([r["ci_low"], r["ci_high"]]).all()
    assert r["time_df"] >= 1 and 0 < r["time_p"] < 1e-6


def test_total_uptake_df_no_longer_below_1(xerostomia):
    r = fit_mixed(xerostomia, "score", "total_uptake", "cycle", "patient", how="sd", random_slope=True,
                  df_method="satterthwaite")  # variance scale: df 0.92, "3.42 (-18.48 to 25.32)"
    assert r["singular"] and 9 < r["df"] < 13 and r["ci_high"] - r["ci_low"] < 8


def test_a_line_search_stop_at_the_boundary_optimum_is_converged_by_lme4s_gradient_check(xerostomia, monkeypatch):
    import scipy.optimize

    real = scipy.optimize.minimize

    def abnormal(*args, **kwargs):  # what L-BFGS-B answered on the demo's total uptake: right optimum, no success
        r = real(*args, **kwargs)
        r.success, r.message = False, "ABNORMAL: "
        return r

    monkeypatch.setattr(scipy.optimize, "minimize", abnormal)
    r = fit_mixed(xerostomia, "score", "total_uptake", "cycle", "patient", how="sd", random_slope=True)
    assert r["converged"] and "the REML optimiser did not converge" not in r["warnings"]


def test_random_intercept_df_stay_exact_in_the_balanced_design(xerostomia):
    # 12 patients x 6 cycles: a between-patient feature has 12 - 2 = 10 df, cycle 72 - 12 - 1 = 59 (lmerTest: exact)
    for feat in ("volume_ml", "suv_mean"):
        r = fit_mixed(xerostomia, "score", feat, "cycle", "patient", how="sd", df_method="satterthwaite")
        assert r["df"] == pytest.approx(10, abs=1e-3) and r["time_df"] == pytest.approx(59, abs=1e-3)


def _cohort(xerostomia, n_extra_without_features=0):
    """Features and clinical tables around the reviewer's xerostomia data (ids P01-P12)."""
    ids = sorted(xerostomia.patient.unique())
    per = xerostomia.groupby("patient").first()
    f = pd.DataFrame({"patient_id": ids, "study_date": "2023-01-01", "region": "salivary_glands",
                      "volume_ml": per.loc[ids, "volume_ml"].to_numpy(),
                      "suv_mean": per.loc[ids, "suv_mean"].to_numpy(),
                      "suv_max": per.loc[ids, "suv_mean"].to_numpy() * 2})
    everyone = ids + [f"Q{i:02d}" for i in range(n_extra_without_features)]
    hb = np.random.default_rng(4).normal(12.3, 1.1, len(everyone)).round(1)
    patients = pd.DataFrame({"patient_id": everyone, "therapy_start": "2024-01-10", "baseline_haemoglobin": hb})
    sc = xerostomia.rename(columns={"patient": "patient_id"}).assign(instrument="xerostomia")
    sc["date"] = [f"2024-{1 + c:02d}-15" for c in sc.cycle]
    return f, patients, sc[["patient_id", "date", "instrument", "score", "cycle"]]


def test_singular_fit_is_flagged_in_its_row_and_in_table_2_never_an_empty_interval(xerostomia, tmp_path):
    f, patients, sc = _cohort(xerostomia)
    spec = {"name": "x", "endpoints": {}, "analyses": [
        {"name": "sal", "model": "mixed", "region": "salivary_glands", "features": ["suv_mean", "volume_ml"],
         "score": "xerostomia", "transform": "sd", "random_slope": True, "df": "satterthwaite"}]}
    res, ctx = run_analyses(f, {"patients": patients, "labs": None, "scores": sc}, spec)
    assert (res.status == "ok").all() and res.p.notna().all() and res.ci_low.notna().all()
    assert res.flag.str.startswith("singular fit: intercept-slope correlation at the boundary, -1.00").all()
    assert res.flag.str.endswith("kept, tests use lmerTest's Satterthwaite df on the Cholesky scale").all()
    assert res.in_family.all() and (res.family_size == 2).all()
    html = write_report(res, ctx, spec, tmp_path / "rep")["html"].read_text()
    assert "( to )" not in html and html.count("singular fit: intercept-slope correlation at the boundary") >= 2
    from petfeat.report.build import _warnings

    lines = _warnings(res)  # once per model, from the flag: the fitter's note saying the same is not repeated
    assert len(lines) == 2 and all(x.count("intercept-slope correlation at the boundary") == 1 for x in lines)
    assert not any("boundary (singular) fit" in x for x in lines)


def test_a_row_without_p_is_flagged_and_counted_out_of_the_family(xerostomia, tmp_path, monkeypatch):
    from petfeat.stats import models

    f, patients, sc = _cohort(xerostomia)
    spec = {"name": "x", "endpoints": {}, "analyses": [
        {"name": "sal", "model": "mixed", "region": "salivary_glands", "features": ["suv_mean", "volume_ml"],
         "score": "xerostomia", "transform": "sd", "random_slope": True, "df": "satterthwaite"}]}
    real = models._Lmm.satterthwaite
    calls = []

    def undefined_for_the_second_model(self, theta, par):
        calls.append(1)
        out = real(self, theta, par)
        return np.full_like(out, -2.56) if len(calls) == 2 else out

    monkeypatch.setattr(models._Lmm, "satterthwaite", undefined_for_the_second_model)
    res, ctx = run_analyses(f, {"patients": patients, "labs": None, "scores": sc}, spec)
    bad = res.iloc[1]
    assert bad.status == "no test: Satterthwaite df undefined" and np.isnan(bad.p) and np.isnan(bad.ci_low)
    assert "no p: left out of the multiplicity family" in bad.flag and not bad.in_family
    assert res.iloc[0].in_family and res.iloc[0].family_size == 1 and res.iloc[0].p_fdr == res.iloc[0].p
    assert fmt_ci(bad.estimate, bad.ci_low, bad.ci_high).endswith("(no CI)")
    block = table2(res)[0]
    assert "Without a p, left out of the multiplicity family (q, Holm p): volume (mL)." in block["notes"]
    assert "(1 tests)" in " ".join(methods_text(spec, results=res)) and "1 tested row without a p" in " ".join(
        methods_text(spec, results=res))
    html = write_report(res, ctx, spec, tmp_path / "rep")["html"].read_text()
    assert "( to )" not in html and "no test: Satterthwaite df undefined" in html


def test_interaction_is_the_tested_term_and_the_main_effect_is_at_the_mean_cycle(xerostomia):
    raw = fit_mixed(xerostomia, "score", "suv_mean", "cycle", "patient", how="sd", interaction=True)
    c = float(xerostomia.cycle.mean())
    cen = fit_mixed(xerostomia, "score", "suv_mean", "cycle", "patient", how="sd", interaction=True, centre_time=c)
    # centring moves the main effect from cycle 0 (an extrapolation: cycles are 1-6) to the mean cycle, nothing else
    assert cen["estimate"] == pytest.approx(raw["estimate"] + c * raw["interaction_estimate"], rel=1e-6)
    assert cen["interaction_estimate"] == pytest.approx(raw["interaction_estimate"], rel=1e-6)
    assert cen["reml_criterion"] == pytest.approx(raw["reml_criterion"], rel=1e-9)
    f, patients, sc = _cohort(xerostomia)
    spec = {"name": "x", "endpoints": {}, "analyses": [
        {"name": "main", "model": "mixed", "region": "salivary_glands", "features": ["suv_mean"], "score": "xerostomia",
         "transform": "sd"},
        {"name": "rise", "model": "mixed", "region": "salivary_glands", "features": ["suv_mean", "volume_ml"],
         "score": "xerostomia", "transform": "sd", "interaction": True}]}
    res, _ = run_analyses(f, {"patients": patients, "labs": None, "scores": sc}, spec)
    rise = res[res.analysis == "rise"]
    assert (rise.term == rise.feature + ":cycle").all() and (rise.p == rise.interaction_p).all()
    assert (rise.estimate == rise.interaction_estimate).all() and (rise.time_centre == c).all()
    assert rise.main_estimate.iloc[0] == pytest.approx(cen["estimate"], rel=1e-6)
    assert rise.result.str.startswith("feature x cycle: ").all() and rise.main_result.str.contains("conditional").all()
    from petfeat.stats.models import fdr

    np.testing.assert_allclose(res.p_fdr, fdr(res.p))  # the family holds the interaction p, not the main effect
    notes = " ".join(table2(res)[1]["notes"])
    assert "Tested term: feature x cycle" in notes and "at cycle 3.50" in notes


def test_the_shipped_toxicity_endpoint_counts_leukopenia_and_the_demo_labs_have_white_cells(tmp_path):
    from petfeat.stats.analysis import derive_endpoints
    from petfeat.synth.clinical import generate_clinical

    spec = load_study()
    tox = spec["endpoints"]["haematological_toxicity_g3"]
    assert set(tox["tests"]) == {"haemoglobin", "neutrophils", "platelets", "white_cells"}
    patients = pd.DataFrame({"patient_id": ["a", "b"], "therapy_start": "2024-01-10"})
    labs = pd.DataFrame([(p, d, t, v, u) for p in "ab" for d, t, v, u in (
        ("2024-01-08", "HGB", 13.0, "g/dL"), ("2024-01-08", "ANC", 3.0, "10^9/L"), ("2024-01-08", "PLT", 220, "10^9/L"),
        ("2024-01-08", "WBC", 6.0, "10^9/L"), ("2024-02-21", "HGB", 12.5, "g/dL"), ("2024-02-21", "ANC", 2.5, "10^9/L"),
        ("2024-02-21", "PLT", 210, "10^9/L"), ("2024-02-21", "WBC", 1.5 if p == "a" else 5.5, "10^9/L"))],
        columns=["patient_id", "date", "test", "value", "unit"])  # a: WBC 1.5 x 10^9/L on day 42, CTCAE grade 3
    ep = derive_endpoints({"endpoints": {"tox": tox}}, {"patients": patients, "labs": labs, "scores": None})["tox"]
    ep = ep.set_index("patient_id")
    assert (ep.loc["a", "event"], ep.loc["a", "time_days"], ep.loc["b", "event"]) == (1, 42.0, 0)
    f = pd.DataFrame({"patient_id": ["P1", "P2"], "study_date": "2023-01-01", "region": "salivary_glands",
                      "suv_mean": [10.0, 12.0]})
    generate_clinical(f, tmp_path, seed=1)
    labs = pd.read_csv(tmp_path / "labs.csv")
    wbc = labs.query("test == 'white_cells'")
    assert len(wbc) == (labs.test == "platelets").sum() > 0 and wbc.value.between(3.0, 10.0).all()
    assert (wbc.unit == "10^9/L").all()


def test_worsening_analyses_are_adjusted_for_the_baseline_score(tmp_path):
    from petfeat.stats.analysis import _baseline_from_scores
    from petfeat.synth.clinical import generate_clinical

    spec = load_study()
    worsening = [a for a in spec["analyses"] if a["model"] == "cox"
                 and spec["endpoints"][a["endpoint"]]["type"] == "worsening"]
    assert len(worsening) == 3 and all(a["covariates"] == ["baseline_score"] for a in worsening)
    rng = np.random.default_rng(0)
    f = pd.DataFrame([{"patient_id": f"P{i:02d}", "study_date": "2023-01-01", "region": "healthy_bone",
                       "suv_mean": rng.lognormal(0.4, 0.3), "suv_max": rng.lognormal(1, 0.3),
                       "total_uptake": rng.lognormal(6, 0.5)} for i in range(24)])
    generate_clinical(f, tmp_path, seed=2)
    clinical = read_clinical(tmp_path)
    spec["analyses"] = [a for a in worsening if a["region"] == "healthy_bone"][:1]
    res, ctx = run_analyses(f, clinical, spec)
    cov = res[res.status == "ok (covariate)"]
    assert list(cov.term) == ["baseline_score"] * 3 and (cov["transform"] == "per point").all()
    d = ctx["data"][(spec["analyses"][0]["name"], "healthy_bone.suv_mean")]
    ep = ctx["endpoints"][spec["analyses"][0]["endpoint"]].set_index("patient_id")
    np.testing.assert_allclose(d.baseline_score, ep.loc[d.patient_id, "baseline"])
    sc = clinical["scores"]
    again = _baseline_from_scores(sc[sc.instrument == "bpi_severity"], clinical["patients"])
    np.testing.assert_allclose(again[d.patient_id].to_numpy(), d.baseline_score.to_numpy())  # when no 'baseline'
    tested = res[res.status == "ok"]
    assert [list(c) for c in tested.covariates] == [["baseline_score"]] * 3
    assert (tested.events_per_variable == tested.events / 2).all()


@pytest.mark.parametrize("analysis, pattern", [
    ({"model": "cox", "endpoint": "tox", "covariates": ["baseline_score"]}, "baseline score of a worsening endpoint"),
    ({"model": "mixed", "score": "xerostomia", "covariates": ["baseline_score"]}, "for Cox models of a worsening"),
])
def test_baseline_score_only_where_an_endpoint_has_a_baseline(analysis, pattern):
    spec = {"endpoints": {"tox": {"type": "first_grade", "tests": ["platelets"]}},
            "analyses": [{"name": "A", "region": "liver", "features": ["suv_mean"], **analysis}]}
    with pytest.raises(StudySpecError, match=pattern):
        validate_study(spec, "s.yaml")


def test_exclusions_are_counted_with_reasons_in_results_table_2_and_methods(xerostomia, tmp_path):
    f, patients, sc = _cohort(xerostomia, n_extra_without_features=1)  # Q00: in the clinical table, no PET features
    first = sc.groupby("patient_id").date.min()
    base = pd.DataFrame({"patient_id": first.index, "date": "2024-01-05", "instrument": "bpi_severity",
                         "score": 3.0, "cycle": 0})
    base = base[base.patient_id != "P03"]  # P03: no baseline BPI
    later = pd.DataFrame({"patient_id": first.index, "date": [f"2024-03-{1 + 2 * i:02d}" for i in range(len(first))],
                          "instrument": "bpi_severity", "score": [6.0 if i % 3 else 3.2 for i in range(len(first))],
                          "cycle": 2})
    scores = pd.concat([sc, base, later], ignore_index=True)
    q00 = pd.DataFrame({"patient_id": ["Q00"] * 2, "date": ["2024-01-05", "2024-03-05"], "instrument": "bpi_severity",
                        "score": [3.0, 6.0], "cycle": [0, 2]})
    scores = pd.concat([scores, q00], ignore_index=True)
    spec = {"name": "x", "endpoints": {"pain": {"type": "worsening", "score": "bpi_severity", "direction": "increase",
                                                "absolute": 2}},
            "analyses": [{"name": "pain", "model": "cox", "region": "salivary_glands", "features": ["suv_mean"],
                          "endpoint": "pain", "covariates": ["baseline_haemoglobin"]},
                         {"name": "xq", "model": "mixed", "region": "salivary_glands", "features": ["suv_mean"],
                          "score": "xerostomia"}]}
    res, ctx = run_analyses(f, {"patients": patients, "labs": None, "scores": scores}, spec)
    pain = res[res.analysis == "pain"].iloc[0]
    assert pain.status == "ok", pain.flag
    assert (pain.n_patients, pain.n_included, pain.n_excluded, pain.n) == (13, 11, 2, 11)
    assert pain.excluded_reasons == "1 no baseline bpi_severity score; 1 no features"  # the endpoint's own reason
    xq = res[res.analysis == "xq"].iloc[0]
    assert (xq.n_included, xq.n_excluded, xq.excluded_reasons) == (12, 1, "1 no features")
    paths = write_report(res, ctx, spec, tmp_path / "rep")
    csv = pd.read_csv(paths["csv"])
    assert {"n_patients", "n_included", "n_excluded", "excluded_reasons"} <= set(csv.columns)
    html = paths["html"].read_text()
    assert "11 of 13 patients analysed (complete case); left out: 1 no" in html
    assert "12 of 13 patients analysed (complete case); left out: 1 no features." in html
    assert "Table 1. Baseline characteristics (n = 13)" in html and "All analyses are complete-case" in html


def test_units_of_covariates_and_baseline_labs():
    base = pd.DataFrame({"patient_id": ["a", "b", "c"], "baseline_haemoglobin": [11.0, 12.0, 13.0]})
    assert dict(table1(base))["Baseline haemoglobin, g/dL, median [IQR]"] == "12.0 [11.5-12.5]"
    res = pd.DataFrame([
        {"analysis": "A", "model": "cox", "feature": "r.suv_mean", "term": "r.suv_mean", "status": "ok",
         "transform": "per SD (2.0)", "hr": 1.5, "ci_low": 1.1, "ci_high": 2.0, "p": 0.01},
        {"analysis": "A", "model": "cox", "feature": "r.suv_mean", "term": "baseline_haemoglobin",
         "status": "ok (covariate)", "transform": "per g/dL", "hr": 0.8, "ci_low": 0.6, "ci_high": 1.0, "p": 0.04}])
    rows = table2(res)[0]["rows"]
    assert rows[1]["feature"] == "adjusted for baseline haemoglobin" and rows[1]["transform"] == "per g/dL"


def test_a_p_that_underflows_is_never_written_as_0(tmp_path):
    rng = np.random.default_rng(1)
    rows = [(p, c, rng.normal(), 10 + 50 * c + rng.normal(0, 0.5)) for p in range(10) for c in range(1, 7)]
    d = pd.DataFrame(rows, columns=["patient", "cycle", "feat", "y"])
    r = fit_mixed(d, "y", "feat", "cycle", "patient")  # Wald z of several hundred: the normal tail underflows
    assert r["time_p"] == P_FLOOR > 0 and r["time_p_log10"] < -300
    from scipy import stats

    z = abs(r["time_estimate"] / r["time_se"])
    assert r["time_p_log10"] == pytest.approx((stats.norm.logsf(z) + np.log(2)) / np.log(10), rel=1e-9)
    pd.DataFrame([r]).to_csv(tmp_path / "r.csv", index=False)
    assert pd.read_csv(tmp_path / "r.csv").time_p.iloc[0] > 0


def _death_window_cohort(window=None):
    """12 patients, platelets before and after the first dose; 4 events (grade 3); P10 dies 29 days after its
    last platelet count (inside the 30-day window: competing), P11 dies 34 days after it (censored by the window)
    although its last xerostomia score, 9 days after that count, is 25 days before the death."""
    ids = [f"P{i:02d}" for i in range(12)]
    f = pd.DataFrame({"patient_id": ids, "study_date": "2023-01-01", "region": "whole_body_tumor",
                      "suv_mean": [3.1, 4.0, 5.2, 2.2, 6.3, 3.8, 4.4, 5.9, 2.7, 4.9, 3.5, 4.1]})
    death = [None] * 10 + ["2024-03-11", "2024-04-15"]
    patients = pd.DataFrame({"patient_id": ids, "therapy_start": "2024-01-10", "death_date": death})
    labs = [(p, "2024-01-08", "PLT", 220, "10^9/L") for p in ids]
    labs += [(p, f"2024-0{2 + i % 2}-{1 + i:02d}", "PLT", 40 if i in (1, 4, 6, 8) else 180, "10^9/L")
             for i, p in enumerate(ids)]
    labs = pd.DataFrame(labs, columns=["patient_id", "date", "test", "value", "unit"])
    sc = pd.DataFrame({"patient_id": ["P11"], "date": ["2024-03-21"], "instrument": ["xerostomia"], "score": [30.0],
                       "cycle": [2]})
    tox = {"type": "first_grade", "tests": ["platelets"]}
    if window != "default":
        tox["death_window_days"] = window
    spec = {"name": "dw", "endpoints": {"tox": tox}, "analyses": [
        {"name": "tox", "model": "cox", "region": "whole_body_tumor", "features": ["suv_mean"], "endpoint": "tox"}]}
    return f, {"patients": patients, "labs": labs, "scores": sc}, spec


def test_the_death_window_is_in_the_methods_the_table_notes_and_results_csv(tmp_path):
    f, clinical, spec = _death_window_cohort("default")
    res, ctx = run_analyses(f, clinical, spec)
    ep = ctx["endpoints"]["tox"].set_index("patient_id")
    # the window runs from the last platelet count (2024-03-12), not from the later score: P11 is censored there
    assert ep.loc["P10", "status"] == "death" and ep.loc["P11", "status"] == "censored"
    assert ep.loc["P11", "time_days"] == 62.0
    row = res.iloc[0]
    assert row.death_window_days == 30 and row.deaths_competing == 1 and row.deaths_censored_window == 1
    assert row.deaths_as_event == 0 and row.deaths_censored_rule == 0
    methods = " ".join(methods_text(spec, results=res))
    assert ("death as a competing event when at most 30 days after the patient's last lab of platelets" in methods
            and "a later death was censored at that lab, not counted as a competing event (death window)" in methods)
    note = ("Deaths among the patients analysed: 1 death as a competing event; 1 death more than 30 days after the "
            "last assessment of the endpoint, censored there (death window).")
    assert note in table2(res)[0]["notes"]
    paths = write_report(res, ctx, spec, tmp_path / "rep")
    csv = pd.read_csv(paths["csv"]).iloc[0]
    assert (csv.deaths_competing, csv.deaths_censored_window, csv.death_window_days) == (1, 1, 30)
    assert "(death window)" in paths["md"].read_text() and "at most 30 days after" in paths["html"].read_text()


def test_a_spec_death_window_is_the_one_reported_and_none_lets_every_death_compete():
    f, clinical, spec = _death_window_cohort(60)
    res, _ = run_analyses(f, clinical, spec)
    assert (res.iloc[0].deaths_competing, res.iloc[0].deaths_censored_window) == (2, 0)
    assert "at most 60 days after" in " ".join(methods_text(spec, results=res))
    f, clinical, spec = _death_window_cohort(None)
    res, _ = run_analyses(f, clinical, spec)
    assert np.isnan(res.iloc[0].death_window_days) and res.iloc[0].deaths_competing == 2
    assert "death as a competing event at any time (no death window)" in " ".join(methods_text(spec))
    assert "death window" not in " ".join(table2(res)[0]["notes"])
    spec["endpoints"]["tox"]["death"] = "censor"
    res, _ = run_analyses(f, clinical, spec)
    assert (res.iloc[0].deaths_censored_rule, res.iloc[0].deaths_competing) == (2, 0)
    assert res.iloc[0].death == "censored at the last lab of the endpoint's tests"


def test_the_singular_fit_warning_names_what_is_at_the_boundary(xerostomia):
    from petfeat.stats.models import boundary_text

    r = fit_mixed(xerostomia, "score", "volume_ml", "cycle", "patient", how="sd", random_slope=True)
    corr = r["cov_intercept_slope"] / np.sqrt(r["var_intercept"] * r["var_slope"])
    assert r["var_slope"] > 0.1 and corr == pytest.approx(-1, abs=1e-3)  # variances away from 0: the correlation
    text = (f"boundary (singular) fit: intercept-slope correlation at the boundary, -1.00 (random-intercept variance "
            f"{r['var_intercept']:.3g} at cycle 0, random-slope variance {r['var_slope']:.3g})")
    assert text in r["warnings"] and not any("variance is estimated at or near 0" in w for w in r["warnings"])
    s2 = 9.0
    assert boundary_text(np.array([[4.0, 0.0], [0.0, 1e-9]]), s2) == "random-slope variance 1e-09 (at or near 0)"
    assert boundary_text(np.array([[0.0]]), s2) == "random-intercept variance 0 (at or near 0)"
    assert boundary_text(np.array([[4.0, 2.0], [2.0, 1.0]]), s2, "at cycle 3.5").startswith(
        "intercept-slope correlation at the boundary, +1.00 (random-intercept variance 4 at cycle 3.5")


def test_var_intercept_states_the_time_it_refers_to_in_main_and_interaction_rows(xerostomia, tmp_path):
    f, patients, sc = _cohort(xerostomia)
    spec = {"name": "x", "endpoints": {}, "analyses": [
        {"name": "main", "model": "mixed", "region": "salivary_glands", "features": ["volume_ml"],
         "score": "xerostomia", "transform": "sd", "random_slope": True},
        {"name": "inter", "model": "mixed", "region": "salivary_glands", "features": ["volume_ml"],
         "score": "xerostomia", "transform": "sd", "random_slope": True, "interaction": True}]}
    res, ctx = run_analyses(f, {"patients": patients, "labs": None, "scores": sc}, spec)
    main, inter = res.iloc[0], res.iloc[1]
    centre = float(xerostomia.cycle.mean())
    assert main.var_intercept_at == 0 and inter.var_intercept_at == pytest.approx(centre)
    # the same covariance moved to the centred time: G00(c) = G00 + 2 c G01 + c^2 G11 (the fits differ by the term)
    assert inter.var_intercept < main.var_intercept
    assert f"random-intercept variance {main.var_intercept:.3g} at cycle 0" in main.flag
    assert f"random-intercept variance {inter.var_intercept:.3g} at cycle {centre:.3g}" in inter.flag
    csv = pd.read_csv(write_report(res, ctx, spec, tmp_path / "rep")["csv"])
    assert list(csv.var_intercept_at) == [0, pytest.approx(centre)]


def test_a_cox_p_that_underflows_is_floored_with_its_log10():
    from scipy import stats

    from petfeat.stats.models import fit_cox

    rng = np.random.default_rng(0)
    x = rng.normal(size=2000)  # log-HR 3 per unit over 2000 events: z about 52, the normal tail underflows to 0
    d = pd.DataFrame({"time_days": np.ceil(rng.exponential(1 / np.exp(3 * x)) * 1000), "event": 1, "f": x,
                      "age": rng.normal(70, 8, 2000)})
    r = fit_cox(d, "time_days", "event", "f", ["age"])
    z = r["coef"] / r["se"]
    assert r["converged"] and z > 40 and 2 * stats.norm.sf(z) == 0
    assert r["p"] == P_FLOOR > 0 and r["p_log10"] < -300
    assert r["p_log10"] == pytest.approx((stats.norm.logsf(z) + np.log(2)) / np.log(10), rel=1e-9)
    assert format_hr(r).endswith("p < 0.001")
    age = r["terms"][1]  # a covariate row: the same Wald p as lifelines' where it does not underflow
    assert age["p"] == pytest.approx(2 * stats.norm.sf(abs(age["coef"] / age["se"])), rel=1e-9)
    assert age["p_log10"] == pytest.approx(np.log10(age["p"]), rel=1e-9)
