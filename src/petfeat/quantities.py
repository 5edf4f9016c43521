"""PSMA reference quantities: one row per study, derived from the features and lesions tables.

The quantities nuclear-medicine readers report beside a PSMA PET study (docs/definitions.md, "PSMA reference
quantities", gives each definition with its source):

* reference uptake: liver, parotid and blood-pool (aorta) SUVmean, and the whole-body tumour SUVmean
  (voxel-weighted over every lesion voxel) and SUVmax;
* tumour-to-liver and tumour-to-parotid SUVmean ratios;
* PSMA-TV (tumour volume, mL) and TL-PSMA (SUVmean x volume) for the whole body and per site (bone,
  lymph node or soft tissue, visceral, prostate: the built-in ``tumor_*`` regions);
* VISION-style: the number of lesions whose SUVmax is above the liver SUVmean;
* TheraP-style flags: SUVmax >= 20 at any site; SUVmax >= 10 at every measurable site (a lesion whose
  volume is at least that of a 10 mm sphere).

Nothing is measured again: every number comes from a region row of the features table or from the
lesion rows. The reference regions ``liver``, ``parotid_glands`` and ``aorta`` are built-in regions
(:data:`petfeat.regions.BUILTIN_REGIONS`), so a run with the default regions has them. A reference region
that the features table lacks (a regions YAML without ``aorta``, say) gives NaN and a note naming the
spec entry that adds it; one that matched no label gives NaN and a note naming the label it needs. The
TheraP thresholds are SUVbw values: for a table of SUL or SUVbsa the flags are <NA> with a note, never a
comparison of SUL with an SUVbw cut-off.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from petfeat.features import Feature
from petfeat.regions import BUILTIN_REGIONS

#: Region the whole-body tumour, each reference organ and each site is read from (features table ``region``).
DEFAULT_REFERENCES: dict[str, str] = {
    "tumour": "whole_body_tumor",
    "liver": "liver",
    "parotid": "parotid_glands",
    "blood_pool": "aorta",
}
#: Site -> region of the per-site tumour burden (the built-in regions of :mod:`petfeat.regions`).
SITES: dict[str, str] = {
    "bone": "tumor_bone",
    "lymph_node_or_soft_tissue": "tumor_lymph_node_or_soft_tissue",
    "visceral": "tumor_visceral",
    "prostate": "tumor_prostate",
}
#: Region specs of the reference organs: the built-in regions of the same name (TotalSegmentator class names,
#: lesion voxels excluded). A regions YAML (``petfeat extract --regions``) takes them as ``NAME: builtin``.
REFERENCE_REGIONS: dict[str, dict] = {name: BUILTIN_REGIONS[name] for name in ("liver", "parotid_glands", "aorta")}
#: The label each reference region needs, and where it comes from.
REFERENCE_LABELS: dict[str, str] = {
    "liver": "the liver label of TotalSegmentator's total task",
    "parotid_glands": "parotid_gland_left/right labels of TotalSegmentator's head_glands_cavities task "
                      "(--task head_glands_cavities)",
    "aorta": "the aorta label of TotalSegmentator's total task",
}
#: TheraP (Hofman et al., Lancet 2021): SUVmax >= 20 at one site at least, >= 10 at every measurable site (SUVbw).
THERAP_ANY_SUV_MAX = 20.0
THERAP_ALL_SUV_MAX = 10.0
#: RECIST 1.1 minimum size of a measurable lesion (10 mm), as the volume of a 10 mm sphere (mL).
MEASURABLE_DIAMETER_MM = 10.0
MEASURABLE_MIN_ML = math.pi / 6.0 * (MEASURABLE_DIAMETER_MM / 10.0) ** 3


def _site_quantities() -> tuple[Feature, ...]:
    out = []
    for site, region in SITES.items():
        out.append(Feature(f"psma_tv_{site}_ml", "mL", "float64",
                           f"PSMA-TV at the {site.replace('_', ' ')} site: volume of region {region} (0 without "
                           "lesion there)", (region,)))
        out.append(Feature(f"tl_psma_{site}", "SUV*mL", "float64",
                           f"TL-PSMA at the {site.replace('_', ' ')} site: SUVmean x volume of region {region} (0 "
                           "without lesion there)", (region,)))
    return tuple(out)


#: The columns of the quantities table (unit, dtype, definition, what each is computed from).
QUANTITIES: tuple[Feature, ...] = (
    Feature("tumour_suv_mean", "SUV", "float64",
            "whole-body tumour SUVmean, voxel-weighted over every lesion voxel", ("whole_body_tumor",)),
    Feature("tumour_suv_max", "SUV", "float64", "highest voxel SUV of any lesion", ("whole_body_tumor",)),
    Feature("liver_suv_mean", "SUV", "float64", "liver SUVmean (lesion voxels excluded)", ("liver",)),
    Feature("parotid_suv_mean", "SUV", "float64",
            "parotid glands SUVmean, both glands voxel-weighted (lesion voxels excluded)", ("parotid_glands",)),
    Feature("blood_pool_suv_mean", "SUV", "float64", "blood-pool SUVmean: the aorta (lesion voxels excluded)",
            ("aorta",)),
    Feature("tumour_to_liver_ratio", "1", "float64", "whole-body tumour SUVmean / liver SUVmean",
            ("whole_body_tumor", "liver")),
    Feature("tumour_to_parotid_ratio", "1", "float64", "whole-body tumour SUVmean / parotid glands SUVmean",
            ("whole_body_tumor", "parotid_glands")),
    Feature("psma_tv_ml", "mL", "float64", "PSMA-TV: whole-body tumour volume (0 without lesion)",
            ("whole_body_tumor",)),
    Feature("tl_psma", "SUV*mL", "float64", "TL-PSMA: whole-body tumour SUVmean x PSMA-TV (0 without lesion)",
            ("whole_body_tumor",)),
    *_site_quantities(),
    Feature("lesion_count", "1", "Int64", "lesions (connected components) of the study", ("lesions",)),
    Feature("lesions_above_liver", "1", "Int64",
            "VISION-style: lesions whose SUVmax is above the liver SUVmean", ("lesions", "liver")),
    Feature("measurable_lesion_count", "1", "Int64",
            f"lesions of at least {MEASURABLE_MIN_ML:.4f} mL (a {MEASURABLE_DIAMETER_MM:g} mm sphere)", ("lesions",)),
    Feature("therap_suv_max_ge20_any", "bool", "boolean",
            f"TheraP-style: SUVmax >= {THERAP_ANY_SUV_MAX:g} (SUVbw) in at least one lesion", ("lesions",)),
    Feature("therap_suv_max_ge10_all_measurable", "bool", "boolean",
            f"TheraP-style: SUVmax >= {THERAP_ALL_SUV_MAX:g} (SUVbw) in every measurable lesion (<NA> without one)",
            ("lesions",)),
    Feature("notes", "", "string", "why a quantity is missing (region absent or empty, SUV type)", ()),
)
QUANTITY_NAMES = tuple(q.name for q in QUANTITIES)


def study_keys(df: pd.DataFrame) -> list[str]:
    """Columns that tell studies apart: ``study_id`` in batch tables, else (patient_id, study_date, series_uid)."""
    if "study_id" in df.columns:
        return ["study_id"]
    return [c for c in ("patient_id", "study_date", "series_uid") if c in df.columns]


def _region(rows: pd.DataFrame, name: str) -> pd.Series | None:
    """The row of region ``name`` of one study, None when the region is absent or matched no label."""
    hit = rows[rows["region"] == name]
    if not len(hit):
        return None
    r = hit.iloc[0]
    return None if r.get("status") == "no_matching_label" else r


def _burden(row: pd.Series | None) -> tuple[float, float]:
    """(volume, total uptake) of a tumour region: 0 for an empty region, NaN when it is unknown."""
    if row is None:
        return np.nan, np.nan
    if int(row.get("voxel_count", 0) or 0) == 0:
        return 0.0, 0.0
    return float(row["volume_ml"]), float(row["total_uptake"])


def _mean(row: pd.Series | None) -> float:
    return np.nan if row is None else float(row["suv_mean"])


def _ratio(tumour: float, reference: float, role: str, notes: list[str]) -> float:
    """``tumour / reference``; NaN with a note when the reference SUVmean is not positive (a zeroed or cut scan)."""
    if np.isnan(reference) or np.isnan(tumour):
        return np.nan
    if not reference > 0:
        notes.append(f"{role}: SUVmean is {reference:g}, so tumour_to_{role}_ratio is not computed")
        return np.nan
    return tumour / reference


def _absent(role: str, region: str, rows: pd.DataFrame) -> str:
    """Why ``region`` gives no value: matched no label (names the label it needs), or absent (names the spec)."""
    if (rows["region"] == region).any():
        need = f" (needs {REFERENCE_LABELS[region]})" if region in REFERENCE_LABELS else ""
        return f"{role}: region {region!r} matched no label{need}"
    add = f" (regions YAML: '{region}: builtin')" if region in BUILTIN_REGIONS else ""
    return f"{role}: no region {region!r} in the features table{add}"


def _one_study(rows: pd.DataFrame, lesions: pd.DataFrame | None, refs: Mapping[str, str],
               measurable_min_ml: float) -> dict:
    notes = []
    suv_types = sorted({str(v) for v in rows.get("suv_type", pd.Series(dtype=object)).dropna()})
    suv_type = suv_types[0] if len(suv_types) == 1 else None
    region = {role: _region(rows, name) for role, name in refs.items()}
    for role, name in refs.items():
        if region[role] is None:
            notes.append(_absent(role, name, rows))
        elif role != "tumour" and int(region[role].get("voxel_count", 0) or 0) == 0:
            notes.append(f"{role}: region {name!r} is empty")
    tumour = region["tumour"]
    out: dict = {"suv_type": suv_type if suv_type else ("mixed" if suv_types else None)}
    out["tumour_suv_mean"] = _mean(tumour)
    out["tumour_suv_max"] = np.nan if tumour is None else float(tumour["suv_max"])
    out["liver_suv_mean"] = _mean(region["liver"])
    out["parotid_suv_mean"] = _mean(region["parotid"])
    out["blood_pool_suv_mean"] = _mean(region["blood_pool"])
    for ref in ("liver", "parotid"):
        out[f"tumour_to_{ref}_ratio"] = _ratio(out["tumour_suv_mean"], out[f"{ref}_suv_mean"], ref, notes)
    out["psma_tv_ml"], out["tl_psma"] = _burden(tumour)
    for site, name in SITES.items():
        r = _region(rows, name)
        if r is None and tumour is not None:
            notes.append(_absent(f"{site} site", name, rows))
        out[f"psma_tv_{site}_ml"], out[f"tl_psma_{site}"] = _burden(r)

    count = above = measurable = pd.NA
    ge20 = ge10 = pd.NA
    lesions_known = tumour is not None and lesions is not None
    if not lesions_known:
        notes.append("lesions: no lesion rows (no lesion mask or threshold)")
    else:
        count = len(lesions)
        smax = lesions["suv_max"].astype(float).to_numpy()
        big = lesions["volume_ml"].astype(float).to_numpy() >= measurable_min_ml
        measurable = int(big.sum())
        if np.isfinite(out["liver_suv_mean"]):
            above = int((smax > out["liver_suv_mean"]).sum())
        if suv_type != "bw":
            notes.append(f"TheraP flags: thresholds are SUVbw values and this table is suv_type {out['suv_type']}")
        else:
            ge20 = bool(count and np.nanmax(smax) >= THERAP_ANY_SUV_MAX)
            ge10 = bool((smax[big] >= THERAP_ALL_SUV_MAX).all()) if measurable else pd.NA
    out.update(lesion_count=count, lesions_above_liver=above, measurable_lesion_count=measurable,
               therap_suv_max_ge20_any=ge20, therap_suv_max_ge10_all_measurable=ge10, notes="; ".join(notes))
    return out


def study_quantities(features: pd.DataFrame, lesions: pd.DataFrame | None = None, *,
                     references: Mapping[str, str] | None = None,
                     measurable_min_ml: float = MEASURABLE_MIN_ML) -> pd.DataFrame:
    """The PSMA reference quantities, one row per study of the features table.

    Parameters
    ----------
    features : DataFrame
        The long features table (one row per study and region) of ``petfeat extract``, batch or single study.
    lesions : DataFrame, optional
        The lesions table of the same run (needed for the lesion count, the VISION-style count and the
        TheraP-style flags; without it they are <NA>).
    references : mapping, optional
        Role -> region name, overriding :data:`DEFAULT_REFERENCES` (roles ``tumour``, ``liver``,
        ``parotid``, ``blood_pool``), e.g. ``{"parotid": "parotids"}``.
    measurable_min_ml : float
        Smallest lesion volume (mL) that counts as measurable for the TheraP-style flag.

    Returns
    -------
    DataFrame
        The study keys (``study_id``, then ``patient_id, study_date, series_uid`` as the features table
        has them: the clinical tables join on ``patient_id``), ``suv_type`` (the SUV
        type of every SUV value of the row) and the columns of :data:`QUANTITIES`, in the order of the
        studies' first rows.
    """
    refs = dict(DEFAULT_REFERENCES)
    unknown = set(references or {}) - set(refs)
    if unknown:
        from petfeat.errors import PetfeatError

        raise PetfeatError(f"references: unknown role(s) {sorted(unknown)}; roles are {', '.join(refs)}.")
    refs.update(references or {})
    keys = study_keys(features)
    ids = keys + [c for c in ("patient_id", "study_date", "series_uid") if c in features.columns and c not in keys]
    columns = ids + ["suv_type", *QUANTITY_NAMES]
    if not len(features):
        return _typed(pd.DataFrame(columns=columns))
    lesion_groups = {}
    if lesions is not None and len(lesions) and all(k in lesions.columns for k in keys):
        lesion_groups = {k if isinstance(k, tuple) else (k,): g
                         for k, g in lesions.groupby(keys, dropna=False, sort=False)}
    groups = list(features.groupby(keys, dropna=False, sort=False)) if keys else [((), features)]
    rows = []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        les = None
        if lesions is not None:  # one study (a single-study run): its lesions are every lesion row
            les = lesions if len(groups) == 1 else lesion_groups.get(key, lesions.iloc[0:0])
            if "lesion_method" in group.columns and (group["lesion_method"] == "none").all():
                les = None
        first = group.iloc[0]
        rows.append({**{c: first[c] for c in ids}, **dict(zip(keys, key)),
                     **_one_study(group, les, refs, measurable_min_ml)})
    return _typed(pd.DataFrame(rows, columns=columns))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    for q in QUANTITIES:
        if q.name in df.columns:
            df[q.name] = df[q.name].astype(q.dtype)
    return df
