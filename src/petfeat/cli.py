"""Command line: a thin layer over the Python API.

``petfeat suv PATH`` prints SUV factors, ``petfeat synth OUT`` writes a synthetic archive,
``petfeat demo`` generates an archive and extracts a first feature table. Bad input exits with
status 2 and a one-line error on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

from petfeat.errors import PetfeatError


def _suv_overrides(args) -> dict:
    out = {}
    if args.weight is not None:
        out["weight_kg"] = args.weight
    if args.height is not None:
        out["height_m"] = args.height
    if args.sex is not None:
        out["sex"] = args.sex
    if args.dose is not None:
        out["dose_bq"] = args.dose
    if args.half_life is not None:
        out["half_life_s"] = args.half_life
    if args.injection_time is not None:
        try:
            out["injection_datetime"] = dt.datetime.fromisoformat(args.injection_time)
        except ValueError as exc:
            raise PetfeatError(f"--injection-time {args.injection_time!r} is not YYYY-MM-DDTHH:MM:SS.") from exc
    return out


def _add_overrides(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SUV overrides (win over the header)")
    g.add_argument("--weight", type=float, help="patient weight in kg")
    g.add_argument("--height", type=float, help="patient height in m")
    g.add_argument("--sex", choices=["M", "F"], help="patient sex for SUL")
    g.add_argument("--dose", type=float, help="injected dose in Bq")
    g.add_argument("--half-life", type=float, help="radionuclide half-life in s")
    g.add_argument("--injection-time", help="injection date/time, YYYY-MM-DDTHH:MM:SS")
    g.add_argument("--lbm", choices=["janmahasatian", "james"], default="janmahasatian", help="SUL formula")
    p.add_argument("--series-uid", help="SeriesInstanceUID to read; without it, of several PET series of one study "
                   "the reader takes the attenuation-corrected volume with the most slices (projections/MIPs "
                   "dropped) and records the choice")


def cmd_suv(args) -> int:
    """``petfeat suv``: print the SUV factors of one series (headers only: pixel data is never decoded)."""
    from petfeat.io.dicom import read_pet_header
    from petfeat.suv import compute_suv_factors

    series = read_pet_header(args.path, series_uid=args.series_uid)
    f = compute_suv_factors(series.suv_header, lbm_formula=args.lbm, **_suv_overrides(args))
    d = f.to_dict()
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        bw = d["suv_bw_factor"]
        print(f"series            {series.description or '(no description)'}  {series.geometry.shape} voxels")
        print(f"units             {d['units']}   decay correction {d['decay_correction']}")
        if isinstance(bw, list):
            print(f"SUVbw factor      per slice, {min(bw):.6g} .. {max(bw):.6g} (x rescaled pixel)")
        else:
            print(f"SUVbw factor      {bw:.6g} (x rescaled pixel)")
        for k in ("sul_factor", "suv_bsa_factor", "scan_datetime", "scan_time_source", "injection_datetime",
                  "uptake_seconds", "half_life_seconds", "injected_dose_bq", "decayed_dose_bq", "weight_kg"):
            print(f"{k:<17} {d[k]}")
        for w in d["warnings"]:
            print(f"note: {w}")
    return 0


def cmd_synth(args) -> int:
    """``petfeat synth``: write a synthetic archive."""
    from petfeat.synth import generate_archive

    t = time.perf_counter()
    generate_archive(args.out, args.patients, seed=args.seed, voxel_mm=args.voxel_mm,
                     progress=lambda i, n: print(f"\rwriting patient {i}/{n}", end="", file=sys.stderr))
    print(f"\n{args.patients} synthetic studies in {args.out} ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    """``petfeat demo``: the whole pipeline on a generated cohort (:func:`petfeat.demo.run_demo`)."""
    from petfeat.demo import run_demo

    return run_demo(args)


def _write_table(df, path: Path, csv: bool) -> list[Path]:
    """Write ``df`` as Parquet (and CSV) atomically."""
    from petfeat.io.atomic import atomic_write

    written = [atomic_write(path.with_suffix(".parquet"), lambda f: df.to_parquet(f, index=False))]
    if csv:
        written.append(atomic_write(path.with_suffix(".csv"), lambda f: df.to_csv(f, index=False)))
    return written


def _label_sources(values: list[str]) -> list[tuple[str | None, Path]]:
    """``--labels`` values as ``(name space or None, path)``: ``PATH`` or ``NAME=PATH``.

    A value that exists as a path is that path even if it holds '='; NAME is letters, digits, ``_``, ``.``, ``-``.
    """
    import re

    out = []
    for value in values:
        name, sep, rest = value.partition("=")
        if sep and rest and not Path(value).exists() and re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            out.append((name, Path(rest)))
        else:
            out.append((None, Path(value)))
    return out


def _label_table(layers, voxel_ml: float) -> list[dict]:
    """One row per label of the layers (the ``labels`` table of ``petfeat extract``).

    Each row: name space, the file or folder name the label came from (never its archive path), volume on
    its own grid and on the PET grid, and the fraction outside the PET field of view (RTSTRUCT ROIs).
    """
    from petfeat.kernels.label_census import label_census

    rows = []
    for la in layers:
        counts = label_census(la.array).counts
        notes = getattr(la, "notes", None) or {}
        for i, n in la.names.items():
            rows.append({"label": n, "namespace": la.namespace, "source": Path(la.source).name,
                         "native_volume_ml": (la.native_volume_ml or {}).get(n),
                         "pet_grid_volume_ml": float(counts[i] if i < len(counts) else 0) * voxel_ml,
                         "outside_fov_fraction": (notes.get(n) or {}).get("outside_fov_fraction")})
    return rows


def _parse_threshold(text: str | None) -> dict | None:
    if text is None:
        return None
    if text == "percist":
        return {"method": "percist"}
    if text.startswith("fixed:"):
        try:
            return {"method": "fixed", "threshold": float(text.split(":", 1)[1])}
        except ValueError:
            pass
    raise PetfeatError(f"--threshold {text!r}: use 'fixed:SUV' (e.g. fixed:3) or 'percist'.")


def cmd_scan(args) -> int:
    """``petfeat scan``: discover studies and write a manifest (pseudonymised ids only).

    Progress (folders scanned) and a summary by status go to stderr; ``--linkage`` writes
    study_id, patient_id, PatientID (mode 600, written atomically).
    """
    import csv

    from petfeat.io.archive import load_or_create_key, scan_archive, write_manifest
    from petfeat.io.atomic import atomic_write

    out = Path(args.out)
    key = load_or_create_key(args.key_file)
    linkage = {} if args.linkage else None
    tty = sys.stderr.isatty()

    def progress(i: int, n: int) -> None:
        if tty or i == n or i % 100 == 0:
            print(f"\rscanned {i}/{n} folders", end="" if tty and i < n else "\n", file=sys.stderr, flush=True)

    rows = scan_archive(args.archive, key, linkage, progress=progress)
    write_manifest(rows, out)
    if args.linkage:
        def write(tmp: str) -> None:  # mkstemp's file is mode 600; the rename keeps it
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["study_id", "patient_id", "PatientID"])
                w.writerows([sid, pid, raw] for sid, (pid, raw) in linkage.items())

        atomic_write(args.linkage, write)
    by_status: dict[str, int] = {}
    for r in rows:
        st = r.match_status.split(" ")[0].rstrip(":")
        by_status[st] = by_status.get(st, 0) + 1
    n_studies = sum(1 for r in rows if r.study_id.startswith("S"))
    print(f"{n_studies} studies in {len(rows)} rows -> {out} "
          f"({', '.join(f'{k}: {v}' for k, v in sorted(by_status.items()))})")
    unreadable = sum({r.study_path: r.n_unreadable for r in rows}.values())
    if unreadable:
        print(f"{unreadable} file(s) could not be read and were skipped (see the n_unreadable column)", file=sys.stderr)
    return 0


def cmd_batch(args) -> int:
    """``petfeat extract MANIFEST|ARCHIVE -o OUT``: every study on Dask."""
    from petfeat.batch import BatchSettings, run_batch
    from petfeat.io.archive import load_or_create_key, read_manifest, scan_archive
    from petfeat.regions import BUILTIN_REGIONS, load_spec

    out = Path(args.out)
    key = load_or_create_key(args.key_file)
    src = Path(args.source)
    rows = scan_archive(src, key) if src.is_dir() else read_manifest(src)
    settings = BatchSettings(regions=load_spec(args.regions) if args.regions else BUILTIN_REGIONS,
                             backend=args.backend, suv_type=args.suv_type, connectivity=args.connectivity,
                             min_lesion_ml=args.min_lesion_ml, threshold=_parse_threshold(args.threshold),
                             peaks=not args.no_peak, resample=args.resample,
                             peak_neighbours=args.peak_neighbours, strict=args.strict)
    rep = run_batch(rows, out, settings, key, scheduler=args.scheduler, n_workers=args.workers,
                    trace_memory=args.trace_memory, scheduler_timeout=args.scheduler_timeout,
                    dashboard_address=args.dashboard_address)
    print(f"{rep.done} done, {rep.skipped} already done, {rep.failed} failed; {rep.outputs.get('features', 0)} "
          f"feature rows, {rep.outputs.get('lesions', 0)} lesion rows in {out} "
          f"({rep.timings['wall_s']:.1f} s)")
    if rep.failed:
        import pandas as pd

        classes = pd.read_parquet(out / "failures.parquet").error_class.value_counts().sort_index()
        print(f"failures ({', '.join(f'{n} {c}' for c, n in classes.items())}) are listed with their reasons in "
              f"{out / 'failures.parquet'}", file=sys.stderr)
    return 3 if rep.failed else 0


def cmd_extract(args) -> int:
    """``petfeat extract``: one study (``--pet``), or a manifest/archive on Dask (positional source)."""
    import pandas as pd

    if args.source:
        return cmd_batch(args)
    if not args.pet:
        raise PetfeatError("give a manifest or archive folder (batch), or --pet PET_FOLDER (one study).")

    from petfeat import __version__
    from petfeat.extract import extract
    from petfeat.io.dicom import read_pet_series
    from petfeat.io.labels import nifti_label_table, read_labels, read_lesion_mask, read_names_file
    from petfeat.pseudonyms import load_or_create_key
    from petfeat.regions import BUILTIN_REGIONS, load_spec
    from petfeat.suv import compute_suv_factors

    t0 = time.perf_counter()
    key = load_or_create_key(args.key_file)  # the batch's key: the same series gets the same patient_id
    series = read_pet_series(args.pet, series_uid=args.series_uid)
    factors = compute_suv_factors(series.suv_header, lbm_formula=args.lbm, **_suv_overrides(args))
    names = read_names_file(args.label_names) if args.label_names else None
    layers = []
    for namespace, path in _label_sources(args.labels):  # --label-names: for files without their own label table
        own = names if names is not None and not (path.is_file() and nifti_label_table(path)) else None
        layers.extend(read_labels(path, series.geometry, names=own, mode=args.resample, namespace=namespace))
    lesions = read_lesion_mask(args.lesions, series.geometry) if args.lesions else None
    regions = load_spec(args.regions) if args.regions else BUILTIN_REGIONS
    res = extract(series, layers, regions, lesions=lesions, threshold=_parse_threshold(args.threshold),
                  connectivity=args.connectivity, min_lesion_ml=args.min_lesion_ml, backend=args.backend,
                  suv_type=args.suv_type, factors=factors, peaks=not args.no_peak, id_key=key,
                  peak_neighbours=args.peak_neighbours, strict=args.strict)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    label_rows = _label_table(layers, series.geometry.voxel_volume_ml)
    written = _write_table(res.features, out / "features", args.csv)
    written += _write_table(res.lesions, out / "lesions", args.csv)
    written += _write_table(pd.DataFrame(label_rows), out / "labels", args.csv)
    run = {"petfeat_version": __version__, "command": "extract", "backend": res.features.backend.iloc[0],
           "settings": res.settings, "warnings": res.warnings,
           "timings_s": {**res.timings, "total": time.perf_counter() - t0},
           "suv": {k: v for k, v in factors.to_dict().items() if k not in ("scan_datetime", "injection_datetime")},
           "pet_series": series.notes, "outputs": [p.name for p in written]}
    (out / "run.json").write_text(json.dumps(run, indent=1, default=str))
    cols = ["region", "suv_mean", "suv_max", "suv_peak_global", "volume_ml", "total_uptake", "lesion_count", "status"]
    with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
        print(res.features[cols].to_string(index=False))
    print(f"{len(res.lesions)} lesions; tables in {out} ({', '.join(p.name for p in written)})")
    return 0


def cmd_analyze(args) -> int:
    """``petfeat analyze``: endpoints, models, tables, figures and an HTML report."""
    import pandas as pd

    from petfeat.stats.analysis import load_study, read_clinical, run_analyses, write_report

    t0 = time.perf_counter()
    spec = load_study(args.study)
    fpath = Path(args.features)
    if not fpath.exists():
        raise PetfeatError(f"{fpath}: no such feature table; run 'petfeat extract' first.")
    features = pd.read_parquet(fpath) if fpath.suffix == ".parquet" else pd.read_csv(fpath)
    results, context = run_analyses(features, read_clinical(args.clinical), spec)
    paths = write_report(results, context, spec, args.out)
    models = results[results.get("status") != "ok (covariate)"] if len(results) else results
    ok = models[models.get("status") == "ok"] if len(models) else models
    for _, r in models.iterrows():
        flag = r["flag"] if isinstance(r.get("flag"), str) else ""
        shown = r["result"] if r["status"] in ("ok", "not converged") else r["status"]
        print(f"{r['analysis'][:60]:<60} {r['feature']:<34} {shown}" + (f" [{flag}]" if flag else ""))
    print(f"{len(ok)} of {len(models)} models fitted in {time.perf_counter() - t0:.1f} s; report {paths['html']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``petfeat`` command."""
    from petfeat import __version__

    p = argparse.ArgumentParser(prog="petfeat", description="PET imaging features from DICOM archives.")
    p.add_argument("--version", action="version", version=f"petfeat {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("suv", help="print the SUV factors of a PET series")
    s.add_argument("path", help="folder (searched recursively) or file of the PET series")
    s.add_argument("--json", action="store_true", help="print JSON")
    _add_overrides(s)
    s.set_defaults(func=cmd_suv)

    s = sub.add_parser("scan", help="find the studies of an archive and write a manifest")
    s.add_argument("archive", help="archive root: one folder per study")
    s.add_argument("-o", "--out", required=True, help="manifest CSV to write")
    s.add_argument("--key-file", help="pseudonymisation key (default: $PETFEAT_KEY_FILE, else "
                   "~/.config/petfeat/petfeat.key; created when missing)")
    s.add_argument("--linkage", help="also write study_id, patient_id, PatientID to this CSV (mode 600; keep it "
                   "private)")
    s.set_defaults(func=cmd_scan)

    s = sub.add_parser("extract", help="features and lesions: one study (--pet) or a manifest/archive on Dask")
    s.add_argument("source", nargs="?", help="manifest CSV or archive folder (batch mode)")
    s.add_argument("--pet", help="PET DICOM folder of one study")
    s.add_argument("--scheduler", help="address of an existing Dask scheduler, tcp://HOST:PORT (batch mode)")
    s.add_argument("--scheduler-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for --scheduler before giving up (default 30)")
    s.add_argument("--dashboard-address", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="local cluster: where its dashboard listens (default 127.0.0.1:0, loopback on a free port; "
                   "0.0.0.0:8787 exposes it to the network without authentication); the scheduler stays on loopback")
    s.add_argument("--workers", type=int, help="local cluster workers (default: cores)")
    s.add_argument("--trace-memory", action="store_true", help="batch mode: also trace each study's NumPy and Python "
                   "allocations (peak_traced_mb in parts/*.timing.json; reading DICOM gets ~10x slower)")
    s.add_argument("--key-file", help="pseudonymisation key, for batch and --pet alike (default: "
                   "$PETFEAT_KEY_FILE, else ~/.config/petfeat/petfeat.key; created when missing)")
    s.add_argument("--labels", nargs="+", default=[], help="label sources: TotalSegmentator folder (one or several "
                   "tasks), NIfTI/NRRD multilabel, DICOM SEG or RTSTRUCT file; NAME=PATH names the source's name "
                   "space (region pattern NAME:GLOB), by default the TotalSegmentator task or the file's stem")
    s.add_argument("--label-names", help="JSON or CSV id -> name for the multilabel images that carry no label table "
                   "of their own (a TotalSegmentator --ml file carries one)")
    s.add_argument("--lesions", help="lesion mask (NIfTI/NRRD) on any grid; resampled onto the PET grid")
    s.add_argument("--threshold", help="segment lesions without a mask: 'fixed:SUV' or 'percist'")
    s.add_argument("--connectivity", type=int, choices=[6, 26], default=26)
    s.add_argument("--min-lesion-ml", type=float, default=0.0)
    s.add_argument("--regions", help="regions YAML (default: the built-in whole_body_tumor, tumor_bone, "
                   "tumor_prostate, tumor_visceral, tumor_lymph_node_or_soft_tissue, bone, healthy_bone, "
                   "salivary_glands (needs TotalSegmentator's head_glands_cavities task), liver)")
    s.add_argument("--strict", action="store_true", help="a region that matches no label is an error (default: a "
                   "warning that lists the labels that exist)")
    s.add_argument("--resample", choices=["nearest", "fraction"], default="nearest",
                   help="label resampling onto the PET grid")
    s.add_argument("--suv-type", choices=["bw", "lbm", "bsa"], default="bw")
    s.add_argument("--backend", choices=["auto", "cpu", "gpu"], default="auto")
    s.add_argument("--no-peak", action="store_true", help="skip SUVpeak")
    s.add_argument("--peak-neighbours", choices=["image", "region"], default="image",
                   help="voxels the SUVpeak sphere averages: every voxel in the image (IBSI, default) or only the "
                   "region's own voxels (no spill-in from a lesion next to healthy tissue)")
    s.add_argument("--csv", action="store_true", help="write CSV beside Parquet")
    s.add_argument("-o", "--out", required=True, help="output folder")
    _add_overrides(s)
    s.set_defaults(func=cmd_extract)

    s = sub.add_parser("analyze", help="endpoints, Cox and mixed models, tables, figures, HTML report")
    s.add_argument("--features", required=True, help="feature table (features.parquet or CSV from petfeat extract)")
    s.add_argument("--clinical", required=True, help="folder with patients, labs, scores/questionnaires tables")
    s.add_argument("--study", help="study spec YAML (default: the shipped 177Lu-PSMA study)")
    s.add_argument("-o", "--out", required=True, help="report folder")
    s.set_defaults(func=cmd_analyze)

    s = sub.add_parser("synth", help="write a synthetic PSMA PET archive with ground truth")
    s.add_argument("out", help="output folder")
    s.add_argument("--patients", type=int, default=4)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--voxel-mm", type=float, default=4.0, help="PET voxel size (isotropic)")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("demo", help="the whole study on a generated cohort: archive, extraction, analysis, report")
    s.add_argument("--patients", type=int, default=12, help="patients (61 mirrors the study)")
    s.add_argument("--out", default="petfeat-demo")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--voxel-mm", type=float, default=4.0)
    s.add_argument("--backend", choices=["auto", "cpu", "gpu"], default="auto")
    s.add_argument("--workers", type=int, help="local Dask workers (default: cores)")
    s.add_argument("--scheduler", help="run on an existing Dask cluster, tcp://HOST:PORT")
    s.add_argument("--key-file", help="pseudonymisation key (default: OUT/petfeat.key; the archive is synthetic)")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``petfeat`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PetfeatError as exc:
        print(f"petfeat {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
