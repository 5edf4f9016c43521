"""The PET-grid label cache: same layers as a fresh read, invalidated by its inputs, reused when regions change."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from petfeat.cli import main
from petfeat.io import labels as labels_module
from petfeat.io.dicom import Geometry
from petfeat.io.labels import read_labels
from petfeat.label_cache import LabelCache

GEOMETRY = Geometry((20, 18, 16), (3.0, 2.5, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _class_file(path, box, spacing=(1.2, 1.1, 2.0)):
    arr = np.zeros((30, 40, 36), np.uint8)
    arr[box] = 1
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path), True)


@pytest.fixture
def folder(tmp_path):
    seg = tmp_path / "seg"
    seg.mkdir()
    _class_file(seg / "liver.nii.gz", np.s_[5:15, 10:20, 8:20])
    _class_file(seg / "spleen.nii.gz", np.s_[10:20, 22:30, 20:30])
    _class_file(seg / "parotid_gland_left.nii.gz", np.s_[12:16, 12:18, 12:18])  # head_glands_cavities: own layer
    return seg


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.array, y.array)
        assert x.array.dtype == y.array.dtype
        assert x.names == y.names and x.namespace == y.namespace and x.source == y.source
        assert x.native_volume_ml == pytest.approx(y.native_volume_ml)


def _no_read(*a, **k):
    raise AssertionError("the labels were read although the cache holds them")


def test_cache_returns_the_layers_of_a_fresh_read_and_reads_nothing_the_second_time(folder, tmp_path, monkeypatch):
    fresh = read_labels(folder, GEOMETRY)
    assert len(fresh) == 2 and fresh[0].array.any()
    cache = LabelCache(tmp_path / "cache")
    first = cache.read_labels(folder, GEOMETRY)
    _same(first, fresh)
    monkeypatch.setattr(labels_module, "read_labels", _no_read)
    second = cache.read_labels(folder, GEOMETRY)
    _same(second, fresh)
    assert (cache.misses, cache.hits) == (1, 1)
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and "seg" not in entries[0].name and "liver" not in entries[0].name
    second[0].array[0, 0, 0] = 7  # the layers are the caller's own arrays
    _same(cache.read_labels(folder, GEOMETRY), fresh)


def test_cache_of_a_multilabel_file_with_names_and_namespace(tmp_path):
    arr = np.zeros((30, 40, 36), np.uint8)
    arr[5:15, 10:20, 8:20] = 1
    arr[16:25, 22:30, 20:30] = 4
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.2, 1.1, 2.0))
    sitk.WriteImage(img, str(tmp_path / "ml.nii.gz"), True)
    names = {1: "liver", 4: "kidney_left"}
    fresh = read_labels(tmp_path / "ml.nii.gz", GEOMETRY, names=names, namespace="ct")
    cache = LabelCache(tmp_path / "cache")
    cache.read_labels(tmp_path / "ml.nii.gz", GEOMETRY, names=names, namespace="ct")
    _same(cache.read_labels(tmp_path / "ml.nii.gz", GEOMETRY, names=names, namespace="ct"), fresh)
    assert cache.hits == 1
    cache.read_labels(tmp_path / "ml.nii.gz", GEOMETRY, names={1: "liver"}, namespace="ct")  # other names: new key
    cache.read_labels(tmp_path / "ml.nii.gz", GEOMETRY, names=names)  # other name space: new key
    cache.read_labels(tmp_path / "ml.nii.gz", GEOMETRY, names=names, namespace="ct", mode="fraction")
    assert (cache.misses, cache.hits) == (4, 1)


def test_cache_is_invalidated_when_an_input_changes(folder, tmp_path):
    cache = LabelCache(tmp_path / "cache")
    cache.read_labels(folder, GEOMETRY)
    _class_file(folder / "liver.nii.gz", np.s_[5:25, 10:20, 8:20])  # a class file written again, larger
    got = cache.read_labels(folder, GEOMETRY)
    assert cache.misses == 2
    _same(got, read_labels(folder, GEOMETRY))
    _class_file(folder / "kidney_left.nii.gz", np.s_[2:6, 2:6, 2:6])  # a class added
    got = cache.read_labels(folder, GEOMETRY)
    assert cache.misses == 3 and "kidney_left" in got[0].names.values()
    st = (folder / "spleen.nii.gz").stat()
    os.utime(folder / "spleen.nii.gz", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched only
    cache.read_labels(folder, GEOMETRY)
    assert cache.misses == 4
    moved = Geometry(GEOMETRY.shape, GEOMETRY.spacing, (2.0, 0.0, 0.0), GEOMETRY.direction)  # another PET grid
    _same(cache.read_labels(folder, moved), read_labels(folder, moved))
    assert cache.misses == 5
    cache.read_labels(folder, GEOMETRY)
    assert cache.hits == 1


def test_unreadable_entry_is_read_again_and_replaced(folder, tmp_path):
    cache = LabelCache(tmp_path / "cache")
    cache.read_labels(folder, GEOMETRY)
    entry = cache.entry(cache.key(folder, GEOMETRY))
    entry.write_bytes(entry.read_bytes()[:100])  # cut short
    _same(cache.read_labels(folder, GEOMETRY), read_labels(folder, GEOMETRY))
    assert cache.misses == 2 and entry.stat().st_size > 100
    cache.read_labels(folder, GEOMETRY)
    assert cache.hits == 1


def test_cache_keeps_within_its_size_least_recently_used_first(folder, tmp_path):
    cache = LabelCache(tmp_path / "cache")
    cache.read_labels(folder, GEOMETRY)
    one = cache.size()
    cache.max_bytes = int(one * 1.5)
    other = Geometry(GEOMETRY.shape, GEOMETRY.spacing, (1.0, 0.0, 0.0), GEOMETRY.direction)
    cache.read_labels(folder, other)
    assert cache.size() <= cache.max_bytes
    assert cache.entry(cache.key(folder, other)).exists()
    assert not cache.entry(cache.key(folder, GEOMETRY)).exists()


def test_cli_rerun_with_other_regions_reuses_the_cache(synth_archive, tmp_path, monkeypatch):
    root, _ = synth_archive
    study = sorted(p for p in root.iterdir() if p.is_dir())[0]
    first_spec, spec = tmp_path / "first.yaml", tmp_path / "regions.yaml"
    first_spec.write_text("regions:\n  liver_only: {include: [liver]}\n")
    spec.write_text("regions:\n  kidneys: {include: [kidney_*]}\n  whole_body_tumor: builtin\n")
    common = ["extract", "--pet", str(study / "pet"), "--labels", str(study / "seg"), "--lesions",
              str(study / "lesions.nii.gz"), "--backend", "cpu", "--no-peak", "--key-file", str(tmp_path / "k")]
    cache = tmp_path / "cache"
    first = ["--label-cache", str(cache), "--regions", str(first_spec), "-o", str(tmp_path / "first")]
    assert main([*common, *first]) == 0
    assert len(list(cache.iterdir())) == 1
    assert main([*common, "--no-label-cache", "--regions", str(spec), "-o", str(tmp_path / "fresh")]) == 0
    monkeypatch.setattr(labels_module, "read_labels", _no_read)
    assert main([*common, "--label-cache", str(cache), "--regions", str(spec), "-o", str(tmp_path / "rerun")]) == 0
    fresh = pd.read_parquet(tmp_path / "fresh" / "features.parquet")
    rerun = pd.read_parquet(tmp_path / "rerun" / "features.parquet")
    assert list(rerun.region) == ["kidneys", "whole_body_tumor"]
    pd.testing.assert_frame_equal(rerun, fresh)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "rerun" / "labels.parquet"),
                                  pd.read_parquet(tmp_path / "fresh" / "labels.parquet"))
    with pytest.raises(AssertionError, match="the labels were read"):
        main([*common, "--no-label-cache", "--regions", str(spec), "-o", str(tmp_path / "off")])


def test_batch_task_reuses_the_cache_petfeat_extract_names(synth_archive, tmp_path, monkeypatch):
    from petfeat.batch import BatchSettings, run_study
    from petfeat.io.archive import scan_archive

    root, _ = synth_archive
    key = bytes(range(32))
    row = scan_archive(root, key)[0]
    spec = {"liver": {"include": ["liver"], "exclude": [], "within": [], "exclude_margin_mm": 0.0}}
    settings = BatchSettings(regions=spec, backend="cpu", peaks=False)
    monkeypatch.delenv("PETFEAT_LABEL_CACHE", raising=False)
    plain = run_study(row, settings, str(tmp_path / "plain"), key.hex())
    monkeypatch.setenv("PETFEAT_LABEL_CACHE", str(tmp_path / "cache"))
    first = run_study(row, settings, str(tmp_path / "first"), key.hex())
    assert len(list((tmp_path / "cache").iterdir())) == len(row.labels) >= 1
    monkeypatch.setattr(labels_module, "read_labels", _no_read)
    again = run_study(row, settings, str(tmp_path / "again"), key.hex())
    assert plain["status"] == first["status"] == again["status"] == "done", again
    part = f"parts/{again['key']}.features.parquet"
    again_df, plain_df = (pd.read_parquet(tmp_path / name / part) for name in ("again", "plain"))
    pd.testing.assert_frame_equal(again_df, plain_df)
    monkeypatch.setenv("PETFEAT_LABEL_CACHE", "off")  # off: the labels are read (here: the patched reader fails)
    off = run_study(row, settings, str(tmp_path / "off"), key.hex())
    assert off["status"] == "failed"
