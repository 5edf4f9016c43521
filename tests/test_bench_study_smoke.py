"""Smoke test of benchmarks/bench_study.py on a tiny study: every stage runs and is reported."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petfeat.synth.dicom_writer import Acquisition, write_pet_series

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_study.py"


def _nifti(arr, path, spacing):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path), True)


def test_bench_study_runs_on_a_tiny_study(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_study", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    study = tmp_path / "study"
    rng = np.random.default_rng(0)
    acq = Acquisition("P", "P^Q", 70.0, 1.7, "M", 2e8, dt.datetime(2025, 1, 1, 9), dt.datetime(2025, 1, 1, 10))
    write_pet_series(study / "pet", rng.gamma(4.0, 0.25, (12, 16, 16)), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0), acq)
    (study / "seg").mkdir()
    for name, box in (("liver", np.s_[2:8, 4:12, 4:12]), ("kidney_left", np.s_[8:12, 2:6, 2:8])):
        arr = np.zeros((24, 32, 32), np.uint8)
        arr[box] = 1
        _nifti(arr, study / "seg" / f"{name}.nii.gz", (2.0, 2.0, 2.0))
    lesions = np.zeros((12, 16, 16), np.uint8)
    lesions[3:5, 6:9, 6:9] = 1
    _nifti(lesions, study / "lesions.nii.gz", (4.0, 4.0, 4.0))
    out = tmp_path / "result.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # built-in regions the tiny study's labels cannot fill
        bench.run(study, repeats=1, out=str(out), cli=False)
    result = json.loads(out.read_text())
    assert list(result["layouts"]) == ["folder"]
    folder = result["layouts"]["folder"]
    assert set(folder["stages_median_s"]) >= {"pet_s", "labels_s", "label_table_s", "extract_s", "total_s"}
    assert folder["floor_median"]["floor_s"] > 0 and folder["whole_over_floor"] > 0
    assert folder["rerun_median_s"]["labels_s"] > 0 and result["process_start_s"]["median"] > 0
