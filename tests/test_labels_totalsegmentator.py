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
