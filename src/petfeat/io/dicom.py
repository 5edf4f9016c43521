"""Read PET DICOM series: header parse once, raw stored pixels, per-slice rescale, geometry.

The reader never builds a float volume. It returns the stored integers (or floats) as one
``(Z, Y, X)`` array, the per-slice ``RescaleSlope``/``RescaleIntercept`` and the header fields
that :func:`petfeat.suv.compute_suv_factors` needs. Uncompressed pixel data is taken straight
from the file bytes (no per-slice pydicom pixel array); compressed transfer syntaxes go through
pydicom's pixel handlers (JPEG Lossless, JPEG-LS, JPEG 2000, RLE through the installed plugins).

:func:`read_pet_header` does everything but the pixels (file selection, series choice, geometry,
SUV header fields) and never decodes pixel data; :func:`read_pet_series` adds the pixels.

What the reader accepts and records (in ``notes`` of the result) rather than refuses:

* slice spacing that varies by less than :data:`SPACING_JITTER_RTOL` of the median (bed junctions
  of step-and-shoot scanners): a :class:`~petfeat.errors.PetfeatWarning`, the median spacing is used;
* several PET series in one study folder: projections (MIPs) are dropped by geometry and one volume
  is chosen by :func:`choose_pet_series`, with a warning listing the alternatives;
* fewer or more slices than the header's NumberOfSlices (0054,0081): a warning and a note (the slices
  read are placed by their positions; a missing first or last slice leaves no gap to refuse);
* a file that repeats a slice (the same SOPInstanceUID, or another one with the same position, pixel
  data, rescale and acquisition time): read once, with a warning and a note.

Free-text fields (SeriesDescription, names) never reach the notes, warnings or errors: series are
named by SeriesInstanceUID, SeriesNumber, number of files and kind (AC, NAC, MIP).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from petfeat.errors import DicomSeriesError, PetfeatError, PetfeatWarning, quoted_value
from petfeat.io.dicom_fast import PixelDataAt, read_slice_header
from petfeat.suv import SuvHeader, combine, parse_da, parse_dt, parse_tm

_UNCOMPRESSED = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, "1.2.840.10008.1.2.1.99"}
#: Relative deviation of a slice gap from the median spacing below which the spacing counts as uniform.
SPACING_RTOL = 1e-3
#: Relative deviation of a slice gap from the median spacing that is still read (with a warning and a note):
#: bed junctions of step-and-shoot scanners deviate by up to a few percent (a GE Discovery ST series with
#: 3.27 mm slices has junction gaps of 3.19-3.29 mm); a missing slice doubles a gap. SimpleITK's series
#: reader accepts such jitter too. Gaps further off are refused as a missing or duplicated slice.
SPACING_JITTER_RTOL = 0.10
#: Absolute tolerance on orientation cosines.
ORIENTATION_ATOL = 1e-4
#: Largest stored volume (slices x Rows x Columns x bytes per voxel) the reader allocates, in bytes;
#: the environment variable named by :data:`MAX_VOLUME_ENV` (GiB) overrides it. A corrupt header
#: (Rows x Columns = 65535 x 65535) is refused by this check before any allocation.
MAX_VOLUME_BYTES = 8 * 1024**3
MAX_VOLUME_ENV = "PETFEAT_MAX_VOLUME_GB"
#: File names (without extension, upper case) that are never PET slices, whatever their extension.
NOT_DICOM_NAMES = frozenset({"DICOMDIR", "README", "LICENSE", "LICENCE", "VERSION", "INDEX", "LOCKFILE", "AUTORUN",
                             "CHECKSUMS", "MANIFEST"})
#: Defer reading values larger than this until they are used (pixel data of non-PET files).
_DEFER = 2048
#: The only elements parsed from each file (pydicom skips the rest): geometry, pixels, SUV fields.
_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "FrameOfReferenceUID", "Modality", "Manufacturer", "PatientID", "PatientSex",
    "PatientWeight", "PatientSize",
    "StudyInstanceUID", "SeriesInstanceUID", "StudyDate", "SeriesDate", "SeriesTime", "AcquisitionDate",
    "AcquisitionTime", "AcquisitionDateTime", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "SliceThickness", "Rows", "Columns", "BitsAllocated", "PixelRepresentation", "SamplesPerPixel",
    "NumberOfFrames", "ImageType", "SeriesNumber", "RescaleSlope", "RescaleIntercept", "Units", "DecayCorrection",
    "NumberOfSlices",
    "CorrectedImage", "SUVType",
    "FrameReferenceTime", "ActualFrameDuration", "RadiopharmaceuticalInformationSequence", "PixelData",
    "FloatPixelData", (0x0009, 0x0010), (0x0009, 0x100D), (0x7053, 0x0010), (0x7053, 0x1000), (0x7053, 0x1009),
]


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of a volume stored as ``(Z, Y, X)``.

    Attributes
    ----------
    shape : (3,) tuple of int
        ``(Z, Y, X)``.
    spacing : (3,) tuple of float
        Voxel size in mm along ``(Z, Y, X)``.
    origin : (3,) tuple of float
        Position (mm, LPS patient coordinates) of the centre of voxel ``[0, 0, 0]``.
    direction : (3, 3) tuple
        Columns are the unit vectors of the X, Y and Z array axes in LPS (the SimpleITK
        convention, row-major).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (cm3)."""
        return float(np.prod(self.spacing)) / 1000.0

    def index_to_lps(self, zyx: np.ndarray) -> np.ndarray:
        """Map ``(..., 3)`` array indices ``(z, y, x)`` to LPS millimetres."""
        zyx = np.asarray(zyx, dtype=np.float64)
        xyz = zyx[..., ::-1] * np.asarray(self.spacing[::-1])
        d = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        return xyz @ d.T + np.asarray(self.origin)

    def sitk_fields(self) -> dict:
        """Spacing/origin/direction in SimpleITK's (x, y, z) order."""
        return {"spacing": tuple(self.spacing[::-1]), "origin": self.origin, "direction": self.direction}


@dataclass
class PetHeader:
    """One PET series without its pixels: what :func:`read_pet_header` returns.

    Attributes
    ----------
    geometry : Geometry
        The voxel grid (slices sorted along the normal).
    suv_header : SuvHeader
        The fields :func:`petfeat.suv.compute_suv_factors` needs.
    files : list of Path
        The slices, sorted along the normal.
    notes : dict
        What was accepted with a warning, JSON-ready, free of file names and patient data:
        ``slice_spacing_mm``, ``slice_spacing_max_deviation_mm``, ``slice_spacing_max_deviation_after_slice``
        and ``slice_position_max_offset_mm`` (slice position vs the regular grid) for spacing jitter;
        ``series_choice`` (see :func:`choose_pet_series`) when several PET series were candidates;
        ``number_of_slices`` (``{"header": N, "read": n}``) when NumberOfSlices (0054,0081) differs from the
        slices read; ``duplicate_files`` (files that repeat a slice, each read once).
    series_number : int or None
        SeriesNumber (0020,0011): how messages name the series (SeriesDescription is free text and may hold
        patient data, so it is not kept).
    """

    geometry: Geometry
    suv_header: SuvHeader
    files: list[Path]
    series_uid: str
    study_uid: str
    study_date: dt.date | None
    patient_id: str = field(repr=False)
    series_number: int | None = None
    notes: dict = field(default_factory=dict)
    #: FrameOfReferenceUID: label objects drawn in another frame (another patient or scan) are refused.
    frame_uid: str = ""

    def notes_json(self) -> str:
        """``notes`` as a compact JSON string ("" when empty), for provenance columns."""
        return notes_json(self.notes)


@dataclass
class PetSeries(PetHeader):
    """One PET series as stored: the header fields of :class:`PetHeader`, raw pixels and per-slice rescale.

    ``stored`` is ``(Z, Y, X)`` in the stored dtype; the rescaled value of voxel ``[z, y, x]`` is
    ``stored[z, y, x] * slope[z] + intercept[z]``. ``notes`` records what the reader accepted
    with a warning (see :class:`PetHeader`).
    """

    stored: np.ndarray = field(kw_only=True)
    slope: np.ndarray = field(kw_only=True)
    intercept: np.ndarray = field(kw_only=True)

    def rescaled(self, dtype=np.float32) -> np.ndarray:
        """Materialise the rescaled volume (activity or counts); only for callers that need it."""
        out = self.stored.astype(dtype)
        out *= self.slope.astype(dtype)[:, None, None]
        out += self.intercept.astype(dtype)[:, None, None]
        return out


def notes_json(notes: dict | None) -> str:
    """Reader notes as a compact JSON string with sorted keys; "" when there are none."""
    return json.dumps(notes, separators=(",", ":"), sort_keys=True, default=str) if notes else ""


@dataclass(frozen=True)
class SeriesSummary:
    """What :func:`choose_pet_series` needs to know about one candidate series (header fields only).

    Build it with :func:`summarize_series` from the per-file headers of :func:`scan_headers`.

    Attributes
    ----------
    series_uid, study_uid : str
        SeriesInstanceUID, StudyInstanceUID.
    series_number : int or None
        SeriesNumber.
    n_files : int
        Number of files (images) of the series.
    n_positions : int
        Number of distinct ImagePositionPatient values (0.01 mm apart or more); 1 for a projection
        (one image, or rotating MIP images that share a position).
    attenuation_corrected : bool
        CorrectedImage contains ATTN.
    n_orientations : int
        Number of distinct ImageOrientationPatient values (cosines 0.001 apart or more); more than
        one for rotating-MIP images whose planes turn (and whose positions then differ too).
    image_type : tuple of str
        ImageType values (upper case).
    """

    series_uid: str
    study_uid: str
    series_number: int | None
    n_files: int
    n_positions: int
    attenuation_corrected: bool
    n_orientations: int = 1
    image_type: tuple[str, ...] = ()

    @property
    def is_volume(self) -> bool:
        """More than one slice position in one orientation: a volume, not a projection."""
        return self.n_positions > 1 and self.n_orientations <= 1

    @property
    def kind(self) -> str:
        """``"MIP"`` (a projection by geometry, or ImageType MIP/PROJECTION IMAGE), else ``"AC"`` or ``"NAC"``."""
        if not self.is_volume or {"MIP", "PROJECTION IMAGE"} & set(self.image_type):
            return "MIP"
        return "AC" if self.attenuation_corrected else "NAC"

    def label(self) -> str:
        """How messages name the series: ``UID (series 3, AC, 20 files)``; never its free-text description."""
        number = "no SeriesNumber" if self.series_number is None else f"series {self.series_number}"
        return f"{self.series_uid} ({number}, {self.kind}, {self.n_files} files)"


@dataclass(frozen=True)
class SeriesInfo:
    """A series found in a folder, for listings (SeriesNumber, not the free-text SeriesDescription)."""

    series_uid: str
    modality: str
    series_number: int | None
    n_files: int
    first_file: Path


def _files_of(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            if not files:
                raise DicomSeriesError(f"{p}: the folder holds no files. Point to a folder with PET DICOM files.")
            return files
        if p.is_file():
            return [p]
        raise DicomSeriesError(f"{p}: no such file or folder.")
    files = [Path(f) for f in source]
    if not files:
        raise DicomSeriesError("an empty list of files was given. Pass a folder or a list of DICOM files.")
    return files


_WANTED = frozenset(
    int(tag_for_keyword(t)) for t in [*_TAGS, "SpecificCharacterSet"]
    if isinstance(t, str) and t != "RadiopharmaceuticalInformationSequence"
)


def _read_header(path: Path):
    """The header of one file: the fast per-slice scan when it applies, else pydicom (``None``: not DICOM)."""
    try:
        ds = read_slice_header(path, _WANTED)
    except OSError as exc:
        raise DicomSeriesError(f"{path}: the file cannot be read ({exc}). Check its permissions or replace it."
                               ) from exc
    return ds if ds is not None else _read_header_pydicom(path)


def _read_header_pydicom(path: Path):
    """Parse the wanted tags with pydicom; ``None`` for a file that is not DICOM; any other failure names the file."""
    try:
        return pydicom.dcmread(path, defer_size=_DEFER, specific_tags=_TAGS)
    except InvalidDicomError:
        return None
    except Exception as exc:  # noqa: BLE001 -- pydicom raises many types on corrupt files
        raise DicomSeriesError(f"{path}: not readable as DICOM ({type(exc).__name__}: {exc}). "
                               "Remove or replace the file.") from exc


def _scan(files: list[Path], threads: int) -> tuple[dict[str, list[tuple[Path, pydicom.Dataset]]], list[Path]]:
    """Headers grouped by SeriesInstanceUID, and the files that are no series member (not DICOM, no UID)."""
    groups: dict[str, list] = defaultdict(list)
    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            headers = list(pool.map(_read_header, files))
    else:
        headers = [_read_header(f) for f in files]
    unread = []
    for path, ds in zip(files, headers):
        uid = None if ds is None else _text(ds, BaseTag(0x0020000E))
        if uid is None:
            unread.append(path)
        else:
            groups[uid].append((path, ds))
    return groups, unread


def scan_headers(files: Iterable[Path], threads: int = 1) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    """Read every file's header once and group by SeriesInstanceUID (non-DICOM files are skipped).

    Parsing is CPU-bound Python (one thread is fastest on local disks); ``threads > 1`` helps on
    network storage, where each read waits on I/O.
    """
    return _scan(list(files), threads)[0]


def list_series(source) -> list[SeriesInfo]:
    """List the DICOM series under a folder (or in a list of files)."""
    out = []
    for uid, items in scan_headers(_files_of(source)).items():
        ds = items[0][1]
        out.append(SeriesInfo(uid, str(ds.get("Modality", "")), _series_number(ds), len(items), items[0][0]))
    return sorted(out, key=lambda s: (s.modality, s.series_uid))


_SERIES_NUMBER, _STUDY_UID = BaseTag(0x00200011), BaseTag(0x0020000D)
_CORRECTED, _MODALITY, _IMAGE_TYPE = BaseTag(0x00280051), BaseTag(0x00080060), BaseTag(0x00080008)


def _series_number(ds) -> int | None:
    """SeriesNumber as an integer; ``None`` when absent or not a number."""
    try:
        return int(float(_text(ds, _SERIES_NUMBER)))
    except (TypeError, ValueError, OverflowError):
        return None


def summarize_series(series_uid: str, items: Sequence[tuple[Path, pydicom.Dataset]]) -> SeriesSummary:
    """The header summary of one series for :func:`choose_pet_series`.

    Parameters
    ----------
    series_uid : str
        SeriesInstanceUID of the series.
    items : sequence of (Path, Dataset)
        Its files and headers, as grouped by :func:`scan_headers` (fast-path or pydicom datasets).

    Returns
    -------
    SeriesSummary
    """
    first = items[0][1]
    positions, orientations = set(), set()
    for _, ds in items:
        for found, tag, digits in ((positions, _IPP, 2), (orientations, _IOP, 3)):
            txt = _text(ds, tag)
            try:
                found.add(tuple(round(float(v), digits) + 0.0 for v in txt.split("\\")))
            except (AttributeError, ValueError, OverflowError):
                continue  # no usable value: counts as none
    corrected = (_text(first, _CORRECTED) or "").upper().split("\\")
    image_type = tuple(v.strip() for v in (_text(first, _IMAGE_TYPE) or "").upper().split("\\") if v.strip())
    return SeriesSummary(series_uid=series_uid, study_uid=_text(first, _STUDY_UID) or "",
                         series_number=_series_number(first), n_files=len(items), n_positions=len(positions),
                         attenuation_corrected="ATTN" in [c.strip() for c in corrected],
                         n_orientations=len(orientations), image_type=image_type)


def _rank(c: SeriesSummary) -> tuple:
    return (not c.attenuation_corrected, -c.n_files, c.series_number if c.series_number is not None else 1 << 62,
            c.series_uid)


def choose_pet_series(candidates: Sequence[SeriesSummary], series_uid: str | None = None) -> tuple[str, dict]:
    """Choose one PET series among the candidates of one study, deterministically.

    Projections (maximum-intensity projections: one image, rotating-MIP images that share one
    position, or images in several orientations) are dropped by geometry when a volume exists,
    whatever their ImageType says; derived volumes (ImageType DERIVED, SECONDARY: SUV series)
    stay candidates. Among the volumes the order is: attenuation-corrected first (CorrectedImage
    contains ATTN), then the most files, then the lowest SeriesNumber (absent: last), then the
    SeriesInstanceUID as text.

    Parameters
    ----------
    candidates : sequence of SeriesSummary
        The PET series found (see :func:`summarize_series`); at least one.
    series_uid : str, optional
        The series the user asked for: chosen when it is a candidate, and the study check is skipped.

    Returns
    -------
    uid : str
        The chosen SeriesInstanceUID.
    notes : dict
        ``{}`` for a single candidate; else ``{"series_choice": {"chosen": uid, "reason": str,
        "alternatives": [{"series_uid", "series_number", "kind", "n_files", "why_not"}, ...]}}``
        (``kind``: AC, NAC or MIP, see :attr:`SeriesSummary.kind`).

    Raises
    ------
    DicomSeriesError
        No candidate, ``series_uid`` not among them, or (without ``series_uid``) candidates from
        several studies (StudyInstanceUID): the reader never picks across studies.
    """
    cands = sorted(candidates, key=lambda c: c.series_uid)
    if not cands:
        raise DicomSeriesError("no PET series to choose from. Point to the folder of the PET series.")
    by_uid = {c.series_uid: c for c in cands}
    if series_uid is not None:
        if series_uid not in by_uid:
            raise DicomSeriesError(f"SeriesInstanceUID {series_uid} is not among the PET series "
                                   f"{', '.join(by_uid)}. Pass one of them.")
        chosen = by_uid[series_uid]
        reason = "requested with series_uid"
        why = {c.series_uid: "not the requested series" for c in cands}
    else:
        studies = sorted({c.study_uid for c in cands})
        if len(studies) > 1:
            lines = "; ".join(
                f"study {st}: " + ", ".join(c.label() for c in cands if c.study_uid == st) for st in studies)
            raise DicomSeriesError(
                f"holds {len(cands)} PET series of {len(studies)} studies (StudyInstanceUID): {lines}. A study's "
                "series are never mixed with another's: point to one study's folder, or choose a series with "
                "series_uid=... (CLI: --series-uid UID).")
        volumes = [c for c in cands if c.is_volume]
        pool = volumes or cands
        chosen = min(pool, key=_rank)
        reason = (f"{'attenuation-corrected' if chosen.attenuation_corrected else 'not attenuation-corrected'} "
                  f"{'volume' if chosen.is_volume else 'image'} of {chosen.n_files} files, first of {len(pool)} "
                  f"{'volume' if volumes else 'candidate'}(s) ranked by attenuation correction, number of files, "
                  "lowest SeriesNumber, SeriesInstanceUID")
        why = {}
        for c in cands:
            if volumes and not c.is_volume and c.n_positions > 1:
                why[c.series_uid] = f"projection (MIP): {c.n_files} image(s) in {c.n_orientations} orientations"
            elif volumes and not c.is_volume:
                why[c.series_uid] = f"projection (MIP): {c.n_files} image(s) at {max(c.n_positions, 1)} position"
            elif chosen.attenuation_corrected and not c.attenuation_corrected:
                why[c.series_uid] = "not attenuation-corrected (CorrectedImage lacks ATTN)"
            elif c.n_files < chosen.n_files:
                why[c.series_uid] = f"fewer files ({c.n_files} < {chosen.n_files})"
            elif c.series_number != chosen.series_number:
                why[c.series_uid] = f"SeriesNumber {c.series_number} after {chosen.series_number}"
            else:
                why[c.series_uid] = "same rank; its SeriesInstanceUID sorts after the chosen one"
    if len(cands) == 1:
        return chosen.series_uid, {}
    alternatives = [{"series_uid": c.series_uid, "series_number": c.series_number, "kind": c.kind,
                     "n_files": c.n_files, "why_not": why[c.series_uid]} for c in cands if c is not chosen]
    return chosen.series_uid, {"series_choice": {"chosen": chosen.series_uid, "reason": reason,
                                                 "alternatives": alternatives}}


_NUMERIC_SUFFIX = re.compile(r"^\.\d*$")


def _extension(path: Path) -> str:
    """The extension that says what a file is: ``.dcm``; "" for none or a numeric UID ending (``1.2.840.5``)."""
    suffix = path.suffix.lower()
    return "" if _NUMERIC_SUFFIX.match(suffix) else suffix


def _check_unread(items: Sequence[tuple[Path, pydicom.Dataset]], unread: Sequence[Path]) -> None:
    """Refuse files beside the series' slices that look like slices but are empty or not readable.

    A file that is no member of any series (not DICOM, or without SeriesInstanceUID) is an error
    when it sits in a folder of the chosen series' slices and has their extension (``.dcm``;
    names without extension or ending in numeric UID parts count as one kind), unless its name is
    one of :data:`NOT_DICOM_NAMES` (DICOMDIR, README...). Other files (``notes.txt``, ``*.json``,
    ``*.nii.gz`` beside ``.dcm`` slices, files in other folders) are ignored. A zero-byte file is
    reported as an empty file, any other as a truncated or corrupt one.
    """
    folders = {p.parent for p, _ in items}
    extensions = {_extension(p) for p, _ in items}
    for path in unread:
        if path.parent not in folders or _extension(path) not in extensions:
            continue
        stem = path.name.split(".")[0].upper()
        if path.name.upper() in NOT_DICOM_NAMES or stem in NOT_DICOM_NAMES:
            continue
        size = path.stat().st_size
        if size == 0:
            raise DicomSeriesError(f"{path}: empty file (0 bytes) among the slices of the PET series; a slice is "
                                   "probably missing. Re-export the series, or remove the file if it is no slice.")
        raise DicomSeriesError(f"{path}: not readable as a DICOM slice ({size} bytes: no DICOM header or no "
                               "SeriesInstanceUID, a truncated or corrupt file) among the slices of the PET series. "
                               "Replace the file with the complete slice, or remove it if it is no slice.")


def _select(source, series_uid: str | None, threads: int):
    """Scan the files and pick the PET series: ``(uid, items, where, notes)``."""
    files = _files_of(source)
    groups, unread = _scan(files, threads)
    where = str(source) if isinstance(source, (str, os.PathLike)) else f"{len(files)} files"
    if not groups:
        raise DicomSeriesError(f"{where}: no DICOM files found ({len(files)} files checked). "
                               "Point to the folder that holds the PET series.")
    pets = {uid: items for uid, items in groups.items() if _text(items[0][1], _MODALITY) == "PT"}
    if series_uid is not None:
        if series_uid not in groups:
            raise DicomSeriesError(f"{where}: SeriesInstanceUID {series_uid} is not there; found "
                                   f"{', '.join(sorted(groups))}.")
        pets.setdefault(series_uid, groups[series_uid])
    if not pets:
        found = ", ".join(sorted({_text(i[0][1], _MODALITY) or "?" for i in groups.values()}))
        raise DicomSeriesError(f"{where}: no PET series (Modality PT); found modalities {found}. "
                               "Point to the folder of the PET series.")
    summaries = {u: summarize_series(u, items) for u, items in pets.items()}
    try:
        uid, notes = choose_pet_series(list(summaries.values()), series_uid)
    except DicomSeriesError as exc:
        raise DicomSeriesError(f"{where}: {exc}") from None
    if "series_choice" in notes and series_uid is None:
        choice = notes["series_choice"]
        alts = choice["alternatives"]
        others = "; ".join(f"{summaries[a['series_uid']].label()}: {a['why_not']}"
                           for a in alts[:5]) + (f"; and {len(alts) - 5} more" if len(alts) > 5 else "")
        warnings.warn(PetfeatWarning(
            f"the input holds {len(pets)} PET series of one study; read {summaries[uid].label()}, "
            f"{choice['reason']}. Not read: {others}. Choose another with series_uid=... (CLI: --series-uid UID)."),
            stacklevel=3)
    _check_unread(pets[uid], unread)
    return uid, pets[uid], where, notes


def read_pet_header(source, *, series_uid: str | None = None, threads: int = 1) -> PetHeader:
    """Read one PET series' headers: series choice, slice order, geometry and SUV fields; no pixel data.

    Pixel data is never decoded (a compressed series reads without a decoder), so this is what
    ``petfeat suv`` needs. Parameters, choice rules and refusals are those of :func:`read_pet_series`
    except the pixel checks (volume size, truncated or undecodable pixel data).

    Returns
    -------
    PetHeader
    """
    uid, items, where, notes = _select(source, series_uid, threads)
    header, _ = _layout(uid, items, where, notes)
    return header


def read_pet_series(source, *, series_uid: str | None = None, threads: int = 1) -> PetSeries:
    """Read one PET series from a folder (searched recursively) or a list of files.

    Parameters
    ----------
    source : path or sequence of paths
        A folder, one file, or a list of files.
    series_uid : str, optional
        SeriesInstanceUID to read. Without it, when the folder holds several PET series of one
        study, :func:`choose_pet_series` picks one (projections dropped, attenuation-corrected and
        most files preferred), warns, and records the choice in ``notes["series_choice"]``.
    threads : int
        Threads used to read files: 1 is fastest on local disks (parsing holds the GIL); more
        help on network storage.

    Returns
    -------
    PetSeries

    Warns
    -----
    PetfeatWarning
        Several PET series (the choice), slice spacing that varies within :data:`SPACING_JITTER_RTOL`
        (bed junctions), NumberOfSlices (0054,0081) other than the slices read, or files that repeat a
        slice (read once); each recorded in ``notes``.

    Raises
    ------
    DicomSeriesError
        No PET series; PET series of several studies and no ``series_uid``; a file named like the
        slices that is empty or not readable (see :func:`_check_unread`); a corrupt header (any
        parse failure names the file); inconsistent geometry; a gap beyond
        :data:`SPACING_JITTER_RTOL` (a missing slice: the first such gap is named); two different
        images at one position (dynamic or gated); a volume larger than :data:`MAX_VOLUME_BYTES`;
        missing, truncated or undecodable pixel data; uncompressed pixel data whose length is not
        Rows x Columns x BitsAllocated/8; PixelRepresentation other than 0/1 or NumberOfFrames other than 1;
        an ImageOrientationPatient that is not two orthogonal unit vectors, a PixelSpacing (or a one-slice
        SliceThickness) that is not positive; slices without RescaleSlope or RescaleIntercept, and rescale
        values :func:`_check_rescale_values` refuses (non-finite intercept, negative slope, a slope
        :data:`SLOPE_SPREAD` off the median, rescaled values beyond float32).
    """
    uid, items, where, notes = _select(source, series_uid, threads)
    header, sorted_items = _layout(uid, items, where, notes)
    stored, slope, intercept = _read_pixels(sorted_items)
    return PetSeries(**vars(header), stored=stored, slope=slope, intercept=intercept)


def _raw(ds, tag):
    """An element's value without pydicom's conversion: bytes for raw elements, else the value."""
    try:
        elem = ds.get_item(tag)
    except KeyError:
        return None
    return None if elem is None else elem.value


def _text(ds, tag) -> str | None:
    """A text (DS, IS, DA, TM, CS...) element as a stripped string; ``None`` when absent or empty."""
    v = _raw(ds, tag)
    if v is None:
        return None
    if isinstance(v, (bytes, bytearray)):
        v = v.decode("latin-1")
    elif isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        v = "\\".join(str(x) for x in v)
    v = str(v).strip(" \x00")
    return v or None


def _numbers(ds, tag, path: Path, keyword: str) -> np.ndarray:
    """A DS/IS element (possibly multi-valued) as floats; clear error when it is not numeric."""
    txt = _text(ds, tag)
    try:
        return np.array([float(x) for x in txt.split("\\")])
    except (AttributeError, ValueError) as exc:
        raise DicomSeriesError(f"{path}: {keyword} is {quoted_value(txt, 'DS')}, not a number. Re-export the series."
                               ) from exc


_IPP, _IOP, _PS = BaseTag(0x00200032), BaseTag(0x00200037), BaseTag(0x00280030)
_ROWS, _COLS, _BITS, _PREP = BaseTag(0x00280010), BaseTag(0x00280011), BaseTag(0x00280100), BaseTag(0x00280103)
_SLOPE, _INTER = BaseTag(0x00281053), BaseTag(0x00281052)
_ACQ_DATE, _ACQ_TIME, _ACQ_DT = BaseTag(0x00080022), BaseTag(0x00080032), BaseTag(0x0008002A)
_FRT, _AFD = BaseTag(0x00541300), BaseTag(0x00181242)


def max_volume_bytes() -> int:
    """The allocation limit: ``PETFEAT_MAX_VOLUME_GB`` (GiB) when set, else :data:`MAX_VOLUME_BYTES`."""
    env = os.environ.get(MAX_VOLUME_ENV, "").strip()
    if not env:
        return MAX_VOLUME_BYTES
    try:
        gib = float(env)
    except ValueError:
        gib = float("nan")
    if not np.isfinite(gib) or gib <= 0:
        raise DicomSeriesError(f"environment variable {MAX_VOLUME_ENV} is {env!r}; set it to a positive number "
                               "of GiB (e.g. 16) or unset it.")
    return int(gib * 1024**3)


def _layout(uid: str, items: list[tuple[Path, pydicom.Dataset]], where: str,
            notes: dict) -> tuple[PetHeader, list[tuple[Path, pydicom.Dataset]]]:
    """Check the slices' geometry, sort them along the normal and collect the header fields.

    Any exception a corrupt header raises while its values are converted becomes a
    :class:`DicomSeriesError` naming the file being read.
    """
    notes = dict(notes)
    at = [items[0][0]]  # the file whose fields are being read, for the error message
    try:
        return _layout_checked(uid, items, where, notes, at)
    except PetfeatError:
        raise
    except Exception as exc:  # noqa: BLE001 -- pydicom's value conversion raises many types on corrupt values
        raise DicomSeriesError(f"{at[0]}: a header field cannot be read ({type(exc).__name__}: {exc}); the file "
                               "is corrupt. Replace it or re-export the series.") from exc


_SOP_UID, _FRAME_UID = BaseTag(0x00080018), BaseTag(0x00200052)


def _without_copies(items: list[tuple[Path, pydicom.Dataset]], notes: dict) -> list[tuple[Path, pydicom.Dataset]]:
    """The slices with each SOPInstanceUID once: a second file of one image is a copy (e.g. ``pet/`` and a backup).

    The first file in path order is kept; the number of copies is noted and warned about.
    """
    seen, keep = set(), []
    for path, ds in items:
        sop = _text(ds, _SOP_UID)
        if sop is not None and sop in seen:
            continue
        if sop is not None:
            seen.add(sop)
        keep.append((path, ds))
    copies = len(items) - len(keep)
    if copies:
        notes["duplicate_files"] = copies
        warnings.warn(f"{copies} file(s) of the series are copies of other slices (the same SOPInstanceUID, e.g. a "
                      "backup folder beside the series); each image is read once.", PetfeatWarning, stacklevel=4)
    return keep


def _layout_checked(uid, items, where, notes, at):
    items = _without_copies(items, notes)
    first_path, first = items[0]
    _check_single_frame(items)
    # --- consistency of orientation and size (raw bytes equal to the first slice's: fast path) ---
    for kw, tag in (("ImageOrientationPatient", _IOP), ("ImagePositionPatient", _IPP), ("Rows", _ROWS),
                    ("Columns", _COLS), ("PixelSpacing", _PS)):
        for path, ds in items:
            if _raw(ds, tag) is None:
                raise DicomSeriesError(f"{path}: {kw} is missing; the slice cannot be placed. Re-export the series.")
    ref_iop, ref_ps = _raw(first, _IOP), _raw(first, _PS)
    ref_size = (_raw(first, _ROWS), _raw(first, _COLS))
    iop0 = _numbers(first, _IOP, first_path, "ImageOrientationPatient")
    ps0 = _numbers(first, _PS, first_path, "PixelSpacing")
    if iop0.size != 6 or ps0.size != 2 or not (np.all(np.isfinite(iop0)) and np.all(np.isfinite(ps0))):
        raise DicomSeriesError(f"{first_path}: ImageOrientationPatient needs 6 and PixelSpacing 2 finite numbers "
                               f"(found {iop0.size} and {ps0.size}). Re-export the series.")
    same_iop = sum(_raw(ds, _IOP) == ref_iop for _, ds in items)
    same_ps = sum(_raw(ds, _PS) == ref_ps for _, ds in items)
    _check_orientation(iop0, first_path, same_iop, len(items))
    _check_pixel_spacing(ps0, first_path, same_ps, len(items))
    ipps = []
    for path, ds in items:
        at[0] = path
        ipp = _numbers(ds, _IPP, path, "ImagePositionPatient")
        if ipp.size != 3 or not np.all(np.isfinite(ipp)):
            raise DicomSeriesError(f"{path}: ImagePositionPatient needs 3 finite numbers, found {ipp.tolist()}. "
                                   "Re-export the series.")
        ipps.append(ipp)
        if (_raw(ds, _ROWS), _raw(ds, _COLS)) != ref_size and (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise DicomSeriesError(f"{path}: Rows x Columns {ds.Rows}x{ds.Columns} differs from "
                                   f"{first.Rows}x{first.Columns} in {first_path}; the folder mixes images. "
                                   "Separate the series.")
        if _raw(ds, _PS) != ref_ps:
            ps = _numbers(ds, _PS, path, "PixelSpacing")
            _check_pixel_spacing(ps, path, 1, len(items))
            if ps.shape != ps0.shape or not np.allclose(ps, ps0, rtol=1e-4):
                raise DicomSeriesError(f"{path}: PixelSpacing {list(ds.PixelSpacing)} differs from "
                                       f"{list(first.PixelSpacing)} in {first_path}. Separate the series.")
        if _raw(ds, _IOP) != ref_iop:
            iop = _numbers(ds, _IOP, path, "ImageOrientationPatient")
            _check_orientation(iop, path, 1, len(items))
            if np.abs(iop - iop0).max() > ORIENTATION_ATOL:
                raise DicomSeriesError(f"{path}: ImageOrientationPatient differs from {first_path}; slices of one "
                                       "volume must share their orientation (gantry tilt or mixed series).")
    at[0] = first_path
    row, col = iop0[:3], iop0[3:]
    normal = np.cross(row, col)
    pos = np.stack(ipps) @ normal
    order = _without_resent(items, pos, np.argsort(pos, kind="stable"), notes)
    pos_sorted = pos[order]
    if len(order) > 1:
        dz = _slice_spacing(pos_sorted, [items[i][0] for i in order], where, notes)
    else:
        dz = _single_slice_thickness(first, first_path)
    sorted_items = [items[i] for i in order]
    _check_slice_count(sorted_items, notes)
    rows, cols = int(first.Rows), int(first.Columns)
    if rows <= 0 or cols <= 0:
        raise DicomSeriesError(f"{first_path}: Rows x Columns is {rows} x {cols}; an image needs at least one "
                               "pixel. Replace the file.")
    ps = ps0  # (row spacing = Y, column spacing = X)
    geometry = Geometry(
        shape=(len(sorted_items), rows, cols),
        spacing=(dz, float(ps[0]), float(ps[1])),
        origin=tuple(float(v) for v in ipps[order[0]]),
        direction=tuple(float(v) for v in np.stack([row, col, normal], axis=1).ravel()),
    )
    at[0] = sorted_items[0][0]
    full = _full_header(*sorted_items[0])
    suv_header = suv_header_from_datasets([full] + [ds for _, ds in sorted_items[1:]], str(first_path.parent))
    header = PetHeader(
        geometry=geometry, suv_header=suv_header, files=[p for p, _ in sorted_items], series_uid=uid,
        study_uid=str(first.get("StudyInstanceUID", "")),
        study_date=_safe(parse_da, first.get("StudyDate")) or _safe(parse_da, first.get("SeriesDate")),
        patient_id=str(first.get("PatientID", "")), series_number=_series_number(first),
        notes=notes, frame_uid=_text(first, _FRAME_UID) or "",
    )
    corrected = {c.strip().upper() for c in suv_header.corrected_image}
    if corrected and "ATTN" not in corrected:
        notes["attenuation_corrected"] = False
        warnings.warn(f"{where}: the series is not attenuation-corrected (CorrectedImage {sorted(corrected)}); its "
                      "SUVs are not quantitative. Use the attenuation-corrected series of the study.", PetfeatWarning,
                      stacklevel=4)
    return header, sorted_items


#: Slices closer than this along the normal (mm) share one position.
SAME_POSITION_MM = 1e-3
#: ImageOrientationPatient's row and column directions must have length 1 within this and a dot product below it.
ORIENTATION_UNIT_TOL = 1e-3
_NUMBER_OF_FRAMES = BaseTag(0x00280008)


def _shown(values: np.ndarray) -> str:
    r"""Numbers as a DICOM multi-value (``1\0\0``) for messages."""
    return "\\".join(f"{v:g}" for v in values)


def _in_slices(count: int, n: int) -> str:
    return f"in {count} of {n} slice(s)" if count > 1 else "in this slice"


def _check_single_frame(items: list[tuple[Path, pydicom.Dataset]]) -> None:
    """Refuse a slice whose NumberOfFrames (0028,0008) is not 1 (absent counts as 1)."""
    for path, ds in items:
        txt = _text(ds, _NUMBER_OF_FRAMES)
        if txt is None:
            continue
        try:
            frames = float(txt)
        except ValueError:
            frames = float("nan")
        if frames == 1:
            continue
        if frames > 1:
            raise DicomSeriesError(
                f"{path}: NumberOfFrames (0028,0008) is {txt}: multi-frame PET is not supported. Convert to "
                "single-frame slices (e.g. dcmtk's dcmsplit) or export per-slice images.")
        raise DicomSeriesError(f"{path}: NumberOfFrames (0028,0008) is {quoted_value(txt, 'IS')}, not a whole number "
                               "of frames; the header is damaged. Replace the file or re-export the series.")


def _check_orientation(iop: np.ndarray, path: Path, count: int, n: int) -> None:
    """Refuse an ImageOrientationPatient whose directions are not unit vectors at right angles.

    ``count`` of the ``n`` slices share the value (for the message). Lengths within
    :data:`ORIENTATION_UNIT_TOL` of 1 and ``|row . column|`` below it are accepted (values rounded
    to a few decimals by the writer).
    """
    if iop.size != 6 or not np.all(np.isfinite(iop)):
        raise DicomSeriesError(f"{path}: ImageOrientationPatient (0020,0037) needs 6 finite numbers, found "
                               f"{iop.tolist()}. Re-export the series.")
    row, col = iop[:3], iop[3:]
    problems = []
    for name, vector in (("row direction (values 1-3)", row), ("column direction (values 4-6)", col)):
        length = float(np.linalg.norm(vector))
        if abs(length - 1.0) > ORIENTATION_UNIT_TOL:
            problems.append(f"the {name} has length {length:.4g}")
    dot = float(row @ col)
    if abs(dot) > ORIENTATION_UNIT_TOL:
        problems.append(f"the two directions are not at right angles (dot product {dot:.4g})")
    if problems:
        raise DicomSeriesError(
            f"{path}: ImageOrientationPatient (0020,0037) is {_shown(iop)} {_in_slices(count, n)}: "
            + "; ".join(problems) + f". Both directions must be unit vectors (length 1 within "
            f"{ORIENTATION_UNIT_TOL:g}) at right angles (|dot product| < {ORIENTATION_UNIT_TOL:g}); the slices cannot "
            "be placed. The header is damaged: re-export the series.")


def _check_pixel_spacing(ps: np.ndarray, path: Path, count: int, n: int) -> None:
    """Refuse a PixelSpacing that is not two positive finite numbers (mm between rows, between columns)."""
    if ps.size != 2 or not np.all(np.isfinite(ps)) or np.any(ps <= 0):
        raise DicomSeriesError(
            f"{path}: PixelSpacing (0028,0030) is {_shown(ps)} {_in_slices(count, n)}; it must be two positive "
            "finite numbers (mm between rows and between columns), else the voxel size and every volume and "
            "position are wrong. The header is damaged: re-export the series.")


def _single_slice_thickness(ds, path: Path) -> float:
    """The slice spacing of a one-slice volume: SliceThickness (0018,0050), 1 mm when absent; refused if not > 0."""
    txt = _text(ds, BaseTag(0x00180050))
    if txt is None:
        return 1.0
    thickness = _numbers(ds, BaseTag(0x00180050), path, "SliceThickness")
    if thickness.size != 1 or not np.isfinite(thickness[0]) or thickness[0] <= 0:
        raise DicomSeriesError(f"{path}: SliceThickness (0018,0050) is {quoted_value(txt, 'DS')}; a one-slice volume "
                               "takes its slice spacing from it, and it must be one positive finite number (mm). Fix "
                               "the header or re-export the series.")
    return float(thickness[0])


def _pixel_bytes(path: Path, ds) -> bytes:
    """The stored (possibly encoded) bytes of one slice's pixel data, as in the file; b"" when there are none."""
    raw = _raw(ds, _PIXEL_DATA)
    if raw is None:
        raw = _raw(ds, _FLOAT_PIXEL_DATA)
    if isinstance(raw, PixelDataAt):
        with open(raw.path, "rb") as f:
            f.seek(raw.offset)
            return f.read(raw.length)
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw)
    full = pydicom.dcmread(path)  # deferred by pydicom: read the whole file
    elem = full.get("PixelData", full.get("FloatPixelData"))
    return b"" if elem is None else bytes(elem)


def _same_image(a: tuple[Path, pydicom.Dataset], b: tuple[Path, pydicom.Dataset]) -> bool:
    """Two files of one position hold the same image: equal pixel bytes, rescale and acquisition time."""
    for tag in (_ACQ_DATE, _ACQ_TIME, _ACQ_DT, _FRT):
        if _text(a[1], tag) != _text(b[1], tag):
            return False
    for tag in (_SLOPE, _INTER):
        ta, tb = _text(a[1], tag), _text(b[1], tag)
        if ta != tb:
            try:
                if float(ta) != float(tb):
                    return False
            except (TypeError, ValueError):
                return False
    return _pixel_bytes(*a) == _pixel_bytes(*b)


def _without_resent(items: list[tuple[Path, pydicom.Dataset]], pos: np.ndarray, order: np.ndarray,
                    notes: dict) -> np.ndarray:
    """``order`` without files that repeat another file's image at the same position (a slice sent again).

    A file at the position of another with identical pixel data, rescale and acquisition time (a resend under a
    new SOPInstanceUID) is dropped: the file first in path order is kept, the count added to
    ``notes["duplicate_files"]``, and a warning says so. Files of one position whose images differ are all
    kept (the spacing check then refuses them as frames of a dynamic or gated series).
    """
    keep, dropped, k = [], 0, 0
    while k < len(order):
        j = k + 1
        while j < len(order) and pos[order[j]] - pos[order[k]] < SAME_POSITION_MM:
            j += 1
        group = sorted(order[k:j])  # path order (items are in path order)
        kept = [group[0]]
        for i in group[1:]:
            if any(_same_image(items[i], items[r]) for r in kept):
                dropped += 1
            else:
                kept.append(i)
        keep.extend(sorted(kept, key=lambda i: (pos[i], i)))
        k = j
    if dropped:
        notes["duplicate_files"] = notes.get("duplicate_files", 0) + dropped
        warnings.warn(PetfeatWarning(
            f"{dropped} file(s) of the series repeat a slice under another SOPInstanceUID (the same position, pixel "
            "data, rescale and acquisition time: a slice sent again); each image is read once."), stacklevel=5)
    return np.asarray(keep, dtype=np.intp)


def _check_slice_count(sorted_items: list[tuple[Path, pydicom.Dataset]], notes: dict) -> None:
    """Warn and note when NumberOfSlices (0054,0081) differs from the number of slices read.

    NumberOfSlices (PET Series module) counts the slices of the whole volume, all bed positions of a
    multi-bed series together. A missing first or last slice leaves no gap in the positions, so only
    this count shows it; the slices that were read are placed correctly, so it is not an error.
    """
    counts = set()
    for _, ds in sorted_items:
        try:
            value = ds.get("NumberOfSlices")  # US: binary, converted by pydicom (the fast path's raw bytes too)
            counts.add(int(value[0] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"
                           else value))
        except Exception:  # noqa: BLE001 -- a damaged count is no count: the slices are placed by their positions
            continue
    if not counts:
        return
    header = max(counts)
    n = len(sorted_items)
    if counts == {n}:
        return
    notes["number_of_slices"] = {"header": header, "read": n}
    what = (f"{header - n} slice(s) missing (the first or last, or a whole bed: the positions read have no gap)"
            if header > n else f"{n - header} slice(s) more than the header counts")
    warnings.warn(PetfeatWarning(
        f"NumberOfSlices (0054,0081) is {header}, but {n} slice(s) were read: {what}. The slices read are "
        "placed by their positions; re-export the complete series if slices are missing."), stacklevel=5)


def _slice_spacing(pos: np.ndarray, paths: list[Path], where: str, notes: dict) -> float:
    """The median gap of sorted slice positions; jitter within :data:`SPACING_JITTER_RTOL` warns and is noted."""
    gaps = np.diff(pos)
    if np.any(gaps < SAME_POSITION_MM):
        k = int(np.argmax(gaps < SAME_POSITION_MM))
        raise DicomSeriesError(
            f"{paths[k]} and {paths[k + 1]}: two slices at the same position "
            f"({pos[k]:.3f} mm) with different images. The series holds several frames or time points "
            "(dynamic/gated); split it.")
    dz = float(np.median(gaps))
    dev = np.abs(gaps - dz)
    bad = np.flatnonzero(dev > SPACING_JITTER_RTOL * dz)
    if bad.size:
        k = int(bad[0])
        raise DicomSeriesError(
            f"{where}: slice spacing is not uniform: the gap between {paths[k]} (at {pos[k]:.3f} mm) and "
            f"{paths[k + 1]} (at {pos[k + 1]:.3f} mm) is {gaps[k]:.3f} mm, the median spacing {dz:.3f} mm "
            f"(more than {SPACING_JITTER_RTOL:.0%} off; {bad.size} such gap(s), from {gaps.min():.4f} to "
            f"{gaps.max():.4f} mm). A slice is missing or duplicated; re-export the complete series.")
    k = int(np.argmax(dev))
    if dev[k] > SPACING_RTOL * dz + 1e-3:
        offset = float(np.max(np.abs(pos - (pos[0] + dz * np.arange(len(pos))))))
        notes.update({"slice_spacing_mm": dz, "slice_spacing_max_deviation_mm": float(dev[k]),
                      "slice_spacing_max_deviation_after_slice": k, "slice_position_max_offset_mm": offset})
        warnings.warn(PetfeatWarning(
            f"slice spacing varies: gaps {gaps.min():.3f} to {gaps.max():.3f} mm around the median {dz:.3f} mm; the "
            f"largest deviation, {dev[k]:.3f} mm, lies between slices {k} and {k + 1} (at {pos[k]:.2f} and "
            f"{pos[k + 1]:.2f} mm along the normal; bed junction). Within the {SPACING_JITTER_RTOL:.0%} tolerance: "
            f"the volume uses the median spacing (slices at most {offset:.3f} mm off their grid positions)."),
            stacklevel=5)
    return dz


def _read_pixels(sorted_items: list[tuple[Path, pydicom.Dataset]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stored pixels ``(Z, Y, X)`` and per-slice slope and intercept of sorted slices.

    The volume size is checked against :func:`max_volume_bytes` and every slice's uncompressed
    PixelData length against Rows x Columns x BitsAllocated/8 (plus one pad byte for an odd length)
    before anything is allocated. RescaleSlope and
    RescaleIntercept are Type 1 in the PET Image module (PS3.3 C.8.9.4): a slice without either is
    refused (no default of 1 and 0 is assumed: a missing slope scaled a series' SUVs by the wrong factor).
    """
    first_path, first = sorted_items[0]
    _check_rescale_present(sorted_items)
    at = [first_path]
    try:
        rows, cols = int(first.Rows), int(first.Columns)
        dtype = _stored_dtype(first, first_path)
        need = len(sorted_items) * rows * cols * dtype.itemsize
        limit = max_volume_bytes()
        if need > limit:
            raise DicomSeriesError(
                f"{first_path}: Rows x Columns = {rows} x {cols} for {len(sorted_items)} slice(s) of {dtype.itemsize} "
                f"byte(s) needs {need / 1024**3:.2f} GiB, more than the limit of {limit / 1024**3:.2f} GiB. If "
                f"Rows/Columns are wrong the file is corrupt: re-export the series; if the volume is real, raise "
                f"the limit with the environment variable {MAX_VOLUME_ENV} (GiB).")
        ref_fmt = (_raw(first, _BITS), _raw(first, _PREP))  # raw bytes: taken before any conversion below
        for path, ds in sorted_items:
            at[0] = path
            if (_raw(ds, _BITS), _raw(ds, _PREP)) != ref_fmt and _stored_dtype(ds, path) != dtype:
                raise DicomSeriesError(f"{path}: BitsAllocated/PixelRepresentation differ from {first_path}. "
                                       "Re-export the series with one pixel format.")
            _pixel_source(ds, path, rows, cols, dtype)
        stored = np.empty((len(sorted_items), rows, cols), dtype=dtype)
        slope = np.empty(len(sorted_items))
        intercept = np.empty(len(sorted_items))
        for z, (path, ds) in enumerate(sorted_items):
            at[0] = path
            _pixels(ds, path, rows, cols, dtype, stored[z])
            slope[z] = _numbers(ds, _SLOPE, path, "RescaleSlope")[0]
            intercept[z] = _numbers(ds, _INTER, path, "RescaleIntercept")[0]
    except PetfeatError:
        raise
    except Exception as exc:  # noqa: BLE001 -- pydicom's value conversion raises many types on corrupt values
        raise DicomSeriesError(f"{at[0]}: a header field cannot be read ({type(exc).__name__}: {exc}); the file "
                               "is corrupt. Replace it or re-export the series.") from exc
    if not np.all(np.isfinite(slope)) or np.any(slope == 0):
        z = int(np.flatnonzero(~np.isfinite(slope) | (slope == 0))[0])
        raise DicomSeriesError(f"{sorted_items[z][0]}: RescaleSlope is {slope[z]}; it must be finite and non-zero.")
    _check_rescale_values(sorted_items, slope, intercept, dtype)
    return stored, slope, intercept


#: Largest ratio between one slice's RescaleSlope and the series' median slope. Scanners that scale each slice of
#: 16-bit data to its own maximum give slopes that differ by a factor of about 100 within a series; a factor of a
#: million is a corrupt value (1e300 in one slice), not a scaling.
SLOPE_SPREAD = 1e6


def _check_rescale_values(sorted_items: list[tuple[Path, pydicom.Dataset]], slope: np.ndarray,
                          intercept: np.ndarray, dtype: np.dtype) -> None:
    """Refuse rescale values that cannot be an activity scale (slopes are finite and non-zero already).

    Refused, naming the first such slice and how many there are: a non-finite RescaleIntercept; a negative
    RescaleSlope (every activity would change sign); a slope more than :data:`SLOPE_SPREAD` times above or below
    the series' median; integer stored values whose rescaled range leaves float32 (the precision of the SUV
    volume), which a slope or intercept of 1e300 in every slice gives.
    """
    n = len(slope)

    def refuse(bad: np.ndarray, keyword: str, values: np.ndarray, problem: str) -> DicomSeriesError:
        z = int(np.flatnonzero(bad)[0])
        count = int(bad.sum())
        others = f" (and in {count - 1} other of the {n} slices)" if count > 1 else ""
        return DicomSeriesError(f"{sorted_items[z][0]}: {keyword} is {values[z]:g}{others}; {problem}. The header is "
                                "damaged: re-export the series from the scanner or PACS.")

    bad = ~np.isfinite(intercept)
    if bad.any():
        raise refuse(bad, "RescaleIntercept (0028,1052)", intercept, "it must be a finite number")
    bad = slope < 0
    if bad.any():
        raise refuse(bad, "RescaleSlope (0028,1053)", slope, "a negative slope turns every activity negative, and "
                     "no PET series is stored that way")
    median = float(np.median(slope))
    ratio = slope / median
    bad = (ratio > SLOPE_SPREAD) | (ratio < 1.0 / SLOPE_SPREAD)
    if bad.any():
        z = int(np.flatnonzero(bad)[0])
        raise refuse(bad, "RescaleSlope (0028,1053)", slope,
                     f"{ratio[z]:.3g} times the series' median slope {median:g}; the slices of one series differ by "
                     f"a factor of about 100 at most, more than {SLOPE_SPREAD:g} is no scaling")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        reach = np.abs(slope) * float(max(-int(info.min), int(info.max))) + np.abs(intercept)
        bad = ~(reach <= float(np.finfo(np.float32).max))
        if bad.any():
            z = int(np.flatnonzero(bad)[0])
            keyword, values = (("RescaleSlope (0028,1053)", slope) if abs(slope[z]) * float(info.max) > abs(
                intercept[z]) else ("RescaleIntercept (0028,1052)", intercept))
            raise refuse(bad, keyword, values, f"rescaled {dtype.itemsize * 8}-bit values reach {reach[z]:.3g}, "
                         "beyond the range of 32-bit floats (3.4e38) that SUVs are computed in")


def _check_rescale_present(sorted_items: list[tuple[Path, pydicom.Dataset]]) -> None:
    """Refuse slices without RescaleSlope (0028,1053) or RescaleIntercept (0028,1052), in one message."""
    n = len(sorted_items)
    parts = []
    for keyword, tag in (("RescaleSlope (0028,1053)", _SLOPE), ("RescaleIntercept (0028,1052)", _INTER)):
        without = [path for path, ds in sorted_items if _text(ds, tag) is None]
        if without:
            where = str(without[0]) + (f" and {len(without) - 1} other slice(s)" if len(without) > 1 else "")
            parts.append(f"{keyword} is missing or empty in {len(without)} of {n} slice(s) ({where})")
    if parts:
        raise DicomSeriesError(
            "; ".join(parts) + ". Both are Type 1 in the PET Image module (DICOM PS3.3 C.8.9.4): without them the "
            "stored values cannot be converted to activity, and assuming 1 and 0 gives wrong SUVs. Re-export the "
            "series from the scanner or PACS with its rescale values.")


def _full_header(path: Path, ds):
    """The series-level header (radiopharmaceutical sequence, private SUV tags) of the first slice."""
    if isinstance(ds, pydicom.FileDataset):  # read by pydicom already, with every tag of _TAGS
        return ds
    full = _read_header_pydicom(path)
    return full if full is not None else ds


def _safe(fn, value):
    try:
        return fn(value)
    except ValueError:
        return None


def _stored_dtype(ds, path: Path) -> np.dtype:
    if "FloatPixelData" in ds:
        return np.dtype(np.float32)
    bits = int(ds.get("BitsAllocated", 0))
    representation = int(ds.get("PixelRepresentation", 0))
    kinds = {8: (np.uint8, np.int8), 16: (np.uint16, np.int16), 32: (np.uint32, np.int32)}
    if bits not in kinds:
        raise DicomSeriesError(f"{path}: BitsAllocated = {bits} is not supported (8, 16, 32).")
    if representation not in (0, 1):
        raise DicomSeriesError(f"{path}: PixelRepresentation (0028,0103) is {representation}; it must be 0 "
                               "(unsigned) or 1 (two's complement), so the stored values cannot be read. The header "
                               "is damaged: replace the file or re-export the series.")
    signed = representation == 1
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomSeriesError(f"{path}: SamplesPerPixel = {ds.SamplesPerPixel}; a PET image has one sample.")
    return np.dtype(kinds[bits][int(signed)])


_PIXEL_DATA, _FLOAT_PIXEL_DATA = BaseTag(0x7FE00010), BaseTag(0x7FE00008)


def _pixel_source(ds, path: Path, rows: int, cols: int, dtype: np.dtype):
    """``(raw pixel value, transfer syntax)`` of one slice; missing or short uncompressed data names the file."""
    raw = _raw(ds, _FLOAT_PIXEL_DATA) if dtype == np.float32 else _raw(ds, _PIXEL_DATA)
    if raw is None:
        raise DicomSeriesError(f"{path}: PixelData (7FE0,0010) is missing. Replace the file.")
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID", ImplicitVRLittleEndian) if meta is not None else ImplicitVRLittleEndian
    if ts in _UNCOMPRESSED or ts == ExplicitVRBigEndian:
        need = rows * cols * dtype.itemsize
        have = len(raw)
        if have < need:
            raise DicomSeriesError(
                f"{path}: PixelData holds {have} bytes but {rows}x{cols}x{dtype.itemsize} = "
                f"{need} are needed (truncated file). Replace the file.")
        if have != need + (need % 2):  # one pad byte makes an odd length even
            per_pixel = have / (rows * cols)
            fits = (f" (it holds {per_pixel:g} bytes per pixel: {int(per_pixel) * 8}-bit values)"
                    if per_pixel in (1, 2, 4) else "")
            element, fmt = (("FloatPixelData (7FE0,0008)", "32-bit floats") if dtype == np.float32 else
                            ("PixelData (7FE0,0010)", f"BitsAllocated (0028,0100) = {dtype.itemsize * 8}"))
            raise DicomSeriesError(
                f"{path}: {element} holds {have} bytes, but {fmt} with Rows x Columns = {rows} x {cols} gives "
                f"{need} bytes per frame{fits}. The pixel format in the header does not match the data, and reading "
                "it would give wrong values. Replace the file or re-export the series.")
    return raw, ts


def _pixels(ds, path: Path, rows: int, cols: int, dtype: np.dtype, out: np.ndarray) -> None:
    """Write one slice's stored values into ``out`` (``rows x cols`` of ``dtype``).

    Uncompressed data is copied from the file bytes; any other transfer syntax (JPEG Lossless,
    JPEG-LS, JPEG 2000, RLE, deflate) is read whole by pydicom and decoded by its plugins.
    """
    raw, ts = _pixel_source(ds, path, rows, cols, dtype)
    try:
        if ts in _UNCOMPRESSED or ts == ExplicitVRBigEndian:
            if isinstance(raw, PixelDataAt):  # fast path: from the file straight into the volume
                raw.read_into(out)
                return
            arr = np.frombuffer(raw, dtype=dtype.newbyteorder(">" if ts == ExplicitVRBigEndian else "<"),
                                count=rows * cols)
            out[...] = arr.reshape(rows, cols)
            return
        # the header was parsed with a subset of tags; decoders need the whole pixel module
        out[...] = pydicom.dcmread(path).pixel_array.reshape(rows, cols)
    except DicomSeriesError:
        raise
    except Exception as exc:  # noqa: BLE001 -- decoder errors come in many types
        from pydicom._uid_dict import UID_dictionary

        if UID_dictionary.get(str(ts), ("", ""))[1] != "Transfer Syntax":  # a damaged header names none
            raise DicomSeriesError(f"{path}: TransferSyntaxUID {quoted_value(ts, 'UI')} is not a DICOM transfer "
                                   "syntax; the file's header is damaged. Replace the file.") from exc
        raise DicomSeriesError(f"{path}: pixel data cannot be decoded ({type(exc).__name__}: {exc}). "
                               "Replace the file or install the decoder pydicom names.") from exc


def suv_header_from_datasets(datasets: Sequence[pydicom.Dataset], source: str) -> SuvHeader:
    """Collect the SUV-relevant header fields of a sorted series.

    Series-level fields come from the first slice; acquisition times and frame timing per slice.
    """
    ds = datasets[0]
    rp = None
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if seq is not None and len(seq) > 0:
        rp = seq[0]

    def rp_get(keyword):
        """A radiopharmaceutical field's text as stored (unconverted: a malformed value is named, not raised on)."""
        return _text(rp, BaseTag(tag_for_keyword(keyword))) if rp is not None else None

    nuclide = None
    if rp is not None and rp.get("RadionuclideCodeSequence"):
        code = rp.RadionuclideCodeSequence[0]
        nuclide = f"{code.get('CodeValue', '')}|{code.get('CodeMeaning', '')}"
    elif rp is not None and rp.get("Radionuclide"):
        nuclide = str(rp.Radionuclide)

    def private(tag, conv):
        if tag in ds:
            try:
                v = ds[tag].value
                if isinstance(v, bytes):
                    v = v.decode("ascii", "ignore").strip("\x00 ")
                return conv(v)
            except (ValueError, TypeError):
                return None
        return None

    malformed: dict[str, str] = {}

    def parsed(fn, value, keyword: str):
        """``fn(value)``; a value that does not parse is kept in ``malformed`` (the first one per field)."""
        try:
            return fn(value)
        except (TypeError, ValueError):
            malformed.setdefault(keyword, str(value).strip()[:32])  # a date or number field: no free text kept
            return None

    def number(value, keyword: str) -> float | None:
        if value is None or str(value).strip() == "":
            return None
        return parsed(float, value, keyword)

    acq = []
    for d in datasets:
        t = combine(parsed(parse_da, _text(d, _ACQ_DATE), "AcquisitionDate"),
                    parsed(parse_tm, _text(d, _ACQ_TIME), "AcquisitionTime"))
        if t is None and _text(d, _ACQ_DT):
            t = parsed(parse_dt, _text(d, _ACQ_DT), "AcquisitionDateTime")
        acq.append(t)
    sex = str(ds.get("PatientSex", "") or "") or None
    return SuvHeader(
        source=source,
        units=str(ds.get("Units", "") or "") or None,
        decay_correction=str(ds.get("DecayCorrection", "") or "") or None,
        corrected_image=tuple(str(v) for v in (ds.get("CorrectedImage") or [])),
        series_datetime=combine(parsed(parse_da, _text(ds, _SERIES_DATE), "SeriesDate"),
                                parsed(parse_tm, _text(ds, _SERIES_TIME), "SeriesTime")),
        acquisition_datetimes=acq,
        frame_reference_times_ms=np.array([_nan_if_none(_to_float(_text(d, _FRT))) for d in datasets]),
        actual_frame_durations_ms=np.array([_nan_if_none(_to_float(_text(d, _AFD))) for d in datasets]),
        ge_private_scan_datetime=private((0x0009, 0x100D), parse_dt),
        injection_datetime=parsed(parse_dt, rp_get("RadiopharmaceuticalStartDateTime"),
                                  "RadiopharmaceuticalStartDateTime"),
        injection_time=parsed(parse_tm, rp_get("RadiopharmaceuticalStartTime"), "RadiopharmaceuticalStartTime"),
        total_dose_bq=number(rp_get("RadionuclideTotalDose"), "RadionuclideTotalDose"),
        half_life_s=number(rp_get("RadionuclideHalfLife"), "RadionuclideHalfLife"),
        nuclide=nuclide,
        weight_kg=number(_text(ds, _WEIGHT), "PatientWeight"),
        height_m=number(_text(ds, _SIZE), "PatientSize"),
        sex=sex,
        suv_type=str(ds.get("SUVType", "") or "") or None,
        philips_suv_scale=private((0x7053, 0x1000), float),
        philips_activity_scale=private((0x7053, 0x1009), float),
        manufacturer=str(ds.get("Manufacturer", "") or "") or None,
        radiopharmaceutical_sequence=rp is not None,
        malformed=malformed,
        differing=_differing_weights(datasets),
    )


_SERIES_DATE, _SERIES_TIME = BaseTag(0x00080021), BaseTag(0x00080031)
_WEIGHT, _SIZE = BaseTag(0x00101030), BaseTag(0x00101020)


def _differing_weights(datasets: Sequence[pydicom.Dataset]) -> dict[str, str]:
    """``{"PatientWeight": "70 kg in 99 slices, 52 kg in 1 (slice 30)"}`` when the slices disagree, else ``{}``.

    Values are compared as numbers (``70`` equals ``70.0``); a slice without PatientWeight is not counted.
    """
    seen: dict[object, list[int]] = {}
    for z, d in enumerate(datasets):
        txt = _text(d, _WEIGHT)
        if txt is None:
            continue
        try:
            value: object = float(txt)
        except ValueError:
            value = txt
        seen.setdefault(value, []).append(z)
    if len(seen) < 2:
        return {}
    parts = []
    for value, slices in sorted(seen.items(), key=lambda kv: -len(kv[1])):
        shown = f"{value:g} kg" if isinstance(value, float) else repr(value)
        where = f" (slice {slices[0]}{', ...' if len(slices) > 1 else ''})" if len(slices) < len(datasets) / 2 else ""
        parts.append(f"{shown} in {len(slices)} slice(s){where}")
    return {"PatientWeight": ", ".join(parts)}


def _nan_if_none(v: float | None) -> float:
    return np.nan if v is None else v


def _to_float(v) -> float | None:
    if v is None or v == "":
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
