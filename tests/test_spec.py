"""Strict study spec validation: unknown keys with "did you mean", types, ranges, one-line file errors."""

from __future__ import annotations

import subprocess
import sys
from importlib.resources import files

import pytest
import yaml

from petfeat.stats.analysis import load_study
from petfeat.stats.spec import StudySpecError, validate_study

SHIPPED = yaml.safe_load((files("petfeat.stats") / "study_psma_lu.yaml").read_text())
COX = {"name": "A", "model": "cox", "region": "liver", "features": ["suv_mean"], "endpoint": "tox"}
MIXED = {"name": "B", "model": "mixed", "region": "liver", "features": ["suv_mean"], "score": "xerostomia"}
TOX = {"type": "first_grade", "tests": ["platelets"]}


def _spec(**changes):
    spec = {"endpoints": {"tox": dict(TOX)}, "analyses": [dict(COX), dict(MIXED)]}
    spec.update(changes)
    return spec


def test_the_shipped_spec_uses_every_key_the_statistics_code_reads():
    spec = load_study()
    assert spec == SHIPPED  # returned as written
    mixed = [a for a in spec["analyses"] if a["model"] == "mixed"]
    assert {"random_slope", "interaction", "df"} <= set().union(*mixed)
    assert {"treatment_emergent", "death"} <= set(spec["endpoints"]["haematological_toxicity_g3"])
    assert {"multiplicity", "ridge"} <= set(spec)


def test_every_documented_key_is_accepted():
    spec = _spec(name="n", ph_transform="rank", ridge=0.5, fdr=False, multiplicity={"methods": "holm",
                                                                                    "family": "analysis"})
    spec["endpoints"]["tox"].update(min_grade=2, treatment_emergent=True, death="event")
    spec["endpoints"]["pain"] = {"type": "worsening", "score": "bpi_severity", "direction": "increase",
                                 "absolute": 2, "relative": 0.3, "strict": False, "confirmed": True,
                                 "zero_baseline": "any", "death": "competing"}
    spec["analyses"][0].update(covariates=["age"], transform="log2", ridge=0.2)
    spec["analyses"][1].update(time="cycle", covariates=["age"], transform="sd", random_slope=True, interaction=True,
                               df="satterthwaite")
    assert validate_study(spec, "s.yaml") is spec


@pytest.mark.parametrize("where, key, pattern", [
    ("analysis", "covariate", r"s\.yaml: analyses\[0\] \('A'\): unknown key 'covariate'; did you mean 'covariates'\?"),
    ("analysis", "transfrom", r"unknown key 'transfrom'; did you mean 'transform'\?"),
    ("analysis", "random_slope", r"unknown key 'random_slope' \('random_slope' is a key of a mixed analysis\)"),
    ("top", "analysis_family", r"unknown key 'analysis_family'"),
    ("top", "multiplicty", r"unknown key 'multiplicty'; did you mean 'multiplicity'\?"),
    ("endpoint", "min_grades", r"endpoint 'tox': unknown key 'min_grades'; did you mean 'min_grade'\?"),
    ("endpoint", "direction", r"unknown key 'direction' \('direction' is a key of a worsening endpoint\)"),
])
def test_unknown_keys_are_errors_with_did_you_mean(where, key, pattern):
    spec = _spec()
    target = {"analysis": spec["analyses"][0], "top": spec, "endpoint": spec["endpoints"]["tox"]}[where]
    target[key] = True
    with pytest.raises(StudySpecError, match=pattern) as info:
        validate_study(spec, "s.yaml")
    assert "\n" not in str(info.value)


def test_a_number_given_as_text_is_refused():
    with pytest.raises(StudySpecError, match=r"ridge is '0\.1': input should be a number\.$"):
        validate_study(_spec(ridge="0.1"))


def test_a_nested_unknown_key_names_its_parent():
    with pytest.raises(StudySpecError, match=r"multiplicity: unknown key 'famly'; did you mean 'family'\?"):
        validate_study(_spec(multiplicity={"methods": ["bh"], "famly": "study"}))


@pytest.mark.parametrize("change, pattern", [
    ({"random_slope": "yes please"}, r"random_slope is 'yes please': input should be a valid boolean"),
    ({"features": "suv_mean"}, r"features is 'suv_mean': input should be a valid list"),
    ({"features": ["suv_maxx"]}, r"feature is 'suv_maxx'; choose one of .* \(did you mean 'suv_max'\?\)"),
    ({"features": []}, r"'features' is empty"),
    ({"region": None}, r"region is None"),
    ({"df": "kr"}, r"df is 'kr'"),
    ({"time": 3}, r"time is 3: input should be a valid string"),
])
def test_values_of_the_wrong_type_or_range_are_refused(change, pattern):
    spec = _spec()
    spec["analyses"][1].update(change)
    with pytest.raises(StudySpecError, match=pattern):
        validate_study(spec)


@pytest.mark.parametrize("endpoint, pattern", [
    ({"min_grade": 5}, "min_grade is 5; CTCAE lab grades are 1 to 4"),
    ({"min_grade": "3"}, r"min_grade is '3': input should be a valid integer"),
    ({"death": "ignore"}, "death is 'ignore'; choose one of competing, event, censor"),
])
def test_endpoint_values_are_checked(endpoint, pattern):
    spec = _spec()
    spec["endpoints"]["tox"].update(endpoint)
    with pytest.raises(StudySpecError, match=pattern):
        validate_study(spec)


def test_worsening_thresholds_must_be_positive_and_zero_baseline_known():
    w = {"type": "worsening", "score": "fact_p", "direction": "decrease", "absolute": -10}
    with pytest.raises(StudySpecError, match="absolute is -10; give a threshold > 0"):
        validate_study(_spec(endpoints={"tox": TOX, "w": w}))
    w.update(absolute=10, zero_baseline="anything")
    with pytest.raises(StudySpecError, match=r"zero_baseline is 'anything'; choose one of absolute, any"):
        validate_study(_spec(endpoints={"tox": TOX, "w": w}))


def test_missing_or_malformed_file_is_one_line(tmp_path):
    with pytest.raises(StudySpecError, match="no such study spec file") as info:
        load_study(tmp_path / "nope.yaml")
    assert "\n" not in str(info.value)
    (tmp_path / "bad.yaml").write_text("endpoints: {}\nanalyses:\n  - model: cox\n   region: x\n")
    with pytest.raises(StudySpecError, match=r"bad\.yaml: line 4, column 4: not valid YAML") as info:
        load_study(tmp_path / "bad.yaml")
    assert "\n" not in str(info.value)


def test_a_misspelt_analyses_key_says_both(tmp_path):
    (tmp_path / "s.yaml").write_text("endpoints: {}\nanalysis: []\n")
    with pytest.raises(StudySpecError, match=r"needs 'endpoints' and 'analyses'; unknown key 'analysis'; did you "
                                             r"mean 'analyses'\?"):
        load_study(tmp_path / "s.yaml")


def test_analyze_exits_2_with_one_line_for_an_unknown_key(tmp_path):
    spec = _spec()
    spec["analyses"][0]["covariate"] = ["age"]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "features.csv").write_text("patient_id,region,suv_mean\nP1,liver,5.0\n")
    r = subprocess.run([sys.executable, "-m", "petfeat.cli", "analyze", "--features", str(tmp_path / "features.csv"),
                        "--clinical", str(tmp_path), "--study", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "did you mean 'covariates'?" in r.stderr
