"""Exports as PACS and scanners write them: AC + NAC + MIP series in one study, two time points of one patient.

Each study gives one row set and the run exits 0 (issue: real archives hold several PET series per study).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pydicom
from pydicom.uid import generate_uid

from petfeat.regions import BUILTIN_REGIONS


def _retag(folder, **fields):
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        for k, v in fields.items():
            setattr(ds, k, v)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(f)


def test_ac_nac_mip_and_two_time_points_give_one_row_set_per_study_and_exit_0(synth_archive, tmp_path):
    src, truths = synth_archive
    root = tmp_path / "archive"
    # study 1: the AC series, a NAC copy and a one-image MIP, all of one study
    one = root / "patient_a"
    shutil.copytree(src / truths[0]["patient"], one)
    shutil.copytree(one / "pet", one / "pet_nac")
    _retag(one / "pet_nac", SeriesInstanceUID=generate_uid(), SeriesDescription="PET NAC", CorrectedImage=["DECY"])
    (one / "mip").mkdir()
    shutil.copy(sorted((one / "pet").glob("*.dcm"))[40], one / "mip" / "mip.dcm")
    _retag(one / "mip", SeriesInstanceUID=generate_uid(), SeriesDescription="MIP")
    # patient 2: baseline and follow-up (two StudyInstanceUIDs) in one folder, each with its own labels
    two = root / "patient_b"
    for name, t in (("baseline", truths[1]), ("follow_up", truths[2])):
        shutil.copytree(src / t["patient"], two / name)
        _retag(two / name / "pet", PatientID="MRN2", StudyInstanceUID=generate_uid())
    env = {"PETFEAT_KEY_FILE": str(tmp_path / "k.key"), "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "petfeat.cli"]
    r = subprocess.run([*cli, "scan", str(root), "-o", str(tmp_path / "m.csv")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*cli, "extract", str(tmp_path / "m.csv"), "-o", str(tmp_path / "out"), "--workers", "2",
                        "--backend", "cpu"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "patient_a" not in r.stdout + r.stderr
    f = pd.read_parquet(tmp_path / "out" / "features.parquet")
    assert f.study_id.nunique() == 3 and len(f) == 3 * len(BUILTIN_REGIONS)
    assert f.patient_id.nunique() == 2  # the two time points are one patient
    assert len(pd.read_parquet(tmp_path / "out" / "failures.parquet")) == 0
    # the AC series was read, and the choice with its alternatives is in the rows' provenance
    ac_uid = pydicom.dcmread(sorted((one / "pet").glob("*.dcm"))[0]).SeriesInstanceUID
    row = f[f.series_uid == ac_uid]
    assert len(row) == len(BUILTIN_REGIONS) and "series_choice" in row.input_notes.iloc[0]
    liver = row.set_index("region").loc["liver"]
    truth_liver = truths[0]["regions"]["liver"]
    assert np.isclose(liver.suv_mean, truth_liver["suv_mean"], rtol=0.05)
