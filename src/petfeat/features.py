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
from numba import njit

from petfeat.kernels import Partials, combine_codes
from petfeat.kernels.borrowed import borrowed
from petfeat.kernels.threads import chunk_count, for_chunks

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

#: Unit of an SUV column per ``suv_type`` (the same number means a different thing under each).
SUV_UNITS = {"bw": "SUVbw (g/mL)", "lbm": "SUL (SUV by lean body mass, g/mL)", "bsa": "SUVbsa (cm2/mL)"}

#: Unit and description of the columns of the output tables that are not features.
COLUMN_DOCS: dict[str, tuple[str, str]] = {
    "study_id": ("", "study id of the manifest (pseudonymised)"),
    "patient_id": ("", "pseudonymised patient id (keyed hash of PatientID)"),
    "study_date": ("", "StudyDate of the PET series"),
    "series_uid": ("", "SeriesInstanceUID of the PET series"),
    "region": ("", "region name (the regions spec)"),
    "status": ("", "ok, empty (no voxel), no_matching_label (no label name matches) or nan_voxels_excluded"),
    "suv_type": ("", "SUV normalisation of every SUV value of the row: bw (body weight), lbm (SUL), bsa"),
    "backend": ("", "compute backend that ran: cpu or gpu"),
    "lesion_method": ("", "how lesions were found: mask or threshold, connectivity and minimum volume"),
    "petfeat_version": ("", "petfeat version that wrote the row"),
    "config_hash": ("", "hash of the extraction settings (regions, SUV type, SUVpeak, lesion settings)"),
    "input_notes": ("", "the PET reader's notes on deviations it accepted and, under 'suv', the SUV header decisions "
                    "(a value reinterpreted or assumed), compact JSON (empty when none)"),
    "lesion_id": ("1", "connected-component number of the lesion within its study"),
    "site": ("", "most frequent organ label under the lesion (soft_tissue when none)"),
    "centroid_x_mm": ("mm", "lesion centroid, patient x (DICOM LPS)"),
    "centroid_y_mm": ("mm", "lesion centroid, patient y (DICOM LPS)"),
    "centroid_z_mm": ("mm", "lesion centroid, patient z (DICOM LPS)"),
    "label": ("", "label name"),
    "namespace": ("", "name space of the label: the label source (TotalSegmentator task, --labels NAME, lesions)"),
    "source": ("", "the label source's own file or folder name"),
    "native_volume_ml": ("mL", "label volume on the grid it was drawn on"),
    "pet_grid_volume_ml": ("mL", "label volume on the PET grid"),
    "outside_fov_fraction": ("1", "fraction of the label's own-grid volume outside the PET field of view"),
    "pet_path": ("", "PET input of the study, relative to <study_id>"),
    "error_class": ("", "class of the error that stopped the study"),
    "message": ("", "what went wrong and how to fix it"),
}
#: Separator of region and feature in the column names of the wide table (``liver__suv_mean``).
WIDE_SEPARATOR = "__"


def table_suv_type(df) -> str | None:
    """The one ``suv_type`` of a table's rows, ``"mixed"`` when they differ, None without the column."""
    if "suv_type" not in getattr(df, "columns", ()):
        return None
    kinds = sorted({str(v) for v in df["suv_type"].dropna().unique()})
    return kinds[0] if len(kinds) == 1 else ("mixed" if kinds else None)


def _unit(unit: str, suv_type: str | None) -> str:
    """The registry unit with the SUV type spelled out (``SUV`` -> ``SUL (...)`` for SUL tables)."""
    if "SUV" not in unit or suv_type is None:
        return unit
    name = SUV_UNITS.get(suv_type, "SUV of mixed types (see each row's suv_type)")
    return unit.replace("SUV", name.split(" (")[0] if "*" in unit else name)


def column_metadata(column: str, suv_type: str | None, registry=()) -> dict[str, str] | None:
    """Unit and description of one column (registry features, ``registry``, wide ``region__feature`` names).

    Parameters
    ----------
    column : str
        Column name.
    suv_type : str or None
        The table's SUV type (:func:`table_suv_type`); SUV units name it, so SUL is never read as SUVbw.
    registry : sequence of Feature
        More registered columns (for example :data:`petfeat.quantities.QUANTITIES`).

    Returns
    -------
    dict or None
        ``{"unit", "description"}`` (plus ``"suv_type"`` for SUV-valued columns); None for an unknown column.
    """
    known = {f.name: f for f in (*FEATURES, *registry)}
    region = None
    if column not in known and column not in COLUMN_DOCS and WIDE_SEPARATOR in column:
        region, _, column = column.rpartition(WIDE_SEPARATOR)
    if column in known:
        f = known[column]
        meta = {"unit": _unit(f.unit, suv_type), "description": f.definition}
        if "SUV" in f.unit and suv_type is not None:
            meta["suv_type"] = suv_type
    elif column in COLUMN_DOCS:
        unit, text = COLUMN_DOCS[column]
        meta = {"unit": unit, "description": text}
    else:
        return None
    if region is not None:
        meta["description"] = f"region {region}: {meta['description']}"
    return meta


def arrow_table(df, registry=()):
    """``df`` as a pyarrow Table whose fields carry unit and description metadata (bytes keys and values).

    The schema's metadata also holds ``petfeat.suv_type`` (the table's SUV type) beside pandas' own.
    """
    import pyarrow as pa

    table = pa.Table.from_pandas(df, preserve_index=False)
    suv_type = table_suv_type(df)
    fields = []
    for fld in table.schema:
        meta = column_metadata(fld.name, suv_type, registry)
        fields.append(fld.with_metadata({k.encode(): v.encode() for k, v in meta.items()}) if meta else fld)
    schema_meta = dict(table.schema.metadata or {})
    if suv_type is not None:
        schema_meta[b"petfeat.suv_type"] = suv_type.encode()
    return table.cast(pa.schema(fields, metadata=schema_meta))


def write_parquet(df, path, registry=()) -> None:
    """Write ``df`` to Parquet with the field metadata of :func:`arrow_table`."""
    import pyarrow.parquet as pq

    pq.write_table(arrow_table(df, registry), str(path))


def field_metadata(path) -> dict[str, dict[str, str]]:
    """The per-column metadata of a Parquet file written by :func:`write_parquet` (column -> dict)."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(str(path))
    return {f.name: {k.decode(): v.decode() for k, v in (f.metadata or {}).items()} for f in schema}


#: Per-study columns the wide table keeps from the long one (equal on every row of a study).
WIDE_STUDY_COLUMNS = ("study_id", "patient_id", "study_date", "series_uid", "suv_type", "backend", "lesion_method",
                      "petfeat_version", "config_hash")


def wide_table(features):
    """One row per study with a ``region__feature`` column for every region and feature (and status).

    Studies are told apart by ``study_id`` when the table has it, else by (patient_id, study_date,
    series_uid). Regions keep their order of first appearance, features the registry's order.
    """
    import pandas as pd

    keys = ["study_id"] if "study_id" in features.columns else [
        c for c in ("patient_id", "study_date", "series_uid") if c in features.columns]
    values = [c for c in (*FEATURE_NAMES, "status") if c in features.columns]
    keep = [c for c in WIDE_STUDY_COLUMNS if c in features.columns]
    if not len(features):
        return pd.DataFrame(columns=keep)
    f = features.copy()
    f["_study"] = f.groupby(keys, dropna=False, sort=False).ngroup()
    head = f.drop_duplicates("_study").set_index("_study")[keep]
    regions = list(dict.fromkeys(f["region"]))
    cols = {}
    for region in regions:
        part = f[f["region"] == region].set_index("_study")
        for v in values:
            cols[f"{region}{WIDE_SEPARATOR}{v}"] = part[v].reindex(head.index)
    return pd.concat([head, pd.DataFrame(cols, index=head.index)], axis=1).reset_index(drop=True)


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
    member = np.ascontiguousarray(member, np.bool_)
    nz, n_regions = stored.shape[0], member.shape[1]
    glob, val, loc = (np.full((nz, n_regions), -np.inf) for _ in range(3))
    n_chunks = chunk_count(nz)
    for_chunks(_region_peaks, n_chunks, stored, codes, np.ascontiguousarray(scale, np.float64),
               np.ascontiguousarray(offset, np.float64), np.ascontiguousarray(offsets, np.int64), member,
               member.any(axis=1), glob, val, loc, n_chunks)
    g = glob.max(axis=0) if len(glob) else np.full(member.shape[1], -np.inf)
    local = np.full(member.shape[1], -np.inf)
    for r in range(member.shape[1]):
        if len(val) and np.isfinite(val[:, r].max()):
            hot = val[:, r] == val[:, r].max()
            local[r] = loc[hot, r].max()
    return np.where(np.isfinite(g), g, np.nan), np.where(np.isfinite(local), local, np.nan)


@njit(cache=True, nogil=True)
def _region_peaks(c0, c1, stored, codes, scale, offset, offs, member, has, glob, val, loc,
                  n_chunks):  # pragma: no cover - compiled
    """Per slice and region: highest sphere mean, hottest value and the highest sphere mean at it.

    Slices of chunks ``[c0, c1)`` into ``glob``, ``val``, ``loc``; ``has[c]``: code ``c`` is in some region.
    """
    stored, codes, scale, offset, offs, member, has, glob, val, loc = borrowed(stored, codes, scale, offset, offs,
                                                                               member, has, glob, val, loc)
    nz, ny, nx = stored.shape
    n_regions = member.shape[1]
    for z in range(c0 * nz // n_chunks, c1 * nz // n_chunks):
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
