"""Lesions: connected components of a lesion mask, and threshold segmentation without a mask.

Components are found with SimpleITK (26-connectivity by default, 6 optional) on the PET grid;
components smaller than ``min_volume_ml`` are dropped. Threshold segmentation offers a fixed SUV
threshold or the PERCIST liver-referenced one (1.5 x liver SUL mean + 2 SD in a 3 cm sphere inside
the liver label), excluding organs with physiological uptake by name. Its parameters are returned
so that they go into the output.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from petfeat.errors import LabelError
from petfeat.kernels.label_census import label_census
from petfeat.regions import LabelLayer

CONNECTIVITIES = (6, 26)
#: Organs with physiological PSMA/FDG uptake, excluded from threshold segmentation (TotalSegmentator names).
PHYSIOLOGICAL_UPTAKE = ["kidney_*", "urinary_bladder", "parotid_gland_*", "submandibular_gland_*", "liver", "spleen",
                        "small_bowel", "colon", "duodenum", "stomach", "brain", "heart", "esophagus"]
#: PERCIST liver reference: 3 cm diameter sphere.
PERCIST_SPHERE_RADIUS_MM = 15.0


@dataclass
class Components:
    """Connected components on the PET grid: ``ids`` (0 = none, 1..n), sizes and what was dropped."""

    ids: np.ndarray
    n: int
    voxel_counts: np.ndarray
    connectivity: int
    min_volume_ml: float
    dropped: int
    settings: dict = field(default_factory=dict)

    def as_layer(self, name: str = "lesion", mask: np.ndarray | None = None) -> LabelLayer:
        """The lesion mask as one label layer (all components share ``name``).

        ``mask``: the boolean mask the components came from; when no component was dropped it *is*
        the layer, and is used as it is (no new volume).
        """
        if mask is not None and mask.dtype == bool and self.dropped == 0 and mask.shape == self.ids.shape:
            return LabelLayer(mask.view(np.uint8), {1: name}, "lesion components")
        return LabelLayer(np.greater(self.ids, 0, out=np.empty(self.ids.shape, bool)).view(np.uint8), {1: name},
                          "lesion components")


def check_connectivity(connectivity: int) -> None:
    """Refuse a connectivity other than 6 (faces) or 26 (faces, edges, corners)."""
    if connectivity not in CONNECTIVITIES:
        raise LabelError(f"connectivity is {connectivity}; choose 6 (faces) or 26 (faces, edges, corners).")


def connected_components(mask: np.ndarray, voxel_ml: float, connectivity: int = 26,
                         min_volume_ml: float = 0.0, backend: str = "cpu") -> Components:
    """Label the connected components of ``mask > 0``, largest first, dropping those below ``min_volume_ml``.

    ``backend="cpu"`` uses SimpleITK; ``"gpu"`` uses ``cupyx.scipy.ndimage.label`` (needs CuPy and a
    device; the numbering rule is the same: by size, largest first, ties in scan order).
    """
    check_connectivity(connectivity)
    mask = np.asarray(mask)
    if mask.dtype != bool and not np.issubdtype(mask.dtype, np.unsignedinteger):
        raise LabelError(f"the lesion mask has dtype {mask.dtype}; it must be boolean or unsigned integer.")
    if backend == "gpu":
        return _components_gpu(mask, voxel_ml, connectivity, min_volume_ml)
    binary = mask if mask.dtype == bool else np.greater(mask, 0, out=np.empty(mask.shape, bool))
    # SimpleITK labels in uint32 (4 bytes per voxel, twice: components and relabelled): label only
    # the bounding box of the mask, which for lesions is a fraction of the whole-body grid.
    box = label_census(binary).box
    ids = np.zeros(mask.shape, np.uint8)
    if box is None:
        return Components(ids, 0, np.zeros(0, np.int64), connectivity, float(min_volume_ml), 0,
                          {"connectivity": connectivity, "min_volume_ml": float(min_volume_ml)})
    img = sitk.GetImageFromArray(binary[box].view(np.uint8))
    del binary
    cc = sitk.ConnectedComponent(img, connectivity == 26)
    del img
    total = int(sitk.GetArrayViewFromImage(cc).max())
    min_voxels = int(np.ceil(min_volume_ml / voxel_ml - 1e-9)) if min_volume_ml > 0 else 0
    relabel = sitk.RelabelComponent(cc, minimumObjectSize=max(min_voxels, 0), sortByObjectSize=True)
    del cc
    # One copy out of SimpleITK, in the smallest unsigned type that holds the component count.
    pixel = sitk.sitkUInt8 if total < 0xFF else sitk.sitkUInt16 if total < 0xFFFF else sitk.sitkUInt32
    narrow = sitk.Cast(relabel, pixel)
    del relabel
    crop = sitk.GetArrayViewFromImage(narrow)  # valid while ``narrow`` lives
    if crop.dtype != ids.dtype:
        ids = np.zeros(mask.shape, crop.dtype)
    ids[box] = crop
    del crop, narrow
    counts = label_census(ids).counts[1:]
    return Components(ids, int(len(counts)), counts, connectivity, float(min_volume_ml), total - len(counts),
                      {"connectivity": connectivity, "min_volume_ml": float(min_volume_ml)})


def _components_gpu(mask, voxel_ml, connectivity, min_volume_ml) -> Components:
    try:
        import cupy as cp
        from cupyx.scipy import ndimage as cnd
    except ImportError as exc:
        raise LabelError("lesion components on the GPU need CuPy (pip install 'petfeat[gpu]').") from exc
    structure = cp.ones((3, 3, 3), bool) if connectivity == 26 else None
    ids, n = cnd.label(cp.asarray(mask > 0), structure=structure)
    counts = cp.bincount(ids.ravel(), minlength=int(n) + 1)[1:].get()
    first = np.full(int(n), np.iinfo(np.int64).max)
    flat = cp.flatnonzero(ids.ravel())
    # first voxel of each component (scan order), to break size ties like SimpleITK does
    np.minimum.at(first, (ids.ravel()[flat] - 1).get(), flat.get())
    min_voxels = int(np.ceil(min_volume_ml / voxel_ml - 1e-9)) if min_volume_ml > 0 else 0
    order = np.lexsort((first, -counts))
    keep = order[counts[order] >= max(min_voxels, 1)]
    lut = np.zeros(int(n) + 1, np.uint32)
    lut[keep + 1] = np.arange(1, len(keep) + 1, dtype=np.uint32)
    out = cp.asarray(lut)[ids].get()
    return Components(out, len(keep), counts[keep], connectivity, float(min_volume_ml), int(n) - len(keep),
                      {"connectivity": connectivity, "min_volume_ml": float(min_volume_ml), "components_on": "gpu"})


def centroids_mm(ids: np.ndarray, n: int, geometry, voxels: np.ndarray | None = None) -> np.ndarray:
    """``(n, 3)`` LPS centroids (mm) of components ``1..n`` (``voxels``: flat indices of their voxels, if known)."""
    flat = np.flatnonzero(ids.ravel()) if voxels is None else voxels
    lab = ids.ravel()[flat]
    zyx = np.stack(np.unravel_index(flat, ids.shape), axis=1).astype(np.float64)
    counts = np.bincount(lab, minlength=n + 1)[1:]
    mean_idx = np.stack([np.bincount(lab, weights=zyx[:, k], minlength=n + 1)[1:] for k in range(3)], 1)
    mean_idx /= np.maximum(counts, 1)[:, None]
    return geometry.index_to_lps(mean_idx)


def excluded_organs_mask(layers: list[LabelLayer], patterns: list[str]) -> np.ndarray:
    """Voxels whose label (in any layer) matches one of ``patterns``."""
    out = None
    for layer in layers:
        ids = [i for i, n in layer.names.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if ids:
            m = np.isin(layer.array, ids)
            out = m if out is None else out | m
    return out


def liver_reference(sul: np.ndarray, liver: np.ndarray, spacing_zyx) -> tuple[float, float, tuple[int, int, int]]:
    """PERCIST liver reference: SUL mean and SD in a 3 cm sphere centred deepest inside the liver."""
    if not liver.any():
        raise LabelError("PERCIST thresholding needs a 'liver' label with voxels; none was found. Use a fixed "
                         "threshold (method='fixed') or supply a liver segmentation.")
    img = sitk.GetImageFromArray(liver.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    depth = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(img, insideIsPositive=True, useImageSpacing=True,
                                                                squaredDistance=False))
    centre = np.unravel_index(int(np.argmax(np.where(liver, depth, -np.inf))), liver.shape)
    grids = np.ogrid[tuple(slice(0, s) for s in liver.shape)]
    d2 = sum(((g - c) * sp) ** 2 for g, c, sp in zip(grids, centre, spacing_zyx, strict=True))
    sphere = (d2 <= PERCIST_SPHERE_RADIUS_MM**2) & liver
    v = sul[sphere]
    return float(v.mean()), float(v.std()), tuple(int(c) for c in centre)


def threshold_mask(values: np.ndarray, layers: list[LabelLayer], spacing_zyx, *, method: str = "fixed",
                   threshold: float = 3.0, sul: np.ndarray | None = None,
                   exclude: list[str] | None = None) -> tuple[np.ndarray, dict]:
    """Lesion mask by thresholding, and the parameters used.

    Parameters
    ----------
    values : (Z, Y, X) ndarray
        SUV (``method="fixed"``: voxels >= ``threshold``).
    layers : list of LabelLayer
        Organ labels, for the exclusions and the PERCIST liver reference.
    method : {"fixed", "percist"}
        ``percist``: threshold = 1.5 x liver SUL mean + 2 SD, applied to ``sul``.
    exclude : list of str
        Label-name globs excluded from the mask (default :data:`PHYSIOLOGICAL_UPTAKE`).
    """
    exclude = PHYSIOLOGICAL_UPTAKE if exclude is None else exclude
    params: dict = {"method": method, "exclude": list(exclude)}
    if method == "fixed":
        mask = values >= threshold
        params["threshold_suv"] = float(threshold)
    elif method == "percist":
        if sul is None:
            raise LabelError("PERCIST thresholding needs SUL values (height and sex for lean body mass); pass sul=.")
        liver = excluded_organs_mask(layers, ["liver"])
        liver = np.zeros(values.shape, bool) if liver is None else liver
        mean, sd, centre = liver_reference(sul, liver, spacing_zyx)
        thr = 1.5 * mean + 2.0 * sd
        mask = sul >= thr
        params.update(threshold_sul=thr, liver_sul_mean=mean, liver_sul_sd=sd, liver_sphere_centre_zyx=centre)
    else:
        raise LabelError(f"threshold method is {method!r}; choose 'fixed' or 'percist'.")
    ex = excluded_organs_mask(layers, exclude)
    if ex is not None:
        mask &= ~ex
    return mask, params
