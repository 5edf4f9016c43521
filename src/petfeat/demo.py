"""The demo: a generated cohort through the whole pipeline, checked against its ground truth.

``petfeat demo`` generates a synthetic PSMA PET archive (:mod:`petfeat.synth`), scans it, extracts
features on a local Dask cluster (:func:`petfeat.batch.run_batch`) with the built-in regions, compares
the whole-body tumour SUVmean with the planted truth, prints the PSMA reference quantities (every one
finite: the synthetic studies have a label for each reference organ), and, for 8 patients or more,
generates a clinical cohort with planted effects, runs the study's analyses and writes the HTML report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

#: The largest relative error of a study's whole-body tumour SUVmean against its ground truth that passes.
DEMO_TOLERANCE = 1e-6


def run_demo(args) -> int:
    """Generate an archive, scan it, extract on Dask, compare with the ground truth, analyse and report.

    Parameters
    ----------
    args : argparse.Namespace
        ``out``, ``patients``, ``seed``, ``voxel_mm``, ``backend``, ``workers``, ``scheduler``, ``key_file``
        (the options of ``petfeat demo``).

    Returns
    -------
    int
        0 when every study succeeded, the SUVmean matches the truth to 1e-6 and every study's reference
        quantities (liver, parotid and blood-pool SUVmean, tumour-to-liver and tumour-to-parotid ratios) are
        finite, else 1.
    """
    import os

    import pandas as pd

    from petfeat.batch import BatchSettings, refuse_gpu_without_device, run_batch
    from petfeat.io.archive import load_or_create_key, scan_archive, write_manifest
    from petfeat.io.parquet import read_parquet
    from petfeat.regions import BUILTIN_REGIONS
    from petfeat.suv import scan_time_origin
    from petfeat.synth import generate_archive

    out = Path(args.out)
    archive = out / "archive"
    refuse_gpu_without_device(args.backend, args.scheduler)  # before the archive is written
    t0 = time.perf_counter()
    if _same_archive(archive, args):
        print(f"[1/4] {archive} holds the {args.patients} studies of seed {args.seed} at {args.voxel_mm:g} mm already: "
              "kept (the extraction below skips the studies it has)", flush=True)
    else:
        print(f"[1/4] generating {args.patients} synthetic PSMA PET studies in {archive} ...", flush=True)
        # the demo's own archive of another seed or size is replaced; a folder of anything else is refused
        generate_archive(archive, args.patients, seed=args.seed, voxel_mm=args.voxel_mm, overwrite=True)
        print(f"      done in {time.perf_counter() - t0:.1f} s (DICOM PET in Siemens-, GE- and Philips-like variants, "
              "TotalSegmentator-style labels on a CT grid, lesion masks)")
    t1 = time.perf_counter()
    key = load_or_create_key(args.key_file or out / "petfeat.key")  # a synthetic archive: its key may sit beside it
    rows = scan_archive(archive, key)
    write_manifest(rows, out / "manifest.csv")
    print(f"[2/4] scanned: {len(rows)} studies -> {out / 'manifest.csv'}")
    workers = args.workers or os.cpu_count() or 1
    where = f"the Dask scheduler {args.scheduler}" if args.scheduler else \
        f"a local Dask cluster ({workers} worker{'' if workers == 1 else 's'})"
    print(f"[3/4] extracting on {where}, backend {args.backend} (studies already in {out / 'results'} are skipped)",
          flush=True)
    settings = BatchSettings(regions=BUILTIN_REGIONS, backend=args.backend)
    rep = run_batch(rows, out / "results", settings, key, scheduler=args.scheduler, n_workers=workers)
    t2 = time.perf_counter()
    table = read_parquet(out / "results" / "features.parquet")
    truth_of = {r.study_id: json.loads((Path(r.pet_path).parent / "truth.json").read_text()) for r in rows}
    print("[4/4] SUV factors (vendor-neutral, from each series' header) and region features (SUVbw)")
    for part in sorted((out / "results" / "parts").glob("*.timing.json")):
        rec = json.loads(part.read_text())
        if rec["study_id"] not in truth_of:  # a part of another archive written to this folder before
            continue
        suv = rec["suv"]
        upt = f"{suv['uptake_seconds'] / 60:.0f} min" if suv["uptake_seconds"] is not None else "n/a"
        print(f"      {rec['study_id']}  {truth_of[rec['study_id']]['vendor']:<8} units {suv['units']:<5} SUVbw factor "
              f"{suv['suv_bw_factor']:.6g}  uptake {upt:<7} scan time {scan_time_origin(suv['scan_time_source'])}")
    cols = ["study_id", "region", "suv_mean", "suv_max", "suv_peak_global", "volume_ml", "total_uptake",
            "lesion_count", "status"]
    with pd.option_context("display.width", 180, "display.max_rows", 400, "display.float_format", "{:.3f}".format):
        print(table.sort_values(["study_id", "region"])[cols].to_string(index=False))
    errs = []
    for sid, t in truth_of.items():
        got = table.loc[(table.study_id == sid) & (table.region == "whole_body_tumor"), "suv_mean"]
        errs.append(abs(float(got.iloc[0]) / t["lesion_mask_stats"]["suv_mean"] - 1.0) if len(got) else float("inf"))
    worst = max(errs) if errs else float("inf")
    print(f"whole-body tumour SUVmean vs the ground truth written with each study: max relative error {worst:.2e} "
          f"(limit {DEMO_TOLERANCE:g}: {'pass' if worst < DEMO_TOLERANCE else 'FAIL'})")
    quantities = read_parquet(out / "results" / "quantities.parquet")
    finite = _print_quantities(quantities)
    print(f"backend {table.backend.iloc[0] if len(table) else '?'}; generate {t1 - t0:.1f} s, scan+extract "
          f"{t2 - t1:.1f} s; {rep.done} studies done, {rep.skipped} already done, {rep.failed} failed; tables in "
          f"{out / 'results'}")
    ok = worst < DEMO_TOLERANCE and rep.failed == 0 and finite
    if len(rows) < 8:
        print(f"analysis skipped: the outcome models need at least 8 patients (this demo has {len(rows)}); "
              "run petfeat demo --patients 61 for the study's size")
        return 0 if ok else 1
    report = _demo_analysis(out, rows, table, quantities, rep, {"generate_s": t1 - t0, "scan_extract_s": t2 - t1},
                            args)
    print(f"report: {report}")
    return 0 if ok else 1


#: Columns of the quantities table the demo prints, and their headings.
REFERENCE_COLUMNS = {"liver_suv_mean": "liver", "parotid_suv_mean": "parotid", "blood_pool_suv_mean": "blood pool",
                     "tumour_to_liver_ratio": "tumour/liver", "tumour_to_parotid_ratio": "tumour/parotid",
                     "psma_tv_ml": "PSMA-TV mL", "tl_psma": "TL-PSMA"}


def _print_quantities(quantities) -> bool:
    """Print each study's PSMA reference quantities; True when every reference value is finite."""
    import numpy as np

    cols = [c for c in REFERENCE_COLUMNS if c in quantities.columns]
    shown = quantities[["study_id", *cols]].rename(columns=REFERENCE_COLUMNS).sort_values("study_id")
    print("PSMA reference quantities (SUVmean of liver, parotid glands and blood pool (aorta); tumour ratios):")
    print(shown.to_string(index=False, float_format="{:.2f}".format))
    refs = [c for c in REFERENCE_COLUMNS if not c.startswith(("psma_tv", "tl_psma"))]
    if not len(quantities) or not set(refs) <= set(cols):
        print("no reference quantities: quantities.parquet lacks studies or columns")
        return False
    missing = int((~np.isfinite(quantities[refs].to_numpy(dtype=float))).any(axis=1).sum())
    if missing:
        print(f"reference quantities missing in {missing} of {len(quantities)} studies (see quantities.parquet notes)")
    return missing == 0


def _demo_analysis(out: Path, rows, table, quantities, rep, timings: dict, args) -> Path:
    """Clinical cohort with planted effects, the study's analyses, and the HTML report with a MIP per study."""
    from petfeat.report import render_study, write_report
    from petfeat.report.tables import planted_table, planted_verdict
    from petfeat.stats.analysis import load_study, read_clinical, run_analyses
    from petfeat.synth.clinical import generate_clinical, planted_vs_recovered

    t0 = time.perf_counter()
    generate_clinical(table, out / "clinical", seed=args.seed)
    spec = load_study()
    results, context = run_analyses(table, read_clinical(out / "clinical"), spec)
    t1 = time.perf_counter()
    pv = planted_vs_recovered(results)
    qc = [{"study_id": r.study_id, "png": render_study(r.pet_path, Path(r.pet_path).parent / "seg", r.lesions)}
          for r in rows]
    t2 = time.perf_counter()
    demo = {"planted": pv, "n_patients": len(rows), "backend": str(table.backend.iloc[0]),
            "text": "Synthetic cohort generated by petfeat demo: DICOM PET in three vendor variants, "
                    "TotalSegmentator-style labels, lesion masks, and clinical tables with planted effects.",
            "timings": {**timings, "analysis_s": t1 - t0, "qc_images_s": t2 - t1,
                        **{f"{k} (median per study)": v for k, v in rep.timings.get("per_study_median", {}).items()
                           if not k.endswith("_mb")}}}
    paths = write_report(results, context, spec, out / "report", features=table, qc=qc, demo=demo,
                         quantities=quantities)
    print(planted_verdict(planted_table(pv, results), len(rows)))
    inside = int(pv.inside_ci.sum())
    print(f"planted values inside their 95% CI: {inside} of {len(pv)} (the intervals cover the truth; detection is "
          "the sentence above)")
    return paths["html"]


def _same_archive(archive: Path, args) -> bool:
    """Whether ``archive`` was generated with this seed, size and voxel size, every study's truth in place."""
    from petfeat.synth.archive import synthetic_archive_info

    info = synthetic_archive_info(archive)
    if info is None:
        return False
    same = (info.get("seed") == args.seed and info.get("n_patients") == args.patients
            and info.get("voxel_mm") == args.voxel_mm)
    return same and all((archive / p["patient"] / "truth.json").is_file() for p in info.get("patients", []))
