"""Each label source is its own name space; named ids without voxels are regions that are empty, not missing."""

from __future__ import annotations

import gzip
import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from petfeat.errors import PetfeatWarning
from petfeat.io.dicom import Geometry
from petfeat.io.labels import file_stem, read_labels

GRID = Geometry((20, 24, 24), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _write(path, arr):
    """A label image on GRID."""
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((4.0, 4.0, 4.0))
    sitk.WriteImage(img, str(path), True)


def _features(layers, regions):
    from petfeat.extract import extract

    suv = np.ones(GRID.shape, np.float32)
    res = extract(suv, layers, regions, spacing=GRID.spacing, backend="cpu", peaks=False)
    return res.features.set_index("region")


def _two_files(tmp_path):
    a = np.zeros(GRID.shape, np.uint8)
    a[2:6, 2:6, 2:6] = 1  # 64 voxels
    b = np.zeros(GRID.shape, np.uint8)
    b[10:13, 10:13, 10:13] = 1  # 27 voxels
    _write(tmp_path / "ct_seg.nii.gz", a)
    _write(tmp_path / "pet_seg.nrrd", b)
    return tmp_path / "ct_seg.nii.gz", tmp_path / "pet_seg.nrrd"


def test_two_unnamed_files_are_two_name_spaces(tmp_path):
    """Both files call their label label_1; NAMESPACE:label_1 picks one file's, the bare name both."""
    a, b = _two_files(tmp_path)
    layers = read_labels(a, GRID) + read_labels(b, GRID)
    assert [(la.namespace, la.names) for la in layers] == [("ct_seg", {1: "label_1"}), ("pet_seg", {1: "label_1"})]
    f = _features(layers, {"a": ["ct_seg:label_1"], "b": ["pet_seg:label_1"], "both": ["label_1"]})
    assert (f.loc["a", "voxel_count"], f.loc["b", "voxel_count"], f.loc["both", "voxel_count"]) == (64, 27, 91)


def test_namespace_argument_and_file_stems(tmp_path):
    a, _ = _two_files(tmp_path)
    (layer,) = read_labels(a, GRID, namespace="organs")
    assert layer.namespace == "organs"
    assert [file_stem(p) for p in ("x/ct_seg.nii.gz", "a.nii", "seg.nrrd", "rs.dcm", "m.mha", ".nii.gz")] == [
        "ct_seg", "a", "seg", "rs", "m", ".nii"]


def _ml_file(path, table: dict[int, str], ids_present):
    """A multilabel NIfTI on GRID with ``ids_present`` painted and a TotalSegmentator-style label table."""
    arr = np.zeros(GRID.shape, np.uint8)
    for k, i in enumerate(ids_present):
        arr[2 + 4 * k:5 + 4 * k, 3:9, 3:9] = i
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((4.0, 4.0, 4.0))
    _with_table(img, table, path)
    return arr


def _with_table(img, table: dict[int, str], path):
    """Write ``img`` as a gzipped NIfTI-1 carrying ``table`` as TotalSegmentator writes it (XML header extension)."""
    plain = path.with_name("plain.nii")
    sitk.WriteImage(img, str(plain))
    raw = plain.read_bytes()
    xml = ("<CaretExtension><VolumeInformation Index=\"0\"><LabelTable>"
           + "".join(f'<Label Key="{k}"><![CDATA[{v}]]></Label>' for k, v in table.items())
           + "</LabelTable></VolumeInformation></CaretExtension>").encode()
    size = -(-(8 + len(xml)) // 16) * 16
    header = bytearray(raw[:348])
    struct.pack_into("<f", header, 108, float(352 + size))
    ext = struct.pack("<ii", size, 0) + xml + b"\x00" * (size - 8 - len(xml))
    path.write_bytes(gzip.compress(bytes(header) + b"\x01\x00\x00\x00" + ext + raw[352:]))


def test_named_id_without_voxels_is_an_empty_region_in_every_format(tmp_path):
    """spleen is named (--ml label table; a class file of the folder) but has no voxel: status empty, as from a
    TotalSegmentator folder; a name no source has: no_matching_label (and a warning)."""
    arr = _ml_file(tmp_path / "seg.nii.gz", {1: "spleen", 5: "liver", 2: "kidney_right"}, [5, 2])
    (ml,) = read_labels(tmp_path / "seg.nii.gz", GRID)
    assert ml.names == {1: "spleen", 2: "kidney_right", 5: "liver"} and ml.namespace == "total"
    assert ml.native_volume_ml["spleen"] == 0.0
    folder = tmp_path / "ts"
    folder.mkdir()
    for name, i in (("spleen", 1), ("liver", 5), ("kidney_right", 2)):
        _write(folder / f"{name}.nii.gz", (arr == i).astype(np.uint8))
    ts = read_labels(folder, GRID)
    assert [la.names for la in ts] == [{1: "spleen", 2: "kidney_right", 5: "liver"}]
    np.testing.assert_array_equal(ts[0].array, ml.array)
    regions = {"spleen": ["spleen"], "liver": ["liver"], "pancreas": ["pancreas"]}
    for layers in ([ml], ts):
        with pytest.warns(PetfeatWarning, match="pancreas"):
            f = _features(layers, regions)
        assert f.loc["spleen", "status"] == "empty" and f.loc["spleen", "voxel_count"] == 0
        assert f.loc["liver", "status"] == "ok" and f.loc["liver", "voxel_count"] == 3 * 6 * 6
        assert f.loc["pancreas", "status"] == "no_matching_label"


def test_names_file_names_absent_ids_too(tmp_path):
    a, _ = _two_files(tmp_path)
    (layer,) = read_labels(a, GRID, names={1: "prostate", 3: "seminal_vesicle"})
    assert layer.names == {1: "prostate", 3: "seminal_vesicle"}
    assert layer.native_volume_ml == {"prostate": pytest.approx(64 * 0.064), "seminal_vesicle": 0.0}


def test_cli_label_sources():
    from petfeat.cli import _label_sources

    assert _label_sources(["organs=/d/seg.nii.gz", "/d/les.nrrd", "/no/such=dir/x.nii", "=x.nii"]) == [
        ("organs", Path("/d/seg.nii.gz")), (None, Path("/d/les.nrrd")), (None, Path("/no/such=dir/x.nii")),
        (None, Path("=x.nii"))]


def test_cli_path_with_equals_sign_that_exists_wins(tmp_path):
    from petfeat.cli import _label_sources

    odd = tmp_path / "a=b.nii.gz"
    odd.write_bytes(b"")
    assert _label_sources([str(odd)]) == [(None, odd)]
    assert _label_sources([f"x={odd}"]) == [("x", odd)]


def test_cli_extract_name_spaces_and_names_file(synth_archive, tmp_path):
    """petfeat extract --labels organs=A other=B SEG --label-names N: the names file names A (no table of its
    own), not B (a label table of its own); the name spaces reach the labels table and the region patterns."""
    import pandas as pd

    from petfeat.cli import main
    from petfeat.io.dicom import read_pet_series

    out, truths = synth_archive
    d = out / truths[0]["patient"]
    g = read_pet_series(d / "pet").geometry
    ref = sitk.Image([int(s) for s in g.shape[::-1]], sitk.sitkUInt8)
    ref.SetSpacing(g.spacing[::-1])
    ref.SetOrigin(g.origin)
    ref.SetDirection(g.direction)
    for name, lo in (("a", 10), ("b", 20)):
        arr = np.zeros(g.shape, np.uint8)
        arr[lo:lo + 4, 30:36, 30:36] = 1
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(ref)
        if name == "a":
            sitk.WriteImage(img, str(tmp_path / f"{name}.nii.gz"))
        else:
            _with_table(img, {1: "lump"}, tmp_path / f"{name}.nii.gz")
    (tmp_path / "names.json").write_text(json.dumps({"1": "blob"}))
    (tmp_path / "regions.yaml").write_text("regions:\n  a: ['organs:blob']\n  b: ['other:lump']\n"
                                           "  all: ['blob', 'lump']\n  liver: ['total:liver']\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rc = main(["extract", "--pet", str(d / "pet"), "--labels", f"organs={tmp_path / 'a.nii.gz'}",
                   f"other={tmp_path / 'b.nii.gz'}", str(d / "seg"), "--label-names", str(tmp_path / "names.json"),
                   "--regions", str(tmp_path / "regions.yaml"), "-o", str(tmp_path / "out"), "--backend", "cpu",
                   "--no-peak", "--key-file", str(tmp_path / "k.key")])
    assert rc == 0
    f = pd.read_parquet(tmp_path / "out" / "features.parquet").set_index("region")
    assert f.loc["a", "voxel_count"] == f.loc["b", "voxel_count"] == 4 * 36
    assert f.loc["all", "voxel_count"] == 2 * 4 * 36
    assert f.loc["liver", "voxel_count"] > 0
    labels = pd.read_parquet(tmp_path / "out" / "labels.parquet")
    assert {"organs", "other", "total", "head_glands_cavities"} == set(labels.namespace)
    assert list(labels.loc[labels.namespace.isin(["organs", "other"]), "label"]) == ["blob", "lump"]

