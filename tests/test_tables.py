"""Output tables as people use them: field metadata with units and SUV type, wide table, CSV and labels in batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from petfeat.batch import BatchSettings, consolidate, run_study
from petfeat.cli import main
from petfeat.extract import extract
from petfeat.features import FEATURES, field_metadata, wide_table, write_parquet
from petfeat.io.archive import scan_archive
from petfeat.quantities import QUANTITIES
from petfeat.regions import BUILTIN_REGIONS, LabelLayer

KEY = bytes(range(32))


def _study(suv_type="bw", scale=1.0):
    shape = (10, 12, 12)
    organs = np.zeros(shape, np.uint8)
    organs[2:8, 2:8, 2:8] = 1
    pet = np.full(shape, 1.0, np.float32)
    pet[2:8, 2:8, 2:8] = 5.0 * scale
    mask = np.zeros(shape, bool)
    mask[3:5, 9:11, 9:11] = True
    pet[mask] = 20.0 * scale
    spec = {"whole_body_tumor": BUILTIN_REGIONS["whole_body_tumor"], "liver": BUILTIN_REGIONS["liver"]}
    return extract(pet, LabelLayer(organs, {1: "liver"}, namespace="total"), spec, lesions=mask,
                   spacing=(4.0, 4.0, 4.0), backend="cpu", suv_type=suv_type, peaks=False)


def test_field_metadata_names_units_and_the_suv_type(tmp_path):
    bw, sul = _study("bw").features, _study("lbm").features
    write_parquet(bw, tmp_path / "bw.parquet")
    write_parquet(sul, tmp_path / "sul.parquet")
    m_bw, m_sul = field_metadata(tmp_path / "bw.parquet"), field_metadata(tmp_path / "sul.parquet")
    registry = {f.name: f for f in FEATURES}
    assert m_bw["suv_mean"] == {"unit": "SUVbw (g/mL)", "description": registry["suv_mean"].definition,
                                "suv_type": "bw"}
    assert m_bw["total_uptake"]["unit"] == "SUVbw*mL" and m_bw["volume_ml"]["unit"] == "mL"
    assert m_sul["suv_max"]["unit"].startswith("SUL") and m_sul["suv_max"]["suv_type"] == "lbm"
    assert m_sul["total_uptake"]["unit"] == "SUL*mL"
    assert "SUVbw" not in " ".join(v["unit"] for v in m_sul.values())  # SUL is never labelled SUVbw
    assert m_bw["config_hash"]["description"] and m_bw["status"]["description"]
    import pyarrow.parquet as pq

    assert pq.read_schema(tmp_path / "sul.parquet").metadata[b"petfeat.suv_type"] == b"lbm"
    back = pd.read_parquet(tmp_path / "sul.parquet")  # the metadata changes nothing pandas reads
    pd.testing.assert_frame_equal(back, sul.reset_index(drop=True), check_dtype=False)


def test_a_table_of_mixed_suv_types_says_so():
    from petfeat.features import arrow_table

    mixed = pd.concat([_study("bw").features, _study("lbm").features])
    field = arrow_table(mixed).schema.field("suv_mean")
    assert b"mixed" in field.metadata[b"unit"] and field.metadata[b"suv_type"] == b"mixed"


def test_wide_table_has_one_row_per_study_and_region__feature_columns():
    a, b = _study(scale=1.0).features, _study(scale=2.0).features
    a.insert(0, "study_id", "S1")
    b.insert(0, "study_id", "S2")
    w = wide_table(pd.concat([b, a]))  # order of first appearance
    assert list(w.study_id) == ["S2", "S1"] and len(w) == 2
    assert w.loc[0, "liver__suv_mean"] == pytest.approx(10.0) and w.loc[1, "liver__suv_mean"] == pytest.approx(5.0)
    assert w.loc[1, "whole_body_tumor__suv_max"] == pytest.approx(20.0)
    assert w.loc[1, "whole_body_tumor__lesion_count"] == 1 and w.loc[1, "liver__status"] == "ok"
    assert {"suv_type", "config_hash", "liver__volume_ml"} <= set(w.columns) and "region" not in w.columns
    from petfeat.features import column_metadata

    meta = column_metadata("whole_body_tumor__total_uptake", "bw")
    assert meta["unit"] == "SUVbw*mL" and meta["description"].startswith("region whole_body_tumor: SUVmean x volume")


def _parts(out, studies):
    parts = out / "parts"
    parts.mkdir(parents=True)
    results = []
    for sid, res in studies.items():
        for name, df in (("features", res.features), ("lesions", res.lesions)):
            df = df.copy()
            df.insert(0, "study_id", sid)
            df.to_parquet(parts / f"k{sid}.{name}.parquet", index=False)
        pd.DataFrame([{"study_id": sid, "label": "liver", "namespace": "total", "source": "seg",
                       "native_volume_ml": None, "pet_grid_volume_ml": 13.8, "outside_fov_fraction": None}]).to_parquet(
            parts / f"k{sid}.labels.parquet", index=False)
        results.append({"study_id": sid, "key": f"k{sid}", "status": "done"})
    return results


def test_consolidation_writes_quantities_wide_labels_and_csv(tmp_path):
    results = _parts(tmp_path, {"S2": _study(scale=2.0), "S1": _study()})
    out = consolidate(tmp_path, results, csv=True, wide=True)
    assert out == {"features": 4, "lesions": 2, "labels": 2, "quantities": 2, "features_wide": 2, "failures": 0}
    for name in ("features", "lesions", "labels", "quantities", "features_wide", "failures"):
        assert (tmp_path / f"{name}.parquet").exists() and (tmp_path / f"{name}.csv").exists(), name
    q = pd.read_parquet(tmp_path / "quantities.parquet")
    assert list(q.study_id) == ["S1", "S2"]
    assert q.tumour_to_liver_ratio.tolist() == pytest.approx([4.0, 4.0])  # 20 / 5 and 40 / 10
    assert q.therap_suv_max_ge20_any.tolist() == [True, True] and q.lesions_above_liver.tolist() == [1, 1]
    meta = field_metadata(tmp_path / "quantities.parquet")
    assert meta["tl_psma"]["unit"] == "SUVbw*mL" and meta["tumour_to_liver_ratio"]["unit"] == "1"
    assert meta["lesions_above_liver"]["description"] == {q.name: q for q in QUANTITIES}[
        "lesions_above_liver"].definition
    assert field_metadata(tmp_path / "features.parquet")["suv_peak_global"]["unit"] == "SUVbw (g/mL)"
    assert list(pd.read_parquet(tmp_path / "labels.parquet").study_id) == ["S1", "S2"]
    assert pd.read_csv(tmp_path / "features_wide.csv").shape[0] == 2
    # without the output options: no wide table, no CSV
    (tmp_path / "features_wide.parquet").unlink()
    for p in tmp_path.glob("*.csv"):
        p.unlink()
    consolidate(tmp_path, results)
    assert not (tmp_path / "features_wide.parquet").exists() and not list(tmp_path.glob("*.csv"))


def test_a_batch_study_writes_its_labels_part(synth_archive, tmp_path):
    src, _ = synth_archive
    row = scan_archive(src, KEY)[0]
    settings = BatchSettings(regions={"liver": BUILTIN_REGIONS["liver"],
                                      "whole_body_tumor": BUILTIN_REGIONS["whole_body_tumor"]}, backend="cpu",
                             peaks=False)
    rec = run_study(row, settings, str(tmp_path), KEY.hex())
    assert rec["status"] == "done", rec
    outputs = consolidate(tmp_path, [rec])
    labels = pd.read_parquet(tmp_path / "labels.parquet")
    assert outputs["labels"] == len(labels) > 40 and set(labels.study_id) == {row.study_id}
    assert "liver" in set(labels.label) and set(labels.source) == {"TotalSegmentator folder"}  # no file name
    q = pd.read_parquet(tmp_path / "quantities.parquet")
    assert q.study_id.tolist() == [row.study_id] and q.lesion_count.iloc[0] >= 1 and q.tl_psma.iloc[0] > 0
    f = pd.read_parquet(tmp_path / "features.parquet")
    assert q.patient_id.tolist() == [f.patient_id.iloc[0]] and q.patient_id.iloc[0].startswith("P")  # joins clinical


def test_extract_one_study_writes_quantities_and_wide(synth_archive, tmp_path):
    out, truths = synth_archive
    d = out / truths[0]["patient"]
    (tmp_path / "regions.yaml").write_text("regions:\n  whole_body_tumor: builtin\n  liver: builtin\n"
                                           "  parotid_glands: {include: ['parotid_gland_*'], exclude: ['lesion*']}\n")
    rc = main(["extract", "--pet", str(d / "pet"), "--labels", str(d / "seg"), "--lesions", str(d / "lesions.nii.gz"),
               "--regions", str(tmp_path / "regions.yaml"), "-o", str(tmp_path / "out"), "--csv", "--wide",
               "--backend", "cpu", "--no-peak"])
    assert rc == 0
    f = pd.read_parquet(tmp_path / "out" / "features.parquet").set_index("region")
    q = pd.read_parquet(tmp_path / "out" / "quantities.parquet")
    assert len(q) == 1 and q.tumour_to_liver_ratio.iloc[0] == pytest.approx(
        f.loc["whole_body_tumor", "suv_mean"] / f.loc["liver", "suv_mean"])
    assert q.tumour_to_parotid_ratio.iloc[0] == pytest.approx(
        f.loc["whole_body_tumor", "suv_mean"] / f.loc["parotid_glands", "suv_mean"])
    w = pd.read_parquet(tmp_path / "out" / "features_wide.parquet")
    assert len(w) == 1 and w["liver__suv_mean"].iloc[0] == f.loc["liver", "suv_mean"]
    assert (tmp_path / "out" / "quantities.csv").exists() and (tmp_path / "out" / "features_wide.csv").exists()
    assert field_metadata(tmp_path / "out" / "features.parquet")["suv_mean"]["unit"] == "SUVbw (g/mL)"


def test_consolidation_of_failures_only_writes_empty_tables(tmp_path):
    (tmp_path / "parts").mkdir()
    err = {"study_id": "S1", "pet_path": "<S1>/pet", "error_class": "SuvError", "message": "no weight"}
    out = consolidate(tmp_path, [{"study_id": "S1", "status": "failed", "error": err}], csv=True, wide=True)
    assert out == {"features": 0, "lesions": 0, "labels": 0, "quantities": 0, "features_wide": 0, "failures": 1}
    assert len(pd.read_parquet(tmp_path / "quantities.parquet")) == 0
    assert pd.read_csv(tmp_path / "failures.csv").error_class.tolist() == ["SuvError"]


def test_batch_command_passes_csv_and_wide_to_consolidation(synth_archive, tmp_path, monkeypatch):
    from pathlib import Path

    import petfeat.batch
    from petfeat.batch import BatchReport
    from petfeat.io.archive import write_manifest

    def serial(rows, out, settings, key, *, csv=False, wide=False, **_):  # run_batch without Dask
        recs = [run_study(r, settings, str(out), key.hex()) for r in rows]
        return BatchReport(done=len(recs), outputs=consolidate(Path(out), recs, csv=csv, wide=wide),
                           timings={"wall_s": 0.0})

    monkeypatch.setattr(petfeat.batch, "run_batch", serial)
    src, _ = synth_archive
    write_manifest(scan_archive(src, KEY)[:1], tmp_path / "manifest.csv")
    (tmp_path / "regions.yaml").write_text("regions:\n  whole_body_tumor: builtin\n  liver: builtin\n")
    assert main(["extract", str(tmp_path / "manifest.csv"), "-o", str(tmp_path / "out"), "--regions",
                 str(tmp_path / "regions.yaml"), "--no-peak", "--backend", "cpu", "--csv", "--wide"]) == 0
    for name in ("features", "lesions", "labels", "quantities", "features_wide", "failures"):
        assert (tmp_path / "out" / f"{name}.csv").exists(), name
    w = pd.read_parquet(tmp_path / "out" / "features_wide.parquet")
    assert len(w) == 1 and {"study_id", "liver__suv_mean", "whole_body_tumor__total_uptake"} <= set(w.columns)
