"""Errors of the statistics layer."""

from __future__ import annotations

from petfeat.errors import PetfeatError


class ClinicalDataError(PetfeatError):
    """A clinical table holds a value that cannot be used; the message names the table, the column and the fix."""


class ModelError(PetfeatError):
    """A model cannot be fitted to the data given (no events, no spread); the message says what is missing."""
