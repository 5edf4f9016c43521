"""Batch engine: local and external Dask clusters, bad studies recorded, resume, killed workers, privacy."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import re
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

from petfeat import batch
from petfeat.batch import BatchError, BatchSettings, _absolute_row, _stat_signature, run_batch, run_study, study_key
from petfeat.io.archive import ManifestError, read_manifest, scan_archive, write_manifest
from petfeat.regions import BUILTIN_REGIONS, normalise_spec

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


def test_local_run_then_rerun_does_no_work_and_writes_the_same_bytes(archive, tmp_path, monkeypatch):
    rows = scan_archive(archive, KEY)
    assert [r.match_status for r in rows] == ["ok"] * 4
    out = tmp_path / "out"
    log = io.StringIO()  # not a terminal: whole progress lines, no carriage returns
    # the built-in regions and one that no synthetic label fills: a warning in every study
    settings = dataclasses.replace(_settings(), regions={**BUILTIN_REGIONS,
                                                         **normalise_spec({"pancreas": ["pancreas"]})})
    rep = run_batch(rows, out, settings, KEY, n_workers=2, progress=log)
    assert (rep.done, rep.skipped, rep.failed) == (4, 0, 0)
    assert "\r" not in log.getvalue() and log.getvalue().splitlines()[-1].startswith("studies 4/4: 4 done")
    f = pd.read_parquet(out / "features.parquet")
    assert sorted(f.study_id.unique()) == sorted(r.study_id for r in rows) and len(f) == 4 * (len(BUILTIN_REGIONS) + 1)
    # rows in a fixed order: features by (study_id, region), lesions by (study_id, lesion_id)
    pd.testing.assert_frame_equal(f, _sorted(f))
    les = pd.read_parquet(out / "lesions.parquet")
    pd.testing.assert_frame_equal(les, les.sort_values(["study_id", "lesion_id"]).reset_index(drop=True))
    first = {n: (out / f"{n}.parquet").read_bytes() for n in ("features", "lesions", "failures")}

    def no_cluster(*args, **kwargs):
        raise AssertionError("a rerun with every study done started a Dask cluster")

    monkeypatch.setattr("petfeat.batch._client", no_cluster)  # nothing to do: no workers, no scheduler
    rep2 = run_batch(rows, out, settings, KEY, n_workers=2, progress=None)
    assert (rep2.done, rep2.skipped, rep2.failed) == (0, 4, 0)
    for name, data in first.items():
        assert (out / f"{name}.parquet").read_bytes() == data, name
    run = json.loads((out / "run.json").read_text())
    assert (run["done"], run["skipped"], run["studies"]) == (0, 4, 4) and run["outputs"]["features"] == len(f)
    # the extraction's warnings stayed off the console and are listed per study
    assert set(run["warnings"]) == {r.study_id for r in rows}
    assert all(w.startswith("PetfeatWarning: ") for ws in run["warnings"].values() for w in ws)
    assert all(any("'pancreas' matches no label" in w for w in ws) for ws in run["warnings"].values())


def test_relative_paths_reach_workers_that_run_elsewhere(archive, tmp_path, external_cluster, monkeypatch):
    # A manifest with relative paths and a relative -o: the workers of an external cluster run in
    # another working directory, so they must get absolute paths and write where the client reads.
    addr, _, elsewhere = external_cluster
    shutil.copytree(archive, tmp_path / "arch")
    monkeypatch.chdir(tmp_path)
    rows = [dataclasses.replace(r, pet_path=os.path.relpath(r.pet_path), labels=[os.path.relpath(p) for p in r.labels],
                                lesions=os.path.relpath(r.lesions), study_path=os.path.relpath(r.study_path))
            for r in scan_archive(Path("arch"), KEY)]
    assert not Path(rows[0].pet_path).is_absolute()
    rep = run_batch(rows, "out", _settings(), KEY, scheduler=addr, progress=None)
    assert (rep.done, rep.failed) == (4, 0)
    assert pd.read_parquet(tmp_path / "out" / "features.parquet").study_id.nunique() == 4
    assert not list(elsewhere.rglob("*.parquet"))


def test_what_a_task_cannot_record_the_client_records(archive, tmp_path):
    # A task that kills its worker process, one that raises, one that reports done without a part the
    # client can see, one healthy study: every study ends in exactly one table.
    import dask

    rows = scan_archive(archive, KEY)
    boom, ghost, healthy, kill = (r.study_id for r in rows)  # the killer last: no other task queued behind it

    finished = tmp_path / "finished"
    finished.mkdir()

    def task(row, *args, **kwargs):
        if row.study_id == kill:  # dies once the others are through (a death also blames the tasks beside it)
            deadline = time.time() + 120
            while len(list(finished.iterdir())) < 3 and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)
            os._exit(1)  # as the kernel's OOM killer would
        try:
            if row.study_id == boom:
                raise OSError(f"{row.pet_path}/slice_0000.dcm: disk gone")
            if row.study_id == ghost:
                return {"study_id": row.study_id, "key": kwargs["part_key"], "status": "done",
                        "part": "/elsewhere/parts/x.features.parquet"}
            return run_study(row, *args, **kwargs)
        finally:
            (finished / row.study_id).touch()

    # distributed's config defaults must exist before dask.config.set: set() records "distributed" as absent and
    # would delete the whole section (defaults loaded inside the block included) on leaving, breaking later tests
    import distributed  # noqa: F401

    # one task per worker at a time: the killer holds one worker, the others run on the other
    with dask.config.set({"distributed.scheduler.allowed-failures": 0, "distributed.scheduler.worker-saturation": 1.0}):
        rep = run_batch(rows, tmp_path / "out", _settings(), KEY, n_workers=2, progress=None, task=task)
    assert (rep.done, rep.failed) == (1, 3)
    fails = pd.read_parquet(tmp_path / "out" / "failures.parquet").set_index("study_id")
    feats = pd.read_parquet(tmp_path / "out" / "features.parquet")
    assert set(fails.index) == {kill, boom, ghost} and set(feats.study_id) == {healthy}
    assert fails.loc[kill, "error_class"] == "KilledWorker" and "died on every try" in fails.loc[kill, "message"]
    assert fails.loc[boom, "error_class"] == "OSError"
    n = len(list((archive / "SYN0001" / "pet").glob("*.dcm")))  # slice_0000.dcm named by its place
    assert fails.loc[boom, "message"] == (f"the study's task raised OSError: <{boom}>/<pet folder>/file 1 of {n} "
                                          "(sorted by name): disk gone")
    assert fails.loc[ghost, "error_class"] == "PartMissing", fails.to_dict("records")
    assert fails.loc[ghost, "message"].startswith("part missing: the worker wrote to /elsewhere/parts/")
    assert all(fails.pet_path.str.startswith("<"))


def test_a_failure_the_worker_cannot_write_is_returned_to_the_client(tmp_path):
    # the output folder refuses the worker's failure record (here: a folder sits where the file goes)
    empty = tmp_path / "arch" / "EMPTY"
    empty.mkdir(parents=True)
    (row,) = scan_archive(tmp_path / "arch", KEY)
    row = _absolute_row(row)
    key = study_key(row, _settings())
    (tmp_path / "out" / "parts" / f"{key}.failure.json").mkdir(parents=True)
    res = run_study(row, _settings(), str(tmp_path / "out"), KEY.hex(), part_key=key)
    assert res["status"] == "failed" and res["error"]["study_id"] == row.study_id
    assert res["error"]["error_class"] == "IsADirectoryError" and res["error"]["pet_path"] == f"<{row.study_id}>"
    assert "OUT/parts/" in res["error"]["message"] and str(tmp_path) not in res["error"]["message"]


def test_a_study_whose_labels_scan_could_not_attribute_fails_saying_so(archive, tmp_path):
    row = dataclasses.replace(scan_archive(archive, KEY)[0], labels=[], lesions="",
                              match_status="unattributed_labels: 2 label file(s) or folder(s) lie in a folder of 2 "
                              "studies; add the right ones to this row's labels/lesions")
    res = run_study(row, _settings(), str(tmp_path / "out"), KEY.hex())
    assert res["status"] == "failed" and res["error"]["error_class"] == "BatchError"
    assert res["error"]["message"] == (f"<{row.study_id}>/<pet folder>: no label source for this study; "
                                       f"{row.match_status}.")


def test_a_study_without_any_label_source_fails_saying_what_to_give(archive, tmp_path):
    row = dataclasses.replace(scan_archive(archive, KEY)[0], labels=[], lesions="", match_status="no_labels")
    res = run_study(row, _settings(), str(tmp_path / "out"), KEY.hex())  # was an IndexError from the code builder
    assert res["status"] == "failed" and res["error"]["error_class"] == "BatchError"
    msg = res["error"]["message"]
    assert msg.startswith(f"<{row.study_id}>/<pet folder>: nothing to measure") and "match_status no_labels" in msg
    assert "--threshold" in msg and str(archive) not in msg
    done = run_study(row, dataclasses.replace(_settings(), threshold={"method": "fixed", "threshold": 3.0}),
                     str(tmp_path / "out2"), KEY.hex())
    assert done["status"] == "done"


def test_a_lost_scheduler_turns_every_unfinished_study_into_a_failure(archive, tmp_path, external_cluster):
    addr, procs, _ = external_cluster
    rows = scan_archive(archive, KEY)
    started = tmp_path / "started"
    started.mkdir()

    def task(row, *args, **kwargs):
        (started / row.study_id).touch()
        time.sleep(60)

    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rep", run_batch(
        rows, tmp_path / "out", _settings(), KEY, scheduler=addr, progress=None, task=task)))
    t.start()
    deadline = time.time() + 60
    while time.time() < deadline and not list(started.iterdir()):
        time.sleep(0.05)
    procs[0].kill()  # the scheduler
    t.join(timeout=60)
    assert not t.is_alive()
    rep = result["rep"]
    assert (rep.done, rep.failed) == (0, 4)
    fails = pd.read_parquet(tmp_path / "out" / "failures.parquet")
    assert sorted(fails.study_id) == sorted(r.study_id for r in rows)
    assert set(fails.message) == {"the scheduler was lost; rerun to resume"}


def test_study_inputs_that_cannot_be_described_are_failures_not_crashes(archive, tmp_path, monkeypatch):
    import petfeat.batch

    loops = tmp_path / "loops"
    loops.mkdir()
    os.symlink("b.dcm", loops / "a.dcm")
    os.symlink("a.dcm", loops / "b.dcm")
    os.symlink("..", loops / "loop")
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "pipe.dcm")
    assert _stat_signature(tmp_path / "fifo")[1:] == [("pipe.dcm", "fifo")]  # recorded, never opened
    sig = _stat_signature(loops)  # nothing followed
    assert ("loop", "link", "..", "folder") in sig
    assert ("a.dcm", "link", "b.dcm", "broken", errno.ELOOP) in sig
    assert _stat_signature(Path("/dev/zero")) == ["/dev/zero", "char-device"]
    with pytest.raises(BatchError, match=r"^/: pet_path holds more than 1000 files; point to the study's PET"):
        _stat_signature(Path("/"), limit=1000)
    many = tmp_path / "many"
    many.mkdir()
    for i in range(200):
        (many / f"{i}.dcm").touch()
    monkeypatch.setattr(petfeat.batch, "MAX_SIGNATURE_ENTRIES", 150)  # more than the healthy study's 112 slices
    good = scan_archive(archive, KEY)[0]
    rows = [dataclasses.replace(good, study_id=f"S00000000000{i}", pet_path=p, study_path=str(Path(p).parent))
            for i, p in enumerate(["/dev/zero", str(tmp_path / "fifo" / "pipe.dcm"), str(loops), str(many)])]
    rep = run_batch([good, *rows], tmp_path / "out", _settings(), KEY, n_workers=1, progress=None)
    assert (rep.done, rep.failed) == (1, 4)
    fails = pd.read_parquet(tmp_path / "out" / "failures.parquet").set_index("study_id")
    assert "pet_path is a char-device, not a folder or DICOM file" in fails.loc["S000000000000", "message"]
    assert "pet_path is a fifo" in fails.loc["S000000000001", "message"]
    assert fails.loc["S000000000003", "message"] == ("<S000000000003>/<pet folder>: pet_path holds more than 150 "
                                                     "files; point to the study's PET folder.")


def test_an_unreachable_scheduler_is_one_line_and_exit_2(archive, tmp_path, capsys):
    from petfeat.cli import main

    write_manifest(scan_archive(archive, KEY), tmp_path / "m.csv")
    (tmp_path / "key").write_text(KEY.hex())
    addr = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    code = main(["extract", str(tmp_path / "m.csv"), "-o", str(tmp_path / "out"), "--scheduler", addr,
                 "--scheduler-timeout", "2", "--key-file", str(tmp_path / "key")])
    err = capsys.readouterr().err
    assert code == 2 and time.perf_counter() - t0 < 20
    assert err.startswith(f"petfeat extract: error: cannot reach the Dask scheduler at {addr}: ")
    assert err.rstrip().endswith("Start it (dask scheduler) or drop --scheduler.") and len(err.splitlines()) == 1
    # an output folder that cannot be made is one line too (a file stands where the folder goes)
    (tmp_path / "taken").write_text("")
    code = main(["extract", str(tmp_path / "m.csv"), "-o", str(tmp_path / "taken"), "--key-file",
                 str(tmp_path / "key")])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"petfeat extract: error: {tmp_path / 'taken'}: the output folder cannot be created "
                                 "(Not a directory); choose another -o.\n")


def _listening(cluster) -> dict[int, str]:
    import psutil

    me = psutil.Process()
    return {c.laddr.port: c.laddr.ip for p in [me, *me.children(recursive=True)] for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


def test_the_local_cluster_listens_on_loopback_only():
    from petfeat.batch import _client

    client, cluster = _client(None, 1, "cpu")
    try:
        listening = _listening(cluster)
        assert len(listening) >= 3  # scheduler, dashboard, worker (and its nanny)
        assert set(listening.values()) <= {"127.0.0.1", "::1"}, listening
        assert client.dashboard_link.startswith("http://127.0.0.1:")
    finally:
        client.close()
        cluster.close()
    # a dashboard asked for on every interface: only the dashboard is there, the scheduler stays on loopback
    client, cluster = _client(None, 1, "cpu", dashboard_address="0.0.0.0:0")
    try:
        listening = _listening(cluster)
        dash = cluster.scheduler.http_server.port
        assert listening[dash] == "0.0.0.0"
        assert {ip for port, ip in listening.items() if port != dash} <= {"127.0.0.1", "::1"}, listening
    finally:
        client.close()
        cluster.close()


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
    folder_of = {r.study_id: Path(r.study_path).name for r in rows}
    by_folder = {folder_of[s]: (c, m) for s, c, m in zip(fails.study_id, fails.error_class, fails.message, strict=True)}
    assert set(by_folder) == {"SYN0001", "SYN0002", "SYN0003", "EMPTY"}
    assert by_folder["SYN0001"][0] == "DicomSeriesError" and "truncated" in by_folder["SYN0001"][1]
    assert by_folder["SYN0002"][0] == "SuvError" and "PatientWeight (0010,1030)" in by_folder["SYN0002"][1]
    assert by_folder["SYN0003"][0] == "LabelError" and "does not overlap" in by_folder["SYN0003"][1]
    assert by_folder["EMPTY"][0] == "DicomSeriesError"
    # no archive folder name in the failures: files are named relative to <study_id>
    blob = fails.to_csv()
    for name in ("SYN0001", "SYN0002", "SYN0003", "EMPTY", str(root)):
        assert name not in blob
    for sid, pet, msg in zip(fails.study_id, fails.pet_path, fails.message, strict=True):
        assert pet.startswith(f"<{sid}>") and f"<{sid}>" in msg
    syn1 = next(s for s in fails.study_id if folder_of[s] == "SYN0001")
    n = len(list((root / "SYN0001" / "pet").glob("*.dcm")))  # slice_0010.dcm, named by its place
    assert f"<{syn1}>/<pet folder>/file 11 of {n} (sorted by name)" in by_folder["SYN0001"][1]
    f = pd.read_parquet(tmp_path / "out" / "features.parquet")
    assert f.study_id.nunique() == 1 and rep.failed == 4 and rep.done == 1
    # the CLI says so in its exit status, with the failures by class and no traceback
    r = subprocess.run([sys.executable, "-m", "petfeat.cli", "extract", str(root), "-o", str(tmp_path / "out2"),
                        "--workers", "2", "--backend", "cpu", "--key-file", str(tmp_path / "k")], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 3
    assert "failures (2 DicomSeriesError, 1 LabelError, 1 SuvError) are listed with their reasons" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    for name in ("SYN0001", "SYN0002", "SYN0003", "EMPTY"):
        assert name not in r.stderr + r.stdout


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
    elsewhere = tmp_path / "workers_cwd"  # the workers run in another working directory than the client
    elsewhere.mkdir()
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address",
                               "127.0.0.1:0", "--no-show"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(2.0)
        for i in range(2):
            procs.append(subprocess.Popen([dask, "worker", addr, "--nworkers", "1", "--nthreads", "1", "--name",
                                           f"w{i}", "--local-directory", str(tmp_path / f"w{i}"), "--no-nanny",
                                           "--host", "127.0.0.1"], cwd=elsewhere, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(addr, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
        yield addr, procs, elsewhere
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)


def test_external_scheduler_gives_the_local_results(archive, tmp_path, external_cluster):
    addr, _, _ = external_cluster
    rows = scan_archive(archive, KEY)
    write_manifest(rows, tmp_path / "manifest.csv")
    local = run_batch(rows, tmp_path / "local", _settings(), KEY, n_workers=2, progress=None)
    (tmp_path / "key").write_text(KEY.hex())
    r = subprocess.run([sys.executable, "-m", "petfeat.cli", "extract", str(tmp_path / "manifest.csv"), "-o",
                        str(tmp_path / "remote"), "--scheduler", addr, "--backend", "cpu", "--key-file",
                        str(tmp_path / "key")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert local.done == 4 and "4 done" in r.stdout
    link = re.search(r"Dask dashboard: (http://127\.0\.0\.1:\d+/status)  \(2 workers\)", r.stderr)
    assert link, r.stderr  # the scheduler's own dashboard, which answers
    a = _sorted(pd.read_parquet(tmp_path / "local" / "features.parquet"))
    b = _sorted(pd.read_parquet(tmp_path / "remote" / "features.parquet"))
    pd.testing.assert_frame_equal(a[["study_id", "patient_id", "region", *NUMERIC]],
                                  b[["study_id", "patient_id", "region", *NUMERIC]])


def test_a_killed_worker_loses_no_study(archive, tmp_path, external_cluster):
    addr, procs, _ = external_cluster
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


def test_tables_concatenate_without_pandas_all_na_deprecation():
    import warnings

    from petfeat.batch import _concat

    a = pd.DataFrame({"study_id": ["S1"], "native_volume_ml": [None], "lesion_count": pd.array([pd.NA], "Int64"),
                      "suv": [1.5]})
    b = pd.DataFrame({"study_id": ["S2"], "native_volume_ml": [12.5], "lesion_count": pd.array([pd.NA], "Int64"),
                      "suv": [2.5]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pd.concat([a, b]) warns FutureWarning here
        got = _concat([a, b])
    assert list(got.columns) == list(a.columns)
    assert got.native_volume_ml.dtype == np.float64 and got.native_volume_ml.iloc[1] == 12.5
    assert np.isnan(got.native_volume_ml.iloc[0])
    assert str(got.lesion_count.dtype) == "Int64" and got.lesion_count.isna().all()
    assert got.suv.tolist() == [1.5, 2.5] and got.study_id.tolist() == ["S1", "S2"]
    with pytest.warns(FutureWarning, match="all-NA"):  # what the old concat did
        pd.concat([a, b], ignore_index=True)


def test_ctrl_c_stops_a_local_batch_with_one_line_and_loses_nothing(archive, tmp_path):
    """Ctrl-C in a terminal signals the whole foreground group: the workers' tracebacks stayed off the console."""
    one = tmp_path / "one"  # one study on two workers: an idle worker printed its KeyboardInterrupt at once
    shutil.copytree(archive / "SYN0001", one / "SYN0001")
    cmd = [sys.executable, "-m", "petfeat.cli", "extract", str(one), "-o", str(tmp_path / "out"), "--workers", "2",
           "--backend", "cpu", "--key-file", str(tmp_path / "k")]
    # its own process group, signalled as a terminal does (every process of the group gets SIGINT)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    err: list[str] = []
    started = threading.Event()

    def read_console():  # until EOF: the process, its workers and any child holding the pipe are gone
        for line in proc.stdout:
            err.append(line)
            if line.startswith("Dask dashboard:"):
                started.set()
        started.set()

    reader = threading.Thread(target=read_console, daemon=True)
    reader.start()
    assert started.wait(300), "the batch never started its workers"
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    reader.join(timeout=60)
    proc.stdout.close()
    console = "".join(err)
    assert proc.returncode == 130, console
    assert "interrupted" in console
    assert "Traceback" not in console and "KeyboardInterrupt" not in console, console
    # nothing lost: a rerun finishes the study
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert pd.read_parquet(tmp_path / "out" / "features.parquet").study_id.nunique() == 1


def test_two_runs_of_the_same_studies_into_two_folders_on_one_scheduler(archive, tmp_path, external_cluster):
    """Two users (or two output settings) share a cluster: each run gets its own tasks and its own parts."""
    addr, _, _ = external_cluster
    (tmp_path / "k").write_text(KEY.hex())
    runs = {name: subprocess.Popen([sys.executable, "-m", "petfeat.cli", "extract", str(archive), "-o",
                                    str(tmp_path / name), "--scheduler", addr, "--backend", "cpu", "--key-file",
                                    str(tmp_path / "k")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in ("a", "b")}  # at once: both runs' tasks are on the scheduler together
    for name, proc in runs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, (name, err[-3000:])
        assert "4 done, 0 already done, 0 failed" in out, out
        assert len(list((tmp_path / name / "parts").glob("*.features.parquet"))) == 4
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "features.parquet"),
                                  pd.read_parquet(tmp_path / "b" / "features.parquet"))


def test_gpu_backend_without_a_device_is_refused_before_a_local_batch_starts(archive, tmp_path, monkeypatch):
    from petfeat.errors import BackendError

    no_device = (False, "no CUDA driver or device found by numba.cuda")
    monkeypatch.setattr("petfeat.backend.gpu_available", lambda: no_device)
    rows = scan_archive(archive, KEY)
    settings = dataclasses.replace(_settings(), backend="gpu")
    with pytest.raises(BackendError, match="no CUDA driver or device.*backend='cpu'"):
        run_batch(rows, tmp_path / "out", settings, KEY, n_workers=2, progress=None)
    assert not (tmp_path / "out").exists()
    # on the command line: one line and exit 2, as for one study (no CUDA device in this process, simulator off)
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-m", "petfeat.cli", "extract", str(archive), "-o", str(tmp_path / "out2"),
                        "--backend", "gpu", "--key-file", str(tmp_path / "k")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("petfeat extract: error: backend='gpu' was asked for but")
    assert "Traceback" not in r.stderr
    assert "Dask dashboard" not in r.stderr and not (tmp_path / "out2" / "failures.parquet").exists()


def test_a_batch_says_which_studies_had_suv_header_decisions(archive, tmp_path):
    """A dose written in MBq is read as MBq: the batch console counts it, run.json and input_notes say what was done."""
    root = tmp_path / "arch"
    for name, dose_in_mbq in (("SYN0001", False), ("SYN0002", True)):
        shutil.copytree(archive / "SYN0001", root / name)
        for f in (root / name / "pet").glob("*.dcm"):
            ds = pydicom.dcmread(f)
            info = ds.RadiopharmaceuticalInformationSequence[0]
            if dose_in_mbq:
                info.RadionuclideTotalDose = float(info.RadionuclideTotalDose) / 1e6
                ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "MRN2", "1.2.3.4.2", "1.2.3.4.2.1"
            ds.save_as(f)
    r = subprocess.run([sys.executable, "-m", "petfeat.cli", "extract", str(root), "-o", str(tmp_path / "out"),
                        "--workers", "1", "--backend", "cpu", "--key-file", str(tmp_path / "k")], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "1 study has warnings, 1 with SUV header decisions (also in the features' input_notes)" in r.stderr
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    (sid, notes), = run["warnings"].items()
    assert any(n.startswith("SUV header decision: RadionuclideTotalDose (0018,1074) =") and "read as MBq" in n
               for n in notes), notes
    f = pd.read_parquet(tmp_path / "out" / "features.parquet")
    decided, other = f[f.study_id == sid], f[f.study_id != sid]
    assert decided.input_notes.map(lambda s: "read as MBq" in json.loads(s)["suv"][0]).all()
    assert not other.input_notes.str.contains("suv").any()
    # read as MBq and converted: the same SUVs as the study whose dose is in Bq
    cols = ["suv_mean", "suv_max", "volume_ml"]
    np.testing.assert_allclose(decided.sort_values("region")[cols].to_numpy(dtype=float),
                               other.sort_values("region")[cols].to_numpy(dtype=float), rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("status, answers", [(200, True), (404, False)])
def test_a_dashboard_link_counts_only_when_it_answers(status, answers, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # a site proxy must not stand between us and the scheduler
    """`dask scheduler --no-dashboard` still lists the dashboard's port; the page there answers 404."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server protocol
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert batch._answers(f"http://127.0.0.1:{server.server_port}/status") is answers
    finally:
        server.shutdown()
        server.server_close()
    assert batch._answers(f"http://127.0.0.1:{server.server_port}/status") is False  # nothing listens
    assert batch._answers(None) is False
