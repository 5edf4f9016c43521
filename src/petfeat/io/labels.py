"""Label maps onto the PET grid: NIfTI/NRRD, TotalSegmentator folders, DICOM SEG, RTSTRUCT.

Labels are addressed by name. A label image whose geometry differs from the PET grid is
resampled in physical space with nearest-neighbour interpolation (SimpleITK), or per label as a
fraction kept at >= 0.5 (``mode="fraction"``). Float and signed label images are refused, and so
is a label map that does not overlap the PET field of view. Every layer records each label's
volume on its native grid beside the PET-grid volume (``LabelLayer.native_volume_ml``) and the
share of that volume outside the PET field of view (``LabelLayer.notes[name]["outside_fov_fraction"]``,
:func:`outside_fov_counts`); a source with labels cut by at least :data:`OUTSIDE_FOV_NOTED` gives one
warning naming them (:func:`warn_outside_fov`). Whole-number ids stored in a signed or float type
are read exactly, with a :class:`LabelNote` (recorded, not shown on the console).

Each source is its own name space (``LabelLayer.namespace``): a TotalSegmentator task (its classes
keep the task's ids, and tasks written to one folder are told apart by
:mod:`petfeat.io.totalsegmentator`), else the name the caller gives, else the file's stem. Labels of
one source that overlap go to separate layers of that source; no source erases another. A label
file is checked whole before its voxels are trusted (:func:`check_label_file`,
:func:`read_checked`): its header, its declared size against :func:`max_label_bytes`, a NIfTI's
length and gzip CRC-32 (petfeat inflates a NIfTI itself; SimpleITK reads its header). Symbolic links
inside a TotalSegmentator folder are not followed.

:func:`read_labels` takes any of these paths and returns label layers on the PET grid.
"""

from __future__ import annotations

import errno
import gzip
import json
import math
import os
import stat
import struct
import warnings
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from xml.etree import ElementTree

import numpy as np
import pydicom
import SimpleITK as sitk

from petfeat.errors import LabelError, PetfeatWarning
from petfeat.io.dicom import Geometry
from petfeat.io.rtstruct import read_rtstruct
from petfeat.io.totalsegmentator import TASK_LABELS, UNKNOWN, identify_task, split_by_task
from petfeat.kernels.label_census import Census, label_census
from petfeat.kernels.threads import limited_threads
from petfeat.regions import LabelLayer

# ITK's warnings go straight to the console and name the file (an archive folder); petfeat's own checks and
# messages say what they would (an Analyze header under a .nii name is refused by :func:`nifti_layout`).
sitk.ProcessObject.SetGlobalWarningDisplay(False)

_UNSIGNED = {sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkUInt32, sitk.sitkUInt64}
_MAX_ID = {sitk.sitkUInt8: 0xFF, sitk.sitkUInt16: 0xFFFF, sitk.sitkUInt32: 0xFFFFFFFF,
           sitk.sitkUInt64: float(2**64 - 1)}


def reference_image(geometry: Geometry) -> sitk.Image:
    """An empty SimpleITK image with the PET grid's geometry (the resampling reference)."""
    img = sitk.Image([int(s) for s in geometry.shape[::-1]], sitk.sitkUInt8)
    f = geometry.sitk_fields()
    img.SetSpacing(f["spacing"])
    img.SetOrigin(f["origin"])
    img.SetDirection(f["direction"])
    return img


#: Largest label image, in GB of voxel data as its header declares, read by default; the environment variable
#: ``PETFEAT_MAX_LABEL_GB`` overrides it. A whole-body CT class file is 0.15 GB.
MAX_LABEL_GB = 4.0
#: Bytes a NIfTI stream may hold after the voxel data its header declares (writers pad: TotalSegmentator's
#: ``--ml`` file carries 48 zero bytes); more is refused as a stream that does not belong to its header.
TRAILING_BYTES_ALLOWED = 1 << 20
#: Bits per voxel of each NIfTI datatype code (the NIfTI-1 standard's table).
NIFTI_BITPIX = {2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16, 768: 32, 1024: 64, 1280: 64,
                1536: 128, 1792: 128, 2048: 256, 2304: 32}
_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
                 1280: "u8"}
_NRRD_BYTES = {**dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
               **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t",
                                "ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
               **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32",
                                "uint32_t", "float"), 4),
               **dict.fromkeys(("longlong", "long long", "long long int", "signed long long",
                                "signed long long int", "int64", "int64_t", "ulonglong", "unsigned long long",
                                "unsigned long long int", "uint64", "uint64_t", "double"), 8)}


def max_label_bytes() -> int:
    """The label-image size limit in bytes: ``PETFEAT_MAX_LABEL_GB`` (GB, 2**30 bytes) or :data:`MAX_LABEL_GB`."""
    env = os.environ.get("PETFEAT_MAX_LABEL_GB", "").strip()
    try:
        gb = float(env) if env else MAX_LABEL_GB
    except ValueError:
        gb = -1.0
    if not gb > 0:
        raise LabelError(f"PETFEAT_MAX_LABEL_GB={env!r} is not a positive number of GB; set it to e.g. 8, or unset "
                         f"it for the default {MAX_LABEL_GB:g} GB.")
    return int(gb * 2**30)


@dataclass(frozen=True)
class NiftiLayout:
    """Where a single-file NIfTI-1/2 keeps its voxels, as its header declares."""

    dims: tuple[int, ...]  #: ``dim[1..dim[0]]``
    bitpix: int
    datatype: int
    vox_offset: int  #: bytes before the voxel data
    big_endian: bool
    pixdim: tuple[float, ...] = (1.0, 1.0, 1.0)  #: ``pixdim[1..3]``
    sform: tuple[int, tuple[float, ...]] = (0, ())  #: ``sform_code`` and ``srow_x``, ``srow_y``, ``srow_z``

    @property
    def data_bytes(self) -> int:
        """Bytes of voxel data."""
        return (math.prod(self.dims) * self.bitpix + 7) // 8

    @property
    def declared_bytes(self) -> int:
        """Bytes of the whole (inflated) file: header, extensions and voxel data."""
        return self.vox_offset + self.data_bytes


def _open_nifti(path: Path):
    """The file, or its gzip stream when it starts with the gzip magic (a ``.nii.gz`` need not be compressed)."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return (gzip.open(path, "rb") if gz else open(path, "rb")), gz


def nifti_layout(path: str | Path) -> NiftiLayout | None:
    """The voxel layout a single-file NIfTI-1 or NIfTI-2 header declares; None for a file not named .nii/.nii.gz.

    The header is checked before SimpleITK sees it (its NIfTI library prints ``** ERROR`` lines on the
    console for a bad header, and reads an Analyze header under a .nii name with a warning naming the file).

    Raises
    ------
    LabelError
        The header is cut short, is not a NIfTI-1/2 header (size field, magic), or declares impossible
        dimensions, offset or pixel type.
    """
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return None
    f, _ = _open_nifti(path)
    try:
        with f:
            head = f.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise LabelError(f"{path}: the NIfTI header cannot be read ({exc}); the file is truncated or corrupt. "
                         "Copy or export it again.") from exc
    for order in "<>":
        if len(head) >= 348 and struct.unpack_from(order + "i", head, 0)[0] == 348:
            if head[344:348] != b"n+1\x00":
                raise _not_nifti(path, f"its magic (bytes 344-347) is {bytes(head[344:348])!r}, not b'n+1\\x00'")
            n = struct.unpack_from(order + "h", head, 40)[0]
            dim = struct.unpack_from(order + "8h", head, 40)
            datatype, bitpix = struct.unpack_from(order + "hh", head, 70)
            vox = struct.unpack_from(order + "f", head, 108)[0]
            offset = max(int(vox), 352) if math.isfinite(vox) and vox < 2**31 else -1
            pixdim = struct.unpack_from(order + "3f", head, 80)
            sform = struct.unpack_from(order + "h", head, 254)[0], struct.unpack_from(order + "12f", head, 280)
            break
        if len(head) >= 540 and struct.unpack_from(order + "i", head, 0)[0] == 540:
            if head[4:8] != b"n+2\x00":
                raise _not_nifti(path, f"its magic (bytes 4-7) is {bytes(head[4:8])!r}, not b'n+2\\x00'")
            n = struct.unpack_from(order + "q", head, 16)[0]
            dim = struct.unpack_from(order + "8q", head, 16)
            datatype, bitpix = struct.unpack_from(order + "hh", head, 12)
            offset = max(struct.unpack_from(order + "q", head, 168)[0], 544)
            pixdim = struct.unpack_from(order + "3d", head, 112)
            sform = struct.unpack_from(order + "i", head, 348)[0], struct.unpack_from(order + "12d", head, 400)
            break
    else:
        if len(head) < 348:
            raise LabelError(f"{path}: the NIfTI header is cut short ({len(head)} of at least 348 bytes); the file "
                             "is truncated. Copy or export it again.")
        raise _not_nifti(path, f"it begins with sizeof_hdr {struct.unpack_from('<i', head, 0)[0]}, not 348 "
                         "(NIfTI-1) or 540 (NIfTI-2)")
    dims = tuple(int(d) for d in dim[1:n + 1]) if 1 <= n <= 7 else ()
    if not dims or min(dims) < 1 or bitpix < 1 or offset < 0:
        raise LabelError(f"{path}: the NIfTI header declares dim {list(dim)} and bitpix {bitpix}, not an image; the "
                         "file is corrupt. Export the label map again.")
    if NIFTI_BITPIX.get(int(datatype)) != bitpix:
        raise LabelError(f"{path}: the NIfTI header declares datatype {datatype} with bitpix {bitpix}, which is not "
                         "a NIfTI pixel type; the file is corrupt. Export the label map again.")
    return NiftiLayout(dims, int(bitpix), int(datatype), int(offset), order == ">", tuple(pixdim), sform)


def _check_spacing(path: Path, layout: NiftiLayout) -> None:
    """Refuse a header whose voxel size (pixdim of each axis) is 0 or not finite, or whose sform in use is not finite.

    SimpleITK would read 1 mm for such a pixdim, silently, and print a numerical library's matrix
    dump on the console for such an sform. (An sform that scales the axes otherwise than pixdim is
    read as SimpleITK reads it, with pixdim's spacing: real datasets have such files.) Called
    before SimpleITK reads the header.
    """
    bad = [f"pixdim[{k + 1}] = {v:g}" for k, v in enumerate(layout.pixdim[:len(layout.dims)])
           if not (math.isfinite(v) and v)]
    if bad:
        raise LabelError(f"{path}: the NIfTI header gives {', '.join(bad)}: the voxel size is unknown (SimpleITK would "
                         "read 1 mm). The file is corrupt; export the label map again.")
    code, srow = layout.sform
    if code > 0 and not all(map(math.isfinite, srow)):
        raise LabelError(f"{path}: the NIfTI header's sform (srow_x/y/z, in use: sform_code {code}) holds "
                         "values that are not finite; the file is corrupt. Export the label map again.")


def _not_nifti(path: Path, why: str) -> LabelError:
    """The refusal of a ``.nii``/``.nii.gz`` file whose header is not a single-file NIfTI-1 or NIfTI-2 header."""
    return LabelError(f"{path}: not a single-file NIfTI header ({why}); the file is corrupt, or an Analyze or "
                      ".hdr/.img header under a .nii name. Export the label map again as NIfTI (.nii.gz).")


def _check_size(path: Path, dims, voxel_bytes: float, declared: int) -> None:
    """Refuse a label image whose declared voxel data exceeds :func:`max_label_bytes`, before reading it."""
    limit = max_label_bytes()
    if declared > limit:
        shape = " x ".join(str(d) for d in dims)
        each = f"{voxel_bytes:g} byte{'' if voxel_bytes == 1 else 's'} each"
        raise LabelError(f"{path}: the header declares {shape} voxels, {each} ({declared / 2**30:.3g} "
                         f"GB), above the {limit / 2**30:.3g} GB limit for a label image. A header this large is "
                         "corrupt or the file is not a label map; if the image is genuine, raise the limit with the "
                         "environment variable PETFEAT_MAX_LABEL_GB.")


def nrrd_declared_bytes(path: str | Path) -> tuple[tuple[int, ...], int, int] | None:
    """``(sizes, bytes per voxel, voxel data bytes)`` from an NRRD header's ``sizes`` and ``type``; None if absent."""
    sizes, nbytes = None, None
    with open(path, "rb") as f:
        for _ in range(256):
            line = f.readline(4096).strip()
            if not line:
                break
            key, _, value = line.decode("latin-1").partition(":")
            key, value = key.strip().lower(), value.strip().lstrip("=").strip()
            if key == "sizes":
                try:
                    sizes = tuple(int(v) for v in value.split())
                except ValueError:
                    return None
            elif key == "type":
                nbytes = _NRRD_BYTES.get(value.lower())
    if not sizes or nbytes is None or min(sizes) < 1:
        return None
    return sizes, nbytes, math.prod(sizes) * nbytes


def check_label_file(path: str | Path) -> NiftiLayout | None:
    """Checks on a label file before SimpleITK reads it: its declared size, and that a NIfTI holds all of it.

    The declared voxel data (NIfTI or NRRD header) must be within :func:`max_label_bytes`, so a small
    file that inflates to gigabytes is refused before anything is allocated. An uncompressed NIfTI
    must be as long as its header declares. A gzipped NIfTI's trailer must give the declared length
    (modulo 2**32, as gzip stores it, up to :data:`TRAILING_BYTES_ALLOWED` more); otherwise the stream
    is inflated (bounded by the declared length) to find where it ends: SimpleITK would fill a
    stream cut short with zeros and report no error. The whole stream (CRC-32 and length) is checked
    where the voxels are inflated (:func:`read_checked`, :func:`read_streamed`). Returns the NIfTI
    layout, None for other formats.

    Raises
    ------
    LabelError
        Naming the file: too large, truncated, or a stream that is corrupt or longer than declared.
    """
    return _check_label_file(Path(path))[0]


def _check_label_file(path: Path) -> tuple[NiftiLayout | None, bool]:
    """:func:`check_label_file`, and whether it inflated the whole gzip stream (then its CRC is checked)."""
    name = path.name.lower()
    if name.endswith((".nrrd", ".nhdr")):
        found = nrrd_declared_bytes(path)
        if found is not None:
            _check_size(path, found[0], found[1], found[2])
        return None, False
    layout = nifti_layout(path)
    if layout is None:
        return None, False
    _check_size(path, layout.dims, layout.bitpix / 8, layout.declared_bytes)
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if gz and size >= 18:
            f.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", f.read(4))[0]
    if not gz:
        if size < layout.declared_bytes:
            raise LabelError(f"{path}: truncated NIfTI file (expected {layout.declared_bytes} bytes, got {size}); "
                             "SimpleITK would read the missing voxels as 0. Copy or export the file again.")
        return layout, False
    if size < 18 or (isize - layout.declared_bytes) % 2**32 > TRAILING_BYTES_ALLOWED:
        inflate_check(path, layout)
        return layout, True
    return layout, False


def _inflates_past(path: Path, layout: NiftiLayout, got: int) -> LabelError:
    """The refusal of a gzip stream that inflates past the size its NIfTI header declares."""
    return LabelError(f"{path}: the gzip stream inflates beyond the size its NIfTI header declares (dims "
                      f"{' x '.join(map(str, layout.dims))}, {layout.declared_bytes} bytes); stopped at {got} bytes. "
                      "The file is corrupt or not what its header says; export it again.")


def _gzip_broken(path: Path, want: int, got: int, exc: Exception | None = None) -> LabelError:
    """The refusal of a truncated or corrupt gzip stream (``exc``: the inflater's error, when it raised one)."""
    if exc is not None:
        return LabelError(f"{path}: truncated or corrupt gzip stream (expected {want} bytes, got {got} before the "
                          f"error: {exc}). Copy or export the file again.")
    return LabelError(f"{path}: truncated or corrupt gzip stream (expected {want} bytes, got {got}). SimpleITK "
                      "would read the missing voxels as 0. Copy or export the file again.")


def inflate_check(path: str | Path, layout: NiftiLayout) -> int:
    """Inflate a gzipped NIfTI stream to its end, keeping nothing; returns its length.

    At most the declared length plus :data:`TRAILING_BYTES_ALLOWED` is inflated, 16 MiB at a time.
    Concatenated gzip members are read in turn (zlib checks each member's CRC-32 and length).

    Raises
    ------
    LabelError
        The stream ends before the declared length (truncated), fails its CRC or is not deflate data
        (corrupt), or goes on past the declared length.
    """
    path = Path(path)
    want, limit = layout.declared_bytes, layout.declared_bytes + TRAILING_BYTES_ALLOWED
    got, ended = 0, False
    d = zlib.decompressobj(31)
    try:
        with open(path, "rb") as f:
            while True:
                data = f.read(1 << 20)
                if not data:
                    break
                while data:
                    out = d.decompress(data, 1 << 24)
                    got += len(out)
                    if got > limit:
                        raise _inflates_past(path, layout, got)
                    if d.eof:
                        ended, data = True, d.unused_data
                        if data[:2] != b"\x1f\x8b":
                            data = b""  # bytes after the last member: ignored, as gzip does
                        else:
                            d, ended = zlib.decompressobj(31), False
                    else:
                        data = d.unconsumed_tail
    except zlib.error as exc:
        raise _gzip_broken(path, want, got, exc) from exc
    if not ended or got < want:
        raise _gzip_broken(path, want, got)
    return got


_CRC_POLY = 0xEDB88320


def _gf2_mult(a: int, b: int) -> int:
    """``a * b`` modulo the CRC-32 polynomial (reflected bit order, as zlib's ``multmodp``)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1


_X_POW_2K = [1 << 30]  # x^(2^k) modulo the polynomial, k = 0..31
for _ in range(31):
    _X_POW_2K.append(_gf2_mult(_X_POW_2K[-1], _X_POW_2K[-1]))


def crc32_zeros(crc: int, n: int) -> int:
    """``zlib.crc32(bytes(n), crc)`` in O(log n): the CRC register times x^(8 n)."""
    p, k = 1 << 31, 3  # x^0; x^(8 n) = product of x^(2^k) over the bits of n, shifted by 3
    while n:
        if n & 1:
            p = _gf2_mult(_X_POW_2K[k & 31], p)
        n >>= 1
        k += 1
    return _gf2_mult(p, crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


class LabelNote(PetfeatWarning):
    """A label input read exactly although stored unusually (whole-number ids in a signed or float type).

    Raised as a warning so that whoever records a study's warnings keeps it (``run.json`` of
    ``petfeat extract``, a batch's per-study list); ``petfeat extract`` does not repeat it on the
    console, since nothing about the result changes.
    """


def _as_unsigned(img: sitk.Image, path: Path) -> sitk.Image:
    """A signed or float label image whose values are all whole and >= 0, as unsigned ids (a :class:`LabelNote`).

    Tools write 0/1 masks as int16 or float32 (the SUV reference objects' own mask is int16): their
    ids are exact, so the conversion loses nothing and is a note, not a console warning. Negative,
    fractional or non-finite values are refused, naming the file and the value.
    """
    arr = sitk.GetArrayViewFromImage(img)
    kind = img.GetPixelIDTypeAsString()
    if arr.dtype.kind not in "iuf":
        raise LabelError(f"{path}: pixel type {kind} is not a label map; label maps hold whole-number ids.")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    bad = None
    if not (np.isfinite(lo) and np.isfinite(hi)):
        nan = int(np.count_nonzero(np.isnan(arr)))
        inf = int(np.count_nonzero(np.isinf(arr)))
        bad = " and ".join(([f"NaN in {nan} voxels"] if nan else []) + ([f"+-inf in {inf} voxels"] if inf else []))
        bad = f"non-finite values ({bad})" + (
            " (NaN is not read as background: if it stands for background, set those voxels to 0)" if nan else "")
    elif lo < 0:
        bad = f"negative values (min {lo:g})"
    elif arr.dtype.kind == "f" and not np.array_equal(arr, np.floor(arr)):
        bad = "fractional values (a probability map?)"
    elif hi > 0xFFFFFFFF:
        bad = f"ids above 2^32 (max {hi:g})"
    if bad is not None:
        raise LabelError(f"{path}: pixel type {kind} with {bad}; label maps must hold whole-number ids >= 0. Threshold "
                         "a probability map first, or re-save the ids as uint8/uint16.")
    target = sitk.sitkUInt8 if hi <= 0xFF else sitk.sitkUInt16 if hi <= 0xFFFF else sitk.sitkUInt32
    warnings.warn(f"{path}: label ids stored as {kind} (whole numbers 0-{hi:g}) are read as unsigned "
                  "integers (exactly).", LabelNote, stacklevel=3)
    return sitk.Cast(img, target)


def read_label_image(path: str | Path) -> sitk.Image:
    """Read a label image (NIfTI, NRRD, MHA...), checked whole (:func:`check_label_file`), unsigned ids only."""
    return read_checked(path)[0]


def read_checked(path: str | Path) -> tuple[sitk.Image, Census]:
    """A label image after :func:`check_label_file`, its gzip stream checked whole, and its :func:`census`.

    A 3-D NIfTI (gzipped or not, any byte order and pixel type, not scaled) is inflated by petfeat
    itself, once, with the checks of :func:`inflate_check` (zlib's CRC-32 and length of the stream,
    the declared length): SimpleITK reads only its header (the geometry), since it would read a
    stream that ends early as zeros and keep no NaN (it reads NaN as 0). Other NIfTIs (4-D with one
    volume, scaled) are inflated by :func:`inflate_check` before SimpleITK reads them; other formats
    (NRRD, MHA) are read by SimpleITK, which checks their own compression.

    Raises
    ------
    LabelError
        Naming the file: unreadable, too large, truncated or corrupt, not 3-D, or float or signed
        pixels that are not whole ids >= 0 (NaN included).
    """
    path = Path(path)
    try:
        layout, inflated = _check_label_file(path)
        img = _read_nifti_voxels(path, layout) if layout is not None else None
        if img is None:
            if layout is not None and not inflated and _is_gzip(path):
                inflate_check(path, layout)
            if layout is not None:
                _check_spacing(path, layout)
            img = _sitk_read(path)
    except OSError as exc:
        raise _unopenable(path, exc) from exc
    img = _three_d(img, path)
    if img.GetPixelID() not in _UNSIGNED:
        img = _as_unsigned(img, path)
    return img, label_census(sitk.GetArrayViewFromImage(img))


def _check_geometry(path: Path, reader: sitk.ImageFileReader) -> None:
    """Refuse a header whose spacing is not positive and finite or whose origin or direction is not finite."""
    spacing, origin, direction = reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()
    if not (all(math.isfinite(v) and v > 0 for v in spacing) and all(map(math.isfinite, origin + direction))):
        raise LabelError(f"{path}: the NIfTI header gives voxel spacing ({', '.join(f'{v:g}' for v in spacing)}) mm, "
                         f"origin ({', '.join(f'{v:g}' for v in origin)}); spacings must be positive and every value "
                         "finite (pixdim, qoffset/srow). The file is corrupt; export the label map again.")


def _unreadable_image(path: Path, exc: RuntimeError) -> LabelError:
    """SimpleITK's failure to read ``path`` as a :class:`LabelError`; a NIfTI-2 file gets the conversion to do."""
    why = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    if _is_nifti2(path):
        return LabelError(f"{path}: a NIfTI-2 file, which SimpleITK (petfeat's image reader) does not read. Save it "
                          "as NIfTI-1 (nibabel: nib.save(nib.Nifti1Image(img.dataobj, img.affine), 'mask.nii.gz')) "
                          "and pass that.")
    return LabelError(f"{path}: cannot be read as an image ({why}).")


def _is_nifti2(path: Path) -> bool:
    """Whether ``path`` (gzipped or not) starts with a NIfTI-2 header (sizeof_hdr 540, magic n+2 or ni2)."""
    try:
        opener = gzip.open if _is_gzip(path) else open
        with opener(path, "rb") as f:
            head = f.read(8)
    except (OSError, EOFError, zlib.error):
        return False
    return len(head) == 8 and head[4:7] in (b"n+2", b"ni2") and head[:4] in (b"\x1c\x02\x00\x00",
                                                                          b"\x00\x00\x02\x1c")


def _sitk_read(path: Path) -> sitk.Image:
    """``sitk.ReadImage``, its failure as a :class:`LabelError` naming the file."""
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise _unreadable_image(path, exc) from exc


def _unopenable(path: Path, exc: OSError) -> LabelError:
    """The refusal of a label file the operating system does not open (permissions, a link loop, a folder...)."""
    access = "give the account that runs petfeat read access to it (chmod a+r, and a+x for a folder)"
    fix = {errno.EACCES: access, errno.EPERM: access,
           errno.ELOOP: "it is a symbolic link loop; replace the link by the file it should be",
           errno.ENOENT: "it is missing or a dangling symbolic link; put the file there",
           errno.EISDIR: "it is a folder, not a file"}.get(exc.errno, "check the file and its folder")
    return LabelError(f"{path}: cannot be opened ({exc.strerror or exc}); {fix}.")


def _three_d(img: sitk.Image, path: Path) -> sitk.Image:
    """``img`` if it is 3-D (a 4-D image of one volume as that volume); else a :class:`LabelError` naming the file."""
    size = img.GetSize()
    if len(size) == 3:
        return img
    if len(size) == 4 and size[3] == 1:
        return img[:, :, :, 0]
    shape = " x ".join(map(str, size))
    raise LabelError(f"{path}: a label image must be 3-D; this one is {len(size)}-D ({shape} voxels). A 4-D file holds "
                     "several volumes (a time series, or one mask per label): save one 3-D label map (one id per "
                     "label) or one file per label.")


def _read_nifti_voxels(path: Path, layout: NiftiLayout) -> sitk.Image | None:
    """A 3-D NIfTI's voxels inflated (or read) by petfeat, with SimpleITK's geometry; None for other NIfTIs.

    The voxel bytes come from :func:`_stream_chunks` (the gzip stream checked whole); the geometry
    from SimpleITK's reading of the header alone, so it matches :func:`sitk.ReadImage` exactly.
    Returns None (for SimpleITK to read) when the file is not 3-D (or 4-D with one volume), is
    scaled by ``scl_slope``/``scl_inter``, or SimpleITK would read another pixel type.
    """
    dims = layout.dims[:3] if len(layout.dims) > 3 and set(layout.dims[3:]) == {1} else layout.dims
    code = _NIFTI_DTYPES.get(layout.datatype)
    if len(dims) != 3 or code is None:
        if len(dims) > 3:
            raise LabelError(f"{path}: a label image must be 3-D; the NIfTI header declares {len(dims)}-D "
                             f"({' x '.join(map(str, layout.dims))} voxels). A 4-D file holds several volumes (a time "
                             "series, or one mask per label): save one 3-D label map (one id per label) or one file "
                             "per label.")
        return None
    if _scaled(path, layout):
        return None
    dtype = np.dtype(code).newbyteorder(">" if layout.big_endian else "<")
    out = np.empty(math.prod(dims), dtype)
    raw = out.view(np.uint8)
    at = 0
    scratch = np.empty(max(1, min(STREAM_CHUNK_BYTES, raw.size)), np.uint8)
    for piece in _stream_chunks(path, layout, scratch):  # the one inflate of this read
        raw[at:at + len(piece)] = piece
        at += len(piece)
    reader = _checked_header(path, layout)  # after the stream is checked: SimpleITK sees no corrupt header
    if (reader.GetSize() != dims or reader.GetNumberOfComponents() != 1
            or reader.GetPixelID() != _NIFTI_PIXEL[layout.datatype]):
        return None
    if layout.big_endian:
        out = out.astype(dtype.newbyteorder("="))
    img = sitk.GetImageFromArray(out.reshape(dims[::-1]))
    img.SetSpacing(reader.GetSpacing())
    img.SetOrigin(reader.GetOrigin())
    img.SetDirection(reader.GetDirection())
    return img


#: Bytes of whole z-slices inflated at a time by :func:`read_streamed` (each chunk is counted while in cache).
STREAM_CHUNK_BYTES = 2 << 20
try:  # zlib-ng (a dependency) inflates these streams 4-5x faster than the system zlib
    from zlib_ng import zlib_ng as _inflate_zlib
except ImportError:  # pragma: no cover - depends on the installation
    _inflate_zlib = zlib
_UNSIGNED_NIFTI = {2: sitk.sitkUInt8, 512: sitk.sitkUInt16, 768: sitk.sitkUInt32, 1280: sitk.sitkUInt64}
_NIFTI_PIXEL = {**_UNSIGNED_NIFTI, 4: sitk.sitkInt16, 8: sitk.sitkInt32, 16: sitk.sitkFloat32, 64: sitk.sitkFloat64,
                256: sitk.sitkInt8, 1024: sitk.sitkInt64}


def _scaled(path: Path, layout: NiftiLayout) -> bool:
    """Whether ``scl_slope``/``scl_inter`` change the NIfTI's stored values (0, NaN and inf leave them as stored)."""
    slope, inter = _nifti_scaling(path, layout)
    return not ((slope == 0 or slope == 1 or not math.isfinite(slope)) and (inter == 0 or not math.isfinite(inter)))


def _checked_header(path: Path, layout: NiftiLayout) -> sitk.ImageFileReader:
    """SimpleITK's reading of a NIfTI header (geometry, size, pixel type), its spacing and geometry checked."""
    _check_spacing(path, layout)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _unreadable_image(path, exc) from exc
    _check_geometry(path, reader)
    return reader


def _nifti_scaling(path: Path, layout: NiftiLayout) -> tuple[float, float]:
    """``(scl_slope, scl_inter)`` of a NIfTI-1/2 header (the header is read again: it is small)."""
    f, _ = _open_nifti(path)
    with f:
        head = f.read(540)
    order = ">" if layout.big_endian else "<"
    if struct.unpack_from(order + "i", head, 0)[0] == 348:
        return struct.unpack_from(order + "ff", head, 112)
    return struct.unpack_from(order + "dd", head, 176)


def _stream_chunks(path: Path, layout: NiftiLayout, buf: np.ndarray) -> Iterator[memoryview]:
    """The voxel bytes of a NIfTI, chunk after chunk of ``len(buf)`` bytes (the last may be shorter).

    A gzip stream is inflated with the checks of :func:`inflate_check` (declared length, CRC-32 and
    length of every member by zlib, nothing more than :data:`TRAILING_BYTES_ALLOWED` after the
    voxels), by zlib-ng when installed. A chunk is the inflater's own output when it gives a whole
    chunk at once, else its pieces copied into ``buf``: no buffer of the whole image is allocated. Each
    chunk is valid until the next is asked for.
    """
    want, limit = layout.declared_bytes, layout.declared_bytes + TRAILING_BYTES_ALLOWED
    view = memoryview(buf).cast("B")
    cap = len(view)
    if not _is_gzip(path):
        with open(path, "rb") as f:
            f.seek(layout.vox_offset)
            left = layout.data_bytes
            while left:
                n, size = 0, min(cap, left)
                while n < size:
                    got = f.readinto(view[n:size])
                    if not got:
                        raise LabelError(f"{path}: truncated NIfTI file (expected {want} bytes); SimpleITK would read "
                                         "the missing voxels as 0. Copy or export the file again.")
                    n += got
                left -= n
                yield view[:n]
        return
    skip, got, fill, ended = layout.vox_offset, 0, 0, False
    d = _inflate_zlib.decompressobj(31)
    try:
        with open(path, "rb") as f:
            data, at_end = b"", False
            while True:
                if not data:
                    if not at_end:
                        data = f.read(1 << 18)
                        at_end = not data
                    if at_end and (ended or d.eof):
                        break
                if got < skip:  # header and extensions: up to the voxels
                    room = skip - got
                elif got < want:
                    room = min(cap - fill, want - got)
                else:
                    room = 1 << 18
                out = d.decompress(data, room)
                data = d.unconsumed_tail
                if got < want and got + len(out) > skip:
                    part = memoryview(out)[max(skip - got, 0):min(len(out), want - got)]
                    if fill == 0 and (len(part) == cap or got + len(out) >= want):
                        got += len(out)
                        yield part  # a whole chunk at once: no copy
                        out = b""
                    else:
                        view[fill:fill + len(part)] = part
                        fill += len(part)
                got += len(out)
                if fill == cap or (fill and got >= want):
                    yield view[:fill]
                    fill = 0
                if got > limit:
                    raise _inflates_past(path, layout, got)
                if d.eof:
                    ended, data = True, d.unused_data
                    if data[:2] == b"\x1f\x8b":  # a further gzip member
                        d, ended = _inflate_zlib.decompressobj(31), False
                    else:
                        data = b""  # bytes after the last member: ignored, as gzip does
                        at_end = True
                elif not out and at_end and not data:
                    break  # the stream ends before its end-of-stream marker
    except (zlib.error, _inflate_zlib.error) as exc:
        raise _gzip_broken(path, want, got, exc) from exc
    if not ended or got < want:
        raise _gzip_broken(path, want, got)


class _StreamCensus:
    """The census of a label volume merged chunk by chunk (whole z-slices), keeping only each chunk's labelled box."""

    def __init__(self, shape: tuple[int, int, int]):
        self.shape = shape
        self.counts = np.zeros(1, np.int64)
        self.box: list[int] | None = None  # z0, z1, y0, y1, x0, x1 of the labelled voxels
        self.z = 0  # slices seen
        self.pieces: list[tuple[int, int, int, np.ndarray]] = []  # (z, y, x) of each kept labelled box, its voxels

    def add(self, chunk: np.ndarray) -> None:
        """Count ``chunk`` (the next slices): background by one vector test, labelled chunks by the census."""
        z = self.z
        self.z += chunk.shape[0]
        if not chunk.max():  # unsigned ids; max is a vector reduction, several times faster than any()
            self.counts[0] += chunk.size
            return
        found = label_census(chunk)
        if len(found.counts) > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(len(found.counts) - len(self.counts), np.int64)])
        self.counts[:len(found.counts)] += found.counts
        zb, yb, xb = found.box
        self.pieces.append((z + zb.start, yb.start, xb.start, chunk[found.box].copy()))
        b = self.box or [z + zb.start, 0, yb.start, 0, xb.start, 0]
        self.box = [b[0], z + zb.stop, min(b[2], yb.start), max(b[3], yb.stop), min(b[4], xb.start),
                    max(b[5], xb.stop)]

    def image(self, pixel_id: int) -> tuple[sitk.Image, tuple[int, int, int], Census]:
        """The labelled box grown by one voxel (clipped to the volume), its ``(z, y, x)`` corner, the census."""
        if self.box is None:
            return sitk.Image([1, 1, 1], pixel_id), (0, 0, 0), Census(self.counts, None)
        box, (nz, ny, nx) = self.box, self.shape
        lo = (max(box[0] - 1, 0), max(box[2] - 1, 0), max(box[4] - 1, 0))
        hi = (min(box[1] + 1, nz), min(box[3] + 1, ny), min(box[5] + 1, nx))
        out = np.zeros(tuple(h - lo_ for h, lo_ in zip(hi, lo)), self.pieces[0][3].dtype)
        for z, y, x, part in self.pieces:
            k, j, i = z - lo[0], y - lo[1], x - lo[2]
            out[k:k + part.shape[0], j:j + part.shape[1], i:i + part.shape[2]] = part
        self.pieces = []
        top = int(np.flatnonzero(self.counts)[-1]) + 1
        found = Census(self.counts[:top], tuple(slice(box[2 * a] - lo[a], box[2 * a + 1] - lo[a]) for a in range(3)))
        return sitk.GetImageFromArray(out), lo, found


def read_streamed(path: str | Path) -> tuple[sitk.Image, Census] | None:
    """A 3-D unsigned NIfTI label file, inflated chunk by chunk and counted as it inflates; its labelled box only.

    The voxels are inflated a few whole z-slices at a time (:data:`STREAM_CHUNK_BYTES`) into one reused
    buffer; a chunk of background is told by one vector test, the others go through
    :func:`petfeat.kernels.label_census.label_census` while in cache, and only their labelled boxes are kept.
    Returned: the image of the labelled box grown by one voxel (clipped to the image), with the geometry SimpleITK gives
    that part of the file (origin, spacing, direction from SimpleITK's own reading of the header,
    so orientation matches :func:`sitk.ReadImage` exactly), and the census of the whole file whose
    ``box`` is relative to the returned image. An unlabelled file gives a 1-voxel image and box None.
    The checks of :func:`read_checked` apply (size limit, truncation, gzip CRC and length, unsigned ids).

    Returns None for what this path does not read (not a single-file NIfTI, not 3-D, big-endian,
    scaled by ``scl_slope``/``scl_inter``, signed or float pixels): :func:`read_checked` reads those.
    """
    got = _read_streamed(Path(path))
    return None if got is None else got[:2]


def _read_streamed(path: Path) -> tuple[sitk.Image, Census, Grid] | None:
    """:func:`read_streamed`, and the :class:`Grid` of the whole file."""
    layout = nifti_layout(path)
    if layout is None or len(layout.dims) != 3 or layout.big_endian or layout.datatype not in _UNSIGNED_NIFTI:
        return None
    if _scaled(path, layout):
        return None
    _check_size(path, layout.dims, layout.bitpix / 8, layout.declared_bytes)
    nx, ny, nz = layout.dims
    dtype = np.dtype(_NIFTI_DTYPES[layout.datatype])
    slice_bytes = nx * ny * dtype.itemsize
    per = max(1, STREAM_CHUNK_BYTES // slice_bytes)
    buf = np.empty(per * nx * ny, dtype)
    acc = _StreamCensus((nz, ny, nx))
    with limited_threads(1):  # this thread only: a chunk is counted in ~1 ms, handing it to threads costs more
        for piece in _stream_chunks(path, layout, buf):
            chunk = np.frombuffer(piece, dtype).reshape(-1, ny, nx)
            chunk.flags.writeable = False  # one compiled census for chunks of the buffer and of the inflater
            acc.add(chunk)
    del buf
    reader = _checked_header(path, layout)  # after the stream is checked: SimpleITK sees no corrupt header
    if reader.GetSize() != (nx, ny, nz) or reader.GetPixelID() != _UNSIGNED_NIFTI[layout.datatype]:
        return None
    img, lo, found = acc.image(_UNSIGNED_NIFTI[layout.datatype])
    full = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    full.SetSpacing(reader.GetSpacing())
    full.SetOrigin(reader.GetOrigin())
    full.SetDirection(reader.GetDirection())
    img.SetSpacing(reader.GetSpacing())
    img.SetDirection(reader.GetDirection())
    img.SetOrigin(full.TransformIndexToPhysicalPoint((lo[2], lo[1], lo[0])))
    return img, found, Grid(reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def read_label_box(path: str | Path) -> tuple[sitk.Image, Census]:
    """:func:`read_streamed`, else :func:`read_checked`: an image holding every labelled voxel, and its census.

    The image is the file's labelled box (streamed NIfTI) or the whole file (other formats); either
    resamples to the same PET-grid values (:func:`resample_box`), voxels outside it being 0.
    """
    return _read_box(Path(path))[:2]


class Grid(NamedTuple):
    """The voxel grid of a whole label file, as SimpleITK gives it (``(x, y, z)`` order)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    def same(self, other: Grid) -> bool:
        """Same size; spacing within 1e-4 mm, origin within 1e-3 mm, direction within 1e-5 (as :func:`to_pet_grid`)."""
        return (self.size == other.size and np.allclose(self.spacing, other.spacing, atol=1e-4)
                and np.allclose(self.origin, other.origin, atol=1e-3)
                and np.allclose(self.direction, other.direction, atol=1e-5))

    def __str__(self) -> str:
        return (f"{' x '.join(map(str, self.size))} voxels of {' x '.join(f'{v:.4g}' for v in self.spacing)} mm, "
                f"origin ({', '.join(f'{v:.4g}' for v in self.origin)}) mm")


def _read_box(path: Path) -> tuple[sitk.Image, Census, Grid]:
    """:func:`read_label_box`, and the :class:`Grid` of the whole file."""
    try:
        got = _read_streamed(path)
    except OSError as exc:
        raise _unopenable(path, exc) from exc
    if got is not None:
        return got
    img, found = read_checked(path)
    return img, found, Grid(img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


RESAMPLE_MODES = ("nearest", "fraction")


def census(img: sitk.Image) -> Census:
    """Voxels per id and the box of the labelled voxels of a label image, in one pass."""
    return label_census(sitk.GetArrayViewFromImage(img))


def native_volumes_ml(img: sitk.Image, counts: np.ndarray) -> dict[int, float]:
    """Volume (mL) of each non-zero label id on the image's own grid, from its voxel ``counts`` per id."""
    vox_ml = float(np.prod(img.GetSpacing())) / 1000.0
    return {int(i): float(c) * vox_ml for i, c in enumerate(counts) if i and c}


#: Share of a label's own volume outside the PET field of view from which the label is named in its source's
#: warning and in the study's ``input_notes`` (every label's share is in ``labels.parquet`` whatever it is).
OUTSIDE_FOV_NOTED = 0.01
#: Labels named per group (partly / wholly outside) in that warning.
SHOWN_CUT = 10


def _index_to_pet(img: sitk.Image, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)``: the PET grid's continuous ``(x, y, z)`` index of the image's voxel ``(x, y, z)`` is ``a @ i + b``."""
    d = np.asarray(geometry.direction, float).reshape(3, 3)
    to_pet = d.T / np.asarray(geometry.spacing[::-1], float)[:, None]  # LPS offset -> PET (x, y, z) index
    steps = np.asarray(img.GetDirection(), float).reshape(3, 3) * np.asarray(img.GetSpacing(), float)[None, :]
    return to_pet @ steps, to_pet @ (np.asarray(img.GetOrigin(), float) - np.asarray(geometry.origin, float))


def outside_fov_counts(img: sitk.Image, found: Census, geometry: Geometry) -> np.ndarray:
    """Voxels of each id whose centres lie outside the PET field of view, counted on the image's own grid.

    A voxel is inside when its centre's PET-grid index lies within ``[-0.5, n - 0.5]`` on every
    axis (the same test as RTSTRUCT contours). Only the labelled box of the census is looked at,
    and only as much of it as the answer needs: a box wholly inside (or wholly beyond one face)
    is decided by its corners; a grid whose axes run along the PET's (the usual CT under a PET)
    has an index box inside, so the smaller of that box and the slabs around it is counted
    (:func:`petfeat.kernels.label_census.label_census`); an oblique grid is tested slice by slice.

    Parameters
    ----------
    img : SimpleITK.Image
        Unsigned label ids (a file's labelled box or the whole file).
    found : Census
        The census of ``img`` (:func:`census`, or the one :func:`read_label_box` returns).
    geometry : Geometry
        The PET grid.

    Returns
    -------
    ndarray of int64
        Same length as ``found.counts``; entry 0 (background) is 0.
    """
    counts = np.asarray(found.counts, np.int64)
    out = np.zeros(len(counts), np.int64)
    if found.box is None:
        return out
    a, b = _index_to_pet(img, geometry)
    n = np.asarray(geometry.shape[::-1], float)
    box_xyz = [found.box[2], found.box[1], found.box[0]]
    lo = np.array([s.start for s in box_xyz], float)
    hi = np.array([s.stop - 1 for s in box_xyz], float)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]) @ a.T + b
    eps = 1e-6
    if np.all(corners >= -0.5 - eps) and np.all(corners <= n - 0.5 + eps):
        return out  # the box is convex and so is the field of view: every voxel inside
    labelled = counts.copy()
    labelled[0] = 0
    if np.any(np.all(corners < -0.5 - eps, axis=0)) or np.any(np.all(corners > n - 0.5 + eps, axis=0)):
        return labelled  # the whole box lies beyond one face of the field of view
    arr = sitk.GetArrayViewFromImage(img)
    big = np.abs(a) > 1e-9 * np.abs(a).max()
    if big.sum(axis=1).tolist() == [1, 1, 1] and big.sum(axis=0).tolist() == [1, 1, 1]:
        inner = []  # per image axis (x, y, z): the index range whose voxel centres are inside
        for j in range(3):
            k = int(np.flatnonzero(big[:, j])[0])  # the PET axis this image axis runs along
            ends = sorted(((-0.5 - b[k]) / a[k, j], (n[k] - 0.5 - b[k]) / a[k, j]))
            first = max(int(math.ceil(ends[0] - eps)), box_xyz[j].start)
            last = min(int(math.floor(ends[1] + eps)) + 1, box_xyz[j].stop)
            inner.append(slice(first, max(first, last)))
        inner_zyx = (inner[2], inner[1], inner[0])
        whole = [found.box[0], found.box[1], found.box[2]]
        inner_size = math.prod(s.stop - s.start for s in inner_zyx)
        if inner_size <= math.prod(s.stop - s.start for s in whole) // 2:
            inside = label_census(arr[inner_zyx]).counts if inner_size else np.zeros(1, np.int64)
            out[1:len(inside)] -= inside[1:]
            out += labelled
            return out
        for axis in range(3):  # the slabs of the box around the inner box, one axis after the other
            for part in (slice(whole[axis].start, inner_zyx[axis].start), slice(inner_zyx[axis].stop,
                                                                                  whole[axis].stop)):
                if part.stop > part.start:
                    piece = list(whole)
                    piece[axis] = part
                    got = label_census(arr[tuple(piece)]).counts
                    out[1:len(got)] += got[1:]
            whole[axis] = inner_zyx[axis]
        return out
    ys = np.arange(found.box[1].start, found.box[1].stop, dtype=float)[:, None]
    xs = np.arange(found.box[2].start, found.box[2].stop, dtype=float)[None, :]
    for z in range(found.box[0].start, found.box[0].stop):
        inside = np.ones((len(ys), xs.shape[1]), bool)
        for k in range(3):
            idx = a[k, 0] * xs + a[k, 1] * ys + (a[k, 2] * z + b[k])
            inside &= (idx >= -0.5 - eps) & (idx <= n[k] - 0.5 + eps)
        if not inside.all():
            got = label_census(arr[z, found.box[1], found.box[2]][~inside]).counts
            out[1:len(got)] += got[1:]
    return out


def _outside_fractions(native: dict[str, float], outside: dict[str, float]) -> dict[str, dict[str, float]]:
    """``notes`` of a layer: ``{name: {"outside_fov_fraction": f}}`` for each label with a native volume."""
    return {name: {"outside_fov_fraction": min(1.0, outside.get(name, 0.0) / ml)}
            for name, ml in native.items() if ml > 0}


def warn_outside_fov(source: str | Path, layers: Sequence[LabelLayer]) -> None:
    """One :class:`~petfeat.errors.PetfeatWarning` for a label source with labels partly outside the PET field of view.

    It names the labels of which at least :data:`OUTSIDE_FOV_NOTED` of the own-grid volume lies
    outside (largest share first, the first ten), says that their regions hold the part inside, and
    where every label's share is (``labels.parquet``). Nothing when no label is cut that much.
    """
    cut = {}
    for layer in layers:
        for name, note in (getattr(layer, "notes", None) or {}).items():
            f = (note or {}).get("outside_fov_fraction")
            if f is not None and f >= OUTSIDE_FOV_NOTED:
                cut[name] = max(f, cut.get(name, 0.0))
    if not cut:
        return
    total = len({n for layer in layers for n, ml in (layer.native_volume_ml or {}).items() if ml > 0})
    whole = sorted(n for n, f in cut.items() if f >= 1.0)
    partly = sorted(((n, f) for n, f in cut.items() if f < 1.0), key=lambda kv: (-kv[1], kv[0]))

    def listed(items: list[str]) -> str:
        return ", ".join(items[:SHOWN_CUT]) + (f" and {len(items) - SHOWN_CUT} more" if len(items) > SHOWN_CUT else "")

    shares = [f"{n} {math.floor(1000 * f) / 10:g}%" for n, f in partly]  # 99.96% stays below 100%
    parts = [f"Partly outside (share of the label's own volume): {listed(shares)}"] if partly else []
    if whole:
        parts.append(f"{'wholly' if partly else 'Wholly'} outside: {listed(whole)}")
    warnings.warn(f"{source}: {len(cut)} of {total} labels reach beyond the PET field of view (usual for CT labels "
                  "that cover more of the body than the PET); their regions measure the part inside. "
                  f"{'; '.join(parts)}. Every label's share: outside_fov_fraction in labels.parquet.",
                  PetfeatWarning, stacklevel=3)


def to_pet_grid(img: sitk.Image, geometry: Geometry, source: str = "<image>", mode: str = "nearest",
                found: Census | None = None) -> np.ndarray:
    """Bring a label image onto the PET grid; ``(Z, Y, X)`` array of the same ids.

    ``mode="nearest"``: nearest-neighbour resampling of the ids. ``mode="fraction"``: each label
    is resampled as a fraction (linear interpolation of its indicator) and kept where >= 0.5.
    ``found`` is the image's :func:`census` when the caller has it already.

    Raises
    ------
    LabelError
        The label map has labels but none of them falls inside the PET field of view.
    """
    if mode not in RESAMPLE_MODES:
        raise LabelError(f"resampling mode is {mode!r}; choose one of {', '.join(RESAMPLE_MODES)}.")
    ref = reference_image(geometry)
    same = (img.GetSize() == ref.GetSize() and np.allclose(img.GetSpacing(), ref.GetSpacing(), atol=1e-4)
            and np.allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-3)
            and np.allclose(img.GetDirection(), ref.GetDirection(), atol=1e-5))
    if same:
        return sitk.GetArrayFromImage(img)
    found = census(img) if found is None else found
    arr = np.zeros(geometry.shape, sitk.GetArrayViewFromImage(img).dtype)
    if mode == "nearest":
        hit = resample_box(img, geometry, sitk.sitkNearestNeighbor, img.GetPixelID(), found.box)
        if hit is not None:
            arr[hit[0]] = hit[1]
    else:
        best = np.zeros(geometry.shape, np.float32)
        for lab in (int(v) for v in np.flatnonzero(found.counts) if v):
            one = sitk.BinaryThreshold(img, lab, lab, 1, 0)
            hit = resample_box(sitk.Cast(one, sitk.sitkFloat32), geometry, sitk.sitkLinear, sitk.sitkFloat32,
                               census(one).box)
            if hit is None:
                continue
            box, frac = hit
            sub_arr, sub_best = arr[box], best[box]
            take = (frac >= 0.5) & (frac > sub_best)
            sub_arr[take] = lab
            sub_best[take] = frac[take]
    if not arr.any() and found.box is not None:
        raise LabelError(f"{source}: the label map does not overlap the PET field of view (its labels fall outside "
                         "the PET grid after resampling). Check that it belongs to this study and frame of reference.")
    return arr


def resample_box(img: sitk.Image, geometry: Geometry, interpolator: int, pixel_id: int,
                 native: tuple[slice, slice, slice] | None) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Resample ``img`` onto the part of the PET grid its non-zero voxels (in the box ``native``) can reach.

    A class of a whole-body segmentation covers a small box of the PET grid; resampling only that
    box (the class's bounding box grown by one voxel of its own grid, which covers nearest and
    linear interpolation) gives the same values as resampling the whole grid, in a fraction of the
    time. Returns ``(box, values)`` with ``box`` the ``(z, y, x)`` slices of the PET grid, or None
    when the image has no non-zero voxel (``native`` None) or none inside the PET grid.
    """
    if native is None:
        return None
    size = img.GetSize()
    lo = [max(native[2 - k].start - 1, -1) for k in range(3)]  # (x, y, z) continuous index corners
    hi = [min(native[2 - k].stop, size[k]) for k in range(3)]
    corners = np.array([img.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))
                        for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    spacing_xyz = np.asarray(geometry.spacing[::-1], dtype=np.float64)
    d = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    index = (corners - np.asarray(geometry.origin)) @ d / spacing_xyz  # PET continuous (x, y, z) indices
    shape_xyz = np.asarray(geometry.shape[::-1])
    first = np.maximum(np.floor(index.min(axis=0)).astype(np.int64) - 1, 0)
    last = np.minimum(np.ceil(index.max(axis=0)).astype(np.int64) + 1, shape_xyz - 1)
    if np.any(last < first):
        return None
    out_size = [int(v) for v in last - first + 1]
    origin = np.asarray(geometry.origin) + d @ (first * spacing_xyz)
    sub = sitk.Resample(img, out_size, sitk.Transform(), interpolator, [float(v) for v in origin],
                        [float(v) for v in spacing_xyz], [float(v) for v in d.ravel()], 0, pixel_id)
    box = tuple(slice(int(first[k]), int(last[k]) + 1) for k in (2, 1, 0))
    return box, sitk.GetArrayFromImage(sub)


def read_totalsegmentator(folder: str | Path, geometry: Geometry, namespace: str | None = None) -> list[LabelLayer]:
    """Read a TotalSegmentator output folder (one ``<class>.nii.gz`` per class) onto the PET grid.

    The folder may hold the classes of several tasks (``total`` and ``head_glands_cavities`` written
    to one ``-o``): :func:`petfeat.io.totalsegmentator.split_by_task` decides which class belongs to
    which task. Each task gets its own layers, name space ``namespace`` or else the task's name,
    and its classes keep the task's label ids (those of its ``--ml`` output); classes no task knows
    get ids 1, 2... in name order and the name space ``namespace`` or else the folder's name. Within
    a task, a class whose PET-grid voxels meet a class already placed goes to a further layer of the
    task, so no class erases another (each placement tests only the class's own PET-grid box).
    Every class file is in a layer's names, so a class without voxels is a region that is ``empty``.
    Class files that are symbolic links are not followed (a link may point to another study's class,
    or anywhere): the folder is refused, naming them. The folder itself may be a link.

    Raises
    ------
    LabelError
        No class files; class files that are symbolic links; a class file unreadable, truncated or
        corrupt, or on another grid (size, spacing, origin, direction) than the folder's other class
        files; classes but none in the PET field of view.
    """
    folder = Path(folder)
    try:
        os.scandir(folder).close()  # glob would give no files for a folder it cannot list
    except OSError as exc:
        raise _unopenable(folder, exc) from exc
    files = sorted(folder.glob("*.nii.gz")) + sorted(folder.glob("*.nii"))
    if not files:
        raise LabelError(f"{folder}: no <class>.nii.gz files; point to a TotalSegmentator output folder.")
    _refuse_links(folder, files)
    names = [f.name.removesuffix(".gz").removesuffix(".nii") for f in files]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise LabelError(f"{folder}: classes {', '.join(twice)} are there both as .nii and .nii.gz; keep one file "
                         "per class.")
    task_of, label_id = {}, {}
    for task, members in split_by_task(names).items():
        ids = {n: i for i, n in TASK_LABELS[task].items()} if task != UNKNOWN else {
            n: i for i, n in enumerate(sorted(members), start=1)}
        for n in members:
            task_of[n], label_id[n] = task, ids[n]
    top = {}
    for n in names:
        top[task_of[n]] = max(top.get(task_of[n], 0), label_id[n])
    layers: dict[str, list[LabelLayer]] = {}

    def layer_for(task: str, box, mask) -> LabelLayer:
        for layer in layers.setdefault(task, []):
            if box is None or not layer.array[box][mask].any():
                return layer
        ns = namespace or (task if task != UNKNOWN else folder.name)
        layer = LabelLayer(np.zeros(geometry.shape, np.uint8 if top[task] <= 0xFF else np.uint16), {}, str(folder),
                           namespace=ns)
        layer.native_volume_ml = {}
        layer.notes = {}
        layers[task].append(layer)
        return layer

    labelled = False
    grids: dict[Path, Grid] = {}
    for f, name, (img, found, grid) in zip(files, names, _read_ahead(files), strict=True):
        grids[f] = grid
        task, i = task_of[name], label_id[name]
        native = sum(native_volumes_ml(img, found.counts).values())
        labelled |= native > 0
        hit = resample_box(img, geometry, sitk.sitkNearestNeighbor, img.GetPixelID(), found.box)
        box, mask = (hit[0], hit[1] > 0) if hit is not None else (None, None)
        layer = layer_for(task, box, mask)
        if box is not None:  # a class may lie outside the PET field of view (e.g. the skull in a torso scan)
            layer.array[box][mask] = i
        layer.names[i] = name
        layer.native_volume_ml[name] = native
        if native > 0:
            outside = float(outside_fov_counts(img, found, geometry).sum()) * float(np.prod(img.GetSpacing())) / 1000
            layer.notes.update(_outside_fractions({name: native}, {name: outside}))
    _refuse_odd_grids(folder, grids)
    out = [layer for task_layers in layers.values() for layer in task_layers]
    if labelled and not any(layer.array.any() for layer in out):
        raise LabelError(f"{folder}: none of the classes overlaps the PET field of view. Check that the "
                         "segmentation belongs to this study.")
    warn_outside_fov(folder, out)
    return out


def _refuse_links(folder: Path, files: Sequence[Path]) -> None:
    """Refuse a TotalSegmentator folder whose class files include symbolic links (links are not followed)."""
    links = [f for f in files if f.is_symlink()]
    if not links:
        return

    def what(f: Path) -> str:
        try:
            mode = os.stat(f).st_mode
        except OSError as exc:
            return "a link loop" if exc.errno == errno.ELOOP else "a dangling link"
        return "a link to a folder" if stat.S_ISDIR(mode) else "a link to a file"

    shown = ", ".join(f"{f.name} ({what(f)})" for f in links[:5]) + (
        f" and {len(links) - 5} more" if len(links) > 5 else "")
    raise LabelError(f"{folder}: class files that are symbolic links are not followed (a link inside a study may "
                     f"point to another study's file, or anywhere): {shown}. Replace each link by the file it "
                     "stands for (cp -L), or remove it.")


def _refuse_odd_grids(folder: Path, grids: dict[Path, Grid]) -> None:
    """Refuse a folder whose class files are not all on one grid, naming those off the grid most of them share."""
    groups: list[list[Path]] = []
    for f, grid in grids.items():
        group = next((g for g in groups if grids[g[0]].same(grid)), None)
        if group is None:
            groups.append([f])
        else:
            group.append(f)
    if len(groups) < 2:
        return
    groups.sort(key=len, reverse=True)
    main, odd = groups[0], [f for g in groups[1:] for f in g]
    shown = "; ".join(f"{f.name}: {grids[f]}" for f in odd[:5]) + (f"; and {len(odd) - 5} more" if len(odd) > 5
                                                                   else "")
    raise LabelError(f"{folder}: class files on another grid than the folder's other {len(main)} "
                     f"({grids[main[0]]}): {shown}. The class files of one TotalSegmentator output share the grid "
                     "of the CT they were segmented from; a file on another grid (other matrix with the same origin "
                     "and spacing) would place its class wrongly. Run TotalSegmentator again on this study's CT, or "
                     "remove the odd file.")


def read_totalsegmentator_folder(folder: str | Path, geometry: Geometry) -> LabelLayer:
    """A TotalSegmentator folder as ONE layer, for callers that take a single organ layer.

    The layers of :func:`read_totalsegmentator` are merged in their order into one array (ids
    renumbered 1, 2...): where classes overlap, the class of the later layer keeps the voxel, so one
    class cuts into another (the parotid glands of ``head_glands_cavities`` into ``total``'s
    ``skull``). Use :func:`read_labels`, which keeps every class whole, to measure regions.
    """
    layers = read_totalsegmentator(folder, geometry)
    n = sum(len(layer.names) for layer in layers)
    out = np.zeros(geometry.shape, np.uint8 if n <= 0xFF else np.uint16)
    names, native, notes, nxt = {}, {}, {}, 1
    for layer in layers:
        lut = np.zeros(int(max(layer.names, default=0)) + 1, out.dtype)
        for i, name in sorted(layer.names.items()):
            lut[i], names[nxt] = nxt, name
            native[name] = layer.native_volume_ml[name]
            if name in layer.notes:
                notes[name] = layer.notes[name]
            nxt += 1
        ids = lut[layer.array]
        np.copyto(out, ids, where=ids > 0)
    merged = LabelLayer(out, names, str(folder), namespace=layers[0].namespace if len(layers) == 1 else "")
    merged.native_volume_ml = native
    merged.notes = notes
    return merged


def _read_ahead(files: list[Path]) -> Iterator[tuple[sitk.Image, Census, Grid]]:
    """``files`` read by :func:`read_label_box` with each one's :class:`Grid`, in order, several at a time.

    SimpleITK's thread budget gives the number of readers at a time.

    Inflation and the census run without the GIL, so a whole-body folder's class files (one gzip
    stream each, most of a folder's time) are read in parallel. At most one more file than that is
    read ahead of the one in use; each holds only its labelled box. In a batch task the budget is 1
    (:func:`petfeat.batch.run_study`): files are read one by one.
    """
    threads = max(1, sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
    if threads == 1:
        yield from map(_read_box, files)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending = deque()
        for f in files:
            pending.append(pool.submit(_read_box, f))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _allow_empty(fn, geometry):
    """One class of a folder may lie outside the PET field of view (e.g. the skull in a torso scan)."""
    try:
        return fn()
    except LabelError:
        return np.zeros(geometry.shape, np.uint8)


def read_label_map(path: str | Path, geometry: Geometry, names: dict[int, str] | None = None,
                   prefix: str = "label", mode: str = "nearest", namespace: str | None = None) -> LabelLayer:
    """Read a multilabel image (NIfTI, NRRD, MHA) onto the PET grid.

    Names come from ``names``, else from the label table a NIfTI carries in its header extension
    (TotalSegmentator's ``--ml`` output). Every id they name is in the layer, with or without voxels
    (a named id without voxels is a region that is ``empty``, as in a TotalSegmentator folder); an id
    with voxels and no name is called ``{prefix}_{id}``. The layer's name space is ``namespace``, else
    the TotalSegmentator task the names identify (:func:`petfeat.io.totalsegmentator.identify_task`),
    else the file's stem (``ct_seg`` for ``ct_seg.nii.gz``).
    """
    img, found = read_label_box(path)
    native_ids = native_volumes_ml(img, found.counts)
    arr = to_pet_grid(img, geometry, str(path), mode, found)
    if names is None:
        names = nifti_label_table(path)
    named = {int(i): str(n) for i, n in (names or {}).items() if int(i) != 0}
    all_names = {i: named.get(i, f"{prefix}_{i}") for i in sorted(set(native_ids) | set(named))}
    layer = LabelLayer(arr, all_names, str(path), namespace=namespace or identify_task(named.values())
                       or file_stem(path))
    layer.native_volume_ml = {}
    outside_ml: dict[str, float] = {}
    vox_ml = float(np.prod(img.GetSpacing())) / 1000.0
    outside = outside_fov_counts(img, found, geometry)
    for i, name in all_names.items():
        layer.native_volume_ml[name] = layer.native_volume_ml.get(name, 0.0) + native_ids.get(i, 0.0)
        if i < len(outside):
            outside_ml[name] = outside_ml.get(name, 0.0) + float(outside[i]) * vox_ml
    layer.notes = _outside_fractions(layer.native_volume_ml, outside_ml)
    warn_outside_fov(path, [layer])
    return layer


def file_stem(path: str | Path) -> str:
    """A label file's name without its image suffixes: ``ct_seg`` for ``ct_seg.nii.gz``, ``seg`` for ``seg.dcm``."""
    name = Path(path).name
    for suffix in (".gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[:-len(suffix)]
    return name


def nifti_label_table(path: str | Path) -> dict[int, str] | None:
    """Label names stored in a NIfTI-1 header extension, as TotalSegmentator's ``--ml`` output has them.

    TotalSegmentator writes an XML ``LabelTable`` (``<Label Key="5">liver</Label>`` ...) as a
    header extension. Returns ``{id: name}``, or None for other files and NIfTIs without one.
    """
    path = Path(path)
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return None
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(352)
            if len(head) < 352 or struct.unpack_from("<i", head, 0)[0] != 348 or head[348] == 0:
                return None  # not little-endian NIfTI-1, or no extension
            vox_offset = int(struct.unpack_from("<f", head, 108)[0])
            ext = f.read(max(0, vox_offset - 352))
    except (OSError, EOFError, struct.error):
        return None
    pos, table = 0, {}
    while pos + 8 <= len(ext):
        size, _code = struct.unpack_from("<ii", ext, pos)
        if size < 8 or pos + size > len(ext):
            break
        content = ext[pos + 8:pos + size].rstrip(b"\x00 \n")
        pos += size
        if b"LabelTable" not in content:
            continue
        try:
            root = ElementTree.fromstring(content.decode("utf-8", "replace").strip())
        except ElementTree.ParseError:
            continue
        for label in root.iter("Label"):
            key, text = label.get("Key"), (label.text or "").strip()
            if key is not None and key.strip().isdigit() and text:
                table[int(key)] = text
    return table or None


def read_lesion_mask(path: str | Path, geometry: Geometry, mode: str = "nearest") -> np.ndarray:
    """A lesion mask (any non-zero id) on the PET grid, as booleans (1 byte per voxel).

    Lesion ids in the file are not kept: petfeat recomputes the connected components
    (:func:`petfeat.lesions.connected_components`), so an instance map and a binary mask give the
    same lesions when their instances do not touch.
    """
    if mode != "nearest":  # fractions are per label id: resample the ids, then binarise
        arr = read_label_map(path, geometry, prefix="lesion", mode=mode).array
        return np.greater(arr, 0, out=np.empty(arr.shape, bool))
    img = read_label_image(path)
    binary = sitk.BinaryThreshold(img, 1, _MAX_ID[img.GetPixelID()], 1, 0)  # uint8 0/1, any id -> 1
    del img
    return to_pet_grid(binary, geometry, str(path)).view(bool)


def read_names_file(path: str | Path) -> dict[int, str]:
    """Label names from a JSON object (``{"1": "liver", ...}``) or a two-column CSV/TSV (id, name)."""
    path = Path(path)
    text = path.read_text()
    try:
        if path.suffix == ".json":
            return {int(k): str(v) for k, v in json.loads(text).items()}
        out = {}
        for line in text.splitlines():
            parts = [p.strip() for p in line.replace("\t", ",").split(",")]
            if len(parts) >= 2 and parts[0].isdigit():
                out[int(parts[0])] = parts[1]
        return out
    except (ValueError, AttributeError) as exc:
        raise LabelError(f"{path}: label names must be a JSON object id -> name or CSV lines 'id,name'.") from exc


def _sitk_from_affine(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image from a (slices, rows, columns) array and a highdicom-style affine."""
    img = sitk.GetImageFromArray(array)
    cols = affine[:3, :3]  # columns: steps along slices, rows, columns (LPS mm)
    steps = [cols[:, 2], cols[:, 1], cols[:, 0]]  # SimpleITK x (column), y (row), z (slice)
    spacing = [float(np.linalg.norm(v)) for v in steps]
    direction = np.stack([v / n for v, n in zip(steps, spacing, strict=True)], axis=1)
    img.SetSpacing(spacing)
    img.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
    img.SetDirection(tuple(float(v) for v in direction.ravel()))
    return img


def read_dicom_seg(path: str | Path, geometry: Geometry, mode: str = "nearest") -> list[LabelLayer]:
    """A DICOM SEG (binary, fractional or labelmap; overlapping segments allowed), segments packed into layers.

    Segments are decoded one at a time (a LABELMAP SEG as its one label volume, split by segment
    number), so memory holds one volume of the SEG's grid, not one per segment: all 117 segments of
    a whole-body SEG on a CT grid at once would be tens of GB.
    """
    import highdicom as hd

    path = Path(path)

    def readable(call):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - highdicom raises many types for bad files
            raise LabelError(f"{path}: not a readable DICOM SEG ({type(exc).__name__}: {exc}).") from exc

    def volume(**kwargs):
        return readable(lambda: seg.get_volume(rescale_fractional=True, **kwargs))

    seg = readable(lambda: hd.seg.segread(path))
    # a LABELMAP SEG lists a background segment 0 in SegmentSequence; segment_numbers leaves it out
    numbers = [int(n) for n in seg.segment_numbers]
    labels = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
    labelmap = None
    if seg.segmentation_type == hd.seg.SegmentationTypeValues.LABELMAP:
        labelmap = volume(segment_numbers=numbers, combine_segments=True, relabel=False)

    def segments():
        for number in numbers:
            if labelmap is not None:
                vol, ind = labelmap, np.equal(labelmap.array, number)
            else:
                vol = volume(segment_numbers=[number], combine_segments=False)
                arr = np.asarray(vol.array)
                ind = np.greater_equal(arr[..., 0] if arr.ndim == 4 else arr, 0.5)
            img = _sitk_from_affine(ind.astype(np.uint8), np.asarray(vol.affine))
            found = census(img)
            on_pet = _allow_empty(lambda img=img, found=found: to_pet_grid(img, geometry, str(path), mode, found),
                                  geometry)
            native = sum(native_volumes_ml(img, found.counts).values())
            if native > 0:
                outside = float(outside_fov_counts(img, found, geometry).sum()) * float(np.prod(img.GetSpacing()))
                notes.update(_outside_fractions({labels[number]: native}, {labels[number]: outside / 1000}))
            yield labels[number], on_pet > 0, native

    notes: dict[str, dict[str, float]] = {}
    layers = packed_layers(segments(), geometry.shape, str(path))
    for layer in layers:
        layer.notes = {name: notes[name] for name in layer.names.values() if name in notes}
    labelled = any(ml > 0 for layer in layers for ml in layer.native_volume_ml.values())  # on the SEG's grid
    if not any(layer.array.any() for layer in layers) and labelled:
        raise LabelError(f"{path}: no segment overlaps the PET field of view. Check that the SEG belongs to this "
                         "study.")
    warn_outside_fov(path, layers)
    return layers


def packed_layers(masks: Iterable[tuple[str, np.ndarray, float]], shape: tuple[int, int, int],
                  source: str) -> list[LabelLayer]:
    """Masks of labels that may overlap (name, boolean PET-grid mask, native volume in mL), packed into layers.

    Each label goes into the first layer that holds none of its voxels and not its name, under that
    layer's next id. A voxel of several labels is in several layers, as when each label had a layer
    of its own, so regions match the same names; but labels that do not overlap share a layer. A
    whole-body SEG of 117 non-overlapping segments is one PET-grid volume instead of 117 (2.1 GB on
    a 2 mm grid). Masks are taken one at a time.
    """
    layers: list[LabelLayer] = []
    for name, mask, native_ml in masks:
        layer = next((la for la in layers if name not in la.names.values() and not la.array[mask].any()), None)
        if layer is None:
            layer = LabelLayer(np.zeros(shape, np.uint8), {}, source)
            layer.native_volume_ml = {}
            layers.append(layer)
        i = len(layer.names) + 1
        if i > np.iinfo(layer.array.dtype).max:
            layer.array = layer.array.astype(np.uint16 if i <= 0xFFFF else np.uint32)
        layer.array[mask] = i
        layer.names[i] = name
        layer.native_volume_ml[name] = native_ml
    return layers


def read_labels(path: str | Path, geometry: Geometry, names: dict[int, str] | None = None,
                mode: str = "nearest", namespace: str | None = None) -> list[LabelLayer]:
    """Read any supported label source onto the PET grid; every layer gets a name space.

    A folder is a TotalSegmentator output (one ``<class>.nii.gz`` per class, one or several tasks;
    :func:`read_totalsegmentator`, nearest-neighbour resampling); a DICOM file is a SEG or an
    RTSTRUCT (by Modality); anything else is a multilabel image read by SimpleITK (NIfTI, NRRD, MHA),
    named with ``names``, else with the label table a NIfTI carries in its header extension
    (TotalSegmentator's ``--ml`` output), else ``label_<id>`` (:func:`read_label_map`).

    ``namespace`` names the layers' name space (``NAMESPACE:GLOB`` in a region spec); by default it is
    the TotalSegmentator task (a folder's tasks, an ``--ml`` file's label table), else the file's stem
    (``ct_seg`` for ``ct_seg.nii.gz``) or the folder's name.
    """
    path = Path(path)
    if path.is_dir():
        return read_totalsegmentator(path, geometry, namespace)
    if not path.exists():
        raise LabelError(f"{path}: no such file or folder.")
    try:
        dicom = path.suffix.lower() in (".dcm", "") or _is_dicom(path)
    except OSError as exc:
        raise _unopenable(path, exc) from exc
    if dicom:
        modality = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality", ""))
        if modality == "SEG":
            layers = read_dicom_seg(path, geometry, mode)
        elif modality == "RTSTRUCT":
            layers = read_rtstruct(path, geometry)
        else:
            raise LabelError(f"{path}: a DICOM {modality or 'file'} is not a label map; give a SEG or RTSTRUCT.")
        for layer in layers:
            layer.namespace = namespace or file_stem(path)
        return layers
    return [read_label_map(path, geometry, names, mode=mode, namespace=namespace)]


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"
