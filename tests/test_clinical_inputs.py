"""Clinical tables a reviewer would refuse: wrong units, duplicates, impossible dates, orphans, exclusions."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from petfeat.errors import PetfeatWarning
from petfeat.stats.analysis import derive_endpoints, load_study, read_clinical
from petfeat.stats.errors import ClinicalDataError
from petfeat.stats.questionnaires import ITEMS, xerostomia_score

LAB_COLS = ["patient_id", "date", "test", "value", "unit"]


def _normal_labs(pid: str, dates=("2024-01-08", "2024-01-24", "2024-02-07")) -> list[tuple]:
    rows = []
    for d in dates:
        rows += [(pid, d, "haemoglobin", 13.5, "g/dL"), (pid, d, "platelets", 230.0, "10^9/L"),
                 (pid, d, "neutrophils", 3.5, "10^9/L")]
    return rows


def _folder(tmp_path, patients=None, labs=None, scores=None, items=None):
    """A clinical folder: three patients with normal labs unless given."""
    if patients is None:
        patients = pd.DataFrame({"patient_id": ["a", "b", "c"], "therapy_start": ["2024-01-10"] * 3})
    if labs is None:
        labs = pd.DataFrame(_normal_labs("a") + _normal_labs("b") + _normal_labs("c"), columns=LAB_COLS)
    patients.to_csv(tmp_path / "patients.csv", index=False)
    labs.to_csv(tmp_path / "labs.csv", index=False)
    if scores is not None:
        scores.to_csv(tmp_path / "scores.csv", index=False)
    if items is not None:
        items.to_csv(tmp_path / "questionnaires.csv", index=False)
    return tmp_path


def _tox_spec(**changes) -> dict:
    """The shipped toxicity endpoint over the tests of :func:`_normal_labs` (the shipped one adds white cells)."""
    e = {**load_study()["endpoints"]["haematological_toxicity_g3"], "tests": ["haemoglobin", "neutrophils",
                                                                              "platelets"], **changes}
    return {"endpoints": {"tox": e}, "analyses": []}


def _tox(folder, **changes) -> pd.DataFrame:
    return derive_endpoints(_tox_spec(**changes), read_clinical(folder))["tox"].set_index("patient_id")


def test_shipped_spec_counts_only_grades_worse_than_baseline(tmp_path):
    # a: grade 3 anaemia at baseline (7.5 g/dL) that stays grade 3: not a toxicity of the treatment, but recorded
    labs = pd.DataFrame(_normal_labs("b") + _normal_labs("c") + [
        ("a", "2024-01-08", "haemoglobin", 7.5, "g/dL"), ("a", "2024-01-24", "haemoglobin", 7.6, "g/dL"),
        ("a", "2024-02-07", "haemoglobin", 7.7, "g/dL"), ("c", "2024-02-21", "platelets", 40.0, "10^9/L")],
        columns=LAB_COLS)
    t = _tox(_folder(tmp_path, labs=labs))
    assert load_study()["endpoints"]["haematological_toxicity_g3"]["treatment_emergent"] is True
    assert (t.loc["a", "event"], t.loc["a", "time_days"], t.loc["a", "baseline_grade_ge"]) == (0, 28.0, True)
    assert (t.loc["c", "event"], t.loc["c", "time_days"], t.loc["c", "baseline_grade_ge"]) == (1, 42.0, False)
    assert _tox(tmp_path, treatment_emergent=False).loc["a", "event"] == 1  # the old count: baseline anaemia


def test_baseline_grade_reaches_the_table_the_cox_model_gets(tmp_path):
    from petfeat.stats.analysis import run_analyses

    rng = np.random.default_rng(1)
    ids = [f"p{i}" for i in range(12)]
    patients = pd.DataFrame({"patient_id": ids, "therapy_start": ["2024-01-10"] * 12})
    rows = []
    for i, pid in enumerate(ids):
        rows += _normal_labs(pid)
        if i % 2:  # grade 3 platelets on day 31 + i
            rows.append((pid, f"2024-02-{10 + i:02d}", "platelets", 40.0, "10^9/L"))
    labs = pd.DataFrame(rows, columns=LAB_COLS)
    labs.loc[(labs.patient_id == "p0") & (labs.test == "haemoglobin"), "value"] = 7.5  # grade 3 throughout
    features = pd.DataFrame({"patient_id": ids, "region": "liver", "suv_mean": rng.lognormal(1.5, 0.3, 12)})
    spec = _tox_spec()
    spec["analyses"] = [{"name": "A", "model": "cox", "region": "liver", "features": ["suv_mean"], "endpoint": "tox"}]
    _, ctx = run_analyses(features, read_clinical(_folder(tmp_path, patients, labs)), spec)
    data = ctx["data"][("A", "liver.suv_mean")].set_index("patient_id")
    assert data.loc["p0", "baseline_grade_ge"] and not data.loc["p1", "baseline_grade_ge"]
    assert data["event"].sum() == 6


@pytest.mark.parametrize("row, pattern", [
    (("a", "2024-02-21", "haemoglobin", 13.5, "g/L"),
     r"labs\.csv, row 28 \(patient_id a, date 2024-02-21\): 13\.5 g/L is impossible for haemoglobin "
     r"\(plausible 2-25 g/dL\); is the unit g/dL\?"),
    (("a", "2024-02-21", "haemoglobin", 135, "g/dL"), r"135 g/dL is impossible for haemoglobin .*; is the unit g/L\?"),
    (("b", "2024-02-21", "platelets", 231000, "10^9/L"), r"row 28 \(patient_id b.*231000 10\^9/L is impossible for "
                                                         r"platelets \(plausible 0-2000 10\^9/L\); is the unit /uL\?"),
    (("b", "2024-02-21", "platelets", 2310, "10^9/L"), r"2310 10\^9/L is impossible for platelets .*is the unit /uL\?"),
    (("c", "2024-02-21", "haemoglobin", -5, "g/dL"), r"row 28 \(patient_id c.*haemoglobin value -5 g/dL is negative"),
    (("c", "2024-02-21", "neutrophils", -0.1, "10^9/L"), r"neutrophils value -0.1 10\^9/L is negative"),
])
def test_lab_values_impossible_in_their_unit_are_refused_with_the_likely_unit(tmp_path, row, pattern):
    labs = pd.DataFrame(_normal_labs("a") + _normal_labs("b") + _normal_labs("c") + [row], columns=LAB_COLS)
    with pytest.raises(ClinicalDataError, match=pattern):
        _tox(_folder(tmp_path, labs=labs))


def test_plausible_values_in_every_unit_are_graded(tmp_path):
    # the same haemoglobin in g/L and mmol/L and platelets per uL: no refusal, grade 3 on day 14 for a
    labs = pd.DataFrame(_normal_labs("b") + _normal_labs("c") + [
        ("a", "2024-01-08", "haemoglobin", 135, "g/L"), ("a", "2024-01-24", "haemoglobin", 4.5, "mmol/L"),
        ("a", "2024-02-07", "platelets", 230000, "/uL")], columns=LAB_COLS)
    t = _tox(_folder(tmp_path, labs=labs))
    assert (t.loc["a", "event"], t.loc["a", "time_days"]) == (1, 14.0) and t["event"].sum() == 1


def test_patient_listed_twice_is_refused(tmp_path):
    p = pd.DataFrame({"patient_id": ["a", "b", "c", "b"], "therapy_start": ["2024-01-10"] * 3 + ["2024-01-01"]})
    with pytest.raises(ClinicalDataError, match=r"patients\.csv: patient_id b listed more than once \(2 rows\)"):
        read_clinical(_folder(tmp_path, patients=p))


@pytest.mark.parametrize("start, death, pattern", [
    (["2024-01-10", "2024-01-10", None], [None] * 3,
     r"patients\.csv, row 3 \(patient_id c\): therapy_start is empty .*enter the date of the first dose"),
    (["2024-01-10", "next week", "2024-01-10"], [None] * 3,
     r"patients\.csv, column 'therapy_start': 'next week' does not parse .*\(row 2;"),
    (["2024-01-10"] * 3, [None, "2023-12-24", None],
     r"patients\.csv, row 2 \(patient_id b\): death_date 2023-12-24 is before therapy_start 2024-01-10"),
])
def test_impossible_first_dose_and_death_dates_are_refused(tmp_path, start, death, pattern):
    p = pd.DataFrame({"patient_id": ["a", "b", "c"], "therapy_start": start, "death_date": death})
    with pytest.raises(ClinicalDataError, match=pattern):
        read_clinical(_folder(tmp_path, patients=p))


def test_cycle_that_is_not_a_number_is_refused(tmp_path):
    s = pd.DataFrame([("a", "2024-01-08", "xerostomia", 20.0, 0), ("a", "2024-02-08", "xerostomia", 25.0, "C1D1")],
                     columns=["patient_id", "date", "instrument", "score", "cycle"])
    with pytest.raises(ClinicalDataError, match=r"scores\.csv, row 2 \(patient_id a, date 2024-02-08\), column "
                                                r"'cycle': 'C1D1' is not a number"):
        read_clinical(_folder(tmp_path, scores=s))


def test_cli_refuses_an_empty_first_dose_in_one_line_with_exit_2(tmp_path):
    p = pd.DataFrame({"patient_id": ["a"], "therapy_start": [None]})
    _folder(tmp_path, patients=p, labs=pd.DataFrame(_normal_labs("a"), columns=LAB_COLS))
    pd.DataFrame({"patient_id": ["a"], "region": ["liver"], "suv_mean": [5.0]}).to_csv(tmp_path / "f.csv", index=False)
    r = subprocess.run([sys.executable, "-m", "petfeat.cli", "analyze", "--features", str(tmp_path / "f.csv"),
                        "--clinical", str(tmp_path), "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "patients.csv, row 1 (patient_id a): therapy_start is empty" in r.stderr


def test_death_long_after_the_last_lab_is_censored_at_the_last_lab(tmp_path):
    # a: labs to day 28, dies 17 months later; b: dies 20 days after the last lab; c: alive
    p = pd.DataFrame({"patient_id": ["a", "b", "c"], "therapy_start": ["2024-01-10"] * 3,
                      "death_date": ["2025-06-01", "2024-02-27", None]})
    t = _tox(_folder(tmp_path, patients=p))
    assert (t.loc["a", "time_days"], t.loc["a", "event"], t.loc["a", "competing"], t.loc["a", "status"]) == (
        28.0, 0, 0, "censored")
    assert (t.loc["b", "time_days"], t.loc["b", "competing"], t.loc["b", "status"]) == (48.0, 1, "death")
    wide = _tox(tmp_path, death_window_days=600)  # the spec key: a death within 600 days of the last lab counts
    assert (wide.loc["a", "time_days"], wide.loc["a", "competing"]) == (508.0, 1)
    assert _tox(tmp_path, death_window_days=None).loc["a", "competing"] == 1  # null: any time


def test_death_window_key_is_validated():
    from petfeat.stats.spec import StudySpecError, validate_study

    spec = load_study()
    spec["endpoints"]["haematological_toxicity_g3"]["death_window_days"] = 42
    spec["endpoints"]["fact_p_worsening"]["death_window_days"] = None
    assert validate_study(spec) is spec
    spec["endpoints"]["fact_p_worsening"]["death_window_days"] = -1
    with pytest.raises(StudySpecError, match="death_window_days is -1"):
        validate_study(spec)


def test_lab_dated_after_death_is_refused(tmp_path):
    p = pd.DataFrame({"patient_id": ["a", "b", "c"], "therapy_start": ["2024-01-10"] * 3,
                      "death_date": [None, "2024-01-30", None]})
    with pytest.raises(ClinicalDataError, match=r"labs\.csv, row 16 \(patient_id b, date 2024-02-07\): dated after "
                                                r"the death_date 2024-01-30 of .*patients\.csv \(3 such row"):
        read_clinical(_folder(tmp_path, patients=p))


def test_tests_no_endpoint_uses_are_ignored_with_one_warning(tmp_path):
    labs = pd.DataFrame(_normal_labs("a") + _normal_labs("b") + _normal_labs("c") + [
        ("a", "2024-01-24", "creatinine", 80, "umol/L"), ("b", "2024-01-24", "creatinine", 90, "umol/L"),
        ("a", "2024-01-24", "lymphocytes", 1.2, "10^9/L")], columns=LAB_COLS)
    with pytest.warns(PetfeatWarning, match=r"labs\.csv: 12 row\(s\) of tests no endpoint uses are ignored: "
                                            r"neutrophils \(9\), creatinine \(2\), lymphocytes \(1\)\.$") as rec:
        t = _tox(_folder(tmp_path, labs=labs), tests=["haemoglobin", "platelets"])
    assert len(rec) == 1 and t["event"].sum() == 0 and t["n_assessments"].tolist() == [2, 2, 2]


@pytest.mark.parametrize("unit, pattern", [
    ("mg/dL", r"labs\.csv, row 28 \(patient_id a, date 2024-02-21\): unit 'mg/dL' of haemoglobin is not known; "
              r"use one of g/dL, g/L, mmol/L, g/100mL\.$"),
    (None, r"labs\.csv, row 28 \(patient_id a, date 2024-02-21\): the unit of haemoglobin is empty; .*g/dL, g/L"),
])
def test_unknown_or_empty_unit_of_a_used_test_names_the_row(tmp_path, unit, pattern):
    labs = pd.DataFrame(_normal_labs("a") + _normal_labs("b") + _normal_labs("c") +
                        [("a", "2024-02-21", "Hb", 13.0, unit)], columns=LAB_COLS)
    with pytest.raises(ClinicalDataError, match=pattern):
        _tox(_folder(tmp_path, labs=labs))


def test_conflicting_duplicate_labs_are_refused_and_identical_ones_dropped(tmp_path):
    base = _normal_labs("a") + _normal_labs("b") + _normal_labs("c")
    timed = [(p, f"{d} 09:30" if (p, d) == ("b", "2024-01-24") else d, t, v, u) for p, d, t, v, u in base]
    conflict = pd.DataFrame(timed + [("b", "2024-01-24 09:30", "PLT", 30.0, "10^9/L")], columns=LAB_COLS)
    with pytest.raises(ClinicalDataError, match=r"labs\.csv, rows 14, 28: one lab test given 2 times at the same time "
                                                r"with different values \(patient_id b, date 2024-01-24 09:30, test "
                                                r"platelets: 230.0 10\^9/L; 30.0 10\^9/L\)"):
        read_clinical(_folder(tmp_path, labs=conflict))
    same = pd.DataFrame(base + base[:4], columns=LAB_COLS)
    with pytest.warns(PetfeatWarning, match=r"rows repeating another row exactly are dropped: 4 in .*labs\.csv\."):
        clinical = read_clinical(_folder(tmp_path, labs=same))
    assert len(clinical["labs"]) == len(base)


def test_conflicting_duplicate_scores_are_refused(tmp_path):
    s = pd.DataFrame([("a", "2024-01-08", "bpi_severity", 3.0), ("a", "2024-01-08", "bpi_severity", 5.0)],
                     columns=["patient_id", "date", "instrument", "score"])
    with pytest.raises(ClinicalDataError, match=r"scores\.csv, rows 1, 2: one score of one instrument on one date "
                                                r"given 2 times with different values"):
        read_clinical(_folder(tmp_path, scores=s))


def _xq8(pid: str, date: str, value: int = 5, cycle: int = 0) -> list[tuple]:
    return [(pid, date, "xq8", str(i), value, cycle) for i in range(1, 9)]


ITEM_COLS = ["patient_id", "date", "instrument", "item", "response", "cycle"]


def test_questionnaire_item_answered_twice_is_refused(tmp_path):
    items = pd.DataFrame(_xq8("a", "2024-01-08") + [("a", "2024-01-08", "xq8", "3", 7, 0)], columns=ITEM_COLS)
    with pytest.raises(ClinicalDataError, match=r"questionnaires\.csv, rows 3, 9: one questionnaire item of one "
                                                r"assessment given 2 times with different values"):
        read_clinical(_folder(tmp_path, items=items))


def test_questionnaire_item_the_instrument_does_not_have_names_the_closest(tmp_path):
    rows = [("a", "2024-01-08", "fact_p", i, 2, 0) for i in ITEMS["fact_p"] if i != "GP1"]
    items = pd.DataFrame(rows + [("a", "2024-01-08", "fact_p", "GPl", 2, 0)], columns=ITEM_COLS)
    with pytest.raises(ClinicalDataError, match=r"questionnaires\.csv, row 39 \(patient_id a, date 2024-01-08, "
                                                r"fact_p\): item 'GPl' is not an item of fact_p; did you mean 'GP1'\?"):
        read_clinical(_folder(tmp_path, items=items))


def test_orphan_rows_are_counted_in_one_warning(tmp_path):
    labs = pd.DataFrame(_normal_labs("a") + _normal_labs("b") + _normal_labs("c") + _normal_labs("zz"),
                        columns=LAB_COLS)
    items = pd.DataFrame(_xq8("a", "2024-01-08") + _xq8("yy", "2024-01-08"), columns=ITEM_COLS)
    with pytest.warns(PetfeatWarning, match=r"9 row\(s\) of .*labs\.csv \(1 patient_id\(s\)\) and 8 row\(s\) of "
                                            r".*questionnaires\.csv \(1 patient_id\(s\)\) name a patient_id not in "
                                            r".*patients\.csv: not used") as rec:
        clinical = read_clinical(_folder(tmp_path, labs=labs, items=items))
    assert len(rec) == 1 and set(clinical["labs"]["patient_id"]) == {"a", "b", "c"}
    assert set(clinical["scores"]["patient_id"]) == {"a"}


def test_patients_without_baseline_or_follow_up_are_excluded_with_a_reason(tmp_path):
    # a: baseline and follow-up; b: baseline only (was censored at time 0); c: no baseline
    items = pd.DataFrame(_xq8("a", "2024-01-08") + _xq8("a", "2024-02-08", 9, 1) + _xq8("b", "2024-01-08") +
                         _xq8("c", "2024-02-08", 5, 1), columns=ITEM_COLS)
    spec = {"endpoints": {"xq": {"type": "worsening", "score": "xerostomia", "direction": "increase",
                                 "absolute": 10}}}
    t = derive_endpoints(spec, read_clinical(_folder(tmp_path, items=items)))["xq"].set_index("patient_id")
    assert (t.loc["a", "event"], t.loc["a", "time_days"], t.loc["a", "excluded"]) == (1, 29.0, "")
    assert np.isnan(t.loc["b", "time_days"]) and t.loc["b", "excluded"] == "no xerostomia score after the first dose"
    assert np.isnan(t.loc["c", "time_days"]) and t.loc["c", "excluded"] == "no baseline xerostomia score"
    # the same for the labs: a patient with baseline labs only is excluded from the toxicity endpoint
    labs = pd.DataFrame(_normal_labs("a") + _normal_labs("b") + _normal_labs("c", ("2024-01-08",)), columns=LAB_COLS)
    tox = _tox(_folder(tmp_path, labs=labs))
    assert np.isnan(tox.loc["c", "time_days"]) and tox.loc["c", "excluded"] == "no lab after the first dose"
    assert (tox.loc["a", "time_days"], tox.loc["a", "excluded"]) == (28.0, "")


def test_xerostomia_inventory_items_score_1_to_5():
    # Thomson's Xerostomia Inventory: 11 items 1 (never) to 5 (very often), summed: 11-55
    r = dict(zip(ITEMS["xi11"], [1, 2, 3, 4, 5, 5, 4, 3, 2, 1, 5], strict=True))
    assert xerostomia_score(r, "xi11") == 35.0
    assert xerostomia_score(dict.fromkeys(ITEMS["xi11"], 5), "xi11") == 55.0
    with pytest.raises(Exception, match="responses must be 1-5"):
        xerostomia_score({**r, "3": 6}, "xi11")


def _shipped_tox(folder) -> pd.DataFrame:
    """The shipped toxicity endpoint as it is (haemoglobin, neutrophils, platelets, white cells)."""
    spec = {"endpoints": {"tox": load_study()["endpoints"]["haematological_toxicity_g3"]}, "analyses": []}
    return derive_endpoints(spec, read_clinical(folder))["tox"].set_index("patient_id")


def _labs_with_wbc(platelets: str = "platelets") -> pd.DataFrame:
    rows = [(p, d, platelets if t == "platelets" else t, v, u) for p, d, t, v, u in
            _normal_labs("a") + _normal_labs("b") + _normal_labs("c")]
    rows += [(p, d, "white_cells", 6.0, "10^9/L") for p in "abc" for d in ("2024-01-08", "2024-01-24", "2024-02-07")]
    rows.append(("c", "2024-02-21", platelets, 40.0, "10^9/L"))  # grade 3 thrombocytopenia on day 42
    return pd.DataFrame(rows, columns=LAB_COLS)


@pytest.mark.parametrize("name", ["platelet_count", "Thrombocytes", "Platelet Count", "PLT"])
def test_platelets_under_common_names_are_graded(tmp_path, name):
    t = _shipped_tox(_folder(tmp_path, labs=_labs_with_wbc(name)))
    assert (t.loc["c", "event"], t.loc["c", "time_days"]) == (1, 42.0) and t["event"].sum() == 1


def test_endpoint_test_without_rows_is_refused_naming_the_test_and_the_fix(tmp_path):
    # the shipped endpoint grades white cells: a table without them was graded silently without leukopenia
    with pytest.raises(ClinicalDataError, match=r"labs\.csv: endpoint 'tox' grades white_cells, but the file has no "
                                                r"white_cells rows; add the white_cells rows \(test names read as "
                                                r"white_cells: white_cells, wbc, leukocytes.*\), or remove white_cells "
                                                r"from the endpoint's tests in the study spec\.$"):
        _shipped_tox(_folder(tmp_path))
    # a misspelt platelet test: refused, naming the rows and the test they look like
    with pytest.raises(ClinicalDataError, match=r"labs\.csv: lab test name\(s\) not read as a graded test, but close "
                                                r"to one an endpoint grades: 'platlets' \(10 rows; is it platelets\?\)"
                                                r"\. Rename the rows"):
        _shipped_tox(_folder(tmp_path, labs=_labs_with_wbc("Platlets")))


@pytest.mark.parametrize("name", ["Thrombozyten", "PLT-F", "Hämoglobin"])
def test_german_and_analyser_names_are_read_as_their_test(name):
    from petfeat.stats.ctcae import canonical_test

    assert canonical_test(name) == ("haemoglobin" if name.startswith("H") else "platelets")


def test_half_the_platelets_under_a_look_alike_name_are_refused_not_ignored(tmp_path):
    """Platelet rows under a typo (or a local name) were ignored with a warning: their events were lost."""
    labs = _labs_with_wbc("platelets")
    low = labs["test"].eq("platelets") & labs["value"].lt(100)
    labs.loc[low, "test"] = "Platelts"
    with pytest.raises(ClinicalDataError, match=r"'platelts' \(1 rows; is it platelets\?\)"):
        _shipped_tox(_folder(tmp_path, labs=labs))


def test_every_lab_name_unread_gives_the_missing_test_error_not_a_missing_column(tmp_path):
    labs = _labs_with_wbc("platelets")
    labs["test"] = "CRP"  # an export of other tests only: there was 'labs.csv needs a test column'
    with pytest.warns(PetfeatWarning, match=r"ignored: crp"), \
            pytest.raises(ClinicalDataError, match=r"endpoint 'tox' grades \w+, but the file has no \w+ rows"):
        _shipped_tox(_folder(tmp_path, labs=labs))


@pytest.mark.parametrize("name", ["HbA1c", "Hemoglobin A1c", "Free hemoglobin", "CD4 lymphocytes", "Band neutrophils",
                                  "Neutrophil/lymphocyte ratio"])
def test_other_quantities_that_share_a_word_are_not_taken_for_a_graded_test(name):
    from petfeat.stats.analysis import _closest_test

    assert _closest_test(name) is None


def _patients_dmy(start, death=None):
    return pd.DataFrame({"patient_id": ["a", "b", "c"], "therapy_start": start,
                         "death_date": death if death is not None else [None] * 3})


def test_day_first_dates_are_read_by_one_rule_for_the_whole_file(tmp_path):
    # 16.11.2023 fixes day-first for the file: 08.09.2024 (a death date) is 8 September, not 9 August
    p = _patients_dmy(["16.11.2023", "10.01.2024", "10.01.2024"], [None, "08.09.2024", None])
    clinical = read_clinical(_folder(tmp_path, patients=p))
    assert clinical["patients"]["therapy_start"].tolist() == ["2023-11-16", "2024-01-10", "2024-01-10"]
    assert clinical["patients"]["death_date"].iloc[1] == "2024-09-08"


@pytest.mark.parametrize("start, death, pattern", [
    (["08.09.2024"] * 3, None, r"patients\.csv, column 'therapy_start': '08\.09\.2024' does not parse as one date: it "
                               r"may be day or month first.*; write every date as YYYY-MM-DD\.$"),
    (["16.11.2023"] * 3, [None, "11/16/2024", None],
     r"patients\.csv: dates are written day first \('therapy_start': '16\.11\.2023'\) and month first \('death_date': "
     r"'11/16/2024'\)"),
])
def test_ambiguous_or_mixed_date_orders_are_refused(tmp_path, start, death, pattern):
    with pytest.raises(ClinicalDataError, match=pattern):
        read_clinical(_folder(tmp_path, patients=_patients_dmy(start, death)))


def test_baseline_haemoglobin_in_g_per_l_is_refused_unless_its_unit_is_given(tmp_path):
    p = pd.DataFrame({"patient_id": ["a", "b", "c"], "therapy_start": ["2024-01-10"] * 3,
                      "baseline_haemoglobin": [13.1, 123.5, 11.0]})
    with pytest.raises(ClinicalDataError, match=r"patients\.csv, row 2 \(patient_id b\), column "
                                                r"'baseline_haemoglobin': 123\.5 g/dL is impossible for haemoglobin "
                                                r"\(plausible 2-25 g/dL\); "
                                                r"is the unit g/L\?; give baseline_haemoglobin in g/dL, or its unit in "
                                                r"a column baseline_haemoglobin_unit\.$"):
        read_clinical(_folder(tmp_path, patients=p))
    p["baseline_haemoglobin_unit"] = ["g/dL", "g/L", "mmol/L"]
    got = read_clinical(_folder(tmp_path, patients=p))["patients"]["baseline_haemoglobin"].to_numpy()
    assert np.allclose(got, [13.1, 12.35, 11.0 * 1.611])


def test_lab_duplicates_that_are_one_value_or_unused_pass(tmp_path):
    base = _normal_labs("a") + _normal_labs("b") + _normal_labs("c")
    extra = [("a", "2024-01-24", "CRP", 12.0, "mg/L"), ("a", "2024-01-24", "CRP", 15.0, "mg/L"),  # unused: no check
             ("b", "2024-01-24", "Hb", 13.5, "g/dl"), ("b", "2024-01-24", "haemoglobin", 135, "g/L")]  # = 13.5 g/dL
    with pytest.warns(PetfeatWarning, match=r"rows repeating another row exactly are dropped: 2 in .*labs\.csv\.$"):
        labs = read_clinical(_folder(tmp_path, labs=pd.DataFrame(base + extra, columns=LAB_COLS)))["labs"]
    assert len(labs) == len(base) + 2 and (labs["test"] == "CRP").sum() == 2


def test_neutrophils_in_percent_are_ignored_with_a_warning(tmp_path):
    base = _normal_labs("a") + _normal_labs("b") + _normal_labs("c")
    pct = [(p, d, "neutrophils", 55.0, "%") for p, d, t, _, _ in base if t == "neutrophils"]
    with pytest.warns(PetfeatWarning, match=r"labs\.csv: 9 row\(s\) of neutrophils in % are ignored: a percentage of "
                                            r"the white cells cannot be graded"):
        t = _tox(_folder(tmp_path, labs=pd.DataFrame(base + pct, columns=LAB_COLS)))
    assert t["event"].sum() == 0 and t["n_assessments"].tolist() == [2, 2, 2]


def test_same_day_repeats_without_a_time_grade_the_worst_value(tmp_path):
    base = _normal_labs("a") + _normal_labs("b") + _normal_labs("c")
    extra = [("b", "2024-01-24", "PLT", 30.0, "10^9/L"), ("c", "2024-02-07", "haemoglobin", 12.9, "g/dL")]
    with pytest.warns(PetfeatWarning, match=r"labs\.csv: 2 day\(s\) with one lab test given more than once without a "
                                            r"time of day and different values: the worst value of each day \(highest "
                                            r"grade, then lowest value\)"):
        t = _tox(_folder(tmp_path, labs=pd.DataFrame(base + extra, columns=LAB_COLS)))
    assert (t.loc["b", "event"], t.loc["b", "time_days"]) == (1, 14.0) and t["event"].sum() == 1


def test_unreadable_csv_exports_are_one_line_errors(tmp_path):
    _folder(tmp_path)
    (tmp_path / "labs.csv").write_bytes(b"")
    with pytest.raises(ClinicalDataError, match=r"labs\.csv: the file is empty \(0 bytes\); export the table"):
        read_clinical(tmp_path)
    (tmp_path / "labs.csv").write_text("patient_id,date,test,value,unit\n")
    with pytest.raises(ClinicalDataError, match=r"labs\.csv: the table has no rows \(columns: patient_id, date, test, "
                                                r"value, unit\); add the rows, or remove the file"):
        read_clinical(tmp_path)
    (tmp_path / "labs.csv").write_bytes("patient_id,date,test,value,unit\na,2024-01-08,PLT,230,10^3/µL\n"
                                        .encode("cp1252"))
    with pytest.raises(ClinicalDataError, match=r"labs\.csv: byte 58 \(line 2, b'\\xb5'\) is not UTF-8 .*; save the "
                                                r"file as UTF-8"):
        read_clinical(tmp_path)


def test_semicolon_separated_labs_are_read(tmp_path):
    _folder(tmp_path)
    pd.read_csv(tmp_path / "labs.csv").to_csv(tmp_path / "labs.csv", sep=";", index=False)
    assert read_clinical(tmp_path)["labs"].shape == (27, 5)


def test_questionnaire_response_out_of_range_names_the_row(tmp_path):
    items = pd.DataFrame(_xq8("a", "2024-01-08") + _xq8("b", "2024-01-08"), columns=ITEM_COLS)
    items.loc[11, "response"] = 99
    with pytest.raises(ClinicalDataError, match=r"questionnaires\.csv, row 12 \(patient_id b, date 2024-01-08, xq8\): "
                                                r"xq8 item 4 = 99"):
        read_clinical(_folder(tmp_path, items=items))


@pytest.mark.parametrize("unit", ["10*9/L", "10*3/uL", "K/uL", "Gpt/L", "10^3/mm3", "10^3/\u03bcL", "10^3/\u00b5L"])
def test_count_units_of_real_exports_are_read(tmp_path, unit):
    labs = pd.DataFrame(_normal_labs("a") + _normal_labs("b") + _normal_labs("c") +
                        [("c", "2024-02-21", "platelets", 40.0, unit)], columns=LAB_COLS)
    t = _tox(_folder(tmp_path, labs=labs))
    assert (t.loc["c", "event"], t.loc["c", "time_days"]) == (1, 42.0)


def test_unit_list_writes_giga_per_litre_as_G_per_L(tmp_path):
    labs = pd.DataFrame(_normal_labs("a") + _normal_labs("b") + _normal_labs("c") +
                        [("c", "2024-02-21", "platelets", 40.0, "Mrd/L")], columns=LAB_COLS)
    with pytest.raises(ClinicalDataError, match=r"unit 'Mrd/L' of platelets is not known; use one of 10\^9/L, .*G/L, "
                                                r"Gpt/L") as exc:
        _tox(_folder(tmp_path, labs=labs))
    assert "g/l" not in str(exc.value)


def test_haemoglobin_in_g_per_100ml_is_read(tmp_path):
    labs = pd.DataFrame(_normal_labs("a") + _normal_labs("b") + _normal_labs("c") +
                        [("a", "2024-02-21", "haemoglobin", 7.5, "g/100mL")], columns=LAB_COLS)
    assert _tox(_folder(tmp_path, labs=labs)).loc["a", "event"] == 1


def test_platelets_below_1_are_graded_and_labs_long_before_the_dose_are_not_baseline(tmp_path):
    labs = pd.DataFrame(_normal_labs("a") + _normal_labs("b") + _normal_labs("c") + [
        ("a", "2024-02-21", "platelets", 0.5, "10^9/L"),  # severe thrombocytopenia: grade 4, not impossible
        ("b", "1923-01-08", "platelets", 30.0, "10^9/L"), ("b", "1923-01-24", "platelets", 30.0, "10^9/L")],
        columns=LAB_COLS)
    # b's 1923 labs are ignored: b's baseline is 2024-01-08 (grade 0) whatever the rows' order
    labs.loc[len(labs)] = ("b", "2024-02-21", "platelets", 30.0, "10^9/L")
    with pytest.warns(PetfeatWarning, match=r"labs\.csv: 2 lab row\(s\) of 1 patient\(s\) dated more than 90 days "
                                            r"before the first dose are not baseline and are ignored"):
        t = _tox(_folder(tmp_path, labs=labs))
    assert (t.loc["a", "event"], t.loc["a", "time_days"]) == (1, 42.0)
    assert (t.loc["b", "event"], t.loc["b", "baseline_grade_ge"]) == (1, False)


@pytest.mark.parametrize("value, pattern", [
    ("<0.5", r"labs\.csv, patient_id b, date 2024-02-21, column 'value', row 28: '<0\.5' is not a number; enter the "
             r"measured value"),
    ("13,5", r"labs\.csv, patient_id b, date 2024-02-21, column 'value', row 28: '13,5' is not a number; write the "
             r"decimal with a point"),
])
def test_lab_value_that_is_not_a_number_names_the_row_patient_and_date(tmp_path, value, pattern):
    labs = pd.DataFrame(_normal_labs("a") + _normal_labs("b") + _normal_labs("c") +
                        [("b", "2024-02-21", "haemoglobin", value, "g/dL")], columns=LAB_COLS)
    with pytest.raises(ClinicalDataError, match=pattern):
        _tox(_folder(tmp_path, labs=labs))


def test_year_first_dates_with_slashes_are_read_and_impossible_days_refused(tmp_path):
    p = _patients_dmy(["2024/01/10", "2024.01.10", "2024-01-10 08:30"])
    assert read_clinical(_folder(tmp_path, patients=p))["patients"]["therapy_start"].tolist() == [
        "2024-01-10", "2024-01-10", "2024-01-10 08:30"]
    with pytest.raises(ClinicalDataError, match=r"column 'therapy_start': '31\.02\.2024' does not parse as a date "
                                                r"\(row 1; no such day\)"):
        read_clinical(_folder(tmp_path, patients=_patients_dmy(["31.02.2024", "13.01.2024", "13.01.2024"])))


def test_timed_conflicts_of_a_test_no_endpoint_grades_do_not_stop_the_run(tmp_path):
    from petfeat.stats.analysis import endpoint_tests

    labs = pd.DataFrame(_normal_labs("a") + _normal_labs("b") + _normal_labs("c") + [
        ("a", "2024-01-24 08:00", "lymphocytes", 1.2, "10^9/L"), ("a", "2024-01-24 08:00", "ALC", 0.4, "10^9/L")],
        columns=LAB_COLS)
    _folder(tmp_path, labs=labs)
    with pytest.raises(ClinicalDataError, match=r"one lab test given 2 times at the same time with different values "
                                                r"\(patient_id a, date 2024-01-24 08:00, test lymphocytes"):
        read_clinical(tmp_path)  # every graded test is checked by default
    spec = _tox_spec()
    assert endpoint_tests(spec) == {"haemoglobin", "neutrophils", "platelets"}
    clinical = read_clinical(tmp_path, endpoint_tests(spec))
    assert (clinical["labs"]["test"] == "ALC").sum() == 1
    with pytest.warns(PetfeatWarning, match=r"ignored: lymphocytes \(2\)\.$"):
        assert derive_endpoints(spec, clinical)["tox"]["event"].sum() == 0


def test_day_month_dates_with_two_separators_are_refused():
    """'16.03.2024' beside '04/05/2024' made the file day-first and read 04/05 as 4 May, silently."""
    from petfeat.stats.endpoints import date_rule

    with pytest.raises(ClinicalDataError, match=r"different separators \('date': '16\.03\.2024' and 'date': "
                                                r"'04/05/2024'\).*YYYY-MM-DD"):
        date_rule({"date": pd.Series(["16.03.2024", "04/05/2024"])}, "labs")
    assert date_rule({"date": pd.Series(["16.03.2024", "04.05.2024", "2024-01-02"])}, "labs") is True


def test_the_worst_of_a_day_in_mixed_haemoglobin_units_is_the_highest_grade(tmp_path):
    """4.95 mmol/L (7.97 g/dL, grade 2 by CTCAE's mmol/L bounds) beside 7.98 g/dL (grade 3) on one untimed day:
    the lowest converted value was kept, and the grade-3 value with its event was dropped."""
    base = _normal_labs("a") + _normal_labs("b") + _normal_labs("c")
    extra = [("b", "2024-01-24", "haemoglobin", 4.95, "mmol/L"), ("b", "2024-01-24", "haemoglobin", 7.98, "g/dL")]
    with pytest.warns(PetfeatWarning, match=r"1 day\(s\) with one lab test given more than once"):
        t = _tox(_folder(tmp_path, labs=pd.DataFrame(base + extra, columns=LAB_COLS)))
    assert (t.loc["b", "event"], t.loc["b", "time_days"]) == (1, 14.0) and t["event"].sum() == 1


def test_lab_times_keep_their_seconds(tmp_path):
    """08:00:10 and 08:00:50 with different values were refused as 'at the same time' (the seconds were dropped)."""
    base = _normal_labs("a") + _normal_labs("b") + _normal_labs("c")
    extra = [("b", "2024-01-24 08:00:10", "PLT", 30.0, "10^9/L"), ("b", "2024-01-24 08:00:50", "PLT", 120.0, "10^9/L")]
    folder = _folder(tmp_path, labs=pd.DataFrame(base + extra, columns=LAB_COLS))
    clinical = read_clinical(folder)
    times = clinical["labs"].loc[clinical["labs"]["patient_id"].eq("b"), "date"]
    assert {"2024-01-24 08:00:10", "2024-01-24 08:00:50"} <= set(times)
    assert _tox(folder).loc["b", "event"] == 1  # the grade-4 count at 08:00:10 is an event
