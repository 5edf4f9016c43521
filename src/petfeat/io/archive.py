"""Discover studies in an archive and describe them in a manifest (CSV), validated on load.

Convention: every folder directly under the archive root is scanned (at any depth) for DICOM files
and label maps. Inside it:

* **Studies.** PET series (Modality PT) are grouped by StudyInstanceUID; each study is one manifest
  row (a patient folder with baseline and follow-up gives two rows). Within a study one PET series is
  chosen deterministically by :func:`petfeat.io.dicom.choose_pet_series` (projections/MIPs dropped by
  geometry, then attenuation-corrected, most files, lowest SeriesNumber, UID);
  the row records the reason (``series_choice``) and the other PET series (``alternatives``). Edit
  ``series_uid`` to override.
* **Label maps by content.** A folder of ``<class>.nii.gz`` files whose names a TotalSegmentator task
  explains (:func:`petfeat.io.totalsegmentator.identify_task`), or several tasks together
  (:func:`~petfeat.io.totalsegmentator.split_by_task`), at any depth, is one label source per folder;
  so is a folder named ``seg``, ``segmentations`` or ``totalsegmentator``. A NIfTI with a label table
  in its header (TotalSegmentator ``--ml``) is a label source; other images named ``*seg*``/``*label*``
  (NIfTI/NRRD/MHA) are label sources, ``*lesion*`` the lesion mask. They are
  matched to a study when they lie in its folder; a folder with several studies cannot attribute
  them, and its rows say so (``unattributed_labels``).
* **DICOM SEG / RTSTRUCT** objects match a study when they reference its PET series, share a PET
  series' FrameOfReferenceUID, or reference another series of the same StudyInstanceUID (an
  RTSTRUCT drawn on the CT).
* **Duplicates.** A series (StudyInstanceUID, SeriesInstanceUID) found in several folders gives one
  row ``S...`` for the copy with the fewest unreadable or truncated files of that series (the first
  folder on a tie; ``series_choice`` says when a complete copy was preferred) and a row with status
  ``duplicate of S...`` for each other copy; extraction records those as failures, and a failure
  of the ``S`` row names them.
* **Unreadable files** are skipped and counted (``n_unreadable``), their kinds and names (relative to
  the study folder) in ``scan_notes``: empty files, files whose header is truncated or lacks
  Modality, PET slices whose StudyInstanceUID or SeriesInstanceUID cannot be read (never a study of
  their own), corrupt headers, PET slices whose pixel data is shorter than the header says or
  missing, files named ``.dcm`` that are not DICOM, broken or looping links, folders that cannot be
  listed. Other files (non-DICOM files such as ``Thumbs.db`` or ``notes.txt``, and ``DICOMDIR``)
  are ignored and counted as ``n_other``, as are symbolic links to files other than label maps: a linked
  slice is never read as the study's. FIFOs and devices are never opened; symbolic links to folders inside a
  study are not followed.
* **SUV overrides.** The optional columns ``weight_kg``, ``height_m``, ``sex``, ``dose_bq``,
  ``injection_time`` and ``half_life_s`` (written empty) replace header values for that study, as
  ``--weight`` etc. do for one study.

Patient identifiers never enter the manifest: ids are keyed hashes (:mod:`petfeat.pseudonyms`).
Paths are written absolute; :func:`read_manifest` resolves relative paths against the manifest's
folder.
"""

from __future__ import annotations

import csv
import io
import os
import stat
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag

from petfeat.errors import PetfeatError
from petfeat.io.atomic import atomic_write
from petfeat.io.dicom import _text
from petfeat.io.dicom_fast import read_slice_header
from petfeat.pseudonyms import (  # noqa: F401 - re-exported: petfeat.io.archive.load_or_create_key/pseudonym
    default_key_path,
    duplicate_pseudonym,
    folder_pseudonym,
    load_or_create_key,
    pseudonym,
    study_pseudonym,
)

#: Per-study SUV override columns and the :func:`petfeat.suv.compute_suv_factors` argument each fills.
OVERRIDE_COLUMNS = {"weight_kg": "weight_kg", "height_m": "height_m", "sex": "sex", "dose_bq": "dose_bq",
                    "injection_time": "injection_datetime", "half_life_s": "half_life_s"}
MANIFEST_COLUMNS = ("study_id", "patient_id", "study_date", "study_path", "pet_path", "series_uid", "series_choice",
                    "alternatives", "labels", "lesions", "match_status", "n_files", "n_unreadable", "n_other",
                    "scan_notes", *OVERRIDE_COLUMNS)
#: Columns a manifest must have; the others default (old manifests load).
REQUIRED_COLUMNS = ("study_id", "pet_path")
_LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".nhdr")
_TS_FOLDER_NAMES = ("seg", "segmentations", "totalsegmentator")


class ManifestError(PetfeatError):
    """A manifest is missing, malformed or points to files that do not exist."""


@dataclass
class StudyRow:
    """One manifest row.

    Attributes
    ----------
    study_id : str
        ``S...`` (a PET study), ``F...`` (a folder without a PET series) or ``D...`` (a duplicate).
    study_date : str
        StudyDate (YYYYMMDD) of the chosen series.
    pet_path : str
        Folder holding the chosen series' files (or the study folder when they are spread).
    series_uid : str
        The chosen PET SeriesInstanceUID (the reader selects it in ``pet_path``).
    labels : list of str
        Label sources: TotalSegmentator folders, multilabel images, DICOM SEG/RTSTRUCT files.
    lesions : str
        Lesion mask file, or empty.
    match_status : str
        ``ok``, ``no_labels``, ``unattributed_labels ...``, ``no_pet_series`` (with the reason when a
        folder cannot be listed), ``unreadable_folder ...`` (a folder of the study cannot be listed: it
        may hold the study's labels or slices), ``duplicate of S...``.
    n_files : int
        Files of the chosen series (all files of the folder when there is no PET series).
    study_path : str
        The scanned study folder (absolute).
    patient_id : str
        Patient pseudonym (``P...``), empty when there is no PET series.
    series_choice : str
        Why ``series_uid`` was chosen among the study's PET series.
    alternatives : list of str
        The study's other PET series UIDs.
    n_unreadable : int
        Entries of the study folder skipped as unreadable: empty files, truncated or corrupt
        headers, truncated pixel data, files named ``.dcm`` that are not DICOM, broken or looping
        links, subfolders that cannot be listed.
    n_other : int
        Files of the study folder ignored as not DICOM images (``Thumbs.db``, text, ``DICOMDIR``).
    scan_notes : str
        The kinds of the unreadable and other files, with the unreadable files' names relative to
        ``study_path`` (at most three per kind).
    suv_overrides : dict
        SUV header overrides of this study, as keyword arguments of
        :func:`petfeat.suv.compute_suv_factors` (``weight_kg``, ``height_m``, ``sex``, ``dose_bq``,
        ``injection_datetime``, ``half_life_s``); empty when none.
    """

    study_id: str
    study_date: str
    pet_path: str
    series_uid: str
    labels: list[str]
    lesions: str
    match_status: str
    n_files: int
    study_path: str = ""
    patient_id: str = ""
    series_choice: str = ""
    alternatives: list[str] = field(default_factory=list)
    n_unreadable: int = 0
    n_other: int = 0
    scan_notes: str = ""
    suv_overrides: dict = field(default_factory=dict)

    def as_csv(self) -> dict:
        """The row as CSV fields (label paths and alternatives joined with ';', overrides in their columns)."""
        d = {c: getattr(self, c) for c in MANIFEST_COLUMNS if c not in OVERRIDE_COLUMNS}
        d["labels"] = ";".join(self.labels)
        d["alternatives"] = ";".join(self.alternatives)
        for column, arg in OVERRIDE_COLUMNS.items():
            value = self.suv_overrides.get(arg)
            d[column] = "" if value is None else value.isoformat() if hasattr(value, "isoformat") else str(value)
        return d


# ---------------------------------------------------------------------------------------------- scanning

_STUDY_DATE, _MODALITY, _PATIENT_ID, _STUDY_UID, _SERIES_UID, _FRAME_UID = (
    BaseTag(t) for t in (0x00080020, 0x00080060, 0x00100020, 0x0020000D, 0x0020000E, 0x00200052))
#: What the fast header scan reads of every file: SpecificCharacterSet, the fields above, and what
#: :func:`petfeat.io.dicom.summarize_series` needs to choose a series (SeriesDescription, SeriesNumber,
#: ImagePositionPatient, ImageOrientationPatient, CorrectedImage).
#: PixelData is read as its place in the file only (no bytes), to tell a slice whose pixel data is truncated.
_PIXEL_DATA, _FLOAT_PIXEL_DATA = BaseTag(0x7FE00010), BaseTag(0x7FE00008)
_SCAN_TAGS = frozenset({0x00080005, _STUDY_DATE, _MODALITY, _PATIENT_ID, _STUDY_UID, _SERIES_UID, _FRAME_UID,
                        0x0008103E, 0x00200011, 0x00200032, 0x00200037, 0x00280051, _PIXEL_DATA})
_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage (DICOMDIR)
#: Kinds of unreadable entries, in the order ``scan_notes`` lists them.
_EMPTY, _HEADER_TRUNCATED, _HEADER_CORRUPT, _PIXELS_TRUNCATED, _NOT_DICOM_DCM, _BAD_LINK, _BAD_FOLDER = (
    "empty (0 bytes)", "header truncated or without Modality", "header unreadable", "pixel data truncated or missing",
    "named .dcm but not DICOM", "broken or looping link", "folder cannot be listed")
_NO_UIDS = "header without StudyInstanceUID or SeriesInstanceUID (cut short or corrupt)"
_ODD_STUDY_UID = "StudyInstanceUID unlike the rest of its series (a damaged header)"
_OTHER_DICOMDIR, _OTHER_FILE, _OTHER_LINK = "DICOMDIR", "not DICOM", "link to a file (not followed)"
_OTHER_DIR_LINK = "link to a folder (not followed)"
_PYDICOM_TAGS = ["SpecificCharacterSet", "StudyDate", "Modality", "SeriesDescription", "PatientID",
                 "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "ImagePositionPatient",
                 "ImageOrientationPatient", "FrameOfReferenceUID", "CorrectedImage", "ReferencedSeriesSequence",
                 "ReferencedFrameOfReferenceSequence"]


@dataclass
class _Header:
    path: Path
    modality: str
    study_uid: str
    series_uid: str
    patient_id: str
    date: str
    frame_uid: str
    ds: object = field(repr=False, default=None)  # the header, for choosing among PET series
    ref_series: frozenset[str] = frozenset()
    ref_frames: frozenset[str] = frozenset()
    #: The pixel data is shorter than the header says (the slice cannot be read).
    truncated: bool = False


class _NotDicom(Exception):
    """A file that is not a DICOM image (``args[0]``: which kind of other file)."""


class _Unreadable(Exception):
    """A DICOM file that cannot be read (``args[0]``: which kind of damage)."""


@dataclass
class _Folder:
    """What one walk of a study folder found."""

    headers: list[_Header] = field(default_factory=list)
    label_files: list[Path] = field(default_factory=list)
    n_files: int = 0
    #: kind -> paths of the entries skipped as unreadable (truncated slices are also in ``headers``)
    unreadable: dict[str, list[Path]] = field(default_factory=dict)
    #: kind -> number of files ignored as not DICOM images
    other: dict[str, int] = field(default_factory=dict)

    @property
    def n_unreadable(self) -> int:
        return sum(len(v) for v in self.unreadable.values())

    @property
    def n_other(self) -> int:
        return sum(self.other.values())

    def bad(self, kind: str, path: Path) -> None:
        self.unreadable.setdefault(kind, []).append(path)

    def notes(self, study: Path) -> str:
        """``scan_notes``: unreadable entries by kind (names relative to ``study``), then the other files."""
        order = (_EMPTY, _HEADER_TRUNCATED, _NO_UIDS, _ODD_STUDY_UID, _HEADER_CORRUPT, _PIXELS_TRUNCATED,
                 _NOT_DICOM_DCM, _BAD_LINK, _BAD_FOLDER)
        parts = []
        for kind in sorted(self.unreadable, key=order.index):
            paths = self.unreadable[kind]
            names = [_relative(p, study) for p in paths[:3]] + (["..."] if len(paths) > 3 else [])
            parts.append(f"{len(paths)} {kind}: {', '.join(names)}")
        text = f"unreadable: {'; '.join(parts)}" if parts else ""
        if self.other:
            others = ", ".join(f"{n} {k}" for k, n in sorted(self.other.items()))
            text += f"{'; ' if text else ''}ignored: {others}"
        return text


def _relative(path: Path, study: Path) -> str:
    try:
        return Path(path).relative_to(study).as_posix()
    except ValueError:
        return str(path)


def scan_archive(root: str | Path, key: bytes, linkage: dict | None = None,
                 progress: Callable[[int, int], object] | None = None) -> list[StudyRow]:
    """The manifest rows of every study under ``root`` (see module docstring).

    Parameters
    ----------
    root : str or Path
        Archive root: each folder directly below it is scanned.
    key : bytes
        Pseudonymisation key (:func:`petfeat.pseudonyms.load_or_create_key`).
    linkage : dict, optional
        Filled with ``study_id -> (patient pseudonym, PatientID)`` for a separate linkage file.
    progress : callable, optional
        Called as ``progress(folders_done, folders_total)`` after each folder.

    Returns
    -------
    list of StudyRow
        Sorted by folder, then study date and StudyInstanceUID; absolute paths.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder. Point to the archive root (one folder per study).")
    root = root.resolve()
    folders = [p for p in sorted(root.iterdir()) if not p.name.startswith(".") and _study_folder(p, root)]
    scanned: list[list[_Scanned]] = []
    for i, folder in enumerate(folders, start=1):
        scanned.append(_scan_study(folder, root, key))
        if progress is not None:
            progress(i, len(folders))
    copies = _copies(scanned)
    # a fragment of a series (stray slices copied into another study's folder) must not count as a study of the
    # folder it lies in: that folder's labels belong to its own study, so they are attributed again without it
    fragments = {s.pair for copy in copies.values() for s in copy[1:] if s.n_good < copy[0].n_good}
    for k, folder in enumerate(folders):
        if len(scanned[k]) > 1 and any(s.pair in fragments for s in scanned[k]):
            scanned[k] = _scan_study(folder, root, key, fragments)
            copies = None
    copies = copies or _copies(scanned)
    taken: set[str] = set()
    for primary, *others in copies.values():
        row = primary.row
        if linkage is not None:
            linkage[row.study_id] = (row.patient_id, primary.patient)
        for dup in others:
            _mark_copy(dup, primary, key, taken)
    found = [s for ss in scanned for s in ss]
    rows = [s.row for s in found]
    if _is_one_study(rows):
        # the root is one study's folder (pet/ beside seg/ and a lesion mask): scan it as that study
        rows = []
        for s in _scan_study(root, root.parent, key):
            if s.pair is not None and linkage is not None:
                linkage[s.row.study_id] = (s.row.patient_id, s.patient)
            rows.append(s.row)
    return rows


def _copies(scanned: list[list[_Scanned]]) -> dict[tuple[str, str], list[_Scanned]]:
    """Each series of the archive: its copies (one, or several in different folders), the one to use first.

    The copy to use has the most readable slices of the series (a complete series over stray
    slices copied into another folder, and over a copy with truncated slices), then the fewest
    damaged files in its folders, then it lies in the first folder by name.
    """
    copies: dict[tuple[str, str], list[tuple[int, _Scanned]]] = {}
    order = 0
    for ss in scanned:
        for s in ss:
            if s.pair is not None:
                copies.setdefault(s.pair, []).append((order, s))
            order += 1
    return {pair: [s for _, s in sorted(c, key=lambda c: (-c[1].n_good, c[1].bad, c[0]))]
            for pair, c in copies.items()}


def _mark_copy(dup: _Scanned, primary: _Scanned, key: bytes, taken: set[str]) -> None:
    """Make ``dup`` a ``duplicate of S...`` row saying why the copy ``primary`` is the study."""
    row = primary.row
    sid = duplicate_pseudonym(dup.rel, key)
    if sid in taken:  # a second copied series in the same folder
        sid = duplicate_pseudonym(f"{dup.rel}\n{dup.pair[1]}", key)
    taken.add(sid)
    dup.row.study_id = sid
    if dup.n_good < primary.n_good and dup.fragment_of:
        dup.row.match_status = (
            f"duplicate of {row.study_id}: {dup.row.n_files} stray slice(s) of that study's series lie in this "
            f"folder (the PET folder of study {', '.join(dup.fragment_of)}); its complete series ({primary.n_good} "
            f"slices) in its own folder is the study. The stray slices are not read with "
            f"{', '.join(dup.fragment_of)}; delete them from this folder")
        row.series_choice += f"; the complete series, chosen over {dup.n_good} stray slice(s) in another folder ({sid})"
    elif dup.n_good < primary.n_good or dup.bad > primary.bad:
        state = (f"{dup.bad} unreadable or truncated file(s) of the series" if dup.bad else
                 f"{dup.n_good} of the series' {primary.n_good} slices")
        dup.row.match_status = (f"duplicate of {row.study_id}: the same series is also in another folder, whose copy "
                                f"was chosen as it is complete (this copy has {state}); remove one copy")
        row.series_choice += (f"; the complete copy of the series, chosen over {sid} ("
                              + (f"{dup.bad} unreadable or truncated file(s)" if dup.bad else
                                 f"{dup.n_good} slice(s)") + " there)")
    else:
        dup.row.match_status = (f"duplicate of {row.study_id}: the same series is also in another folder; "
                                "remove one copy")


def _is_one_study(rows: list[StudyRow]) -> bool:
    """Whether the rows say the archive root is itself one study's folder.

    That is: one PET series, without labels, in one subfolder, and label sources in others (rows
    without a PET series).
    """
    pets = [r for r in rows if r.study_id.startswith("S")]
    strays = [r for r in rows if r.match_status.startswith("no_pet_series") and (r.labels or r.lesions)]
    return len(pets) == 1 and not (pets[0].labels or pets[0].lesions) and bool(strays)


def _study_folder(p: Path, root: Path) -> bool:
    """A folder below the root to scan; a linked folder only when it neither lies in nor contains the root."""
    try:
        if not p.is_dir():
            return False
        if p.is_symlink():
            target = p.resolve()
            return not (target.is_relative_to(root) or root.is_relative_to(target))
    except OSError:  # a link loop
        return False
    return True


def _walk(study: Path) -> _Folder:
    """Headers of the DICOM files and the label files under ``study``; links to folders are not followed."""
    with warnings.catch_warnings():  # pydicom's warnings on damaged headers quote header bytes (names, ids)
        warnings.simplefilter("ignore")
        return _walk_quietly(study)


def _walk_quietly(study: Path) -> _Folder:
    found = _Folder()

    def unreadable_folder(exc: OSError) -> None:
        found.bad(_BAD_FOLDER, Path(exc.filename or study))

    for dirpath, dirnames, filenames in os.walk(study, onerror=unreadable_folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:  # os.walk lists a link to a folder but does not enter it
            if os.path.islink(os.path.join(dirpath, d)):
                found.other[_OTHER_DIR_LINK] = found.other.get(_OTHER_DIR_LINK, 0) + 1
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            try:
                st = os.stat(path)  # follows a file link; a broken or looping link raises
            except OSError:
                found.bad(_BAD_LINK, path)
                continue
            if not stat.S_ISREG(st.st_mode):  # FIFO, device, socket, or a link to a folder: never opened
                continue
            if name.lower().endswith(_LABEL_SUFFIXES):
                found.label_files.append(path)
                continue
            if os.path.islink(path):  # a link to a slice elsewhere (another patient's): never read as this study's
                found.other[_OTHER_LINK] = found.other.get(_OTHER_LINK, 0) + 1
                continue
            found.n_files += 1
            if st.st_size == 0:
                found.bad(_EMPTY, path)
                continue
            try:
                h = _read_header(path)
            except _NotDicom as exc:
                if name.lower().endswith(".dcm") and exc.args[0] == _OTHER_FILE:
                    found.bad(_NOT_DICOM_DCM, path)
                else:
                    found.other[exc.args[0]] = found.other.get(exc.args[0], 0) + 1
                continue
            except _Unreadable as exc:
                found.bad(exc.args[0], path)
                continue
            except Exception:  # noqa: BLE001 - any corrupt header skips the file, never the scan
                found.bad(_HEADER_CORRUPT, path)
                continue
            found.headers.append(h)
            if h.truncated:  # kept in its series (which then counts a damaged copy), and counted
                found.bad(_PIXELS_TRUNCATED, path)
    return found


def _read_header(path: Path) -> _Header:
    """The scan fields of one file.

    Raises :class:`_NotDicom` for a file that is not DICOM or is a DICOMDIR, :class:`_Unreadable`
    for a DICOM file whose header ends before its Modality and for a PET slice without
    StudyInstanceUID or SeriesInstanceUID, and any other exception for a corrupt one. A slice whose
    UIDs the fast header scan does not reach (a tag out of order, a header cut short) is read again
    with pydicom first. A PET slice whose pixel data is shorter than its header says, or which ends
    before its pixel data, is returned with ``truncated`` set.
    """
    ds = read_slice_header(path, _SCAN_TAGS)  # the header's first bytes only, for image slices
    truncated, fallback = False, False
    if ds is not None and _text(ds, _MODALITY) and not (_text(ds, _STUDY_UID) and _text(ds, _SERIES_UID)):
        ds, fallback = None, True  # the fast scan stopped early (a tag out of order, a header cut short): pydicom
    if ds is not None:
        tag = next((t for t in (_PIXEL_DATA, _FLOAT_PIXEL_DATA) if t in ds), None)
        if tag is not None:
            pixels = ds.get_item(tag).value  # where the pixel data lies, and how much of it the file holds
            truncated = hasattr(pixels, "available") and pixels.available < pixels.length
            del ds[tag]
        else:  # the file ends before its pixel data
            truncated = _text(ds, _MODALITY) == "PT"
    if ds is None or _text(ds, _MODALITY) in ("SEG", "RTSTRUCT"):  # references need pydicom
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_PYDICOM_TAGS)
        except InvalidDicomError:
            with open(path, "rb") as f:
                if f.read(132)[128:132] == b"DICM":
                    raise
            raise _NotDicom(_OTHER_FILE) from None
        if fallback and _text(ds, _MODALITY) == "PT":
            truncated = _pixels_short(path)
    modality = _text(ds, _MODALITY) or ""  # raw text: no pydicom value conversion per file
    if not modality:
        try:
            sop_class = str(pydicom.filereader.read_file_meta_info(path).get("MediaStorageSOPClassUID", ""))
        except Exception:  # noqa: BLE001 - a meta group that cannot be read: the header is damaged
            sop_class = ""
        if sop_class == _DIRECTORY_SOP_CLASS:
            raise _NotDicom(_OTHER_DICOMDIR)
        raise _Unreadable(_HEADER_TRUNCATED)  # Modality is type 1 in every image IOD: the header ends early
    if modality == "PT" and not (_text(ds, _STUDY_UID) and _text(ds, _SERIES_UID)):
        raise _Unreadable(_NO_UIDS)  # it cannot be put in a study: never a study of its own
    h = _Header(path, modality, _text(ds, _STUDY_UID) or "", _text(ds, _SERIES_UID) or "",
                _text(ds, _PATIENT_ID) or "", _text(ds, _STUDY_DATE) or "", _text(ds, _FRAME_UID) or "",
                ds if modality == "PT" else None, truncated=truncated)
    if modality in ("SEG", "RTSTRUCT"):
        h.ref_series, h.ref_frames = _references(ds)
    return h


def _pixels_short(path: Path) -> bool:
    """Whether a slice read by pydicom ends before its pixel data does (or before its pixel data)."""
    try:
        ds = pydicom.dcmread(path, defer_size=64, specific_tags=["PixelData", "FloatPixelData"])
    except Exception:  # noqa: BLE001 - a file that pydicom cannot read to its end
        return True
    tag = next((t for t in (_PIXEL_DATA, _FLOAT_PIXEL_DATA) if t in ds), None)
    if tag is None:
        return True
    elem = ds.get_item(tag, keep_deferred=True)  # where the value lies, not the value
    if elem.length == 0xFFFFFFFF:  # encapsulated (compressed) frames: the reader checks them
        return False
    return elem.value_tell + elem.length > os.path.getsize(path)


def _references(ds) -> tuple[frozenset[str], frozenset[str]]:
    """Series and frames of reference a SEG or RTSTRUCT refers to."""
    series, frames = set(), set()
    for item in ds.get("ReferencedSeriesSequence", []) or []:
        if "SeriesInstanceUID" in item:
            series.add(str(item.SeriesInstanceUID).strip())
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        if "FrameOfReferenceUID" in fr:
            frames.add(str(fr.FrameOfReferenceUID).strip())
        for st in fr.get("RTReferencedStudySequence", []) or []:
            for se in st.get("RTReferencedSeriesSequence", []) or []:
                if "SeriesInstanceUID" in se:
                    series.add(str(se.SeriesInstanceUID).strip())
    return frozenset(series), frozenset(frames)


def _choose_series(series: dict[str, list[_Header]]) -> tuple[str, str]:
    """The PET series of one study to use (:func:`petfeat.io.dicom.choose_pet_series`), and a short reason.

    The reader's rule: projections (MIP) dropped by geometry, then attenuation-corrected, most
    files, lowest SeriesNumber, SeriesInstanceUID.
    """
    from petfeat.io.dicom import choose_pet_series, summarize_series

    if len(series) == 1:
        return next(iter(series)), "only PET series"
    summaries = {u: summarize_series(u, [(h.path, h.ds) for h in hs]) for u, hs in series.items()}
    uid, notes = choose_pet_series(list(summaries.values()))
    c = summaries[uid]
    others = dict.fromkeys(a["why_not"] for a in notes["series_choice"]["alternatives"])
    return uid, (f"{'attenuation-corrected' if c.attenuation_corrected else 'not attenuation-corrected'} "
                 f"{'volume' if c.is_volume else 'image'} of {c.n_files} files (others: {'; '.join(others)})")


@dataclass
class _Scanned:
    """One row of a study folder, with what choosing among copies of its series needs."""

    row: StudyRow
    #: (StudyInstanceUID, SeriesInstanceUID) of the chosen series; None for a folder without PET
    pair: tuple[str, str] | None
    #: the raw PatientID (for the linkage file only)
    patient: str
    #: the chosen series' slices with truncated pixel data and the unreadable files in its folders
    bad: int
    #: the chosen series' slices that can be read
    n_good: int
    #: the study folder relative to the archive root
    rel: str
    #: the ids of the other studies of the folder, when this series is a fragment of one found elsewhere
    fragment_of: list[str] = field(default_factory=list)


def _name_text(rel: str) -> str:
    """``rel`` as text: the bytes of a name that is not UTF-8 become backslash escapes (for hashing)."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _set_aside_odd_study_uids(found: _Folder) -> None:
    """Count as unreadable the PET slices whose StudyInstanceUID differs from most slices of their series.

    A series belongs to one study (PS3.3 C.7.3.1); a slice that names another one has a damaged UID (one
    flipped byte made a 1-slice "study" beside its 111-slice series, and the folder's labels unattributable).
    The slice stays in its folder: the reader selects slices by SeriesInstanceUID and reads it with the rest.
    """
    votes: dict[str, Counter] = {}
    for h in found.headers:
        if h.modality == "PT" and h.series_uid:
            votes.setdefault(h.series_uid, Counter())[h.study_uid] += 1
    majority = {}
    for series_uid, count in votes.items():
        top, n_top = count.most_common(1)[0]
        if len(count) > 1 and n_top > sum(count.values()) - n_top:
            majority[series_uid] = top
    if not majority:
        return
    kept = []
    for h in found.headers:
        if h.modality == "PT" and majority.get(h.series_uid, h.study_uid) != h.study_uid:
            found.bad(_ODD_STUDY_UID, h.path)
        else:
            kept.append(h)
    found.headers = kept


def _scan_study(study: Path, root: Path, key: bytes,
                fragments: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset()) -> list[_Scanned]:
    """Rows of one study folder, each with its (study uid, series uid), raw PatientID and damaged files.

    The damaged files of a row are its chosen series' slices with truncated pixel data and the
    unreadable files in the folders of that series (which may be its slices). ``fragments`` are
    series whose complete copy lies in another folder: their rows take no part in attributing the
    folder's label sources, and the folder's studies note them.
    """
    found = _walk(study)
    _set_aside_odd_study_uids(found)
    notes = found.notes(study)
    rel = _name_text(study.relative_to(root).as_posix())
    bad_dirs: dict[Path, int] = {}
    for kind, paths in found.unreadable.items():
        for p in paths:
            if kind != _PIXELS_TRUNCATED:  # those are counted with their series
                bad_dirs[p.parent] = bad_dirs.get(p.parent, 0) + 1
    labels, lesion_files = _label_sources(found.label_files)
    lesions = lesion_files[0] if lesion_files else ""
    pets: dict[str, dict[str, list[_Header]]] = {}  # study uid -> series uid -> headers
    study_of_series: dict[str, str] = {}
    refs: list[_Header] = []
    for h in found.headers:
        if h.series_uid and h.study_uid:
            study_of_series.setdefault(h.series_uid, h.study_uid)
        if h.modality == "PT":
            pets.setdefault(h.study_uid, {}).setdefault(h.series_uid, []).append(h)
        elif h.modality in ("SEG", "RTSTRUCT"):
            refs.append(h)
    shut = found.unreadable.get(_BAD_FOLDER, [])  # folders that cannot be listed: what they hold is unknown
    closed = ""
    if shut:
        which = "the study folder itself" if study in shut else f"{len(shut)} folder(s) of the study (see scan_notes)"
        closed = (f"{which} cannot be listed; give the account that runs petfeat read access (chmod -R u+rX) and "
                  "scan again")
    if not pets:
        links = found.other.get(_OTHER_LINK, 0) + found.other.get(_OTHER_DIR_LINK, 0)
        linked = (f"{links} symbolic link(s) inside the study are not followed (see scan_notes; a link may point to "
                  "another patient's files); replace each by what it points to (cp -rL) and scan again")
        status = (f"no_pet_series: {closed}" if closed else f"no_pet_series: {linked}" if links
                  else "no_pet_series")
        row = StudyRow(folder_pseudonym(rel, key), "", str(study), "", labels, lesions, status,
                       found.n_files, study_path=str(study), n_unreadable=found.n_unreadable, n_other=found.n_other,
                       scan_notes=notes)
        return [_Scanned(row, None, "", found.n_unreadable, 0, rel)]
    out: list[_Scanned] = []
    for study_uid in sorted(pets, key=lambda u: (min(h.date for hs in pets[u].values() for h in hs), u)):
        series = pets[study_uid]
        uid, reason = _choose_series(series)
        chosen = series[uid]
        folders = {h.path.parent for h in chosen}
        pet_dir = next(iter(folders)) if len(folders) == 1 else study
        frames = {h.frame_uid for hs in series.values() for h in hs if h.frame_uid}
        others = set(series) - {uid}  # the study's PET series that were not chosen
        matched = [str(r.path) for r in refs
                   if uid in r.ref_series or (not r.ref_series & others and (
                       frames & (r.ref_frames | {r.frame_uid})
                       or any(study_of_series.get(s) == study_uid for s in r.ref_series)))]
        first = chosen[0]
        row = StudyRow(study_pseudonym(study_uid, uid, key), first.date, str(pet_dir), uid, matched, "", "ok",
                       len(chosen), study_path=str(study), patient_id=pseudonym(first.patient_id, key, study_uid),
                       series_choice=reason, alternatives=sorted(u for u in series if u != uid),
                       n_unreadable=found.n_unreadable, n_other=found.n_other, scan_notes=notes)
        n_truncated = sum(h.truncated for h in chosen)
        bad = n_truncated + sum(bad_dirs.get(d, 0) for d in folders)
        out.append(_Scanned(row, (study_uid, uid), first.patient_id, bad, len(chosen) - n_truncated, rel))
    studies = [s for s in out if s.pair not in fragments] or out
    strays = [s for s in out if s not in studies]
    for s in strays:
        s.row.labels = []
        s.fragment_of = [t.row.study_id for t in studies]
    if strays:
        n_stray = sum(s.row.n_files for s in strays)
        for s in studies:
            s.row.scan_notes += (f"{'; ' if s.row.scan_notes else ''}not read: {n_stray} stray slice(s) of "
                                 f"{len(strays)} other series whose complete copy lies in another folder")
    if len(studies) == 1:
        studies[0].row.labels = labels + studies[0].row.labels
        studies[0].row.lesions = lesions
        unattributed = []
    else:  # several studies in one folder: each label source goes to the study whose PET files lie nearest it
        pet_folders = [{h.path.parent for hs in pets[s.pair[0]].values() for h in hs} for s in studies]
        unattributed = []
        for source in labels:
            k = _nearest_study(Path(source), pet_folders, study)
            (studies[k].row.labels.append(source) if k is not None else unattributed.append(source))
        for source in lesion_files:
            k = _nearest_study(Path(source), pet_folders, study)
            if k is not None and not studies[k].row.lesions:
                studies[k].row.lesions = source
            else:
                unattributed.append(source)
    for s in studies:
        row = s.row
        if closed:  # its labels or slices may lie in the folder that cannot be read: never a study without them
            row.match_status = (f"unreadable_folder: {closed}, or set match_status to ok to extract the study "
                                "without them")
        elif unattributed:
            row.match_status = (f"unattributed_labels: {len(unattributed)} label file(s) or folder(s) lie in a folder "
                                f"of {len(studies)} studies, none inside one study's own subfolder; add the right ones "
                                "to this row's labels/lesions")
        elif not (row.labels or row.lesions):
            row.match_status = "no_labels"
    return out


def _nearest_study(source: Path, pet_folders: list[set[Path]], study: Path) -> int | None:
    """The study (index) whose PET folders share the deepest common folder with ``source``, below ``study``.

    A patient's time points often sit side by side (``baseline/pet``, ``baseline/seg``,
    ``follow_up/pet``...): a label source belongs to the one study whose PET files share a folder
    with it that no other study's PET files are in. None when no such study exists.
    """
    def depth(folders: set[Path]) -> int:
        return max(len(os.path.commonpath([str(source), str(f)]).split(os.sep)) for f in folders)

    depths = [depth(f) for f in pet_folders]
    best = max(depths)
    if best <= len(str(study).split(os.sep)) or depths.count(best) != 1:
        return None
    return depths.index(best)


def _label_sources(files: list[Path]) -> tuple[list[str], list[str]]:
    """Label sources (folders and files) and the lesion masks among a study folder's image files."""
    from petfeat.io.labels import nifti_label_table
    from petfeat.io.totalsegmentator import UNKNOWN, identify_task, split_by_task

    by_dir: dict[Path, list[Path]] = {}
    for f in files:
        by_dir.setdefault(f.parent, []).append(f)
    labels, lesion_files = [], []
    for d in sorted(by_dir, key=lambda p: (len(p.parts), str(p))):
        rest = []
        for f in sorted(by_dir[d]):
            (lesion_files if "lesion" in f.name.lower() else rest).append(f)
        classes = [f.name[:-7] if f.name.endswith(".nii.gz") else f.name[:-4] for f in rest
                   if f.name.endswith((".nii.gz", ".nii"))]
        if classes and len(classes) == len(rest) and (
                d.name.lower() in _TS_FOLDER_NAMES or identify_task(classes) is not None
                or UNKNOWN not in split_by_task(classes)):
            labels.append(str(d))  # one <class>.nii.gz per class: a TotalSegmentator output folder (of 1+ tasks)
            continue
        for f in rest:
            low = f.name.lower()
            if (low.endswith((".nii", ".nii.gz")) and nifti_label_table(f)) or "seg" in low or "label" in low:
                labels.append(str(f))  # TotalSegmentator --ml (found by its label table), or named as labels
    return labels, [str(f) for f in lesion_files]


# ---------------------------------------------------------------------------------------------- manifest

def write_manifest(rows: list[StudyRow], path: str | Path) -> None:
    """Write the manifest CSV (UTF-8) atomically.

    A folder or file name that is not UTF-8 (a Latin-1 name from an old export, which Python holds
    as surrogate escapes) is written as its own bytes, so the path still names that folder
    when :func:`read_manifest` loads the file.
    """

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow(r.as_csv())

    atomic_write(path, write)


def _decode(path: Path) -> tuple[str, str]:
    """The manifest's text and its encoding: UTF-8 (a BOM is dropped), else Windows-1252, else Latin-1."""
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1"), "latin-1"


def _on_disk(p: str, encoding: str) -> str:
    """``p`` as the file system names it: the manifest's bytes of a path that does not exist as decoded.

    A manifest that is not UTF-8 is either a spreadsheet export (the whole file in Windows-1252) or
    a UTF-8 manifest holding a name that is not UTF-8 (written by :func:`write_manifest`). The
    path's bytes in the file, read back as the file system reads names, then find the folder.
    """
    if not p or encoding == "utf-8-sig" or _exists(p):
        return p
    try:
        raw = os.fsdecode(p.encode(encoding))
    except UnicodeEncodeError:
        return p
    return raw if _exists(raw) else p


def _int_field(value: str | None, where: str, name: str) -> int:
    text = (value or "").strip()
    if not text:
        return 0
    try:
        number = float(text)
    except ValueError:
        raise ManifestError(f"{where}: {name} is {text!r}, not a number; write a whole number or leave it "
                            "empty.") from None
    if not number.is_integer() or number < 0:
        raise ManifestError(f"{where}: {name} is {text!r}; write a whole number >= 0 or leave it empty.")
    return int(number)


_OVERRIDE_UNITS = {"weight_kg": "the weight in kg", "height_m": "the height in metres",
                   "dose_bq": "the injected dose in Bq", "half_life_s": "the half-life in seconds"}


def _overrides(rec: dict, where: str) -> dict:
    """The SUV override columns of one manifest line, as :func:`petfeat.suv.compute_suv_factors` arguments.

    Values are checked for form here (a number, M or F, an ISO date-time); whether they are plausible
    (units, ranges) is decided where they are used, as for the command line's overrides.
    """
    import datetime as dt

    out: dict = {}
    for column, arg in OVERRIDE_COLUMNS.items():
        text = rec.get(column, "")
        if not text:
            continue
        if column == "sex":
            if text.upper() not in ("M", "F"):
                raise ManifestError(f"{where}: sex is {text!r}; write M or F, or leave it empty.")
            out[arg] = text.upper()
        elif column == "injection_time":
            try:
                out[arg] = dt.datetime.fromisoformat(text)
            except ValueError:
                raise ManifestError(f"{where}: injection_time is {text!r}, not a date and time; write "
                                    "YYYY-MM-DDTHH:MM:SS (the injection's start) or leave it empty.") from None
        else:
            try:
                out[arg] = float(text)
            except ValueError:
                raise ManifestError(f"{where}: {column} is {text!r}, not a number; write {_OVERRIDE_UNITS[column]} "
                                    "or leave it empty.") from None
    return out


def _absolute(p: str, base: Path) -> str:
    p = p.strip()
    if not p:
        return ""
    q = Path(p).expanduser()
    return os.path.normpath(q if q.is_absolute() else base / q)


def _exists(p: str) -> bool:
    try:
        return Path(p).exists()
    except (OSError, ValueError):  # a NUL byte, a name too long
        return False


def read_manifest(path: str | Path) -> list[StudyRow]:
    """Read and validate a manifest: columns, unique study ids, existing paths.

    The file may be UTF-8 (with or without a byte-order mark), Windows-1252 or Latin-1; empty lines
    are skipped; relative paths are resolved against the manifest's folder, so the returned rows
    hold absolute paths; a path that does not exist as decoded is looked up by its bytes in the file
    (a name that is not UTF-8, see :func:`write_manifest`). Columns other than ``study_id`` and
    ``pet_path`` may be missing. The SUV
    override columns (``weight_kg``, ``height_m``, ``sex``, ``dose_bq``, ``injection_time``,
    ``half_life_s``) fill each row's ``suv_overrides``.

    Raises
    ------
    ManifestError
        Naming the line and the field: a missing column, an empty or repeated study_id, a path that
        does not exist, a non-numeric count or override, a sex other than M or F, an injection time
        that is not ISO, a line with more fields than the header.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest. Create one with 'petfeat scan ARCHIVE -o {path.name}'.")
    base = path.resolve().parent
    text, encoding = _decode(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        fieldnames = [(c or "").strip() for c in (reader.fieldnames or [])]
    except csv.Error as exc:
        raise ManifestError(f"{path}, line 1: not a CSV header ({exc}).") from None
    reader.fieldnames = fieldnames
    missing = [c for c in REQUIRED_COLUMNS if c not in fieldnames]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                            f"{', '.join(MANIFEST_COLUMNS)}.")
    rows, seen = [], {}
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ManifestError(f"{path}, line {reader.line_num}: {exc}; check the quoting.") from None
        i = reader.line_num
        where = f"{path}, line {i}"
        if None in rec:
            raise ManifestError(f"{where}: {len(fieldnames) + len(rec[None])} fields where the header has "
                                f"{len(fieldnames)}; quote fields that contain commas.")
        rec = {k: (v or "").strip() for k, v in rec.items()}
        if not any(rec.values()):
            continue  # a line of empty fields
        sid = rec.get("study_id", "")
        if not sid:
            raise ManifestError(f"{where}: study_id is empty.")
        if sid in seen:
            raise ManifestError(f"{where}: study_id {sid} appears twice (also on line {seen[sid]}); each study "
                                "needs its own id.")
        seen[sid] = i
        pet = _on_disk(_absolute(rec.get("pet_path", ""), base), encoding)
        labels = [_on_disk(_absolute(p, base), encoding) for p in rec.get("labels", "").split(";") if p.strip()]
        lesions = _on_disk(_absolute(rec.get("lesions", ""), base), encoding)
        for p in [pet, *labels, lesions]:
            if p and not _exists(p):
                raise ManifestError(f"{where} (study {sid}): {p} does not exist. Fix the path or drop the row.")
        rows.append(StudyRow(
            sid, rec.get("study_date", ""), pet, rec.get("series_uid", ""), labels, lesions,
            rec.get("match_status", "") or "ok", _int_field(rec.get("n_files"), where, "n_files"),
            study_path=_on_disk(_absolute(rec.get("study_path", ""), base), encoding) or pet,
            patient_id=rec.get("patient_id", ""),
            series_choice=rec.get("series_choice", ""),
            alternatives=[u.strip() for u in rec.get("alternatives", "").split(";") if u.strip()],
            n_unreadable=_int_field(rec.get("n_unreadable"), where, "n_unreadable"),
            n_other=_int_field(rec.get("n_other"), where, "n_other"), scan_notes=rec.get("scan_notes", ""),
            suv_overrides=_overrides(rec, f"{where} (study {sid})")))
    return rows
