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


#: The characters a value of each DICOM value representation can hold (PS3.5 6.2), and its longest length.
_VR_CHARACTERS = {
    "DS": ("0123456789+-.eE\\ ", 16), "IS": ("0123456789+-\\ ", 12), "DA": ("0123456789.-/ ", 10),
    "TM": ("0123456789.: ", 16), "DT": ("0123456789.+-: ", 26), "UI": ("0123456789.", 64),
    "CS": ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _\\^|/-", 16),
}
#: The longest value a message quotes (a UI of 64 characters is quoted whole when intact).
QUOTED_MAX = 32


def quoted_value(value: object, vr: str) -> str:
    r"""A header value as an error message may quote it (its repr, :data:`QUOTED_MAX` characters at most).

    A value that fits its value representation's length and holds only printable characters is quoted as it
    is ('lots', '2024XX18'). A longer one, or one with control bytes, is damaged: a broken length field runs a
    value into the elements after it, which may hold a patient's name ('8.0\8.0 (\x00Q\x00CS...Doe^John');
    of such a value only the characters the VR can hold are shown, every other one as ``?``.
    """
    text = str(value)
    allowed, longest = _VR_CHARACTERS[vr]
    if len(text) <= longest and text.isprintable():
        return repr(text)
    shown = "".join(c if c in allowed else "?" for c in text[:QUOTED_MAX])
    return repr(shown + ("..." if len(text) > QUOTED_MAX else ""))
