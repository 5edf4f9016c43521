"""The feature registry and the step from per-code partials to per-region features.

Every output column is registered once in :data:`FEATURES` with its unit, dtype, definition and
what it is computed from. Region statistics follow IBSI (variance with 1/N); SUVpeak follows
the IBSI local and global intensity peaks (1 cm3 sphere of voxel centres, radius 6.2035 mm,
neighbours from the whole image, only in-image voxels averaged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

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
            "region voxel (highest over ties), neighbours from the whole image, in-image voxels only",
            ("reduce", "peak")),
    Feature("suv_peak_global", "SUV", "float64",
            "IBSI global intensity peak: highest 1 cm3 sphere mean over all region voxels", ("peak",)),
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
