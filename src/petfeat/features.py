"""The feature registry and the step from per-code partials to per-region features.

Every output column is registered once in :data:`FEATURES` with its unit, dtype, definition and
what it is computed from. Region statistics follow IBSI (variance with 1/N); SUVpeak follows
the IBSI local and global intensity peaks (1 cm3 sphere of voxel centres, radius 6.2035 mm,
neighbours from the whole image, only in-image voxels averaged). With ``peak_neighbours="region"``
the sphere mean counts only the region's own voxels (:func:`region_peaks`), so that uptake next to
a region (a lesion beside healthy bone) does not enter its peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from petfeat.kernels import Partials, combine_codes

#: Radius (mm) of the sphere of volume 1 cm3: (3 / (4 pi))^(1/3) cm.
PEAK_RADIUS_MM = 10.0 * (3.0 / (4.0 * math.pi)) ** (1.0 / 3.0)


@dataclass(frozen=True)
class Feature:
    """One registered output column."""

    name: str
    unit: str
    dtype: str
    definition: str
    needs: tuple[str, ...]


FEATURES: tuple[Feature, ...] = (
    Feature("suv_mean", "SUV", "float64", "voxel-weighted mean of SUV over the region's voxels", ("reduce",)),
    Feature("suv_max", "SUV", "float64", "maximum voxel SUV in the region", ("reduce",)),
    Feature("suv_min", "SUV", "float64", "minimum voxel SUV in the region", ("reduce",)),
    Feature("suv_std", "SUV", "float64", "standard deviation of voxel SUV, 1/N (IBSI)", ("reduce",)),
    Feature("suv_peak_local", "SUV", "float64",
            "IBSI local intensity peak: mean SUV in the 1 cm3 sphere of voxel centres around the hottest "
            "region voxel (highest over ties), neighbours from the whole image (or only the region's voxels with "
            "peak_neighbours='region'), in-image voxels only",
            ("reduce", "peak")),
    Feature("suv_peak_global", "SUV", "float64",
            "IBSI global intensity peak: highest 1 cm3 sphere mean over all region voxels (neighbours as for "
            "suv_peak_local)", ("peak",)),
    Feature("volume_ml", "mL", "float64", "voxel count x voxel volume on the PET grid", ("reduce",)),
    Feature("total_uptake", "SUV*mL", "float64",
            "SUVmean x volume (TLP for PSMA, TLG for FDG)", ("reduce",)),
    Feature("voxel_count", "1", "int64", "number of region voxels on the PET grid (NaN voxels excluded)",
            ("reduce",)),
    Feature("nan_voxel_count", "1", "int64", "region voxels whose value is NaN (excluded from statistics)",
            ("reduce",)),
    Feature("touches_border", "bool", "bool", "the region has a voxel on a face of the image", ("codes",)),
    Feature("lesion_count", "1", "Int64",
            "connected lesion components with a voxel in the region (<NA> when no lesion mask or threshold)",
            ("lesions",)),
)
FEATURE_NAMES = tuple(f.name for f in FEATURES)


def sphere_offsets(spacing_zyx, radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """Integer ``(dz, dy, dx)`` offsets whose voxel centres lie within ``radius_mm`` (physical units)."""
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    reach = np.floor(radius_mm / sp + 1e-9).astype(int)
    grids = np.meshgrid(*(np.arange(-r, r + 1) for r in reach), indexing="ij")
    offs = np.stack([g.ravel() for g in grids], axis=1)
    d2 = ((offs * sp) ** 2).sum(axis=1)
    return offs[d2 <= radius_mm**2 * (1 + 1e-12)].astype(np.int64)


#: Where the SUVpeak sphere takes its neighbours: the whole image (IBSI) or the region's own voxels.
PEAK_NEIGHBOURS = ("image", "region")


def region_peaks(stored: np.ndarray, codes: np.ndarray, scale: np.ndarray, offset: np.ndarray,
                 offsets: np.ndarray, member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global and local intensity peaks whose sphere means count only the region's own voxels.

    Parameters
    ----------
    stored : (Z, Y, X) ndarray
        Stored pixels; SUV = ``stored * scale[z] + offset[z]``.
    codes : (Z, Y, X) unsigned int ndarray
        Code volume.
    scale, offset : (Z,) ndarray of float64
        Per-slice SUV scale and offset.
    offsets : (K, 3) ndarray of int64
        Sphere offsets (:func:`sphere_offsets`).
    member : (n_codes, R) bool ndarray
        ``member[c, r]``: code ``c`` belongs to region ``r``.

    Returns
    -------
    global_peak, local_peak : (R,) ndarray of float64
        Highest sphere mean over the region's voxels; sphere mean at its hottest voxel (highest over
        ties). A sphere mean averages the region voxels within the sphere that are in the image and
        finite; NaN voxels are no region voxels. NaN where a region has no finite voxel.
    """
    stored = np.ascontiguousarray(stored)
    codes = np.ascontiguousarray(codes)
    glob, val, loc = _region_peaks(stored, codes, np.ascontiguousarray(scale, np.float64),
                                   np.ascontiguousarray(offset, np.float64), np.ascontiguousarray(offsets, np.int64),
                                   np.ascontiguousarray(member, np.bool_))
    g = glob.max(axis=0) if len(glob) else np.full(member.shape[1], -np.inf)
    local = np.full(member.shape[1], -np.inf)
    for r in range(member.shape[1]):
        if len(val) and np.isfinite(val[:, r].max()):
            hot = val[:, r] == val[:, r].max()
            local[r] = loc[hot, r].max()
    return np.where(np.isfinite(g), g, np.nan), np.where(np.isfinite(local), local, np.nan)


@njit(parallel=True, cache=True)
def _region_peaks(stored, codes, scale, offset, offs, member):  # pragma: no cover - compiled
    """Per slice and region: highest sphere mean, hottest value and the highest sphere mean at it."""
    nz, ny, nx = stored.shape
    n_regions = member.shape[1]
    has = np.zeros(member.shape[0], np.bool_)
    for c in range(member.shape[0]):
        for r in range(n_regions):
            has[c] |= member[c, r]
    glob = np.full((nz, n_regions), -np.inf)
    val = np.full((nz, n_regions), -np.inf)
    loc = np.full((nz, n_regions), -np.inf)
    for z in prange(nz):
        for y in range(ny):
            for x in range(nx):
                c = codes[z, y, x]
                if c >= has.shape[0] or not has[c]:
                    continue
                v = stored[z, y, x] * scale[z] + offset[z]
                if not np.isfinite(v):
                    continue
                for r in range(n_regions):
                    if not member[c, r]:
                        continue
                    s = 0.0
                    n = 0
                    for k in range(offs.shape[0]):
                        zz = z + offs[k, 0]
                        yy = y + offs[k, 1]
                        xx = x + offs[k, 2]
                        if zz < 0 or zz >= nz or yy < 0 or yy >= ny or xx < 0 or xx >= nx:
                            continue
                        cc = codes[zz, yy, xx]
                        if cc >= has.shape[0] or not member[cc, r]:
                            continue
                        w = stored[zz, yy, xx] * scale[zz] + offset[zz]
                        if np.isfinite(w):
                            s += w
                            n += 1
                    m = s / n
                    if m > glob[z, r]:
                        glob[z, r] = m
                    if v > val[z, r]:
                        val[z, r] = v
                        loc[z, r] = m
                    elif v == val[z, r] and m > loc[z, r]:
                        loc[z, r] = m
    return glob, val, loc


def region_rows(partials: Partials, regions: dict[str, np.ndarray], voxel_ml: float,
                peaks: dict[str, tuple[float, float]] | None, border_codes: np.ndarray,
                known: set[str] | None = None) -> list[dict]:
    """Turn per-code partials into one feature row per region.

    An empty region gives ``voxel_count`` 0, NaN statistics and ``status = "empty"`` (its labels
    exist but cover no voxel) or ``"no_matching_label"`` (no label name matches; ``known`` lists the
    regions whose patterns matched some label name).
    """
    rows = []
    border = set(int(c) for c in border_codes)
    for name, codes in regions.items():
        p = combine_codes(partials, codes)
        n = int(p.count[0])
        nan_n = int(p.nan_count[0])
        row = {"region": name, "voxel_count": n, "nan_voxel_count": nan_n,
               "volume_ml": n * voxel_ml, "touches_border": bool(border.intersection(int(c) for c in codes))}
        if n == 0:
            row.update(suv_mean=np.nan, suv_max=np.nan, suv_min=np.nan, suv_std=np.nan, suv_peak_local=np.nan,
                       suv_peak_global=np.nan, total_uptake=np.nan,
                       status="empty" if (len(codes) or known is None or name in known) else "no_matching_label")
        else:
            mean = float(p.mean[0])
            row.update(suv_mean=mean, suv_max=float(p.max[0]), suv_min=float(p.min[0]),
                       suv_std=math.sqrt(max(float(p.m2[0]) / n, 0.0)), total_uptake=mean * n * voxel_ml,
                       suv_peak_local=np.nan, suv_peak_global=np.nan,
                       status="ok" if nan_n == 0 else "nan_voxels_excluded")
            if peaks is not None and name in peaks:
                row["suv_peak_global"], row["suv_peak_local"] = peaks[name]
        rows.append(row)
    return rows
