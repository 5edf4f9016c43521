"""One key everywhere: ``petfeat extract --pet`` and the batch give a series the same patient_id."""

from __future__ import annotations

import pandas as pd
import pytest

from petfeat.cli import main
from petfeat.errors import PetfeatWarning
from petfeat.io.archive import read_manifest


def test_single_study_and_batch_give_the_same_patient_id(tmp_path, monkeypatch):
    from petfeat.synth import generate_archive

    generate_archive(tmp_path / "arch", 1, seed=3, voxel_mm=30.0)
    monkeypatch.setenv("PETFEAT_KEY_FILE", str(tmp_path / "config" / "petfeat.key"))
    study = tmp_path / "arch" / "SYN0001"
    (tmp_path / "regions.yaml").write_text("regions:\n  liver: {include: [liver]}\n  tumor: {include: ['lesion*']}\n")
    common = ["--backend", "cpu", "--no-peak", "--regions", str(tmp_path / "regions.yaml")]
    single_study = ["extract", "--pet", str(study / "pet"), "--labels", str(study / "seg"), "--lesions",
                    str(study / "lesions.nii.gz"), *common]
    # the 30 mm PET grid is narrower than the phantom's label grid: the left humerus is partly outside
    with pytest.warns(PetfeatWarning, match="beyond the PET field of view.*humerus_left"):
        assert main([*single_study, "-o", str(tmp_path / "one")]) == 0
    assert main(["scan", str(tmp_path / "arch"), "-o", str(tmp_path / "m.csv")]) == 0
    assert main(["extract", str(tmp_path / "m.csv"), "-o", str(tmp_path / "batch"), "--workers", "1", *common]) == 0
    (row,) = read_manifest(tmp_path / "m.csv")
    single = set(pd.read_parquet(tmp_path / "one" / "features.parquet").patient_id)
    batch = set(pd.read_parquet(tmp_path / "batch" / "features.parquet").patient_id)
    assert single == batch == {row.patient_id}
    # the key stays in its own place, never beside the manifest or the outputs
    assert {p.parent.name for p in tmp_path.rglob("petfeat.key")} == {"config"}
    # --key-file wins for the single study too
    with pytest.warns(PetfeatWarning, match="beyond the PET field of view"):
        assert main([*single_study, "-o", str(tmp_path / "two"), "--key-file", str(tmp_path / "other.key")]) == 0
    assert set(pd.read_parquet(tmp_path / "two" / "features.parquet").patient_id) != single
