"""Several TotalSegmentator tasks of one study never erase one another (total's skull vs the parotid glands)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from petfeat.io.dicom import Geometry
from petfeat.io.labels import read_labels, read_totalsegmentator_folder

#: The PET grid (4 mm) and the CT grid the classes are drawn on (2 mm, shifted by a fraction of a voxel).
PET = Geometry((30, 40, 40), (4.0, 4.0, 4.0), (-80.0, -80.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
CT_SHAPE, CT_SPACING, CT_ORIGIN = (58, 78, 78), 2.0, (-78.7, -78.3, 1.1)

#: name -> (centre x, y, z mm, radii mm); the skull's lower edge cuts into the parotid glands
CLASSES = {
    "total": {"skull": ((0, 0, 109), (72, 70, 42)), "liver": ((-30, 10, 20), (30, 25, 15)),
              "vertebrae_C2": ((0, 30, 55), (10, 10, 8))},
    "head_glands_cavities": {"parotid_gland_left": ((40, 5, 66), (14, 18, 22)),
                             "parotid_gland_right": ((-40, 5, 66), (14, 18, 22)),
                             "submandibular_gland_left": ((28, -25, 48), (11, 11, 10))},
}


def _ellipsoid(centre, radii) -> np.ndarray:
    z, y, x = np.ogrid[:CT_SHAPE[0], :CT_SHAPE[1], :CT_SHAPE[2]]
    pos = [CT_ORIGIN[2] + CT_SPACING * z, CT_ORIGIN[1] + CT_SPACING * y, CT_ORIGIN[0] + CT_SPACING * x]
    c, r = centre[::-1], radii[::-1]
    return sum(((p - ci) / ri) ** 2 for p, ci, ri in zip(pos, c, r, strict=True)) <= 1


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Each task's folder, and both written to one folder (TotalSegmentator run twice with the same -o)."""
    root = tmp_path_factory.mktemp("ts")
    merged = root / "merged"
    merged.mkdir()
    masks = {}
    for task, classes in CLASSES.items():
        (root / task).mkdir()
        for name, (centre, radii) in classes.items():
            m = _ellipsoid(centre, radii)
            masks[name] = m
            img = sitk.GetImageFromArray(m.astype(np.uint8))
            img.SetSpacing((CT_SPACING,) * 3)
            img.SetOrigin(CT_ORIGIN)
            sitk.WriteImage(img, str(root / task / f"{name}.nii.gz"), True)
            shutil.copy(root / task / f"{name}.nii.gz", merged / f"{name}.nii.gz")
    cut = (masks["skull"] & masks["parotid_gland_left"]).sum() / masks["parotid_gland_left"].sum()
    assert 0.15 < cut < 0.3  # the skull covers about a fifth of each parotid, as in the demo study
    return root, merged


def _voxels(layers, name) -> int:
    (n,) = [int((la.array == i).sum()) for la in layers for i, v in la.names.items() if v == name]
    return n


@pytest.mark.parametrize("layout", ["two folders", "one folder"])
def test_parotid_volumes_survive_the_skull(outputs, layout):
    from petfeat.extract import extract

    root, merged = outputs
    own = read_labels(root / "head_glands_cavities", PET)
    if layout == "two folders":
        layers = read_labels(root / "total", PET) + read_labels(root / "head_glands_cavities", PET)
    else:
        layers = read_labels(merged, PET)
    assert {la.namespace for la in layers} == {"total", "head_glands_cavities"}
    for name in ("parotid_gland_left", "parotid_gland_right", "submandibular_gland_left"):
        assert _voxels(layers, name) == pytest.approx(_voxels(own, name), rel=0.02)
        assert _voxels(layers, name) > 0
    res = extract(np.ones(PET.shape, np.float32), layers,
                  {"parotids": ["parotid_gland_*"], "skull": ["total:skull"],
                   "glands_own": ["head_glands_cavities:parotid_gland_*"]},
                  spacing=PET.spacing, backend="cpu", peaks=False)
    f = res.features.set_index("region")
    want_ml = (_voxels(own, "parotid_gland_left") + _voxels(own, "parotid_gland_right")) * 0.064
    assert f.loc["parotids", "volume_ml"] == pytest.approx(want_ml, rel=0.02)
    assert f.loc["glands_own", "volume_ml"] == f.loc["parotids", "volume_ml"]
    native = sum(la.native_volume_ml[n] for la in layers for n in la.names.values() if n.startswith("parotid"))
    assert f.loc["parotids", "volume_ml"] == pytest.approx(native, rel=0.05)  # 2 mm -> 4 mm grid
    assert f.loc["skull", "voxel_count"] == _voxels(read_labels(root / "total", PET), "skull")


def test_one_layer_reader_loses_the_overlap(outputs):
    """read_totalsegmentator_folder merges everything into one layer (later layers win): there the parotids cut
    the skull, which is why read_labels keeps tasks (and overlapping classes) in layers of their own."""
    root, merged = outputs
    flat = read_totalsegmentator_folder(merged, PET)
    total = read_labels(root / "total", PET)
    own = read_labels(root / "head_glands_cavities", PET)
    assert _voxels([flat], "parotid_gland_left") == _voxels(own, "parotid_gland_left")
    assert _voxels([flat], "skull") < _voxels(total, "skull") - 0.15 * _voxels(own, "parotid_gland_left")


def test_overlapping_classes_of_one_user_made_task_each_stay_whole(tmp_path):
    """A hand-made folder whose classes overlap (names no task knows): overlapping classes go to a second layer
    of the folder's name space; each class keeps all its voxels."""
    folder = tmp_path / "my_rois"
    folder.mkdir()
    want = {}
    for name, (centre, radii) in {"roi_a": ((0, 0, 50), (30, 30, 20)), "roi_b": ((10, 0, 55), (30, 30, 20)),
                                  "roi_c": ((-50, -50, 20), (10, 10, 10))}.items():
        img = sitk.GetImageFromArray(_ellipsoid(centre, radii).astype(np.uint8))
        img.SetSpacing((CT_SPACING,) * 3)
        img.SetOrigin(CT_ORIGIN)
        sitk.WriteImage(img, str(folder / f"{name}.nii.gz"), True)
        want[name] = read_labels(folder / f"{name}.nii.gz", PET)[0].array > 0
    layers = read_labels(folder, PET)
    assert [la.namespace for la in layers] == ["my_rois", "my_rois"]
    assert [sorted(la.names.values()) for la in layers] == [["roi_a", "roi_c"], ["roi_b"]]
    for name, mask in want.items():
        (got,) = [la.array == i for la in layers for i, n in la.names.items() if n == name]
        np.testing.assert_array_equal(got, mask, err_msg=name)
