"""The single public entry point from a PET volume and label maps to a feature table.

:func:`extract` runs the stages of one study in order (input, lesions, codes, reduce, peaks, rows);
each stage is a function of its own, testable alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from petfeat import kernels
from petfeat.backend import resolve_backend
from petfeat.errors import BackendError, LabelError, PetfeatError, PetfeatWarning
from petfeat.features import FEATURE_NAMES, PEAK_NEIGHBOURS, PEAK_RADIUS_MM, region_peaks, region_rows, sphere_offsets
from petfeat.io.dicom import Geometry, PetSeries, notes_json
from petfeat.label_classes import build_region_codes
from petfeat.lesions import centroids_mm, check_connectivity, connected_components, threshold_mask
from petfeat.regions import (
    LabelLayer,
    _code_dtype,
    codes_touching_border,
    default_spec,
    exclude_typos,
    margin_layers,
    normalise_spec,
    region_codes,
    unmatched_regions,
)
from petfeat.suv import SuvFactors, compute_suv_factors

KEY_COLUMNS = ("patient_id", "study_date", "series_uid", "region")
PROVENANCE_COLUMNS = ("status", "suv_type", "backend", "lesion_method", "petfeat_version", "config_hash",
                      "input_notes")
LESION_COLUMNS = ("lesion_id", "site", "suv_mean", "suv_max", "suv_min", "suv_std", "suv_peak_local", "suv_peak_global",
                  "volume_ml", "total_uptake", "voxel_count", "nan_voxel_count", "touches_border", "centroid_x_mm",
                  "centroid_y_mm", "centroid_z_mm", "status")
_PROCESS_KEY = os.urandom(16)
_FILE_KEYS: dict = {}  # key file -> its key, read once per process


def pseudonym(patient_id: str, key: bytes | None = None, study_uid: str = "") -> str:
    """Patient pseudonym (:func:`petfeat.pseudonyms.pseudonym`) under ``key``, else under the key file.

    With ``key`` None: the key the command line uses (``$PETFEAT_KEY_FILE``, else
    ``~/.config/petfeat/petfeat.key``, created when missing), so a series gets the same ``patient_id``
    from the Python API as from ``petfeat extract``. When that file cannot be read or written, a key of
    this process only, with a warning (the ids then join nothing outside it).
    """
    from petfeat.pseudonyms import default_key_path, load_or_create_key
    from petfeat.pseudonyms import pseudonym as keyed

    if key is None:
        path = default_key_path()
        try:
            key = _FILE_KEYS.get(path) or _FILE_KEYS.setdefault(path, load_or_create_key(path))
        except PetfeatError as exc:
            warnings.warn(f"patient_id: {exc} Using a key of this process only (pass id_key= to choose one).",
                          PetfeatWarning, stacklevel=3)
            key = _PROCESS_KEY
    return keyed(patient_id, key, study_uid)


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


@dataclass
class ExtractResult:
    """Features (one row per region), lesions (one row per connected component) and the settings.

    ``warnings``: the messages of the :class:`~petfeat.errors.PetfeatWarning` s the extraction raised
    (regions that match no label...), for ``run.json``. When no region matches any label name, the
    extraction warns once (:func:`no_region_matches`) and ``warnings`` holds that summary followed by
    each region's message.
    """

    features: pd.DataFrame
    lesions: pd.DataFrame
    settings: dict
    timings: dict
    warnings: list[str] = field(default_factory=list)


def extract_features(pet, labels, regions: Mapping | None = None, **kwargs) -> pd.DataFrame:
    """Region features of one PET volume, in the long schema (one row per region).

    Same parameters as :func:`extract`; returns only its ``features`` table.
    """
    return extract(pet, labels, regions, **kwargs).features


def extract(
    pet: PetSeries | np.ndarray,
    labels,
    regions: Mapping | None = None,
    *,
    label_names: Mapping[int, str] | None = None,
    lesions=None,
    threshold: Mapping | None = None,
    connectivity: int = 26,
    min_lesion_ml: float = 0.0,
    backend: str = "auto",
    suv_type: str = "bw",
    spacing: Sequence[float] | None = None,
    factors: SuvFactors | None = None,
    peaks: bool = True,
    peak_neighbours: str = "image",
    strict: bool = False,
    id_key: bytes | None = None,
) -> ExtractResult:
    """Region features and per-lesion rows of one PET volume.

    A short pipeline of stages, each callable alone: :func:`study_input` (stored pixels, SUV scale,
    keys), :func:`stage_lesions` (mask or threshold, components, lesion layer), :func:`stage_codes`
    (label combinations -> codes, regions -> codes), :func:`stage_reduce` (the fused pass),
    :func:`stage_peaks` (SUVpeak), then the region and lesion rows and :func:`stage_rows` (keys and
    provenance).

    Parameters
    ----------
    pet : PetSeries or (Z, Y, X) ndarray
        A series from :func:`petfeat.io.dicom.read_pet_series` (stored pixels are converted to SUV
        inside the kernel), or an array whose values are already SUV (then ``spacing`` is needed).
    labels : (Z, Y, X) unsigned int ndarray, LabelLayer or list of LabelLayer
        Label maps on the PET grid (organs, ...).
    regions : mapping, optional
        Region name -> label names/globs to include, require (``within``) and exclude (with an
        optional ``exclude_margin_mm``); see :mod:`petfeat.regions`. Default: one region per label
        name. Lesion voxels carry the label ``lesion`` in name space ``lesions``. A region that no
        label can fill is a :class:`~petfeat.errors.PetfeatWarning` naming the labels that exist.
    label_names : mapping of int to str, optional
        Names of the ids of an ndarray ``labels``.
    lesions : (Z, Y, X) ndarray or LabelLayer, optional
        Lesion mask on the PET grid (binary or instance ids); petfeat finds its connected components.
    threshold : mapping, optional
        Threshold segmentation when there is no lesion mask: ``{"method": "fixed", "threshold": 3.0}``
        or ``{"method": "percist"}`` (optionally ``"exclude": [globs]``).
    connectivity : {6, 26}
        Lesion connectivity.
    min_lesion_ml : float
        Components smaller than this are not lesions.
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
    peak_neighbours : {"image", "region"}
        Voxels the SUVpeak sphere averages: every in-image voxel (IBSI, default) or only the
        region's own voxels (regions and lesions alike; computed on the CPU whatever the backend).
    strict : bool
        A region that matches no label raises :class:`~petfeat.errors.LabelError` instead of a warning.
    id_key : bytes, optional
        Key of the patient pseudonym; default: the command line's key file (:func:`pseudonym`).

    Returns
    -------
    ExtractResult
        ``features``: keys (patient_id, study_date, series_uid, region), the features of
        :data:`petfeat.features.FEATURES`, provenance (status, suv_type, backend, lesion_method,
        petfeat_version, config_hash, input_notes: the reader's notes as compact JSON, "" when none).
        ``lesions``: one row per component with its features and
        centroid (mm).
    """
    t0 = time.perf_counter()
    ran = resolve_backend(backend)
    if peak_neighbours not in PEAK_NEIGHBOURS:
        raise PetfeatError(f"peak_neighbours is {peak_neighbours!r}; choose 'image' (IBSI: every voxel in the "
                           "sphere) or 'region' (only the region's voxels).")
    study = study_input(pet, suv_type=suv_type, spacing=spacing, factors=factors, id_key=id_key)
    layers = _layers(labels, label_names, study.stored.shape)
    les = stage_lesions(study, layers, lesions, threshold, connectivity, min_lesion_ml, ran)
    spec = normalise_spec(regions) if regions is not None else default_spec(les.layers)
    unmatched, unmatched_notes = _check_unmatched(spec, les.layers, strict)
    codemap, members = stage_codes(spec, les.layers, study)
    ran = _reduce_backend(ran, backend, codemap.n_codes)
    t1 = time.perf_counter()
    partials = stage_reduce(study, codemap, ran)
    t2 = time.perf_counter()
    peak_values = stage_peaks(study, codemap, members, partials, ran, peak_neighbours) if peaks else None
    t3 = time.perf_counter()
    rows = region_rows(partials, members, study.geometry.voxel_volume_ml, peak_values,
                       codes_touching_border(codemap.codes), set(spec) - set(unmatched))
    codes_at = les.codes_at_lesions(codemap)
    del codemap  # the code volume is not needed any more: the deferred components are labelled without it
    counts = les.counts(codes_at, members)
    lesion_df = _lesion_rows(les.comps, study.stored, study.scale, study.offset, study.geometry, les.organ_layers,
                             peaks, ran, peak_neighbours, les.voxels) if les.comps is not None else \
        pd.DataFrame(columns=list(LESION_COLUMNS))
    t4 = time.perf_counter()
    settings = {"regions": spec, "suv_type": suv_type, "peak_radius_mm": PEAK_RADIUS_MM, "peaks": peaks,
                "peak_neighbours": peak_neighbours, "lesions": les.settings}
    df, lesion_df = stage_rows(rows, counts, lesion_df, study, settings, ran)
    timings = {"codes_s": t1 - t0, "reduce_s": t2 - t1, "peak_s": t3 - t2, "lesions_s": t4 - t3}
    return ExtractResult(df, lesion_df, settings, timings, unmatched_notes)


@dataclass
class StudyInput:
    """The PET volume as the stages use it: stored pixels, per-slice SUV scale and offset, grid, key columns.

    ``scale``/``offset`` map a stored pixel to SUV of ``suv_type`` (slope and intercept times the SUV
    factor); for an array already in SUV they are 1 and 0. ``series`` is the PetSeries, or None.
    """

    stored: np.ndarray
    scale: np.ndarray
    offset: np.ndarray
    geometry: Geometry
    keys: dict
    series: PetSeries | None = None
    factors: SuvFactors | None = None


def study_input(pet: PetSeries | np.ndarray, *, suv_type: str = "bw", spacing: Sequence[float] | None = None,
                factors: SuvFactors | None = None, id_key: bytes | None = None) -> StudyInput:
    """Stage 0: the PET series (or an SUV array with ``spacing``) as a :class:`StudyInput`.

    Factors computed here (``factors`` None) warn once per header decision
    (:attr:`petfeat.suv.SuvFactors.decisions`); whoever passes ``factors`` computed them and tells.
    """
    if isinstance(pet, PetSeries):
        if factors is None:
            factors = compute_suv_factors(pet.suv_header)
            warn_suv_decisions(factors, stacklevel=3)
        f = factors.factor(suv_type)
        keys = {"patient_id": pseudonym(pet.patient_id, id_key, pet.study_uid), "study_date": pet.study_date,
                "series_uid": pet.series_uid}
        return StudyInput(pet.stored, pet.slope * f, pet.intercept * f, pet.geometry, keys, pet, factors)
    stored = np.ascontiguousarray(pet)
    if spacing is None:
        raise PetfeatError("an array pet needs spacing=(dz, dy, dx) in mm.")
    if stored.ndim != 3:
        raise PetfeatError(f"pet is {stored.ndim}-dimensional and must be (Z, Y, X).")
    geometry = Geometry(tuple(stored.shape), tuple(float(s) for s in spacing), (0.0, 0.0, 0.0),
                        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return StudyInput(stored, np.ones(stored.shape[0]), np.zeros(stored.shape[0]), geometry,
                      {"patient_id": None, "study_date": None, "series_uid": None})


@dataclass
class LesionStage:
    """The lesions of a study: the mask, its components, and the label layers with the lesion layer appended.

    With no minimum volume and a boolean mask the components are ``deferred``: the mask itself is the
    lesion layer of the region pass, and the components are labelled after it (:meth:`counts`), once
    the code volume is freed, so one volume fewer is alive at a time.
    """

    layers: list
    organ_layers: list
    mask: np.ndarray | None = None
    comps: object = None
    deferred: bool = False
    settings: dict = field(default_factory=dict)
    voxel_ml: float = 0.0
    connectivity: int = 26
    backend: str = "cpu"

    def codes_at_lesions(self, codemap) -> np.ndarray | None:
        """The codes under the lesion voxels (None without lesions)."""
        if self.mask is None:
            return None
        self._voxels = np.flatnonzero(self.mask) if self.deferred else np.flatnonzero(self.comps.ids)
        return codemap.codes.ravel()[self._voxels]

    @property
    def voxels(self) -> np.ndarray | None:
        """Flat indices of the components' voxels, known after :meth:`codes_at_lesions`.

        Deferred components cover the whole mask: no minimum volume drops any of them.
        """
        return getattr(self, "_voxels", None)

    def counts(self, codes_at: np.ndarray | None, members) -> dict[str, int] | None:
        """Components per region (labelling the deferred components first); None without lesions."""
        if self.mask is None:
            return None
        if self.deferred:
            self.comps = connected_components(self.mask, self.voxel_ml, self.connectivity, 0.0, backend=self.backend)
        self.settings.update(self.comps.settings)
        return _lesion_counts(self.comps.ids.ravel()[self._voxels], codes_at, members)


def stage_lesions(study: StudyInput, layers: list, lesions=None, threshold: Mapping | None = None,
                  connectivity: int = 26, min_lesion_ml: float = 0.0, backend: str = "cpu") -> LesionStage:
    """Stage 1, lesions: the given mask or a threshold segmentation, its components, the lesion layer.

    The lesion layer (label ``lesion``, name space ``lesions``) is appended to ``layers`` in the
    returned stage; ``organ_layers`` are the layers without it (they name each lesion's site).
    """
    stored, scale, offset = study.stored, study.scale, study.offset
    lesion_settings: dict = {}
    mask = None
    if lesions is not None:
        mask = lesions.array if isinstance(lesions, LabelLayer) else np.asarray(lesions)
        if mask.shape != stored.shape:
            raise LabelError(f"lesion mask shape {mask.shape} differs from the PET grid {stored.shape}; resample it "
                             "onto the PET grid first.")
        lesion_settings["source"] = "mask"
    elif threshold is not None:
        th = dict(threshold)
        values = _suv_volume(stored, scale, offset)
        sul = None
        if th.get("method") == "percist":
            if study.series is None or study.factors.sul_factor is None:
                raise LabelError("PERCIST thresholding needs SUL: a DICOM series with PatientSize and PatientSex.")
            fl = study.factors.factor("lbm")
            sul = _suv_volume(stored, study.series.slope * fl, study.series.intercept * fl)
        mask, params = threshold_mask(values, layers, study.geometry.spacing, method=th.get("method", "fixed"),
                                      threshold=float(th.get("threshold", 3.0)), sul=sul, exclude=th.get("exclude"))
        del values, sul
        lesion_settings.update(source="threshold", **params)
    comps = None
    voxel_ml = study.geometry.voxel_volume_ml
    cc_backend = "gpu" if backend == "gpu" and _cupy_usable() else "cpu"
    check_connectivity(connectivity)  # before the region pass: components may only be labelled after it
    defer = mask is not None and mask.dtype == bool and min_lesion_ml <= 0
    if mask is not None and not defer:
        comps = connected_components(mask, voxel_ml, connectivity, min_lesion_ml, backend=cc_backend)
        layers = layers + [comps.as_layer("lesion", mask)]
    elif defer:
        layers = layers + [LabelLayer(mask.view(np.uint8), {1: "lesion"}, "lesion components")]
    if mask is not None:
        layers[-1].namespace = "lesions"
    organ_layers = layers[:-1] if mask is not None else layers
    return LesionStage(layers, organ_layers, mask, comps, defer, lesion_settings, voxel_ml, connectivity, cc_backend)


def stage_codes(spec: Mapping, layers: list, study: StudyInput):
    """Stage 2, codes: one code per combination of labels, and each region's codes.

    Exclusion margins are extra layers, so one pass still serves every region. Labels that no region
    tells apart share one class (:func:`petfeat.label_classes.build_region_codes`): fewer codes, the
    same region voxels. Returns the code map and ``{region: codes}``.
    """
    sp = study.geometry.spacing
    codemap = build_region_codes(spec, layers + margin_layers(spec, layers, sp), study.stored.shape)
    return codemap, region_codes(spec, codemap)


def stage_reduce(study: StudyInput, codemap, backend: str):
    """Stage 3, reduce: the fused pass, stored pixels -> SUV -> per-code partials (:func:`kernels.fused_reduce`)."""
    return kernels.fused_reduce(study.stored, codemap.codes, study.scale, study.offset, codemap.n_codes,
                                backend=backend)


def stage_peaks(study: StudyInput, codemap, members, partials, backend: str, neighbours: str = "image") -> dict:
    """Stage 4, peaks: IBSI global and local SUVpeak of each region, ``{region: (global, local)}``."""
    return _peaks(study.stored, codemap.codes, codemap.n_codes, study.scale, study.offset, study.geometry.spacing,
                  members, partials, backend, neighbours)


def stage_rows(rows: list[dict], counts: dict | None, lesion_df: pd.DataFrame, study: StudyInput, settings: dict,
               backend: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stage 5, rows: the feature and lesion tables with their key and provenance columns, in schema order."""
    from petfeat import __version__

    suv_type = settings["suv_type"]
    chash = config_hash(settings)
    df = pd.DataFrame(rows)
    df["lesion_count"] = [counts[r] if counts is not None else pd.NA for r in df.region]
    df["lesion_count"] = df["lesion_count"].astype("Int64")
    for k, v in study.keys.items():
        df[k] = v
        lesion_df[k] = v
    for frame in (df, lesion_df):
        frame["suv_type"] = suv_type
        frame["backend"] = backend
        frame["lesion_method"] = describe_lesion_method(settings["lesions"])
        frame["petfeat_version"] = __version__
        frame["config_hash"] = chash
        frame["input_notes"] = input_notes(study)
    df = df[list(KEY_COLUMNS) + list(FEATURE_NAMES) + list(PROVENANCE_COLUMNS)]
    lesion_df = lesion_df[["patient_id", "study_date", "series_uid"] + list(LESION_COLUMNS)
                          + list(PROVENANCE_COLUMNS[1:])]
    return df, lesion_df


def warn_suv_decisions(factors: SuvFactors, stacklevel: int = 2) -> None:
    """One :class:`~petfeat.errors.PetfeatWarning` per header decision of the SUV computation.

    Parameters
    ----------
    factors : SuvFactors
        Factors whose :attr:`~petfeat.suv.SuvFactors.decisions` (a dose read as MBq, a missing
        DecayCorrection taken as START...) are to be shown.
    stacklevel : int
        Passed on to :func:`warnings.warn`.
    """
    for note in factors.decisions:
        warnings.warn(f"SUV: {note}", PetfeatWarning, stacklevel=stacklevel + 1)


#: The prefix of a study's ``run.json`` warning that is an SUV header decision (:func:`suv_decision_notes`).
SUV_DECISION = "SUV header decision"


def suv_decision_notes(factors: SuvFactors) -> list[str]:
    """The SUV header decisions as a study's warnings in ``run.json`` ("SUV header decision: ..."), in order."""
    return [f"{SUV_DECISION}: {d}" for d in factors.decisions]


def input_notes(study: StudyInput) -> str:
    """The ``input_notes`` of a study's rows: the reader's notes and, under ``suv``, the SUV header decisions.

    Compact JSON with sorted keys (:func:`petfeat.io.dicom.notes_json`), "" when there is nothing to
    note or the input is an SUV array. Neither part names a file or a patient.
    """
    if study.series is None:
        return ""
    notes = dict(study.series.notes)
    if study.factors is not None and study.factors.decisions:
        notes["suv"] = list(study.factors.decisions)
    return notes_json(notes)


def _check_unmatched(spec, layers, strict: bool) -> tuple[dict[str, str], list[str]]:
    """Warn of regions no label can fill and of misspelt-looking exclude patterns.

    Each is a PetfeatWarning, or together one LabelError with ``strict``. Two cases give one summary
    warning instead of one per region: no label source at all (only a lesion mask or a threshold:
    the regions that need labels are empty, as expected; :func:`no_label_sources`), and no region of
    several matching any label name (:func:`no_region_matches`). Returns the unmatched regions'
    messages by region, and the messages for ``run.json`` (the summary first, when there is one).
    """
    from petfeat.regions import MARGIN_NAMESPACE

    unmatched = unmatched_regions(spec, layers)
    typos = list(exclude_typos(spec, layers).values())
    labelled = any(la.names for la in layers if la.namespace not in (LESION_NAMESPACE, MARGIN_NAMESPACE))
    if not labelled and len(unmatched) > 1:
        summary, shown = no_label_sources(spec, unmatched), typos
    else:
        summary = no_region_matches(spec, layers, unmatched) if len(spec) > 1 and len(unmatched) == len(spec) \
            else None
        shown = [] if summary is not None else list(unmatched.values()) + typos
    messages = ([summary] if summary is not None else []) + list(unmatched.values()) + typos
    if messages and strict:
        raise LabelError(" ".join(messages) + " (strict: a region that matches no label, or an exclude pattern that "
                         "looks misspelt, is an error; fix the region names or the label sources, or drop --strict.)")
    for msg in ([summary] if summary is not None else []) + shown:
        warnings.warn(msg, PetfeatWarning, stacklevel=3)
    return unmatched, ([summary] if summary is not None else []) + list(unmatched.values())


#: Name space of the lesion layer (:func:`stage_lesions`).
LESION_NAMESPACE = "lesions"


def no_label_sources(spec: Mapping, messages: Mapping[str, str]) -> str:
    """One message for the regions left empty because the study has no label source, only lesions or none.

    Parameters
    ----------
    spec : mapping
        The normalised region spec.
    messages : mapping of str to str
        The unmatched regions' messages (:func:`petfeat.regions.unmatched_regions`), by region.

    Returns
    -------
    str
        The regions that stay empty (status ``no_matching_label``) and how to measure them.
    """
    names = ", ".join(messages)
    return (f"no label source given: {len(messages)} of the {len(spec)} regions need labels (organs, bones...) and "
            f"are empty, status no_matching_label ({names}). To measure them, add label maps with --labels (e.g. a "
            "TotalSegmentator output; Python: labels=).")


#: Label names the summary of :func:`no_region_matches` shows.
SHOWN_LABELS = 10


def no_region_matches(spec: Mapping, layers: Sequence[LabelLayer],
                      messages: Mapping[str, str] | None = None) -> str | None:
    """One message for regions of which none matches a label name: the labels there are and how to select them.

    Parameters
    ----------
    spec : mapping
        The normalised region spec (every region unmatched).
    layers : sequence of LabelLayer
        The label layers of the study.
    messages : mapping of str to str, optional
        Each region's message (:func:`petfeat.regions.unmatched_regions`); their "did you mean"
        suggestions (a misspelt or differently cased name) are carried into the summary.

    Returns
    -------
    str or None
        The message (the first :data:`SHOWN_LABELS` label names, the close names, and a regions file
        that selects the labels), or None when the layers name no label (nothing to suggest).
    """
    from petfeat.regions import BUILTIN_REGIONS, MARGIN_NAMESPACE

    names = list(dict.fromkeys(n for layer in layers if layer.namespace != MARGIN_NAMESPACE
                               for n in layer.names.values()))
    if not names:
        return None
    shown = ", ".join(names[:SHOWN_LABELS]) + (f" and {len(names) - SHOWN_LABELS} more" if len(names) > SHOWN_LABELS
                                                else "")
    builtin = set(spec) == set(BUILTIN_REGIONS)
    which = "built-in regions (they need TotalSegmentator classes or a lesion mask)" if builtin else "regions"
    example = ", ".join(f"{json.dumps(n)}: [{json.dumps(_glob_literal(n))}]" for n in names[:2])
    close = [f"{region}: {m.group(1)}" for region, msg in (messages or {}).items()
             if (m := re.search(r"; did you mean (.*?)\?", msg))]
    hint = f" Close names (did you mean): {'; '.join(close)}." if close else ""
    return (f"none of the {len(spec)} {which} matches a label name (their rows have status no_matching_label); "
            f"the labels are {shown}.{hint} To measure them, write a regions file, e.g. regions.yaml with "
            f"'regions: {{{example}}}' (globs allowed, see docs/regions.md), and pass --regions regions.yaml "
            "(Python: regions=).")


def _glob_literal(name: str) -> str:
    """``name`` as an fnmatch pattern that matches only itself (``*``, ``?`` and ``[`` bracketed)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def describe_lesion_method(s: dict) -> str:
    """One line that says how the lesions were found (goes into every output row)."""
    if not s:
        return "none"
    conn = f"{s.get('connectivity')}-connected, >= {s.get('min_volume_ml', 0.0):g} mL"
    if s.get("source") == "mask":
        return f"mask; {conn}"
    if s.get("method") == "fixed":
        return f"threshold SUV >= {s['threshold_suv']:g}; {conn}"
    return (f"PERCIST SUL >= {s['threshold_sul']:.3f} (liver {s['liver_sul_mean']:.3f} +- {s['liver_sul_sd']:.3f}); "
            f"{conn}")


def _suv_volume(stored, scale, offset) -> np.ndarray:
    """One float32 SUV volume (only for threshold segmentation)."""
    out = stored.astype(np.float32)
    out *= scale.astype(np.float32)[:, None, None]
    out += offset.astype(np.float32)[:, None, None]
    return out


def _lesion_counts(ids_at: np.ndarray, codes_at: np.ndarray, members) -> dict[str, int]:
    """Number of distinct components with at least one voxel in each region (ids and codes at lesion voxels)."""
    pairs = np.unique(np.stack([ids_at.astype(np.int64), codes_at.astype(np.int64)], 1), axis=0)
    return {name: int(np.unique(pairs[np.isin(pairs[:, 1], codes), 0]).size) for name, codes in members.items()}


def _lesion_rows(comps, stored, scale, offset, geometry, layers, peaks, backend, peak_neighbours="image",
                 voxels=None):
    """One row per component: features from a fused pass over component ids, centroid, site (from ``layers``).

    ``voxels``: the flat indices of the components' voxels when known (else found here, once).
    """
    n = comps.n
    if n == 0:
        return pd.DataFrame(columns=list(LESION_COLUMNS))
    ids = comps.ids
    window = n + 1 if backend == "cpu" else min(n + 1, _gpu_code_limit())
    parts = []
    for lo in range(1, n + 1, window - 1):  # GPU: windows of ids that fit in shared memory
        hi = min(n, lo + window - 2)
        if lo == 1 and hi == n:  # one window (always on the CPU): the component ids are the codes
            codes = ids.astype(_code_dtype(n + 1), copy=False)
        else:
            codes = np.where((ids >= lo) & (ids <= hi), ids - (lo - 1), 0).astype(_code_dtype(hi - lo + 2))
        p = kernels.fused_reduce(stored, codes, scale, offset, hi - lo + 2, backend=backend)
        members = {str(k): np.array([k - lo + 1]) for k in range(lo, hi + 1)}
        pk = _peaks(stored, codes, hi - lo + 2, scale, offset, geometry.spacing, members, p, backend,
                    peak_neighbours) if peaks else None
        parts.extend(region_rows(p, members, geometry.voxel_volume_ml, pk, codes_touching_border(codes)))
    df = pd.DataFrame(parts).rename(columns={"region": "lesion_id"})
    df["lesion_id"] = df["lesion_id"].astype(int)
    flat = np.flatnonzero(ids.ravel()) if voxels is None else voxels
    cen = centroids_mm(ids, n, geometry, flat)
    df["centroid_x_mm"], df["centroid_y_mm"], df["centroid_z_mm"] = cen[:, 0], cen[:, 1], cen[:, 2]
    df["site"] = _sites(ids, n, layers, flat)
    return df


def _sites(ids, n, layers, flat) -> list[str]:
    """The most frequent organ label under each component ("soft_tissue" when none); ``flat``: its voxels."""
    out = ["soft_tissue"] * n
    best = np.zeros(n)
    comp = ids.ravel()[flat].astype(np.int64) - 1
    for layer in layers:
        lab = layer.array.ravel()[flat].astype(np.int64)
        keep = lab > 0
        if not keep.any():
            continue
        m = int(lab.max()) + 1
        counts = np.bincount(comp[keep] * m + lab[keep], minlength=n * m).reshape(n, m)
        for i in range(n):
            j = int(np.argmax(counts[i]))
            if counts[i, j] > best[i]:
                best[i] = counts[i, j]
                out[i] = layer.names.get(j, f"label_{j}")
    return out


def _cupy_usable() -> bool:
    """CuPy with a real device (not the Numba simulator) runs the GPU lesion components."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - missing CuPy or driver: the CPU labels components
        return False


def _reduce_backend(ran: str, asked: str, n_codes: int) -> str:
    """The backend of the region pass: the CPU when ``auto`` chose a GPU whose code table is too small.

    The GPU reduction holds every code (label combination) in shared memory
    (:data:`petfeat.kernels.config.MAX_GPU_CODES`). Above it, ``auto`` reduces the study on the CPU with a
    warning (the numbers are the same; the ``backend`` column says ``cpu``); ``gpu`` asked for explicitly
    is refused with the ways out.
    """
    limit = _gpu_code_limit()
    if ran != "gpu" or n_codes <= limit:
        return ran
    msg = (f"the labels form {n_codes} label combinations (background included) for these regions, more than the "
           f"GPU reduction's table of {limit} (PETFEAT_CUDA_MAX_CODES)")
    if asked == "gpu":
        raise BackendError(f"{msg}; use backend 'cpu' or 'auto' (the same numbers), give fewer label sources, or raise "
                           "PETFEAT_CUDA_MAX_CODES where the device's shared memory allows.")
    warnings.warn(f"{msg}: this study's regions are reduced on the CPU (the same numbers).", PetfeatWarning,
                  stacklevel=3)
    return "cpu"


def _gpu_code_limit() -> int:
    from petfeat.kernels.config import MAX_GPU_CODES

    return MAX_GPU_CODES


def _peaks(stored, codes, n_codes, scale, offset, spacing, members, partials, backend, neighbours="image"):
    """``{region: (global peak, local peak)}``; ``neighbours="region"`` averages only the region's voxels."""
    names = list(members)
    if neighbours == "region":
        member = np.zeros((n_codes, len(names)), bool)
        for r, name in enumerate(names):
            member[members[name], r] = True
        glob, loc = region_peaks(stored, codes, scale, offset, sphere_offsets(spacing), member)
        return {n: (float(g), float(lo)) for n, g, lo in zip(names, glob, loc)}
    ptr = np.zeros(n_codes + 1, np.int64)
    per_code: list[list[int]] = [[] for _ in range(n_codes)]
    for r, name in enumerate(names):
        for c in members[name]:
            per_code[int(c)].append(r)
    ptr[1:] = np.cumsum([len(x) for x in per_code])
    flat = np.asarray([r for x in per_code for r in x], dtype=np.int64)
    region_max = np.asarray([partials.max[members[n]].max() if len(members[n]) else -np.inf for n in names])
    glob, loc = kernels.suv_peak(stored, codes, scale, offset, sphere_offsets(spacing), ptr, flat,
                                 region_max, len(names), backend=backend)
    return {n: (float(g) if np.isfinite(g) else np.nan, float(lo) if np.isfinite(lo) else np.nan)
            for n, g, lo in zip(names, glob, loc)}
