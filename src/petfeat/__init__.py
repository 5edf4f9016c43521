"""petfeat: GPU-accelerated PET imaging features, from DICOM archive to outcome statistics."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("petfeat")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

from petfeat.errors import BackendError, DicomSeriesError, LabelError, PetfeatError, SuvError  # noqa: E402
from petfeat.extract import extract_features  # noqa: E402
from petfeat.io.dicom import read_pet_series  # noqa: E402
from petfeat.regions import LabelLayer  # noqa: E402
from petfeat.suv import compute_suv_factors  # noqa: E402

__all__ = [
    "BackendError", "DicomSeriesError", "LabelError", "LabelLayer", "PetfeatError", "SuvError",
    "__version__", "compute_suv_factors", "extract_features", "read_pet_series",
]
