"""The HTML report: sections in a paper's order, Table 2, numbers at risk, one MIP per study, files, formats."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from petfeat.report import SECTIONS, coronal_mip, qc_png, write_report
from petfeat.report.build import _warnings, spec_hash
from petfeat.report.tables import fmt_ci, fmt_p, planted_table, planted_verdict, power_two_sided, table1
from petfeat.stats.analysis import read_clinical, run_analyses
from petfeat.synth.clinical import generate_clinical, planted_vs_recovered

N = 16
SPEC = {
    "name": "Report test study",
    "endpoints": {"fact_p_worsening": {"type": "worsening", "score": "fact_p", "direction": "decrease",
                                       "absolute": 10, "strict": True}},
    "analyses": [
        {"name": "Tumour vs FACT-P", "model": "cox", "region": "whole_body_tumor",
         "features": ["suv_mean", "total_uptake"], "endpoint": "fact_p_worsening", "transform": "log2",
         "covariates": ["baseline_haemoglobin"]},
        {"name": "Salivary vs xerostomia", "model": "mixed", "region": "salivary_glands", "features": ["suv_mean"],
         "score": "xerostomia", "time": "cycle", "transform": "sd", "interaction": True},
    ],
    "multiplicity": {"methods": ["bh", "holm"], "family": "study"},
}


def _features(n=N, seed=5):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        for region, m in (("whole_body_tumor", 20), ("healthy_bone", 1.5), ("salivary_glands", 11), ("liver", 5)):
            rows.append({"patient_id": f"P{i:03d}", "study_id": f"S{i:03d}", "study_date": "2023-01-01",
                         "region": region, "suv_mean": rng.lognormal(np.log(m), 0.3),
                         "suv_max": rng.lognormal(np.log(2 * m), 0.3), "volume_ml": rng.lognormal(3, 1),
                         "total_uptake": rng.lognormal(5, 1.2), "lesion_count": int(rng.integers(1, 9)),
                         "suv_type": "bw", "config_hash": "abc123def456", "status": "ok"})
    return pd.DataFrame(rows)


class _Tables(HTMLParser):
    """Cells of every <table> as lists of rows; <th> and <td> alike."""

    def __init__(self):
        super().__init__()
        self.tables, self._row, self._cell = [], None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("rep")
    f = _features()
    generate_clinical(f, d / "clinical", seed=5)
    res, ctx = run_analyses(f, read_clinical(d / "clinical"), SPEC)
    geo = SimpleNamespace(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), spacing=(6.0, 6.0, 6.0))
    rng = np.random.default_rng(0)
    qc = []
    for sid in sorted(f.study_id.unique()):
        vol = rng.gamma(2.0, 0.5, (24, 8, 12)).astype(np.float32)
        liver = np.zeros(vol.shape, bool)
        liver[8:12, 2:6, 2:5] = True
        les = np.zeros(vol.shape, bool)
        les[15:17, 3:5, 7:9] = True
        qc.append({"study_id": sid, "png": qc_png(vol, geo, {"liver": liver}, les, sid, dpi=30)})
    pv = planted_vs_recovered(res)
    paths = write_report(res, ctx, SPEC, d / "out", features=f, qc=qc,
                         demo={"planted": pv, "n_patients": N, "backend": "cpu", "text": "Synthetic cohort."})
    return paths, res, ctx, f


def test_html_has_every_section_in_order_table2_columns_and_one_mip_per_study(report):
    paths, res, ctx, f = report
    page = paths["html"].read_text()
    where = [page.index(f'<section id="{s.lower().replace(" ", "-")}">') for s in SECTIONS]
    assert where == sorted(where)  # cohort, methods, results, figures, warnings, QC, provenance
    for text in (f"Table 1. Baseline characteristics (n = {N})", "Whole-body PSMA-TV, mL, median [IQR]",
                 "Planted vs recovered effects", "Coronal MIPs", "Backend: <b>cpu</b>", "Log-rank p = "):
        assert text in page
    assert 'class="dataframe"' not in page and 'border="1"' not in page  # no pandas default tables
    tables = _Tables()
    tables.feed(page)
    cox = next(t for t in tables.tables if t[0][:3] == ["Feature", "Effect per", "HR (95% CI)"])
    assert cox[0] == ["Feature", "Effect per", "HR (95% CI)", "p", "q", "Holm p", "n/events", "EPV", "PH test p",
                      "Notes"]
    tested = res[(res.model == "cox") & (res.status == "ok")]
    body = [r for r in cox[1:] if not r[0].startswith("adjusted for")]
    assert [r[6] for r in body] == [f"{int(n)}/{int(e)}" for n, e in zip(tested.n, tested.events)]
    assert [r[7] for r in body] == [f"{v:.1f}" for v in tested.events_per_variable]
    assert [r[2] for r in body] == [fmt_ci(h, lo, hi) for h, lo, hi in zip(tested.hr, tested.ci_low, tested.ci_high)]
    assert sum(r[0] == "adjusted for baseline haemoglobin" for r in cox[1:]) == 2
    # the mixed analysis has a feature x cycle interaction: the tested term heads the table, the main effect beside
    mixed = next(t for t in tables.tables if t[0][:3] == ["Feature", "Effect per", "Feature x cycle (95% CI)"])
    m = res[res.model == "mixed"].iloc[0]
    assert mixed[0][6] == "obs/patients" and mixed[1][6] == f"{int(m.n_obs)}/{int(m.n_groups)}"
    assert mixed[0][7] == f"Feature at cycle {m.time_centre:.2f} (95% CI), p"
    assert mixed[1][2] == fmt_ci(m.interaction_estimate, m.interaction_ci_low, m.interaction_ci_high)
    assert mixed[1][3] == fmt_p(m.interaction_p) and mixed[1][7].startswith(fmt_ci(m.main_estimate, m.main_ci_low,
                                                                                     m.main_ci_high))
    # one MIP per study, each with its key numbers
    assert page.count('class="mip"') == f.study_id.nunique() == N
    for sid in f.study_id.unique():
        assert f'alt="coronal MIP {sid}"' in page
    assert "liver SUVmean" in page and "tumour SUVmax" in page
    # footer: version, date, config hash, spec hash
    footer = page[page.index("<footer>"):]
    assert re.search(r"petfeat \d+\.\d+", footer) and re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", footer)
    assert "abc123def456" in footer and spec_hash(SPEC) in footer


def test_numbers_at_risk_match_the_data(report):
    paths, res, ctx, f = report
    page = paths["html"].read_text()
    tables = _Tables()
    tables.feed(page)
    risk = [t for t in tables.tables if t and t[0] and t[0][0] == "days"]
    assert len(risk) == 1  # one Cox analysis: one Kaplan-Meier figure
    days = [int(x) for x in risk[0][0][1:]]
    assert days[0] == 0 and len(days) >= 3
    cox = res[(res.model == "cox") & (res.status == "ok")]
    col = cox.sort_values("p").feature.iloc[0]  # the figure is drawn for the feature with the smallest p
    d = ctx["data"][(cox.analysis.iloc[0], col)]
    med = d[col].median()
    for label, counts in ((r[0], [int(x) for x in r[1:]]) for r in risk[0][1:]):
        part = d[d[col] > med] if label.startswith("high") else d[d[col] <= med]
        assert counts == [int((part.time_days >= t).sum()) for t in days]
        assert counts[0] == len(part)
    assert "groups split at the cohort median of" in page


def test_results_md_is_a_markdown_table_and_figures_are_files(report):
    paths, res, ctx, f = report
    md = paths["md"].read_text().splitlines()
    head = next(i for i, line in enumerate(md) if line.startswith("| Feature"))
    assert "HR (95% CI)" in md[head] and "n/events" in md[head] and "EPV" in md[head]
    assert re.fullmatch(r"\|[-|: ]+\|", md[head + 1])
    assert md[head + 2].startswith("| ") and md[head + 2].count("|") == md[head].count("|")
    names = {p.name for p in paths["figures"]}
    for stem in ("forest_01", "km_01", "mixed_02"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names
    for p in paths["figures"]:
        head = p.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") if p.suffix == ".png" else b"<?xml" in head or b"<svg" in head


@pytest.mark.parametrize("direction, hot", [
    ((1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, -1)),  # feet first: z grows superior, x grows to the patient's left
    ((1, 0, 0, 0, 1, 0, 0, 0, -1), (0, 0, -1)),  # slices stored head first
    ((-1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0)),  # columns stored left to right
    ((0, 0, 1, 0, 1, 0, 1, 0, 0), (-1, 0, -1)),  # array X along S, array Z along L
])
def test_coronal_mip_puts_head_up_and_patient_right_on_the_viewers_left(direction, hot):
    vol = np.zeros((10, 6, 14), np.float32)
    vol[hot] = 5.0  # a voxel at the patient's superior left
    geo = SimpleNamespace(direction=direction, spacing=(3.0, 2.0, 4.0))
    m = coronal_mip(vol, geo)
    r, c = np.unravel_index(np.argmax(m.image), m.image.shape)
    assert (r, c) == (0, m.image.shape[1] - 1)  # top row, viewer's right
    assert not m.oblique


def test_planted_table_on_the_hr_scale_with_power_and_an_honest_verdict():
    se = 0.3
    b = 0.6
    pv = pd.DataFrame([
        {"endpoint": "fact_p_worsening", "feature": "whole_body_tumor.total_uptake", "transform": "log2",
         "planted": b, "recovered": 0.5, "ci_low": 0.5 - 1.959963984540054 * se,
         "ci_high": 0.5 + 1.959963984540054 * se, "inside_ci": True},
        {"endpoint": "xerostomia", "feature": "salivary_glands.suv_mean", "transform": "sd", "planted": 4.0,
         "recovered": 4.5, "ci_low": 3.0, "ci_high": 6.0, "inside_ci": True}])
    results = pd.DataFrame({"feature": ["whole_body_tumor.total_uptake", "salivary_glands.suv_mean"],
                            "endpoint": ["fact_p_worsening", "xerostomia"], "model": ["cox", "mixed"]})
    t = planted_table(pv, results)
    assert t.loc[0, "scale"] == "HR" and t.loc[0, "planted"] == f"{np.exp(b):.2f}"
    assert t.loc[0, "recovered (95% CI)"] == fmt_ci(np.exp(0.5), np.exp(0.5 - 1.96 * se), np.exp(0.5 + 1.96 * se))
    assert t.loc[0, "excludes no effect"] == "no" and t.loc[1, "excludes no effect"] == "yes"
    assert t.loc[1, "scale"] == "slope" and t.loc[1, "planted"] == "4.00"
    # power of a two-sided 5% z test at effect/se = 2: Phi(2 - 1.96) + Phi(-2 - 1.96)
    assert power_two_sided(b, se) == pytest.approx(0.51595 + 0.0000372, abs=2e-4)
    assert t.loc[0, "power"] == "52%"
    v = planted_verdict(t, 12)
    assert v.startswith("1 of 2 planted effects were detected") and "12 patients cannot recover" in v
    v = planted_verdict(t, 61)  # at the study's size a miss is a miss, not a cohort too small
    assert "cannot recover" not in v and "at this size 1 planted effect went undetected" in v


def test_results_csv_writes_each_interval_as_the_report_does(report):
    """results.csv's ``result`` and the HTML table give a Cox interval alike: "lo to hi", never "lo-hi"."""
    paths, res, ctx, f = report
    csv = pd.read_csv(paths["csv"])
    page = paths["html"].read_text()
    cox = csv[csv.model.eq("cox") & csv.status.eq("ok") & csv.ci_high.lt(100)]  # below 100 both give 2 decimals
    assert len(cox) >= 2
    for r in cox.itertuples():
        interval = re.fullmatch(r"HR = \S+, 95% CI (\S+ to \S+), p .*", r.result).group(1)
        assert f"({interval})" in fmt_ci(r.hr, r.ci_low, r.ci_high) and f"({interval})" in page


def test_table1_gives_the_reference_quantities_of_each_patients_first_study():
    base = pd.DataFrame({"patient_id": ["A", "B", "C"]})
    q = pd.DataFrame({"patient_id": ["A", "A", "B", "C", "Z"],
                      "study_date": ["2024-05-01", "2024-01-01", "2024-02-01", "2024-03-01", "2024-01-01"],
                      "tumour_to_parotid_ratio": [99.0, 1.0, 2.0, 4.0, 50.0],  # A's follow-up and Z are not counted
                      "blood_pool_suv_mean": [9.0, 1.5, 1.7, np.nan, 9.0]})
    rows = dict(table1(base, quantities=q))
    assert rows["Tumour-to-parotid SUVmean ratio, median [IQR]"] == "2.00 [1.50-3.00]"
    assert rows["Blood-pool (aorta) SUVmean, median [IQR]"] == "1.60 [1.55-1.65]"  # C has no aorta: left out
    assert "Liver SUVmean, median [IQR]" not in rows and "Parotid SUVmean, median [IQR]" not in rows  # no column
    assert not any("ratio" in k for k in dict(table1(base)))  # no quantities table: no such rows


def test_formats_are_one_style():
    assert fmt_p(1.14e-05) == "<0.001" and fmt_p(0.578) == "0.578" and fmt_p(np.nan) == ""
    assert fmt_ci(2.58, 0.34, 78.96) == "2.58 (0.34 to 78.96)"
    assert fmt_ci(209.998186, 150.0, 300.0) == "210.0 (150.0 to 300.0)"


def test_model_warnings_list_low_events_per_variable():
    res = pd.DataFrame([
        {"analysis": "A", "feature": "r.suv_mean", "status": "ok", "flag": "EPV 3.0 < 10", "warnings": []},
        {"analysis": "A", "feature": "r.suv_max", "status": "ok", "flag": "EPV 3.0 < 10", "warnings": []},
        {"analysis": "B", "feature": "r.suv_max", "status": "not converged", "flag": "not converged",
         "warnings": ["ConvergenceWarning: x"]},
        {"analysis": "C", "feature": "r.suv_max", "status": "ok", "flag": "", "warnings": []}])
    assert _warnings(res) == ["A (all 2 models): EPV 3.0 < 10",
                              "B / r.suv_max: ConvergenceWarning: x; not converged"]


def test_mip_png_import_path_still_draws():
    from petfeat.report_images import mip_png

    vol = np.zeros((12, 4, 6), np.float32)
    vol[10, 2, 1] = 8
    b64 = mip_png(vol, (4.0, 4.0, 4.0), {"whole_body_tumor": vol > 1}, "S001")
    import base64

    assert base64.b64decode(b64)[:4] == b"\x89PNG"


def test_cumulative_incidence_figure_when_death_competes(tmp_path):
    from petfeat.report.figures import km

    rng = np.random.default_rng(2)
    n = 24
    d = pd.DataFrame({"time_days": rng.integers(20, 250, n).astype(float), "event": [1, 0, 0] * (n // 3),
                      "competing": [0, 1, 0] * (n // 3), "healthy_bone.suv_max": rng.lognormal(1, 0.3, n)})
    fig = km(d, "healthy_bone.suv_max", "toxicity", tmp_path, "km_01", endpoint="toxicity",
             adjusted_for=["baseline_haemoglobin"])
    assert fig.title.startswith("Cumulative incidence (Aalen-Johansen, death as competing event)")
    assert "cause-specific hazard, death censored" in fig.caption and "adjusted for baseline_haemoglobin" in fig.caption
    med = d["healthy_bone.suv_max"].median()
    high = d[d["healthy_bone.suv_max"] > med]
    label, counts = fig.at_risk["groups"][0]
    assert label.startswith("high") and counts == [int((high.time_days >= t).sum()) for t in fig.at_risk["days"]]
    assert {p.name for p in fig.files} == {"km_01.png", "km_01.svg"}


@pytest.mark.parametrize("name, shown", [
    ("fact_p_worsening", "FACT-P worsening"), ("haematological_toxicity_g3", "haematological toxicity grade \u22653"),
    ("bpi_severity_worsening", "BPI severity worsening"), ("fact_pain", "fact pain"), ("xq8", "XQ-8"),
])
def test_endpoint_and_score_names_are_written_as_the_instruments_are(name, shown):
    from petfeat.report.tables import endpoint_label

    assert endpoint_label(name) == shown


def test_methods_state_the_lab_rules_and_the_p_floor():
    """The 90-day baseline window, the worst value of a day and the 1e-300 p floor were applied but not stated."""
    from petfeat.report.build import methods_text
    from petfeat.stats.analysis import load_study

    text = " ".join(methods_text(load_study()))
    assert "the last value within 90 days before the first dose" in text
    assert "the worst (highest grade) counts" in text and "percent of the white cells are not graded" in text
    assert "a p below 1e-300 is written as 1e-300" in text
