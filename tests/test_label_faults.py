"""Planted label-file faults: corrupt gzip streams, bad headers, symbolic links, 4-D files, odd grids, NaN voxels.

Each test feeds the damaged file and checks that petfeat refuses it naming the file (and the fix), with nothing
from SimpleITK's C++ libraries on the console.
"""

from __future__ import annotations

import gzip
import os
import struct
import warnings

import nibabel as nib
import numpy as np
import pytest

from petfeat.errors import LabelError
from petfeat.io.dicom import Geometry
from petfeat.io.labels import read_checked, read_label_box, read_labels, read_lesion_mask, read_totalsegmentator

GRID = Geometry((20, 24, 24), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
AFFINE = np.diag([-4.0, -4.0, 4.0, 1.0])  # RAS: LPS axes along +x, +y, +z, as GRID


def _save(path, arr, affine=AFFINE):
    nib.save(nib.Nifti1Image(arr, affine), path)
    return path


def _lesions(path):
    """A uint16 lesion mask (x, y, z) with two lesions near the start: its end is a long run of zeros."""
    a = np.zeros((24, 24, 20), np.uint16)
    a[3:8, 4:9, 2:6] = 1
    a[10:12, 10:13, 3:5] = 2
    return _save(path, a)


def _gunzipped(path):
    return bytearray(gzip.decompress(path.read_bytes()))


def test_every_bit_flip_gzip_rejects_is_refused(tmp_path):
    """Every single-bit flip of a lesion mask's .nii.gz that Python's gzip rejects is refused by the lesion and the
    label readers. A flip that ends the deflate stream early (SimpleITK read the rest as zeros, and the zeros gave
    the stored CRC) or that breaks the NIfTI magic (read as Analyze, a different mask) was accepted before."""
    good_path = _lesions(tmp_path / "lesions.nii.gz")
    good = read_lesion_mask(good_path, GRID)
    assert good.sum() == 5 * 5 * 4 + 2 * 3 * 2
    orig = good_path.read_bytes()
    bad = tmp_path / "bad.nii.gz"
    corrupt = accepted = 0
    for pos in range(len(orig)):
        for bit in range(8):
            b = bytearray(orig)
            b[pos] ^= 1 << bit
            try:
                gzip.decompress(bytes(b))
                continue
            except Exception:  # noqa: BLE001 - gzip raises several types for corrupt streams
                corrupt += 1
            bad.write_bytes(bytes(b))
            for read in (lambda: read_lesion_mask(bad, GRID), lambda: read_checked(bad), lambda: read_label_box(bad)):
                try:
                    read()
                except LabelError as exc:
                    assert "bad.nii.gz" in str(exc)
                else:
                    accepted += 1
    assert corrupt > 1000  # of 8 x 267 flips
    assert accepted == 0


def test_stream_that_ends_early_over_zeros_is_refused(tmp_path):
    """A stream whose last deflate block is cut off (its trailer still at the end of the file): the lost voxels
    were zeros, so what SimpleITK read had the stored CRC. The stream itself fails zlib's CRC check: refused."""
    path = _lesions(tmp_path / "lesions.nii.gz")
    whole = bytes(_gunzipped(path))
    head, tail = whole[: len(whole) - 4000], whole[len(whole) - 4000:]
    assert not any(tail)
    import zlib

    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = c.compress(head) + c.flush(zlib.Z_FINISH)  # the stream ends after ``head``
    stream = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + body + struct.pack("<II", zlib.crc32(whole), len(whole))
    (tmp_path / "short.nii.gz").write_bytes(stream)
    with pytest.raises(LabelError, match=r"short.nii.gz: truncated or corrupt gzip stream"):
        read_lesion_mask(tmp_path / "short.nii.gz", GRID)


@pytest.mark.parametrize("where, value, says", [
    (344, b"n+2\x00", r"not a single-file NIfTI header \(its magic \(bytes 344-347\) is b'n\+2\\x00'"),
    (344, b"ni1\x00", r"not a single-file NIfTI header .*Analyze or \.hdr/\.img header under a \.nii name"),
    (0, struct.pack("<i", 349), r"not a single-file NIfTI header \(it begins with sizeof_hdr 349"),
    (70, struct.pack("<h", 3), r"declares datatype 3 with bitpix 16, which is not a NIfTI pixel type"),
    (40, struct.pack("<h", 9), r"declares dim \[9,"),
    (80, struct.pack("<f", 0.0), r"gives pixdim\[1\] = 0: the voxel size is unknown \(SimpleITK would read 1 mm\)"),
    (292, struct.pack("<f", float("inf")), r"sform \(srow_x/y/z, in use: sform_code 2\) holds values that are not "
                                           r"finite"),
])
def test_bad_headers_are_refused_before_simpleitk_prints(tmp_path, capfd, where, value, says):
    """A header SimpleITK would read as Analyze (a warning naming the file's full path on the console), refuse
    with ``** ERROR: nifti_convert_nhdr2nim`` lines or a matrix dump on the console, or read with 1 mm voxels
    (pixdim 0, with a warning naming the file) is refused by petfeat's own message, and nothing reaches the
    console."""
    raw = _gunzipped(_lesions(tmp_path / "lesions.nii.gz"))
    raw[where:where + len(value)] = value
    (tmp_path / "hdr.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    capfd.readouterr()
    path = tmp_path / "hdr.nii.gz"
    for read in (lambda: read_lesion_mask(path, GRID), lambda: read_label_box(path)):
        with pytest.raises(LabelError, match=r"hdr.nii.gz: .*" + says):
            read()
    out = capfd.readouterr()
    assert out.err == "" and out.out == ""


def test_four_d_class_file_is_refused_naming_it(tmp_path):
    """A class file of two volumes gave a ValueError from the census that named no file; one volume is read."""
    a = np.zeros((24, 24, 20), np.uint8)
    a[4:9, 4:9, 4:9] = 1
    seg = tmp_path / "seg"
    seg.mkdir()
    _save(seg / "spleen.nii.gz", a)
    _save(seg / "liver.nii.gz", np.stack([a, a], -1))
    with pytest.raises(LabelError, match=r"seg/liver.nii.gz: a label image must be 3-D; the NIfTI header declares "
                                         r"4-D \(24 x 24 x 20 x 2 voxels\)"):
        read_totalsegmentator(seg, GRID)
    _save(seg / "liver.nii.gz", a[..., None])
    layers = read_totalsegmentator(seg, GRID)
    assert sorted(n for la in layers for n in la.names.values()) == ["liver", "spleen"]


def test_two_d_image_is_refused_naming_it(tmp_path):
    """A 2-D label image (read by SimpleITK) cannot address a 3-D PET grid."""
    _save(tmp_path / "flat.nii.gz", np.ones((24, 24), np.uint8), np.diag([-4.0, -4.0, 1.0, 1.0]))
    with pytest.raises(LabelError, match=r"flat.nii.gz: a label image must be 3-D; this one is 2-D \(24 x 24 voxels\)"):
        read_checked(tmp_path / "flat.nii.gz")


def _study(tmp_path, name):
    a = np.zeros((24, 24, 20), np.uint8)
    a[4:9, 4:9, 4:9] = 1
    seg = tmp_path / name / "seg"
    seg.mkdir(parents=True)
    _save(seg / "spleen.nii.gz", a)
    return seg


@pytest.mark.parametrize("kind", ["other_study", "outside", "loop", "dangling"])
def test_symlinked_class_files_are_not_followed(tmp_path, kind):
    """seg/ links: to another study's liver (measured as this patient's before), to a file outside any study (read
    before), a loop (a raw OSError 'Too many levels of symbolic links' before), a dangling link: each refused,
    naming the link and the fix."""
    seg = _study(tmp_path, "A")
    other = _study(tmp_path, "B")
    _save(other / "liver.nii.gz", np.ones((24, 24, 20), np.uint8))
    if kind == "other_study":
        os.symlink(other / "liver.nii.gz", seg / "liver.nii.gz")
        says = r"liver.nii.gz \(a link to a file\)"
    elif kind == "outside":
        (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
        os.symlink(tmp_path / "passwd", seg / "liver.nii.gz")
        says = r"liver.nii.gz \(a link to a file\)"
    elif kind == "loop":
        os.symlink("y.nii.gz", seg / "x.nii.gz")
        os.symlink("x.nii.gz", seg / "y.nii.gz")
        says = r"x.nii.gz \(a link loop\), y.nii.gz \(a link loop\)"
    else:
        os.symlink("gone.nii.gz", seg / "liver.nii.gz")
        says = r"liver.nii.gz \(a dangling link\)"
    with pytest.raises(LabelError, match=r"A/seg: class files that are symbolic links are not followed .*: " + says
                       + r"\. Replace each link by the file it stands for \(cp -L\), or remove it\."):
        read_labels(seg, GRID)


def test_linked_folder_itself_is_read(tmp_path):
    """The label source itself may be a link (a manifest's path): only links inside the folder are refused."""
    seg = _study(tmp_path, "A")
    os.symlink(seg, tmp_path / "seg_link")
    layers = read_labels(tmp_path / "seg_link", GRID)
    assert [n for la in layers for n in la.names.values()] == ["spleen"]


def test_unopenable_label_file_names_file_and_fix(tmp_path):
    """A label path the system does not open as a file gives a LabelError with the reason and the fix, not an
    OSError (a folder named like a file here; mode 000 gives the same path with 'chmod a+r')."""
    (tmp_path / "odd.nii.gz").mkdir()
    with pytest.raises(LabelError, match=r"odd.nii.gz: cannot be opened \(Is a directory\); it is a folder"):
        read_label_box(tmp_path / "odd.nii.gz")


def test_class_file_on_another_grid_is_refused_naming_it(tmp_path):
    """One class file with the same affine but another matrix put its class in the wrong place, silently."""
    seg = _study(tmp_path, "A")
    _save(seg / "kidney_left.nii.gz", np.pad(np.zeros((24, 24, 20), np.uint8), ((0, 0), (0, 0), (0, 1))) + 0)
    a = np.zeros((24, 24, 20), np.uint8)
    a[10:14, 10:14, 10:14] = 1
    _save(seg / "aorta.nii.gz", a)
    b = np.zeros((30, 24, 20), np.uint8)
    b[12:16, 4:9, 4:9] = 1
    _save(seg / "liver.nii.gz", b)
    with pytest.raises(LabelError) as err:
        read_totalsegmentator(seg, GRID)
    msg = str(err.value)
    assert "A/seg: class files on another grid than the folder's other 2 (24 x 24 x 20 voxels of 4 x 4 x 4 mm" in msg
    assert "kidney_left.nii.gz: 24 x 24 x 21 voxels" in msg and "liver.nii.gz: 30 x 24 x 20 voxels" in msg
    assert "aorta.nii.gz" not in msg and "spleen.nii.gz" not in msg
    assert "Run TotalSegmentator again on this study's CT, or remove the odd file." in msg


@pytest.mark.parametrize("gz", [True, False])
def test_nan_voxels_are_refused_saying_nan(tmp_path, gz):
    """float32 ids with NaN for background: SimpleITK reads NaN as 0, so the file was read with a note about float
    ids that never mentioned the NaN. petfeat reads the voxels itself and refuses, counting the NaN voxels."""
    a = np.full((24, 24, 20), np.nan, np.float32)
    a[4:9, 4:9, 4:9] = 1
    path = _save(tmp_path / ("liver.nii.gz" if gz else "liver.nii"), a)
    with pytest.raises(LabelError, match=r"liver.nii(.gz)?: pixel type 32-bit float with non-finite values \(NaN in "
                                         r"11395 voxels\) \(NaN is not read as background: if it stands for "
                                         r"background, set those voxels to 0\)"):
        read_label_box(path)


def test_float_ids_read_by_petfeat_match_simpleitk(tmp_path):
    """Whole-number ids in float, signed and big-endian files, inflated by petfeat: the same voxels and geometry
    as SimpleITK's own read (which then reads only the header)."""
    import SimpleITK as sitk

    from petfeat.io.labels import LabelNote

    rng = np.random.default_rng(1)
    ids = rng.integers(0, 4, (24, 24, 20))
    c, s = np.cos(0.1), np.sin(0.1)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([-3.0, -3.5, 4.5])
    affine[:3, 3] = (10, -20, 30)
    for dtype in (np.float32, np.int16, ">i2", ">f8"):
        path = tmp_path / f"ids_{np.dtype(dtype).str[1:]}_{np.dtype(dtype).byteorder}.nii.gz"
        img = nib.Nifti1Image(ids.astype(dtype), affine)
        img.set_data_dtype(np.dtype(dtype))
        nib.save(img, path)
        want = sitk.ReadImage(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LabelNote)
            got, found = read_checked(path)
        assert np.array_equal(sitk.GetArrayViewFromImage(got), sitk.GetArrayViewFromImage(want))
        assert got.GetOrigin() == want.GetOrigin() and got.GetSpacing() == want.GetSpacing()
        assert got.GetDirection() == want.GetDirection()
        assert found.counts.tolist() == np.bincount(ids.ravel()).tolist()


def test_label_cache_does_not_hide_links_added_after_a_read(tmp_path):
    """A link loop added to a folder the cache holds left the key unchanged (only files were in it): the stored
    layers came back and the refusal of links never ran."""
    from petfeat.label_cache import LabelCache

    seg = _study(tmp_path, "A")
    cache = LabelCache(tmp_path / "cache")
    assert [n for la in cache.read_labels(seg, GRID) for n in la.names.values()] == ["spleen"]
    os.symlink("y.nii.gz", seg / "x.nii.gz")
    os.symlink("x.nii.gz", seg / "y.nii.gz")
    with pytest.raises(LabelError, match=r"A/seg: class files that are symbolic links are not followed"):
        cache.read_labels(seg, GRID)
    assert (cache.hits, cache.misses) == (0, 2)


def test_unreadable_label_and_lesion_files_name_file_and_fix(tmp_path, monkeypatch):
    """A file without read permission (mode 000; simulated, since root reads it anyway) gave a raw PermissionError
    from the label and lesion readers; now the reason and the fix, naming the file."""
    import builtins
    import errno

    import petfeat.io.labels as labels

    path = _lesions(tmp_path / "lesions.nii.gz")

    def denied(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(labels, "open", denied, raising=False)
    fix = r"lesions.nii.gz: cannot be opened \(Permission denied\); give the account that runs petfeat read access"
    for read in (lambda: read_lesion_mask(path, GRID), lambda: read_labels(path, GRID), lambda: read_label_box(path)):
        with pytest.raises(LabelError, match=fix):
            read()


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_nifti2_file_is_refused_with_the_conversion_to_do(tmp_path, suffix):
    """SimpleITK reads no NIfTI-2: the refusal was its own 'Unable to determine ImageIO reader', without a fix."""
    import nibabel as nib

    from petfeat.io.labels import read_checked

    a = np.zeros((6, 7, 8), np.uint8)
    a[2:4, 2:4, 2:4] = 1
    path = tmp_path / f"mask{suffix}"
    nib.save(nib.Nifti2Image(a, np.eye(4)), str(path))
    with pytest.raises(LabelError, match=r"mask\.nii(\.gz)?: a NIfTI-2 file, which SimpleITK .* does not read\. "
                                         r"Save it as NIfTI-1 \(nibabel: nib\.save\(nib\.Nifti1Image"):
        read_checked(path)
