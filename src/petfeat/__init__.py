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
    "__version__", "compute_suv_factors", "dependency_versions", "extract_features", "read_pet_series",
]


def dependency_versions() -> dict[str, str | None]:
    """Installed versions of Python and of every runtime dependency petfeat declares (core and extras).

    Read from petfeat's package metadata (``pyproject.toml``), so a new dependency is listed without
    a code change; the test extra is left out. A dependency that is not installed maps to None.
    """
    import platform
    import re
    from importlib.metadata import requires

    try:
        declared = requires("petfeat") or []
    except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        declared = []
    names = []
    for req in declared:
        spec, _, marker = req.partition(";")
        name = re.match(r"[A-Za-z0-9._-]+", spec.strip()).group(0)
        if name.lower() != "petfeat" and "extra == \"test\"" not in marker.replace("'", '"') and name not in names:
            names.append(name)
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def __getattr__(name: str):
    """The lazily imported public names (PEP 562)."""
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'petfeat' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
