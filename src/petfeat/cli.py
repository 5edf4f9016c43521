"""Command line: a thin layer over the Python API.

``petfeat suv`` prints SUV factors, ``scan`` writes a manifest, ``extract`` computes features of
one study or of an archive on Dask, ``analyze`` fits the study's models and writes the report,
``synth`` writes a synthetic archive, ``demo`` runs all of it on a generated cohort
(:mod:`petfeat.demo`). Every option's help shows its default and each subcommand's help ends
with examples. A user error (a mistyped or abbreviated option, a bad value, a missing or
unreadable input) is one line on stderr, ``petfeat COMMAND: error: ...``, with exit status 2,
never a traceback; options are never abbreviated, and a mistyped option, command or choice gets a
"did you mean".
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import difflib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from petfeat.errors import PetfeatError


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows each option's default (unless its help already states it) and keeps epilog layout."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "(default" in text or any(default is v for v in (None, False, argparse.SUPPRESS))
                or (isinstance(default, list) and not default)
                or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        return f"{text} (default: %(default)s)"


def _did_you_mean(word: str, choices) -> str:
    """``"; did you mean X?"`` for the closest of ``choices`` (an unambiguous prefix first), or ``""``."""
    choices = [str(c) for c in choices]
    prefixed = [c for c in choices if c.startswith(word) and word not in ("-", "--")]
    close = prefixed[:1] if len(prefixed) == 1 else difflib.get_close_matches(word, choices, 1, 0.6)
    return f"; did you mean {close[0]}?" if close else ""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line with a suggestion, and that never abbreviates options."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def unrecognized(self, extras: list[str]) -> str:
        """The message for arguments this parser does not know, with the closest option for each."""
        options = [o for o in self._option_string_actions if o.startswith("--")]
        parts = []
        for e in extras:
            name = e.split("=", 1)[0]
            parts.append(f"{e}{_did_you_mean(name, options)}" if name.startswith("-") else e)
        return f"unrecognized argument{'s' if len(extras) > 1 else ''}: {', '.join(parts)}"

    def error(self, message: str):  # noqa: D102 - argparse's hook
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            message += _did_you_mean(m.group(1), re.findall(r"'([^']*)'", m.group(2)))
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


@contextlib.contextmanager
def _native_noise_filtered():
    """Drop the error stacks native libraries print on file descriptor 2 (``HDF5-DIAG`` from SimpleITK's HDF5).

    SimpleITK tries every image reader on a file it cannot read; ITK's HDF5 prints its error stack
    straight to the descriptor before SimpleITK raises the exception petfeat turns into a message.
    Other native output written meanwhile is passed on to ``sys.stderr`` afterwards.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 to redirect
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept, in_stack = [], False
            for line in tmp.read().decode(errors="replace").splitlines():
                if line.startswith("HDF5-DIAG"):
                    in_stack = True
                elif not (in_stack and line[:1] in (" ", "\t", ",")):  # the stack's lines, its file name too
                    in_stack = False
                    kept.append(line)
            if kept:
                print("\n".join(kept), file=sys.stderr)


def _drop_native_stacks(lines: list[bytes], in_stack: bool) -> tuple[list[bytes], bool]:
    """``lines`` without native error stacks (``HDF5-DIAG`` and its indented lines, which name the file)."""
    kept = []
    for line in lines:
        if line.startswith(b"HDF5-DIAG"):
            in_stack = True
        elif not (in_stack and line[:1] in (b" ", b"\t", b",")):
            in_stack = False
            kept.append(line)
    return kept, in_stack


@contextlib.contextmanager
def _native_noise_piped():
    """File descriptor 2 through a pipe that drops native error stacks and passes every other line on at once.

    For a batch: the local Dask workers, started inside, inherit the pipe, so SimpleITK's HDF5 stacks
    (which name archive files) never reach the console or a log. Yields the stream for the progress
    line: the console itself when ``sys.stderr`` is the process's own (a bar stays a bar on a terminal),
    else ``sys.stderr``.
    """
    import threading

    own = sys.stderr is sys.__stderr__
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2
        yield sys.stderr
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)  # ``write_end`` stays open here: the end marker goes through it, behind all written before
    passed = threading.Event()

    def pump() -> None:
        pending, in_stack = b"", False
        while chunk := os.read(read_end, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            end = next((i for i, line in enumerate(lines) if line.endswith(_PIPE_END)), None)
            if end is not None:  # the run is over; what comes later (a late worker) is still passed on
                rest = lines[end][:-len(_PIPE_END)]  # a line a worker left unfinished
                lines[end:end + 1] = [rest] if rest else []
            kept, in_stack = _drop_native_stacks(lines, in_stack)
            if kept:
                os.write(saved, b"".join(line + b"\n" for line in kept))
            if end is not None:
                passed.set()
        kept, _ = _drop_native_stacks([pending] if pending else [], in_stack)
        if kept:
            os.write(saved, kept[0])
        os.close(read_end)
        os.close(saved)
        passed.set()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    console = open(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace") if own else sys.stderr  # noqa: SIM115
    try:
        yield console
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        if console is not sys.stderr:
            console.close()
        os.dup2(saved, 2)
        # Not the pipe's end: a child that outlives the run (multiprocessing's resource tracker) holds its write end
        # until this process exits. A marker line, written behind everything else, says that all before it passed.
        os.write(write_end, _PIPE_END + b"\n")
        os.close(write_end)
        passed.wait(timeout=10)


#: The line that ends a batch's console pipe (:func:`_native_noise_piped`).
_PIPE_END = b"\x00petfeat: end of the console pipe\x00"


class _CompileNotice:
    """Prints one line when Numba starts compiling a kernel (first run after install; cached afterwards)."""

    def __init__(self, stream=None):
        self.stream, self.said = stream or sys.stderr, False

    def __enter__(self):
        from numba.core import event

        notice = self

        class Listener(event.Listener):
            def on_start(self, ev) -> None:
                notice.on_compile()

            def on_end(self, ev) -> None:
                pass

        self._listener = Listener()
        event.register("numba:compile", self._listener)
        return self

    def on_compile(self) -> None:
        """Say once that kernels are being compiled."""
        if not self.said:
            self.said = True
            print("compiling petfeat's kernels for this machine (10-20 s on 2 cores; Numba caches them for later "
                  "runs) ...", file=self.stream, flush=True)

    def __exit__(self, *exc):
        from numba.core import event

        event.unregister("numba:compile", self._listener)
        return False


class _Progress:
    """``progress(i, n)`` callback: a bar with ETA rewritten in place on a terminal, else a line every ``every`` s.

    ``what`` is the text, with ``{i}`` and ``{n}`` filled in (``"scanned {i}/{n} folders"``).

    In a log (stderr not a terminal) it writes one line when ``every`` seconds have passed since the
    last one, and the last line when ``i == n``. Nothing is written before ``delay`` seconds: a quick
    step stays silent.
    """

    def __init__(self, what: str, stream=None, every: float = 5.0, width: int = 30, delay: float = 1.0):
        self.what, self.stream, self.every, self.width = what, stream or sys.stderr, every, width
        self.delay = delay
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.last = self.t0

    def __call__(self, i: int, n: int) -> None:
        now = time.perf_counter()
        final = i >= n
        if now - self.t0 < self.delay or not (self.tty or final or now - self.last >= self.every):
            return
        self.last = now
        elapsed = now - self.t0
        eta = f", ETA {_duration(elapsed * (n - i) / i)}" if 0 < i < n else ""
        text = f"{self.what.format(i=i, n=n)} ({_duration(elapsed)}{eta})"
        if self.tty:
            filled = int(self.width * i / n) if n else self.width
            bar = "#" * filled + "-" * (self.width - filled)
            print(f"\r[{bar}] {text}\033[K", end="\n" if final else "", file=self.stream, flush=True)
        else:
            print(text, file=self.stream, flush=True)


class _Heartbeat:
    """While a step runs: its name and the time so far after ``delay`` s, then every ``every`` s (quick steps: silent).

    On a terminal the line is rewritten in place; in a log each is a line of its own.
    """

    def __init__(self, what: str, stream=None, delay: float = 2.0, every: float = 5.0):
        self.what, self.stream, self.delay, self.every = what, stream or sys.stderr, delay, every
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __enter__(self):
        import threading

        self.t0, self.done, self.said = time.perf_counter(), threading.Event(), False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        wait = self.delay
        while not self.done.wait(wait):
            self.said = True
            line = f"{self.what} ... {_duration(time.perf_counter() - self.t0)}"
            print(f"\r{line}\033[K" if self.tty else line, end="" if self.tty else "\n", file=self.stream, flush=True)
            wait = 1.0 if self.tty else self.every

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        if self.said and self.tty:
            print(file=self.stream, flush=True)
        return False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d} min" if seconds >= 60 else f"{seconds} s"


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
        z, y, x = series.geometry.shape
        number = "no SeriesNumber" if series.series_number is None else f"SeriesNumber {series.series_number}"
        lines = [("series", f"{number}, {z} x {y} x {x} voxels"),
                 ("units", d["units"]), ("decay correction", d["decay_correction"]),
                 ("SUVbw factor", _factor_text(d["suv_bw_factor"])),
                 ("SUL factor", _factor_text(d["sul_factor"])),
                 ("SUVbsa factor", _factor_text(d["suv_bsa_factor"])),
                 ("scan time", _scan_time_note(_value_text(d["scan_datetime"]), d["scan_time_source"])),
                 ("injection time", _value_text(d["injection_datetime"])),
                 ("uptake time", "n/a" if d["uptake_seconds"] is None else
                  f"{d['uptake_seconds'] / 60:.1f} min ({d['uptake_seconds']:.0f} s)"),
                 ("half-life", _value_text(d["half_life_seconds"], "s")),
                 ("injected dose", _value_text(None if d["injected_dose_bq"] is None else d["injected_dose_bq"] / 1e6,
                                               "MBq")),
                 ("decayed dose", _value_text(None if d["decayed_dose_bq"] is None else d["decayed_dose_bq"] / 1e6,
                                              "MBq")),
                 ("weight", _value_text(d["weight_kg"], "kg"))]
        width = max(len(k) for k, _ in lines)
        for k, v in lines:
            print(f"{k:<{width}}  {v}")
        for w in d["warnings"]:
            print(f"note: {w}")
    return 0


def _value_text(v, unit: str = "") -> str:
    """A header value for ``petfeat suv``: 6 significant digits with its unit, 'n/a' when missing."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.6g} {unit}".rstrip()
    return f"{v} {unit}".rstrip()


def _factor_text(v) -> str:
    """An SUV factor (one value or one per slice) times the rescaled pixel; 'n/a' when it cannot be computed."""
    if v is None:
        return "n/a (see the notes below)"
    if isinstance(v, list):
        return f"per slice, {min(v):.6g} .. {max(v):.6g} (x rescaled pixel)"
    return f"{v:.6g} (x rescaled pixel)"


def cmd_synth(args) -> int:
    """``petfeat synth``: write a synthetic archive into a new or empty folder, or over one with ``--overwrite``.

    Progress goes to stderr: a bar on a terminal, else a line every 5 s and the last one.
    """
    from petfeat.synth import generate_archive

    t = time.perf_counter()
    generate_archive(args.out, args.patients, seed=args.seed, voxel_mm=args.voxel_mm, overwrite=args.overwrite,
                     progress=_Progress("synth: wrote patient {i}/{n}", delay=0.0))
    print(f"{args.patients} synthetic stud{'y' if args.patients == 1 else 'ies'} in {args.out} "
          f"({time.perf_counter() - t:.1f} s)", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    """``petfeat demo``: the whole pipeline on a generated cohort (:func:`petfeat.demo.run_demo`)."""
    _require("dask", "distributed", "lifelines", "statsmodels", "matplotlib")
    from petfeat.demo import run_demo

    return run_demo(args)


def _write_table(df, path: Path, csv: bool, registry=()) -> list[Path]:
    """Write ``df`` as Parquet (field metadata: unit, description, SUV type) and CSV, atomically."""
    from petfeat.features import write_parquet
    from petfeat.io.atomic import atomic_write

    written = [atomic_write(path.with_suffix(".parquet"), lambda f: write_parquet(df, f, registry))]
    if csv:
        written.append(atomic_write(path.with_suffix(".csv"), lambda f: df.to_csv(f, index=False)))
    return written


@contextlib.contextmanager
def _warnings_kept():
    """Yield a list that receives the messages of the warnings raised inside, each once, in order.

    The warnings are raised again on leaving, so the console (or a caller's filters) sees them as before;
    notes (:class:`petfeat.io.labels.LabelNote`: a lossless reading) are kept only, not raised again.
    """
    import warnings

    from petfeat.io.labels import LabelNote

    kept: list[str] = []
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield kept
    finally:
        first = {}
        for w in caught:
            first.setdefault((w.category, str(w.message)), w)
        kept.extend(f"{w.category.__name__}: {w.message}" for w in first.values())
        for w in first.values():
            if not issubclass(w.category, LabelNote):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


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


def _source_kind(source: str) -> str:
    """What a label source is, without its name (archive files are often named after the patient)."""
    from petfeat.io.label_sources import dicom_label_kind

    path = Path(source)
    if path.is_dir():
        return "TotalSegmentator folder"
    return dicom_label_kind(path) or ("label image" if path.is_file() else "array")


def _label_table(layers, voxel_ml: float) -> list[dict]:
    """One row per label of the layers (the ``labels`` table of ``petfeat extract``).

    Each row: name space, the file or folder name the label came from (never its archive path), volume on
    its own grid and on the PET grid, and the fraction of it outside the PET field of view (None where the
    reader gives none: a label map's label without voxels).
    """
    from petfeat.kernels.label_census import label_census

    rows = []
    for la in layers:
        counts = label_census(la.array).counts
        notes = getattr(la, "notes", None) or {}
        for i, n in la.names.items():
            rows.append({"label": n, "namespace": la.namespace, "source": _source_kind(la.source),
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
    rows = scan_archive(args.archive, key, linkage, progress=_Progress("scanned {i}/{n} folders", delay=0.0))
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
        print(f"{unreadable} file(s) could not be read or are truncated (see the manifest's n_unreadable and "
              "scan_notes columns)", file=sys.stderr)
    return 0


def cmd_batch(args) -> int:
    """``petfeat extract MANIFEST|ARCHIVE -o OUT``: every study on Dask."""
    _require("dask", "distributed")
    started = time.perf_counter()  # the summary's time is the command's: scan, cluster start and stop included
    from petfeat.batch import BatchSettings, run_batch
    from petfeat.io.archive import load_or_create_key, read_manifest, scan_archive
    from petfeat.regions import BUILTIN_REGIONS, load_spec

    out = Path(args.out)
    key = load_or_create_key(args.key_file)
    src = Path(args.source)
    if args.pet:
        raise PetfeatError(f"give either a manifest or archive ({src}) or --pet PET_FOLDER, not both.")
    one_study = [o for o, v in (("--labels", args.labels), ("--lesions", args.lesions),
                                ("--label-names", args.label_names), ("--series-uid", args.series_uid),
                                ("--weight", args.weight), ("--height", args.height), ("--sex", args.sex),
                                ("--dose", args.dose), ("--half-life", args.half_life),
                                ("--injection-time", args.injection_time),
                                ("--lbm", args.lbm if args.lbm != "janmahasatian" else None)) if v]
    if one_study:
        raise PetfeatError(f"{', '.join(one_study)}: options of one study (--pet); a batch takes each study's labels, "
                           "lesions, series and SUV overrides from the manifest (edit its labels, lesions and "
                           "series_uid columns; weight_kg, height_m, sex, dose_bq, injection_time, half_life_s for "
                           "--weight, --height, --sex, --dose, --injection-time, --half-life). Drop them, or run the "
                           "study alone with --pet.")
    if args.threshold and src.is_file() and any(r.lesions for r in read_manifest(src)):
        raise PetfeatError("--threshold: the manifest gives lesion masks, which a batch uses instead of a threshold; "
                           "clear the manifest's lesions column to segment by threshold.")
    if not src.exists():
        raise PetfeatError(f"{src}: no such manifest or archive folder.")
    rows = scan_archive(src, key, progress=_Progress("scanned {i}/{n} folders")) if src.is_dir() else \
        read_manifest(src)
    if not any(r.study_id.startswith("S") for r in rows):  # F...: folders without a PET series
        raise PetfeatError(_no_studies(src))
    settings = BatchSettings(regions=load_spec(args.regions) if args.regions else BUILTIN_REGIONS,
                             backend=args.backend, suv_type=args.suv_type, connectivity=args.connectivity,
                             min_lesion_ml=args.min_lesion_ml, threshold=_parse_threshold(args.threshold),
                             peaks=not args.no_peak, resample=args.resample,
                             peak_neighbours=args.peak_neighbours, strict=args.strict)
    with _native_noise_piped() as console:  # the local workers inherit the filtered descriptor 2
        rep = run_batch(rows, out, settings, key, scheduler=args.scheduler, n_workers=args.workers,
                        trace_memory=args.trace_memory, scheduler_timeout=args.scheduler_timeout,
                        dashboard_address=args.dashboard_address, csv=args.csv, wide=args.wide,
                        progress=console)
    n_feat, n_les = rep.outputs.get("features", 0), rep.outputs.get("lesions", 0)
    print(f"{rep.done} done, {rep.skipped} already done, {rep.failed} failed; {n_feat} feature row{_s(n_feat)}, "
          f"{n_les} lesion row{_s(n_les)} in {out} ({time.perf_counter() - started:.1f} s)")
    # notes (LabelNote: a lossless reading) are in run.json only; a study with nothing else has no warnings
    warned = [ws for ws in rep.warnings.values() if any(not w.startswith("LabelNote: ") for w in ws)]
    if warned:  # kept off the console while the studies ran: their count, and where they are
        from petfeat.extract import SUV_DECISION

        decided = sum(any(w.startswith(SUV_DECISION) for w in ws) for ws in warned)
        what = f", {decided} with SUV header decisions (also in the features' input_notes)" if decided else ""
        n = len(warned)
        print(f"{n} stud{'y has' if n == 1 else 'ies have'} warnings{what}: listed per study under 'warnings' in "
              f"{out / 'run.json'}", file=sys.stderr)
    if rep.failed:
        from petfeat.io.parquet import read_parquet

        classes = read_parquet(out / "failures.parquet").error_class.value_counts().sort_index()
        print(f"failures ({', '.join(f'{n} {c}' for c, n in classes.items())}) are listed with their reasons in "
              f"{out / 'failures.parquet'}", file=sys.stderr)
    return 3 if rep.failed else 0


def _no_studies(src: Path) -> str:
    """Why a folder given to ``petfeat extract`` as an archive holds no study, and what to give instead."""
    def is_dicom(f: Path) -> bool:
        try:
            with open(f, "rb") as fh:
                return fh.read(132)[128:] == b"DICM"
        except OSError:
            return False

    files = [f for f in sorted(src.iterdir())[:50] if f.is_file()]
    if any(is_dicom(f) for f in files):
        return (f"{src} holds DICOM files itself: it is one series, not an archive (one folder per study) or a "
                f"manifest; for one study run 'petfeat extract --pet {src} --labels ... -o OUT'.")
    return (f"{src}: no study found: it is not an archive (one folder per study, each with a PET series) or a "
            "manifest CSV (petfeat scan writes one); for one study's PET folder use --pet PET_FOLDER.")


def _label_cache(args):
    """The label cache of ``petfeat extract``: ``--label-cache DIR``, else the default; None with ``--no-label-cache``.

    The default is ``$PETFEAT_LABEL_CACHE`` (``off`` turns it off), else the user's cache folder
    (:func:`petfeat.label_cache.default_dir`).
    """
    import os

    from petfeat.label_cache import OFF, LabelCache, default_dir

    env = os.environ.get("PETFEAT_LABEL_CACHE", "").strip()
    if getattr(args, "no_label_cache", False) or (not getattr(args, "label_cache", None) and env.lower() in OFF
                                                   and env):
        return None
    return LabelCache(args.label_cache or default_dir())


def _batch_with_cache(args, cache) -> int:
    """:func:`cmd_batch` with ``PETFEAT_LABEL_CACHE`` naming the cache (or ``off``) for the workers it starts."""
    import os

    before = os.environ.get("PETFEAT_LABEL_CACHE")
    os.environ["PETFEAT_LABEL_CACHE"] = str(cache.root) if cache is not None else "off"
    try:
        return cmd_batch(args)
    finally:
        if before is None:
            os.environ.pop("PETFEAT_LABEL_CACHE", None)
        else:
            os.environ["PETFEAT_LABEL_CACHE"] = before


def cmd_extract(args) -> int:
    """``petfeat extract``: one study (``--pet``), or a manifest/archive on Dask (positional source)."""
    import pandas as pd

    cache = _label_cache(args)
    if args.source:
        return _batch_with_cache(args, cache)
    if not args.pet:
        raise PetfeatError("give a manifest or archive folder (batch), or --pet PET_FOLDER (one study).")
    batch_only = [o for o, v in (("--scheduler", args.scheduler), ("--workers", args.workers),
                                 ("--trace-memory", args.trace_memory)) if v]
    if batch_only:
        raise PetfeatError(f"{', '.join(batch_only)}: batch options (a manifest or archive); one study (--pet) runs "
                           "in this process. Drop them, or give a manifest or archive instead of --pet.")

    from petfeat import __version__, dependency_versions
    from petfeat.extract import extract, suv_decision_notes, warn_suv_decisions
    from petfeat.features import wide_table
    from petfeat.io.dicom import read_pet_series
    from petfeat.io.label_sources import read_label_sources
    from petfeat.io.labels import read_lesion_mask, read_names_file
    from petfeat.pseudonyms import load_or_create_key
    from petfeat.quantities import QUANTITIES, study_quantities
    from petfeat.regions import BUILTIN_REGIONS, load_spec
    from petfeat.suv import compute_suv_factors

    t0 = time.perf_counter()
    key = load_or_create_key(args.key_file)  # the batch's key: the same series gets the same patient_id
    series = read_pet_series(args.pet, series_uid=args.series_uid)
    factors = compute_suv_factors(series.suv_header, lbm_formula=args.lbm, **_suv_overrides(args))
    warn_suv_decisions(factors)  # a dose read as MBq...: on the console, and in the rows' input_notes
    names = read_names_file(args.label_names) if args.label_names else None
    layers = []
    if not (args.labels or args.lesions or args.threshold):
        raise PetfeatError("nothing to measure: give label maps (--labels), a lesion mask (--lesions) or a threshold "
                           "segmentation (--threshold fixed:SUV or percist).")
    if args.lesions and Path(args.lesions).is_dir():
        raise PetfeatError(f"--lesions {args.lesions} is a folder; give the lesion mask file (NIfTI/NRRD, any grid). "
                           "Label folders (TotalSegmentator) go to --labels.")
    if not args.no_peak and args.backend != "gpu" and args.peak_neighbours == "image":
        from petfeat.kernels.warmup import start_peak_compile

        # a fresh install: the SUVpeak kernel compiles in a second process while this one reads the labels
        start_peak_compile(series.stored.dtype, series.geometry.spacing, series.stored.shape[2])
    # SimpleITK's HDF5 reader prints its error stack for a file it cannot read; the readers' warnings (int16
    # ids...) go to the console and, with the inputs' paths named by their option, into run.json
    with _native_noise_filtered(), _warnings_kept() as read_notes:
        layers = read_label_sources(_label_sources(args.labels), series, names=names, mode=args.resample,
                                    read=cache.read_labels if cache is not None else None)
        lesions = read_lesion_mask(args.lesions, series.geometry) if args.lesions else None
    regions = load_spec(args.regions) if args.regions else BUILTIN_REGIONS
    with _CompileNotice():
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
    written += _write_table(study_quantities(res.features, res.lesions), out / "quantities", args.csv, QUANTITIES)
    if args.wide:
        written += _write_table(wide_table(res.features), out / "features_wide", args.csv)
    from petfeat.pseudonyms import replace_paths

    inputs = {args.pet: "<pet>", **({args.lesions: "<lesions>"} if args.lesions else {}),
              **{str(p): f"<labels {i}>" for i, (_, p) in enumerate(_label_sources(args.labels), 1)}}
    notes = (suv_decision_notes(factors)  # the decisions are warnings too, as in a batch
             + [replace_paths(n, inputs) for n in read_notes] + list(res.warnings))
    run = {"petfeat_version": __version__, "command": "extract", "backend": res.features.backend.iloc[0],
           "settings": res.settings, "warnings": notes,
           "timings_s": {**res.timings, "total": time.perf_counter() - t0},
           "suv": {k: v for k, v in factors.to_dict().items() if k not in ("scan_datetime", "injection_datetime")},
           "pet_series": series.notes, "outputs": [p.name for p in written], "versions": dependency_versions()}
    (out / "run.json").write_text(json.dumps(run, indent=1, default=str))
    cols = ["region", "suv_mean", "suv_max", "suv_peak_global", "volume_ml", "total_uptake", "lesion_count", "status"]
    with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
        print(res.features[cols].to_string(index=False))
    print(f"{len(res.lesions)} lesions; tables in {out} ({', '.join(p.name for p in written)})")
    return 0


def _load_study_spec(load_study, path: str | None) -> dict:
    """The study spec, with a missing file or malformed YAML as a one-line :class:`PetfeatError`."""
    import yaml

    if path is not None and not Path(path).is_file():
        raise PetfeatError(f"--study {path}: no such study spec file; give a YAML file, or leave --study out for "
                           "the shipped 177Lu-PSMA study.")
    try:
        return load_study(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PetfeatError(f"--study {path}:{where}: not valid YAML ({problem}); fix the file's indentation or "
                           "quoting.") from None


def _read_feature_table(path: Path):
    """The feature table of ``petfeat extract`` (Parquet or CSV), refused when it is another table."""
    import pandas as pd

    from petfeat.io.parquet import read_parquet

    try:
        table = read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow's and pandas' many parser errors: one message
        raise PetfeatError(f"--features {path}: cannot be read as a Parquet or CSV table ({type(exc).__name__}); "
                           "give the features.parquet that petfeat extract writes.") from None
    missing = [c for c in ("patient_id", "region") if c not in table.columns]
    if missing:
        what = " (it is a lesion table)" if "lesion_id" in table.columns else ""
        raise PetfeatError(f"--features {path}: no {' or '.join(repr(c) for c in missing)} column{what}; give the "
                           "features.parquet that petfeat extract writes (one row per study and region).")
    return table


def _read_quantities(path: Path):
    """The PSMA reference quantities table beside the features, None (with a warning when unreadable) without it."""
    import warnings

    import pandas as pd

    from petfeat.errors import PetfeatWarning
    from petfeat.io.parquet import read_parquet

    if not path.is_file():
        return None
    try:
        return read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow's and pandas' many parser errors: one message
        warnings.warn(f"{path}: not readable ({type(exc).__name__}); the report's Table 1 goes without the PSMA "
                      "reference quantities. Rerun petfeat extract to write it again.", PetfeatWarning, stacklevel=2)
        return None


def cmd_analyze(args) -> int:
    """``petfeat analyze``: endpoints, models, tables, figures and an HTML report."""
    _require("lifelines", "statsmodels", "matplotlib")
    from petfeat.stats.analysis import endpoint_tests, load_study, read_clinical, run_analyses, write_report

    t0 = time.perf_counter()
    spec = _load_study_spec(load_study, args.study)
    fpath = Path(args.features)
    if not fpath.exists():
        raise PetfeatError(f"{fpath}: no such feature table; run 'petfeat extract' first.")
    features = _read_feature_table(fpath)
    clinical = Path(args.clinical)
    if not clinical.is_dir():
        raise PetfeatError(f"--clinical {clinical}: no such folder; give the folder of the patients, labs and "
                           "scores/questionnaires tables.")
    data = read_clinical(clinical, endpoint_tests(spec))  # repeats of labs no endpoint grades are not checked
    n_models = sum(len(a.get("features", ())) for a in spec.get("analyses", ()))
    progress = _Progress("analyze: fitted {i}/{n} models", delay=2.0)
    results, context = run_analyses(features, data, spec, progress=progress)
    progress(n_models, n_models)
    quantities = _read_quantities(fpath.with_name(f"quantities{fpath.suffix}"))  # extract writes it beside features
    with _Heartbeat("analyze: writing tables, figures and the report"):
        paths = write_report(results, context, spec, args.out, features=features,  # provenance: SUV type, config hash
                             quantities=quantities)  # reference uptake and tumour ratios in Table 1
    models = results[results.get("status") != "ok (covariate)"] if len(results) else results
    ok = models[models.get("status") == "ok"] if len(models) else models
    for _, r in models.iterrows():
        flag = r["flag"] if isinstance(r.get("flag"), str) else ""
        shown = r["result"] if r["status"] in ("ok", "not converged") else r["status"]
        print(f"{r['analysis'][:60]:<60} {r['feature']:<34} {shown}" + (f" [{flag}]" if flag else ""))
    print(f"{len(ok)} of {len(models)} models fitted in {time.perf_counter() - t0:.1f} s; report {paths['html']}")
    return 0


#: The examples at the end of each command's help.
EPILOGS = {
    "petfeat": """examples:
  petfeat demo --patients 12                       # the whole pipeline on a generated cohort
  petfeat suv STUDY/pet                            # SUV factors of one series, from its headers
  petfeat scan ARCHIVE -o manifest.csv             # find the studies of an archive
  petfeat extract manifest.csv -o results          # features of every study, on Dask
  petfeat analyze --features results/features.parquet --clinical CLINICAL -o report
run 'petfeat COMMAND --help' for a command's options.""",
    "suv": """examples:
  petfeat suv STUDY/pet
  petfeat suv STUDY/pet --json
  petfeat suv STUDY/pet --weight 82 --injection-time 2025-03-15T09:12:00   # override header fields""",
    "scan": """examples:
  petfeat scan ARCHIVE -o manifest.csv
  petfeat scan ARCHIVE -o manifest.csv --linkage linkage.csv   # also the map back to PatientID (keep private)""",
    "extract": """examples:
  one study:
    petfeat extract --pet STUDY/pet --labels STUDY/seg --lesions STUDY/lesions.nii.gz -o out
    petfeat extract --pet STUDY/pet --labels STUDY/seg --threshold percist -o out
  an archive or manifest, one Dask task per study:
    petfeat extract ARCHIVE -o results
    petfeat extract manifest.csv -o results --workers 8
    petfeat extract manifest.csv -o results --scheduler tcp://HOST:8786""",
    "analyze": """examples:
  petfeat analyze --features results/features.parquet --clinical CLINICAL -o report
  petfeat analyze --features results/features.parquet --clinical CLINICAL --study my_study.yaml -o report""",
    "synth": """examples:
  petfeat synth archive --patients 4
  petfeat synth archive --patients 61 --voxel-mm 4 --seed 1
  petfeat synth archive --patients 8 --overwrite   # replace the synthetic archive written there before""",
    "demo": """examples:
  petfeat demo                                     # 12 patients in ./petfeat-demo
  petfeat demo --patients 61 --out demo61          # the study's size
  petfeat demo --patients 4 --voxel-mm 8 --backend cpu   # a quick look""",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``petfeat`` command."""
    from petfeat import __version__

    p = _Parser(prog="petfeat", description="PET imaging features from DICOM archives: SUV, labelled-region and "
                "lesion features, batch extraction on Dask, outcome statistics.", epilog=EPILOGS["petfeat"])
    p.add_argument("--version", action="version", version=f"petfeat {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p.set_defaults(_subparsers=sub.choices)

    s = sub.add_parser("suv", help="print the SUV factors of a PET series", epilog=EPILOGS["suv"])
    s.add_argument("path", help="folder (searched recursively) or file of the PET series")
    s.add_argument("--json", action="store_true", help="print JSON")
    _add_overrides(s)
    s.set_defaults(func=cmd_suv)

    s = sub.add_parser("scan", help="find the studies of an archive and write a manifest", epilog=EPILOGS["scan"])
    s.add_argument("archive", help="archive root: one folder per study")
    s.add_argument("-o", "--out", required=True, help="manifest CSV to write")
    s.add_argument("--key-file", help="pseudonymisation key (default: $PETFEAT_KEY_FILE, else "
                   "~/.config/petfeat/petfeat.key; created when missing)")
    s.add_argument("--linkage", help="also write study_id, patient_id, PatientID to this CSV (mode 600; keep it "
                   "private)")
    s.set_defaults(func=cmd_scan)

    s = sub.add_parser("extract", help="features and lesions: one study (--pet) or a manifest/archive on Dask",
                       epilog=EPILOGS["extract"])
    s.add_argument("source", nargs="?", help="manifest CSV or archive folder (batch mode)")
    s.add_argument("--pet", metavar="PET_FOLDER", help="PET DICOM folder of one study")
    s.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="address of an existing Dask scheduler (batch mode)")
    s.add_argument("--scheduler-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for --scheduler before giving up")
    s.add_argument("--dashboard-address", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="local cluster: where its dashboard listens (127.0.0.1:0: loopback, a free port; "
                   "0.0.0.0:8787 exposes it to the network without authentication); the scheduler stays on loopback")
    s.add_argument("--workers", type=int, metavar="N", help="local cluster workers (default: cores)")
    s.add_argument("--trace-memory", action="store_true", help="batch mode: also trace each study's NumPy and Python "
                   "allocations (peak_traced_mb in parts/*.timing.json; reading DICOM gets ~10x slower)")
    s.add_argument("--key-file", help="pseudonymisation key, for batch and --pet alike (default: "
                   "$PETFEAT_KEY_FILE, else ~/.config/petfeat/petfeat.key; created when missing)")
    s.add_argument("--labels", nargs="+", default=[], metavar="SOURCE",
                   help="label sources: TotalSegmentator folder (one or several tasks), NIfTI/NRRD multilabel, "
                   "DICOM SEG or RTSTRUCT file; NAME=PATH names the source's name "
                   "space (region pattern NAME:GLOB), by default the TotalSegmentator task or the file's stem")
    s.add_argument("--label-names", help="JSON or CSV id -> name for the multilabel images that carry no label table "
                   "of their own (a TotalSegmentator --ml file carries one)")
    s.add_argument("--lesions", metavar="FILE",
                   help="lesion mask (NIfTI/NRRD) on any grid; resampled onto the PET grid")
    s.add_argument("--threshold", metavar="fixed:SUV|percist",
                   help="segment lesions without a mask: 'fixed:SUV' or 'percist'")
    s.add_argument("--connectivity", type=int, choices=[6, 26], default=26,
                   help="lesions are connected components of the lesion mask: 6 (faces) or 26 (faces, edges, corners)")
    s.add_argument("--min-lesion-ml", type=float, default=0.0, metavar="ML",
                   help="drop components smaller than this volume in mL")
    s.add_argument("--regions", metavar="YAML",
                   help="regions YAML (default: the built-in whole_body_tumor, tumor_bone, tumor_prostate, "
                   "tumor_visceral, tumor_lymph_node_or_soft_tissue, bone, healthy_bone, "
                   "salivary_glands and parotid_glands (need TotalSegmentator's head_glands_cavities task), aorta, "
                   "liver)")
    s.add_argument("--strict", action="store_true", help="a region that matches no label is an error (default: a "
                   "warning that lists the labels that exist)")
    s.add_argument("--resample", choices=["nearest", "fraction"], default="nearest",
                   help="label resampling onto the PET grid")
    s.add_argument("--suv-type", choices=["bw", "lbm", "bsa"], default="bw",
                   help="SUV normalisation: body weight, lean body mass (SUL; needs height and sex) or body surface "
                   "area (needs height)")
    s.add_argument("--backend", choices=["auto", "cpu", "gpu"], default="auto",
                   help="where the kernels run: auto takes the GPU when one is usable and records which ran")
    s.add_argument("--no-peak", action="store_true", help="skip SUVpeak")
    s.add_argument("--peak-neighbours", choices=["image", "region"], default="image",
                   help="voxels the SUVpeak sphere averages: every voxel in the image (IBSI) or only the "
                   "region's own voxels (no spill-in from a lesion next to healthy tissue)")
    s.add_argument("--csv", action="store_true", help="write every table as CSV beside Parquet (one study or batch)")
    s.add_argument("--label-cache", metavar="DIR", help="keep each study's labels on the PET grid here, so a rerun "
                   "with other regions, thresholds or SUV type skips reading them (default: $PETFEAT_LABEL_CACHE, "
                   "else ~/.cache/petfeat/labels; keyed by the label files' names, sizes and times and the PET "
                   "grid; 2 GB, least recently used removed first, $PETFEAT_LABEL_CACHE_GB)")
    s.add_argument("--no-label-cache", action="store_true", help="read the labels afresh and store nothing")
    s.add_argument("--wide", action="store_true", help="also write features_wide: one row per study, a "
                   "region__feature column per region and feature")
    s.add_argument("-o", "--out", required=True, help="output folder")
    _add_overrides(s)
    s.set_defaults(func=cmd_extract)

    s = sub.add_parser("analyze", help="endpoints, Cox and mixed models, tables, figures, HTML report",
                       epilog=EPILOGS["analyze"])
    s.add_argument("--features", required=True, help="feature table (features.parquet or CSV from petfeat extract)")
    s.add_argument("--clinical", required=True, help="folder with patients, labs, scores/questionnaires tables")
    s.add_argument("--study", help="study spec YAML (default: the shipped 177Lu-PSMA study)")
    s.add_argument("-o", "--out", required=True, help="report folder")
    s.set_defaults(func=cmd_analyze)

    s = sub.add_parser("synth", help="write a synthetic PSMA PET archive with ground truth", epilog=EPILOGS["synth"])
    s.add_argument("out", help="output folder")
    s.add_argument("--patients", type=int, default=4, help="number of patients (one study each)")
    s.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same archive")
    s.add_argument("--voxel-mm", type=float, default=4.0, help="PET voxel size in mm (isotropic)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace a synthetic archive that OUT holds already (without it petfeat synth refuses; a "
                        "folder holding anything else is always refused)")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("demo", help="the whole study on a generated cohort: archive, extraction, analysis, report",
                       epilog=EPILOGS["demo"])
    s.add_argument("--patients", type=int, default=12, help="patients (61 mirrors the study)")
    s.add_argument("--out", default="petfeat-demo", help="folder for the archive, tables and report")
    s.add_argument("--seed", type=int, default=0, help="random seed of the images and the clinical cohort")
    s.add_argument("--voxel-mm", type=float, default=4.0, help="PET voxel size in mm (isotropic)")
    s.add_argument("--backend", choices=["auto", "cpu", "gpu"], default="auto",
                   help="where the kernels run: auto takes the GPU when one is usable")
    s.add_argument("--workers", type=int, help="local Dask workers (default: cores)")
    s.add_argument("--scheduler", help="run on an existing Dask cluster, tcp://HOST:PORT")
    s.add_argument("--key-file", help="pseudonymisation key (default: OUT/petfeat.key; the archive is synthetic)")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``petfeat`` console script.

    Returns the exit status: 0 success, 2 a user error (one line on stderr), 3 a batch with failed
    studies, 1 a demo whose numbers miss the ground truth.
    """
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        sub = args._subparsers[args.command]
        sub.error(sub.unrecognized(extras))
    import warnings

    def one_line(message, category, filename, lineno, line=None):  # no file:line prefix, no source echo
        return f"petfeat {args.command}: warning: {_one_line(str(message))}\n"

    from petfeat import interrupts

    shown, warnings.formatwarning = warnings.formatwarning, one_line
    try:
        with interrupts.noticing():
            status = int(args.func(args) or 0)
        interrupts.check()  # a Ctrl-C whose exception a C callback swallowed
        return status
    except KeyboardInterrupt:
        print(_interrupted(args), file=sys.stderr)
        return 130
    except Exception:
        if interrupts.noticed.is_set():  # what failed after a swallowed Ctrl-C (e.g. a compile cut short)
            print(_interrupted(args), file=sys.stderr)
            return 130
        return _error_status(args)
    finally:
        warnings.formatwarning = shown


def _s(n: int) -> str:
    """The plural ending of a count's noun."""
    return "" if n == 1 else "s"


def _scan_time_note(value: str, source: str) -> str:
    """The scan time and where it came from (:func:`petfeat.suv.scan_time_origin`), or why none was needed."""
    from petfeat.suv import scan_time_origin

    origin = scan_time_origin(source)
    return f"{value}, {origin}" if origin == source else f"{value} ({origin})"


def _interrupted(args) -> str:
    """The line of an interrupted command; a batch says that its finished studies are kept."""
    if args.command == "extract" and not getattr(args, "pet", None) and getattr(args, "out", None):
        return f"interrupted: finished studies are kept in {args.out}; rerun the same command to resume"
    return "interrupted"


def _error_status(args) -> int:
    """The exit status (and one line) of the exception being handled: the user errors' 2, else it propagates."""
    try:
        raise
    except PetfeatError as exc:
        print(f"petfeat {args.command}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of our output (e.g. `| head`) closed it: nothing left to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit flush from failing again
        return 0
    except (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"petfeat {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"petfeat {args.command}: error: {_missing_extra(exc)}", file=sys.stderr)
        return 2


#: The optional dependencies by extra (pyproject.toml): a command that needs one names its pip command.
EXTRAS = {"dask": "batch", "distributed": "batch", "lifelines": "stats", "statsmodels": "stats",
          "matplotlib": "stats", "jinja2": "stats", "tabulate": "stats", "pydantic": "stats", "cupy": "gpu",
          "cupyx": "gpu"}


def _missing_extra(exc: ImportError) -> str:
    """One line for a failed import: the extra that provides the module and its pip command."""
    top = (exc.name or "").split(".")[0]
    if isinstance(exc, ModuleNotFoundError) and top in EXTRAS:
        extra = EXTRAS[top]
        return (f"this command needs petfeat's [{extra}] extra ({top} is not installed): "
                f"pip install 'petfeat[{extra}]' (or 'petfeat[all]')")
    return _one_line(str(exc))


def _require(*modules: str) -> None:
    """Refuse, before any work, a command whose extra is not installed (:func:`_missing_extra`'s message)."""
    import importlib.util

    for m in modules:
        try:
            found = importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise PetfeatError(_missing_extra(ModuleNotFoundError(f"No module named {m!r}", name=m)))


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
