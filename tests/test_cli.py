"""The command line as a user runs it: subprocesses, exit codes, stderr without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import DRO


def run(*args, **kw):
    env = kw.pop("env", None)
    return subprocess.run([sys.executable, "-m", "petfeat.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600, **kw)


def test_suv_json_has_the_documented_keys():
    r = run("suv", str(DRO / "DRO_3_3" / "PT"), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    for key in ("suv_bw_factor", "sul_factor", "suv_bsa_factor", "units", "decay_correction", "scan_datetime",
                "injection_datetime", "uptake_seconds", "half_life_seconds", "injected_dose_bq", "decayed_dose_bq",
                "weight_kg", "warnings"):
        assert key in d
    assert d["uptake_seconds"] == 3600 and d["suv_bw_factor"] == pytest.approx(70_000 / d["decayed_dose_bq"])


def test_suv_factors_per_slice_when_the_series_is_not_decay_corrected_to_one_time():
    """DRO_3_4 (DecayCorrection NONE, a height): SUVbw, SUL and SUVbsa are one factor per slice, each the
    SUVbw factor times one body-size ratio (the text shows their ranges), as extract applies them."""
    import numpy as np

    from petfeat.io.dicom import read_pet_header
    from petfeat.suv import compute_suv_factors

    r = run("suv", str(DRO / "DRO_3_4" / "PT"), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    bw, bsa = np.array(d["suv_bw_factor"]), np.array(d["suv_bsa_factor"])
    assert bw.size > 1 and bw.min() < bw.max() and bsa.shape == bw.shape
    np.testing.assert_allclose(bsa / bw, bsa[0] / bw[0], rtol=1e-12)
    f = compute_suv_factors(read_pet_header(DRO / "DRO_3_4" / "PT").suv_header)
    np.testing.assert_allclose(bsa, f.factor("bsa"), rtol=1e-15)
    text = run("suv", str(DRO / "DRO_3_4" / "PT")).stdout
    assert f"SUVbsa factor     per slice, {bsa.min():.6g} .. {bsa.max():.6g}" in text


def test_suv_override_from_the_command_line():
    r = run("suv", str(DRO / "DRO_0_0" / "PT"), "--json", "--weight", "80", "--injection-time", "2025-01-01T10:30:00")
    d = json.loads(r.stdout)
    assert d["weight_kg"] == 80 and d["uptake_seconds"] == 1800


def test_suv_refuses_a_folder_of_two_studies(tmp_path):
    """Series of two StudyInstanceUIDs are two studies: the reader never picks across them."""
    import shutil

    import pydicom

    shutil.copytree(DRO / "DRO_0_0" / "PT", tmp_path / "a")
    shutil.copytree(DRO / "DRO_1_0" / "PT", tmp_path / "b")
    for f in (tmp_path / "b").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.save_as(f)
    r = run("suv", str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "holds 2 PET series of 2 studies" in r.stderr and r.stderr.startswith("petfeat suv: error:")


def test_suv_of_a_folder_of_one_study_picks_a_series_and_says_which():
    r = run("suv", str(DRO), "--json")
    assert r.returncode == 0, r.stderr
    assert "first of 17 volume(s)" in r.stderr and "Not read:" in r.stderr  # the choice and the alternatives


@pytest.mark.parametrize("args, pattern", [
    (["suv", "/no/such/folder"], "no such file or folder"),
    (["suv", str(DRO / "DRO_0_0" / "PT"), "--injection-time", "yesterday"], "is not YYYY-MM-DDTHH:MM:SS"),
])
def test_bad_input_exits_2_without_traceback(args, pattern):
    r = run(*args)
    assert r.returncode == 2
    assert pattern in r.stderr and "Traceback" not in r.stderr and r.stderr.startswith("petfeat suv: error:")


def test_missing_weight_names_tag_and_override(tmp_path):
    import shutil

    import pydicom

    d = tmp_path / "pt"
    shutil.copytree(DRO / "DRO_0_0" / "PT", d)
    for f in d.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        del ds.PatientWeight
        ds.save_as(f)
    r = run("suv", str(d))
    assert r.returncode == 2 and "PatientWeight (0010,1030)" in r.stderr and "--weight" in r.stderr
    assert run("suv", str(d), "--weight", "70").returncode == 0


def test_demo_runs_and_recovers_ground_truth(tmp_path):
    r = run("demo", "--patients", "2", "--voxel-mm", "10", "--out", str(tmp_path / "demo"), "--backend", "cpu")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "whole-body tumour SUVmean vs the ground truth" in r.stdout and "(limit 1e-06: pass)" in r.stdout
    assert "units BQML" in r.stdout
    assert (tmp_path / "demo" / "results" / "features.parquet").exists()
    assert (tmp_path / "demo" / "manifest.csv").exists()
    assert len(list((tmp_path / "demo" / "archive").glob("SYN*/pet/*.dcm"))) == 2 * 90
    # the default regions give every PSMA reference quantity, near the phantom's planted truth
    from pathlib import Path

    import numpy as np
    import pandas as pd

    assert "PSMA reference quantities" in r.stdout and "reference quantities missing" not in r.stdout
    q = pd.read_parquet(tmp_path / "demo" / "results" / "quantities.parquet")
    refs = ["liver_suv_mean", "parotid_suv_mean", "blood_pool_suv_mean", "tumour_to_liver_ratio",
            "tumour_to_parotid_ratio"]
    assert len(q) == 2 and np.isfinite(q[refs].to_numpy(dtype=float)).all() and (q.notes == "").all()
    rows = pd.read_csv(tmp_path / "demo" / "manifest.csv")
    for sid, pet in zip(rows.study_id, rows.pet_path, strict=True):
        t = json.loads((Path(pet).parent / "truth.json").read_text())  # the manifest's paths are absolute
        got = q.set_index("study_id").loc[sid]
        glands = [t["regions"][f"parotid_gland_{s}"] for s in ("left", "right")]
        parotid = sum(g["suv_mean"] * g["voxel_count"] for g in glands) / sum(g["voxel_count"] for g in glands)
        assert got.blood_pool_suv_mean == pytest.approx(t["regions"]["aorta"]["suv_mean"], rel=0.1)
        assert got.tumour_to_parotid_ratio == pytest.approx(t["lesion_mask_stats"]["suv_mean"] / parotid, rel=0.1)
    # a second run into the same folder keeps the archive and skips the studies it has
    again = run("demo", "--patients", "2", "--voxel-mm", "10", "--out", str(tmp_path / "demo"), "--backend", "cpu")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already: kept" in again.stdout and "generating" not in again.stdout
    assert "studies 2/2: 0 done, 2 skipped, 0 failed" in again.stdout + again.stderr
    assert "0 studies done, 2 already done, 0 failed" in again.stdout
    assert len(list((tmp_path / "demo" / "results" / "parts").glob("*.features.parquet"))) == 2
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "demo" / "results" / "quantities.parquet"), q)


def test_demo_with_gpu_and_no_device_is_refused_before_it_writes(tmp_path):
    import os

    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0", "CUDA_VISIBLE_DEVICES": ""}
    r = run("demo", "--patients", "2", "--voxel-mm", "10", "--out", str(tmp_path / "demo"), "--backend", "gpu",
            env=env)
    assert r.returncode == 2 and "(CLI: --backend cpu)" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "demo" / "archive").exists()


def test_synth_command(tmp_path):
    r = run("synth", str(tmp_path / "a"), "--patients", "1", "--voxel-mm", "10")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a" / "SYN0001" / "truth.json").exists()
    assert len(list((tmp_path / "a" / "SYN0001" / "seg").glob("*.nii.gz"))) > 40


def test_extract_one_study(synth_archive, tmp_path):
    import pandas as pd

    out, truths = synth_archive
    d = out / truths[0]["patient"]
    (tmp_path / "regions.yaml").write_text("regions:\n  whole_body_tumor: builtin\n  healthy_bone: builtin\n"
                                           "  kidneys: {include: ['kidney_*']}\n")
    r = run("extract", "--pet", str(d / "pet"), "--labels", str(d / "seg"), "--lesions", str(d / "lesions.nii.gz"),
            "--regions", str(tmp_path / "regions.yaml"), "-o", str(tmp_path / "out"), "--csv", "--backend", "cpu")
    assert r.returncode == 0, r.stderr
    f = pd.read_parquet(tmp_path / "out" / "features.parquet")
    assert list(f.region) == ["whole_body_tumor", "healthy_bone", "kidneys"]
    les = pd.read_parquet(tmp_path / "out" / "lesions.parquet")
    assert len(les) == f.set_index("region").loc["whole_body_tumor", "lesion_count"] >= 1
    assert (tmp_path / "out" / "features.csv").exists() and (tmp_path / "out" / "run.json").exists()
    labels = pd.read_parquet(tmp_path / "out" / "labels.parquet").set_index("label")
    assert {"namespace", "source", "native_volume_ml", "pet_grid_volume_ml", "outside_fov_fraction"} <= set(
        labels.columns)
    assert set(labels.source) == {"TotalSegmentator folder"}  # what the source is, never its archive name
    liver = truths[0]["regions"]["liver"]
    assert labels.loc["liver", "pet_grid_volume_ml"] == pytest.approx(liver["volume_ml"], rel=0.05)
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_extract_bad_threshold_and_labels(synth_archive, tmp_path):
    out, truths = synth_archive
    d = out / truths[0]["patient"]
    r = run("extract", "--pet", str(d / "pet"), "--threshold", "auto", "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "use 'fixed:SUV'" in r.stderr and "Traceback" not in r.stderr
    r = run("extract", "--pet", str(d / "pet"), "--labels", str(tmp_path / "none.nii.gz"), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "no such file or folder" in r.stderr


def test_demo_with_analysis_writes_the_report(tmp_path):
    r = run("demo", "--patients", "8", "--voxel-mm", "12", "--out", str(tmp_path / "d"), "--backend", "cpu",
            "--workers", "2")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "planted values inside their 95% CI: 4 of 4" in r.stdout  # coverage; n=8 detects little: the verdict says so
    assert "planted effects were detected (95% CI excludes no effect) in 8 patients" in r.stdout
    page = (tmp_path / "d" / "report" / "report.html").read_text()
    for section in ("Planted vs recovered effects", "Coronal MIPs", "Timings", "Forest plot", "Kaplan-Meier", "Cohort"):
        assert section in page
    assert page.count("data:image/png;base64,") >= 5 and "Backend: <b>cpu</b>" in page
    import re

    for label in ("Tumour-to-parotid SUVmean ratio", "Blood-pool (aorta) SUVmean"):  # Table 1, from quantities
        assert re.search(rf"<td>{re.escape(label)}, median \[IQR\]</td><td class=\"num\">\d+\.\d\d \[", page)
    assert page.count("<dt>blood-pool SUVmean</dt>") == 8  # the QC gallery's key numbers, one per study


@pytest.mark.parametrize("extra, option", [
    (["--weight", "50"], "--weight"), (["--labels", "x.nii.gz"], "--labels"), (["--series-uid", "1.2.3"],
                                                                               "--series-uid"),
    (["--lesions", "m.nii.gz"], "--lesions"), (["--lbm", "james"], "--lbm"),
])
def test_batch_refuses_options_of_one_study(tmp_path, extra, option):
    """A batch takes labels, lesions, series and header fields from the manifest: such options were ignored."""
    (tmp_path / "m.csv").write_text("study_id,pet_path\nS000000000001,.\n")
    r = run("extract", str(tmp_path / "m.csv"), "-o", str(tmp_path / "o"), *extra)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert option in r.stderr and "options of one study" in r.stderr


def test_cli_warnings_are_one_line_and_output_errors_have_no_traceback(tmp_path):
    D = DRO / "DRO_0_0" / "PT"
    (tmp_path / "file").write_text("x")
    r = run("extract", "--pet", str(D), "--threshold", "fixed:3", "-o", str(tmp_path / "file"), "--backend", "cpu")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "File exists" in r.stderr
    r = run("extract", "--pet", str(D), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "nothing to measure" in r.stderr and "warning" not in r.stderr
    r = subprocess.run(f"{sys.executable} -m petfeat.cli suv {D} | head -1", shell=True, capture_output=True,
                       text=True, timeout=300)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr
    r = run("extract", "--pet", str(D), "--threshold", "fixed:3", "-o", str(tmp_path / "o2"), "--backend", "cpu")
    assert r.returncode == 0, r.stderr
    warn = [line for line in r.stderr.splitlines() if "warning" in line]
    assert warn and all(line.startswith("petfeat extract: warning: ") for line in warn)
    assert "res = extract(" not in r.stderr  # no source line echoed


def test_suv_text_says_why_no_scan_time_was_needed():
    r = run("suv", str(DRO / "DRO_2_0" / "PT"))  # Units GML: the pixels are SUVs already
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("scan time"))
    assert line.split(None, 2)[2] == "n/a, not needed (Units GML)"
