"""Label readers on files written by the real writers, resampling onto the PET grid, refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from petfeat.errors import LabelError, PetfeatWarning
from petfeat.io.dicom import read_pet_series
from petfeat.io.labels import (
    read_label_image,
    read_label_map,
    read_labels,
    read_lesion_mask,
    read_names_file,
    to_pet_grid,
)
from petfeat.regions import BUILTIN_REGIONS, load_spec


@pytest.fixture(scope="module")
def study(synth_archive):
    out, truths = synth_archive
    d = out / truths[2]["patient"]
    return d, read_pet_series(d / "pet")


def _sitk_pet_reference(folder):
    """The PET grid as SimpleITK itself reads it from the DICOM series (an independent geometry path)."""
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder)))
    return r.Execute()


@pytest.fixture(params=[1, 3], ids=lambda n: f"{n}readers")
def readers(request):
    """SimpleITK's thread budget, which sets how many class files are decompressed at a time."""
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(request.param)
    yield request.param
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def test_totalsegmentator_folder_matches_simpleitk_nearest_neighbour(study, readers):
    """Every class equals SimpleITK's own nearest-neighbour resampling of its file onto the grid SimpleITK read
    from the DICOM series, overlapping classes included (the synthetic skull overlaps other classes); each
    task (total, head_glands_cavities) is its own name space with TotalSegmentator's ids. Read one file at a
    time and three at a time."""
    from petfeat.io.totalsegmentator import TASK_LABELS

    d, series = study
    layers = read_labels(d / "seg", series.geometry)
    assert {la.namespace for la in layers} == {"total", "head_glands_cavities"}
    ref = _sitk_pet_reference(d / "pet")
    files = sorted((d / "seg").glob("*.nii.gz"))
    overlaps = np.zeros(series.geometry.shape, np.uint8)
    for f in files:
        img = sitk.ReadImage(str(f))
        theirs = sitk.GetArrayFromImage(sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
        overlaps += theirs
        name = f.name.removesuffix(".nii.gz")
        (layer, i), = [(la, i) for la in layers for i, n in la.names.items() if n == name]
        assert TASK_LABELS[layer.namespace][i] == name
        np.testing.assert_array_equal(layer.array == i, theirs, err_msg=name)
        assert layer.native_volume_ml[name] == pytest.approx((sitk.GetArrayViewFromImage(img) > 0).sum()
                                                             * np.prod(img.GetSpacing()) / 1000)
    assert overlaps.max() > 1  # the case that a single layer cannot hold
    assert len(layers) < len(files)


def test_unreadable_class_file_is_named_whatever_the_readers(study, readers, tmp_path):
    d, series = study
    seg = tmp_path / "seg"
    seg.mkdir()
    files = sorted((d / "seg").glob("*.nii.gz"))[:6]
    for f in files:
        (seg / f.name).write_bytes(f.read_bytes())
    bad = seg / files[3].name
    bad.write_bytes(bad.read_bytes()[:100])  # truncated gzip stream
    with pytest.raises(LabelError, match=f"{bad.name}: .*truncated"):
        read_labels(seg, series.geometry)


def test_nrrd_multilabel_on_another_grid(study, tmp_path):
    d, series = study
    ref = _sitk_pet_reference(d / "pet")
    arr = np.zeros((40, 60, 60), np.uint16)
    arr[10:30, 20:40, 15:45] = 7
    arr[12:20, 22:30, 20:30] = 300  # ids above 255
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((6.5, 6.5, 9.0))
    img.SetOrigin((-190.0, -180.0, 100.0))
    sitk.WriteImage(img, str(tmp_path / "labels.nrrd"))
    (layer,) = read_labels(tmp_path / "labels.nrrd", series.geometry, names={7: "organ"})
    theirs = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(tmp_path / "labels.nrrd")), ref,
                                                  sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    np.testing.assert_array_equal(layer.array, theirs)
    assert layer.names == {7: "organ", 300: "label_300"}


@pytest.mark.parametrize("mode", ["nearest", "fraction"])
def test_box_resampling_equals_whole_grid_resampling_on_an_oblique_grid(study, mode):
    # petfeat resamples only the PET box a label can reach; on a rotated, anisotropic label grid the
    # result must equal SimpleITK resampling the whole PET grid.
    d, series = study
    g = series.geometry
    arr = np.zeros((30, 40, 50), np.uint8)
    arr[5:9, 10:14, 12:20] = 3
    arr[20:22, 30:31, 40:44] = 9  # a thin object near a corner
    arr[14, 20, 25] = 5  # one voxel
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((3.3, 2.7, 4.1))
    c, s_ = np.cos(np.radians(30)), np.sin(np.radians(30))
    img.SetDirection((c, -s_, 0.0, s_, c, 0.0, 0.0, 0.0, 1.0))
    img.SetOrigin((-40.0, -60.0, g.origin[2] + 80.0))
    ref = _sitk_pet_reference(d / "pet")
    got = to_pet_grid(img, g, mode=mode)
    if mode == "nearest":
        want = sitk.GetArrayFromImage(sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    else:
        want = np.zeros(g.shape, np.uint8)
        best = np.zeros(g.shape, np.float32)
        for lab in (3, 5, 9):
            ind = sitk.Cast(sitk.BinaryThreshold(img, lab, lab, 1, 0), sitk.sitkFloat32)
            frac = sitk.GetArrayFromImage(sitk.Resample(ind, ref, sitk.Transform(), sitk.sitkLinear, 0.0))
            take = (frac >= 0.5) & (frac > best)
            want[take], best[take] = lab, frac[take]
    assert want.any()
    np.testing.assert_array_equal(got, want)


def _coarse_label_map(path: Path, dtype, outer: int, inner: int) -> np.ndarray:
    """Write a two-label map on a coarser grid (6.5 x 6.5 x 9 mm) overlapping the study's PET; returns its ids."""
    arr = np.zeros((40, 60, 60), dtype)
    arr[10:30, 20:40, 15:45] = outer
    arr[12:20, 22:30, 20:30] = inner
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((6.5, 6.5, 9.0))
    img.SetOrigin((-190.0, -180.0, 100.0))
    sitk.WriteImage(img, str(path))
    return arr


def _with_label_table(nii: Path, table: dict[int, str], out: Path) -> None:
    """Add a TotalSegmentator-style XML label table to a NIfTI-1 file as a header extension (code 0)."""
    import gzip
    import struct

    raw = nii.read_bytes()
    assert struct.unpack_from("<f", raw, 108)[0] == 352.0 and raw[348:352] == b"\x00" * 4
    body = "".join(f'<Label Key="{k}" Red="1" Green="0" Blue="0" Alpha="1"><![CDATA[{v}]]></Label>\n'
                   for k, v in table.items())
    xml = ('<?xml version="1.0" encoding="UTF-8"?> <CaretExtension> <VolumeInformation Index="0"> <LabelTable>\n'
           + body + "</LabelTable> </VolumeInformation></CaretExtension>\n   ").encode()
    size = -(-(8 + len(xml)) // 16) * 16
    ext = struct.pack("<ii", size, 0) + xml + b"\x00" * (size - 8 - len(xml))
    header = bytearray(raw[:348])
    struct.pack_into("<f", header, 108, float(352 + size))
    out.write_bytes(gzip.compress(bytes(header) + b"\x01\x00\x00\x00" + ext + raw[352:]))


def test_totalsegmentator_ml_file_names_its_labels(study, tmp_path):
    d, series = study
    arr = _coarse_label_map(tmp_path / "plain.nii", np.uint8, 5, 91)
    _with_label_table(tmp_path / "plain.nii", {5: "liver", 91: "skull", 7: "aorta"}, tmp_path / "ml.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ml.nii.gz"))), arr)
    (layer,) = read_labels(tmp_path / "ml.nii.gz", series.geometry)
    assert layer.names == {5: "liver", 7: "aorta", 91: "skull"}  # every name of the table, 7 without voxels
    assert layer.native_volume_ml["aorta"] == 0 and layer.native_volume_ml["liver"] > 0
    assert layer.namespace == "total"  # the task whose classes these are
    (layer,) = read_labels(tmp_path / "ml.nii.gz", series.geometry, names={5: "hepar"})  # given names win
    assert layer.names == {5: "hepar", 91: "label_91"} and layer.namespace == "ml"
    (layer,) = read_labels(tmp_path / "plain.nii", series.geometry)  # no table: generic names
    assert layer.names == {5: "label_5", 91: "label_91"} and layer.namespace == "plain"


def test_fraction_mode_keeps_voxels_at_least_half_covered(study):
    d, series = study
    g = series.geometry
    fine = np.zeros(tuple(2 * s for s in g.shape), np.uint8)
    rng = np.random.default_rng(1)
    fine[rng.random(fine.shape) > 0.6] = 1
    img = sitk.GetImageFromArray(fine)
    img.SetSpacing(tuple(s / 2 for s in g.spacing[::-1]))
    img.SetOrigin(tuple(o - s / 4 for o, s in zip(g.origin, g.spacing[::-1], strict=True)))
    got = to_pet_grid(img, g, mode="fraction")
    # oracle: the PET voxel's 8 sub-voxels; linear interpolation at the PET centre averages them
    frac = fine.reshape(g.shape[0], 2, g.shape[1], 2, g.shape[2], 2).mean(axis=(1, 3, 5))
    np.testing.assert_array_equal(got == 1, frac >= 0.5)


def _mask_of(layers, name):
    """The voxels of the label called ``name`` (in whichever layer holds it)."""
    (hit,) = [(la, i) for la in layers for i, n in la.names.items() if n == name]
    return hit[0].array == hit[1]


def test_packed_layers_keep_overlapping_labels_apart_and_disjoint_ones_together():
    """Random boxes (many overlap): every label's voxels, names and volumes survive; fewer layers than labels;
    within a layer no two labels share a voxel; a repeated name goes to another layer; more than 255 labels."""
    from petfeat.io.labels import packed_layers

    rng = np.random.default_rng(5)
    shape = (20, 64, 64)
    masks = []
    for k in range(300):
        m = np.zeros(shape, bool)
        z, y, x = rng.integers(0, 19), rng.integers(0, 61), rng.integers(0, 61)
        m[z:z + 2, y:y + 3, x:x + 3] = True
        masks.append((f"roi_{k % 299}", m, float(k)))  # roi_0 twice
    layers = packed_layers(iter(masks), shape, "rt.dcm")
    assert 1 < len(layers) < 300 and max(la.array.max() for la in layers) > 255
    for la in layers:
        assert sorted(la.names) == list(range(1, len(la.names) + 1)) and la.source == "rt.dcm"
        assert len(set(la.names.values())) == len(la.names)
    seen = {}
    for la in layers:
        for i, n in la.names.items():
            seen.setdefault(n, []).append((la.array == i, la.native_volume_ml[n]))
    for k, (name, m, ml) in enumerate(masks):
        got = seen[name][1 if k == 299 else 0]
        np.testing.assert_array_equal(got[0], m)
        assert got[1] == ml


@pytest.mark.parametrize("seg_type", ["BINARY", "FRACTIONAL", "LABELMAP"])
def test_dicom_seg_written_by_highdicom(study, tmp_path, seg_type, monkeypatch):
    # BINARY and FRACTIONAL with overlapping segments (fractions 0.3 and 0.7: kept where >= 0.5);
    # LABELMAP (one label per pixel, so the segments do not overlap)
    hd = pytest.importorskip("highdicom")
    from pydicom.sr.codedict import codes

    d, series = study
    sources = [pydicom.dcmread(f) for f in series.files]
    shape = series.geometry.shape
    a = np.zeros(shape, bool)
    a[20:40, 20:30, 20:30] = True
    b = np.zeros(shape, bool)
    b[30:50, 25:35, 25:35] = True  # overlaps a
    if seg_type == "LABELMAP":
        a &= ~b
    descs = [hd.seg.SegmentDescription(segment_number=i + 1, segment_label=lab,
                                       segmented_property_category=codes.SCT.Organ,
                                       segmented_property_type=codes.SCT.Organ,
                                       algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
             for i, lab in enumerate(("organ_a", "organ_b"))]
    if seg_type == "BINARY":
        pixels = np.stack([a, b], -1).astype(np.uint8)
    elif seg_type == "FRACTIONAL":
        faint = np.zeros(shape, bool)
        faint[5:15, 40:50, 40:50] = True  # below one half everywhere: in no layer
        pixels = np.stack([np.where(a, 0.7, np.where(faint, 0.3, 0.0)), np.where(b, 0.7, 0.0)], -1).astype(np.float32)
    else:
        pixels = (a * 1 + b * 2).astype(np.uint8)
    seg = hd.seg.Segmentation(source_images=sources, pixel_array=pixels,
                              segmentation_type=hd.seg.SegmentationTypeValues[seg_type], segment_descriptions=descs,
                              series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(),
                              instance_number=1, manufacturer="petfeat-test", manufacturer_model_name="test",
                              software_versions="0", device_serial_number="0")
    seg.save_as(tmp_path / "seg.dcm")
    assert pydicom.dcmread(tmp_path / "seg.dcm").SegmentationType == seg_type
    decoded = []  # segments per decoded volume: one at a time (a LABELMAP's one label volume, once)
    get_volume = hd.seg.Segmentation.get_volume
    monkeypatch.setattr(hd.seg.Segmentation, "get_volume", lambda self, **kw: (
        decoded.append(len(kw["segment_numbers"])), get_volume(self, **kw))[1])
    layers = read_labels(tmp_path / "seg.dcm", series.geometry)
    assert decoded == ([2] if seg_type == "LABELMAP" else [1, 1])
    # overlapping segments take a layer each; the LABELMAP's (disjoint) segments share one
    want = [["organ_a", "organ_b"]] if seg_type == "LABELMAP" else [["organ_a"], ["organ_b"]]
    assert [list(la.names.values()) for la in layers] == want
    assert {la.namespace for la in layers} == {"seg"}  # the file's stem
    assert {la.namespace for la in read_labels(tmp_path / "seg.dcm", series.geometry, namespace="ct")} == {"ct"}
    np.testing.assert_array_equal(_mask_of(layers, "organ_a"), a)
    np.testing.assert_array_equal(_mask_of(layers, "organ_b"), b)
    far = dataclasses.replace(series.geometry, origin=tuple(v + 5000.0 for v in series.geometry.origin))
    with pytest.raises(LabelError, match="seg.dcm: no segment overlaps the PET field of view"):
        read_labels(tmp_path / "seg.dcm", far)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes((tmp_path / "seg.dcm").read_bytes()[:2000])
    with pytest.raises(LabelError, match="truncated.dcm: not a readable DICOM SEG"):
        read_labels(truncated, series.geometry)


def test_label_map_outside_the_pet_field_of_view_is_refused(study, tmp_path):
    d, series = study
    img = sitk.GetImageFromArray(np.ones((5, 5, 5), np.uint8))
    img.SetOrigin((5000.0, 5000.0, 5000.0))
    sitk.WriteImage(img, str(tmp_path / "far.nii.gz"))
    with pytest.raises(LabelError, match="does not overlap the PET field of view"):
        read_labels(tmp_path / "far.nii.gz", series.geometry)
    with pytest.raises(LabelError, match="far.nii.gz: the label map does not overlap the PET field of view"):
        read_lesion_mask(tmp_path / "far.nii.gz", series.geometry)


def test_lesion_mask_equals_the_binarised_label_map(study, tmp_path):
    # on the PET grid (the synthetic lesion map) and on a coarser, shifted grid with ids above 255
    d, series = study
    want = read_label_map(d / "lesions.nii.gz", series.geometry).array > 0
    got = read_lesion_mask(d / "lesions.nii.gz", series.geometry)
    assert got.dtype == bool and want.any()
    np.testing.assert_array_equal(got, want)
    _coarse_label_map(tmp_path / "les.nrrd", np.uint16, 7, 300)
    np.testing.assert_array_equal(read_lesion_mask(tmp_path / "les.nrrd", series.geometry),
                                  read_label_map(tmp_path / "les.nrrd", series.geometry).array > 0)


@pytest.mark.parametrize("pixel", [sitk.sitkFloat32, sitk.sitkInt16, sitk.sitkFloat64])
def test_whole_number_float_and_signed_label_images_are_read_with_a_warning(tmp_path, pixel):
    """0/1 masks written as int16 or float32 (the SUV reference objects' own mask is int16) keep their exact ids."""
    ids = np.random.default_rng(3).integers(0, 300, (4, 5, 6)).astype(np.uint16)
    sitk.WriteImage(sitk.Cast(sitk.GetImageFromArray(ids), pixel), str(tmp_path / "m.nii.gz"))
    with pytest.warns(PetfeatWarning, match="read as unsigned integers"):
        img = read_label_image(tmp_path / "m.nii.gz")
    assert img.GetPixelID() == sitk.sitkUInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), ids)


@pytest.mark.parametrize("values, pixel, word", [
    ([0, 1, -1], sitk.sitkInt16, "negative values"), ([0, 0.5, 1], sitk.sitkFloat32, "fractional values"),
    ([0, np.nan, 1], sitk.sitkFloat32, "non-finite values")])
def test_negative_fractional_and_nan_label_images_refused(tmp_path, values, pixel, word):
    arr = np.zeros((3, 3, 3), np.float32 if pixel == sitk.sitkFloat32 else np.int16)
    arr.flat[:3] = values
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "bad.mha"))  # NIfTI writes NaN as 0
    with pytest.raises(LabelError, match=f"bad.mha: pixel type .* with {word}"):
        read_label_image(tmp_path / "bad.mha")


def test_names_files(tmp_path):
    (tmp_path / "n.json").write_text(json.dumps({"1": "liver", "5": "spleen"}))
    (tmp_path / "n.csv").write_text("id,name\n1,liver\n5,spleen\n")
    assert read_names_file(tmp_path / "n.json") == read_names_file(tmp_path / "n.csv") == {1: "liver", 5: "spleen"}


def test_regions_yaml(tmp_path):
    (tmp_path / "r.yaml").write_text("regions:\n  healthy_bone: builtin\n  prostate: {include: [prostate]}\n")
    spec = load_spec(tmp_path / "r.yaml")
    assert spec["healthy_bone"] == BUILTIN_REGIONS["healthy_bone"]
    assert spec["prostate"]["include"] == ["prostate"] and spec["prostate"]["exclude"] == []
    (tmp_path / "bad.yaml").write_text("regions:\n  nonsense: builtin\n")
    with pytest.raises(LabelError, match="'nonsense' is not built in"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text("regions:\n  x: {exclude: [a]}\n")
    with pytest.raises(LabelError, match=r"bad2.yaml: region 'x'"):
        load_spec(tmp_path / "bad2.yaml")


def test_missing_label_path(study):
    _, series = study
    with pytest.raises(LabelError, match="no such file or folder"):
        read_labels("/no/such/labels.nii.gz", series.geometry)
