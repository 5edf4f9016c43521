"""Write a float SUV volume as a real PET DICOM series with correct SUV tags, per vendor variant.

Variants:

* ``siemens``: Units BQML, DecayCorrection START, SeriesTime = scan start, one slope per series.
* ``ge``: Units BQML, per-slice RescaleSlope, SeriesTime after the acquisition (post-processed
  series) and the GE private scan date/time (0009,100D) holding the real scan start.
* ``philips``: Units CNTS with per-slice slopes, the Philips private SUV scale factor (7053,1000)
  and activity concentration scale factor (7053,1009).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

PET_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.128"
VENDORS = ("siemens", "ge", "philips")
GA68_HALF_LIFE = 4057.74
#: Activity concentration (Bq/mL) of one Philips count (7053,1009) in the synthetic series.
PHILIPS_BQML_PER_COUNT = 2.5


@dataclass
class Acquisition:
    """Patient and injection parameters of one synthetic scan."""

    patient_id: str
    patient_name: str
    weight_kg: float
    height_m: float
    sex: str
    dose_bq: float
    injection: dt.datetime
    scan_start: dt.datetime
    half_life_s: float = GA68_HALF_LIFE
    frame_s: float = 180.0

    @property
    def suv_bw_factor(self) -> float:
        """SUVbw per Bq/mL at the scan start (START decay correction)."""
        uptake = (self.scan_start - self.injection).total_seconds()
        decayed = self.dose_bq * math.exp(-math.log(2) * uptake / self.half_life_s)
        return self.weight_kg * 1000.0 / decayed


def _da(t: dt.datetime) -> str:
    return t.strftime("%Y%m%d")


def _tm(t: dt.datetime) -> str:
    return t.strftime("%H%M%S.%f")


def _dt(t: dt.datetime) -> str:
    return t.strftime("%Y%m%d%H%M%S.%f")


def write_pet_series(out_dir: Path, suv: np.ndarray, spacing_zyx, origin_xyz, acq: Acquisition,
                     vendor: str = "siemens", study_uid: str | None = None, series_uid: str | None = None,
                     *, positions_mm=None, series_number: int = 3, description: str | None = None,
                     corrected_image=None, image_type=None, transfer_syntax: str | None = None,
                     file_prefix: str = "slice", uid_source: str | None = None) -> dict:
    """Write ``suv`` ``(Z, Y, X)`` as one single-frame PET DICOM file per slice in ``out_dir``.

    Parameters
    ----------
    positions_mm : sequence of float, optional
        z coordinate (mm) of each slice (e.g. bed-junction jitter); default ``origin z + k * spacing``.
    series_number, description, corrected_image, image_type : optional
        SeriesNumber, SeriesDescription, CorrectedImage and ImageType (not written by default) of the
        series, e.g. a non-attenuation-corrected or derived series.
    transfer_syntax : str, optional
        Store the pixels in this transfer syntax (RLE Lossless, JPEG-LS / JPEG 2000 lossless with the
        encoders installed, or Deflated Explicit VR Little Endian); default Explicit VR Little Endian.
    file_prefix : str
        File names are ``{file_prefix}_{k:04d}.dcm``.

    Returns the exact SUV volume the files encode (after integer quantisation) and the UIDs.
    """
    if vendor not in VENDORS:
        raise ValueError(f"vendor is {vendor!r}; choose one of {', '.join(VENDORS)}.")
    out_dir.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = suv.shape
    factor = acq.suv_bw_factor
    if vendor == "philips":
        pixel_unit = suv / (factor * PHILIPS_BQML_PER_COUNT)  # counts
    else:
        pixel_unit = suv / factor  # Bq/mL
    study_uid = study_uid or _uid(uid_source, "study")
    series_uid = series_uid or _uid(uid_source, "series", series_number, description)
    frame_uid = _uid(uid_source, "frame", series_number, description)
    encoded = np.empty_like(suv)
    if vendor == "siemens":
        global_slope = max(float(pixel_unit.max()), 1e-6) / 32000.0
    series_time = acq.scan_start + (dt.timedelta(minutes=25) if vendor == "ge" else dt.timedelta(0))
    for z in range(nz):
        plane = pixel_unit[z]
        slope = global_slope if vendor == "siemens" else max(float(plane.max()), 1e-6) / 32000.0
        slope = float(f"{slope:.10g}")  # exactly what the file holds
        stored = np.clip(np.rint(plane / slope), -32768, 32767).astype(np.int16)
        value = stored.astype(np.float64) * slope
        encoded[z] = value * factor * (PHILIPS_BQML_PER_COUNT if vendor == "philips" else 1.0)
        ds = _slice_dataset(acq, vendor, z, nz, ny, nx, spacing_zyx, origin_xyz, study_uid, series_uid, frame_uid,
                            series_time, _uid(uid_source, "sop", series_uid, z))
        if positions_mm is not None:
            ds.ImagePositionPatient[2] = f"{float(positions_mm[z]):.4f}"
        if series_number != 3:
            ds.SeriesNumber = series_number
        if description is not None:
            ds.SeriesDescription = description
        if corrected_image is not None:
            ds.CorrectedImage = list(corrected_image)
        if image_type is not None:
            ds.ImageType = list(image_type)
        ds.RescaleSlope = f"{slope:.10g}"
        ds.RescaleIntercept = "0"
        ds.PixelData = stored.tobytes()
        if transfer_syntax == pydicom.uid.DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = transfer_syntax
        elif transfer_syntax is not None:
            ds.compress(transfer_syntax)
        ds.save_as(out_dir / f"{file_prefix}_{z:04d}.dcm", enforce_file_format=True)
    return {"study_uid": study_uid, "series_uid": series_uid, "encoded_suv": encoded, "suv_bw_factor": factor}


def _uid(source: str | None, *parts) -> str:
    """A new UID; the same one for the same ``source`` and ``parts`` when ``source`` is given (reproducible files)."""
    return generate_uid() if source is None else generate_uid(entropy_srcs=[source, *map(str, parts)])


def _slice_dataset(acq: Acquisition, vendor, z, nz, ny, nx, spacing_zyx, origin_xyz, study_uid, series_uid,
                   frame_uid, series_time, sop_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = PET_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = PET_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "PT"
    ds.Manufacturer = {"siemens": "SIEMENS", "ge": "GE MEDICAL SYSTEMS", "philips": "Philips Medical Systems"}[vendor]
    ds.PatientName = acq.patient_name
    ds.PatientID = acq.patient_id
    ds.PatientSex = acq.sex
    ds.PatientBirthDate = ""
    ds.PatientAge = "070Y"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.PositionReferenceIndicator = ""
    ds.PatientWeight = f"{acq.weight_kg:.1f}"
    ds.PatientSize = f"{acq.height_m:.2f}"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.StudyDate = _da(acq.scan_start)
    ds.StudyTime = _tm(acq.scan_start)
    ds.SeriesDate = _da(series_time)
    ds.SeriesTime = _tm(series_time)
    # whole-body step-and-shoot: bed positions from feet to head, each frame_s long
    bed = z // max(1, nz // 6 + 1)
    acq_time = acq.scan_start + dt.timedelta(seconds=bed * acq.frame_s)
    ds.AcquisitionDate = _da(acq_time)
    ds.AcquisitionTime = _tm(acq_time)
    ds.ContentDate = _da(series_time)
    ds.ContentTime = _tm(series_time)
    ds.SeriesDescription = f"PET WB PSMA ({vendor}-like)"
    ds.SeriesNumber = 3
    ds.InstanceNumber = nz - z
    ds.ImagePositionPatient = [f"{origin_xyz[0]:.4f}", f"{origin_xyz[1]:.4f}",
                               f"{origin_xyz[2] + z * spacing_zyx[0]:.4f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [f"{spacing_zyx[1]:.4f}", f"{spacing_zyx[2]:.4f}"]
    ds.SliceThickness = f"{spacing_zyx[0]:.4f}"
    ds.Rows, ds.Columns = ny, nx
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.Units = "CNTS" if vendor == "philips" else "BQML"
    ds.DecayCorrection = "START"
    ds.CorrectedImage = ["NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"]
    ds.SeriesType = ["WHOLE BODY", "IMAGE"]
    ds.CountsSource = "EMISSION"
    ds.NumberOfSlices = nz
    ds.FrameReferenceTime = f"{(acq_time - acq.scan_start).total_seconds() * 1000 + acq.frame_s * 500:.1f}"
    ds.ActualFrameDuration = int(acq.frame_s * 1000)
    ds.DecayFactor = "1.0"
    rp = Dataset()
    rp.Radiopharmaceutical = "Ga-68 PSMA-11"
    rp.RadiopharmaceuticalStartTime = _tm(acq.injection)
    rp.RadiopharmaceuticalStartDateTime = _dt(acq.injection)
    rp.RadionuclideTotalDose = f"{acq.dose_bq:.1f}"
    rp.RadionuclideHalfLife = f"{acq.half_life_s:.2f}"
    rp.RadionuclidePositronFraction = "0.889"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C-131A3", "SRT", "^68^Gallium"
    rp.RadionuclideCodeSequence = Sequence([code])
    ds.RadiopharmaceuticalInformationSequence = Sequence([rp])
    if vendor == "ge":
        ds.private_block(0x0009, "GEMS_PETD_01", create=True).add_new(0x0D, "DT", _dt(acq.scan_start))
    if vendor == "philips":
        block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
        block.add_new(0x00, "DS", f"{acq.suv_bw_factor * PHILIPS_BQML_PER_COUNT:.10g}")
        block.add_new(0x09, "DS", f"{PHILIPS_BQML_PER_COUNT:.10g}")
    return ds


def read_back_with_pydicom(folder: Path) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    """Rescaled volume of a synthetic series read by plain pydicom (a test oracle)."""
    dss = sorted((pydicom.dcmread(f) for f in folder.glob("*.dcm")), key=lambda d: float(d.ImagePositionPatient[2]))
    vol = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss])
    return vol, dss
