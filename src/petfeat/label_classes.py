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
:func:`petfeat.extract.stage_codes` merges before it codes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from petfeat.kernels.label_codes import MAX_LAYERS, apply_keys, apply_lut, or_tables, table_layout
from petfeat.regions import (
    MARGIN_NAMESPACE,
    CodeMap,
    Label,
    LabelLayer,
    _code_dtype,
    _labels_of,
    _matching,
    build_codes,
    margin_label,
    normalise_spec,
    or_sparse,
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
    is; another gets a new array (one compiled lookup pass) in the smallest unsigned dtype of its classes.
    """
    return _merged(layers, class_tables(spec, layers))


def _merged(layers: Sequence[LabelLayer], tables: list) -> list[LabelLayer]:
    """:func:`merge_equivalent_labels` with the layers' :func:`class_tables` given."""
    out = []
    for layer, table in zip(layers, tables):
        if table is None:
            out.append(layer)
            continue
        lut, names = table
        if not names:
            continue
        arr = layer.array
        # a table entry for every id the layer can hold (unnamed ids above the named ones are background)
        top = (1 << (8 * arr.itemsize)) if arr.itemsize <= 2 else int(arr.max(initial=0)) + 1
        full = np.zeros(max(top, lut.size), np.uint32)
        full[:lut.size] = lut
        merged = np.empty(arr.shape, _code_dtype(max(names)))
        apply_keys([arr], None, full, merged)  # one compiled pass: merged = full[arr]
        out.append(LabelLayer(merged, names, layer.source, layer.native_volume_ml, layer.namespace))
    if not out:
        first = layers[0]
        out.append(LabelLayer(np.zeros(first.array.shape, np.uint8), {}, first.source, None, first.namespace))
    return out


#: Most key bits of the one-pass path of :func:`build_region_codes` (a table of 2**24 flags, 16 MB).
_KEY_BITS = 24
#: Most key bits of :func:`petfeat.regions.or_sparse` (keys of two bytes); wider keys go through or_tables.
_SPARSE_KEY_BITS = 16


def build_region_codes(spec, layers: Sequence[LabelLayer], shape: tuple[int, ...]) -> CodeMap:
    """The code volume of ``layers`` for the regions of ``spec``, equivalent labels merged (module docstring).

    Each layer's classes get bits of their own in a key (the class index, 0 for background), so
    one compiled pass reads every layer once, writes the key and marks the keys that occur, and one
    pass over the key writes the codes (:func:`petfeat.regions.or_sparse` for keys of up to
    :data:`_SPARSE_KEY_BITS` bits: groups of voxels where every layer holds 0 cost no table look-up;
    :func:`or_tables` and :func:`apply_lut` for wider keys). Where the classes need more
    than :data:`_KEY_BITS` bits, more than ``MAX_LAYERS`` layers are given or a layer holds ids of
    more than two bytes, the layers are merged (:func:`merge_equivalent_labels`) and coded by
    :func:`petfeat.regions.build_codes`.

    Returns
    -------
    CodeMap
        ``combos`` hold, per code, each layer's class id (the smallest id of the class), and the
        code map's layers name only those ids: region membership
        (:func:`petfeat.regions.region_codes`) is that of the unmerged layers.
    """
    tables = class_tables(spec, layers)
    classes, bits = [], []
    for layer, table in zip(layers, tables):
        reps = sorted(layer.names) if table is None else sorted(table[1])
        classes.append(reps)
        bits.append(int(len(reps)).bit_length())  # class indices 1..len(reps); 0 is background
    if (len(layers) > MAX_LAYERS or sum(bits) > _KEY_BITS or not layers
            or any(la.array.itemsize > 2 for la in layers)
            or any(la.array.shape != tuple(shape) for la in layers)):
        return build_codes(_merged(layers, tables), shape)
    starts, size = table_layout([la.array for la in layers])
    shifts = np.concatenate([[0], np.cumsum(bits)[:-1]]).astype(np.int64)
    table = np.zeros(size, np.uint32)
    for start, shift, reps, layer, tab in zip(starts, shifts, classes, layers, tables):
        index = {r: k + 1 for k, r in enumerate(reps)}
        ids = sorted(layer.names) if tab is None else np.flatnonzero(tab[0])
        for i in ids:
            rep = int(i) if tab is None else int(tab[0][i])
            table[start + int(i)] = index[rep] << int(shift)
    total = sum(bits)
    key = np.zeros(shape, np.uint8 if total <= 8 else np.uint16 if total <= 16 else np.uint32)
    present = np.zeros(1 << total, bool)
    if total <= _SPARSE_KEY_BITS:  # the keys, and which occur
        or_sparse([la.array for la in layers], table, starts, key, present, zeroed=True)
    else:
        or_tables([la.array for la in layers], table, starts, key, present)
    present[0] = True  # code 0: no label in any layer, whether or not it occurs
    keys = np.flatnonzero(present)
    lut = np.zeros(present.size, np.uint32)
    lut[keys] = np.arange(keys.size, dtype=np.uint32)
    codes = np.zeros(shape, _code_dtype(keys.size))  # pages of background only are never written
    if total <= _SPARSE_KEY_BITS:
        or_sparse([key], lut, [0], codes, zeroed=True)  # codes = lut[key] (lut[0] = 0: code 0 is key 0)
    else:
        apply_lut(key, lut, codes)
    combos = np.zeros((keys.size, len(layers)), np.int64)
    for j, (shift, reps, b) in enumerate(zip(shifts, classes, bits)):
        k = (keys >> shift) & ((1 << b) - 1)
        combos[:, j] = np.concatenate([[0], reps])[k]
    names = [layer.names if tab is None else tab[1] for layer, tab in zip(layers, tables)]
    coded = [LabelLayer(la.array, n, la.source, la.native_volume_ml, la.namespace) for la, n in zip(layers, names)]
    return CodeMap(codes, combos, coded)
