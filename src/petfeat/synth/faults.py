"""A fault-injection archive: healthy synthetic studies beside studies with one planted fault each.

``generate_fault_archive(out)`` writes one folder per case under ``out`` and returns what a batch
run must make of each folder::

    {"truncated_slice": {"outcome": "failure", "studies": 1, "error_class": "DicomSeriesError",
                         "message": ["slice_0010.dcm"], "fault": "..."}, ...}

``outcome`` is ``"features"`` (every study of the folder gives feature rows) or ``"failure"`` (a
failure record whose ``error_class`` is the one given, when given, and whose message contains every
fragment of ``message``, case-insensitively: the file or field at fault). ``studies`` is the number
of studies the folder holds. The faults are the ones real archives show: truncated and empty DICOM
files, a corrupt meta header, a missing tag, a header size bomb, truncated or bombing NIfTI label
files, symlink loops, a FIFO, a copied study folder, a folder without DICOM, labels of another frame
of reference, AC + NAC series of one study, two time points of one patient in one folder.

Studies are written at a coarse voxel (10 mm by default) to stay fast: about 10 s for the archive.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

from petfeat.synth.archive import generate_patient

#: The healthy studies, one per vendor variant; the faulty ones are copies of them with new UIDs.
HEALTHY = ("healthy_siemens", "healthy_ge", "healthy_philips")


def _reidentify(study: Path, rng: np.random.Generator, patient_id: str | None = None, days: int = 0,
                edit: Callable[[Path, pydicom.Dataset], None] | None = None) -> None:
    """Give a copied study new UIDs (and a new patient unless ``patient_id``), optionally editing each slice."""
    import datetime as dt

    patient_id = patient_id or f"MRN{rng.integers(10**6, 10**7)}"
    by_series: dict[str, str] = {}
    study_uid, frame_uid = generate_uid(), generate_uid()
    for f in sorted(study.rglob("*.dcm")):
        if f.is_symlink() or not f.is_file():
            continue
        ds = pydicom.dcmread(f)
        ds.PatientID = patient_id
        ds.StudyInstanceUID = study_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesInstanceUID = by_series.setdefault(ds.SeriesInstanceUID, generate_uid())
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if days:
            for tag in ("StudyDate", "SeriesDate", "AcquisitionDate"):
                if tag in ds:
                    d = dt.datetime.strptime(str(getattr(ds, tag)), "%Y%m%d") + dt.timedelta(days=days)
                    setattr(ds, tag, d.strftime("%Y%m%d"))
            for item in ds.get("RadiopharmaceuticalInformationSequence", []):
                if "RadiopharmaceuticalStartDateTime" in item:
                    s = str(item.RadiopharmaceuticalStartDateTime)
                    d = dt.datetime.strptime(s[:8], "%Y%m%d") + dt.timedelta(days=days)
                    item.RadiopharmaceuticalStartDateTime = d.strftime("%Y%m%d") + s[8:]
            if (0x0009, 0x100D) in ds:  # GE private scan date/time
                s = str(ds[0x0009, 0x100D].value)
                d = dt.datetime.strptime(s[:8], "%Y%m%d") + dt.timedelta(days=days)
                ds[0x0009, 0x100D].value = d.strftime("%Y%m%d") + s[8:]
        if edit is not None:
            edit(f, ds)
        ds.save_as(f, enforce_file_format=True)


def _copy(base: Path, dst: Path, rng: np.random.Generator, **kw) -> Path:
    shutil.copytree(base, dst, symlinks=True)
    (dst / "truth.json").unlink(missing_ok=True)
    _reidentify(dst, rng, **kw)
    return dst


def _slices(study: Path, sub: str = "pet") -> list[Path]:
    return sorted((study / sub).glob("slice_*.dcm"))


def _place(bad: Path) -> str:
    """How a batch failure names a slice: by its place in the PET folder (file names may carry a patient's)."""
    files = _slices(bad.parent.parent, bad.parent.name)
    return f"<pet folder>/file {files.index(bad) + 1} of {len(files)} (sorted by name)"


def _truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _nifti_bomb(path: Path, dim: int = 10_000) -> None:
    """A complete, tiny ``.nii.gz`` whose header declares ``dim``^3 uint8 voxels (1 TB at 10 000)."""
    hdr = bytearray(348)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, dim, dim, dim, 1, 1, 1, 1)  # dim
    struct.pack_into("<hh", hdr, 70, 2, 8)  # datatype uint8, bitpix
    struct.pack_into("<8f", hdr, 76, 1.0, 1.0, 1.0, 1.0, 0, 0, 0, 0)  # pixdim
    struct.pack_into("<f", hdr, 108, 352.0)  # vox_offset
    struct.pack_into("<f", hdr, 112, 1.0)  # scl_slope
    struct.pack_into("<hh", hdr, 252, 1, 1)  # qform_code, sform_code: scanner
    struct.pack_into("<12f", hdr, 280, 1, 0, 0, -200, 0, 1, 0, -200, 0, 0, 1, 0)  # srow_x, srow_y, srow_z
    hdr[344:348] = b"n+1\x00"
    with gzip.open(path, "wb") as f:
        f.write(bytes(hdr) + b"\x00" * 4 + b"\x01" * 64)


def _off_view_mask(path: Path) -> None:
    img = sitk.GetImageFromArray(np.ones((4, 4, 4), np.uint8))
    img.SetOrigin((9000.0, 9000.0, 9000.0))
    sitk.WriteImage(img, str(path), useCompression=True)


def _failure(error_class: str | None, *fragments: str, fault: str) -> dict:
    return {"outcome": "failure", "studies": 1, "error_class": error_class, "message": list(fragments),
            "fault": fault}


def _features(fault: str, studies: int = 1) -> dict:
    return {"outcome": "features", "studies": studies, "error_class": None, "message": [], "fault": fault}


def generate_fault_archive(out: str | Path, seed: int = 0, voxel_mm: float = 10.0) -> dict[str, dict]:
    """Write the fault-injection archive under ``out``; return the expected outcome per study folder.

    Parameters
    ----------
    out : path
        Archive root to create (one folder per case).
    seed : int
        Seed of the synthetic patients.
    voxel_mm : float
        PET voxel size of the synthetic studies (coarse keeps the archive small and fast).

    Returns
    -------
    dict
        Folder name -> ``{"outcome", "studies", "error_class", "message", "fault"}`` (see module docstring).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    expected: dict[str, dict] = {}
    for i, (name, vendor) in enumerate(zip(HEALTHY, ("siemens", "ge", "philips")), start=1):
        generate_patient(out / name, i, rng, vendor, voxel_mm)
        (out / name / "truth.json").unlink()
        expected[name] = _features(f"a healthy {vendor} study")
    base = out / HEALTHY[0]

    def case(name: str, src: Path = base, **kw) -> Path:
        return _copy(src, out / name, rng, **kw)

    s = case("truncated_slice")
    bad = _slices(s)[10]
    _truncate(bad)
    expected[s.name] = _failure("DicomSeriesError", _place(bad), fault="one slice cut in half")

    s = case("zero_byte_last_slice")
    bad = _slices(s)[-1]
    bad.write_bytes(b"")
    expected[s.name] = _failure("DicomSeriesError", _place(bad), fault="the last slice is a zero-byte file")

    s = case("zero_byte_middle_slice")
    bad = _slices(s)[len(_slices(s)) // 2]
    bad.write_bytes(b"")
    expected[s.name] = _failure("DicomSeriesError", _place(bad), fault="a slice in the middle is a zero-byte file")

    s = case("flipped_meta_byte")
    bad = _slices(s)[20]
    data = bytearray(bad.read_bytes())
    pos = data.find(b"1.2.840.10008.1.2.1") + 4  # inside the meta header's TransferSyntaxUID
    data[pos] ^= 0x80
    bad.write_bytes(bytes(data))
    expected[s.name] = _failure("DicomSeriesError", _place(bad), fault="one flipped byte in a slice's meta header")

    def no_weight(_f, ds):
        del ds.PatientWeight

    s = case("missing_weight", src=out / HEALTHY[1], edit=no_weight)
    expected[s.name] = _failure("SuvError", "PatientWeight", fault="PatientWeight missing in every slice")

    def huge(_f, ds):
        ds.Rows = ds.Columns = 65535

    s = case("rows_columns_65535", edit=huge)
    expected[s.name] = _failure("DicomSeriesError", "Rows", fault="Rows = Columns = 65535 in every header")

    s = case("label_gzip_truncated")
    _truncate(s / "seg" / "liver.nii.gz")
    expected[s.name] = _failure("LabelError", "liver.nii.gz", fault="a label file's gzip stream cut in half")

    s = case("lesion_mask_truncated", src=out / HEALTHY[2])
    _truncate(s / "lesions.nii.gz", 0.6)
    expected[s.name] = _failure("LabelError", "<lesions>", fault="the lesion mask's gzip stream cut short")

    s = case("label_size_bomb")
    _nifti_bomb(s / "organs_seg.nii.gz")
    expected[s.name] = _failure("LabelError", "/<labels ",
                                fault="a 300-byte .nii.gz whose header declares 10000^3 voxels")

    s = case("symlink_loops")
    os.symlink("b.dcm", s / "a.dcm")
    os.symlink("a.dcm", s / "b.dcm")
    os.symlink("..", s / "loop")
    os.symlink("..", s / "pet" / "loop")
    expected[s.name] = _features("symlink loops (a.dcm <-> b.dcm, loop -> ..) beside a healthy series")

    s = case("fifo_in_folder")
    try:
        os.mkfifo(s / "stream.dcm")
        expected[s.name] = _features("a FIFO named like a DICOM file in the study folder")
    except (AttributeError, OSError):  # no FIFOs on this system: the study stays healthy
        expected[s.name] = _features("a healthy study (this system has no FIFOs)")

    s = case("duplicate_a", src=out / HEALTHY[1])
    shutil.copytree(s, out / "duplicate_b", symlinks=True)
    expected[s.name] = _features("the first of two copies of one study")
    expected["duplicate_b"] = _failure(None, "duplicate", fault="a copied study folder (the same series twice)")

    s = out / "no_dicom"
    s.mkdir()
    (s / "README.txt").write_text("exported report\n")
    (s / "notes.json").write_text("{}\n")
    (s / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    expected[s.name] = _failure(None, "no pet series", fault="a folder holding no DICOM file")

    s = case("lesions_off_view")
    _off_view_mask(s / "lesions.nii.gz")
    expected[s.name] = _failure("LabelError", "does not overlap",
                                fault="a lesion mask of another frame of reference, 9 m off the field of view")

    s = case("labels_off_view")
    img = sitk.GetImageFromArray(np.repeat(np.arange(3, dtype=np.uint8), 8).reshape(3, 2, 4))
    img.SetOrigin((9000.0, 9000.0, 9000.0))
    img.SetSpacing((4.0, 4.0, 4.0))
    sitk.WriteImage(img, str(s / "organs_seg.nii.gz"), useCompression=True)
    expected[s.name] = _failure("LabelError", "/<labels ", "does not overlap",
                                fault="a multilabel map of another frame of reference, 9 m off the field of view")

    s = case("ac_and_nac")
    shutil.copytree(s / "pet", s / "pet_nac")
    nac_uid = generate_uid()

    def nac(f, ds):
        if f.parent.name == "pet_nac":
            ds.SeriesInstanceUID = nac_uid
            ds.SeriesDescription = "PET NAC"
            ds.CorrectedImage = [c for c in ds.CorrectedImage if c not in ("ATTN", "SCAT")]

    _reidentify(s, rng, edit=nac)
    expected[s.name] = _features("an attenuation-corrected and a non-corrected series of one study")

    s = out / "two_time_points"
    s.mkdir()
    pid = f"MRN{rng.integers(10**6, 10**7)}"
    _copy(out / HEALTHY[0], s / "baseline", rng, patient_id=pid)
    _copy(out / HEALTHY[2], s / "follow_up", rng, patient_id=pid, days=84)
    expected[s.name] = _features("two time points (two studies) of one patient in one folder", studies=2)
    return dict(sorted(expected.items()))
