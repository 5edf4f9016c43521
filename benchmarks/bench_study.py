"""One real-sized PSMA study, stage by stage, against the cost of reading its files.

    python benchmarks/bench_study.py generate /tmp/petfeat-study          # once (~3 min, ~1 GB on disk)
    python benchmarks/bench_study.py run /tmp/petfeat-study [--repeats 3] [--out results.json]
    python benchmarks/bench_study.py workers /tmp/petfeat-study [--copies 6] [--out results.json]

``generate`` writes: PET 200 x 200 x 450 int16 at 2 mm as 450 DICOM files (``pet/``); on a CT grid of
512 x 512 x 700 at 0.977 x 0.977 x 1.5 mm, TotalSegmentator ``total``'s 117 classes and
``head_glands_cavities``' 19 as one ``<class>.nii.gz`` each (``seg/``, uint8, gzip level 1 as nibabel
writes them) and as one ``--ml`` file per task with its label table (``total.nii.gz``,
``head_glands_cavities.nii.gz``); a lesion mask on the PET grid (``lesions.nii.gz``).

``run`` times, for both label layouts, in this process (warm kernel cache) and repeated:
each stage of ``petfeat extract --pet ... --labels ... --lesions ...`` (PET read, labels, lesion
mask, label-volume table, extract), the floor measured in the same run (PET pixel bytes read +
every label file inflated into one reused buffer: what no reader can avoid), the rerun from the
label cache (:mod:`petfeat.label_cache`), ``petfeat extract``'s process start and imports, and each
layout's ``petfeat extract`` as a subprocess with its peak RSS. Medians over ``--repeats``; the load
average is recorded, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PET_SHAPE = (450, 200, 200)
PET_MM = 2.0
CT_SHAPE = (700, 512, 512)
CT_SPACING_ZYX = (1.5, 0.977, 0.977)


def _ct_origin_xyz():
    """CT grid centred on the PET field of view (LPS)."""
    pet_c = np.array([(PET_SHAPE[2] - 1), (PET_SHAPE[1] - 1), (PET_SHAPE[0] - 1)]) * PET_MM / 2
    ct_half = np.array([(CT_SHAPE[2] - 1) * CT_SPACING_ZYX[2], (CT_SHAPE[1] - 1) * CT_SPACING_ZYX[1],
                        (CT_SHAPE[0] - 1) * CT_SPACING_ZYX[0]]) / 2
    return tuple(float(v) for v in pet_c - ct_half)


def _nifti(arr: np.ndarray, spacing_zyx, origin_xyz, table: dict[int, str] | None = None):
    """A nibabel NIfTI-1 of ``arr`` (z, y, x) with the LPS geometry SimpleITK gives it, optional label table."""
    import nibabel as nib

    affine = np.diag([-spacing_zyx[2], -spacing_zyx[1], spacing_zyx[0], 1.0])  # LPS -> RAS flips x and y
    affine[:3, 3] = [-origin_xyz[0], -origin_xyz[1], origin_xyz[2]]
    img = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    if table:
        xml = ("<CaretExtension><VolumeInformation Index=\"0\"><LabelTable>"
               + "".join(f'<Label Key="{k}" Red="1" Green="0" Blue="0" Alpha="1">{v}</Label>' for k, v in table.items())
               + "</LabelTable></VolumeInformation></CaretExtension>").encode()
        img.header.extensions.append(nib.nifti1.Nifti1Extension(0, xml))
    return img


def generate(out: Path, seed: int = 0) -> None:
    """Write the study (see the module docstring)."""
    import nibabel as nib

    from petfeat.io.totalsegmentator import TASK_LABELS
    from petfeat.synth.dicom_writer import Acquisition, write_pet_series

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    seg = out / "seg"
    seg.mkdir(exist_ok=True)
    origin = _ct_origin_xyz()
    sp = np.asarray(CT_SPACING_ZYX)
    t0 = time.perf_counter()
    for task, first_z in (("total", 0.05), ("head_glands_cavities", 0.82)):
        ml = np.zeros(CT_SHAPE, np.uint8)
        for i, name in TASK_LABELS[task].items():
            lo_z = first_z if task == "total" else first_z
            hi_z = 0.80 if task == "total" else 0.95
            c = np.array([rng.uniform(lo_z, hi_z) * CT_SHAPE[0], rng.uniform(0.3, 0.7) * CT_SHAPE[1],
                          rng.uniform(0.25, 0.75) * CT_SHAPE[2]])
            r_mm = np.array([rng.uniform(10, 70), rng.uniform(8, 45), rng.uniform(8, 45)]) if task == "total" else \
                np.array([rng.uniform(4, 15)] * 3)
            r = r_mm / sp
            lo = np.maximum(np.floor(c - r).astype(int), 0)
            hi = np.minimum(np.ceil(c + r).astype(int) + 1, CT_SHAPE)
            z, y, x = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            inside = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1
            one = np.zeros(CT_SHAPE, np.uint8)
            one[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = inside
            nib.save(_nifti(one, CT_SPACING_ZYX, origin), seg / f"{name}.nii.gz")
            ml[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][inside] = i
        nib.save(_nifti(ml, CT_SPACING_ZYX, origin, TASK_LABELS[task]), out / f"{task}.nii.gz")
        print(f"{task}: {len(TASK_LABELS[task])} classes written ({time.perf_counter() - t0:.0f} s)", flush=True)
    pet_origin = (0.0, 0.0, 0.0)
    suv = rng.gamma(4.0, 0.25, PET_SHAPE)
    lesions = np.zeros(PET_SHAPE, np.uint8)
    for k in range(1, 25):
        c = [rng.uniform(0.1, 0.9) * s for s in PET_SHAPE]
        rr = rng.uniform(2, 6)
        lo = [max(int(v - rr), 0) for v in c]
        hi = [min(int(v + rr) + 1, s) for v, s in zip(c, PET_SHAPE)]
        z, y, x = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        inside = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= rr * rr
        lesions[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][inside] = k
        suv[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][inside] += rng.uniform(5, 30)
    nib.save(_nifti(lesions, (PET_MM,) * 3, pet_origin), out / "lesions.nii.gz")
    acq = Acquisition("BENCH01", "Bench^Study", 80.0, 1.8, "M", 200e6, dt.datetime(2025, 1, 6, 9, 0),
                      dt.datetime(2025, 1, 6, 10, 0))
    write_pet_series(out / "pet", suv, (PET_MM,) * 3, pet_origin, acq)
    print(f"PET written ({time.perf_counter() - t0:.0f} s)", flush=True)


def _inflater() -> str:
    from petfeat.io.labels import _inflate_zlib

    return _inflate_zlib.__name__


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def floor_s(study: Path, label_files: list[Path]) -> dict:
    """What reading the study's files costs at least: PET pixel bytes, label files inflated into one reused buffer.

    Label files are inflated by 2 threads (the inflater releases the GIL) in 1 MiB pieces, with the
    inflater the reader uses (zlib-ng when installed, else zlib); the PET slices' bytes are read once.
    """
    from concurrent.futures import ThreadPoolExecutor

    t0, c0 = time.perf_counter(), _cpu()
    n = 0
    for f in sorted((study / "pet").iterdir()):
        n += len(f.read_bytes())
    pet = time.perf_counter() - t0

    from petfeat.io.labels import _inflate_zlib  # the inflater the reader uses (zlib-ng when installed)

    def inflate(path: Path) -> int:
        d = _inflate_zlib.decompressobj(31)
        got = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                while chunk:
                    got += len(d.decompress(chunk, 1 << 20))
                    chunk = d.unconsumed_tail
        return got

    t1 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        inflated = list(pool.map(inflate, label_files))
    return {"pet_bytes_s": pet, "labels_inflate_s": time.perf_counter() - t1, "floor_s": pet + time.perf_counter() - t1,
            "floor_cpu_s": _cpu() - c0, "largest_inflated_mb": max(inflated) / 2**20}


def stages(study: Path, labels: list[Path], cache_dir: Path | None) -> dict:
    """The stages of ``petfeat extract --pet --labels --lesions`` in this process, as ``cmd_extract`` runs them."""
    from petfeat.cli import _label_table
    from petfeat.extract import extract
    from petfeat.io.dicom import read_pet_series
    from petfeat.io.labels import read_labels, read_lesion_mask
    from petfeat.regions import BUILTIN_REGIONS
    from petfeat.suv import compute_suv_factors

    t, cpu = {}, {}
    mark = [time.perf_counter(), _cpu()]

    def lap(name: str) -> None:
        now = [time.perf_counter(), _cpu()]
        t[name], cpu[name] = now[0] - mark[0], now[1] - mark[1]
        mark[:] = now

    series = read_pet_series(study / "pet")
    factors = compute_suv_factors(series.suv_header)
    lap("pet_s")
    if cache_dir is not None:
        from petfeat.label_cache import LabelCache

        cache = LabelCache(cache_dir)
        layers = [la for p in labels for la in cache.read_labels(p, series.geometry)]
    else:
        layers = [la for p in labels for la in read_labels(p, series.geometry)]
    lap("labels_s")
    lesions = read_lesion_mask(study / "lesions.nii.gz", series.geometry)
    lap("lesion_mask_s")
    _label_table(layers, series.geometry.voxel_volume_ml)
    lap("label_table_s")
    res = extract(series, layers, BUILTIN_REGIONS, lesions=lesions, backend="cpu", factors=factors,
                  id_key=bytes(32))
    lap("extract_s")
    t["total_s"] = sum(t.values())
    cpu["total_s"] = sum(cpu.values())
    t["cpu"] = cpu
    t["extract_timings"] = {k: float(v) for k, v in res.timings.items()}
    return t


def _cpu() -> float:
    """CPU seconds of this process, all threads, user + system."""
    r = os.times()
    return r.user + r.system


def process_start() -> tuple[float, float]:
    """Wall seconds of a process that imports what ``petfeat extract --pet`` imports, and its peak RSS (MB)."""
    code = ("import petfeat.cli as c; c.build_parser(); import petfeat.extract, petfeat.io.dicom, "
            "petfeat.io.labels, petfeat.suv, petfeat.regions, petfeat.label_cache")
    # timed and measured from a small parent: Linux keeps a forked child's peak RSS (this process's) across exec
    wrap = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "subprocess.run(sys.argv[1:], check=True); "
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", wrap, sys.executable, "-c", code], check=True, capture_output=True,
                          text=True)
    wall, rss = done.stdout.split()[-2:]
    return float(wall), int(rss) / 1024


def cli_run(study: Path, labels: list[Path], out: Path, extra: list[str]) -> dict:
    """``petfeat extract`` as its own process: wall time and peak RSS (``ru_maxrss`` of the child)."""
    cmd = [sys.executable, "-m", "petfeat.cli", "extract", "--pet", str(study / "pet"), "--labels",
           *map(str, labels), "--lesions", str(study / "lesions.nii.gz"), "--backend", "cpu", "-o", str(out),
           "--key-file", str(out.parent / "bench.key"), *extra]
    wrap = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrap, *cmd], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "peak_rss_mb": int(done.stdout.split()[-1]) / 1024}


def run(study: Path, repeats: int, out: str | None, cli: bool) -> dict:
    from petfeat.kernels.label_census import label_census

    label_census(np.zeros((2, 2, 8), np.uint8))  # kernels from the on-disk cache, outside the timings
    layouts = {"folder": [study / "seg"], "ml": [study / "total.nii.gz", study / "head_glands_cavities.nii.gz"]}
    layouts = {k: v for k, v in layouts.items() if all(p.exists() for p in v)}  # a study may have one layout
    files = {"folder": sorted((study / "seg").glob("*.nii.gz")), "ml": layouts.get("ml", [])}
    result = {"benchmark": "study", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "python": platform.python_version(), "repeats": repeats, "load_before": _load(), "layouts": {},
              "inflater": _inflater()}
    stages(study, next(iter(layouts.values())), None)  # warm: first-call costs (imports, kernels) outside the timings
    for name, labels in layouts.items():
        runs, floors, cached = [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(repeats):
                floors.append(floor_s(study, files[name] + [study / "lesions.nii.gz"]))
                runs.append(stages(study, labels, None))
            cache = Path(tmp) / "cache"
            stages(study, labels, cache)  # fills the cache
            for _ in range(repeats):
                cached.append(stages(study, labels, cache))
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k.endswith("_s")}
        fl = {k: statistics.median(f[k] for f in floors) for k in floors[0]}
        rerun = {k: statistics.median(r[k] for r in cached) for k in cached[0] if k.endswith("_s")}
        med_cpu = {k: statistics.median(r["cpu"][k] for r in runs) for k in runs[0]["cpu"]}
        entry = {"stages_median_s": med, "stages_cpu_median_s": med_cpu,
                 "whole_over_floor_cpu": med_cpu["total_s"] / fl["floor_cpu_s"] if fl["floor_cpu_s"] else float("nan"),
                 "stages_all": runs,
                 "floor_median": fl, "floors_all": floors,
                 "whole_over_floor": med["total_s"] / fl["floor_s"], "rerun_median_s": rerun,
                 "rerun_speedup_labels": med["labels_s"] / rerun["labels_s"],
                 "rerun_speedup_total": med["total_s"] / rerun["total_s"]}
        result["layouts"][name] = entry
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in med.items()) + f"; floor {fl['floor_s']:.3f} s "
              f"(PET {fl['pet_bytes_s']:.3f}, labels {fl['labels_inflate_s']:.3f}); whole / floor "
              f"{entry['whole_over_floor']:.2f} (CPU {med_cpu['total_s']:.2f} s / {fl['floor_cpu_s']:.2f} s = "
              f"{entry['whole_over_floor_cpu']:.2f}; labels CPU {med_cpu['labels_s']:.2f} s); rerun "
              f"{rerun['total_s']:.3f} s (labels {rerun['labels_s']:.3f} s, "
              f"{entry['rerun_speedup_labels']:.0f}x; whole {entry['rerun_speedup_total']:.1f}x)", flush=True)
    runs = [process_start() for _ in range(repeats)]
    starts = [r[0] for r in runs]
    result["process_start_s"] = {"median": statistics.median(starts), "all": starts}
    result["imports_rss_mb"] = statistics.median(r[1] for r in runs)
    print(f"process start + imports: median {statistics.median(starts):.2f} s "
          f"({', '.join(f'{s:.2f}' for s in starts)}); peak RSS after imports {result['imports_rss_mb']:.0f} MB")
    if cli:
        with tempfile.TemporaryDirectory() as tmp:
            for name, labels in layouts.items():
                r = cli_run(study, labels, Path(tmp) / name, ["--no-label-cache"])
                result["layouts"][name]["cli"] = r
                print(f"petfeat extract ({name}, no label cache): {r['wall_s']:.2f} s, peak RSS "
                      f"{r['peak_rss_mb']:.0f} MB", flush=True)
    result["load_after"] = _load()
    if out:
        Path(out).write_text(json.dumps(result, indent=1))
    return result


def workers(study: Path, copies: int, counts: list[int], out: str | None) -> dict:
    """Archive rate of ``copies`` hard-linked copies of the study (folder layout) with 1 and 2 local Dask workers.

    The copies lie beside the study (label files hard-linked: the same file system) and are removed after;
    each copy's PET files are written again with their own patient and UIDs, so each is a study of its own.
    The label cache is off (``PETFEAT_LABEL_CACHE=off``): every study reads its labels.
    """
    import shutil

    from petfeat.batch import BatchSettings, run_batch
    from petfeat.io.archive import scan_archive
    from petfeat.regions import BUILTIN_REGIONS

    os.environ["PETFEAT_LABEL_CACHE"] = "off"
    root = study.parent / f".bench-archive-{os.getpid()}"
    result = {"benchmark": "study-workers", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "cpus": os.cpu_count(), "copies": copies, "load_before": _load(), "runs": []}
    try:
        import pydicom
        from pydicom.uid import generate_uid

        for i in range(copies):
            dst = root / f"S{i + 1}"
            dst.mkdir(parents=True)
            shutil.copytree(study / "seg", dst / "seg", copy_function=os.link)
            os.link(study / "lesions.nii.gz", dst / "lesions.nii.gz")
            (dst / "pet").mkdir()
            uids = {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(),
                    "FrameOfReferenceUID": generate_uid()}
            for f in sorted((study / "pet").iterdir()):  # a study of its own: its own patient and UIDs
                ds = pydicom.dcmread(f)
                for k, v in uids.items():
                    setattr(ds, k, v)
                ds.SOPInstanceUID = generate_uid()
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.PatientID = f"BENCH{i + 1:02d}"
                ds.save_as(dst / "pet" / f.name)
        rows = scan_archive(root, bytes(32))
        settings = BatchSettings(regions=BUILTIN_REGIONS, backend="cpu")
        with tempfile.TemporaryDirectory() as tmp:
            for n in counts:
                t0 = time.perf_counter()
                rep = run_batch(rows, Path(tmp) / f"out{n}", settings, bytes(32), n_workers=n, progress=None)
                wall = time.perf_counter() - t0
                run = {"workers": n, "wall_s": wall, "studies_per_min": len(rows) / wall * 60, "done": rep.done,
                       "failed": rep.failed, "per_study_median": rep.timings["per_study_median"]}
                result["runs"].append(run)
                print(json.dumps(run), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = result["runs"][0]["studies_per_min"]
    for r in result["runs"]:
        r["speedup_vs_first"] = r["studies_per_min"] / base
        print(f"{r['workers']} worker(s): {r['studies_per_min']:.2f} studies/min ({r['speedup_vs_first']:.2f}x)")
    result["load_after"] = _load()
    if out:
        Path(out).write_text(json.dumps(result, indent=1))
    return result


def main(argv=None):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("study", type=Path)
    r = sub.add_parser("run")
    r.add_argument("study", type=Path)
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--no-cli", action="store_true", help="skip the petfeat extract subprocesses (peak RSS)")
    r.add_argument("--out")
    w = sub.add_parser("workers", help="archive rate of hard-linked copies of the study, 1 and 2 workers")
    w.add_argument("study", type=Path)
    w.add_argument("--copies", type=int, default=6)
    w.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    w.add_argument("--out")
    a = p.parse_args(argv)
    if a.cmd == "generate":
        generate(a.study)
    elif a.cmd == "workers":
        workers(a.study, a.copies, a.workers, a.out)
    else:
        run(a.study, a.repeats, a.out, not a.no_cli)


if __name__ == "__main__":
    main()
