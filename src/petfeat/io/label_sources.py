"""The label sources of one study, read onto its PET grid: each in its own name space, each checked to belong.

A study's labels come from several sources (TotalSegmentator task folders or ``--ml`` files, a
DICOM SEG, an RTSTRUCT, other multilabel images). :func:`read_label_sources` reads them all and
keeps the rules that no single reader can see:

* **Name spaces are unique per study.** A source's name space is the one given (``NAME=PATH`` on
  the command line), else its TotalSegmentator task (a folder, or an ``--ml`` file's label table),
  else its kind: ``rtstruct``, ``seg`` or ``labels``. Never the file name: archive files are often
  named after the patient. A default name space taken by an earlier source gets ``_2``, ``_3``...
  (with a warning: a bare region pattern then matches both, ``NS:name`` one of them); a name space
  given twice is an error.
* **DICOM label objects must belong to the series.** A SEG or RTSTRUCT whose FrameOfReferenceUID
  (or PatientID) differs from the PET series' was drawn on another patient or on a scan in another
  frame of reference; its coordinates do not address this PET, so it is refused, naming the file
  and both UIDs.
* **Labels cut by the field of view are noted once per study.** The labels of which at least 1% of
  the own-grid volume lies outside the PET field of view go into the PET series' notes under
  :data:`OUTSIDE_FOV_NOTE` (by name space), and so into every feature row's ``input_notes``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pydicom

from petfeat.errors import LabelError, PetfeatWarning
from petfeat.io.dicom import PetSeries
from petfeat.regions import LabelLayer

#: Default name spaces of the sources that are not TotalSegmentator outputs.
KIND_NAMESPACES = {"RTSTRUCT": "rtstruct", "SEG": "seg"}
LABELS_NAMESPACE = "labels"
#: Name spaces petfeat gives layers of its own (lesion components, exclusion margins).
RESERVED_NAMESPACES = frozenset({"lesions", "margin"})


def dicom_label_kind(path: Path) -> str | None:
    """``"SEG"`` or ``"RTSTRUCT"`` for a DICOM label object, else None (not DICOM, or another modality)."""
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:  # the reader names the file and the fix
        return None
    if head[128:132] != b"DICM" and path.suffix.lower() != ".dcm":
        return None
    try:
        modality = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality", ""))
    except Exception:  # noqa: BLE001 - the reader gives the precise error for a file it cannot read
        return None
    return modality if modality in KIND_NAMESPACES else None


def check_belongs_to(path: Path, series: PetSeries) -> None:
    """Refuse a SEG or RTSTRUCT drawn in another frame of reference or on another patient than ``series``.

    Raises
    ------
    LabelError
        FrameOfReferenceUID or PatientID differ (each compared only when both sides carry it).
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
            "Modality", "PatientID", "FrameOfReferenceUID", "ReferencedFrameOfReferenceSequence"])
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt files
        raise LabelError(f"{path}: not readable as DICOM ({type(exc).__name__}: {exc}). Replace the file.") from exc
    frames = {str(ds.get("FrameOfReferenceUID", "") or "")}
    for item in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        frames.add(str(item.get("FrameOfReferenceUID", "") or ""))
    frames.discard("")
    kind = str(ds.get("Modality", "label object"))
    if series.frame_uid and frames and series.frame_uid not in frames:
        raise LabelError(
            f"{path}: the {kind} is drawn in FrameOfReferenceUID {', '.join(sorted(frames))}, the PET series in "
            f"{series.frame_uid}: its coordinates do not address this PET (another patient, or a scan that was not "
            "acquired with this PET). Give the label object of this study's PET/CT.")
    pid = str(ds.get("PatientID", "") or "").strip()
    if pid and series.patient_id.strip() and pid != series.patient_id.strip():
        raise LabelError(f"{path}: the {kind} belongs to another patient than the PET series (PatientID differs). "
                         "Give the label object of this study.")


def read_label_sources(sources: Sequence[tuple[str | None, str | Path]], series: PetSeries, *,
                       names: dict[int, str] | None = None, mode: str = "nearest",
                       read: Callable[..., list[LabelLayer]] | None = None) -> list[LabelLayer]:
    """Read a study's label sources onto its PET grid (see the module docstring for the rules).

    Parameters
    ----------
    sources : sequence of (name space or None, path)
        The label sources, in order.
    series : PetSeries
        The study's PET series (grid, FrameOfReferenceUID, PatientID).
    names : dict, optional
        Names of the ids of multilabel images that carry no label table of their own.
    mode : {"nearest", "fraction"}
        Resampling of label images onto the PET grid.
    read : callable, optional
        The reader (``petfeat.io.labels.read_labels`` or a label cache's ``read_labels``).

    Returns
    -------
    list of LabelLayer
        Every source's layers, with unique name spaces per source.
    """
    from petfeat.io.labels import nifti_label_table, read_labels
    from petfeat.io.totalsegmentator import identify_task

    read = read or read_labels
    layers: list[LabelLayer] = []
    taken: dict[str, int] = {}  # name space -> number of the source that holds it
    for k, (given, path) in enumerate(sources):
        path = Path(path)
        if given is not None and (given in RESERVED_NAMESPACES):
            raise LabelError(f"--labels {given}={path}: the name space {given!r} is petfeat's own (lesion components "
                             f"and exclusion margins are {', '.join(sorted(RESERVED_NAMESPACES))}); choose another.")
        kind = dicom_label_kind(path)
        own_table = None if path.is_dir() or kind else nifti_label_table(path) if path.is_file() else None
        if kind:
            check_belongs_to(path, series)
            default = KIND_NAMESPACES[kind]
        elif path.is_dir() or (own_table and identify_task(own_table.values())):
            default = None  # the TotalSegmentator task(s) name it
        else:
            default = LABELS_NAMESPACE
        got = read(path, series.geometry, names=None if own_table else names, mode=mode,
                   namespace=given or default)
        renamed: dict[str, str] = {}
        for ns in dict.fromkeys(layer.namespace for layer in got):
            if ns not in taken:
                continue
            if given is not None:
                raise LabelError(f"--labels {given}={path}: the name space {given!r} is already used by another label "
                                 "source of this study; give each source its own name.")
            n = 2
            while f"{ns}_{n}" in taken or any(f"{ns}_{n}" == la.namespace for la in got):
                n += 1
            renamed[ns] = f"{ns}_{n}"
            warnings.warn(f"two label sources of this study are in the name space {ns!r}; the later one is read as "
                          f"{renamed[ns]!r}. A bare region pattern matches labels of both; write '{ns}:NAME' or "
                          f"'{renamed[ns]}:NAME' to use one.", PetfeatWarning, stacklevel=2)
        for layer in got:
            layer.namespace = renamed.get(layer.namespace, layer.namespace)
            taken.setdefault(layer.namespace, k)
        layers.extend(got)
    cut = outside_fov_notes(layers)
    if cut and isinstance(getattr(series, "notes", None), dict):
        series.notes[OUTSIDE_FOV_NOTE] = cut  # the rows' input_notes (and run.json's pet_series)
    return layers


#: Key of :func:`outside_fov_notes` in the PET series' notes, and so in the feature rows' ``input_notes``.
OUTSIDE_FOV_NOTE = "labels_outside_fov"


def outside_fov_notes(layers: Sequence[LabelLayer]) -> dict[str, dict[str, float]]:
    """``{name space: {label: share}}``: the labels of which at least 1% of the own-grid volume is outside the PET.

    The share is the label's ``outside_fov_fraction`` (rounded to 4 decimals); the threshold is
    :data:`petfeat.io.labels.OUTSIDE_FOV_NOTED`. Names are label names, never file names.
    """
    from petfeat.io.labels import OUTSIDE_FOV_NOTED

    out: dict[str, dict[str, float]] = {}
    for layer in layers:
        for name, note in (getattr(layer, "notes", None) or {}).items():
            f = (note or {}).get("outside_fov_fraction")
            if f is not None and f >= OUTSIDE_FOV_NOTED:
                out.setdefault(layer.namespace, {})[name] = round(float(f), 4)
    return {ns: dict(sorted(v.items())) for ns, v in sorted(out.items())}
