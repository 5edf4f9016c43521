"""Whole archives on Dask: one task per study, local or on an existing cluster, nothing lost.

Each task reads one study, extracts its features and lesions and writes them as its own Parquet
parts, atomically (temporary file + rename), under ``OUT/parts/``. A study that fails writes a
failure record instead; the task itself never raises, so one bad study never stops the batch. The
part names are a hash of the study's inputs (paths, file sizes and times) and of the settings, so a
rerun of the same command skips finished studies and retries failed ones. At the end the parts of
this run are consolidated into ``features.parquet``, ``lesions.parquet``, ``labels.parquet``,
``quantities.parquet`` (PSMA reference quantities), ``failures.parquet`` and ``run.json``, each in a
fixed row order (CSV copies and a wide feature table on request).

Every study of the manifest ends in exactly one of the features or the failures: what a task cannot
record itself (a worker killed past the retries, a lost scheduler, an unwritable output folder, a
part the client cannot see) the client records. Paths are made absolute before they reach a worker;
failure records and console lines name no archive folder or file: a study's inputs are named by
their manifest column (``<S...>/<pet folder>``, ``<S...>/<labels 1>``) and the files inside them by
their place (``file 8 of 59 (sorted by name)``), see :func:`redact`. A study's SUV overrides come
from the manifest's override columns and are part of its parts' names. The local cluster listens on
loopback only unless asked otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import stat
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from petfeat import interrupts
from petfeat.errors import PetfeatError
from petfeat.io.archive import StudyRow
from petfeat.io.atomic import atomic_write
from petfeat.io.parquet import read_parquet
from petfeat.pseudonyms import path_forms, path_pattern

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
    #: study_id -> the warnings its extraction raised (kept off the console; listed in run.json).
    warnings: dict = field(default_factory=dict)


#: Entries (files, folders, links) one study's inputs may hold before its signature is refused.
MAX_SIGNATURE_ENTRIES = 200_000


class BatchError(PetfeatError):
    """A batch run cannot start or a study's inputs cannot be processed (scheduler, input paths)."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "char-device"), (stat.S_ISBLK, "block-device"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "folder"), (stat.S_ISREG, "file")):
        if test(mode):
            return name
    return "other"


def _entry_signature(path: str, rel: str) -> tuple:
    """One folder entry, stat-ed without opening it and without following a symlinked folder."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return (rel, "unreadable", exc.errno)
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        try:
            tst = os.stat(path)  # the target's size and time, never its contents
        except OSError as exc:  # a loop (ELOOP) or a dangling link
            return (rel, "link", target, "broken", exc.errno)
        if stat.S_ISREG(tst.st_mode):
            return (rel, "link", target, tst.st_size, tst.st_mtime_ns)
        return (rel, "link", target, _kind(tst.st_mode))
    if stat.S_ISREG(st.st_mode):
        return (rel, st.st_size, st.st_mtime_ns)
    return (rel, _kind(st.st_mode))


def _stat_signature(path: Path, limit: int | None = None) -> list:
    """Names, sizes and times of a file or of every entry under a folder; nothing is opened.

    The path itself may be a symlink (followed); inside a folder, symlinks are recorded by their
    target string (plus the target's size and time when it is a file) and never walked into, so a
    link loop cannot recurse. FIFOs and devices are recorded by type. A folder holding more than
    ``limit`` entries (default :data:`MAX_SIGNATURE_ENTRIES`) raises :class:`BatchError`.
    """
    limit = MAX_SIGNATURE_ENTRIES if limit is None else limit
    top = str(path)
    try:
        st = os.stat(top)
    except FileNotFoundError:
        return [top, None]
    except OSError as exc:
        return [top, "unreadable", exc.errno]
    if not stat.S_ISDIR(st.st_mode):
        return [top, st.st_size, st.st_mtime_ns] if stat.S_ISREG(st.st_mode) else [top, _kind(st.st_mode)]
    sig: list = [top]
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        folder = os.path.join(top, rel_dir) if rel_dir else top
        try:
            with os.scandir(folder) as it:
                names = sorted(e.name for e in it)
        except OSError as exc:
            sig.append((rel_dir, "unreadable", exc.errno))
            continue
        if len(sig) + len(names) > limit:
            raise BatchError(f"{top}: pet_path holds more than {limit} files; point to the study's PET folder.")
        subdirs = []
        for name in names:
            rel = os.path.join(rel_dir, name) if rel_dir else name
            entry = _entry_signature(os.path.join(folder, name), rel)
            sig.append(entry)
            if entry[1:] == ("folder",):
                subdirs.append(rel)
        stack.extend(reversed(subdirs))
    return sig


def study_key(row: StudyRow, settings: BatchSettings) -> str:
    """Key of a study's parts: its inputs (paths, sizes, times), its SUV overrides and the settings.

    A row without overrides keeps the key it had before override columns existed. Raises
    :class:`BatchError` when an input folder is too large to describe (see :func:`_stat_signature`).
    """
    sig = [settings.digest(), row.study_id, row.series_uid, _stat_signature(Path(row.pet_path)),
           [_stat_signature(Path(p)) for p in row.labels], _stat_signature(Path(row.lesions)) if row.lesions else None]
    overrides = getattr(row, "suv_overrides", None)
    if overrides:  # editing a manifest's weight_kg (etc.) makes the study new work
        sig.append(sorted((k, str(v)) for k, v in overrides.items()))
    return hashlib.sha256(json.dumps(sig, default=str).encode()).hexdigest()[:20]


def _absolute_row(row: StudyRow) -> StudyRow:
    """The row with every path absolute (``Path.absolute``: a user's symlinks are kept, not resolved).

    Workers of an external cluster run in their own working directories: relative paths would
    point elsewhere there.
    """
    def ab(p: str) -> str:
        return str(Path(p).absolute()) if p else p

    changes = {"pet_path": ab(row.pet_path), "labels": [ab(p) for p in row.labels], "lesions": ab(row.lesions)}
    if getattr(row, "study_path", ""):
        changes["study_path"] = ab(row.study_path)
    return dataclasses.replace(row, **changes)


def _study_folder(row: StudyRow) -> str:
    return getattr(row, "study_path", "") or str(Path(row.pet_path).parent)


#: Characters after which a path has ended (besides the end of the text).
_PATH_END = frozenset("/\\'\":,;)]")


def _input_names(row: StudyRow) -> dict[str, str]:
    """The study's folder and inputs, each with the placeholder that names it in outputs and logs."""
    sid = f"<{row.study_id}>"
    names = {_study_folder(row): sid}
    if row.pet_path:
        names.setdefault(row.pet_path, f"{sid}/<pet {'file' if os.path.isfile(row.pet_path) else 'folder'}>")
    for i, p in enumerate(row.labels, start=1):
        names.setdefault(p, f"{sid}/<labels {i}>")
    if row.lesions:
        names.setdefault(row.lesions, f"{sid}/<lesions>")
    return names


def _listing(folder: str, cache: dict) -> list[tuple[str, bool]] | None:
    """``(name, is_folder)`` of a folder's entries, sorted by name; None when it cannot be listed."""
    if folder not in cache:
        try:
            with os.scandir(folder) as it:
                cache[folder] = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
        except OSError:
            cache[folder] = None
    return cache[folder]


def _ends(text: str, i: int) -> bool:
    """Whether a path may end before ``text[i]``: the end, a separator, space, quote or punctuation, a full stop."""
    return (i == len(text) or text[i] in _PATH_END or text[i].isspace()
            or (text[i] == "." and (i + 1 == len(text) or text[i + 1].isspace())))


def _class_file(name: str) -> bool:
    """Whether ``name`` is ``<class>.nii.gz`` (or ``.nii``) of a TotalSegmentator class: the tool's name, no one's."""
    from petfeat.io.totalsegmentator import TASK_CLASSES

    stem = name[:-7] if name.endswith(".nii.gz") else name[:-4] if name.endswith(".nii") else None
    return stem is not None and any(stem in names for names in TASK_CLASSES.values())


def _place(text: str, i: int, folder: str, name: str, cache: dict, known: dict[str, str]) -> tuple[int, str]:
    """``name`` (the placeholder of ``folder``) and the names after ``text[i]``, each as its place in its folder.

    Returns the position after the last name matched and the replacement: ``<S...>/<pet folder>/file
    8 of 59 (sorted by name)``, counting the folder's files (or folders) sorted by name as
    ``LC_ALL=C ls`` does, without the hidden ones unless the name is hidden. A folder reached this
    way that is one of the study's inputs (``known``: resolved path -> placeholder) takes its
    placeholder. In a label folder a TotalSegmentator class file keeps its name. A name that is not
    (or no longer) in its folder is withheld with the rest of the path, up to the next space, quote
    or punctuation.
    """
    parts: list[str] = []
    while i < len(text) and text[i] == "/":
        entries = _listing(folder, cache)
        match = None
        for entry, is_dir in sorted(entries or (), key=lambda e: -len(e[0])):  # the longest name that fits
            end = i + 1 + len(entry)
            if text.startswith(entry, i + 1) and _ends(text, end):
                match = (entry, is_dir, end)
                break
        if match is None:
            j = i + 1
            while j < len(text) and (text[j] == "/" or not _ends(text, j)):  # the rest of the path, all of it
                j += 1
            if j > i + 1:
                return j, "/".join([name, *parts, "(a name not in the folder)"])
            break
        entry, is_dir, end = match
        if not is_dir and "/<labels " in name and _class_file(entry):
            parts.append(entry)
            i = end
            break
        same = [n for n, d in entries if d == is_dir and (entry.startswith(".") or not n.startswith("."))]
        parts.append(f"{'folder' if is_dir else 'file'} {same.index(entry) + 1} of {len(same)}")
        folder, i = os.path.join(folder, entry), end
        if os.path.realpath(folder) in known:  # one of the study's inputs, reached through another form of its path
            name, parts = known[os.path.realpath(folder)], []
        if not is_dir:
            break
    placed = any(" of " in p for p in parts)
    return i, "/".join([name, *parts]) + (" (sorted by name)" if placed else "")


def redact(text: str, row: StudyRow, out: str | Path | None = None) -> str:
    """``text`` without any archive folder or file name of the study (the output folder becomes ``OUT``).

    Archive folder and file names often carry patient names or record numbers (PACS exports name
    files after the patient). Failure records, ``run.json`` warnings and console lines name the study
    folder ``<S1a2b3c4d5e6f>``, its inputs by manifest column (``<S...>/<pet folder>``,
    ``<S...>/<labels 2>`` for the second entry of ``labels``, ``<S...>/<lesions>``) and every name
    below them by its place: ``<S1a2b3c4d5e6f>/<pet folder>/file 8 of 59 (sorted by name)``; only a
    TotalSegmentator class file in a label folder keeps its name (``<S...>/<labels 1>/liver.nii.gz``).
    With the manifest row (the user's own file) the file is found again: the 8th of the PET folder's 59
    files as ``LC_ALL=C ls`` sorts them. The study folder is ``row.study_path`` when the manifest has
    it, else the PET path's parent. Each path is recognised as given, absolute and resolved.
    """
    names = _input_names(row)
    if out is not None:
        names.setdefault(str(out), "OUT")
    anchors = path_forms(names)  # a written form of a path -> (placeholder, the path)
    if not anchors:
        return text
    pattern = path_pattern(anchors)
    cache: dict = {}
    known = {os.path.realpath(path): name for path, name in names.items() if name != "OUT"}
    pieces, pos = [], 0
    while (m := pattern.search(text, pos)) is not None:
        name, path = anchors[m.group()]
        end, replaced = (m.end(), name) if name == "OUT" else _place(text, m.end(), path, name, cache, known)
        pieces += [text[pos:m.start()], replaced]
        pos = end
    pieces.append(text[pos:])
    return "".join(pieces)


def _utf8(text: str) -> str:
    """``text`` with each undecodable byte of a name (a surrogate escape) as ``?``: Parquet and JSON take UTF-8."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _failure(row: StudyRow, error_class: str, message: str, out: str | Path | None = None) -> dict:
    """A failure record (the columns of ``failures.parquet``), with folder names redacted, advice for a batch."""
    return {"study_id": row.study_id, "pet_path": _utf8(redact(row.pet_path, row, out)), "error_class": error_class,
            "message": _utf8(redact(batch_advice(message, row), row, out))}


#: The one-study command-line override options and the manifest column that does the same in a batch.
_OPTION_COLUMNS = {"--weight": "weight_kg", "--height": "height_m", "--sex": "sex", "--dose": "dose_bq",
                   "--half-life": "half_life_s", "--injection-time": "injection_time"}


def batch_advice(message: str, row: StudyRow) -> str:
    """``message`` with each command-line override it advises turned into the manifest column a batch reads.

    The SUV code names its fixes as ``pass the override weight_kg= (CLI: --weight KG)``; a batch
    refuses ``--weight`` (an option of one study), so the advice becomes "add weight_kg to this
    study's row in the manifest, or run it alone with --pet ... --weight KG". Where the row already
    sets that column, the message names the column whose value was refused.
    """
    import re

    overrides = getattr(row, "suv_overrides", None) or {}
    column_args = {"injection_time": "injection_datetime"}

    def advice(col: str, option_text: str) -> str:
        if column_args.get(col, col) in overrides:
            return f"the {col} column of this study's row in the manifest"
        return f"add {col} to this study's row in the manifest, or run it alone with --pet ... {option_text}"

    def full(m: re.Match) -> str:  # "pass the override weight_kg= (CLI: --weight KG)"
        col = _OPTION_COLUMNS.get(m.group(2))
        return advice(col, m.group(2) + m.group(3)) if col else m.group(0)

    def short(m: re.Match) -> str:  # "(CLI: --weight KG)" or "(override: --height M)" elsewhere
        col = _OPTION_COLUMNS.get(m.group(1))
        return f"({advice(col, m.group(1) + m.group(2))})" if col else m.group(0)

    def inline(m: re.Match) -> str:  # "...; override: --injection-time)" inside a longer parenthesis
        col = _OPTION_COLUMNS.get(m.group(1))
        return f"override: the manifest's {col} column" if col else m.group(0)

    message = re.sub(r"(?i)pass the override (\w+)= \(CLI: (--[a-z-]+)([^)]*)\)", full, message)
    message = re.sub(r"\((?:CLI|override): (--[a-z-]+)([^)]*)\)", short, message)
    return re.sub(r"override: (--[a-z-]+)(?: [A-Z][A-Z:-]*)?", inline, message)


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda f: df.to_parquet(f, index=False))


def _atomic_json(obj: dict, path: Path) -> None:
    atomic_write(path, lambda f: Path(f).write_text(json.dumps(obj, default=str)))


def _limit_threads(threads: int) -> None:
    """One task per core is the batch's parallelism: keep Numba and SimpleITK from oversubscribing."""
    import SimpleITK as sitk

    from petfeat.kernels.threads import set_cpu_threads

    set_cpu_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, threads))


#: glibc ``mallopt`` parameters (malloc.h) and the values set in batch workers (:func:`_allocator_for_volumes`).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_WORKER_MMAP_THRESHOLD = 32 << 20  # glibc's own upper bound for its dynamic threshold
_WORKER_TRIM_THRESHOLD = 128 << 20


def _allocator_for_volumes() -> bool:
    """Let glibc reuse freed buffers below 32 MB in this process, as it does when no malloc setting is given.

    Dask's nanny starts each worker with ``MALLOC_TRIM_THRESHOLD_=65536``. Any explicit malloc setting
    turns off glibc's dynamic mmap threshold, so every buffer of 128 kB or more (each inflated label
    chunk, each slab temporary) becomes a fresh ``mmap`` whose pages fault in again: reading a
    real-sized study's labels took 12.4 s instead of 4.2 s in one process with that variable set,
    with 6.6 M page faults instead of 0.26 M. Raising the mmap threshold to 32 MB and the trim
    threshold to 128 MB gives the in-process speed back (5.2 s, 0.05 M faults) and leaves at most
    128 MB of freed heap unreturned to the system. Returns whether the settings were applied (glibc
    only; elsewhere nothing changes).
    """
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _WORKER_MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD,
                                                                                _WORKER_TRIM_THRESHOLD))


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


def _not_utf8(name: str) -> bool:
    """Whether a path holds a name that is not UTF-8 (Python keeps its bytes as surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _refuse_non_utf8(row: StudyRow) -> None:
    """Refuse a study whose input paths, or the label files in its label folders, are not UTF-8.

    SimpleITK cannot take such a path: given one, its C++ code aborts the whole worker process
    (``basic_string::_S_construct null not valid``), which Dask then reports as a killed worker.
    """
    columns = [("pet_path", row.pet_path)] + [("labels", p) for p in row.labels] + [("lesions", row.lesions)]
    for column, path in columns:
        bad = path if _not_utf8(path) else None
        if bad is None and column == "labels" and os.path.isdir(path):
            with contextlib.suppress(OSError):
                bad = next((os.path.join(path, n) for n in sorted(os.listdir(path)) if _not_utf8(n)), None)
        if bad is not None:
            raise BatchError(f"{bad}: a folder or file name in this study's {column} is not UTF-8 (written in another "
                             "encoding, such as Latin-1 by an old export), and the image readers cannot open such "
                             "a path. Rename it to UTF-8 (for example 'convmv -f latin1 -t utf8 -r --notest FOLDER') "
                             "and scan again.")


def _check_inputs(row: StudyRow, settings: BatchSettings) -> None:
    """Refuse a study whose inputs cannot give features, before any reader opens them."""
    _refuse_non_utf8(row)
    status = row.match_status
    measurable = row.labels or row.lesions or settings.threshold
    if status.startswith("unattributed_labels") and not measurable:
        raise BatchError(f"{row.pet_path}: no label source for this study; {status}.")
    if status.startswith("duplicate"):
        if status.strip() == "duplicate":
            status = "duplicate: the same PET series is also in another folder of the archive; remove one copy"
        raise BatchError(f"{row.pet_path}: {status}.")
    if status.startswith("unreadable_folder"):  # scan could not list a folder that may hold its labels or slices
        raise BatchError(f"{row.pet_path}: {status}.")
    if status.startswith(("no_pet_series", "several_pet_series")):
        from petfeat.errors import DicomSeriesError

        raise DicomSeriesError(f"{row.pet_path}: {status.replace('_', ' ')}.")
    if not measurable:
        raise BatchError(f"{row.pet_path}: nothing to measure: no label map or lesion mask was found for this study "
                         "(match_status " + (status or "ok") + "). Put its TotalSegmentator output, RTSTRUCT, SEG or "
                         "label file beside the PET series and scan again, fill the manifest row's labels or "
                         "lesions, or pass --threshold fixed:SUV or percist.")
    try:
        mode = os.stat(row.pet_path).st_mode
    except OSError as exc:
        raise BatchError(f"{row.pet_path}: pet_path cannot be read ({exc.strerror}); fix the manifest row.") from None
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise BatchError(f"{row.pet_path}: pet_path is a {_kind(mode)}, not a folder or DICOM file; point the "
                         "manifest row to the study's PET folder.")


def run_study(row: StudyRow, settings: BatchSettings, out: str, key_hex: str, threads: int = 1,
              trace_memory: bool = False, part_key: str | None = None) -> dict:
    """Process one study (runs on a worker); never raises. Returns a small status record.

    ``threads`` bounds Numba's and SimpleITK's threads inside the task (default 1: one task per core).
    ``trace_memory`` adds ``peak_traced_mb`` (tracemalloc) to the timings; it makes reading the
    DICOM series about 10x slower (every Python object pydicom makes is traced), so it is off
    unless asked for. The peak RSS is always measured. ``part_key`` is the name of the study's
    parts as the client computed it (:func:`study_key`); computed here when not given.

    The record's ``status`` is ``done``, ``skipped`` (parts exist) or ``failed`` with ``error``, the
    failure record (folder names redacted, see :func:`redact`). Warnings raised while the study is
    processed are kept, not printed: a done study lists them (redacted, deduplicated) under
    ``warnings`` in its record and in ``parts/<key>.timing.json``. A failure record that cannot be
    written (an output folder the worker cannot write) is still returned: the client keeps it.
    """
    parts = Path(out) / "parts"
    try:
        key = part_key or study_key(row, settings)
    except Exception as exc:  # noqa: BLE001 - a study whose inputs cannot be described is a failure
        return {"study_id": row.study_id, "status": "failed", "error": _failure(row, type(exc).__name__, str(exc),
                                                                                out)}
    feat_path, fail_path = features_part(out, key), parts / f"{key}.failure.json"
    if feat_path.exists():
        try:
            notes = json.loads((parts / f"{key}.timing.json").read_text()).get("warnings", [])
        except (OSError, ValueError):
            notes = []
        return {"study_id": row.study_id, "key": key, "status": "skipped", "part": str(feat_path), "warnings": notes}
    t = {}
    t0 = time.perf_counter()
    rss_start = _reset_peak_rss()
    if trace_memory:
        tracemalloc.start()
    caught = warnings.catch_warnings(record=True)
    seen = caught.__enter__()
    warnings.simplefilter("always")
    try:
        if fail_path.exists():
            fail_path.unlink()  # a rerun retries failed studies
        _limit_threads(threads)
        _allocator_for_volumes()
        from petfeat.extract import extract, suv_decision_notes
        from petfeat.io.dicom import read_pet_series
        from petfeat.io.label_sources import read_label_sources
        from petfeat.io.labels import read_lesion_mask
        from petfeat.suv import compute_suv_factors

        _check_inputs(row, settings)
        series = read_pet_series(row.pet_path, series_uid=row.series_uid or None)
        if settings.peaks and settings.backend != "gpu" and settings.peak_neighbours == "image":
            from petfeat.kernels.warmup import start_peak_compile

            # not in the kernel cache (a fresh install): compiled in a second process while this one reads on
            start_peak_compile(series.stored.dtype, series.geometry.spacing, series.stored.shape[2])
        if row.alternatives and "series_choice" not in series.notes:  # scan chose among the study's series
            series.notes["series_choice"] = {"chosen": series.series_uid, "reason": row.series_choice,
                                             "alternatives": [{"series_uid": u} for u in row.alternatives]}
        t["read_s"] = time.perf_counter() - t0
        factors = compute_suv_factors(series.suv_header, **(getattr(row, "suv_overrides", None) or {}))
        t["suv_s"] = time.perf_counter() - t0 - sum(t.values())
        from petfeat.label_cache import from_env

        cache = from_env()  # the folder $PETFEAT_LABEL_CACHE names (petfeat extract sets it), else none
        layers = read_label_sources([(None, p) for p in row.labels], series, mode=settings.resample,
                                    read=cache.read_labels if cache is not None else None)
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
        from petfeat.cli import _label_table

        labels = pd.DataFrame(_label_table(layers, series.geometry.voxel_volume_ml))
        labels.insert(0, "study_id", row.study_id)
        _atomic_parquet(labels, parts / f"{key}.labels.parquet")
        t["write_s"] = time.perf_counter() - t0 - sum(t.values())
        hwm, over_start = _peak_rss(rss_start)
        t.update(total_s=time.perf_counter() - t0, raw_pixel_mb=raw_bytes / 1e6, peak_rss_over_start_mb=over_start,
                 peak_rss_mb=hwm)
        if trace_memory:
            t["peak_traced_mb"] = tracemalloc.get_traced_memory()[1] / 1e6
        suv = {"units": factors.units, "suv_bw_factor": float(factors.suv_bw_per_slice[0]),
               "sul_factor": factors.sul_factor, "uptake_seconds": factors.uptake_seconds,
               "scan_time_source": factors.scan_time_source, "warnings": factors.warnings}
        # the SUV header decisions (a value reinterpreted or assumed) are the study's warnings too
        notes = sorted({_utf8(redact(batch_advice(f"{w.category.__name__}: {w.message}", row), row, out)) for w in seen}
                       | {_utf8(redact(batch_advice(n, row), row, out)) for n in suv_decision_notes(factors)})
        _atomic_json({"study_id": row.study_id, **t, "suv": suv, "warnings": notes}, parts / f"{key}.timing.json")
        _atomic_parquet(res.features, feat_path)  # last: its presence marks the study done
        return {"study_id": row.study_id, "key": key, "status": "done", "timings": t, "suv": suv,
                "warnings": notes, "part": str(feat_path)}
    except Exception as exc:  # noqa: BLE001 - every failure becomes a record, never a stopped batch
        rec = _failure(row, type(exc).__name__, str(exc), out)
        try:
            parts.mkdir(parents=True, exist_ok=True)
            _atomic_json(rec, fail_path)
        except Exception:  # noqa: BLE001,S110 - the client writes the returned record
            pass
        return {"study_id": row.study_id, "key": key, "status": "failed", "error": rec}
    finally:
        caught.__exit__(None, None, None)
        if trace_memory:
            tracemalloc.stop()


def _client(scheduler: str | None, n_workers: int | None, backend: str, *, timeout: float = 30.0,
            dashboard_address: str = "127.0.0.1:0"):
    """A Dask client: on ``scheduler``, or on a new local cluster listening on loopback only (default).

    The local cluster's scheduler and workers listen on ``127.0.0.1`` only (nothing outside this
    machine needs them); the dashboard listens at ``dashboard_address`` (default loopback, a free port).
    """
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout=f"{timeout}s"), None
        except (OSError, TimeoutError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BatchError(f"cannot reach the Dask scheduler at {scheduler}: {reason}. Start it (dask scheduler) "
                             "or drop --scheduler.") from None
    host = "127.0.0.1"
    quiet = logging.CRITICAL + 1
    if backend == "gpu":
        try:
            from dask_cuda import LocalCUDACluster

            cluster = LocalCUDACluster(threads_per_worker=1, silence_logs=quiet, host=host,
                                       dashboard_address=dashboard_address)
            return Client(cluster), cluster
        except ImportError:
            n_workers = 1  # one GPU worker without dask-cuda
    n = n_workers or os.cpu_count() or 1
    with interrupts.ignored_by_children():
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, silence_logs=quiet, host=host,
                               dashboard_address=dashboard_address)
    return Client(cluster), cluster


@contextlib.contextmanager
def _quiet_dask_logs():
    """Keep distributed's and tornado's log records off the console while a batch runs.

    Worker deaths and lost connections are logged with tracebacks; the batch's own summary says
    what happened instead. The levels are restored afterwards.
    """
    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in ("distributed", "tornado")]
    loggers = [logging.getLogger(n) for n in {"distributed", "tornado", *names}]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


class _Progress:
    """One progress line: rewritten in place on a terminal, one line per ``every`` seconds otherwise."""

    def __init__(self, stream, total: int, every: float = 10.0):
        self.stream, self.total, self.every = stream, total, every
        self.tty = bool(stream) and hasattr(stream, "isatty") and stream.isatty()
        self.t0, self.base = time.perf_counter(), 0
        self.last, self.shown = -float("inf"), -1

    def restart(self, done: int) -> None:
        """Rate and ETA from now on, over the studies after the ``done`` ones (the kernels' compile is not a rate)."""
        self.t0, self.base = time.perf_counter(), done

    def update(self, i: int, report: BatchReport, final: bool = False) -> None:
        if not self.stream:
            return
        now = time.perf_counter()
        if not (self.tty or final or now - self.last >= self.every) or (final and not self.tty and i == self.shown):
            return
        self.last, self.shown = now, i
        elapsed = max(now - self.t0, 1e-9)
        n = i - self.base
        rate = n / elapsed * 60
        eta = (self.total - i) * elapsed / n if n > 0 else float("nan")
        eta_text = f", ETA {eta:.0f} s" if n > 0 and i < self.total else ""
        ran = report.done + report.failed > 0  # a rate of studies only found done says nothing
        line = (f"studies {i}/{self.total}: {report.done} done, {report.skipped} skipped, {report.failed} failed"
                + (f" ({rate:.1f}/min{eta_text})" if ran else ""))
        if self.tty:
            print(f"\r{line}", end="\n" if final else "", file=self.stream, flush=True)
        else:
            print(line, file=self.stream, flush=True)


_LOST = "the scheduler was lost; rerun to resume"


def _task_error(exc: BaseException, row: StudyRow) -> str:
    """The failure message of a task that raised on its worker instead of returning a record."""
    if type(exc).__name__ == "KilledWorker":
        return (f"the worker processing {row.pet_path} died on every try (killed, or out of memory); run the study "
                "alone with 'petfeat extract --pet' to see why, or give the workers more memory")
    return f"the study's task raised {type(exc).__name__}: {exc}"


def _is_connection_loss(exc: BaseException, client) -> bool:
    from distributed.comm.core import CommClosedError

    return (isinstance(exc, CommClosedError) or "scheduler-connection-lost" in str(exc)
            or getattr(client, "status", "running") not in ("running", "connecting"))


def run_batch(rows: list[StudyRow], out: str | Path, settings: BatchSettings, key: bytes, *,
              scheduler: str | None = None, n_workers: int | None = None, threads_per_task: int = 1,
              trace_memory: bool = False, progress=sys.stderr, scheduler_timeout: float = 30.0,
              dashboard_address: str = "127.0.0.1:0", task: Callable[..., dict] | None = None,
              csv: bool = False, wide: bool = False) -> BatchReport:
    """Run every study on Dask and consolidate the outputs (see module docstring).

    Every study ends in exactly one of ``features.parquet`` (done or skipped) or ``failures.parquet``:
    a study whose inputs cannot be described, whose task died past its retries (``KilledWorker``),
    whose part is missing after the worker reported it done (the worker wrote elsewhere), or that was
    unfinished when the scheduler was lost gets a failure record written by the client.

    Parameters
    ----------
    rows : list of StudyRow
        Studies (from :func:`petfeat.io.archive.read_manifest` or ``scan_archive``). Their paths are
        made absolute here (against this process's working directory) before they reach a worker.
    out : path
        Output folder (made absolute likewise).
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
        Where the progress line goes (rewritten in place on a terminal, one line per 10 s otherwise).
    scheduler_timeout : float
        Seconds to wait for ``scheduler`` before :class:`BatchError`.
    dashboard_address : str
        Where the local cluster's dashboard listens (``HOST:PORT``; default loopback, a free port).
    task : callable, optional
        The function run per study, with :func:`run_study`'s signature (default: ``run_study``).
    csv, wide : bool
        Also write every table as CSV; also write ``features_wide`` (see :func:`consolidate`). Output
        options only: not part of the settings, they change no number and no part name.

    Raises
    ------
    BatchError
        The scheduler cannot be reached, or the output folder cannot be created.
    """
    from petfeat.kernels.warmup import kernels_cached

    task = task or run_study
    refuse_gpu_without_device(settings.backend, scheduler)
    out = Path(out).absolute()
    try:
        (out / "parts").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BatchError(f"{out}: the output folder cannot be created ({exc.strerror}); choose another -o.") from None
    t0 = time.perf_counter()
    rows = [_absolute_row(r) for r in rows]
    results: list[dict] = []
    todo: list[tuple[StudyRow, str]] = []
    for r in rows:  # the part names, from the client's view of the inputs
        try:
            todo.append((r, study_key(r, settings)))
        except Exception as exc:  # noqa: BLE001 - becomes the study's failure record
            results.append({"study_id": r.study_id, "status": "failed",
                            "error": _failure(r, type(exc).__name__, str(exc), out)})
    report = BatchReport(failed=len(results))
    bar = _Progress(progress, len(rows))
    found, left = [], []  # the studies whose parts exist, and the others
    for r, k in todo:
        (found if features_part(out, k).exists() else left).append((r, k))
    if task is run_study and scheduler is None and settings.backend != "gpu" and left and not kernels_cached():
        # a fresh install: compile once, before the workers start, by running a study that has work to do here;
        # the local workers then load the kernels from the cache they share instead of each compiling them
        if progress:
            print("compiling petfeat's kernels for this machine on the first study (10-20 s on 2 cores; the workers "
                  "and later runs load them from Numba's cache) ...", file=progress, flush=True)
        row, k = left.pop(0)
        res = run_study(row, settings, str(out), key.hex(), threads=os.cpu_count() or 1, trace_memory=trace_memory,
                        part_key=k)
        interrupts.check()  # a Ctrl-C that the compiler's C callback swallowed: the study's failure is not its own
        _record(_checked(res, row, k, out), results, report)
        bar.restart(len(results))
    # a study whose parts exist is skipped here, without a worker: a rerun with nothing left starts no cluster
    for r, k in found:
        _record(_checked(run_study(r, settings, str(out), key.hex(), part_key=k), r, k, out), results, report)
    if left:
        _run_on_cluster(left, results, report, bar, task=task, settings=settings, out=out, key=key,
                        scheduler=scheduler, n_workers=n_workers, threads_per_task=threads_per_task,
                        trace_memory=trace_memory, progress=progress, scheduler_timeout=scheduler_timeout,
                        dashboard_address=dashboard_address)
    else:
        bar.update(len(results), report, final=True)
    _name_other_copies(rows, results)
    report.outputs = consolidate(out, results, csv=csv, wide=wide)
    report.warnings = {r["study_id"]: r["warnings"] for r in sorted(results, key=lambda r: r["study_id"])
                       if r.get("warnings")}
    stage = pd.DataFrame([r["timings"] for r in results if r.get("timings")])
    report.timings = {"wall_s": time.perf_counter() - t0,
                      "per_study_median": stage.median().to_dict() if len(stage) else {},
                      "per_study_sum": stage.sum().to_dict() if len(stage) else {}}
    _write_run_json(out, settings, report, len(rows), scheduler)
    return report


def _name_other_copies(rows: list[StudyRow], results: list[dict]) -> None:
    """Add to a failed study's message the other copies of its series that scan marked ``duplicate of`` it."""
    import re

    copies: dict[str, list[str]] = {}
    for r in rows:
        m = re.match(r"duplicate of (\S+?):?(?:\s|$)", r.match_status)
        if m:
            copies.setdefault(m.group(1), []).append(r.study_id)
    for res in results:
        others = copies.get(res.get("study_id", ""))
        if res.get("status") == "failed" and others and res.get("error"):
            ids = ", ".join(others)
            res["error"] = {**res["error"], "message": (
                f"{res['error']['message']} Another copy of this series is in the manifest as {ids} (match_status "
                f"duplicate of {res['study_id']}): to use it, copy that row's pet_path, labels and lesions into this "
                "row, or remove the damaged copy and scan again.")}


def refuse_gpu_without_device(backend: str, scheduler: str | None) -> None:
    """Raise :class:`~petfeat.errors.BackendError` for ``backend="gpu"`` on local workers without a usable device.

    Every study would fail on them: refused before anything starts. On ``scheduler`` the workers'
    devices decide (a worker without one records the study's failure).
    """
    if scheduler is None and backend == "gpu":
        from petfeat.backend import resolve_backend

        resolve_backend("gpu")


def _record(res: dict, results: list[dict], report: BatchReport) -> None:
    """Keep a study's record and count it under its status."""
    results.append(res)
    setattr(report, res["status"], getattr(report, res["status"]) + 1)


def _answers(url: str | None, timeout: float = 2.0) -> bool:
    """Whether ``url`` answers an HTTP GET with a success status within ``timeout`` seconds."""
    import urllib.error
    import urllib.request

    if not url:
        return False
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the scheduler's host, not via a proxy
    try:
        with opener.open(url, timeout=timeout) as resp:
            return resp.status < 400
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _run_on_cluster(todo: list[tuple[StudyRow, str]], results: list[dict], report: BatchReport, bar: _Progress, *,
                    task, settings: BatchSettings, out: Path, key: bytes, scheduler: str | None,
                    n_workers: int | None, threads_per_task: int, trace_memory: bool, progress,
                    scheduler_timeout: float, dashboard_address: str) -> None:
    """Run ``todo``'s studies on Dask (see :func:`run_batch`), appending each study's record to ``results``."""
    from distributed import as_completed

    with _quiet_dask_logs():
        client, cluster = _client(scheduler, n_workers, settings.backend, timeout=scheduler_timeout,
                                  dashboard_address=dashboard_address)
        # a scheduler started with --no-dashboard still lists the dashboard's port, which answers 404 there
        report.dashboard = client.dashboard_link if scheduler is None or _answers(client.dashboard_link) else None
        try:
            if progress:
                n = len(client.scheduler_info()["workers"])
                where = report.dashboard or "none (the scheduler serves no dashboard)"
                print(f"Dask dashboard: {where}  ({n} worker{'' if n == 1 else 's'})", file=progress, flush=True)
            # a task's Dask key names its output folder too: two runs of the same studies into other folders on one
            # scheduler are different tasks (with the part key alone, one run was handed the other's results)
            run = hashlib.sha256(str(out).encode()).hexdigest()[:8]
            futures = [client.submit(task, r, settings=settings, out=str(out), key_hex=key.hex(),
                                     threads=threads_per_task, trace_memory=trace_memory, part_key=k,
                                     key=f"study-{k}-{run}", retries=2, pure=False) for r, k in todo]
            pending = {f.key: (r, k) for f, (r, k) in zip(futures, todo)}
            lost = None
            done_iter = as_completed(futures)
            while True:
                try:
                    fut = next(done_iter)
                except StopIteration:
                    break
                except Exception as exc:  # noqa: BLE001 - the client's own connection failed
                    if not _is_connection_loss(exc, client):
                        raise
                    lost = exc
                    break
                row, k = pending.pop(fut.key)
                try:
                    res = fut.result()
                except Exception as exc:  # noqa: BLE001 - a task that died past its retries, or a lost scheduler
                    if _is_connection_loss(exc, client):
                        lost = exc
                        pending[fut.key] = (row, k)
                        break
                    res = {"study_id": row.study_id, "key": k, "status": "failed",
                           "error": _failure(row, type(exc).__name__, _task_error(exc, row), out)}
                _record(_checked(res, row, k, out), results, report)
                bar.update(len(results), report)
            if lost is not None:
                for row, k in pending.values():
                    if features_part(out, k).exists():
                        res = {"study_id": row.study_id, "key": k, "status": "done"}
                    else:
                        res = {"study_id": row.study_id, "key": k, "status": "failed",
                               "error": _failure(row, "SchedulerLost", _LOST, out)}
                    _record(res, results, report)
            bar.update(len(results), report, final=True)
        finally:
            with contextlib.suppress(Exception):
                client.close(timeout=5)
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.close(timeout=10)


def features_part(out: str | Path, key: str) -> Path:
    """A study's features part in the output folder ``out``: its presence marks the study done."""
    return Path(out) / "parts" / f"{key}.features.parquet"


def _checked(res: dict, row: StudyRow, key: str, out: Path) -> dict:
    """A task's record, with a failure when a study reported done has no part where the client looks."""
    if res.get("status") in ("done", "skipped") and not features_part(out, key).exists():
        where = redact(str(res.get("part", "?")), row, out)
        return {"study_id": row.study_id, "key": key, "status": "failed", "error": _failure(
            row, "PartMissing", f"part missing: the worker wrote to {where}, which this client does not see; give "
            "absolute paths and an output folder every worker shares", out)}
    if res.get("status") == "failed" and not res.get("error"):
        res = {**res, "error": _failure(row, "TaskFailed", "the study's task returned no failure record", out)}
    return {**res, "key": key}


FEATURE_ORDER = ("study_id", "region")
LESION_ORDER = ("study_id", "lesion_id")


LABEL_ORDER = ("study_id", "namespace", "label")


def _write_output(df: pd.DataFrame, path: Path, csv: bool, registry=()) -> None:
    """``path`` (.parquet, with unit and description field metadata) and, with ``csv``, the same table as .csv."""
    from petfeat.features import write_parquet

    atomic_write(path, lambda f: write_parquet(df, f, registry))
    if csv:
        atomic_write(path.with_suffix(".csv"), lambda f: df.to_csv(f, index=False))


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """``pd.concat`` of the studies' tables, a column's dtype taken from the studies that have values in it.

    pandas deprecates letting an all-NA column of one study (no RTSTRUCT native volume, no lesion)
    decide nothing about the result's dtype; the columns are dropped from such frames first, and a
    column without a value in any study keeps its dtype from the first study.
    """
    cols = list(dict.fromkeys(c for f in frames for c in f.columns))
    dtypes: dict = {}
    for f in frames:
        for c in f.columns:
            dtypes.setdefault(c, f[c].dtype)
    df = pd.concat([f.dropna(axis=1, how="all") for f in frames], ignore_index=True).reindex(columns=cols)
    for c in cols:
        if df[c].isna().all():
            df[c] = df[c].astype(dtypes[c])
    return df


def consolidate(out: Path, results: list[dict], *, csv: bool = False, wide: bool = False) -> dict:
    """Concatenate this run's parts into the final tables (atomically), in a fixed row order.

    ``results`` are the records of :func:`run_study` (``key`` and ``status``; failures carry their
    record in ``error``). Features are sorted by (study_id, region), lesions by (study_id, lesion_id),
    labels by (study_id, namespace, label), failures by study_id: a rerun writes byte-identical tables.
    ``quantities.parquet`` holds the PSMA reference quantities of every study
    (:func:`petfeat.quantities.study_quantities`); with ``wide``, ``features_wide.parquet`` one row per
    study (:func:`petfeat.features.wide_table`); with ``csv``, every table also as CSV. Parquet fields
    carry their unit and description (the feature registry), SUV units naming the SUV type.
    """
    from petfeat.features import wide_table
    from petfeat.quantities import QUANTITIES, study_quantities

    out = Path(out)
    parts = out / "parts"
    outputs = {}
    tables = {}
    ok = [r["key"] for r in results if r.get("status") in ("done", "skipped") and r.get("key")]
    for name, order in (("features", FEATURE_ORDER), ("lesions", LESION_ORDER), ("labels", LABEL_ORDER)):
        frames = [read_parquet(p) for k in ok if (p := parts / f"{k}.{name}.parquet").exists()]
        frames = [f for f in frames if len(f)]
        df = _concat(frames) if frames else pd.DataFrame()
        by = [c for c in order if c in df.columns]
        if by:
            df = df.sort_values(by, kind="mergesort").reset_index(drop=True)
        _write_output(df, out / f"{name}.parquet", csv)
        outputs[name] = len(df)
        tables[name] = df
    # the failure records first: a derived table that cannot be built must not take them with it
    fails = [r["error"] for r in results if r.get("status") == "failed"]
    fdf = pd.DataFrame(fails, columns=list(FAILURE_COLUMNS)).sort_values("study_id", kind="mergesort")
    _write_output(fdf.reset_index(drop=True), out / "failures.parquet", csv)
    outputs["failures"] = len(fails)
    feats, lesions = tables["features"], tables["lesions"]
    if not len(lesions):  # no study of the run has a lesion: each study's count is 0 (or <NA> without a source)
        lesions = pd.DataFrame(columns=["study_id", "suv_max", "volume_ml"])
    quant = study_quantities(feats, lesions)
    _write_output(quant, out / "quantities.parquet", csv, QUANTITIES)
    outputs["quantities"] = len(quant)
    if wide:
        wdf = wide_table(feats)
        _write_output(wdf, out / "features_wide.parquet", csv)
        outputs["features_wide"] = len(wdf)
    return outputs


def _write_run_json(out: Path, settings: BatchSettings, report: BatchReport, n: int, scheduler: str | None) -> None:
    from petfeat import __version__, dependency_versions

    run = {"petfeat_version": __version__, "settings": settings.as_dict(), "settings_digest": settings.digest(),
           "scheduler": scheduler or "local", "studies": n, "done": report.done, "skipped": report.skipped,
           "failed": report.failed, "outputs": report.outputs, "timings": report.timings,
           "warnings": report.warnings, "versions": dependency_versions()}
    _atomic_json(run, out / "run.json")
