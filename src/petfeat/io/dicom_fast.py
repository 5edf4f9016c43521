"""Fast path for the per-slice header of uncompressed little-endian DICOM files.

A PET series is hundreds of files whose per-slice differences are a handful of elements (position,
rescale, acquisition time, pixel data). pydicom's parser builds a full element object for each
element it passes; this module walks the top-level elements of the file bytes instead and keeps
only the wanted ones, as :class:`pydicom.dataelem.RawDataElement` in a real
:class:`pydicom.Dataset`, so every later access converts values exactly as pydicom does.

It handles Explicit and Implicit VR Little Endian, skips sequences of defined and undefined length
(nested, and UN of undefined length encoded as implicit VR), and returns ``None`` for anything
else (no preamble, other transfer syntaxes, malformed structure): the caller then reads the file
with pydicom, so the fast path never changes what is accepted or how errors read.
"""

from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

_U16x2 = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG_LEN = struct.Struct("<II")  # (group | element << 16) read as one u32, then the 32-bit length
#: Explicit-VR VRs with a 2-byte reserved field and a 4-byte length.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_PIXELS = frozenset({0x7FE00008, _PIXEL_DATA})  # FloatPixelData, PixelData
#: Bytes read first; the whole file is read only when the header is longer.
HEAD_BYTES = 1 << 16
_META = {}


@dataclass(frozen=True)
class PixelDataAt:
    """Where a file's pixel data lies (the value of its PixelData element on the fast path).

    ``len()`` is the number of bytes the file really holds there, so a truncated file reads as a
    short value, as it does through pydicom.
    """

    path: Path
    offset: int
    length: int
    available: int

    def __len__(self) -> int:
        return min(self.length, self.available)

    def read_into(self, out: np.ndarray) -> None:
        """Fill the C-contiguous ``out`` (little-endian stored values) from the file, with no copy."""
        view = memoryview(out).cast("B")
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            got = f.readinto(view)
        if got != view.nbytes:
            raise OSError(f"{self.path}: {got} of {view.nbytes} pixel bytes could be read")
        if sys.byteorder == "big":
            out.byteswap(inplace=True)


class _Malformed(Exception):
    """The bytes do not parse as expected: hand the file to pydicom."""


def _meta(ts: str) -> FileMetaDataset:
    if ts not in _META:
        m = FileMetaDataset()
        m.TransferSyntaxUID = ts
        _META[ts] = m
    return _META[ts]


def _element_header(buf: bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """``(tag, VR, length, position of the value)`` of the element at ``pos``."""
    group, elem = _U16x2.unpack_from(buf, pos)
    tag = group << 16 | elem
    if implicit or group == 0xFFFE:  # items and delimiters have no VR in either encoding
        return tag, None, _U32.unpack_from(buf, pos + 4)[0], pos + 8
    vr = buf[pos + 4:pos + 6]
    if vr in _LONG_VRS:
        return tag, vr, _U32.unpack_from(buf, pos + 8)[0], pos + 12
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise _Malformed
    return tag, vr, _U16.unpack_from(buf, pos + 6)[0], pos + 8


def _skip_sequence(buf: bytes, pos: int, implicit: bool) -> int:
    """Position after an undefined-length sequence whose first item starts at ``pos``."""
    n = len(buf)
    while pos + 8 <= n:
        tag, length = _TAG_LEN.unpack_from(buf, pos)
        tag = (tag & 0xFFFF) << 16 | tag >> 16
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Malformed
        pos = _skip_item(buf, pos, implicit) if length == _UNDEFINED else pos + length
    raise _Malformed


def _skip_item(buf: bytes, pos: int, implicit: bool) -> int:
    """Position after an undefined-length item whose first element starts at ``pos``."""
    n = len(buf)
    while pos + 8 <= n:
        tag, vr, length, pos = _element_header(buf, pos, implicit)
        if tag == _ITEM_END:
            return pos
        if length == _UNDEFINED:
            pos = _skip_sequence(buf, pos, implicit or vr == b"UN")
        else:
            pos += length
    raise _Malformed


def read_slice_header(path: Path, wanted: frozenset[int]) -> Dataset | None:
    """The ``wanted`` top-level elements of one file as a pydicom Dataset, or ``None`` for pydicom's path.

    Parameters
    ----------
    path
        A DICOM Part 10 file.
    wanted
        Tags as integers (``0x00200032``); elements after the largest one are not visited.

    Returns
    -------
    pydicom.Dataset or None
        Raw elements (converted by pydicom on access) with ``file_meta.TransferSyntaxUID`` set;
        ``None`` when the file has no preamble, another transfer syntax, or does not parse (any
        exception while scanning the bytes means "malformed": pydicom then reads the file and names it).

    Raises
    ------
    OSError
        The file cannot be opened or read.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = f.read(HEAD_BYTES)
        if len(buf) < 144 or buf[128:132] != b"DICM":
            return None
        if len(buf) < size:
            try:
                return _scan(buf, wanted, path, size, partial=True)
            except Exception:  # noqa: BLE001 -- a header longer than HEAD_BYTES (or a malformed one): whole file
                pass
            f.seek(0)
            buf = f.read()
    try:
        return _scan(buf, wanted, path, size, partial=False)
    except Exception:  # noqa: BLE001 -- any malformed input (bad lengths, non-ASCII UIDs or VRs): pydicom's path
        return None


def _scan(buf: bytes, wanted: frozenset[int], path: Path, size: int, partial: bool) -> Dataset | None:
    pos, ts, n = 132, None, len(buf)
    while pos + 8 <= n and _U16.unpack_from(buf, pos)[0] == 0x0002:  # file meta: always explicit VR LE
        tag, vr, length, vpos = _element_header(buf, pos, False)
        if length == _UNDEFINED:
            raise _Malformed
        if tag == 0x00020010:
            ts = buf[vpos:vpos + length].decode("ascii").strip("\x00 ")  # UnicodeDecodeError: malformed
        pos = vpos + length
    if ts == ExplicitVRLittleEndian:
        implicit = False
    elif ts == ImplicitVRLittleEndian:
        implicit = True
    else:
        return None
    last = max(wanted)
    elements = {}
    long_vrs, undefined = _LONG_VRS, _UNDEFINED
    u16x2, u16, u32 = _U16x2.unpack_from, _U16.unpack_from, _U32.unpack_from
    while pos + 8 <= n:  # the loop of _element_header, inlined: it runs for every element of every slice
        group, elem = u16x2(buf, pos)
        tag = group << 16 | elem
        if tag > last:
            break
        if implicit:
            vr, length, vpos = None, u32(buf, pos + 4)[0], pos + 8
        else:
            vr = buf[pos + 4:pos + 6]
            if vr in long_vrs:
                length, vpos = u32(buf, pos + 8)[0], pos + 12
            elif 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90:
                length, vpos = u16(buf, pos + 6)[0], pos + 8
            else:
                raise _Malformed
        if length == undefined:
            if tag == _PIXEL_DATA:
                return None  # encapsulated pixel data in an uncompressed syntax: let pydicom decide
            pos = _skip_sequence(buf, vpos, implicit or vr == b"UN")
            continue
        if tag in _PIXELS:  # not copied: read later straight into the volume (the last wanted element)
            t = BaseTag(tag)
            elements[t] = RawDataElement(t, None if vr is None else vr.decode("ascii"), length,
                                         PixelDataAt(path, vpos, length, max(0, size - vpos)), vpos, implicit,
                                         True, True, False)
            break
        if tag in wanted:
            if partial and vpos + length > n:
                raise _Malformed  # the value runs past the head: scan the whole file
            t = BaseTag(tag)  # value shorter than length in a truncated file: the reader says so
            elements[t] = RawDataElement(t, None if vr is None else vr.decode("ascii"), length,
                                         buf[vpos:vpos + length], vpos, implicit, True, True, False)
        pos = vpos + length
    else:
        if partial:
            raise _Malformed  # ran off the head before the pixel data: scan the whole file
    ds = Dataset(elements)
    ds.file_meta = _meta(ts)
    ds.set_original_encoding(implicit, True)
    return ds
