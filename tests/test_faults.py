"""End to end on the fault-injection archive: scan and extract through the CLI, in a subprocess.

Every study ends in exactly one of features or failures with a reason naming the file or field, the
exit status is 3, the console holds no traceback and no archive folder name, and a second run does
no work for finished studies. Once on a local cluster (2 workers) and once on a loopback
``dask scheduler`` with two ``dask worker`` processes running in another working directory.

The runs are shared by the tests of a cluster kind; under pytest-xdist the first process to need a
run makes it (a file lock in pytest's shared temporary folder) and the others read its record.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from petfeat.synth.faults import generate_fault_archive

KEY = bytes(range(32)).hex()
KINDS = ("local", "external")
_MAIN = "import sys; from petfeat.cli import main; sys.exit(main(sys.argv[1:]))"

def _cli(args: list[str], cwd: Path, key: Path, timeout: float = 240) -> dict:
    env = {**os.environ, "PETFEAT_KEY_FILE": str(key)}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _MAIN, *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    return {"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr, "wall_s": time.perf_counter() - t0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _external_cluster(work: Path):
    """Start a loopback scheduler and two workers (in another working directory); returns (address, procs)."""
    dask = shutil.which("dask")
    assert dask, "the 'dask' command (from distributed) is missing; install petfeat's dependencies"
    port = _free_port()
    elsewhere = work / "workers_cwd"
    elsewhere.mkdir()
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address",
                               "127.0.0.1:0", "--no-show"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    addr = f"tcp://127.0.0.1:{port}"
    for i in range(2):
        procs.append(subprocess.Popen([dask, "worker", addr, "--nthreads", "1", "--name", f"w{i}", "--no-nanny",
                                       "--host", "127.0.0.1", "--local-directory", str(work / f"w{i}")],
                                      cwd=elsewhere, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    from distributed import Client

    with Client(addr, timeout="30s") as c:
        c.wait_for_workers(2, timeout=60)
    return addr, procs


def _once(shared: Path, name: str, make) -> dict:
    """``make()``'s JSON record, made by the first test process that asks for it (a file lock)."""
    done = shared / f"{name}.json"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done.exists():
                done.write_text(json.dumps(make(), default=str))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return json.loads(done.read_text())


def _scan(work: Path) -> dict:
    """Generate the archive and scan it: the expected outcomes, the manifest, the console."""
    archive = work / "archive"
    expected = generate_fault_archive(archive)
    key = work / "petfeat.key"
    key.write_text(KEY + "\n")
    os.chmod(key, 0o600)
    scan = _cli(["scan", str(archive), "-o", str(work / "manifest.csv"), "--key-file", str(key)], work, key)
    with open(work / "manifest.csv", newline="") as f:
        manifest = list(csv.DictReader(f))
    return {"archive": str(archive), "expected": expected, "scan": scan, "manifest": manifest,
            "manifest_path": str(work / "manifest.csv"), "key": str(key)}


def _extract(kind: str, work: Path, arch: dict) -> dict:
    """Extract the manifest twice on one cluster kind; the record of what happened."""
    work.mkdir()
    key = Path(arch["key"])
    rec = {}
    procs = []
    try:
        if kind == "external":
            addr, procs = _external_cluster(work)
            where = ["--scheduler", addr]
        else:
            where = ["--workers", "2"]
        args = ["extract", arch["manifest_path"], "-o", "out", "--backend", "cpu", "--key-file", str(key), *where]
        rec["first"] = _cli(args, work, key)
        out = work / "out"
        rec["features"] = sorted(pd.read_parquet(out / "features.parquet").study_id.unique())
        rec["failures"] = pd.read_parquet(out / "failures.parquet").to_dict("records")
        rec["second"] = _cli(args, work, key)
        rec["failures_second"] = pd.read_parquet(out / "failures.parquet").to_dict("records")
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)
    return rec


@pytest.fixture(scope="module", params=KINDS)
def e2e(request, tmp_path_factory) -> dict:
    """One archive per test run, extracted once per cluster kind (shared across xdist processes)."""
    base = tmp_path_factory.getbasetemp()
    # xdist processes have their own base under the run's common one; a plain run uses its own base
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "petfeat_faults_e2e"
    shared.mkdir(exist_ok=True)
    arch = _once(shared, "archive", lambda: _scan(shared))
    kind = request.param
    return {**arch, **_once(shared, kind, lambda: _extract(kind, shared / kind, arch))}


def _counts(stdout: str) -> tuple[int, int, int]:
    m = re.search(r"(\d+) done, (\d+) already done, (\d+) failed", stdout)
    assert m, stdout
    return tuple(int(g) for g in m.groups())


def _folder(row: dict, archive: str) -> str:
    study = row.get("study_path") or row["pet_path"]
    return Path(study).relative_to(archive).parts[0]


def _studies(rec: dict, folder: str) -> list[str]:
    return [r["study_id"] for r in rec["manifest"] if _folder(r, rec["archive"]) == folder]


def test_console_exit_status_and_rerun(e2e):
    rec = e2e
    assert rec["scan"]["rc"] == 0, rec["scan"]["stderr"]
    assert sorted(rec["expected"]) == sorted(p.values[0] if hasattr(p, "values") else p for p in _expected_cases())
    first, second = rec["first"], rec["second"]
    assert first["rc"] == 3, first["stderr"][-3000:]
    assert second["rc"] == 3, second["stdout"][-2000:] + second["stderr"][-3000:]
    for run in (rec["scan"], first, second):
        assert "Traceback" not in run["stdout"] + run["stderr"]
    # no archive folder name on the console or in the failures (files are named relative to <study_id>)
    console = first["stdout"] + first["stderr"] + second["stdout"] + second["stderr"]
    blob = console + json.dumps(rec["failures"])
    for folder in rec["expected"]:
        assert folder not in blob
    assert rec["archive"] not in blob
    # every study of the manifest in exactly one table
    ids = {r["study_id"] for r in rec["manifest"]}
    failed = {f["study_id"] for f in rec["failures"]}
    assert ids == set(rec["features"]) | failed and not set(rec["features"]) & failed
    assert len(rec["failures"]) == len(failed)
    # the second run does no work for the studies that succeeded, and retries the failures
    done1, skipped1, failed1 = _counts(first["stdout"])
    done2, skipped2, failed2 = _counts(second["stdout"])
    assert (skipped1, done2, skipped2) == (0, 0, done1) and failed2 == failed1 == len(failed)
    assert rec["failures_second"] == rec["failures"]
    assert first["wall_s"] < 120 and second["wall_s"] < 60


def _expected_cases():
    from petfeat.synth import faults

    cases = [*faults.HEALTHY, "truncated_slice", "zero_byte_last_slice", "zero_byte_middle_slice",
             "flipped_meta_byte", "missing_weight", "rows_columns_65535", "label_gzip_truncated",
             "lesion_mask_truncated", "label_size_bomb", "symlink_loops", "fifo_in_folder", "duplicate_a",
             "duplicate_b", "no_dicom", "lesions_off_view", "labels_off_view", "ac_and_nac", "two_time_points"]
    return cases


@pytest.mark.parametrize("folder", _expected_cases())
def test_each_study_ends_where_it_should(e2e, folder):
    rec = e2e
    want = rec["expected"][folder]
    ids = _studies(rec, folder)
    assert len(ids) == want["studies"], (folder, ids)
    fails = {f["study_id"]: f for f in rec["failures"]}
    for sid in ids:
        if want["outcome"] == "features":
            assert sid in rec["features"] and sid not in fails, fails.get(sid)
            continue
        assert sid in fails and sid not in rec["features"], f"{folder}: {sid} gave features"
        f = fails[sid]
        if want["error_class"]:
            assert f["error_class"] == want["error_class"], f
        for fragment in want["message"]:  # the file or field at fault
            assert fragment.lower() in f["message"].lower(), f
