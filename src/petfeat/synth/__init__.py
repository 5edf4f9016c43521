"""Synthetic data with known truth: PET phantoms written as real DICOM, label maps, ground truth."""

from petfeat.synth.archive import generate_archive, generate_patient
from petfeat.synth.dicom_writer import VENDORS, Acquisition, write_pet_series

__all__ = ["VENDORS", "Acquisition", "generate_archive", "generate_patient", "write_pet_series"]
