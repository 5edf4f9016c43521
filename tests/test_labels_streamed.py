"""The streamed NIfTI label reader against SimpleITK's own reading, on real and rotated/oblique files."""

from __future__ import annotations

import gzip
import math

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from test_labels_review import _oracle

from petfeat.errors import LabelError, PetfeatWarning
from petfeat.io import labels as L
from petfeat.io.dicom import Geometry
from petfeat.io.labels import read_label_box, read_streamed, read_totalsegmentator, resample_box


def assert_same_as_sitk(path):
    """read_streamed's box image holds exactly SimpleITK's voxels there, zeros elsewhere, same geometry and counts."""
    ref = sitk.ReadImage(str(path))
    full = sitk.GetArrayFromImage(ref)
    got = read_streamed(path)
    assert got is not None, path
    img, found = got
    assert img.GetSpacing() == ref.GetSpacing()
    assert img.GetDirection() == ref.GetDirection()
    assert img.GetPixelID() == ref.GetPixelID()
    idx = ref.TransformPhysicalPointToIndex(img.GetOrigin())
    np.testing.assert_allclose(img.GetOrigin(), ref.TransformIndexToPhysicalPoint(idx), atol=1e-9)
    np.testing.assert_array_equal(found.counts, np.bincount(full.ravel()))
    x, y, z = idx
    sx, sy, sz = img.GetSize()
    part = sitk.GetArrayFromImage(img)
    if found.box is None:
        assert not full.any()
        return
    np.testing.assert_array_equal(part, full[z:z + sz, y:y + sy, x:x + sx])
    rest = full.copy()
    rest[z:z + sz, y:y + sy, x:x + sx] = 0
    assert not rest.any()
    nz = np.nonzero(part)
    assert found.box == tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)


def test_real_totalsegmentator_files_equal_sitk(reference_dir):
    folder = reference_dir / "totalsegmentator" / "example_seg_fast"
    files = sorted(folder.glob("*.nii.gz")) + [reference_dir / "totalsegmentator" / "example_seg_ml.nii.gz"]
    assert len(files) > 100
    for path in files:
        assert_same_as_sitk(path)


def _oblique(angle_deg: float, axis: int) -> tuple[float, ...]:
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    r = np.eye(3)
    i, j = [k for k in range(3) if k != axis]
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return tuple(float(v) for v in r.ravel())


def _blobs(shape, dtype, rng, n=4, edge=False):
    arr = np.zeros(shape, dtype)
    for k in range(1, n + 1):
        c = [rng.uniform(0, s) for s in shape]
        z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
        inside = ((z - c[0]) / 3) ** 2 + ((y - c[1]) / 5) ** 2 + ((x - c[2]) / 4) ** 2 <= 1
        arr[inside] = k * (300 if dtype == np.uint16 else 1)
    if edge:  # labelled voxels on the first and last slice, row and column
        arr[0, 0, 0] = arr[-1, -1, -1] = 1
    return arr


@pytest.mark.parametrize("case", ["sitk_oblique_gz", "sitk_flipped_u16_raw", "nibabel_sform_oblique",
                                  "nibabel_qform_only", "edge_voxels"])
def test_rotated_and_oblique_synthetic_files_equal_sitk(tmp_path, case, monkeypatch):
    monkeypatch.setattr(L, "STREAM_CHUNK_BYTES", 3 * 40 * 33)  # chunks of 3 slices: boxes cross chunk borders
    rng = np.random.default_rng(len(case))
    shape = (37, 40, 33)
    if case.startswith("sitk") or case == "edge_voxels":
        dtype = np.uint16 if "u16" in case else np.uint8
        img = sitk.GetImageFromArray(_blobs(shape, dtype, rng, edge=case == "edge_voxels"))
        img.SetSpacing((0.8, 1.1, 2.5))
        img.SetOrigin((-31.5, 12.25, 100.0))
        d = np.asarray(_oblique(23.0, 2)).reshape(3, 3) @ np.asarray(_oblique(-11.0, 0)).reshape(3, 3)
        if "flipped" in case:
            d = np.diag([-1.0, 1.0, -1.0]) @ np.eye(3)[[1, 0, 2]]
        img.SetDirection(tuple(float(v) for v in d.ravel()))
        path = tmp_path / ("lab.nii" if "raw" in case else "lab.nii.gz")
        sitk.WriteImage(img, str(path), "raw" not in case)
    else:
        arr = _blobs(shape, np.uint8, rng).transpose(2, 1, 0)
        rot = np.asarray(_oblique(37.0, 1)).reshape(3, 3) @ np.diag([0.9, 1.2, 3.0])
        affine = np.eye(4)
        affine[:3, :3] = rot
        affine[:3, 3] = [10.0, -20.0, 5.0]
        nimg = nib.Nifti1Image(arr, affine)
        if case == "nibabel_qform_only":
            nimg.header.set_sform(None, code=0)
            nimg.header.set_qform(affine, code=1)
        else:
            nimg.header.set_qform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)  # SimpleITK prefers the sform here
            nimg.header.set_sform(affine, code=2)
        path = tmp_path / "lab.nii.gz"
        nib.save(nimg, path)
    assert_same_as_sitk(path)


def test_folder_on_pet_grid_equals_resampling_the_whole_file(tmp_path, monkeypatch):
    """What the folder reader places on the PET grid from the box equals resampling SimpleITK's whole image."""
    monkeypatch.setattr(L, "STREAM_CHUNK_BYTES", 2 * 40 * 33)
    rng = np.random.default_rng(5)
    folder = tmp_path / "seg"
    folder.mkdir()
    for name in ("liver", "spleen", "kidney_left"):
        img = sitk.GetImageFromArray(_blobs((37, 40, 33), np.uint8, rng, n=1).astype(bool).astype(np.uint8))
        img.SetSpacing((0.9, 0.9, 1.5))
        img.SetOrigin((-5.0, -3.0, 2.0))
        img.SetDirection(_oblique(17.0, 2))
        sitk.WriteImage(img, str(folder / f"{name}.nii.gz"), True)
    geometry = Geometry((24, 14, 13), (2.5, 2.9, 2.7), (-4.0, -2.0, 1.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.warns(PetfeatWarning, match="beyond the PET field of view"):  # the blobs reach past the PET grid
        layers = read_totalsegmentator(folder, geometry)
    notes = {n: v["outside_fov_fraction"] for layer in layers for n, v in layer.notes.items()}
    placed = 0
    for path in sorted(folder.glob("*.nii.gz")):
        name = path.name.removesuffix(".nii.gz")
        ref = sitk.ReadImage(str(path))
        outside = _oracle(ref, geometry)  # from the labelled box the reader kept: the same as from the whole file
        assert notes[name] == pytest.approx(outside[1] / np.count_nonzero(sitk.GetArrayViewFromImage(ref)), abs=1e-12)
        want = np.zeros(geometry.shape, bool)
        hit = resample_box(ref, geometry, sitk.sitkNearestNeighbor, ref.GetPixelID(),
                           L.census(ref).box)
        if hit is not None:
            want[hit[0]] = hit[1] > 0
        got = np.zeros(geometry.shape, bool)
        for layer in layers:
            for i, n in layer.names.items():
                if n == name:
                    got |= layer.array == i
        np.testing.assert_array_equal(got, want)
        placed += int(want.any())
    assert placed >= 2


def test_scaled_big_endian_and_signed_files_are_left_to_simpleitk(tmp_path):
    arr = np.zeros((6, 7, 8), np.uint8)
    arr[2:4, 3:5, 1:6] = 2
    img = nib.Nifti1Image(arr.transpose(2, 1, 0), np.eye(4))
    img.header["scl_slope"] = 2.0
    img.header["scl_inter"] = 0.0
    nib.save(img, tmp_path / "scaled.nii.gz")
    assert read_streamed(tmp_path / "scaled.nii.gz") is None
    signed = nib.Nifti1Image(arr.astype(np.int16).transpose(2, 1, 0), np.eye(4))
    nib.save(signed, tmp_path / "signed.nii.gz")
    assert read_streamed(tmp_path / "signed.nii.gz") is None
    with pytest.warns(PetfeatWarning, match="read as unsigned"):  # read_checked's own handling of signed ids
        _, found = read_label_box(tmp_path / "signed.nii.gz")
    np.testing.assert_array_equal(found.counts, np.bincount(arr.ravel()))


def _write(tmp_path, name="lab.nii.gz"):
    arr = np.zeros((20, 128, 128), np.uint8)
    arr[5:9, 4:10, 3:7] = 3
    arr[12:] = np.random.default_rng(0).integers(0, 4, (8, 128, 128))  # incompressible: a cut lands in the voxels
    img = sitk.GetImageFromArray(arr)
    path = tmp_path / name
    sitk.WriteImage(img, str(path), True)
    return path, arr


def test_streamed_reader_refuses_truncated_and_corrupt_streams(tmp_path):
    path, _ = _write(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(LabelError, match="truncated or corrupt gzip stream"):
        read_streamed(cut)
    bad = bytearray(data)
    bad[-8] ^= 0xFF  # the CRC-32 in the gzip trailer
    (tmp_path / "crc.nii.gz").write_bytes(bytes(bad))
    with pytest.raises(LabelError, match="truncated or corrupt gzip stream"):
        read_streamed(tmp_path / "crc.nii.gz")
    raw = gzip.decompress(data)
    (tmp_path / "long.nii.gz").write_bytes(gzip.compress(raw + bytes(L.TRAILING_BYTES_ALLOWED + 10)))
    with pytest.raises(LabelError, match="inflates beyond the size its NIfTI header"):
        read_streamed(tmp_path / "long.nii.gz")


def test_streamed_reader_reads_concatenated_members_and_empty_files(tmp_path):
    path, arr = _write(tmp_path)
    raw = gzip.decompress(path.read_bytes())
    two = tmp_path / "two.nii.gz"
    two.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    img, found = read_streamed(two)
    np.testing.assert_array_equal(found.counts, np.bincount(arr.ravel()))
    assert sitk.GetArrayFromImage(img).sum() == arr.sum()
    empty = sitk.GetImageFromArray(np.zeros((5, 6, 7), np.uint8))
    sitk.WriteImage(empty, str(tmp_path / "empty.nii.gz"), True)
    img, found = read_streamed(tmp_path / "empty.nii.gz")
    assert found.box is None and found.counts.tolist() == [5 * 6 * 7]


def test_streamed_reader_allocates_no_whole_image(tmp_path):
    """A small class in a large grid: the returned image is its box, not the grid."""
    arr = np.zeros((200, 128, 128), np.uint8)
    arr[90:95, 60:70, 10:12] = 1
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "small.nii.gz"), True)
    img, found = read_streamed(tmp_path / "small.nii.gz")
    assert img.GetSize() == (4, 12, 7)
    assert found.counts[1] == 100
