"""Label files that are cut short, corrupt or declare (or inflate to) absurd sizes are refused, naming the file."""

from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from petfeat.errors import LabelError
from petfeat.io.labels import (
    TRAILING_BYTES_ALLOWED,
    check_label_file,
    crc32_zeros,
    max_label_bytes,
    nifti_layout,
    read_checked,
    read_label_image,
)


@pytest.fixture(scope="module")
def liver(reference_dir):
    """TotalSegmentator's real liver class file (gzipped NIfTI-1, 122 x 101 x 30 uint8)."""
    return reference_dir / "totalsegmentator" / "example_seg_fast" / "liver.nii.gz"


def _voxels(path) -> int:
    return int((sitk.GetArrayViewFromImage(sitk.ReadImage(str(path))) > 0).sum())


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_gzip_stream_is_refused_where_simpleitk_reads_zeros(liver, tmp_path, keep):
    raw = liver.read_bytes()
    cut = tmp_path / "liver.nii.gz"
    cut.write_bytes(raw[:int(len(raw) * keep)])
    assert _voxels(cut) < _voxels(liver)  # SimpleITK alone: no error, voxels lost
    with pytest.raises(LabelError, match=r"liver.nii.gz: truncated or corrupt gzip stream \(expected 370012 bytes, "
                                         r"got \d+\)"):
        read_label_image(cut)


def test_truncated_uncompressed_nifti_is_refused(liver, tmp_path):
    whole = gzip.decompress(liver.read_bytes())
    cut = tmp_path / "liver.nii"
    cut.write_bytes(whole[:len(whole) * 2 // 3])
    with pytest.raises(LabelError, match=rf"liver.nii: truncated NIfTI file \(expected {len(whole)} bytes, "
                                         rf"got {len(whole) * 2 // 3}\)"):
        read_label_image(cut)


def test_stream_that_fails_its_crc_is_refused(liver, tmp_path):
    """A well-formed deflate stream whose voxels differ from what the trailer's CRC-32 was computed over:
    SimpleITK reads it without an error (and with voxels missing)."""
    whole = bytearray(gzip.decompress(liver.read_bytes()))
    crc = zlib.crc32(whole)
    whole[-1000] ^= 1  # one voxel changed
    bad = bytearray(gzip.compress(bytes(whole)))
    struct.pack_into("<I", bad, len(bad) - 8, crc)
    (tmp_path / "liver.nii.gz").write_bytes(bad)
    assert _voxels(tmp_path / "liver.nii.gz") != _voxels(liver) + 1
    with pytest.raises(LabelError, match=r"liver.nii.gz: truncated or corrupt gzip stream .*incorrect data check"):
        read_label_image(tmp_path / "liver.nii.gz")


def _nifti(dims, datatype=2, bitpix=8, version=1) -> bytes:
    """A bare single-file NIfTI header (no data)."""
    if version == 1:
        h = bytearray(352)
        struct.pack_into("<i", h, 0, 348)
        struct.pack_into("<8h", h, 40, len(dims), *dims, *([1] * (7 - len(dims))))
        struct.pack_into("<hh", h, 70, datatype, bitpix)
        struct.pack_into("<fff", h, 76, 1.0, 1.0, 1.0)  # pixdim[0..2]
        struct.pack_into("<f", h, 80, 1.0)
        struct.pack_into("<f", h, 108, 352.0)
        h[344:348] = b"n+1\x00"
        return bytes(h)
    h = bytearray(544)
    struct.pack_into("<i", h, 0, 540)
    h[4:12] = b"n+2\x00\r\n\x1a\n"
    struct.pack_into("<hh", h, 12, datatype, bitpix)
    struct.pack_into("<8q", h, 16, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<q", h, 168, 544)
    return bytes(h)


@pytest.mark.parametrize("dims, version", [((65535, 65535, 65535), 2), ((32767, 32767, 32767), 1)])
def test_header_declaring_a_huge_volume_is_refused_before_reading(tmp_path, dims, version):
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(_nifti(dims, version=version) + bytes(1 << 20)))  # a 1 MB file
    shape = " x ".join(map(str, dims))
    with pytest.raises(LabelError, match=rf"bomb.nii.gz: the header declares {shape} voxels, 1 byte each .*above the 4 "
                                         r"GB limit.*PETFEAT_MAX_LABEL_GB"):
        read_label_image(path)


def test_size_limit_comes_from_the_environment(liver, monkeypatch):
    monkeypatch.setenv("PETFEAT_MAX_LABEL_GB", "0.0001")  # 107 kB < the liver file's 370 kB
    assert max_label_bytes() == int(0.0001 * 2**30)
    with pytest.raises(LabelError, match=r"122 x 101 x 30 voxels, 1 byte each"):
        read_label_image(liver)
    monkeypatch.setenv("PETFEAT_MAX_LABEL_GB", "lots")
    with pytest.raises(LabelError, match="PETFEAT_MAX_LABEL_GB='lots' is not a positive number"):
        read_label_image(liver)
    monkeypatch.setenv("PETFEAT_MAX_LABEL_GB", "8")
    assert read_label_image(liver).GetSize() == (122, 101, 30)


@pytest.mark.parametrize("isize", ["true", "declared"])
def test_stream_inflating_beyond_its_declared_size_stops_there(tmp_path, isize, monkeypatch):
    """A 10 x 10 x 10 header followed by 64 MB of zeros (a 64 kB file): refused, having inflated at most the
    declared size, the allowed trailing bytes and one 16 MiB step -- whether the gzip trailer's length gives it
    away or was forged to the declared length (then SimpleITK reads the declared voxels, and the CRC fails)."""
    path = tmp_path / "bomb.nii.gz"
    head = _nifti((10, 10, 10))
    stream = bytearray(gzip.compress(head + bytes(1000) + bytes(64 << 20)))
    if isize == "declared":
        struct.pack_into("<I", stream, len(stream) - 4, 352 + 1000)
    path.write_bytes(stream)
    assert path.stat().st_size < 100_000
    inflated = []

    def counting(real):
        class Counting:
            def __init__(self, *a, **kw):
                self.d = real(*a, **kw)

            def decompress(self, data, max_length=0):
                out = self.d.decompress(data, max_length)
                inflated.append(len(out))
                return out

            def __getattr__(self, name):
                return getattr(self.d, name)

        return Counting

    from petfeat.io import labels

    for module in {zlib, labels._inflate_zlib}:  # the standard zlib and the inflater of the voxels (zlib-ng)
        monkeypatch.setattr(module, "decompressobj", counting(module.decompressobj))
    with pytest.raises(LabelError, match=r"bomb.nii.gz: the gzip stream inflates beyond the size its NIfTI header "
                                         r"declares \(dims 10 x 10 x 10, 1352 bytes\)"):
        read_label_image(path)
    assert 1352 + TRAILING_BYTES_ALLOWED < sum(inflated) <= 1352 + TRAILING_BYTES_ALLOWED + (16 << 20)


def test_sound_files_read_as_simpleitk_reads_them(liver, tmp_path):
    """Big-endian, uncompressed, several gzip members, padded stream: the same image as SimpleITK's. (This
    SimpleITK does not read NIfTI-2; its layout is parsed for the size limit.)"""
    import nibabel as nib

    img = nib.load(str(liver))
    data = np.asarray(img.dataobj)
    big = nib.Nifti1Header(endianness=">")
    big.set_data_dtype(np.uint16)
    variants = {
        "be.nii.gz": nib.Nifti1Image(data.astype(np.uint16), img.affine, big),
        "plain.nii": nib.Nifti1Image(data, img.affine),
    }
    for name, v in variants.items():
        nib.save(v, str(tmp_path / name))
    whole = gzip.decompress(liver.read_bytes())
    (tmp_path / "members.nii.gz").write_bytes(gzip.compress(whole[:5000]) + gzip.compress(whole[5000:]))
    (tmp_path / "padded.nii.gz").write_bytes(gzip.compress(whole + bytes(4096)))
    nib.save(nib.Nifti2Image(data, img.affine), str(tmp_path / "v2.nii.gz"))
    v2 = nifti_layout(tmp_path / "v2.nii.gz")
    assert (v2.dims, v2.bitpix, v2.vox_offset >= 544, v2.big_endian) == ((122, 101, 30), 8, True, False)
    assert nifti_layout(tmp_path / "be.nii.gz").big_endian
    want = sitk.GetArrayFromImage(sitk.ReadImage(str(liver)))
    for name in [*variants, "members.nii.gz", "padded.nii.gz"]:
        theirs = sitk.ReadImage(str(tmp_path / name))
        got, found = read_checked(tmp_path / name)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(got), want, err_msg=name)
        assert got.GetSpacing() == theirs.GetSpacing() and got.GetOrigin() == theirs.GetOrigin(), name
        assert found.counts[1] == (want > 0).sum()


def test_nrrd_limit_and_truncation(tmp_path, monkeypatch):
    (tmp_path / "huge.nrrd").write_bytes(b"NRRD0004\ntype: unsigned short\ndimension: 3\nsizes: 65535 65535 65535\n"
                                         b"encoding: gzip\n\n" + gzip.compress(bytes(1000)))
    with pytest.raises(LabelError, match=r"huge.nrrd: the header declares 65535 x 65535 x 65535 voxels, 2 bytes each"):
        read_label_image(tmp_path / "huge.nrrd")
    arr = np.zeros((20, 30, 40), np.uint8)
    arr[5:15, 10:20, 10:30] = 2
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "l.nrrd"), True)
    assert check_label_file(tmp_path / "l.nrrd") is None  # within the limit: SimpleITK reads it
    raw = (tmp_path / "l.nrrd").read_bytes()
    (tmp_path / "cut.nrrd").write_bytes(raw[:len(raw) * 2 // 3])
    with pytest.raises(LabelError, match="cut.nrrd: cannot be read as an image"):  # SimpleITK refuses these itself
        read_label_image(tmp_path / "cut.nrrd")
    start = raw.index(b"\n\n") + 2  # and a gzip stream whose CRC-32 fails
    whole = bytearray(gzip.decompress(raw[start:]))
    crc = zlib.crc32(whole)
    whole[7000] ^= 1
    bad = bytearray(gzip.compress(bytes(whole)))
    struct.pack_into("<I", bad, len(bad) - 8, crc)
    (tmp_path / "crc.nrrd").write_bytes(raw[:start] + bytes(bad))
    with pytest.raises(LabelError, match="crc.nrrd: cannot be read as an image"):
        read_label_image(tmp_path / "crc.nrrd")


def test_crc32_of_zero_runs():
    rng = np.random.default_rng(3)
    for n in [0, 1, 7, 4096, 1_000_003]:
        for start in [0, 1, 0xFFFFFFFF, int(rng.integers(0, 2**32))]:
            assert crc32_zeros(start, n) == zlib.crc32(bytes(n), start)


def test_sound_gzip_files_are_not_inflated_twice(reference_dir, liver, tmp_path, monkeypatch):
    """TotalSegmentator's own files (the --ml file with 48 padding bytes included) pass on the CRC over the
    voxels SimpleITK read; only a stream whose trailer cannot speak for it (several members) is inflated, once."""
    import petfeat.io.labels as labels

    calls = []
    real = labels.inflate_check
    monkeypatch.setattr(labels, "inflate_check", lambda p, lay: calls.append(p.name) or real(p, lay))
    read_checked(liver)
    read_checked(reference_dir / "totalsegmentator" / "example_seg_ml.nii.gz")
    assert calls == []
    whole = gzip.decompress(liver.read_bytes())
    (tmp_path / "members.nii.gz").write_bytes(gzip.compress(whole[:5000]) + gzip.compress(whole[5000:]))
    read_checked(tmp_path / "members.nii.gz")
    assert calls == ["members.nii.gz"]
