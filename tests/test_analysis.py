"""Study spec, endpoints from a clinical folder, planted effects recovered, report written, CLI."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from petfeat.errors import PetfeatError
from petfeat.stats.analysis import StudySpecError, load_study, read_clinical, run_analyses, write_report
from petfeat.synth.clinical import generate_clinical, planted_vs_recovered


def _features(n=61, seed=3):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        for region, m in (("whole_body_tumor", 20), ("healthy_bone", 1.5), ("salivary_glands", 11)):
            rows.append({"patient_id": f"P{i:03d}", "study_date": "2023-01-01", "region": region,
                         "suv_mean": rng.lognormal(np.log(m), 0.3), "suv_max": rng.lognormal(np.log(2 * m), 0.3),
                         "volume_ml": rng.lognormal(3, 1), "total_uptake": rng.lognormal(5, 1.2)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("cohort")
    f = _features()
    f.to_parquet(d / "features.parquet")
    generate_clinical(f, d / "clinical", seed=3)
    return d, f


def test_planted_effects_recovered_and_report_written(cohort, tmp_path):
    d, f = cohort
    t0 = time.perf_counter()
    spec = load_study()
    calls = []
    res, ctx = run_analyses(f, read_clinical(d / "clinical"), spec, progress=lambda i, n: calls.append((i, n)))
    paths = write_report(res, ctx, spec, tmp_path / "report")
    assert time.perf_counter() - t0 < 60
    n_models = sum(len(a["features"]) for a in spec["analyses"])
    assert calls == [(i, n_models) for i in range(1, n_models)]  # the CLI's progress line (ETA) counts these
    pv = planted_vs_recovered(res)
    assert len(pv) == 4 and pv.inside_ci.all(), pv  # seed 3; see the issue note for the coverage across seeds
    tested, covs = res[res.status != "ok (covariate)"], res[res.status == "ok (covariate)"]
    assert (tested.status == "ok").all() and tested["p_fdr"].notna().all()
    assert (tested["p_fdr"] >= tested["p"] - 1e-12).all() and covs["p_fdr"].isna().all()
    # the adjusted toxicity analysis: one baseline-haemoglobin row per feature, after that feature's row; the
    # worsening analyses (FACT-P 4 features, BPI severity and interference 3 each) one baseline-score row each
    assert covs.term.value_counts().to_dict() == {"baseline_score": 10, "baseline_haemoglobin": 3}
    assert covs.hr.gt(0).all() and (covs[covs.term == "baseline_haemoglobin"]["transform"] == "per g/dL").all()
    assert (covs[covs.term == "baseline_score"]["transform"] == "per point").all()
    assert (tested.n_included == 61).all() and (tested.n_excluded == 0).all() and tested.in_family.all()
    assert res[res.model == "cox"].result.str.match(
        r"^HR = \d+\.\d\d, 95% CI \d+\.\d\d to \d+\.\d\d, p (=|<) \d\.\d{3}$").all()
    cox = tested[tested.model == "cox"]
    assert (cox.n == 61).all() and (cox.events_per_variable > 0).all() and cox.concordance.between(0, 1).all()
    assert cox.ph_test_p.between(0, 1).all() and cox.ph_global_p.between(0, 1).all() and cox.se.gt(0).all()
    low = cox.events_per_variable < 10  # this cohort has 15-38 events per variable: no row is flagged
    assert (cox["flag"].str.contains("EPV") == low).all() and cox.converged.all()
    html = paths["html"].read_text()
    assert "data:image/png;base64," in html and "Forest plot" in html and "Kaplan-Meier" in html
    assert paths["csv"].exists() and paths["md"].exists() and list((tmp_path / "report").glob("forest_*.png"))
    mixed = tested[tested.model == "mixed"]  # random slope for cycle, Satterthwaite df; the 2nd analysis adds x cycle
    assert len(mixed) == 6 and mixed.df.between(5, 400).all() and mixed.var_slope.ge(0).all()
    assert mixed.time_estimate.notna().all() and mixed.reml_criterion.notna().all() and mixed.converged.all()
    assert mixed.interaction_p.notna().sum() == 2 and mixed.formula.str.contains(r"\(cycle \| patient_id\)").all()
    inter = mixed[mixed.interaction_p.notna()]  # the tested term and the headline are the interaction
    assert (inter.term == inter.feature + ":cycle").all() and (inter.p == inter.interaction_p).all()
    assert (inter.time_centre == 3.5).all() and inter.main_estimate.notna().all()
    assert mixed.interaction_result.dropna().str.match(r"^x cycle: -?[\d.e-]+ per cycle, 95% CI ").sum() == 2
    csv = pd.read_csv(paths["csv"])
    assert {"term", "se", "loglik", "ph_global_p", "flag", "warnings", "interaction_estimate", "var_slope",
            "reml_criterion", "df"} <= set(csv.columns) and len(csv) == len(res)
    md = paths["md"].read_text()
    assert " flag " in md and "warnings" in md and "ph_global_p" in html


@pytest.mark.parametrize("total", [0, 1, 38, 39, 40, 104.6, 155, 156, 170, -3])
def test_synthetic_fact_p_items_score_back_to_their_total(total):
    from petfeat.stats.questionnaires import fact_scores
    from petfeat.synth.clinical import fact_p_items

    items = fact_p_items(total)
    assert len(items) == 39 and all(0 <= r <= 4 for r in items.values())
    assert fact_scores(items)["fact_p"] == min(max(round(total), 0), 156)


def test_clinical_cohort_does_not_depend_on_the_pseudonyms(tmp_path):
    # The demo pseudonymises with a fresh random key per archive: the same seed must still give the same cohort.
    f = _features(n=12)
    generate_clinical(f, tmp_path / "a", seed=5)
    renamed = f.assign(patient_id=f.patient_id.map({p: f"Z{(37 * i) % 101:03d}" for i, p in
                                                    enumerate(sorted(f.patient_id.unique()))}))
    generate_clinical(renamed, tmp_path / "b", seed=5)
    back = dict(zip(renamed.patient_id, f.patient_id))
    for name in ("patients.csv", "labs.csv", "scores.csv"):
        a = pd.read_csv(tmp_path / "a" / name)
        b = pd.read_csv(tmp_path / "b" / name).assign(patient_id=lambda t: t.patient_id.map(back))
        key = ["patient_id"] + [c for c in ("date", "test", "instrument") if c in a.columns]
        pd.testing.assert_frame_equal(a.sort_values(key).reset_index(drop=True),
                                      b.sort_values(key).reset_index(drop=True))


def test_item_level_questionnaires_are_scored(tmp_path):
    pd.DataFrame({"patient_id": ["a"], "therapy_start": ["2024-01-10"]}).to_csv(tmp_path / "patients.csv", index=False)
    items = [("a", "2024-01-08", "bpi", k, v, 0) for k, v in {"3": 6, "4": 2, "5": 4, "6": 4, "9A": 1, "9B": 2,
                                                             "9C": 3, "9D": 2}.items()]
    items += [("a", "2024-02-08", "xq8", str(i), 5, 1) for i in range(1, 9)]
    pd.DataFrame(items, columns=["patient_id", "date", "instrument", "item", "response", "cycle"]).to_csv(
        tmp_path / "questionnaires.csv", index=False)
    sc = read_clinical(tmp_path)["scores"].set_index("instrument")
    assert sc.loc["bpi_severity", "score"] == 4.0 and sc.loc["bpi_interference", "score"] == 2.0
    assert sc.loc["bpi_worst", "score"] == 6.0
    assert sc.loc["xerostomia", "score"] == 50.0


def test_item_level_fact_p_gives_the_worsening_endpoint(tmp_path):
    from test_stats import PCS_ANSWERS, _fact_g_items

    from petfeat.stats.analysis import derive_endpoints

    pd.DataFrame({"patient_id": ["a"], "therapy_start": ["2024-01-10"]}).to_csv(tmp_path / "patients.csv", index=False)
    base = _fact_g_items() | PCS_ANSWERS  # FACT-P 106
    worse = base | {f"GF{i}": 1 for i in range(1, 8)}  # FWB 21 -> 7: FACT-P 92, a 14-point drop
    rows = [("a", "2024-01-08", "FACT_P", k.lower(), v) for k, v in base.items()]
    rows += [("a", "2024-02-21", "fact_p", k, v) for k, v in worse.items()]
    pd.DataFrame(rows, columns=["patient_id", "date", "instrument", "item", "response"]).to_csv(
        tmp_path / "questionnaires.csv", index=False)
    clinical = read_clinical(tmp_path)
    sc = clinical["scores"].pivot(index="date", columns="instrument", values="score")
    assert list(sc["fact_p"]) == [106.0, 92.0] and list(sc["pcs"]) == [26.0, 26.0]
    assert list(sc["fact_p_toi"]) == [68.0, 54.0]
    spec = load_study()
    spec["endpoints"] = {"fact_p_worsening": spec["endpoints"]["fact_p_worsening"]}
    ends = derive_endpoints(spec, clinical)["fact_p_worsening"].set_index("patient_id")
    assert ends.loc["a", "event"] == 1 and ends.loc["a", "time_days"] == 42  # 2024-02-21 - therapy start


@pytest.mark.parametrize("text, pattern", [
    ("endpoints: {}\nanalyses: [{model: svm, region: r, features: [a]}]\n", "model is 'svm'"),
    ("endpoints: {}\nanalyses: [{model: cox, region: r, features: [a], endpoint: x}]\n", "endpoint 'x' is not defined"),
    ("endpoints: {e: {type: worsening, score: s}}\nanalyses: []\n", "needs 'score' and 'direction'"),
    ("endpoints: {}\nanalyses: [{model: mixed, region: r, features: [a], score: s, transform: z}]\n", "transform 'z'"),
    ("nothing: 1\n", "needs 'endpoints' and 'analyses'"),
    ("endpoints: {}\nridge: -1\nanalyses: [{model: mixed, region: r, features: [a], score: s}]\n", "ridge is -1"),
    ("endpoints: {t: {type: first_grade, tests: [wbc]}}\nanalyses: []\n", "tests \\['wbc'\\]; choose from"),
    ("endpoints: {}\nanalyses: [{model: mixed, region: r, features: [a], score: s, df: kr}]\n", "df is 'kr'"),
])
def test_bad_study_specs_refused(tmp_path, text, pattern):
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(StudySpecError, match=pattern):
        load_study(tmp_path / "s.yaml")


def test_unlinked_ids_refused(cohort):
    d, f = cohort
    f2 = f.assign(patient_id="X" + f.patient_id)
    with pytest.raises(PetfeatError, match="no patient_id of the clinical tables matches"):
        run_analyses(f2, read_clinical(d / "clinical"), load_study())


def test_analyze_command(cohort, tmp_path):
    d, _ = cohort
    r = subprocess.run([sys.executable, "-m", "petfeat.cli", "analyze", "--features", str(d / "features.parquet"),
                        "--clinical", str(d / "clinical"), "-o", str(tmp_path / "rep")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "HR = " in r.stdout and (tmp_path / "rep" / "report.html").exists()
    r = subprocess.run([sys.executable, "-m", "petfeat.cli", "analyze", "--features", str(tmp_path / "none.parquet"),
                        "--clinical", str(d / "clinical"), "-o", str(tmp_path / "rep2")], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "no such feature table" in r.stderr and "Traceback" not in r.stderr


def test_analyze_puts_the_quantities_beside_the_features_into_table_1(cohort, tmp_path):
    import shutil

    d, f = cohort
    shutil.copy(d / "features.parquet", tmp_path / "features.parquet")
    ids = sorted(f.patient_id.unique())
    q = pd.DataFrame({"patient_id": ids, "study_date": "2023-01-01",
                      "tumour_to_parotid_ratio": np.arange(1, len(ids) + 1) / 10})  # 0.1 ... 6.1: median 3.1
    q.to_parquet(tmp_path / "quantities.parquet")
    cmd = [sys.executable, "-m", "petfeat.cli", "analyze", "--features", str(tmp_path / "features.parquet"),
           "--clinical", str(d / "clinical")]
    r = subprocess.run([*cmd, "-o", str(tmp_path / "rep")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "<td>Tumour-to-parotid SUVmean ratio, median [IQR]</td><td class=\"num\">3.10 [1.60-4.60]</td>" in page
    (tmp_path / "quantities.parquet").write_text("not parquet")  # unreadable: a warning, the report without it
    r = subprocess.run([*cmd, "-o", str(tmp_path / "rep2")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "quantities.parquet: not readable" in r.stderr and "Traceback" not in r.stderr
    assert "Tumour-to-parotid" not in (tmp_path / "rep2" / "report.html").read_text()


def test_separation_and_warnings_reach_the_report(tmp_path):
    """A model under complete separation is 'not converged' (no HR); fitter warnings name their model."""
    ids = [f"P{i:03d}" for i in range(12)]
    f = pd.DataFrame({"patient_id": ids, "study_date": "2023-01-01", "region": "whole_body_tumor",
                      "suv_mean": [30.0] * 6 + [10.0] * 6, "suv_max": np.linspace(10, 40, 12)})
    patients = pd.DataFrame({"patient_id": ids, "therapy_start": "2024-01-10"})
    labs = [(p, "2024-01-09", "PLT", 200, "10^9/L") for p in ids]
    # high uptake: grade-3 platelets at 3-8 weeks; low uptake: never (complete separation by suv_mean)
    labs += [(p, f"2024-{2 + i // 3:02d}-{1 + i:02d}", "PLT", 40 if i < 6 else 180, "10^9/L") for i, p in
             enumerate(ids)]
    labs = pd.DataFrame(labs, columns=["patient_id", "date", "test", "value", "unit"])
    spec = {"name": "sep", "endpoints": {"tox": {"type": "first_grade", "tests": ["platelets"], "min_grade": 3}},
            "analyses": [{"name": "tox", "model": "cox", "region": "whole_body_tumor", "features": ["suv_mean"],
                          "endpoint": "tox"}]}
    res, ctx = run_analyses(f, {"patients": patients, "labs": labs, "scores": None}, spec)
    r = res.iloc[0]
    assert r.status == "not converged" and np.isnan(r.hr) and np.isnan(r.p) and "may be infinite" in r["flag"]
    assert r.result.startswith("not converged") and isinstance(r.warnings, list) and r.warnings
    assert "ridge_result" not in res.columns  # no ridge in this spec
    spec["ridge"] = 0.1
    ridge = run_analyses(f, {"patients": patients, "labs": labs, "scores": None}, spec)[0].iloc[0]
    assert ridge.ridge_result.startswith("ridge sensitivity (penalizer 0.1): HR = ") and ridge.status == "not converged"
    paths = write_report(res, ctx, spec, tmp_path / "rep")
    csv = pd.read_csv(paths["csv"])
    assert csv.loc[0, "status"] == "not converged" and "ConvergenceWarning" in csv.loc[0, "warnings"]
    assert "tox / whole_body_tumor.suv_mean: ConvergenceWarning" in paths["html"].read_text()


def test_multiplicity_per_family_with_holm_and_bh(cohort):
    from petfeat.stats.models import fdr, holm

    d, f = cohort
    spec = load_study()
    spec["analyses"] = [a for a in spec["analyses"] if a["model"] == "cox"][:2]
    spec["multiplicity"] = {"methods": ["bh", "holm"], "family": "analysis"}
    res, _ = run_analyses(f, read_clinical(d / "clinical"), spec)
    res = res[res.status == "ok"]  # the tested rows (the FACT-P analysis has baseline-score covariate rows)
    assert res.analysis.nunique() == 2
    for _, g in res.groupby("analysis"):
        np.testing.assert_allclose(g.p_fdr, fdr(g.p))
        np.testing.assert_allclose(g.p_holm, holm(g.p))
    spec["multiplicity"]["family"] = "study"
    res2, _ = run_analyses(f, read_clinical(d / "clinical"), spec)
    res2 = res2[res2.status == "ok"]
    np.testing.assert_allclose(res2.p_holm, holm(res2.p))
    assert (res2.p_holm >= res.p_holm - 1e-12).all() and (res2.p_holm > res.p_holm).any()


def test_competing_death_gives_cause_specific_cox_and_aalen_johansen_figure(tmp_path):
    rng = np.random.default_rng(4)
    ids = [f"P{i:03d}" for i in range(30)]
    f = pd.DataFrame({"patient_id": ids, "study_date": "2023-01-01", "region": "whole_body_tumor",
                      "suv_mean": rng.lognormal(3, 0.4, 30)})
    died = [f"2024-0{3 + i % 4}-1{i % 9}" if i % 3 == 0 else None for i in range(30)]
    patients = pd.DataFrame({"patient_id": ids, "therapy_start": "2024-01-10", "death_date": died})
    labs = [(p, "2024-01-09", "PLT", 200, "10^9/L") for p in ids]
    labs += [(p, f"2024-02-{1 + i % 27:02d}", "PLT", 40 if i % 3 == 1 else 180, "10^9/L") for i, p in enumerate(ids)]
    labs = pd.DataFrame(labs, columns=["patient_id", "date", "test", "value", "unit"])
    # deaths 1-4 months after the last lab compete only without a death window (default 30 days)
    spec = {"name": "cr", "endpoints": {"tox": {"type": "first_grade", "tests": ["platelets"],
                                                "death_window_days": None}},
            "analyses": [{"name": "tox", "model": "cox", "region": "whole_body_tumor", "features": ["suv_mean"],
                          "endpoint": "tox"}]}
    clinical = {"patients": patients, "labs": labs, "scores": None}
    res, ctx = run_analyses(f, clinical, spec)
    ep = ctx["endpoints"]["tox"]
    assert ep.competing.sum() == 10 and ep.event.sum() == 10 and (ep[ep.competing == 1].event == 0).all()
    assert res.loc[0, "death"] == "competing event (cause-specific Cox)" and res.loc[0, "events"] == 10
    html = write_report(res, ctx, spec, tmp_path / "rep")["html"].read_text()
    assert "Cumulative incidence (Aalen-Johansen, death as competing event)" in html
    spec["endpoints"]["tox"]["death"] = "censor"
    res, ctx = run_analyses(f, clinical, spec)
    assert ctx["endpoints"]["tox"].competing.sum() == 0
    assert res.loc[0, "death"] == "censored at the last lab of the endpoint's tests"
    assert "Kaplan-Meier: " in write_report(res, ctx, spec, tmp_path / "rep2")["html"].read_text()


@pytest.mark.parametrize("labs, message", [
    ([("P000", "2024-01-09", "ANC", "1.8", "10^9/L"), ("P000", "2024-02-07", "ANC", "<0.5", "10^9/L")],
     "column 'value', row 2: '<0.5' is not a number"),
    ([("P000", "2024-01-09", "ANC", "1.8", "10^9/L"), ("P000", "07/02/2024", "ANC", "1.2", "10^9/L")],
     "column 'date': '07/02/2024' does not parse"),
])
def test_analyze_bad_clinical_values_are_one_line_errors(cohort, tmp_path, capsys, labs, message):
    from petfeat.cli import main

    d, _ = cohort
    clinical = tmp_path / "clinical"
    clinical.mkdir()
    for name in ("patients.csv", "scores.csv", "questionnaires.csv"):
        if (d / "clinical" / name).exists():
            (clinical / name).write_bytes((d / "clinical" / name).read_bytes())
    pd.DataFrame(labs, columns=["patient_id", "date", "test", "value", "unit"]).to_csv(clinical / "labs.csv",
                                                                                       index=False)
    rc = main(["analyze", "--features", str(d / "features.parquet"), "--clinical", str(clinical), "-o",
               str(tmp_path / "rep")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
