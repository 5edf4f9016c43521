"""A series folder that holds two copies of each slice (a backup beside the series) is read once, with a note."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import DRO

from petfeat.errors import PetfeatWarning
from petfeat.io.dicom import read_pet_series


def test_copies_of_slices_are_read_once_with_a_warning(tmp_path):
    shutil.copytree(DRO / "DRO_0_0" / "PT", tmp_path / "study" / "pet")
    shutil.copytree(DRO / "DRO_0_0" / "PT", tmp_path / "study" / "pet_backup")
    one = read_pet_series(DRO / "DRO_0_0" / "PT")
    with pytest.warns(PetfeatWarning, match="copies of other slices"):
        both = read_pet_series(tmp_path / "study")
    assert both.stored.shape == one.stored.shape and np.array_equal(both.stored, one.stored)
    assert both.notes["duplicate_files"] == len(one.files)
    assert all(f.parent.name == "pet" for f in both.files)
