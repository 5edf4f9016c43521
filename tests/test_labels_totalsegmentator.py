"""TotalSegmentator class maps and task identification (petfeat.io.totalsegmentator)."""

from __future__ import annotations

import ast

import pytest

from petfeat.io.totalsegmentator import (
    TASK_CLASSES,
    TASK_LABELS,
    TASK_ORDER,
    UNKNOWN,
    identify_task,
    split_by_task,
)


@pytest.fixture(scope="module")
def upstream(reference_dir):
    """``class_map`` of TotalSegmentator's own map_to_binary.py, read as data (not executed)."""
    tree = ast.parse((reference_dir / "totalsegmentator" / "map_to_binary.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "class_map")
    return ast.literal_eval(node.value)


def test_class_maps_equal_totalsegmentators(upstream):
    for task, labels in upstream.items():
        assert TASK_LABELS[task] == labels, task
        assert TASK_CLASSES[task] == tuple(labels[i] for i in sorted(labels)), task
    assert TASK_LABELS["total_v3"] == {**upstream["total"], 26: "vertebrae_L6"}
    assert set(TASK_ORDER) == set(TASK_CLASSES) and TASK_ORDER[:2] == ("total", "total_mr")


def test_identify_task_real_folder(reference_dir):
    folder = reference_dir / "totalsegmentator" / "example_seg_fast"
    names = [f.name.removesuffix(".nii.gz") for f in folder.glob("*.nii.gz")]
    assert len(names) == 117
    assert identify_task(names) == "total"


@pytest.mark.parametrize("task", ["total", "total_mr", "vertebrae_mr", "head_glands_cavities", "total_v1",
                                  "appendicular_bones", "heartchambers_highres", "total_v3"])
def test_identify_task_complete_outputs(task):
    # vertebrae_mr's and heartchambers_highres' classes are subsets of larger tasks: a complete output still wins
    assert identify_task(reversed(TASK_CLASSES[task])) == task


def test_identify_task_subsets_and_misfits():
    assert identify_task(["liver"]) == "total"  # --roi_subset: first containing task in TASK_ORDER
    assert identify_task(["liver", "vertebrae_S1"]) == "total"
    assert identify_task(["liver", "intervertebral_discs"]) == "total_mr"  # only total_mr has both
    assert identify_task(["liver", "parotid_gland_left"]) is None  # two tasks merged
    assert identify_task(["my_lesion"]) is None
    assert identify_task([]) is None


def test_split_by_task_merged_folder():
    names = list(TASK_CLASSES["total"]) + list(TASK_CLASSES["head_glands_cavities"]) + ["my_lesion"]
    split = split_by_task(sorted(names))
    assert list(split) == ["total", "head_glands_cavities", UNKNOWN]
    assert sorted(split["total"]) == sorted(TASK_CLASSES["total"])
    assert sorted(split["head_glands_cavities"]) == sorted(TASK_CLASSES["head_glands_cavities"])
    assert split[UNKNOWN] == ["my_lesion"]
    # a name shared by two present tasks goes to the first task taken
    mr = split_by_task(list(TASK_CLASSES["total_mr"]) + ["parotid_gland_left"])
    assert sorted(mr["total_mr"]) == sorted(TASK_CLASSES["total_mr"]) and mr["head_glands_cavities"] == [
        "parotid_gland_left"]


# --- TotalSegmentator's real outputs of a real CT, read onto the CT's own grid ----------------------------------

@pytest.fixture(scope="module")
def ct_grid(reference_dir):
    import SimpleITK as sitk

    from petfeat.io.dicom import Geometry

    ct = sitk.ReadImage(str(reference_dir / "totalsegmentator" / "example_ct_sm.nii.gz"))
    return Geometry(tuple(ct.GetSize()[::-1]), tuple(ct.GetSpacing()[::-1]), tuple(ct.GetOrigin()),
                    tuple(ct.GetDirection()))


def _nibabel_counts(path) -> dict[int, int]:
    import nibabel as nib
    import numpy as np

    ids, counts = np.unique(np.asarray(nib.load(str(path)).dataobj), return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts, strict=True) if i}


def test_real_folder_every_class_counted_as_nibabel_counts_it(reference_dir, ct_grid):
    """Each of the 117 class files (77 of them empty) gives exactly nibabel's voxel count on the CT grid, in the
    ``total`` name space with the task's ids; empty classes are kept with count 0."""
    import numpy as np

    from petfeat.io.labels import read_labels

    folder = reference_dir / "totalsegmentator" / "example_seg_fast"
    layers = read_labels(folder, ct_grid)
    assert {la.namespace for la in layers} == {"total"}
    where = {n: (la, i) for la in layers for i, n in la.names.items()}
    assert sorted(where) == sorted(TASK_CLASSES["total"])
    empty = 0
    voxel_ml = float(np.prod(ct_grid.spacing)) / 1000
    for f in folder.glob("*.nii.gz"):
        name = f.name.removesuffix(".nii.gz")
        layer, i = where[name]
        want = _nibabel_counts(f).get(1, 0)
        assert TASK_LABELS["total"][i] == name
        assert int((layer.array == i).sum()) == want, name
        assert layer.native_volume_ml[name] == pytest.approx(want * voxel_ml)
        empty += want == 0
    assert empty == 77


def test_real_ml_file_every_label_counted_as_nibabel_counts_it(reference_dir, ct_grid):
    """The --ml file: its label table names all 117 classes; every id's count equals nibabel's, absent ids
    included (count 0, still named); the name space is the task the table identifies."""
    from petfeat.io.labels import read_labels

    path = reference_dir / "totalsegmentator" / "example_seg_ml.nii.gz"
    (layer,) = read_labels(path, ct_grid)
    assert layer.namespace == "total"
    assert layer.names == TASK_LABELS["total"]
    counts = _nibabel_counts(path)
    assert 0 < len(counts) < 117
    for i, name in layer.names.items():
        assert int((layer.array == i).sum()) == counts.get(i, 0), name
        assert (layer.native_volume_ml[name] == 0) == (i not in counts)

