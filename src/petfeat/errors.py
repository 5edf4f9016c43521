"""Exception and warning classes.

Every error petfeat raises for bad input derives from :class:`PetfeatError` and
says three things: which file, which field, and what to do about it.
"""

from __future__ import annotations


class PetfeatError(Exception):
    """Base class of every error petfeat raises on purpose."""


class DicomSeriesError(PetfeatError):
    """A PET DICOM series cannot be read: missing, mixed, inconsistent or corrupt slices."""


class SuvError(PetfeatError):
    """SUV cannot be computed from the header: a tag is missing or impossible.

    The message names the DICOM keyword and the override that fixes it.
    """


class BackendError(PetfeatError):
    """The requested compute backend is not available (for example ``gpu`` without a device)."""


class LabelError(PetfeatError):
    """A label map or region specification is invalid or does not fit the PET grid."""


class PetfeatWarning(UserWarning):
    """A condition that does not stop the computation but changes how to read its result."""
