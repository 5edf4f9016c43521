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
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from petfeat.errors import DicomSeriesError
from petfeat.suv import SuvHeader, combine, parse_da, parse_dt, parse_tm

_UNCOMPRESSED = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, "1.2.840.10008.1.2.1.99"}
#: Relative tolerance on slice spacing and on orientation cosines.
SPACING_RTOL = 1e-3
ORIENTATION_ATOL = 1e-4
#: Defer reading values larger than this until they are used (pixel data of non-PET files).
_DEFER = 2048


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


def _read_header(path: Path):
    try:
        return pydicom.dcmread(path, defer_size=_DEFER)
    except InvalidDicomError:
        return None
    except Exception as exc:  # noqa: BLE001 -- pydicom raises many types on corrupt files
        raise DicomSeriesError(f"{path}: not readable as DICOM ({type(exc).__name__}: {exc}). "
                               "Remove or replace the file.") from exc


def scan_headers(files: Iterable[Path], threads: int = 4) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    """Read every file's header once and group by SeriesInstanceUID (non-DICOM files are skipped)."""
    files = list(files)
    groups: dict[str, list] = defaultdict(list)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for path, ds in zip(files, pool.map(_read_header, files)):
            if ds is None or "SeriesInstanceUID" not in ds:
                continue
            groups[str(ds.SeriesInstanceUID)].append((path, ds))
    return groups


def list_series(source) -> list[SeriesInfo]:
    """List the DICOM series under a folder (or in a list of files)."""
    out = []
    for uid, items in scan_headers(_files_of(source)).items():
        ds = items[0][1]
        out.append(SeriesInfo(uid, str(ds.get("Modality", "")), str(ds.get("SeriesDescription", "")),
                              len(items), items[0][0]))
    return sorted(out, key=lambda s: (s.modality, s.series_uid))


def read_pet_series(source, *, series_uid: str | None = None, threads: int = 4) -> PetSeries:
    """Read one PET series from a folder (searched recursively) or a list of files.

    Parameters
    ----------
    source : path or sequence of paths
        A folder, one file, or a list of files.
    series_uid : str, optional
        SeriesInstanceUID to pick when the folder holds several PET series.
    threads : int
        Threads used to read files (I/O bound on network storage).

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
    pets = {uid: items for uid, items in groups.items() if str(items[0][1].get("Modality", "")) == "PT"}
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
    # --- consistency of orientation and size -------------------------------------------------
    iops, ipps = [], []
    for path, ds in items:
        for kw in ("ImageOrientationPatient", "ImagePositionPatient", "Rows", "Columns", "PixelSpacing"):
            if kw not in ds:
                raise DicomSeriesError(f"{path}: {kw} is missing; the slice cannot be placed. Re-export the series.")
        iops.append(np.asarray(ds.ImageOrientationPatient, dtype=np.float64))
        ipps.append(np.asarray(ds.ImagePositionPatient, dtype=np.float64))
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise DicomSeriesError(f"{path}: Rows x Columns {ds.Rows}x{ds.Columns} differs from "
                                   f"{first.Rows}x{first.Columns} in {first_path}; the folder mixes images. "
                                   "Separate the series.")
        if not np.allclose(np.asarray(ds.PixelSpacing, float), np.asarray(first.PixelSpacing, float), rtol=1e-4):
            raise DicomSeriesError(f"{path}: PixelSpacing {list(ds.PixelSpacing)} differs from "
                                   f"{list(first.PixelSpacing)} in {first_path}. Separate the series.")
    iops = np.stack(iops)
    bad = np.flatnonzero(np.abs(iops - iops[0]).max(axis=1) > ORIENTATION_ATOL)
    if bad.size:
        raise DicomSeriesError(f"{items[bad[0]][0]}: ImageOrientationPatient differs from {first_path}; "
                               "slices of one volume must share their orientation (gantry tilt or mixed series).")
    row, col = iops[0, :3], iops[0, 3:]
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
    rows, cols = int(first.Rows), int(first.Columns)
    dtype = _stored_dtype(first, first_path)
    stored = np.empty((len(items), rows, cols), dtype=dtype)
    slope = np.empty(len(items))
    intercept = np.empty(len(items))
    for z, (path, ds) in enumerate(sorted_items):
        if _stored_dtype(ds, path) != dtype:
            raise DicomSeriesError(f"{path}: BitsAllocated/PixelRepresentation differ from {first_path}. "
                                   "Re-export the series with one pixel format.")
        stored[z] = _pixels(ds, path, rows, cols, dtype)
        slope[z] = _float(ds, "RescaleSlope", 1.0)
        intercept[z] = _float(ds, "RescaleIntercept", 0.0)
    if not np.all(np.isfinite(slope)) or np.any(slope == 0):
        z = int(np.flatnonzero(~np.isfinite(slope) | (slope == 0))[0])
        raise DicomSeriesError(f"{sorted_items[z][0]}: RescaleSlope is {slope[z]}; it must be finite and non-zero.")

    ps = np.asarray(first.PixelSpacing, dtype=np.float64)  # (row spacing = Y, column spacing = X)
    geometry = Geometry(
        shape=(len(items), rows, cols),
        spacing=(dz, float(ps[0]), float(ps[1])),
        origin=tuple(float(v) for v in ipps[order[0]]),
        direction=tuple(float(v) for v in np.stack([row, col, normal], axis=1).ravel()),
    )
    return PetSeries(
        stored=stored, slope=slope, intercept=intercept, geometry=geometry,
        suv_header=suv_header_from_datasets([ds for _, ds in sorted_items], str(first_path.parent)),
        files=[p for p, _ in sorted_items], series_uid=uid, study_uid=str(first.get("StudyInstanceUID", "")),
        study_date=_safe(parse_da, first.get("StudyDate")) or _safe(parse_da, first.get("SeriesDate")),
        patient_id=str(first.get("PatientID", "")), description=str(first.get("SeriesDescription", "")),
    )


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


def _pixels(ds, path: Path, rows: int, cols: int, dtype: np.dtype) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise DicomSeriesError(f"{path}: PixelData (7FE0,0010) is missing. Replace the file.")
    ts = ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian)
    n = rows * cols
    try:
        if ts in _UNCOMPRESSED or ts == ExplicitVRBigEndian:
            raw = ds.FloatPixelData if "FloatPixelData" in ds else ds.PixelData
            if len(raw) < n * dtype.itemsize:
                raise DicomSeriesError(
                    f"{path}: PixelData holds {len(raw)} bytes but {rows}x{cols}x{dtype.itemsize} = "
                    f"{n * dtype.itemsize} are needed (truncated file). Replace the file.")
            arr = np.frombuffer(raw, dtype=dtype.newbyteorder(">" if ts == ExplicitVRBigEndian else "<"), count=n)
            return arr.reshape(rows, cols)
        return ds.pixel_array.reshape(rows, cols)
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
        t = combine(_safe(parse_da, d.get("AcquisitionDate")), _safe(parse_tm, d.get("AcquisitionTime")))
        if t is None and d.get("AcquisitionDateTime"):
            t = _safe(parse_dt, d.get("AcquisitionDateTime"))
        acq.append(t)
    sex = str(ds.get("PatientSex", "") or "") or None
    return SuvHeader(
        source=source,
        units=str(ds.get("Units", "") or "") or None,
        decay_correction=str(ds.get("DecayCorrection", "") or "") or None,
        corrected_image=tuple(str(v) for v in (ds.get("CorrectedImage") or [])),
        series_datetime=combine(_safe(parse_da, ds.get("SeriesDate")), _safe(parse_tm, ds.get("SeriesTime"))),
        acquisition_datetimes=acq,
        frame_reference_times_ms=np.array([_float(d, "FrameReferenceTime", np.nan) for d in datasets]),
        actual_frame_durations_ms=np.array([_float(d, "ActualFrameDuration", np.nan) for d in datasets]),
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


def _to_float(v) -> float | None:
    if v is None or v == "":
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
