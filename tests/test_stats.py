"""Statistics: CTCAE v5 grade edges and units, endpoints on hand-built timelines, Cox vs R, mixed models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from petfeat.errors import PetfeatError
from petfeat.stats.ctcae import grade, grade_labs, to_canonical
from petfeat.stats.endpoints import BPI_WORSENING, FACT_P_WORSENING, Worsening, time_to_first_grade, time_to_worsening
from petfeat.stats.models import fdr, fit_cox, fit_lmm, fit_mixed, format_hr

DATA = Path(__file__).parent / "data"

# (test, value at the edge, grade at the edge, grade just below the edge); LLN given explicitly
EDGES = [
    ("haemoglobin", 13.0, 0, 1), ("haemoglobin", 10.0, 1, 2), ("haemoglobin", 8.0, 2, 3),
    ("neutrophils", 2.0, 0, 1), ("neutrophils", 1.5, 1, 2), ("neutrophils", 1.0, 2, 3), ("neutrophils", 0.5, 3, 4),
    ("platelets", 150.0, 0, 1), ("platelets", 75.0, 1, 2), ("platelets", 50.0, 2, 3), ("platelets", 25.0, 3, 4),
    ("white_cells", 4.0, 0, 1), ("white_cells", 3.0, 1, 2), ("white_cells", 2.0, 2, 3), ("white_cells", 1.0, 3, 4),
    ("lymphocytes", 1.0, 0, 1), ("lymphocytes", 0.8, 1, 2), ("lymphocytes", 0.5, 2, 3), ("lymphocytes", 0.2, 3, 4),
]
LLN = {"haemoglobin": 13.0, "neutrophils": 2.0, "platelets": 150.0, "white_cells": 4.0, "lymphocytes": 1.0}


@pytest.mark.parametrize("test, edge, at, below", EDGES)
def test_ctcae_grade_edges(test, edge, at, below):
    assert grade(test, edge, LLN[test]) == at
    assert grade(test, edge - 1e-9, LLN[test]) == below


def test_anaemia_has_no_laboratory_grade_4():
    assert grade("hb", 3.0, 13.0) == 3


@pytest.mark.parametrize("test, value, unit, canonical", [
    ("haemoglobin", 80.0, "g/L", 8.0), ("haemoglobin", 4.9, "mmol/L", 4.9 * 1.611),
    ("neutrophils", 1500, "/mm3", 1.5), ("platelets", 75000, "cells/uL", 75.0), ("white_cells", 2.0, "10^9/L", 2.0),
    ("lymphocytes", 0.5, "x10^3/uL", 0.5),
])
def test_units(test, value, unit, canonical):
    assert float(to_canonical(test, value, unit)) == pytest.approx(canonical)


def test_haemoglobin_in_mmol_is_graded_by_ctcae_printed_mmol_bounds():
    # CTCAE v5.0 anaemia: grade 2 <6.2 mmol/L, grade 3 <4.9 mmol/L. Converting to g/dL (x 1.611) would give
    # grade 3 at 4.95 mmol/L (7.97 g/dL) and grade 2 at 6.205 mmol/L (9.996 g/dL): the ranges where they disagree.
    labs = pd.DataFrame({"test": "haemoglobin", "value": [4.95, 4.9, 4.89, 6.205, 6.2, 6.19, 8.0, 80.0, 79.9],
                         "unit": ["mmol/L"] * 7 + ["g/L"] * 2, "lln": [8.1] * 7 + [130] * 2})
    assert list(grade_labs(labs)["grade"]) == [2, 2, 3, 1, 1, 2, 1, 2, 3]
    assert grade("haemoglobin", to_canonical("haemoglobin", 4.95, "mmol/L"), 13) == 3  # the conversion's answer
    assert grade_labs(labs)["value_canonical"].iloc[0] == pytest.approx(4.95 * 1.611)
    no_lln = grade_labs(labs.drop(columns="lln").iloc[[6]])  # 8.0 mmol/L < default LLN 13 g/dL / 1.611 = 8.07
    assert no_lln["grade"].iloc[0] == 1


def test_bad_units_and_tests_refused():
    with pytest.raises(PetfeatError, match="unit 'mg/dL' of haemoglobin is not known"):
        to_canonical("haemoglobin", 1.0, "mg/dL")
    with pytest.raises(PetfeatError, match="lab test 'creatinine' is not graded"):
        grade_labs(pd.DataFrame({"test": ["creatinine"], "value": [1.0], "unit": ["mg/dL"]}))


def _patients():
    return pd.DataFrame({"patient_id": ["a", "b", "c"], "therapy_start": ["2024-01-10"] * 3,
                         "death_date": [None, "2024-03-01", None]})


def test_time_to_first_grade_3():
    labs = pd.DataFrame([
        ("a", "2024-01-09", "Hb", 12.0, "g/dL"), ("a", "2024-02-01", "Hb", 9.0, "g/dL"),
        ("a", "2024-02-20", "PLT", 40000, "/mm3"), ("a", "2024-03-20", "Hb", 7.5, "g/dL"),
        ("b", "2024-01-05", "ANC", 0.8, "10^9/L"), ("b", "2024-02-10", "ANC", 1.2, "10^9/L"),
        ("c", "2024-02-10", "Hb", 11.0, "g/dL"), ("c", "2024-04-10", "WBC", 1.5, "10^9/L"),
    ], columns=["patient_id", "date", "test", "value", "unit"])
    t = time_to_first_grade(labs, _patients()).set_index("patient_id")
    assert (t.loc["a", "time_days"], t.loc["a", "event"]) == (41.0, 1)  # platelets 40 x10^9/L on day 41
    assert (t.loc["b", "time_days"], t.loc["b", "event"], t.loc["b", "baseline_grade_ge"]) == (51.0, 0, True)
    assert (t.loc["b", "competing"], t.loc["b", "status"]) == (1, "death")  # died 2024-03-01: competing event
    cens = time_to_first_grade(labs, _patients(), death="censor").set_index("patient_id")
    assert (cens.loc["b", "time_days"], cens.loc["b", "competing"]) == (31.0, 0)  # last lab
    assert (t.loc["c", "time_days"], t.loc["c", "event"]) == (31.0, 0)  # white cells are not among the tests


def _scores(rows):
    return pd.DataFrame(rows, columns=["patient_id", "date", "score"])


def test_fact_p_worsening_strict_more_than_10_points():
    s = _scores([("a", "2024-01-08", 100), ("a", "2024-02-08", 90), ("a", "2024-03-08", 89),
                 ("b", "2024-01-08", 100), ("b", "2024-02-08", 95),
                 ("c", "2024-01-08", 100), ("c", "2024-02-08", 80), ("c", "2024-03-08", 99)])
    t = time_to_worsening(s, _patients(), FACT_P_WORSENING).set_index("patient_id")
    assert (t.loc["a", "event"], t.loc["a", "time_days"]) == (1, 58.0)  # -10 is not > 10; -11 is
    assert (t.loc["b", "event"], t.loc["b", "time_days"], t.loc["b", "status"]) == (0, 29.0, "censored")
    assert (t.loc["c", "event"], t.loc["c", "time_days"]) == (1, 29.0)
    confirmed = Worsening("decrease", absolute=10.0, confirmed=True)
    tc = time_to_worsening(s, _patients(), confirmed).set_index("patient_id")
    assert tc.loc["c", "event"] == 0 and tc.loc["a", "event"] == 0  # c recovered; a's worsening is the last visit


def test_bpi_worsening_30_percent_or_2_points_and_zero_baseline():
    s = _scores([("a", "2024-01-08", 5.0), ("a", "2024-02-08", 6.4), ("a", "2024-03-08", 6.5),
                 ("b", "2024-01-08", 0.0), ("b", "2024-02-08", 1.0), ("b", "2024-03-08", 2.0),
                 ("c", "2024-01-08", 1.0), ("c", "2024-02-08", 1.3)])
    t = time_to_worsening(s, _patients(), BPI_WORSENING).set_index("patient_id")
    assert (t.loc["a", "event"], t.loc["a", "time_days"]) == (1, 58.0)  # +1.4 (28%) no; +1.5 (30%) yes
    assert (t.loc["b", "event"], t.loc["b", "time_days"]) == (1, 58.0)  # zero baseline: absolute rule only
    assert (t.loc["c", "event"], t.loc["c", "time_days"]) == (1, 29.0)  # +30% of 1.0
    anyzero = Worsening("increase", absolute=2.0, relative=0.3, strict=False, zero_baseline="any")
    assert time_to_worsening(s, _patients(), anyzero).set_index("patient_id").loc["b", "time_days"] == 29.0


def test_death_as_event_or_censor():
    s = _scores([("b", "2024-01-08", 100), ("b", "2024-02-08", 99), ("b", "2024-04-08", 60)])
    cens = time_to_worsening(s, _patients(), FACT_P_WORSENING).set_index("patient_id")
    assert (cens.loc["b", "event"], cens.loc["b", "time_days"]) == (1, 89.0)
    ev = time_to_worsening(s, _patients(), Worsening("decrease", absolute=10.0, death="event")).set_index("patient_id")
    assert (ev.loc["b", "event"], ev.loc["b", "time_days"], ev.loc["b", "status"]) == (1, 51.0, "death")
    assert cens.loc["a", "status"] == "no_baseline" and np.isnan(cens.loc["a", "time_days"])


def test_cox_matches_r_on_rossi():
    """R: coxph(Surv(week, arrest) ~ fin + age + race + wexp + mar + paro + prio, data = rossi) (Efron)."""
    from lifelines import CoxPHFitter
    from lifelines.datasets import load_rossi

    rossi = load_rossi()
    cph = CoxPHFitter().fit(rossi, duration_col="week", event_col="arrest")
    r_coef = {"fin": -0.3794222, "age": -0.0574377, "race": 0.3138998, "wexp": -0.1497957, "mar": -0.4337039,
              "paro": -0.0848711, "prio": 0.0914971}
    for name, value in r_coef.items():
        assert cph.params_[name] == pytest.approx(value, abs=1e-5)
    assert cph.concordance_index_ == pytest.approx(0.640329, abs=1e-5)
    res = fit_cox(rossi, "week", "arrest", "prio", ["fin", "age", "race", "wexp", "mar", "paro"])
    assert res["coef"] == pytest.approx(0.0914971, abs=1e-5) and res["hr"] == pytest.approx(np.exp(0.0914971), rel=1e-5)
    assert (res["n"], res["events"]) == (432, 114) and res["events_per_variable"] == pytest.approx(114 / 7)
    assert 0 <= res["ph_test_p"] <= 1 and isinstance(res["warnings"], list)
    assert format_hr(res) == f"HR = 1.10, 95% CI 1.04 to 1.16, p = {res['p']:.3f}" and 0.001 <= res["p"] < 0.002
    assert format_hr({**res, "p": 0.0004}).endswith("p < 0.001")


def test_cox_recovers_a_planted_hazard_ratio_in_61_patients():
    rng = np.random.default_rng(61)
    n, log_hr_per_sd = 61, 0.7
    x = rng.lognormal(5.0, 0.8, n)  # e.g. whole-body TLP
    hb = rng.normal(12.5, 1.5, n)
    z = (x - x.mean()) / x.std(ddof=1)
    t = rng.exponential(1.0 / (0.01 * np.exp(log_hr_per_sd * z - 0.2 * (hb - 12.5))))
    c = rng.uniform(50, 400, n)
    df = pd.DataFrame({"time": np.minimum(t, c), "event": (t <= c).astype(int), "tlp": x, "hb": hb})
    res = fit_cox(df, "time", "event", "tlp", ["hb"], how="sd")
    assert res["ci_low"] <= np.exp(log_hr_per_sd) <= res["ci_high"], res
    assert res["transform"].startswith("per SD")


def test_mixed_model_recovers_a_planted_slope():
    rng = np.random.default_rng(5)
    rows = []
    for pid in range(61):
        feat = rng.normal(50, 15)
        u = rng.normal(0, 3)
        for cycle in range(1, 5):
            rows.append((pid, cycle, feat, 20 + 0.15 * feat + 1.2 * cycle + u + rng.normal(0, 2)))
    df = pd.DataFrame(rows, columns=["patient", "cycle", "salivary_tlp", "xq"])
    res = fit_mixed(df, "xq", "salivary_tlp", "cycle", "patient")
    assert res["ci_low"] <= 0.15 <= res["ci_high"] and res["n_groups"] == 61 and res["n_obs"] == 244
    assert res["converged"]


def test_fdr_and_transform_refusals():
    from petfeat.stats.models import holm

    np.testing.assert_allclose(fdr([0.01, 0.04, 0.03]), [0.03, 0.04, 0.04])
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])  # 3 x 0.01, 2 x 0.03, then monotone
    df = pd.DataFrame({"t": [1, 2, 3], "e": [1, 0, 1], "x": [0.0, 1.0, 2.0]})
    with pytest.raises(PetfeatError, match="log2 needs positive values"):
        fit_cox(df, "t", "e", "x", how="log2")
    with pytest.raises(PetfeatError, match="transform is 'z'"):
        fit_cox(df, "t", "e", "x", how="z")


def test_fact_g_hand_scored_with_prorating():
    from petfeat.stats.questionnaires import fact_p_total, fact_scores

    r = {f"GP{i}": 1 for i in range(1, 8)}  # reversed: 3 each -> 21
    r.update({f"GS{i}": 2 for i in range(1, 7)})  # GS7 (sexual item) skipped: 12 x 7/6 = 14
    r.update({"GE1": 0, "GE2": 4, "GE3": 0, "GE4": 0, "GE5": 0, "GE6": 0})  # 4+4+4+4+4+4 = 24
    r.update({f"GF{i}": 3 for i in range(1, 8)})  # 21
    s = fact_scores(r)
    assert (s["pwb"], s["swb"], s["ewb"], s["fwb"]) == (21.0, pytest.approx(14.0), 24.0, 21.0)
    assert s["fact_g"] == pytest.approx(80.0)
    few = {k: v for k, v in r.items() if not k.startswith("GE")} | {"GE1": 0, "GE2": 4, "GE3": 0}
    assert np.isnan(fact_scores(few)["ewb"])  # half answered is not more than half
    assert "pcs" not in fact_scores(r, pcs_key=None)
    with pytest.raises(PetfeatError, match="GS1 = 9.0: responses must be 0-4; leave a missing item empty"):
        fact_scores(r | {"GS1": 9})
    pcs = {f"X{i}": i % 2 == 0 for i in range(12)}  # a user-supplied key for another version
    full = r | {f"X{i}": 2 for i in range(12)}
    assert fact_p_total(full, pcs) == pytest.approx(80.0 + 24.0)
    with pytest.raises(PetfeatError, match="the PCS key has 3 items"):
        fact_scores(full, {"a": True, "b": False, "c": True})


# FACT-P v4 Prostate Cancer Subscale, hand-scored with the FACIT key: reversed items (C2 P1 P2 P3 P6 P7 BL2 P8)
# count 4 - response, the others (C6 P4 P5 BL5) the response.
PCS_ANSWERS = {"C2": 1, "C6": 3, "P1": 0, "P2": 2, "P3": 4, "P4": 1, "P5": 2, "P6": 3, "P7": 1, "BL2": 2, "P8": 0,
               "BL5": 1}
PCS_HAND = (3 + 3 + 4 + 2 + 0 + 1 + 2 + 1 + 3 + 2 + 4 + 1)  # = 26


def _fact_g_items():
    r = {f"GP{i}": 1 for i in range(1, 8)}  # 21
    r.update({f"GS{i}": 2 for i in range(1, 8)})  # 14
    r.update({"GE1": 0, "GE2": 4, "GE3": 0, "GE4": 0, "GE5": 0, "GE6": 0})  # 24
    r.update({f"GF{i}": 3 for i in range(1, 8)})  # 21
    return r


def test_fact_p_hand_scored_with_the_facit_key():
    from petfeat.stats.questionnaires import FACT_P_PCS, fact_p_total, fact_scores

    assert sorted(k for k, rev in FACT_P_PCS.items() if rev) == sorted(["C2", "P1", "P2", "P3", "P6", "P7", "BL2",
                                                                         "P8"])
    s = fact_scores(_fact_g_items() | PCS_ANSWERS)
    assert s["pcs"] == PCS_HAND == 26 and s["fact_g"] == 80.0
    assert s["fact_p"] == 106.0 and s["fact_p_toi"] == 21 + 21 + 26
    best_pcs = {k: 0 if rev else 4 for k, rev in FACT_P_PCS.items()}
    best = {f"GP{i}": 0 for i in range(1, 8)} | {f"GS{i}": 4 for i in range(1, 8)} | {f"GF{i}": 4 for i in
                                                                                         range(1, 8)}
    best |= {"GE2": 4} | {f"GE{i}": 0 for i in (1, 3, 4, 5, 6)} | best_pcs
    assert fact_p_total(best) == 156.0  # the top of the range: every item at its best
    # PCS prorating: 7 of 12 answered is more than half -> sum x 12 / 7; 6 of 12 is not.
    seven = dict(list(PCS_ANSWERS.items())[:7])  # C2 C6 P1 P2 P3 P4 P5 -> 3 + 3 + 4 + 2 + 0 + 1 + 2 = 15
    assert fact_scores(_fact_g_items() | seven)["pcs"] == pytest.approx(15 * 12 / 7)
    assert np.isnan(fact_scores(_fact_g_items() | dict(list(PCS_ANSWERS.items())[:6]))["pcs"])
    # Total needs more than 80% of all 39 items (32): drop 8 items spread so every subscale stays valid -> 31.
    drop = {"GP1", "GP2", "GS1", "GS2", "GE1", "GF1", "GF2", "C2"}
    sparse = {k: v for k, v in (_fact_g_items() | PCS_ANSWERS).items() if k not in drop}
    s = fact_scores(sparse)
    assert not np.isnan(s["pcs"]) and not np.isnan(s["pwb"]) and np.isnan(s["fact_p"])
    s = fact_scores(sparse | {"C2": 1})  # 32 answered
    assert np.isnan(s["fact_g"])  # 20 of 27 FACT-G items is not more than 80% ...
    assert s["fact_p"] == pytest.approx(s["pwb"] + s["swb"] + s["ewb"] + s["fwb"] + s["pcs"])  # ... 32 of 39 is


def test_bpi_and_xerostomia_hand_scored():
    from petfeat.stats.questionnaires import bpi_scores, xerostomia_score

    r = {"3": 8, "4": 2, "5": 5, "6": 5, "9A": 4, "9B": 6, "9C": np.nan, "9D": 2, "9E": np.nan, "9F": np.nan, "9G": 4}
    s = bpi_scores(r)
    assert s["bpi_severity"] == 5.0 and s["bpi_interference"] == 4.0  # 4 of 7 answered
    assert np.isnan(bpi_scores({**r, "9A": np.nan})["bpi_interference"])
    assert np.isnan(bpi_scores({**r, "6": np.nan})["bpi_severity"])
    assert xerostomia_score({str(i): 5 for i in range(1, 9)}, "xq8") == 50.0
    assert xerostomia_score({str(i): 2 for i in range(1, 12)}, "xi11") == 22.0
    assert np.isnan(xerostomia_score({str(i): 2 for i in range(1, 11)}, "xi11"))
    with pytest.raises(PetfeatError, match="xi11 item 3 = 6.0: responses must be 1-5"):  # Thomson's XI: 1-5
        xerostomia_score({str(i): (6 if i == 3 else 2) for i in range(1, 12)}, "xi11")


def test_ph_test_matches_r_cox_zph_on_rossi():
    """R 4.2.2, survival 3.5-3:

    fit <- coxph(Surv(week, arrest) ~ fin + age + race + wexp + mar + paro + prio, data = rossi)
    cox.zph(fit)                      # transform = "km" (the default)
    cox.zph(fit, transform = "rank")  # age: chisq 0.90
    """
    from lifelines import CoxPHFitter
    from lifelines.datasets import load_rossi

    from petfeat.stats.models import cox_zph

    rossi = load_rossi()
    cols = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]
    beta = CoxPHFitter().fit(rossi, duration_col="week", event_col="arrest").params_[cols].to_numpy()
    r_km = {"fin": 0.0624, "age": 5.9740, "race": 2.0683, "wexp": 4.2246, "mar": 1.0110, "paro": 0.0184,
            "prio": 0.5206, "GLOBAL": 17.6944}
    km = cox_zph(rossi["week"], rossi["arrest"], rossi[cols], beta)
    for name, chisq in r_km.items():
        assert km.loc[name, "chisq"] == pytest.approx(chisq, abs=1e-3), name
    assert km.loc["GLOBAL", "df"] == 7 and km.loc["age", "p"] == pytest.approx(0.0145, abs=1e-4)
    rank = cox_zph(rossi["week"], rossi["arrest"], rossi[cols], beta, transform="rank")
    assert rank.loc["age", "chisq"] == pytest.approx(0.90, abs=0.005)
    res = fit_cox(rossi, "week", "arrest", "age", ["fin", "race", "wexp", "mar", "paro", "prio"])
    assert res["ph_test_chisq"] == pytest.approx(5.9740, abs=1e-3) and res["ph_global_chisq"] == pytest.approx(
        17.6944, abs=1e-3)
    assert res["converged"] and res["flag"] == "" and res["loglik"] == pytest.approx(-658.7477, abs=1e-3)
    hb_like = {t["term"]: t for t in res["terms"]}
    assert set(hb_like) == set(cols) and hb_like["prio"]["hr"] == pytest.approx(np.exp(0.0914971), rel=1e-5)


def test_complete_separation_is_reported_as_not_converged():
    # every patient with x = 1 has the event before any patient with x = 0: the likelihood rises without bound
    df = pd.DataFrame({"t": np.arange(1.0, 11.0), "e": [1, 1, 1, 0, 1, 0, 1, 0, 0, 0],
                       "x": [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]})
    res = fit_cox(df, "t", "e", "x", ridge=0.1)
    assert not res["converged"] and res["flag"].startswith("not converged: coefficient of x may be infinite")
    assert "EPV 5.0 < 10" in res["flag"]
    # the ridge sensitivity fit stays finite and shrinks towards 1, below the runaway estimate
    assert 1 < res["ridge_hr"] < res["hr"] and np.isfinite(res["ridge_ci_high"]) and res["ridge_penalizer"] == 0.1
    with pytest.raises(PetfeatError, match="ridge is 0; the penalizer"):
        fit_cox(df, "t", "e", "x", ridge=0)
    df["x"] = [1, 0, 1, 1, 0, 0, 1, 0, 1, 0]  # no separation: settles
    res = fit_cox(df, "t", "e", "x")
    assert res["converged"] and res["flag"] == "EPV 5.0 < 10"


def test_model_without_events_is_refused_in_one_line():
    from petfeat.stats.errors import ModelError

    df = pd.DataFrame({"t": [1.0, 2.0, 3.0], "e": [0, 0, 0], "x": [0.0, 1.0, 2.0]})
    with pytest.raises(ModelError, match="^no events: all 3 patients are censored"):
        fit_cox(df, "t", "e", "x")


def test_lab_row_without_value_neither_extends_follow_up_nor_counts():
    p = pd.DataFrame({"patient_id": ["a"], "therapy_start": ["2024-01-10"]})
    labs = pd.DataFrame([("a", "2024-01-09", "PLT", 200, "10^9/L"), ("a", "2024-02-07", "PLT", 180, "10^9/L"),
                         ("a", "2024-03-20", "PLT", None, "10^9/L")],
                        columns=["patient_id", "date", "test", "value", "unit"])
    t = time_to_first_grade(labs, p, tests=("platelets",)).iloc[0]
    assert (t["time_days"], t["event"], t["n_assessments"]) == (28.0, 0, 1)  # censored at day 28, not day 70


def test_lab_on_the_day_of_the_first_dose_is_baseline_unless_after_a_given_dose_time():
    labs = pd.DataFrame([("a", "2024-03-01 08:00", "PLT", 20, "10^9/L"), ("a", "2024-03-01", "ANC", 0.2, "10^9/L"),
                         ("a", "2024-03-15", "PLT", 100, "10^9/L")],
                        columns=["patient_id", "date", "test", "value", "unit"])
    t = time_to_first_grade(labs, pd.DataFrame({"patient_id": ["a"], "therapy_start": ["2024-03-01"]})).iloc[0]
    assert (t["event"], t["time_days"], t["baseline_grade_ge"], t["n_assessments"]) == (0, 14.0, True, 1)
    # a dose time: the 08:00 lab is still before it; a lab at 14:00 is after it (a day-0 event)
    dosed = pd.DataFrame({"patient_id": ["a"], "therapy_start": ["2024-03-01 10:30"]})
    t = time_to_first_grade(labs, dosed).iloc[0]
    assert (t["event"], t["baseline_grade_ge"]) == (0, True)
    late = pd.concat([labs, pd.DataFrame([("a", "2024-03-01 14:00", "PLT", 20, "10^9/L")], columns=labs.columns)])
    t = time_to_first_grade(late, dosed).iloc[0]
    assert (t["event"], t["time_days"]) == (1, 0.0)


def test_exactly_10_point_prorated_fact_p_drop_is_not_worsening():
    from petfeat.stats.questionnaires import fact_scores

    # GS7 unanswered: SWB = 2 x 7/6 (prorated). FWB drops by exactly 10 points: 64.333... -> 54.333...,
    # whose floating-point difference is 10.000000000000007.
    base = {k: v for k, v in (_fact_g_items() | PCS_ANSWERS).items() if k != "GS7"}
    base |= {"GS1": 2, **{f"GS{i}": 0 for i in range(2, 7)}, "GP1": 2, **{f"GP{i}": 4 for i in range(2, 8)},
             "GF1": 4, "GF2": 4, "GF3": 2, **{f"GF{i}": 0 for i in range(4, 8)}}
    later = base | {"GF1": 0, "GF2": 0, "GF3": 0}
    before, after = fact_scores(base)["fact_p"], fact_scores(later)["fact_p"]
    assert before - after > 10  # the rounding error the comparison must absorb
    s = _scores([("a", "2024-01-08", before), ("a", "2024-02-08", after)])
    t = time_to_worsening(s, _patients(), FACT_P_WORSENING).set_index("patient_id")
    assert (t.loc["a", "event"], t.loc["a", "status"]) == (0, "censored")
    s = _scores([("a", "2024-01-08", before), ("a", "2024-02-08", after - 1e-6)])
    assert time_to_worsening(s, _patients(), FACT_P_WORSENING).set_index("patient_id").loc["a", "event"] == 1


def test_lab_value_that_is_not_a_number_is_refused_in_one_line():
    from petfeat.stats.errors import ClinicalDataError

    labs = pd.DataFrame([("a", "2024-01-09", "ANC", "1.8", "10^9/L"), ("a", "2024-02-07", "ANC", "<0.5", "10^9/L")],
                        columns=["patient_id", "date", "test", "value", "unit"])
    with pytest.raises(ClinicalDataError, match=r"column 'value', row 2: '<0.5' is not a number; enter the measured"):
        grade_labs(labs)


def test_mixed_date_formats_are_refused_in_one_line():
    from petfeat.stats.errors import ClinicalDataError

    labs = pd.DataFrame([("a", "2024-01-09", "PLT", 200, "10^9/L"), ("a", "07/02/2024", "PLT", 180, "10^9/L")],
                        columns=["patient_id", "date", "test", "value", "unit"])
    p = pd.DataFrame({"patient_id": ["a"], "therapy_start": ["2024-01-10"]})
    with pytest.raises(ClinicalDataError, match=r"the labs table, column 'date': '07/02/2024' does not parse"):
        time_to_first_grade(labs, p)


def test_per_sd_of_a_mixed_model_is_the_sd_over_patients():
    # 3 patients with 2, 3 and 5 score rows: the SD over rows weights patients by their visits
    df = pd.DataFrame({"patient": ["a"] * 2 + ["b"] * 3 + ["c"] * 5, "feat": [1.0] * 2 + [2.0] * 3 + [4.0] * 5})
    from petfeat.stats.models import transform

    _, label = transform(df["feat"], "sd", groups=df["patient"])
    assert label == f"per SD ({np.std([1.0, 2.0, 4.0], ddof=1):.4g})"
    assert transform(df["feat"], "sd")[1] != label


def test_random_slope_mixed_model_matches_lme4_and_lmertest_on_sleepstudy():
    """R 4.2.2, lme4 1.1-31, lmerTest 3.1:

    fm <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy)   # REML
    REMLcrit(fm)           # 1743.628272
    fixef(fm)              # 251.405105 10.467286
    sqrt(diag(vcov(fm)))   # 6.8246 1.5458
    VarCorr(fm)            # Std.Dev. Subject (Intercept) 24.741, Days 5.922, Corr 0.066; Residual 25.592
    summary(lmerTest::lmer(Reaction ~ Days + (Days | Subject), sleepstudy))   # df 17.000 17.000
    """
    sleep = pd.read_csv(DATA / "sleepstudy.csv")
    table, extra = fit_lmm(sleep, "Reaction ~ Days", "Subject", slope="Days", df_method="satterthwaite")
    assert extra["reml_criterion"] == pytest.approx(1743.628272, abs=1e-5)
    np.testing.assert_allclose(table["estimate"], [251.405105, 10.467286], atol=1e-5)
    np.testing.assert_allclose(table["se"], [6.8246, 1.5458], atol=1e-4)
    np.testing.assert_allclose(table["df"], [17.0, 17.0], atol=5e-3)
    # the criterion is flat to 1e-9 over the last printed digit of the variances: compare lme4's printed SDs
    sd0, sd1 = np.sqrt(extra["var_intercept"]), np.sqrt(extra["var_slope"])
    assert (sd0, sd1, extra["cov_intercept_slope"] / (sd0 * sd1), np.sqrt(extra["var_residual"])) == (
        pytest.approx(24.741, abs=1e-3), pytest.approx(5.922, abs=1e-3), pytest.approx(0.066, abs=1e-3),
        pytest.approx(25.592, abs=1e-3))
    normal, _ = fit_lmm(sleep, "Reaction ~ Days", "Subject", slope="Days")
    assert np.isinf(normal["df"]).all() and normal.loc["Days", "ci_low"] > table.loc["Days", "ci_low"]


def test_mixed_model_random_slope_and_feature_by_cycle_interaction():
    # planted: each SD of the feature raises the score by 2 at cycle 0 and its slope by 0.8 per cycle
    rng = np.random.default_rng(7)
    rows = []
    for pid in range(61):
        feat = rng.normal(50, 15)
        z = (feat - 50) / 15
        u0, u1 = rng.normal(0, 3), rng.normal(0, 0.7)
        for cycle in range(4):
            rows.append((pid, cycle, feat, 20 + 2 * z + (1.2 + 0.8 * z + u1) * cycle + u0 + rng.normal(0, 1.5)))
    df = pd.DataFrame(rows, columns=["patient", "cycle", "tlp", "xq"])
    res = fit_mixed(df, "xq", "tlp", "cycle", "patient", how="sd", random_slope=True, interaction=True,
                    df_method="satterthwaite")
    per_sd = 0.8 * df.groupby("patient").tlp.first().std(ddof=1) / 15  # planted per 15 units; fitted per sample SD
    assert res["interaction_ci_low"] <= per_sd <= res["interaction_ci_high"] and res["interaction_p"] < 1e-6
    assert res["time_se"] > 0 and res["var_slope"] > 0 and res["converged"]
    assert 30 < res["interaction_df"] < 70 and res["formula"] == "xq ~ tlp + cycle + tlp:cycle + (cycle | patient)"


def test_toxicity_with_white_cells_and_lymphocytes_and_treatment_emergent_option():
    p = pd.DataFrame({"patient_id": ["a", "b"], "therapy_start": ["2024-01-10"] * 2})
    labs = pd.DataFrame([
        ("a", "2024-01-08", "ALC", 0.4, "10^9/L"), ("a", "2024-02-07", "ALC", 0.35, "10^9/L"),  # grade 3 at baseline
        ("a", "2024-03-06", "ALC", 0.15, "10^9/L"),  # grade 4: worse than baseline on day 56
        ("b", "2024-01-08", "WBC", 4.5, "10^9/L"), ("b", "2024-02-21", "WBC", 1.5, "10^9/L"),  # grade 3, day 42
    ], columns=["patient_id", "date", "test", "value", "unit"])
    tests = ("white_cells", "lymphocytes")
    t = time_to_first_grade(labs, p, tests).set_index("patient_id")
    assert (t.loc["a", "event"], t.loc["a", "time_days"]) == (1, 28.0) and t.loc["a", "baseline_grade_ge"]
    assert (t.loc["b", "event"], t.loc["b", "time_days"]) == (1, 42.0)
    te = time_to_first_grade(labs, p, tests, treatment_emergent=True).set_index("patient_id")
    assert (te.loc["a", "event"], te.loc["a", "time_days"]) == (1, 56.0)  # grade 3 = baseline is not emergent
    assert (te.loc["b", "event"], te.loc["b", "time_days"]) == (1, 42.0)
    assert time_to_first_grade(labs, p).event.sum() == 0  # the default tests: Hb, neutrophils, platelets


def test_bpi_worst_pain_is_item_3():
    from petfeat.stats.questionnaires import bpi_scores

    r = {"3": 8, "4": 2, "5": 5, "6": 5, "9A": 4, "9B": 6, "9D": 2, "9G": 4}
    assert bpi_scores(r)["bpi_worst"] == 8.0
    assert np.isnan(bpi_scores({**r, "3": np.nan})["bpi_worst"])


def test_death_competes_with_toxicity_and_cumulative_incidence_is_aalen_johansen():
    from petfeat.stats.endpoints import cumulative_incidence

    # hand-computed: 5 patients; day 10 toxicity, day 20 death, day 30 toxicity, censored at 40 and 50
    t, e, c = [10, 20, 30, 40, 50], [1, 0, 1, 0, 0], [0, 1, 0, 0, 0]
    cif = cumulative_incidence(t, e, c).set_index("time")["cif"]
    # S(10-) = 1: 1/5; S(20-) = 4/5 (death only moves S); S(30-) = 4/5 x 3/4 = 3/5: + 3/5 x 1/3 = 0.2
    assert cif[10.0] == pytest.approx(0.2) and cif[20.0] == pytest.approx(0.2) and cif[30.0] == pytest.approx(0.4)
    from lifelines import KaplanMeierFitter

    one_minus_km = 1 - KaplanMeierFitter().fit(t, e).survival_function_.loc[30.0].iloc[0]  # death censored
    assert one_minus_km == pytest.approx(1 - 0.8 * 2 / 3) and one_minus_km > cif[30.0]  # 0.467 overstates
    np.testing.assert_allclose(cumulative_incidence(t, e, [0] * 5).cif.iloc[1:],
                               1 - KaplanMeierFitter().fit(t, e).survival_function_.loc[[10.0, 30.0]].to_numpy()[:, 0])
    p = pd.DataFrame({"patient_id": ["a"], "therapy_start": ["2024-01-10"], "death_date": ["2024-02-20"]})
    labs = pd.DataFrame([("a", "2024-01-09", "PLT", 200, "10^9/L"), ("a", "2024-02-07", "PLT", 190, "10^9/L")],
                        columns=["patient_id", "date", "test", "value", "unit"])
    r = time_to_first_grade(labs, p).iloc[0]
    assert (r.time_days, r.event, r.competing, r.status) == (41.0, 0, 1, "death")
    r = time_to_first_grade(labs, p, death="event").iloc[0]
    assert (r.time_days, r.event, r.competing) == (41.0, 1, 0)
    s = _scores([("a", "2024-01-08", 100), ("a", "2024-02-08", 99)])
    w = time_to_worsening(s, p, Worsening("decrease", absolute=10.0, death="competing")).iloc[0]
    assert (w.time_days, w.event, w.competing, w.status) == (41.0, 0, 1, "death")
