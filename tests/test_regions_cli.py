"""Region options on the command line and in batch settings: --strict, --peak-neighbours, warnings in run.json."""

from __future__ import annotations

import json

import pytest

from petfeat.batch import BatchReport, BatchSettings
from petfeat.errors import PetfeatWarning
from petfeat.regions import BUILTIN_REGIONS


def _extract(d, out, *extra) -> int:
    from petfeat.cli import main

    return main(["extract", "--pet", str(d / "pet"), "--labels", str(d / "seg"), "--lesions", str(d / "lesions.nii.gz"),
                 "-o", str(out), "--backend", "cpu", *extra])


def test_unmatched_region_is_a_warning_in_run_json_and_an_error_with_strict(synth_archive, tmp_path, capsys):
    out, truths = synth_archive
    d = out / truths[0]["patient"]
    spec = tmp_path / "regions.yaml"
    spec.write_text("regions:\n  whole_body_tumor: builtin\n  tumor_bone: builtin\n  kidneys: [kidny_*]\n")
    with pytest.warns(PetfeatWarning, match="region 'kidneys' matches no label.*did you mean 'kidney_"):
        assert _extract(d, tmp_path / "out", "--regions", str(spec), "--peak-neighbours", "region") == 0
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert len(run["warnings"]) == 1 and run["warnings"][0].startswith("region 'kidneys' matches no label")
    assert run["settings"]["peak_neighbours"] == "region"
    assert str(d) not in run["warnings"][0] and truths[0]["patient"] not in run["warnings"][0]
    capsys.readouterr()
    assert _extract(d, tmp_path / "strict", "--regions", str(spec), "--strict") == 2
    assert "error: region 'kidneys' matches no label" in capsys.readouterr().err
    assert not (tmp_path / "strict" / "features.parquet").exists()


def test_batch_settings_carry_the_region_options(monkeypatch, tmp_path):
    import petfeat.batch
    import petfeat.io.archive
    from petfeat.cli import main
    from petfeat.io.archive import StudyRow

    seen = {}

    def fake_run_batch(rows, out, settings, key, **kw):
        seen["settings"] = settings
        return BatchReport(timings={"wall_s": 0.0})

    monkeypatch.setattr(petfeat.batch, "run_batch", fake_run_batch)
    row = StudyRow("S000000000001", "", str(tmp_path), "1.2.3", [], "", "ok", 1)
    monkeypatch.setattr(petfeat.io.archive, "scan_archive", lambda *a, **k: [row])
    assert main(["extract", str(tmp_path), "-o", str(tmp_path / "o"), "--strict", "--peak-neighbours", "region"]) == 0
    assert seen["settings"].strict and seen["settings"].peak_neighbours == "region"
    assert main(["extract", str(tmp_path), "-o", str(tmp_path / "o")]) == 0
    assert not seen["settings"].strict and seen["settings"].peak_neighbours == "image"
    base = BatchSettings(regions=BUILTIN_REGIONS)
    assert base.digest() != BatchSettings(regions=BUILTIN_REGIONS, peak_neighbours="region").digest()


def test_run_study_passes_the_region_options_to_extract(monkeypatch, synth_archive, tmp_path):
    import petfeat.extract
    from petfeat.batch import run_study
    from petfeat.io.archive import scan_archive

    out, _ = synth_archive
    rows = [r for r in scan_archive(out, b"k" * 32) if r.study_id.startswith("S")]
    seen = {}

    def fake_extract(*a, **kw):
        seen.update(kw)
        raise RuntimeError("stop here")

    monkeypatch.setattr(petfeat.extract, "extract", fake_extract)
    settings = BatchSettings(regions=BUILTIN_REGIONS, backend="cpu", peak_neighbours="region", strict=True)
    rec = run_study(rows[0], settings, str(tmp_path / "b"), (b"k" * 32).hex())
    assert rec["status"] == "failed" and seen["strict"] is True and seen["peak_neighbours"] == "region"
