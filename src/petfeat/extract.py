"""The single public entry point from a PET volume and label maps to a feature table."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from petfeat import kernels
from petfeat.backend import resolve_backend
from petfeat.errors import PetfeatError
from petfeat.features import FEATURE_NAMES, PEAK_RADIUS_MM, region_rows, sphere_offsets
from petfeat.io.dicom import PetSeries
from petfeat.regions import (
    LabelLayer,
    build_codes,
    codes_touching_border,
    default_spec,
    normalise_spec,
    region_codes,
    regions_naming_known_labels,
)
from petfeat.suv import SuvFactors, compute_suv_factors

KEY_COLUMNS = ("patient_id", "study_date", "series_uid", "region")
PROVENANCE_COLUMNS = ("status", "suv_type", "backend", "petfeat_version", "config_hash")
_SESSION_KEY = os.urandom(16)


def pseudonym(patient_id: str, key: bytes | None = None) -> str:
    """Keyed hash of a patient id (HMAC-SHA256, 12 hex digits); a per-process key when ``key`` is None."""
    digest = hmac.new(key or _SESSION_KEY, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return "P" + digest[:12]


def _layers(labels, label_names, shape) -> list[LabelLayer]:
    if isinstance(labels, LabelLayer):
        return [labels]
    if isinstance(labels, np.ndarray):
        if label_names is None:
            ids = np.unique(labels)
            label_names = {int(i): f"label_{int(i)}" for i in ids if i != 0}
        return [LabelLayer(labels, dict(label_names))]
    if isinstance(labels, Sequence) and all(isinstance(x, LabelLayer) for x in labels):
        return list(labels)
    raise PetfeatError("labels must be an unsigned integer array on the PET grid (with label_names), a "
                       f"LabelLayer or a list of LabelLayer; got {type(labels).__name__}.")


def config_hash(settings: Mapping) -> str:
    """Short stable hash of the settings that determine the numbers."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def extract_features(
    pet: PetSeries | np.ndarray,
    labels,
    regions: Mapping | None = None,
    *,
    label_names: Mapping[int, str] | None = None,
    backend: str = "auto",
    suv_type: str = "bw",
    spacing: Sequence[float] | None = None,
    factors: SuvFactors | None = None,
    peaks: bool = True,
    id_key: bytes | None = None,
    timings: dict | None = None,
) -> pd.DataFrame:
    """Region features of one PET volume, in the long schema (one row per region).

    Parameters
    ----------
    pet : PetSeries or (Z, Y, X) ndarray
        A series from :func:`petfeat.io.dicom.read_pet_series` (stored pixels are converted to SUV
        inside the kernel), or an array whose values are already SUV (then ``spacing`` is needed).
    labels : (Z, Y, X) unsigned int ndarray, LabelLayer or list of LabelLayer
        Label maps on the PET grid.
    regions : mapping, optional
        Region name -> label names/globs to include (and exclude); see :mod:`petfeat.regions`.
        Default: one region per label name.
    label_names : mapping of int to str, optional
        Names of the ids of an ndarray ``labels``.
    backend : {"auto", "cpu", "gpu"}
        ``auto`` uses the GPU when one is usable; ``gpu`` without one raises BackendError.
    suv_type : {"bw", "lbm", "bsa"}
        SUV normalisation (body weight, lean body mass, body surface area).
    spacing : (3,) sequence of float, optional
        Voxel size in mm (Z, Y, X) for an ndarray ``pet``.
    factors : SuvFactors, optional
        Precomputed factors (with overrides); computed from the header when omitted.
    peaks : bool
        Compute SUVpeak (local and global).
    id_key : bytes, optional
        Key of the patient pseudonym.
    timings : dict, optional
        Filled with seconds per stage.

    Returns
    -------
    pandas.DataFrame
        Columns: keys (patient_id, study_date, series_uid, region), the features of
        :data:`petfeat.features.FEATURES`, and provenance (status, suv_type, backend,
        petfeat_version, config_hash).
    """
    from petfeat import __version__

    t0 = time.perf_counter()
    ran = resolve_backend(backend)
    if isinstance(pet, PetSeries):
        factors = factors or compute_suv_factors(pet.suv_header)
        f = factors.factor(suv_type)
        stored, scale, offset = pet.stored, pet.slope * f, pet.intercept * f
        sp = pet.geometry.spacing
        keys = {"patient_id": pseudonym(pet.patient_id, id_key), "study_date": pet.study_date,
                "series_uid": pet.series_uid}
    else:
        stored = np.ascontiguousarray(pet)
        if spacing is None:
            raise PetfeatError("an array pet needs spacing=(dz, dy, dx) in mm.")
        sp = tuple(float(s) for s in spacing)
        scale, offset = np.ones(stored.shape[0]), np.zeros(stored.shape[0])
        keys = {"patient_id": None, "study_date": None, "series_uid": None}
    if stored.ndim != 3:
        raise PetfeatError(f"pet is {stored.ndim}-dimensional and must be (Z, Y, X).")
    layers = _layers(labels, label_names, stored.shape)
    spec = normalise_spec(regions) if regions is not None else default_spec(layers)
    codemap = build_codes(layers, stored.shape)
    members = region_codes(spec, codemap)
    t1 = time.perf_counter()
    partials = kernels.fused_reduce(stored, codemap.codes, scale, offset, codemap.n_codes, backend=ran)
    t2 = time.perf_counter()
    peak_values = None
    if peaks:
        peak_values = _peaks(stored, codemap, scale, offset, sp, members, partials, ran)
    t3 = time.perf_counter()
    voxel_ml = float(np.prod(sp)) / 1000.0
    rows = region_rows(partials, members, voxel_ml, peak_values, codes_touching_border(codemap.codes),
                       regions_naming_known_labels(spec, layers))
    settings = {"regions": spec, "suv_type": suv_type, "peak_radius_mm": PEAK_RADIUS_MM, "peaks": peaks}
    df = pd.DataFrame(rows)
    for k, v in keys.items():
        df[k] = v
    df["suv_type"] = suv_type
    df["backend"] = ran
    df["petfeat_version"] = __version__
    df["config_hash"] = config_hash(settings)
    df = df[list(KEY_COLUMNS) + list(FEATURE_NAMES) + list(PROVENANCE_COLUMNS)]
    if timings is not None:
        timings.update(codes_s=t1 - t0, reduce_s=t2 - t1, peak_s=t3 - t2, rows_s=time.perf_counter() - t3)
    return df


def _peaks(stored, codemap, scale, offset, spacing, members, partials, backend):
    names = list(members)
    ptr = np.zeros(codemap.n_codes + 1, np.int64)
    per_code: list[list[int]] = [[] for _ in range(codemap.n_codes)]
    for r, name in enumerate(names):
        for c in members[name]:
            per_code[int(c)].append(r)
    ptr[1:] = np.cumsum([len(x) for x in per_code])
    flat = np.asarray([r for x in per_code for r in x], dtype=np.int64)
    region_max = np.asarray([partials.max[members[n]].max() if len(members[n]) else -np.inf for n in names])
    glob, loc = kernels.suv_peak(stored, codemap.codes, scale, offset, sphere_offsets(spacing), ptr, flat,
                                 region_max, len(names), backend=backend)
    return {n: (float(g) if np.isfinite(g) else np.nan, float(lo) if np.isfinite(lo) else np.nan)
            for n, g, lo in zip(names, glob, loc)}
