"""Label reading on a CT grid: where a TotalSegmentator folder's time goes, and the census against NumPy.

    python benchmarks/bench_label_census.py [--ct 600 512 512] [--classes 12] [--repeats 3] [--out results.json]

Writes a TotalSegmentator-style folder (one gzipped uint8 NIfTI per class, each an organ-sized
ellipsoid on a 0.98 x 0.98 x 1.5 mm CT grid) and one multilabel map of the same classes (as
``--ml`` writes). For every file it times, interleaved, best of ``--repeats``: reading it
(``sitk.ReadImage``: decompression), the label census (:func:`petfeat.kernels.label_census`) and
NumPy's census as petfeat did it before (slab-wise ``np.bincount`` plus ``any`` per axis for the
box), checking that both agree; then the whole ``read_totalsegmentator_folder`` onto a 4 mm PET grid (its
files decompressed by SimpleITK's thread budget of readers at a time, by default one per core).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from petfeat.kernels.label_census import label_census
from petfeat.kernels.threads import cpu_threads

from petfeat.io.dicom import Geometry
from petfeat.io.labels import read_totalsegmentator_folder
from petfeat.slabs import z_slabs


def numpy_census(arr):
    """Counts and box the NumPy way (slab-wise bincount: its int64 temporaries stay small)."""
    counts = np.zeros(int(arr.max()) + 1, np.int64)
    for s in z_slabs(arr.shape):
        part = np.bincount(arr[s].ravel())
        counts[: len(part)] += part
    box = []
    for axis in range(arr.ndim):
        hit = np.flatnonzero(arr.any(axis=tuple(a for a in range(arr.ndim) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1) if len(hit) else None)
    return counts, (None if None in box else tuple(box))


def write_folder(folder: Path, ct: tuple[int, int, int], n: int) -> Path:
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[: ct[0], : ct[1], : ct[2]]
    ml = np.zeros(ct, np.uint8)
    for k in range(1, n + 1):
        c = [rng.uniform(0.2, 0.8) * s for s in ct]
        r = [rng.uniform(0.04, 0.12) * s for s in ct]
        inside = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1
        ml[inside] = k
        img = sitk.GetImageFromArray(inside.astype(np.uint8))
        img.SetSpacing((0.98, 0.98, 1.5))
        sitk.WriteImage(img, str(folder / f"class_{k:03d}.nii.gz"), True)
    img = sitk.GetImageFromArray(ml)
    img.SetSpacing((0.98, 0.98, 1.5))
    path = folder.parent / "multilabel.nii.gz"
    sitk.WriteImage(img, str(path), True)
    return path


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--ct", type=int, nargs=3, default=[600, 512, 512], metavar=("Z", "Y", "X"))
    p.add_argument("--classes", type=int, default=12)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out")
    a = p.parse_args(argv)
    ct = tuple(a.ct)
    with tempfile.TemporaryDirectory() as tmp:
        seg = Path(tmp) / "seg"
        seg.mkdir()
        ml = write_folder(seg, ct, a.classes)
        files = sorted(seg.glob("*.nii.gz")) + [ml]
        warm = np.zeros((2, 2, 8), np.uint8)
        label_census(warm)  # compile (or load from the cache) outside the timing, writable and read-only
        warm.flags.writeable = False
        label_census(warm)
        best = {f.name: {"read_s": np.inf, "census_s": np.inf, "numpy_s": np.inf} for f in files}
        for _ in range(a.repeats):
            for f in files:
                t0 = time.perf_counter()
                img = sitk.ReadImage(str(f))
                t1 = time.perf_counter()
                view = sitk.GetArrayViewFromImage(img)
                got = label_census(view)
                t2 = time.perf_counter()
                counts, box = numpy_census(view)
                t3 = time.perf_counter()
                if not (np.array_equal(got.counts, counts) and got.box == box):
                    raise SystemExit(f"{f.name}: the census and NumPy disagree")
                b = best[f.name]
                b["read_s"] = min(b["read_s"], t1 - t0)
                b["census_s"] = min(b["census_s"], t2 - t1)
                b["numpy_s"] = min(b["numpy_s"], t3 - t2)
        pet = Geometry((ct[0] * 3 // 8, 128, 128), (4.0, 3.92, 3.92), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        folder_s = np.inf
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            read_totalsegmentator_folder(seg, pet)
            folder_s = min(folder_s, time.perf_counter() - t0)
    classes = [v for k, v in best.items() if k.startswith("class_")]
    summary = {
        "class_file_read_s": float(np.median([v["read_s"] for v in classes])),
        "class_file_census_s": float(np.median([v["census_s"] for v in classes])),
        "class_file_numpy_census_s": float(np.median([v["numpy_s"] for v in classes])),
        "multilabel": best[ml.name],
        "folder_read_s": float(folder_s),
        "folder_classes": a.classes,
    }
    print(f"CT grid {ct}, {a.classes} classes, {cpu_threads()} threads, best of {a.repeats}")
    print(f"class file (median): read {summary['class_file_read_s']:.3f} s, census {summary['class_file_census_s']:.4f}"
          f" s, NumPy census {summary['class_file_numpy_census_s']:.3f} s "
          f"({summary['class_file_numpy_census_s'] / summary['class_file_census_s']:.1f}x)")
    m = best[ml.name]
    print(f"multilabel file: read {m['read_s']:.3f} s, census {m['census_s']:.4f} s, NumPy census {m['numpy_s']:.3f} s"
          f" ({m['numpy_s'] / m['census_s']:.1f}x)")
    print(f"read_totalsegmentator_folder onto a {pet.shape} PET grid: {folder_s:.2f} s "
          f"({folder_s / a.classes:.3f} s per class)")
    if a.out:
        meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                "threads": cpu_threads(), "ct": ct, "repeats": a.repeats}
        Path(a.out).write_text(json.dumps({"meta": meta, "summary": summary, "files": best}, indent=1))


if __name__ == "__main__":
    main()
