"""Batch engine: local and external Dask clusters, bad studies recorded, resume, killed workers, privacy."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk

from petfeat.batch import BatchSettings, run_batch
from petfeat.io.archive import ManifestError, read_manifest, scan_archive, write_manifest
from petfeat.regions import BUILTIN_REGIONS

KEY = bytes(range(32))
NUMERIC = ["suv_mean", "suv_max", "suv_peak_global", "volume_ml", "voxel_count", "lesion_count"]


def _settings():
    return BatchSettings(regions=BUILTIN_REGIONS, backend="cpu", peaks=True)


def _sorted(df):
    return df.sort_values(["study_id", "region"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def archive(synth_archive, tmp_path_factory):
    """Four studies: the three synthetic ones and a copy of the first as another patient's study (new UIDs)."""
    from pydicom.uid import generate_uid

    src, truths = synth_archive
    root = tmp_path_factory.mktemp("batch_archive")
    for t in truths:
        shutil.copytree(src / t["patient"], root / t["patient"])
    shutil.copytree(src / truths[0]["patient"], root / "SYN0004")
    study_uid, series_uid = generate_uid(entropy_srcs=["SYN0004 study"]), generate_uid(entropy_srcs=["SYN0004 pet"])
    for f in (root / "SYN0004" / "pet").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.PatientID = "MRN4444444"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid  # the same UIDs would be a duplicate
        ds.save_as(f)
    return root


def test_local_run_then_rerun_does_no_work(archive, tmp_path):
    rows = scan_archive(archive, KEY)
    assert [r.match_status for r in rows] == ["ok"] * 4
    out = tmp_path / "out"
    rep = run_batch(rows, out, _settings(), KEY, n_workers=2, progress=None)
    assert (rep.done, rep.skipped, rep.failed) == (4, 0, 0)
    f = pd.read_parquet(out / "features.parquet")
    assert sorted(f.study_id.unique()) == sorted(r.study_id for r in rows) and len(f) == 4 * len(BUILTIN_REGIONS)
    first = _sorted(f)
    rep2 = run_batch(rows, out, _settings(), KEY, n_workers=2, progress=None)
    assert (rep2.done, rep2.skipped, rep2.failed) == (0, 4, 0)
    pd.testing.assert_frame_equal(_sorted(pd.read_parquet(out / "features.parquet")), first)
    import json

    run = json.loads((out / "run.json").read_text())
    assert (run["done"], run["skipped"], run["studies"]) == (0, 4, 4) and run["outputs"]["features"] == len(f)


def test_memory_tracing_is_asked_for_and_changes_no_number_or_part_name(archive, tmp_path):
    from petfeat.batch import run_study

    row = scan_archive(archive, KEY)[0]
    plain = run_study(row, _settings(), str(tmp_path / "a"), KEY.hex())
    traced = run_study(row, _settings(), str(tmp_path / "b"), KEY.hex(), trace_memory=True)
    assert plain["status"] == traced["status"] == "done" and plain["key"] == traced["key"]
    assert "peak_traced_mb" not in plain["timings"] and plain["timings"]["total_s"] > 0
    assert traced["timings"]["peak_traced_mb"] > traced["timings"]["raw_pixel_mb"]  # the pixels are traced too
    part = f"parts/{plain['key']}.features.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / part), pd.read_parquet(tmp_path / "b" / part))


def test_bad_studies_are_recorded_and_the_rest_completes(archive, tmp_path):
    root = tmp_path / "arch"
    shutil.copytree(archive, root)
    # truncated DICOM file
    f = sorted((root / "SYN0001" / "pet").glob("*.dcm"))[10]
    f.write_bytes(f.read_bytes()[:-3000])
    # missing PatientWeight
    for g in (root / "SYN0002" / "pet").glob("*.dcm"):
        ds = pydicom.dcmread(g)
        del ds.PatientWeight
        ds.save_as(g)
    # a lesion mask of another geometry that does not overlap the PET field of view
    img = sitk.GetImageFromArray(np.ones((4, 4, 4), np.uint8))
    img.SetOrigin((9000.0, 9000.0, 9000.0))
    sitk.WriteImage(img, str(root / "SYN0003" / "lesions.nii.gz"))
    (root / "EMPTY").mkdir()
    rows = scan_archive(root, KEY)
    rep = run_batch(rows, tmp_path / "out", _settings(), KEY, n_workers=2, progress=None)
    fails = pd.read_parquet(tmp_path / "out" / "failures.parquet")
    by_path = {Path(p).parts[-2] if Path(p).name == "pet" else Path(p).name: (c, m)
               for p, c, m in zip(fails.pet_path, fails.error_class, fails.message, strict=True)}
    assert set(by_path) == {"SYN0001", "SYN0002", "SYN0003", "EMPTY"}
    assert by_path["SYN0001"][0] == "DicomSeriesError" and "truncated" in by_path["SYN0001"][1]
    assert by_path["SYN0002"][0] == "SuvError" and "PatientWeight (0010,1030)" in by_path["SYN0002"][1]
    assert by_path["SYN0003"][0] == "LabelError" and "does not overlap" in by_path["SYN0003"][1]
    assert by_path["EMPTY"][0] == "DicomSeriesError"
    f = pd.read_parquet(tmp_path / "out" / "features.parquet")
    assert f.study_id.nunique() == 1 and rep.failed == 4 and rep.done == 1
    # the CLI says so in its exit status
    r = subprocess.run([sys.executable, "-m", "petfeat.cli", "extract", str(root), "-o", str(tmp_path / "out2"),
                        "--workers", "2", "--backend", "cpu", "--key-file", str(tmp_path / "k")], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 3 and "failures are listed" in r.stderr


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def external_cluster(tmp_path):
    """A real `dask scheduler` and two `dask worker` processes on loopback."""
    dask = shutil.which("dask")
    if dask is None:
        pytest.fail("the 'dask' command (from distributed) is missing; install petfeat's dependencies")
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address",
                               ":0", "--no-show"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    time.sleep(2.0)
    for i in range(2):
        procs.append(subprocess.Popen([dask, "worker", addr, "--nworkers", "1", "--nthreads", "1", "--name", f"w{i}",
                                       "--local-directory", str(tmp_path / f"w{i}"), "--no-nanny"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    from distributed import Client

    with Client(addr, timeout="30s") as c:
        c.wait_for_workers(2, timeout=60)
    yield addr, procs
    for p in procs:
        p.kill()
        p.wait(timeout=30)


def test_external_scheduler_gives_the_local_results(archive, tmp_path, external_cluster):
    addr, _ = external_cluster
    rows = scan_archive(archive, KEY)
    write_manifest(rows, tmp_path / "manifest.csv")
    local = run_batch(rows, tmp_path / "local", _settings(), KEY, n_workers=2, progress=None)
    (tmp_path / "key").write_text(KEY.hex())
    r = subprocess.run([sys.executable, "-m", "petfeat.cli", "extract", str(tmp_path / "manifest.csv"), "-o",
                        str(tmp_path / "remote"), "--scheduler", addr, "--backend", "cpu", "--key-file",
                        str(tmp_path / "key")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert local.done == 4 and "4 done" in r.stdout
    a = _sorted(pd.read_parquet(tmp_path / "local" / "features.parquet"))
    b = _sorted(pd.read_parquet(tmp_path / "remote" / "features.parquet"))
    pd.testing.assert_frame_equal(a[["study_id", "patient_id", "region", *NUMERIC]],
                                  b[["study_id", "patient_id", "region", *NUMERIC]])


def test_a_killed_worker_loses_no_study(archive, tmp_path, external_cluster):
    addr, procs = external_cluster
    rows = scan_archive(archive, KEY)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rep", run_batch(rows, tmp_path / "out", _settings(), KEY,
                                                                           scheduler=addr, progress=None)))
    t.start()
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "out" / "parts").glob("*.timing.json")):
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGKILL)  # one worker dies mid-run
    t.join(timeout=600)
    rep = result["rep"]
    assert rep.done + rep.skipped == 4 and rep.failed == 0
    assert pd.read_parquet(tmp_path / "out" / "features.parquet").study_id.nunique() == 4


def test_gpu_workers_give_the_cpu_features(gpu, tmp_path):
    # The GPU backend through the whole batch engine: Dask worker processes run the CUDA kernels (on
    # Numba's simulator when no device is present: one coarse study keeps that under a minute).
    from petfeat.synth import generate_archive

    generate_archive(tmp_path / "a", 1, seed=1, voxel_mm=30)
    rows = scan_archive(tmp_path / "a", KEY)
    on = {}
    for be in ("gpu", "cpu"):
        rep = run_batch(rows, tmp_path / be, BatchSettings(regions=BUILTIN_REGIONS, backend=be), KEY, n_workers=1,
                        progress=None)
        assert rep.done == 1 and rep.failed == 0
        on[be] = _sorted(pd.read_parquet(tmp_path / be / "features.parquet"))
    assert set(on["gpu"].backend) == {"gpu"} and set(on["cpu"].backend) == {"cpu"}
    assert on["gpu"].voxel_count.sum() > 0
    np.testing.assert_allclose(on["gpu"][NUMERIC].to_numpy(float), on["cpu"][NUMERIC].to_numpy(float), rtol=1e-6)


def test_no_patient_identifier_in_outputs(archive, tmp_path):
    rows = scan_archive(archive, KEY)
    write_manifest(rows, tmp_path / "manifest.csv")
    run_batch(rows, tmp_path / "out", _settings(), KEY, n_workers=1, progress=None)
    ids = {str(pydicom.dcmread(next((archive / s / "pet").glob("*.dcm"))).PatientID) for s in
           ("SYN0001", "SYN0002", "SYN0003", "SYN0004")}
    names = {str(pydicom.dcmread(next((archive / s / "pet").glob("*.dcm"))).PatientName) for s in ("SYN0001",)}
    blob = (tmp_path / "manifest.csv").read_text() + (tmp_path / "out" / "run.json").read_text()
    for name in ("features", "lesions", "failures"):
        blob += pd.read_parquet(tmp_path / "out" / f"{name}.parquet").to_csv()
    for secret in ids | names:
        assert secret not in blob


def test_scan_reads_the_same_with_and_without_the_fast_header_path(archive, monkeypatch):
    import petfeat.io.archive

    fast = scan_archive(archive, KEY)
    monkeypatch.setattr(petfeat.io.archive, "read_slice_header", lambda path, wanted: None)
    assert scan_archive(archive, KEY) == fast and len(fast) == 4


def test_scan_matches_an_rtstruct_by_its_dicom_references(tmp_path):
    # DRO_0_0: a PET series and an RTSTRUCT that references it, in folders named neither "seg" nor "labels"
    from conftest import DRO

    study = tmp_path / "arch" / "S1"
    shutil.copytree(DRO / "DRO_0_0", study)
    (row,) = scan_archive(tmp_path / "arch", KEY)
    rs = next((study / "RS").glob("*.dcm"))
    assert row.match_status == "ok" and str(rs) in row.labels, row


def test_manifest_validation(tmp_path, archive):
    rows = scan_archive(archive, KEY)
    write_manifest(rows, tmp_path / "m.csv")
    assert [r.study_id for r in read_manifest(tmp_path / "m.csv")] == [r.study_id for r in rows]
    text = (tmp_path / "m.csv").read_text().splitlines()
    (tmp_path / "dup.csv").write_text("\n".join(text + [text[1]]) + "\n")
    with pytest.raises(ManifestError, match=r"line 6: study_id .* appears twice"):
        read_manifest(tmp_path / "dup.csv")
    (tmp_path / "gone.csv").write_text(text[0] + "\n" + text[1].replace("/pet,", "/nope,") + "\n")
    with pytest.raises(ManifestError, match=r"line 2 .*nope does not exist"):
        read_manifest(tmp_path / "gone.csv")
    (tmp_path / "cols.csv").write_text("id,path\n1,/x\n")
    with pytest.raises(ManifestError, match="missing column"):
        read_manifest(tmp_path / "cols.csv")
