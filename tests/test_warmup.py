"""Compiling on a fresh install: the SUVpeak kernel in a helper process, the batch's kernels once before its workers.

Each test that needs an empty kernel cache runs Python in a subprocess with ``NUMBA_CACHE_DIR`` set to
a new folder (Numba reads it at import), so this process's cache is not touched.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

from petfeat.batch import BatchSettings, run_batch
from petfeat.io.archive import scan_archive
from petfeat.regions import BUILTIN_REGIONS

KEY = bytes(range(32))

_HELPER_THEN_LOAD = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from numba.core import event
    from petfeat.features import sphere_offsets
    from petfeat.kernels import warmup
    from petfeat.kernels.peak_cpu import suv_peak_cpu

    spacing, nx = (2.0, 2.0, 2.0), 40  # rows of 40 uint8 codes: whole 64-bit words, the word-scan boxes
    out = {"cached_before": warmup.peak_cached(np.int16, spacing)}
    out["started"] = warmup.start_peak_compile(np.int16, spacing, nx)
    out["started_again"] = warmup.start_peak_compile(np.int16, spacing, nx)  # one helper at a time
    compiled = []

    class Listener(event.Listener):
        def on_start(self, ev):
            compiled.append(ev.data["dispatcher"].py_func.__name__)

        def on_end(self, ev):
            pass

    event.register("numba:compile", Listener())
    rng = np.random.default_rng(5)
    shape = (12, 9, nx)  # a study of other sizes than the helper's volume, same types
    stored = rng.integers(0, 3000, shape).astype(np.int16)
    codes = np.zeros(shape, np.uint8)
    codes[2:9, 1:7, 5:30] = 1
    codes[4:6, 3:5, 10:14] = 2
    values = stored * 1e-3
    ptr, flat = np.array([0, 0, 1, 2], np.int64), np.array([0, 1], np.int64)
    rmax = np.array([values[codes == c].max() for c in (1, 2)])
    glob, loc = suv_peak_cpu(stored, codes, np.full(12, 1e-3), np.zeros(12), sphere_offsets(spacing), ptr, flat,
                             rmax, 2)
    out.update(cached_after=warmup.peak_cached(np.int16, spacing), compiled=compiled,
               other_pixels_cached=warmup.peak_cached(np.float32, spacing), glob=glob.tolist(), loc=loc.tolist())
    print(json.dumps(out))
""")


def _fresh_cache_env(tmp_path):
    return {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}


def test_the_helper_compiles_the_peak_kernel_this_process_then_loads(tmp_path):
    """Empty cache: the helper starts once, and after it the study's SUVpeak compiles nothing of the separable
    kernel (loaded from the cache the helper wrote); float32 pixels are still not cached; the peaks are the
    same as in this process (warm cache)."""
    import numpy as np
    from petfeat.kernels.peak_cpu import suv_peak_cpu

    from petfeat.features import sphere_offsets

    run = subprocess.run([sys.executable, "-c", _HELPER_THEN_LOAD], env=_fresh_cache_env(tmp_path),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.splitlines()[-1])
    assert (got["cached_before"], got["started"], got["started_again"]) == (False, True, False)
    assert got["cached_after"] and not got["other_pixels_cached"]
    assert not {"_peak_chunks", "_nonzero_box_chunks", "_sphere_slice", "_disc_sums"} & set(got["compiled"]), \
        got["compiled"]
    rng = np.random.default_rng(5)
    shape = (12, 9, 40)
    stored = rng.integers(0, 3000, shape).astype(np.int16)
    codes = np.zeros(shape, np.uint8)
    codes[2:9, 1:7, 5:30] = 1
    codes[4:6, 3:5, 10:14] = 2
    values = stored * 1e-3
    rmax = np.array([values[codes == c].max() for c in (1, 2)])
    glob, loc = suv_peak_cpu(stored, codes, np.full(12, 1e-3), np.zeros(12), sphere_offsets((2.0, 2.0, 2.0)),
                             np.array([0, 0, 1, 2], np.int64), np.array([0, 1], np.int64), rmax, 2)
    assert got["glob"] == glob.tolist() and got["loc"] == loc.tolist()


def test_no_helper_when_the_kernel_is_cached_or_jit_is_off(monkeypatch):
    """This process's cache holds the int16 kernel once any test ran SUVpeak on int16 pixels; with
    NUMBA_DISABLE_JIT nothing is started either."""
    import numpy as np
    from petfeat.kernels import warmup

    warmup.compile_peak(np.int16, (2.0, 2.0, 2.0), 16)
    assert warmup.peak_cached(np.int16, (2.0, 2.0, 2.0))
    assert warmup.start_peak_compile(np.int16, (2.0, 2.0, 2.0), 200) is False
    monkeypatch.setenv("NUMBA_DISABLE_JIT", "1")
    monkeypatch.setattr(warmup, "peak_cached", lambda *a: False)
    assert warmup.start_peak_compile(np.int16, (2.0, 2.0, 2.0), 200) is False
    warmup.wait_peak_compile()  # nothing to wait for: returns at once


def _batch_recording_this_process(synth_archive, tmp_path, monkeypatch, cached: bool, done_before: int = 0):
    """Run a batch with the kernel cache said to be ``cached``; the studies ``run_study`` ran in this process.

    ``done_before``: the first studies whose parts are already there (a rerun); the others are done now.
    """
    from petfeat.kernels import warmup

    import petfeat.batch as batch

    src, _ = synth_archive
    rows = scan_archive(src, KEY)
    if done_before:
        monkeypatch.setattr(warmup, "kernels_cached", lambda: True)
        run_batch(rows[:done_before], tmp_path / "out", BatchSettings(regions=BUILTIN_REGIONS, backend="cpu"), KEY,
                  n_workers=1, progress=None)
    monkeypatch.setattr(warmup, "kernels_cached", lambda: cached)
    ran_here, real = [], batch.run_study

    def recorded(row, *args, **kwargs):  # the workers run a pickled copy: their calls are not recorded here
        res = real(row, *args, **kwargs)
        if res["status"] != "skipped":  # a study with its parts is recognised here, without work
            ran_here.append(row.study_id)
        return res

    monkeypatch.setattr(batch, "run_study", recorded)
    log = io.StringIO()
    rep = run_batch(rows, tmp_path / "out", BatchSettings(regions=BUILTIN_REGIONS, backend="cpu"), KEY,
                    n_workers=2, progress=log)
    assert (rep.done, rep.skipped, rep.failed) == (len(rows) - done_before, done_before, 0)
    return rows, ran_here, log.getvalue()


def test_a_fresh_install_batch_runs_its_first_study_before_the_workers_start(synth_archive, tmp_path, monkeypatch):
    """With no compiled kernel in the cache, the batch says so and runs the first study in this process (its
    kernels reach the cache the local workers share), the rest on the workers: every study done once."""
    rows, ran_here, log = _batch_recording_this_process(synth_archive, tmp_path, monkeypatch, cached=False)
    assert ran_here == [rows[0].study_id]
    assert "compiling petfeat's kernels for this machine on the first study" in log


def test_the_study_run_here_is_one_with_work_to_do(synth_archive, tmp_path, monkeypatch):
    """A rerun on a cold cache whose first study is done compiles on the first study that is not."""
    rows, ran_here, log = _batch_recording_this_process(synth_archive, tmp_path, monkeypatch, cached=False,
                                                        done_before=1)
    assert ran_here == [rows[1].study_id] and "on the first study" in log


def test_with_cached_kernels_every_study_goes_to_the_workers(synth_archive, tmp_path, monkeypatch):
    _, ran_here, log = _batch_recording_this_process(synth_archive, tmp_path, monkeypatch, cached=True)
    assert ran_here == [] and "on the first study" not in log


def test_the_progress_rate_leaves_out_the_study_that_compiled_the_kernels(monkeypatch):
    """After the first study ran here (compiling), rate and ETA count only the studies after it."""
    import petfeat.batch as batch

    clock = iter([0.0, 40.0, 50.0])  # start; the first study done at 40 s (restart); two more by 50 s
    monkeypatch.setattr(batch.time, "perf_counter", lambda: next(clock))
    log = io.StringIO()
    bar = batch._Progress(log, 6, every=0.0)
    bar.restart(1)
    bar.update(3, batch.BatchReport(done=3))
    assert log.getvalue().strip() == "studies 3/6: 3 done, 0 skipped, 0 failed (12.0/min, ETA 15 s)"


def test_a_helper_still_compiling_when_the_command_exits_is_stopped(tmp_path):
    """A study that fails before its SUVpeak leaves the helper compiling: it is stopped when the process exits."""
    code = ("import numpy as np; from petfeat.kernels import warmup; "
            "assert warmup.start_peak_compile(np.int16, (2.0, 2.0, 2.0), 16); print(warmup._helper.pid)")
    run = subprocess.run([sys.executable, "-c", code], env=_fresh_cache_env(tmp_path), capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    pid = int(run.stdout.split()[-1])
    try:
        os.kill(pid, 0)
        alive = not open(f"/proc/{pid}/stat").read().split()[2] == "Z"  # a zombie of a reaped parent is gone soon
    except (ProcessLookupError, FileNotFoundError):
        alive = False
    assert not alive
