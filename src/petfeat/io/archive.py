"""Discover studies in an archive and describe them in a manifest (CSV), validated on load.

Convention: every folder directly under the archive root is one study candidate. Inside it, the
PET series is found by its headers (Modality PT); label maps are matched

* by folder convention: a ``seg/`` or ``segmentations/`` folder of ``<class>.nii.gz`` files
  (TotalSegmentator), multilabel images named ``*seg*.nii.gz``/``*.nrrd``, a lesion mask named
  ``*lesion*`` (NIfTI/NRRD);
* by DICOM references: SEG and RTSTRUCT objects whose referenced series is the PET series.

Patient identifiers never enter the manifest: ``study_id`` is a keyed hash of PatientID and the
study date (the key lives beside the outputs, see :func:`load_or_create_key`).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag

from petfeat.errors import PetfeatError
from petfeat.io.atomic import atomic_write
from petfeat.io.dicom import _text
from petfeat.io.dicom_fast import read_slice_header

MANIFEST_COLUMNS = ("study_id", "study_date", "pet_path", "series_uid", "labels", "lesions", "match_status",
                    "n_files")
_LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".nhdr")


class ManifestError(PetfeatError):
    """A manifest is missing, malformed or points to files that do not exist."""


def load_or_create_key(path: str | Path) -> bytes:
    """The pseudonymisation key at ``path``; a new random key is created (mode 600) when absent."""
    path = Path(path)
    if path.exists():
        key = bytes.fromhex(path.read_text().strip())
        if len(key) < 16:
            raise ManifestError(f"{path}: the key must be at least 16 bytes (32 hex digits).")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key


def pseudonym(patient_id: str, key: bytes, study_date: str = "") -> str:
    """Keyed hash (HMAC-SHA256) of a patient id and study date: ``S`` + 12 hex digits (a study id)."""
    msg = f"{patient_id}|{study_date}".encode()
    return "S" + hmac.new(key, msg, hashlib.sha256).hexdigest()[:12]


def _is_label_file(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(_LABEL_SUFFIXES)


@dataclass
class StudyRow:
    """One manifest row."""

    study_id: str
    study_date: str
    pet_path: str
    series_uid: str
    labels: list[str]
    lesions: str
    match_status: str
    n_files: int

    def as_csv(self) -> dict:
        """The row as CSV fields (label paths joined with ';')."""
        d = dict(self.__dict__)
        d["labels"] = ";".join(self.labels)
        return d


def scan_archive(root: str | Path, key: bytes, linkage: dict | None = None) -> list[StudyRow]:
    """One manifest row per study folder under ``root`` (see module docstring).

    ``linkage``, when given, is filled with study_id -> PatientID (for a separate linkage file).
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder. Point to the archive root (one folder per study).")
    rows = []
    for study in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        rows.append(_scan_study(study, key, linkage))
    return rows


_STUDY_DATE, _MODALITY, _PATIENT_ID, _SERIES_UID = (BaseTag(t) for t in (0x00080020, 0x00080060, 0x00100020,
                                                                            0x0020000E))
#: SpecificCharacterSet, StudyDate, Modality, PatientID, SeriesInstanceUID.
_SCAN_TAGS = frozenset({0x00080005, _STUDY_DATE, _MODALITY, _PATIENT_ID, _SERIES_UID})


def _scan_study(study: Path, key: bytes, linkage: dict | None) -> StudyRow:
    series: dict[str, dict] = {}
    refs: list[tuple[Path, str, str]] = []  # (file, modality, referenced series uid)
    n_files = 0
    for f in sorted(study.rglob("*")):
        if not f.is_file() or f.name.startswith(".") or f.name.lower().endswith(_LABEL_SUFFIXES):
            continue
        n_files += 1
        try:
            ds = read_slice_header(f, _SCAN_TAGS)  # the header's first bytes only, for the PET slices
        except OSError:
            continue
        if ds is None or _text(ds, _MODALITY) in ("SEG", "RTSTRUCT"):  # references need pydicom
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=[
                    "Modality", "SeriesInstanceUID", "PatientID", "StudyDate", "ReferencedSeriesSequence",
                    "ReferencedFrameOfReferenceSequence"])
            except (InvalidDicomError, OSError, ValueError, EOFError):
                continue
        modality = _text(ds, _MODALITY) or ""  # raw text: no pydicom value conversion per file
        uid = _text(ds, _SERIES_UID) or ""
        if modality == "PT":
            s = series.setdefault(uid, {"folders": set(), "n": 0, "pid": _text(ds, _PATIENT_ID) or "",
                                        "date": _text(ds, _STUDY_DATE) or ""})
            s["folders"].add(f.parent)
            s["n"] += 1
        elif modality in ("SEG", "RTSTRUCT"):
            refs.append((f, modality, _referenced_series(ds)))
    labels, lesions = _convention_labels(study)
    if not series:
        return StudyRow(f"folder:{study.name}", "", str(study), "", labels, lesions, "no_pet_series", n_files)
    if len(series) > 1:
        uids = ", ".join(sorted(series))
        return StudyRow(f"folder:{study.name}", "", str(study), "", labels, lesions,
                        f"several_pet_series ({uids}): edit the manifest to keep one", n_files)
    uid, s = next(iter(series.items()))
    pet_dir = min(s["folders"], key=lambda p: len(p.parts)) if len(s["folders"]) == 1 else study
    labels += [str(f) for f, _, ref in refs if ref == uid]
    sid = pseudonym(s["pid"], key, s["date"])
    if linkage is not None:
        linkage[sid] = s["pid"]
    status = "ok" if labels or lesions else "no_labels"
    return StudyRow(sid, s["date"], str(pet_dir), uid, labels, lesions, status, s["n"])


def _referenced_series(ds) -> str:
    for item in ds.get("ReferencedSeriesSequence", []) or []:
        if "SeriesInstanceUID" in item:
            return str(item.SeriesInstanceUID)
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        for st in fr.get("RTReferencedStudySequence", []) or []:
            for se in st.get("RTReferencedSeriesSequence", []) or []:
                return str(se.SeriesInstanceUID)
    return ""


def _convention_labels(study: Path) -> tuple[list[str], str]:
    labels, lesions = [], ""
    for name in ("seg", "segmentations", "totalsegmentator"):
        d = study / name
        if d.is_dir() and any(_is_label_file(p) for p in d.iterdir()):
            labels.append(str(d))
    for f in sorted(study.iterdir()):
        if not _is_label_file(f):
            continue
        if "lesion" in f.name.lower():
            lesions = lesions or str(f)
        elif "seg" in f.name.lower() or "label" in f.name.lower():
            labels.append(str(f))
    return labels, lesions


def write_manifest(rows: list[StudyRow], path: str | Path) -> None:
    """Write the manifest CSV atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow(r.as_csv())

    atomic_write(path, write)


def read_manifest(path: str | Path) -> list[StudyRow]:
    """Read and validate a manifest: columns, unique study ids, existing paths. Errors name the row."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest. Create one with 'petfeat scan ARCHIVE -o {path.name}'.")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("study_id", "pet_path") if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                                f"{', '.join(MANIFEST_COLUMNS)}.")
        rows, seen = [], set()
        for i, rec in enumerate(reader, start=2):
            sid = (rec.get("study_id") or "").strip()
            if not sid:
                raise ManifestError(f"{path}, line {i}: study_id is empty.")
            if sid in seen:
                raise ManifestError(f"{path}, line {i}: study_id {sid} appears twice; each study needs its own id.")
            seen.add(sid)
            pet = (rec.get("pet_path") or "").strip()
            labels = [p for p in (rec.get("labels") or "").split(";") if p.strip()]
            for p in [pet, *labels, (rec.get("lesions") or "").strip()]:
                if p and not Path(p).exists():
                    raise ManifestError(f"{path}, line {i} (study {sid}): {p} does not exist. Fix the path or drop "
                                        "the row.")
            rows.append(StudyRow(sid, (rec.get("study_date") or "").strip(), pet, (rec.get("series_uid") or "").strip(),
                                 labels, (rec.get("lesions") or "").strip(),
                                 (rec.get("match_status") or "ok").strip(), int(rec.get("n_files") or 0)))
    return rows
