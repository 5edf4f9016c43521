"""Labels that no region tells apart: one id per class of equivalent labels before the code volume is built.

Every feature of a region depends on its voxels only, and a voxel belongs to a region by which of
its labels match the region's ``include``, ``within`` and ``exclude`` patterns (and the margin
layer of ``exclude_margin_mm``; :func:`petfeat.regions.region_codes`). Two labels of one layer
that match exactly the same patterns of every region are therefore interchangeable, and a label
that matches none is as good as background. With the built-in regions, TotalSegmentator's 117
``total`` classes fall into about ten such classes (the bones, the visceral organs, the organs of
high uptake, the rest). Giving each class one id before coding makes the code volume's key space
small and the number of codes (label combinations that occur) a fraction of what the raw labels
give, which keeps the GPU reduction within its shared-memory table
(:data:`petfeat.kernels.config.MAX_GPU_CODES`) on whole-body studies; region features are
unchanged. The label-volume table and each lesion's site are computed from the original layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from petfeat.regions import (
    MARGIN_NAMESPACE,
    Label,
    LabelLayer,
    _labels_of,
    _matching,
    margin_label,
    normalise_spec,
)


def label_signatures(spec, layers: Sequence[LabelLayer]) -> dict[Label, tuple[bool, ...]]:
    """For every ``(namespace, name)`` of ``layers``: which pattern set of which region it matches.

    The tuple holds, region by region of ``spec``, membership of the ``include`` set, of each
    ``within`` group and of the ``exclude`` set (the region's margin label included). Labels with
    equal tuples belong to the same regions in every combination; an all-False tuple belongs to none.
    """
    spec = normalise_spec(spec)
    namespaces = {layer.namespace for layer in layers}
    labels = _labels_of(layers)
    present = set(labels)
    sets: list[set[Label]] = []
    for rule in spec.values():
        exc = _matching(rule["exclude"], labels, namespaces)
        if rule["exclude_margin_mm"] > 0:
            margin = (MARGIN_NAMESPACE, margin_label(rule["exclude"], rule["exclude_margin_mm"]))
            if margin in present:
                exc = exc | {margin}
        sets.append(_matching(rule["include"], labels, namespaces))
        sets.extend(_matching(g, labels, namespaces) for g in rule["within"])
        sets.append(exc)
    return {lab: tuple(lab in s for s in sets) for lab in labels}


def class_tables(spec, layers: Sequence[LabelLayer]) -> list[tuple[np.ndarray, dict[int, str]] | None]:
    """Per layer: a lookup table id -> class id and the names of the class ids, or None when nothing merges.

    A class's id and name are those of its smallest label id; labels no region refers to, and ids
    without a name, map to 0. The table covers ``0..max(names)``; larger ids (unnamed) map to 0.
    """
    sig = label_signatures(spec, layers)
    out: list[tuple[np.ndarray, dict[int, str]] | None] = []
    for layer in layers:
        first: dict[tuple[bool, ...], int] = {}
        top = max(layer.names, default=0)
        lut = np.zeros(top + 1, np.int64)
        names: dict[int, str] = {}
        for i in sorted(layer.names):
            s = sig[(layer.namespace, layer.names[i])]
            if not any(s):
                continue
            rep = first.setdefault(s, i)
            lut[i] = rep
            if rep == i:
                names[i] = layer.names[i]
        identity = len(names) == len(layer.names)
        out.append(None if identity else (lut, names))
    return out


def merge_equivalent_labels(spec, layers: Sequence[LabelLayer]) -> list[LabelLayer]:
    """``layers`` with each class of equivalent labels under one id; layers left without labels dropped.

    Region membership of every voxel under ``spec`` is unchanged (tested against the unmerged
    layers). At least one layer is returned. A layer whose labels all stay distinct is returned as it
    is; another gets a new array (one lookup pass) in the smallest unsigned dtype of its classes.
    """
    out = []
    for layer, table in zip(layers, class_tables(spec, layers)):
        if table is None:
            out.append(layer)
            continue
        lut, names = table
        if not names:
            continue
        arr = layer.array
        if int(arr.max(initial=0)) >= lut.size:  # unnamed ids above the named ones: background
            lut = np.concatenate([lut, np.zeros(int(arr.max()) + 1 - lut.size, lut.dtype)])
        small = lut.astype(np.uint8 if max(names) <= 0xFF else np.uint16 if max(names) <= 0xFFFF else np.uint32)
        out.append(LabelLayer(np.take(small, arr), names, layer.source, layer.native_volume_ml, layer.namespace))
    if not out:
        first = layers[0]
        out.append(LabelLayer(np.zeros(first.array.shape, np.uint8), {}, first.source, None, first.namespace))
    return out
