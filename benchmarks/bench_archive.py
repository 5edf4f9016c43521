"""Archive throughput: studies per minute with 1 and 2 local Dask workers, and where the time goes.

    python benchmarks/bench_archive.py --patients 8 --voxel-mm 4 [--trace-memory] --out benchmarks/results/archive.json

Generates a synthetic archive (not timed), runs one untimed warm-up study (Numba's on-disk cache),
then the whole archive with 1 worker and with 2 workers into fresh output folders.
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

from petfeat.batch import BatchSettings, run_batch
from petfeat.io.archive import scan_archive
from petfeat.regions import BUILTIN_REGIONS
from petfeat.synth import generate_archive

KEY = bytes(32)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--patients", type=int, default=8)
    p.add_argument("--voxel-mm", type=float, default=4.0)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--backend", default="cpu")
    p.add_argument("--trace-memory", action="store_true", help="also trace allocations (peak_traced_mb; slower)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    settings = BatchSettings(regions=BUILTIN_REGIONS, backend=args.backend)
    result = {"benchmark": "archive", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "host": platform.node(), "cpus": os.cpu_count(), "patients": args.patients, "voxel_mm": args.voxel_mm,
              "backend": args.backend, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_archive(tmp / "archive", args.patients, seed=3, voxel_mm=args.voxel_mm)
        rows = scan_archive(tmp / "archive", KEY)
        run_batch(rows[:1], tmp / "warmup", settings, KEY, n_workers=1, progress=None)
        for n in args.workers:
            t0 = time.perf_counter()
            rep = run_batch(rows, tmp / f"out{n}", settings, KEY, n_workers=n, trace_memory=args.trace_memory,
                            progress=None)
            wall = time.perf_counter() - t0
            run = {"workers": n, "wall_s": wall, "studies_per_min": args.patients / wall * 60, "done": rep.done,
                   "failed": rep.failed, "per_study_median": rep.timings["per_study_median"]}
            result["runs"].append(run)
            print(json.dumps(run))
    base = result["runs"][0]["studies_per_min"]
    for r in result["runs"]:
        r["speedup_vs_first"] = r["studies_per_min"] / base
    print(f"\n{args.patients} studies, {args.voxel_mm} mm voxels, backend {args.backend}")
    print(f"{'workers':>7} {'wall s':>8} {'studies/min':>12} {'speedup':>8}")
    for r in result["runs"]:
        print(f"{r['workers']:>7} {r['wall_s']:>8.1f} {r['studies_per_min']:>12.1f} {r['speedup_vs_first']:>8.2f}")
    med = result["runs"][-1]["per_study_median"]
    print("per study (median, s): " + ", ".join(f"{k} {v:.2f}" for k, v in med.items() if k.endswith("_s")))
    raw = med.get("raw_pixel_mb") or float("nan")
    traced = (f"peak traced (NumPy) {med['peak_traced_mb']:.0f} MB = {med['peak_traced_mb'] / raw:.1f}x; "
              if "peak_traced_mb" in med else "")
    print(f"memory per study (median): raw PET pixels {raw:.1f} MB; {traced}"
          f"peak RSS over the study's start {med.get('peak_rss_over_start_mb', float('nan')):.0f} MB = "
          f"{med.get('peak_rss_over_start_mb', float('nan')) / raw:.1f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
