"""petfeat: GPU-accelerated PET imaging features, from DICOM archive to outcome statistics.

The public names below are imported on first use (PEP 562), so ``import petfeat`` and the command
line's parsing stay fast; ``petfeat.read_pet_series`` loads the DICOM reader when it is first touched.
The core install reads studies and extracts features; batch (Dask) and statistics need the
``[batch]`` and ``[stats]`` extras.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("petfeat")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

from petfeat.errors import BackendError, DicomSeriesError, LabelError, PetfeatError, SuvError  # noqa: E402

#: Public name -> the module that defines it, imported when the name is first used.
_LAZY = {
    "extract_features": "petfeat.extract",
    "read_pet_series": "petfeat.io.dicom",
    "LabelLayer": "petfeat.regions",
    "compute_suv_factors": "petfeat.suv",
}

__all__ = [
    "BackendError", "DicomSeriesError", "LabelError", "LabelLayer", "PetfeatError", "SuvError",
    "__version__", "compute_suv_factors", "extract_features", "read_pet_series",
]


def __getattr__(name: str):
    """The lazily imported public names (PEP 562)."""
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'petfeat' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
