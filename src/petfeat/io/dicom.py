"""Read PET DICOM series: header parse once, raw stored pixels, per-slice rescale, geometry.

The reader never builds a float volume. It returns the stored integers (or floats) as one
``(Z, Y, X)`` array, the per-slice ``RescaleSlope``/``RescaleIntercept`` and the header fields
that :func:`petfeat.suv.compute_suv_factors` needs. Uncompressed pixel data is taken straight
from the file bytes (no per-slice pydicom pixel array); compressed transfer syntaxes go through
pydicom's pixel handlers.
"""

from __future__ import annotations

import datetime as dt
import os
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

from petfeat.errors import DicomSeriesError
from petfeat.io.dicom_fast import PixelDataAt, read_slice_header
from petfeat.suv import SuvHeader, combine, parse_da, parse_dt, parse_tm

_UNCOMPRESSED = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, "1.2.840.10008.1.2.1.99"}
#: Relative tolerance on slice spacing and on orientation cosines.
SPACING_RTOL = 1e-3
ORIENTATION_ATOL = 1e-4
#: Defer reading values larger than this until they are used (pixel data of non-PET files).
_DEFER = 2048
#: The only elements parsed from each file (pydicom skips the rest): geometry, pixels, SUV fields.
_TAGS = [
    "SOPClassUID", "Modality", "Manufacturer", "PatientID", "PatientSex", "PatientWeight", "PatientSize",
    "StudyInstanceUID", "SeriesInstanceUID", "StudyDate", "SeriesDate", "SeriesTime", "AcquisitionDate",
    "AcquisitionTime", "AcquisitionDateTime", "SeriesDescription", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "SliceThickness", "Rows", "Columns", "BitsAllocated", "PixelRepresentation", "SamplesPerPixel",
    "NumberOfFrames", "RescaleSlope", "RescaleIntercept", "Units", "DecayCorrection", "CorrectedImage", "SUVType",
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
class PetSeries:
    """One PET series as stored: raw pixels, per-slice rescale, geometry and SUV header fields.

    ``stored`` is ``(Z, Y, X)`` in the stored dtype; the rescaled value of voxel ``[z, y, x]`` is
    ``stored[z, y, x] * slope[z] + intercept[z]``.
    """

    stored: np.ndarray
    slope: np.ndarray
    intercept: np.ndarray
    geometry: Geometry
    suv_header: SuvHeader
    files: list[Path]
    series_uid: str
    study_uid: str
    study_date: dt.date | None
    patient_id: str = field(repr=False)
    description: str = ""

    def rescaled(self, dtype=np.float32) -> np.ndarray:
        """Materialise the rescaled volume (activity or counts); only for callers that need it."""
        out = self.stored.astype(dtype)
        out *= self.slope.astype(dtype)[:, None, None]
        out += self.intercept.astype(dtype)[:, None, None]
        return out


@dataclass(frozen=True)
class SeriesInfo:
    """A series found in a folder: for listings and for the 'several PET series' message."""

    series_uid: str
    modality: str
    description: str
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
    ds = read_slice_header(path, _WANTED)
    return ds if ds is not None else _read_header_pydicom(path)


def _read_header_pydicom(path: Path):
    try:
        return pydicom.dcmread(path, defer_size=_DEFER, specific_tags=_TAGS)
    except InvalidDicomError:
        return None
    except Exception as exc:  # noqa: BLE001 -- pydicom raises many types on corrupt files
        raise DicomSeriesError(f"{path}: not readable as DICOM ({type(exc).__name__}: {exc}). "
                               "Remove or replace the file.") from exc


def scan_headers(files: Iterable[Path], threads: int = 1) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    """Read every file's header once and group by SeriesInstanceUID (non-DICOM files are skipped).

    Parsing is CPU-bound Python (one thread is fastest on local disks); ``threads > 1`` helps on
    network storage, where each read waits on I/O.
    """
    files = list(files)
    groups: dict[str, list] = defaultdict(list)
    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            headers = list(pool.map(_read_header, files))
    else:
        headers = [_read_header(f) for f in files]
    for path, ds in zip(files, headers):
        uid = None if ds is None else _text(ds, BaseTag(0x0020000E))
        if uid is not None:
            groups[uid].append((path, ds))
    return groups


def list_series(source) -> list[SeriesInfo]:
    """List the DICOM series under a folder (or in a list of files)."""
    out = []
    for uid, items in scan_headers(_files_of(source)).items():
        ds = items[0][1]
        out.append(SeriesInfo(uid, str(ds.get("Modality", "")), str(ds.get("SeriesDescription", "")),
                              len(items), items[0][0]))
    return sorted(out, key=lambda s: (s.modality, s.series_uid))


def read_pet_series(source, *, series_uid: str | None = None, threads: int = 1) -> PetSeries:
    """Read one PET series from a folder (searched recursively) or a list of files.

    Parameters
    ----------
    source : path or sequence of paths
        A folder, one file, or a list of files.
    series_uid : str, optional
        SeriesInstanceUID to pick when the folder holds several PET series.
    threads : int
        Threads used to read files: 1 is fastest on local disks (parsing holds the GIL); more
        help on network storage.

    Returns
    -------
    PetSeries

    Raises
    ------
    DicomSeriesError
        No PET series, several PET series and no ``series_uid``, inconsistent geometry,
        missing or truncated pixel data.
    """
    files = _files_of(source)
    groups = scan_headers(files, threads)
    where = str(source) if isinstance(source, (str, os.PathLike)) else f"{len(files)} files"
    if not groups:
        raise DicomSeriesError(f"{where}: no DICOM files found ({len(files)} files checked). "
                               "Point to the folder that holds the PET series.")
    pets = {uid: items for uid, items in groups.items() if _text(items[0][1], BaseTag(0x00080060)) == "PT"}
    if series_uid is not None:
        if series_uid not in groups:
            raise DicomSeriesError(f"{where}: SeriesInstanceUID {series_uid} is not there; found "
                                   f"{', '.join(sorted(groups))}.")
        pets = {series_uid: groups[series_uid]}
    if not pets:
        found = ", ".join(sorted({str(i[0][1].get("Modality", "?")) for i in groups.values()}))
        raise DicomSeriesError(f"{where}: no PET series (Modality PT); found modalities {found}. "
                               "Point to the folder of the PET series.")
    if len(pets) > 1:
        lines = "; ".join(
            f"{uid} ({len(items)} files, '{items[0][1].get('SeriesDescription', '')}')"
            for uid, items in sorted(pets.items())
        )
        raise DicomSeriesError(f"{where}: holds {len(pets)} PET series: {lines}. Choose one with "
                               "series_uid=... (CLI: --series-uid UID) or point to a folder with one series.")
    uid, items = next(iter(pets.items()))
    return _assemble(uid, items, where)


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
        raise DicomSeriesError(f"{path}: {keyword} is {txt!r}, not a number. Re-export the series.") from exc


_IPP, _IOP, _PS = BaseTag(0x00200032), BaseTag(0x00200037), BaseTag(0x00280030)
_ROWS, _COLS, _BITS, _PREP = BaseTag(0x00280010), BaseTag(0x00280011), BaseTag(0x00280100), BaseTag(0x00280103)
_SLOPE, _INTER = BaseTag(0x00281053), BaseTag(0x00281052)
_ACQ_DATE, _ACQ_TIME, _ACQ_DT = BaseTag(0x00080022), BaseTag(0x00080032), BaseTag(0x0008002A)
_FRT, _AFD = BaseTag(0x00541300), BaseTag(0x00181242)


def _float(ds, keyword: str, default: float | None = None) -> float | None:
    v = ds.get(keyword, None)
    if v is None or v == "":
        return default
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _assemble(uid: str, items: list[tuple[Path, pydicom.Dataset]], where: str) -> PetSeries:
    first_path, first = items[0]
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise DicomSeriesError(f"{first_path}: multi-frame PET (NumberOfFrames > 1) is not supported. Convert "
                               "to single-frame slices (e.g. dcmtk's dcmsplit) or export per-slice images.")
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
    ipps = []
    for path, ds in items:
        ipps.append(_numbers(ds, _IPP, path, "ImagePositionPatient"))
        if (_raw(ds, _ROWS), _raw(ds, _COLS)) != ref_size and (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise DicomSeriesError(f"{path}: Rows x Columns {ds.Rows}x{ds.Columns} differs from "
                                   f"{first.Rows}x{first.Columns} in {first_path}; the folder mixes images. "
                                   "Separate the series.")
        if _raw(ds, _PS) != ref_ps and not np.allclose(_numbers(ds, _PS, path, "PixelSpacing"), ps0, rtol=1e-4):
            raise DicomSeriesError(f"{path}: PixelSpacing {list(ds.PixelSpacing)} differs from "
                                   f"{list(first.PixelSpacing)} in {first_path}. Separate the series.")
        if _raw(ds, _IOP) != ref_iop and np.abs(_numbers(ds, _IOP, path, "ImageOrientationPatient")
                                                - iop0).max() > ORIENTATION_ATOL:
            raise DicomSeriesError(f"{path}: ImageOrientationPatient differs from {first_path}; slices of one volume "
                                   "must share their orientation (gantry tilt or mixed series).")
    row, col = iop0[:3], iop0[3:]
    normal = np.cross(row, col)
    pos = np.stack(ipps) @ normal
    order = np.argsort(pos, kind="stable")
    pos_sorted = pos[order]
    if len(items) > 1:
        gaps = np.diff(pos_sorted)
        if np.any(gaps < 1e-3):
            k = int(np.argmin(gaps))
            raise DicomSeriesError(
                f"{items[order[k]][0]} and {items[order[k + 1]][0]}: two slices at the same position "
                f"({pos_sorted[k]:.3f} mm). The series holds several frames or time points (dynamic/gated); "
                "split it.")
        dz = float(np.median(gaps))
        if np.max(np.abs(gaps - dz)) > SPACING_RTOL * dz + 1e-3:
            k = int(np.argmax(np.abs(gaps - dz)))
            raise DicomSeriesError(
                f"{where}: slice spacing is not uniform ({gaps.min():.4f} to {gaps.max():.4f} mm, first "
                f"irregular gap after {items[order[k]][0]}). A slice is missing or duplicated; "
                "re-export the complete series.")
    else:
        dz = _float(first, "SliceThickness", 1.0) or 1.0
    sorted_items = [items[i] for i in order]

    # --- pixels --------------------------------------------------------------------------------
    ref_fmt = (_raw(first, _BITS), _raw(first, _PREP))  # raw bytes: taken before any conversion below
    rows, cols = int(first.Rows), int(first.Columns)
    dtype = _stored_dtype(first, first_path)
    stored = np.empty((len(items), rows, cols), dtype=dtype)
    slope = np.empty(len(items))
    intercept = np.empty(len(items))
    for z, (path, ds) in enumerate(sorted_items):
        if (_raw(ds, _BITS), _raw(ds, _PREP)) != ref_fmt and _stored_dtype(ds, path) != dtype:
            raise DicomSeriesError(f"{path}: BitsAllocated/PixelRepresentation differ from {first_path}. "
                                   "Re-export the series with one pixel format.")
        _pixels(ds, path, rows, cols, dtype, stored[z])
        slope[z] = _numbers(ds, _SLOPE, path, "RescaleSlope")[0] if _raw(ds, _SLOPE) is not None else 1.0
        intercept[z] = _numbers(ds, _INTER, path, "RescaleIntercept")[0] if _raw(ds, _INTER) is not None else 0.0
    if not np.all(np.isfinite(slope)) or np.any(slope == 0):
        z = int(np.flatnonzero(~np.isfinite(slope) | (slope == 0))[0])
        raise DicomSeriesError(f"{sorted_items[z][0]}: RescaleSlope is {slope[z]}; it must be finite and non-zero.")

    ps = ps0  # (row spacing = Y, column spacing = X)
    geometry = Geometry(
        shape=(len(items), rows, cols),
        spacing=(dz, float(ps[0]), float(ps[1])),
        origin=tuple(float(v) for v in ipps[order[0]]),
        direction=tuple(float(v) for v in np.stack([row, col, normal], axis=1).ravel()),
    )
    return PetSeries(
        stored=stored, slope=slope, intercept=intercept, geometry=geometry,
        suv_header=suv_header_from_datasets([_full_header(*sorted_items[0])] + [ds for _, ds in sorted_items[1:]],
                                            str(first_path.parent)),
        files=[p for p, _ in sorted_items], series_uid=uid, study_uid=str(first.get("StudyInstanceUID", "")),
        study_date=_safe(parse_da, first.get("StudyDate")) or _safe(parse_da, first.get("SeriesDate")),
        patient_id=str(first.get("PatientID", "")), description=str(first.get("SeriesDescription", "")),
    )


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
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    kinds = {8: (np.uint8, np.int8), 16: (np.uint16, np.int16), 32: (np.uint32, np.int32)}
    if bits not in kinds:
        raise DicomSeriesError(f"{path}: BitsAllocated = {bits} is not supported (8, 16, 32).")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomSeriesError(f"{path}: SamplesPerPixel = {ds.SamplesPerPixel}; a PET image has one sample.")
    return np.dtype(kinds[bits][int(signed)])


_PIXEL_DATA, _FLOAT_PIXEL_DATA = BaseTag(0x7FE00010), BaseTag(0x7FE00008)


def _pixels(ds, path: Path, rows: int, cols: int, dtype: np.dtype, out: np.ndarray) -> None:
    """Write one slice's stored values into ``out`` (``rows x cols`` of ``dtype``)."""
    raw = _raw(ds, _FLOAT_PIXEL_DATA) if dtype == np.float32 else _raw(ds, _PIXEL_DATA)
    if raw is None:
        raise DicomSeriesError(f"{path}: PixelData (7FE0,0010) is missing. Replace the file.")
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID", ImplicitVRLittleEndian) if meta is not None else ImplicitVRLittleEndian
    n = rows * cols
    try:
        if ts in _UNCOMPRESSED or ts == ExplicitVRBigEndian:
            if len(raw) < n * dtype.itemsize:
                raise DicomSeriesError(
                    f"{path}: PixelData holds {len(raw)} bytes but {rows}x{cols}x{dtype.itemsize} = "
                    f"{n * dtype.itemsize} are needed (truncated file). Replace the file.")
            if isinstance(raw, PixelDataAt):  # fast path: from the file straight into the volume
                raw.read_into(out)
                return
            arr = np.frombuffer(raw, dtype=dtype.newbyteorder(">" if ts == ExplicitVRBigEndian else "<"), count=n)
            out[...] = arr.reshape(rows, cols)
            return
        out[...] = ds.pixel_array.reshape(rows, cols)
    except DicomSeriesError:
        raise
    except Exception as exc:  # noqa: BLE001 -- decoder errors come in many types
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
        return rp.get(keyword) if rp is not None else None

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

    acq = []
    for d in datasets:
        t = combine(_safe(parse_da, _text(d, _ACQ_DATE)), _safe(parse_tm, _text(d, _ACQ_TIME)))
        if t is None and _text(d, _ACQ_DT):
            t = _safe(parse_dt, _text(d, _ACQ_DT))
        acq.append(t)
    sex = str(ds.get("PatientSex", "") or "") or None
    return SuvHeader(
        source=source,
        units=str(ds.get("Units", "") or "") or None,
        decay_correction=str(ds.get("DecayCorrection", "") or "") or None,
        corrected_image=tuple(str(v) for v in (ds.get("CorrectedImage") or [])),
        series_datetime=combine(_safe(parse_da, ds.get("SeriesDate")), _safe(parse_tm, ds.get("SeriesTime"))),
        acquisition_datetimes=acq,
        frame_reference_times_ms=np.array([_nan_if_none(_to_float(_text(d, _FRT))) for d in datasets]),
        actual_frame_durations_ms=np.array([_nan_if_none(_to_float(_text(d, _AFD))) for d in datasets]),
        ge_private_scan_datetime=private((0x0009, 0x100D), parse_dt),
        injection_datetime=_safe(parse_dt, rp_get("RadiopharmaceuticalStartDateTime")),
        injection_time=_safe(parse_tm, rp_get("RadiopharmaceuticalStartTime")),
        total_dose_bq=_to_float(rp_get("RadionuclideTotalDose")),
        half_life_s=_to_float(rp_get("RadionuclideHalfLife")),
        nuclide=nuclide,
        weight_kg=_float(ds, "PatientWeight"),
        height_m=_float(ds, "PatientSize"),
        sex=sex,
        suv_type=str(ds.get("SUVType", "") or "") or None,
        philips_suv_scale=private((0x7053, 0x1000), float),
        philips_activity_scale=private((0x7053, 0x1009), float),
        manufacturer=str(ds.get("Manufacturer", "") or "") or None,
    )


def _nan_if_none(v: float | None) -> float:
    return np.nan if v is None else v


def _to_float(v) -> float | None:
    if v is None or v == "":
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
