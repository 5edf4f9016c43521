"""Label maps cut by the PET field of view (fraction, one warning, input_notes, cache) and label warning noise."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DRO

from petfeat.errors import PetfeatWarning
from petfeat.io.dicom import Geometry
from petfeat.io.label_sources import OUTSIDE_FOV_NOTE, read_label_sources
from petfeat.io.labels import (
    OUTSIDE_FOV_NOTED,
    LabelNote,
    census,
    outside_fov_counts,
    read_label_image,
    read_labels,
)

# the tester's PET under TotalSegmentator's example CT: 91 x 76 x 11 voxels of 4 mm, half the CT's 90 mm in z
PET_HALF = Geometry((11, 76, 91), (4.0, 4.0, 4.0), (-185.0, -311.0, 94.3), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _oracle(img: sitk.Image, geometry: Geometry) -> np.ndarray:
    """Voxels per id whose centres fall outside the PET grid, every voxel mapped one by one."""
    arr = sitk.GetArrayFromImage(img)
    z, y, x = np.nonzero(arr)
    ijk = np.stack([x, y, z], 1).astype(float)
    steps = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())[None, :]
    lps = ijk @ steps.T + np.asarray(img.GetOrigin())
    d = np.asarray(geometry.direction, float).reshape(3, 3)
    pet = (lps - np.asarray(geometry.origin)) @ d / np.asarray(geometry.spacing[::-1])
    n = np.asarray(geometry.shape[::-1])
    out = ~np.all((pet >= -0.5) & (pet <= n - 0.5), axis=1)
    return np.bincount(arr[z, y, x][out].astype(np.int64), minlength=int(arr.max()) + 1)


def _image(arr, spacing, origin, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def _rotation(deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return tuple(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).ravel())


PET = Geometry((10, 12, 14), (3.0, 2.5, 2.0), (1.0, -2.0, 5.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


@pytest.mark.parametrize("spacing, origin, direction", [
    ((1.5, 1.0, 2.0), (-4.0, 3.0, -9.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),  # beyond several faces: the slabs
    ((1.0, 1.0, 1.0), (3.0, 1.0, 8.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),  # mostly inside: the inner box
    ((1.2, 0.9, 2.5), (40.0, 30.0, 40.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1)),  # flipped, as TotalSegmentator's CT
    ((1.1, 1.3, 0.8), (0.0, 0.0, 0.0), (0, 1, 0, 1, 0, 0, 0, 0, -1)),  # axes swapped
    ((1.0, 1.0, 1.5), (5.0, -10.0, 0.0), _rotation(30)),  # oblique: slice by slice
    ((0.5, 0.5, 0.5), (8.0, 6.0, 12.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),  # wholly inside: the corners
    ((1.0, 1.0, 1.0), (500.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),  # wholly outside
])
def test_outside_counts_equal_a_voxel_by_voxel_oracle(spacing, origin, direction):
    rng = np.random.default_rng(5)
    arr = np.zeros((30, 32, 34), np.uint8)
    arr[3:27, 4:29, 2:31] = rng.integers(0, 6, (24, 25, 29))
    img = _image(arr, spacing, origin, direction)
    got = outside_fov_counts(img, census(img), PET)
    want = _oracle(img, PET)
    np.testing.assert_array_equal(got[1:], np.pad(want, (0, len(got) - len(want)))[1:])


def test_an_unlabelled_image_has_nothing_outside():
    img = _image(np.zeros((4, 4, 4), np.uint8), (1, 1, 1), (900.0, 0, 0))
    assert not outside_fov_counts(img, census(img), PET).any()


@pytest.fixture(scope="module")
def ts(reference_dir):
    return reference_dir / "totalsegmentator"


def _only(caught, text):
    return [w for w in caught if text in str(w.message)]


def test_totalsegmentator_folder_cut_by_a_short_pet_gets_each_fraction_one_warning_and_input_notes(ts):
    """The tester's case: liver 1062 mL on the CT, 281 mL on the PET grid; 75 % of it outside, said once."""
    series = SimpleNamespace(geometry=PET_HALF, notes={}, frame_uid="", patient_id="")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layers = read_label_sources([(None, ts / "example_seg_fast")], series)
    cut = _only(caught, "beyond the PET field of view")
    assert len(cut) == 1 and issubclass(cut[0].category, PetfeatWarning)
    assert "their regions measure the part inside" in str(cut[0].message)
    assert "liver 75.4%" in str(cut[0].message) and "wholly outside: lung_lower_lobe_left" in str(cut[0].message)
    notes = {n: v for la in layers for n, v in la.notes.items()}
    liver = sitk.ReadImage(str(ts / "example_seg_fast" / "liver.nii.gz"))
    want = _oracle(liver, PET_HALF)[1] / np.count_nonzero(sitk.GetArrayViewFromImage(liver))
    assert notes["liver"]["outside_fov_fraction"] == pytest.approx(want, abs=1e-12)
    assert 0.70 < want < 0.80
    assert notes["duodenum"]["outside_fov_fraction"] == 0.0  # wholly inside
    assert "brain" not in notes  # no voxels: no fraction
    noted = series.notes[OUTSIDE_FOV_NOTE]["total"]
    assert noted["liver"] == round(want, 4) and "duodenum" not in noted
    assert all(f >= OUTSIDE_FOV_NOTED for f in noted.values())


def test_ml_file_fractions_per_id_match_the_oracle(ts):
    img = sitk.ReadImage(str(ts / "example_seg_ml.nii.gz"))
    with pytest.warns(PetfeatWarning, match="beyond the PET field of view") as rec:
        (layer,) = read_labels(ts / "example_seg_ml.nii.gz", PET_HALF)
    assert len(_only(rec, "beyond the PET")) == 1
    counts = np.bincount(sitk.GetArrayViewFromImage(img).ravel())
    outside = _oracle(img, PET_HALF)
    for i, name in layer.names.items():
        if i < len(counts) and counts[i]:
            assert layer.notes[name]["outside_fov_fraction"] == pytest.approx(outside[i] / counts[i], abs=1e-12)
    assert layer.notes["liver"]["outside_fov_fraction"] > 0.7


def test_a_label_map_inside_the_field_of_view_gives_zero_and_no_warning(tmp_path):
    arr = np.zeros((8, 10, 12), np.uint8)
    arr[2:5, 3:6, 4:9] = 2
    sitk.WriteImage(_image(arr, (1.0, 1.0, 1.0), (4.0, 1.0, 8.0)), str(tmp_path / "in.nii.gz"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (layer,) = read_labels(tmp_path / "in.nii.gz", PET)
    assert layer.notes == {"label_2": {"outside_fov_fraction": 0.0}}


def test_a_cached_rerun_gives_the_same_fractions_warning_and_notes(ts, tmp_path):
    from petfeat.label_cache import LabelCache

    cache = LabelCache(tmp_path / "cache")
    runs = []
    for _ in range(2):
        series = SimpleNamespace(geometry=PET_HALF, notes={}, frame_uid="", patient_id="")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            layers = read_label_sources([(None, ts / "example_seg_fast")], series, read=cache.read_labels)
        runs.append(([str(w.message) for w in _only(caught, "beyond the PET")],
                     [la.notes for la in layers], series.notes))
    assert cache.misses == 1 and cache.hits == 1
    assert len(runs[0][0]) == 1
    assert runs[0] == runs[1]


def _dro_series():
    from petfeat.io.dicom import read_pet_series

    return read_pet_series(DRO / "DRO_3_0" / "PT")


def test_cli_labels_table_input_notes_and_run_json_carry_the_cut_once(tmp_path):
    """A CT-like label map (finer grid, twice the PET's length in z) under the DRO's PET, through the command."""
    geo = _dro_series().geometry  # 20 x 256 x 256 of 4 mm at the origin
    arr = np.zeros((80, 64, 64), np.uint8)  # 2 mm in z from -40 mm: the PET covers z 0..78 of -40..118
    arr[10:70, 20:40, 20:40] = 1  # z -20..98: a third outside
    arr[30:40, 10:20, 10:20] = 2  # wholly inside
    sitk.WriteImage(_image(arr, (4.0, 4.0, 2.0), (0.0, 0.0, -40.0)), str(tmp_path / "ct_seg.nii.gz"))
    want = _oracle(sitk.ReadImage(str(tmp_path / "ct_seg.nii.gz")), geo)[1] / np.count_nonzero(arr == 1)
    regions = tmp_path / "regions.yaml"
    regions.write_text("regions:\n  organ: [label_1]\n  small: [label_2]\n")
    r = subprocess.run([sys.executable, "-m", "petfeat.cli", "extract", "--pet", str(DRO / "DRO_3_0" / "PT"),
                        "--labels", str(tmp_path / "ct_seg.nii.gz"), "--regions", str(regions), "--backend", "cpu",
                        "--no-peak", "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert len([ln for ln in r.stderr.splitlines() if "beyond the PET field of view" in ln]) == 1
    import pandas as pd

    labels = pd.read_parquet(tmp_path / "out" / "labels.parquet").set_index("label")
    assert labels.loc["label_1", "outside_fov_fraction"] == pytest.approx(want, abs=1e-12)
    assert 0.3 < want < 0.4
    assert labels.loc["label_2", "outside_fov_fraction"] == 0.0
    notes = json.loads(pd.read_parquet(tmp_path / "out" / "features.parquet").input_notes.iloc[0])
    assert notes[OUTSIDE_FOV_NOTE] == {"labels": {"label_1": round(want, 4)}}
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    cut = [w for w in run["warnings"] if "beyond the PET field of view" in w]
    assert len(cut) == 1 and cut[0].startswith("PetfeatWarning: <labels 1>: 1 of 2 labels")
    assert str(tmp_path) not in json.dumps(run["warnings"])


# --- warning noise -----------------------------------------------------------------------------------------------
def test_int16_ids_are_read_exactly_with_a_note_not_a_plain_warning(tmp_path):
    ids = np.zeros((4, 5, 6), np.int16)
    ids[1:3, 2:4, 1:5] = 1
    sitk.WriteImage(sitk.GetImageFromArray(ids), str(tmp_path / "m.nii.gz"))
    with pytest.warns(LabelNote, match="read as unsigned integers") as rec:
        img = read_label_image(tmp_path / "m.nii.gz")
    assert all(w.category is LabelNote for w in rec)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), ids)


def test_lesion_mask_without_labels_gives_one_line_for_the_organ_regions():
    """Built-in regions, a lesion mask, no label source: the 9 regions that need organ labels are said once."""
    from petfeat.extract import extract
    from petfeat.regions import BUILTIN_REGIONS

    pet = np.ones((8, 10, 12), np.float32)
    mask = np.zeros(pet.shape, bool)
    mask[2:4, 3:5, 3:6] = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = extract(pet, [], BUILTIN_REGIONS, lesions=mask, spacing=(4.0, 4.0, 4.0), backend="cpu", peaks=False)
    shown = [str(w.message) for w in caught if issubclass(w.category, PetfeatWarning)]
    empty = set(res.features.region[res.features.status == "no_matching_label"])
    assert len(empty) == 9
    assert len(shown) == 1 and "no label source" in shown[0]
    assert all(region in shown[0] for region in empty)
    assert res.warnings[0] == shown[0] and len(res.warnings) == 1 + len(empty)


def test_lesion_mask_with_labels_still_names_each_unmatched_region(tmp_path):
    """With a label source, a region that matches nothing is its own warning (a typo is worth a line)."""
    from petfeat.extract import extract
    from petfeat.regions import LabelLayer

    pet = np.ones((8, 10, 12), np.float32)
    organs = np.zeros(pet.shape, np.uint8)
    organs[:4] = 1
    mask = np.zeros(pet.shape, bool)
    mask[2:4, 3:5, 3:6] = True
    layer = LabelLayer(organs, {1: "liver"}, namespace="total")
    with pytest.warns(PetfeatWarning) as rec:
        extract(pet, [layer], {"liver": ["liver"], "livr": ["livr"], "spleen": ["spleen"], "tumour": ["lesion"]},
                lesions=mask, spacing=(4.0, 4.0, 4.0), backend="cpu", peaks=False)
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 2 and "'livr' matches no label" in msgs[0] and "'spleen' matches no label" in msgs[1]


def test_dicom_seg_segments_cut_by_the_field_of_view_get_fractions_and_one_warning(tmp_path):
    """A SEG on the DRO's PET slices, read onto a PET grid 40 mm further in z: half of one segment is outside."""
    import dataclasses

    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    series = _dro_series()
    sources = [pydicom.dcmread(f) for f in series.files]
    for ds in sources:  # what highdicom copies into a SEG: an accession number, a name with a caret
        ds.AccessionNumber, ds.PatientName = "", "Phantom^DRO"
    a = np.zeros(series.geometry.shape, bool)
    a[5:15, 100:110, 100:110] = True  # z 5..14: 5..9 fall before the shifted grid
    b = np.zeros(series.geometry.shape, bool)
    b[12:16, 50:60, 50:60] = True  # inside
    descs = [hd.seg.SegmentDescription(segment_number=i + 1, segment_label=lab,
                                       segmented_property_category=codes.SCT.Organ,
                                       segmented_property_type=codes.SCT.Organ,
                                       algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
             for i, lab in enumerate(("cut", "whole"))]
    seg = hd.seg.Segmentation(source_images=sources, pixel_array=np.stack([a, b], -1).astype(np.uint8),
                              segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descs,
                              series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(),
                              instance_number=1, manufacturer="petfeat-test", manufacturer_model_name="test",
                              software_versions="0", device_serial_number="0")
    seg.save_as(tmp_path / "seg.dcm")
    z = np.asarray(series.geometry.direction).reshape(3, 3)[:, 2] * series.geometry.spacing[0]
    shifted = dataclasses.replace(series.geometry, origin=tuple(np.asarray(series.geometry.origin) + 10 * z))
    with pytest.warns(PetfeatWarning, match=r"1 of 2 labels reach beyond.*cut 50%") as rec:
        layers = read_labels(tmp_path / "seg.dcm", shifted)
    assert len(_only(rec, "beyond the PET")) == 1
    notes = {n: v["outside_fov_fraction"] for la in layers for n, v in la.notes.items()}
    assert notes == {"cut": 0.5, "whole": 0.0}


def test_a_batch_whose_only_note_is_int16_ids_reports_no_warnings_but_keeps_the_note(tmp_path):
    """The SUV DRO with its own int16 mask as labels: nothing to warn of on the batch console, the note in run.json."""
    (tmp_path / "m.csv").write_text(f"study_id,pet_path,labels\nS000000000001,{DRO / 'DRO_0_0' / 'PT'},"
                                    f"{DRO / 'DRO_0_0' / 'mask' / 'DRO_mask.nii.gz'}\n")
    (tmp_path / "regions.yaml").write_text("regions:\n  roi: [label_1]\n")
    r = subprocess.run([sys.executable, "-m", "petfeat.cli", "extract", str(tmp_path / "m.csv"), "-o",
                        str(tmp_path / "out"), "--workers", "1", "--backend", "cpu", "--no-peak", "--regions",
                        str(tmp_path / "regions.yaml"), "--key-file", str(tmp_path / "k")], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr and "read as unsigned" not in r.stderr
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    (notes,) = run["warnings"].values()
    assert len(notes) == 1 and notes[0].startswith("LabelNote: ") and "read as unsigned integers (exactly)" in notes[0]
