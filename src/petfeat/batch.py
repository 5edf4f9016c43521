"""Whole archives on Dask: one task per study, local or on an existing cluster, nothing lost.

Each task reads one study, extracts its features and lesions and writes them as its own Parquet
parts, atomically (temporary file + rename), under ``OUT/parts/``. A study that fails writes a
failure record instead; the task itself never raises, so one bad study never stops the batch. The
part names are a hash of the study's inputs (paths, file sizes and times) and of the settings, so a
rerun of the same command skips finished studies and retries failed ones. At the end the parts of
this run are consolidated into ``features.parquet``, ``lesions.parquet``, ``failures.parquet`` and
``run.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from petfeat.io.archive import StudyRow
from petfeat.io.atomic import atomic_write

FAILURE_COLUMNS = ("study_id", "pet_path", "error_class", "message")


@dataclass
class BatchSettings:
    """What determines the numbers of a batch run (hashed into every part's name)."""

    regions: dict
    backend: str = "auto"
    suv_type: str = "bw"
    connectivity: int = 26
    min_lesion_ml: float = 0.0
    threshold: dict | None = None
    peaks: bool = True
    resample: str = "nearest"
    #: SUVpeak sphere neighbours: "image" (IBSI) or "region" (see petfeat.extract.extract).
    peak_neighbours: str = "image"
    #: A region that matches no label fails the study (LabelError) instead of a warning.
    strict: bool = False

    def as_dict(self) -> dict:
        """Plain dictionary (JSON-ready)."""
        return dict(self.__dict__)

    def digest(self) -> str:
        """Hash of the settings."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class BatchReport:
    """Outcome of a batch run."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    outputs: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    dashboard: str | None = None


def _stat_signature(path: Path) -> list:
    if not path.exists():
        return [str(path), None]
    if path.is_file():
        st = path.stat()
        return [str(path), st.st_size, st.st_mtime_ns]
    sig = [str(path)]
    with os.scandir(path) as it:
        for e in sorted(it, key=lambda e: e.name):
            if e.is_file():
                st = e.stat()
                sig.append((e.name, st.st_size, st.st_mtime_ns))
            elif e.is_dir():
                sig.append(_stat_signature(Path(e.path)))
    return sig


def study_key(row: StudyRow, settings: BatchSettings) -> str:
    """Key of a study's parts: its inputs (paths, sizes, times) and the settings."""
    sig = [settings.digest(), row.study_id, row.series_uid, _stat_signature(Path(row.pet_path)),
           [_stat_signature(Path(p)) for p in row.labels], _stat_signature(Path(row.lesions)) if row.lesions else None]
    return hashlib.sha256(json.dumps(sig, default=str).encode()).hexdigest()[:20]


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda f: df.to_parquet(f, index=False))


def _atomic_json(obj: dict, path: Path) -> None:
    atomic_write(path, lambda f: Path(f).write_text(json.dumps(obj, default=str)))


def _limit_threads(threads: int) -> None:
    """One task per core is the batch's parallelism: keep Numba and SimpleITK from oversubscribing."""
    import numba
    import SimpleITK as sitk

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, threads))


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak_rss() -> float | None:
    """Reset the process's peak RSS (Linux ``clear_refs``) and return the RSS now (MB); None elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _proc_status_mb("VmRSS")


def _peak_rss(start: float | None) -> tuple[float | None, float | None]:
    """Peak RSS since :func:`_reset_peak_rss`, and that minus the RSS then (MB): all memory, SimpleITK's included.

    Memory the allocator kept from an earlier study is reused without raising RSS, so the
    difference is a lower bound per study; ``peak_traced_mb`` (tracemalloc: NumPy and Python, with
    ``trace_memory``) is the other view.
    """
    hwm = _proc_status_mb("VmHWM")
    return hwm, None if start is None or hwm is None else max(0.0, hwm - start)


def run_study(row: StudyRow, settings: BatchSettings, out: str, key_hex: str, threads: int = 1,
              trace_memory: bool = False) -> dict:
    """Process one study (runs on a worker); never raises. Returns a small status record.

    ``threads`` bounds Numba's and SimpleITK's threads inside the task (default 1: one task per core).
    ``trace_memory`` adds ``peak_traced_mb`` (tracemalloc) to the timings; it makes reading the
    DICOM series about 10x slower (every Python object pydicom makes is traced), so it is off
    unless asked for. The peak RSS is always measured.
    """
    _limit_threads(threads)
    parts = Path(out) / "parts"
    key = study_key(row, settings)
    feat_path, fail_path = parts / f"{key}.features.parquet", parts / f"{key}.failure.json"
    if feat_path.exists():
        return {"study_id": row.study_id, "key": key, "status": "skipped"}
    if fail_path.exists():
        fail_path.unlink()  # a rerun retries failed studies
    t = {}
    t0 = time.perf_counter()
    rss_start = _reset_peak_rss()
    if trace_memory:
        tracemalloc.start()
    try:
        from petfeat.extract import extract
        from petfeat.io.dicom import read_pet_series
        from petfeat.io.labels import read_labels, read_lesion_mask
        from petfeat.suv import compute_suv_factors

        if row.match_status.startswith(("no_pet_series", "several_pet_series")):
            from petfeat.errors import DicomSeriesError

            raise DicomSeriesError(f"{row.pet_path}: {row.match_status.replace('_', ' ')}.")
        series = read_pet_series(row.pet_path, series_uid=row.series_uid or None)
        t["read_s"] = time.perf_counter() - t0
        factors = compute_suv_factors(series.suv_header)
        t["suv_s"] = time.perf_counter() - t0 - sum(t.values())
        layers = []
        for p in row.labels:
            layers.extend(read_labels(p, series.geometry, mode=settings.resample))
        lesions = read_lesion_mask(row.lesions, series.geometry) if row.lesions else None
        t["labels_s"] = time.perf_counter() - t0 - sum(t.values())
        res = extract(series, layers, settings.regions, lesions=lesions, threshold=settings.threshold,
                      connectivity=settings.connectivity, min_lesion_ml=settings.min_lesion_ml,
                      backend=settings.backend, suv_type=settings.suv_type, factors=factors, peaks=settings.peaks,
                      peak_neighbours=settings.peak_neighbours, strict=settings.strict, id_key=bytes.fromhex(key_hex))
        t["kernel_s"] = time.perf_counter() - t0 - sum(t.values())
        raw_bytes = series.stored.nbytes
        for df in (res.features, res.lesions):
            df.insert(0, "study_id", row.study_id)
        parts.mkdir(parents=True, exist_ok=True)
        _atomic_parquet(res.lesions, parts / f"{key}.lesions.parquet")
        t["write_s"] = time.perf_counter() - t0 - sum(t.values())
        hwm, over_start = _peak_rss(rss_start)
        t.update(total_s=time.perf_counter() - t0, raw_pixel_mb=raw_bytes / 1e6, peak_rss_over_start_mb=over_start,
                 peak_rss_mb=hwm)
        if trace_memory:
            t["peak_traced_mb"] = tracemalloc.get_traced_memory()[1] / 1e6
        suv = {"units": factors.units, "suv_bw_factor": float(factors.suv_bw_per_slice[0]),
               "sul_factor": factors.sul_factor, "uptake_seconds": factors.uptake_seconds,
               "scan_time_source": factors.scan_time_source, "warnings": factors.warnings}
        _atomic_json({"study_id": row.study_id, **t, "suv": suv}, parts / f"{key}.timing.json")
        _atomic_parquet(res.features, feat_path)  # last: its presence marks the study done
        return {"study_id": row.study_id, "key": key, "status": "done", "timings": t, "suv": suv}
    except Exception as exc:  # noqa: BLE001 - every failure becomes a record, never a stopped batch
        parts.mkdir(parents=True, exist_ok=True)
        rec = {"study_id": row.study_id, "pet_path": row.pet_path, "error_class": type(exc).__name__,
               "message": str(exc)}
        _atomic_json(rec, fail_path)
        return {"study_id": row.study_id, "key": key, "status": "failed", "error": rec}
    finally:
        if trace_memory:
            tracemalloc.stop()


def _client(scheduler: str | None, n_workers: int | None, backend: str):
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler, timeout="30s"), None
    if backend == "gpu":
        try:
            from dask_cuda import LocalCUDACluster

            cluster = LocalCUDACluster(threads_per_worker=1, silence_logs=logging.ERROR, dashboard_address=":0")
            return Client(cluster), cluster
        except ImportError:
            n_workers = 1  # one GPU worker without dask-cuda
    n = n_workers or os.cpu_count() or 1
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, silence_logs=logging.ERROR,
                           dashboard_address=":0")
    return Client(cluster), cluster


def run_batch(rows: list[StudyRow], out: str | Path, settings: BatchSettings, key: bytes, *,
              scheduler: str | None = None, n_workers: int | None = None, threads_per_task: int = 1,
              trace_memory: bool = False, progress=sys.stderr) -> BatchReport:
    """Run every study on Dask and consolidate the outputs (see module docstring).

    Parameters
    ----------
    rows : list of StudyRow
        Studies (from :func:`petfeat.io.archive.read_manifest` or ``scan_archive``).
    out : path
        Output folder.
    settings : BatchSettings
        Extraction settings.
    key : bytes
        Pseudonymisation key.
    scheduler : str, optional
        Address of an existing Dask scheduler (``tcp://host:port``); default: a local cluster.
    n_workers : int, optional
        Workers of the local cluster (default: the number of cores).
    threads_per_task : int
        Numba/SimpleITK threads inside each task (1: the workers are the parallelism).
    trace_memory : bool
        Also trace each study's Python and NumPy allocations (``peak_traced_mb``; slows reading, see
        :func:`run_study`). Not part of the settings: it changes no number, so it does not change part names.
    progress : file-like or None
        Where the progress line goes.
    """
    from distributed import as_completed

    out = Path(out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    client, cluster = _client(scheduler, n_workers, settings.backend)
    report = BatchReport(dashboard=client.dashboard_link)
    try:
        if progress:
            print(f"Dask dashboard: {client.dashboard_link}  ({len(client.scheduler_info()['workers'])} workers)",
                  file=progress, flush=True)
        futures = client.map(run_study, rows, settings=settings, out=str(out), key_hex=key.hex(),
                             threads=threads_per_task, trace_memory=trace_memory,
                             key=[f"study-{study_key(r, settings)}" for r in rows], retries=2, pure=False)
        results = []
        for i, fut in enumerate(as_completed(futures), start=1):
            try:
                res = fut.result()
            except Exception as exc:  # noqa: BLE001 - a task that died past its retries
                res = {"status": "failed", "error": {"study_id": "?", "pet_path": "?",
                                                     "error_class": type(exc).__name__, "message": str(exc)}}
            results.append(res)
            setattr(report, res["status"], getattr(report, res["status"]) + 1)
            if progress:
                rate = i / max(time.perf_counter() - t0, 1e-9) * 60
                print(f"\rstudies {i}/{len(rows)}: {report.done} done, {report.skipped} skipped, {report.failed} "
                      f"failed ({rate:.1f}/min)", end="", file=progress, flush=True)
        if progress:
            print(file=progress)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    report.outputs = consolidate(out, [r["key"] for r in results if "key" in r])
    stage = pd.DataFrame([r["timings"] for r in results if r.get("timings")])
    report.timings = {"wall_s": time.perf_counter() - t0,
                      "per_study_median": stage.median().to_dict() if len(stage) else {},
                      "per_study_sum": stage.sum().to_dict() if len(stage) else {}}
    _write_run_json(out, settings, report, len(rows), scheduler)
    return report


def consolidate(out: Path, keys: list[str]) -> dict:
    """Concatenate this run's parts into the final tables (atomically)."""
    parts = out / "parts"
    outputs = {}
    for name in ("features", "lesions"):
        frames = [pd.read_parquet(p) for k in keys if (p := parts / f"{k}.{name}.parquet").exists()]
        frames = [f for f in frames if len(f)]
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        _atomic_parquet(df, out / f"{name}.parquet")
        outputs[name] = len(df)
    fails = [json.loads(p.read_text()) for k in keys if (p := parts / f"{k}.failure.json").exists()]
    _atomic_parquet(pd.DataFrame(fails, columns=list(FAILURE_COLUMNS)), out / "failures.parquet")
    outputs["failures"] = len(fails)
    return outputs


def _write_run_json(out: Path, settings: BatchSettings, report: BatchReport, n: int, scheduler: str | None) -> None:
    import dask
    import numba
    import numpy
    import pydicom
    import SimpleITK

    from petfeat import __version__

    run = {"petfeat_version": __version__, "settings": settings.as_dict(), "settings_digest": settings.digest(),
           "scheduler": scheduler or "local", "studies": n, "done": report.done, "skipped": report.skipped,
           "failed": report.failed, "outputs": report.outputs, "timings": report.timings,
           "versions": {"numpy": numpy.__version__, "numba": numba.__version__, "dask": dask.__version__,
                        "pydicom": pydicom.__version__, "SimpleITK": SimpleITK.Version.VersionString()}}
    _atomic_json(run, out / "run.json")
