"""Label maps onto the PET grid: NIfTI/NRRD (SimpleITK) and TotalSegmentator class folders.

Labels are addressed by name. A label image whose geometry differs from the PET grid is
resampled in physical space with nearest-neighbour interpolation (SimpleITK). Float and signed
label images are refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petfeat.errors import LabelError
from petfeat.io.dicom import Geometry
from petfeat.regions import LabelLayer

_UNSIGNED = {sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkUInt32, sitk.sitkUInt64}


def reference_image(geometry: Geometry) -> sitk.Image:
    """An empty SimpleITK image with the PET grid's geometry (the resampling reference)."""
    img = sitk.Image([int(s) for s in geometry.shape[::-1]], sitk.sitkUInt8)
    f = geometry.sitk_fields()
    img.SetSpacing(f["spacing"])
    img.SetOrigin(f["origin"])
    img.SetDirection(f["direction"])
    return img


def read_label_image(path: str | Path) -> sitk.Image:
    """Read a label image (NIfTI, NRRD, MHA...) and refuse float or signed pixel types."""
    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise LabelError(f"{path}: cannot be read as an image ({str(exc).strip().splitlines()[-1]}).") from exc
    if img.GetPixelID() not in _UNSIGNED:
        raise LabelError(f"{path}: pixel type {img.GetPixelIDTypeAsString()} is not an unsigned integer; label "
                         "maps must hold unsigned integer ids. Re-save it as uint8/uint16 (e.g. "
                         "sitk.Cast(img, sitk.sitkUInt16)) after checking its values are whole numbers.")
    return img


def to_pet_grid(img: sitk.Image, geometry: Geometry, source: str = "<image>") -> np.ndarray:
    """Bring a label image onto the PET grid (nearest neighbour); ``(Z, Y, X)`` array."""
    ref = reference_image(geometry)
    same = (img.GetSize() == ref.GetSize() and np.allclose(img.GetSpacing(), ref.GetSpacing(), atol=1e-4)
            and np.allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-3)
            and np.allclose(img.GetDirection(), ref.GetDirection(), atol=1e-5))
    if not same:
        img = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, img.GetPixelID())
    arr = sitk.GetArrayFromImage(img)
    return arr


def read_totalsegmentator_folder(folder: str | Path, geometry: Geometry) -> LabelLayer:
    """Read a TotalSegmentator output folder (one ``<class>.nii.gz`` per class) onto the PET grid.

    Classes are numbered in sorted name order; a voxel claimed by several classes keeps the
    last in that order.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.nii.gz")) + sorted(folder.glob("*.nii"))
    if not files:
        raise LabelError(f"{folder}: no <class>.nii.gz files; point to a TotalSegmentator output folder.")
    out = np.zeros(geometry.shape, np.uint16)
    names = {}
    for i, f in enumerate(files, start=1):
        name = f.name.removesuffix(".gz").removesuffix(".nii")
        arr = to_pet_grid(read_label_image(f), geometry, str(f))
        out[arr > 0] = i
        names[i] = name
    return LabelLayer(out, names, str(folder))


def read_label_map(path: str | Path, geometry: Geometry, names: dict[int, str] | None = None,
                   prefix: str = "label") -> LabelLayer:
    """Read a multilabel image onto the PET grid; ids without a name are called ``{prefix}_{id}``."""
    arr = to_pet_grid(read_label_image(path), geometry, str(path))
    ids = [int(i) for i in np.unique(arr) if i != 0]
    names = {i: (names or {}).get(i, f"{prefix}_{i}") for i in ids}
    return LabelLayer(arr, names, str(path))
