"""A synthetic PSMA PET archive: DICOM PET per patient, TotalSegmentator-style labels, lesion masks, truth.

Layout of ``generate_archive(out, n_patients)``::

    out/
      archive.json                 what was generated (seed, sizes, patients)
      SYN0001/
        pet/slice_0000.dcm ...     PET series (vendor variant cycles siemens, ge, philips)
        seg/<class>.nii.gz         one binary NIfTI per TotalSegmentator class, on a CT-like grid
        lesions.nii.gz             lesion instance ids on the PET grid
        truth.json                 planted values and exact statistics of the encoded SUV

The target folder must be new, empty, or a previous synthetic archive (``archive.json`` written by
``petfeat.synth``, also while it is being written), which is replaced only with ``overwrite=True``
(:func:`prepare_target`); a folder holding anything else is never written into.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petfeat.errors import PetfeatError
from petfeat.synth.dicom_writer import VENDORS, Acquisition, write_pet_series
from petfeat.synth.phantom import make_anatomy, rasterise, uptake_volume

#: Default PET grid: 4 mm isotropic voxels; in-plane field of view 400 mm; 900 mm axial.
DEFAULT_VOXEL_MM = 4.0
FOV_XY_MM = 400.0
BODY_HEIGHT_MM = 900.0
#: CT-like grid of the label files: finer in-plane, coarser axially, shifted origin.
CT_SPACING_ZYX = (5.0, 2.5, 2.5)
#: The generator's name in ``archive.json``: a folder with it holds a synthetic archive.
GENERATOR = "petfeat.synth"
_STUDY_FOLDER = re.compile(r"SYN\d{4}")


def _write_nifti(path: Path, arr: np.ndarray, spacing_zyx, origin_xyz):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    img.SetOrigin(tuple(float(o) for o in origin_xyz))
    sitk.WriteImage(img, str(path), useCompression=True)


def generate_patient(out: Path, index: int, rng: np.random.Generator, vendor: str, voxel_mm: float,
                     ct_labels: bool = True, noise: float = 0.08) -> dict:
    """Write one synthetic patient; returns its truth record."""
    out.mkdir(parents=True, exist_ok=True)
    anatomy = make_anatomy(rng, BODY_HEIGHT_MM)
    n_xy = int(round(FOV_XY_MM / voxel_mm))
    n_z = int(round(BODY_HEIGHT_MM / voxel_mm))
    spacing = (voxel_mm, voxel_mm, voxel_mm)
    origin = (-FOV_XY_MM / 2 + voxel_mm / 2, -FOV_XY_MM / 2 + voxel_mm / 2, voxel_mm / 2)
    masks, lesion_map = rasterise(anatomy, (n_z, n_xy, n_xy), spacing, origin)
    suv = uptake_volume(anatomy, masks, lesion_map)
    img = sitk.GetImageFromArray(suv)
    img.SetSpacing(spacing)
    suv = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(img, 2.5))  # scanner resolution (sigma mm)
    suv = np.clip(suv * (1.0 + noise * rng.standard_normal(suv.shape)), 0.0, None)
    scan = dt.datetime(2024, 1, 8, 9, 0) + dt.timedelta(days=int(rng.integers(0, 600)),
                                                        minutes=int(rng.integers(0, 400)))
    acq = Acquisition(
        patient_id=f"MRN{rng.integers(10**6, 10**7)}", patient_name=f"SYNTHETIC^PATIENT{index:04d}",
        weight_kg=float(np.round(rng.uniform(60, 105), 1)), height_m=float(np.round(rng.uniform(1.62, 1.92), 2)),
        sex="M", dose_bq=float(np.round(rng.uniform(120e6, 200e6), -5)),
        injection=scan - dt.timedelta(minutes=int(rng.integers(50, 75))), scan_start=scan)
    # UIDs from the seeded values: the same seed writes the same study again, so a rerun resumes
    uid_source = f"petfeat-synth/{acq.patient_id}/{scan.isoformat()}/{vendor}/{voxel_mm:g}/{index}"
    written = write_pet_series(out / "pet", suv, spacing, origin, acq, vendor=vendor, uid_source=uid_source)
    encoded = written["encoded_suv"]
    _write_nifti(out / "lesions.nii.gz", lesion_map, spacing, origin)
    if ct_labels:
        seg = out / "seg"
        seg.mkdir(exist_ok=True)
        ct_origin = (origin[0] - 3.1, origin[1] + 1.7, origin[2] - 2.2)
        ct_shape = tuple(int(math.floor((n * voxel_mm) / s)) for n, s in zip((n_z, n_xy, n_xy), CT_SPACING_ZYX,
                                                                              strict=True))
        ct_masks, _ = rasterise(anatomy, ct_shape, CT_SPACING_ZYX, ct_origin)
        for name, m in ct_masks.items():
            if name != "body":
                _write_nifti(seg / f"{name}.nii.gz", m.astype(np.uint8), CT_SPACING_ZYX, ct_origin)
    voxel_ml = voxel_mm**3 / 1000.0
    truth_regions = {}
    for name, m in masks.items():
        v = encoded[m]
        if v.size:
            truth_regions[name] = {"voxel_count": int(v.size), "volume_ml": v.size * voxel_ml,
                                   "suv_mean": float(v.mean()), "suv_max": float(v.max())}
    lesions = []
    for les in anatomy.lesions:
        m = lesion_map == les.lesion_id
        v = encoded[m]
        lesions.append({**asdict(les), "voxel_count": int(m.sum()), "volume_ml": float(m.sum() * voxel_ml),
                        "suv_max": float(v.max()) if v.size else None, "suv_mean": float(v.mean()) if v.size else None})
    truth = {
        "patient": f"SYN{index:04d}", "vendor": vendor, "shape_zyx": [n_z, n_xy, n_xy], "voxel_mm": voxel_mm,
        "weight_kg": acq.weight_kg, "height_m": acq.height_m, "dose_bq": acq.dose_bq,
        "injection": acq.injection.isoformat(), "scan_start": acq.scan_start.isoformat(),
        "uptake_seconds": (acq.scan_start - acq.injection).total_seconds(),
        "half_life_s": acq.half_life_s, "suv_bw_factor": acq.suv_bw_factor,
        "series_uid": written["series_uid"], "regions": truth_regions, "lesions": lesions,
        "lesion_mask_stats": {"voxel_count": int((lesion_map > 0).sum()),
                              "suv_mean": float(encoded[lesion_map > 0].mean()) if (lesion_map > 0).any() else None},
    }
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def synthetic_archive_info(folder: str | Path) -> dict | None:
    """The ``archive.json`` record of a synthetic archive in ``folder``; None when it holds none."""
    try:
        info = json.loads((Path(folder) / "archive.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("generator") == GENERATOR else None


def prepare_target(out: str | Path, overwrite: bool = False) -> Path:
    """Make ``out`` ready for a new synthetic archive and return it as a Path.

    A missing folder is created; an empty one is used as it is. A previous synthetic archive
    (:func:`synthetic_archive_info`) is replaced with ``overwrite``: its ``archive.json`` and study
    folders (``SYN0001``...) are removed, other files are kept. Anything else is refused.

    Parameters
    ----------
    out : str or Path
        The archive folder.
    overwrite : bool
        Replace a previous synthetic archive in ``out``.

    Raises
    ------
    PetfeatError
        ``out`` is a file; ``out`` holds files and no synthetic archive (never written into); ``out``
        holds a synthetic archive and ``overwrite`` is False.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PetfeatError(f"{out}: is a file; give a new or empty folder for the synthetic archive.")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if not entries:
        out.mkdir(parents=True, exist_ok=True)
        return out
    info = synthetic_archive_info(out)
    if info is None:
        raise PetfeatError(f"{out}: the folder holds {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} and no "
                           "synthetic archive (no archive.json of petfeat synth); a synthetic archive is written only "
                           "into a new or empty folder or over a previous one: choose another folder.")
    if not overwrite:
        what = (f"seed {info.get('seed')}, {info.get('n_patients')} patients at {info.get('voxel_mm')} mm"
                if info.get("n_patients") is not None else "unfinished")
        raise PetfeatError(f"{out}: holds a synthetic archive already ({what}); pass --overwrite (Python: "
                           "overwrite=True) to replace it, or choose another folder.")
    for p in entries:
        if p.name == "archive.json" and p.is_file():
            p.unlink()
        elif _STUDY_FOLDER.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
    return out


def generate_archive(out: str | Path, n_patients: int = 4, *, seed: int = 0, voxel_mm: float = DEFAULT_VOXEL_MM,
                     vendors=VENDORS, ct_labels: bool = True, progress=None, overwrite: bool = False) -> list[dict]:
    """Generate ``n_patients`` synthetic studies under ``out`` (see module docstring).

    ``out`` must be new, empty, or a previous synthetic archive, replaced only with ``overwrite``
    (:func:`prepare_target`). ``progress(i, n)`` is called after each patient.
    """
    out = prepare_target(out, overwrite)
    # marks the folder as a synthetic archive while it is written (n_patients comes with the finished record)
    (out / "archive.json").write_text(json.dumps({"generator": GENERATOR, "seed": seed, "voxel_mm": voxel_mm,
                                                  "n_patients": None, "patients": []}, indent=1))
    rng = np.random.default_rng(seed)
    truths = []
    for i in range(1, n_patients + 1):
        vendor = vendors[(i - 1) % len(vendors)]
        truths.append(generate_patient(out / f"SYN{i:04d}", i, rng, vendor, voxel_mm, ct_labels))
        if progress:
            progress(i, n_patients)
    (out / "archive.json").write_text(json.dumps({
        "generator": GENERATOR, "seed": seed, "voxel_mm": voxel_mm, "n_patients": n_patients,
        "patients": [{"patient": t["patient"], "vendor": t["vendor"], "lesions": len(t["lesions"])} for t in truths],
    }, indent=1))
    return truths
