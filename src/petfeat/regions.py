"""Named regions over label layers, and the code volume that serves all of them in one pass.

A *label layer* is an unsigned integer volume on the PET grid with a map from label id to
name (an organ map, a lesion mask...) and a *name space* (the source it came from: a
TotalSegmentator task such as ``total``, a ``--labels NAME=FILE`` prefix, ``lesions``). Each
voxel's *code* identifies the combination of labels that cover it across all layers, so one
reduction pass serves overlapping regions: "bone" is every code whose organ label is a bone,
"healthy_bone" the same minus codes with a lesion.

A region spec maps a region name to label-name patterns (``fnmatch`` globs)::

    {"bone": {"include": ["vertebrae_*", "rib_*", "sacrum"], "exclude": ["costal_cartilages"]},
     "tumor_bone": {"include": ["lesion*"], "within": [["vertebrae_*", "rib_*", "sacrum"]]},
     "healthy_bone": {"include": ["vertebrae_*", "rib_*"], "exclude": ["lesion*"], "exclude_margin_mm": 10},
     "parotids": ["head_glands_cavities:parotid_gland_*"],
     "liver": ["liver"]}

Matching is voxel-wise, on the labels that cover a voxel. A code belongs to a region when

* one of its labels matches an ``include`` pattern,
* for EVERY group of ``within`` (alias ``require``; a list of groups, each a list of patterns), one of
  its labels matches a pattern of that group (intersection: lesion AND bone),
* none of its labels matches an ``exclude`` pattern, and
* with ``exclude_margin_mm`` > 0, the voxel lies farther than that (physical distance between voxel
  centres) from every voxel whose labels match an ``exclude`` pattern.

A pattern ``NS:GLOB`` whose ``NS`` is the name space of a layer matches only that layer's labels;
any other pattern is a bare glob and matches labels of every name space. Labels of the internal
name space ``margin`` (the exclusion margins, see :func:`margin_layers`) are matched only by the
margin rule (or an explicit ``margin:GLOB``), never by a bare glob.

A lesion voxel counts for an organ only where the organ's segmentation covers it: a bone lesion
that grows out of the segmented bone counts, beyond the bone's outline, as lymph node or soft tissue.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from petfeat.errors import LabelError
from petfeat.kernels.borrowed import borrowed
from petfeat.kernels.label_codes import (
    MAX_LAYERS,
    apply_keys,
    fill_keys,
    mark_keys,
    pack_layers,
    table_layout,
)
from petfeat.kernels.threads import chunk_count, for_chunks
from petfeat.slabs import z_slabs

#: Most label combinations one lookup table of the code builder holds; wider layer sets are coded in groups,
#: and sorted only when no grouping fits.
_LUT_LIMIT = 1 << 24
#: Most label combinations one int64 mixed-radix key holds; more layers are coded in groups.
_KEY_LIMIT = 1 << 62


@dataclass
class LabelLayer:
    """An unsigned integer label volume ``(Z, Y, X)`` with a name for each label id."""

    array: np.ndarray
    names: dict[int, str]
    source: str = "<array>"
    #: Volume (mL) of each label name on the grid it was drawn on (None when it was drawn on the PET grid).
    native_volume_ml: dict[str, float] | None = None
    #: Name space of the layer's labels: the source it came from (a TotalSegmentator task such as ``total``,
    #: a ``--labels NAME=FILE`` prefix, ``lesions``). A region pattern ``NAMESPACE:GLOB`` matches only this
    #: layer's labels; a bare ``GLOB`` matches labels of every name space.
    namespace: str = ""

    def __post_init__(self):
        a = np.asarray(self.array)
        if a.dtype == bool:
            a = a.view(np.uint8)
        if not np.issubdtype(a.dtype, np.unsignedinteger):
            kind = "floating-point" if np.issubdtype(a.dtype, np.floating) else "signed"
            raise LabelError(f"{self.source}: labels have {kind} dtype {a.dtype}; label maps must hold "
                             "unsigned integers. Cast a clean map with labels.astype(np.uint16), or fix the "
                             "writer that produced it.")
        self.array = a
        self.names = {int(k): str(v) for k, v in self.names.items() if int(k) != 0}


@dataclass
class CodeMap:
    """Codes of a set of layers: ``codes[z, y, x]`` indexes ``combos[code]`` (label id per layer)."""

    codes: np.ndarray
    combos: np.ndarray
    layers: list[LabelLayer]

    @property
    def n_codes(self) -> int:
        """Number of codes, code 0 (no label in any layer) included."""
        return int(self.combos.shape[0])

    def code_names(self, code: int) -> list[str]:
        """Names of the labels that make up ``code``."""
        return [name for _, name in self.code_labels(code)]

    def code_labels(self, code: int) -> list[tuple[str, str]]:
        """``(namespace, name)`` of each label that makes up ``code``."""
        out = []
        for layer, lab in zip(self.layers, self.combos[code]):
            if lab:
                out.append((layer.namespace, layer.names.get(int(lab), f"label_{int(lab)}")))
        return out


def _code_dtype(n: int) -> np.dtype:
    return np.dtype(np.uint8 if n <= 0xFF else np.uint16 if n <= 0xFFFF else np.uint32)


def _radix(sizes: Sequence[int]) -> list[int]:
    """Multiplier of each layer's id in the mixed-radix key (the first layer's ids are the least significant)."""
    mults = [1]
    for n in sizes[:-1]:
        mults.append(mults[-1] * int(n))
    return mults


def _combined_key(layers: Sequence[LabelLayer], sizes: list[int], sl: slice) -> np.ndarray:
    """Mixed-radix key of the layers' ids over one Z slab (the ids themselves for one layer).

    One compiled pass reads each layer's slab once and writes the int64 key (at most
    :data:`~petfeat.kernels.label_codes.MAX_LAYERS` layers).
    """
    if len(layers) == 1:
        return layers[0].array[sl]
    arrays = [layer.array[sl] for layer in layers]
    key = np.empty(arrays[0].shape, np.int64)
    fill_keys(arrays, _radix(sizes), key)
    return key


def build_codes(layers: Sequence[LabelLayer], shape: tuple[int, ...]) -> CodeMap:
    """Combine label layers into one code volume.

    Each voxel's code stands for the combination of its ids across the layers (``combos[code]``,
    one id per layer; code 0 is no label in any layer). Up to
    :data:`~petfeat.kernels.label_codes.MAX_LAYERS` layers whose id ranges multiply to at most
    :data:`_LUT_LIMIT` combinations are coded together by two compiled passes that read each layer
    once (which keys occur, then each voxel's code through a lookup table); more layers, or wider
    ranges, are coded in consecutive groups whose codes are then coded in turn; key ranges that no
    grouping brings under a table are sorted in Z slabs.

    Parameters
    ----------
    layers : sequence of LabelLayer
        Label volumes of shape ``shape``.
    shape : tuple of int
        The PET grid ``(Z, Y, X)``.

    Returns
    -------
    CodeMap
        The code volume (uint8, uint16 or uint32, the narrowest that holds every code) and the
        ids of each code.
    """
    if not layers:
        raise LabelError("no label layers were given; pass at least one label map.")
    for layer in layers:
        if layer.array.shape != tuple(shape):
            raise LabelError(f"{layer.source}: label map shape {layer.array.shape} differs from the PET grid "
                             f"{tuple(shape)} (Z, Y, X). Resample it onto the PET grid first "
                             "(petfeat.io.labels.resample_to_grid).")
    return _code_layers(list(layers), [int(layer.array.max()) + 1 for layer in layers], shape)


def _groups(sizes: Sequence[int], limit: int) -> list[list[int]]:
    """Consecutive layers (indices), at most MAX_LAYERS each, whose id ranges multiply to at most ``limit``."""
    groups, size_of_group = [[]], 1
    for j, size in enumerate(sizes):
        if groups[-1] and (size_of_group * size > limit or len(groups[-1]) == MAX_LAYERS):
            groups.append([])
            size_of_group = 1
        groups[-1].append(j)
        size_of_group *= size
    return groups


def _code_layers(layers: list[LabelLayer], sizes: list[int], shape: tuple[int, ...]) -> CodeMap:
    """:func:`build_codes` of layers whose ids are below ``sizes``."""
    for limit in (_LUT_LIMIT, _KEY_LIMIT):  # groups that fit a lookup table; else groups whose key fits an int64
        groups = _groups(sizes, limit)
        if len(groups) == 1:
            return _code_group(layers, sizes, shape)
        if len(groups) < len(layers):
            break
    # code each group, then the group codes (e.g. TotalSegmentator's packed class layers, or a SEG of many segments)
    parts = [_code_layers([layers[j] for j in g], [sizes[j] for j in g], shape) for g in groups]
    top = _code_layers([LabelLayer(part.codes, {}, "label group") for part in parts],
                       [part.n_codes for part in parts], shape)
    combos = np.concatenate([part.combos[top.combos[:, j]] for j, part in enumerate(parts)], axis=1)
    return CodeMap(top.codes, combos, layers)


def _code_group(layers: list[LabelLayer], sizes: list[int], shape: tuple[int, ...]) -> CodeMap:
    """Codes of at most MAX_LAYERS layers whose mixed-radix key fits an int64, numbered in key order."""
    total = int(np.prod(sizes, dtype=np.float64))
    arrays, mults = [layer.array for layer in layers], _radix(sizes)
    if total <= _LUT_LIMIT:  # which keys occur, then a lookup table key -> code (compiled passes on threads)
        present = np.zeros(total, bool)
        mark_keys(arrays, mults, present)
        present[0] = False
        keys = np.concatenate([[0], np.flatnonzero(present)])
        lut = np.zeros(total, np.uint32)  # the table type of the compiled pass
        lut[keys] = np.arange(len(keys))
        codes = np.empty(shape, _code_dtype(len(keys)))
        apply_keys(arrays, mults, lut, codes)
    else:  # sorted keys, in Z slabs (the combined key is int64: a whole-volume key would be 8 bytes per voxel)
        keys = np.unique(np.concatenate([np.unique(_combined_key(layers, sizes, sl)) for sl in z_slabs(shape)]))
        if keys[0] != 0:
            keys = np.concatenate([[0], keys])
        codes = np.empty(shape, _code_dtype(len(keys)))
        for sl in z_slabs(shape):
            codes[sl] = np.searchsorted(keys, _combined_key(layers, sizes, sl))
    combos = np.zeros((len(keys), len(layers)), np.int64)
    rem = keys.astype(np.int64)
    for j, size in enumerate(sizes):
        combos[:, j] = rem % size
        rem //= size
    return CodeMap(codes, combos, layers)


#: Keys a region mapping may hold (``require`` is an alias of ``within``).
SPEC_KEYS = ("include", "within", "require", "exclude", "exclude_margin_mm")
#: Name space of the exclusion-margin layers: matched by the margin rule or an explicit ``margin:GLOB`` only.
MARGIN_NAMESPACE = "margin"
#: Relative slack on the squared margin: a voxel centre at the margin distance (to float32 rounding) is inside.
_MARGIN_SLACK = 1e-6


def normalise_spec(spec) -> dict[str, dict]:
    """Normalise a region spec to ``{name: {"include", "within", "exclude", "exclude_margin_mm"}}``.

    Parameters
    ----------
    spec : mapping
        Region name -> a pattern, a list of patterns (include), or a mapping with ``include`` and
        optionally ``within`` (or its alias ``require``: a list of groups, each a list of patterns),
        ``exclude`` (patterns) and ``exclude_margin_mm`` (a number >= 0; needs ``exclude``).

    Returns
    -------
    dict
        Every region with all four keys (``within`` a list of lists, ``exclude_margin_mm`` a float).

    Raises
    ------
    LabelError
        A value of another type, an unknown key (with the closest allowed key), an empty include or
        within group, a flat list under ``within``, a negative or non-numeric margin, a margin
        without ``exclude``.
    """
    import difflib
    import math

    if not isinstance(spec, Mapping):
        raise LabelError(f"regions must be a mapping of region name to label names, got {type(spec).__name__}.")
    out = {}
    for name, value in spec.items():
        if isinstance(value, str):
            value = {"include": [value]}
        elif isinstance(value, (list, tuple)):
            value = {"include": list(value)}
        if not isinstance(value, Mapping) or "include" not in value:
            raise LabelError(f"region {name!r}: give a list of label names or a mapping with 'include' "
                             f"(and optionally 'within', 'exclude', 'exclude_margin_mm'), got {value!r}.")
        unknown = [k for k in value if k not in SPEC_KEYS]
        if unknown:
            hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(str(k), SPEC_KEYS, 1))
                     else repr(k) for k in unknown]
            raise LabelError(f"region {name!r}: unknown keys {', '.join(hints)}; allowed: {', '.join(SPEC_KEYS)}.")
        if "within" in value and "require" in value:
            raise LabelError(f"region {name!r}: give 'within' or its alias 'require', not both.")
        inc = [str(v) for v in _as_list(value["include"])]
        if not inc:
            raise LabelError(f"region {name!r}: 'include' is empty; name at least one label or glob.")
        within = _within_groups(name, value.get("within", value.get("require", [])))
        exc = [str(v) for v in _as_list(value.get("exclude", []))]
        margin = value.get("exclude_margin_mm", 0.0)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) \
                or margin < 0:
            raise LabelError(f"region {name!r}: exclude_margin_mm is {margin!r}; give a distance in mm >= 0 "
                             "(e.g. 10).")
        if margin > 0 and not exc:
            raise LabelError(f"region {name!r}: exclude_margin_mm needs 'exclude' patterns (the margin is kept "
                             "around the excluded labels, e.g. exclude: ['lesion*']).")
        out[str(name)] = {"include": inc, "within": within, "exclude": exc, "exclude_margin_mm": float(margin)}
    return out


def _within_groups(name, value) -> list[list[str]]:
    if isinstance(value, str):
        return [[value]]
    groups = list(value)
    if any(isinstance(g, str) for g in groups):
        raise LabelError(f"region {name!r}: 'within' is a list of groups, each a list of patterns: "
                         f"[[vertebrae_*, rib_*]] is 'in any of these', [[liver], [lesion*]] 'in all of these'; "
                         f"got the flat list {groups!r}.")
    out = []
    for g in groups:
        g = [str(x) for x in _as_list(g)]
        if not g:
            raise LabelError(f"region {name!r}: a 'within' group is empty; name at least one label or glob in it.")
        out.append(g)
    return out


def _as_list(v):
    return [v] if isinstance(v, str) else list(v)


def _escape(name: str) -> str:
    """A glob that matches ``name`` literally."""
    return "".join(f"[{ch}]" if ch in "*?[" else ch for ch in name)


Label = tuple[str, str]  # (namespace, name)


def _labels_of(layers: Sequence[LabelLayer]) -> list[Label]:
    """Every ``(namespace, name)`` of the layers, once, in layer order."""
    seen: dict[Label, None] = {}
    for layer in layers:
        for n in layer.names.values():
            seen.setdefault((layer.namespace, n), None)
    return list(seen)


def _matching(patterns: Sequence[str], labels: Sequence[Label], namespaces: set[str]) -> set[Label]:
    """The labels that match any of ``patterns`` (``NS:GLOB`` only in name space NS; bare globs not in margins)."""
    return set(_matching_labels(tuple(patterns), tuple(labels), frozenset(namespaces)))


@functools.lru_cache(maxsize=256)
def _matching_labels(patterns: tuple[str, ...], labels: tuple[Label, ...], namespaces: frozenset[str]) -> frozenset:
    """:func:`_matching`, remembered: one study matches the same patterns against the same labels many times."""
    out = set()
    bare = []
    for p in patterns:
        ns, sep, glob = p.partition(":")
        if sep and ns in namespaces:
            match = _glob_regex((glob,))
            out.update(lab for lab in labels if lab[0] == ns and match(lab[1]))
        else:
            bare.append(p)
    if bare:  # one compiled expression for all bare globs (fnmatchcase's rule, as a regex alternation)
        match = _glob_regex(tuple(bare))
        out.update(lab for lab in labels if lab[0] != MARGIN_NAMESPACE and match(lab[1]))
    return frozenset(out)


@functools.lru_cache(maxsize=1024)
def _glob_regex(globs: tuple[str, ...]):
    """``match(name)`` true when ``name`` matches one of ``globs`` (as :func:`fnmatch.fnmatchcase`)."""
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs)).match


def margin_label(exclude: Sequence[str], margin_mm: float) -> str:
    """Name of the margin layer's label for the ``exclude`` patterns and the margin (namespace ``margin``)."""
    return f"{'+'.join(exclude)}_margin_{margin_mm:g}mm"


def region_codes(spec, codemap: CodeMap) -> dict[str, np.ndarray]:
    """Codes of each region of ``spec`` (see the module docstring for the matching rule).

    A region with ``exclude_margin_mm`` needs the margin layer of :func:`margin_layers` among the
    code map's layers whenever some voxel carries an excluded label; without one it is refused.
    """
    spec = normalise_spec(spec)
    namespaces = {layer.namespace for layer in codemap.layers}
    labels = _labels_of(codemap.layers)
    per_code = [set(codemap.code_labels(c)) for c in range(codemap.n_codes)]
    out = {}
    for region, rule in spec.items():
        inc = _matching(rule["include"], labels, namespaces)
        groups = [_matching(g, labels, namespaces) for g in rule["within"]]
        exc = _matching(rule["exclude"], labels, namespaces)
        if rule["exclude_margin_mm"] > 0:
            margin = (MARGIN_NAMESPACE, margin_label(rule["exclude"], rule["exclude_margin_mm"]))
            if margin in labels:
                exc = exc | {margin}
            elif any(names & exc for names in per_code[1:]):
                raise LabelError(f"region {region!r}: exclude_margin_mm is {rule['exclude_margin_mm']:g} but the "
                                 "label layers hold no margin layer for it; add petfeat.regions.margin_layers(spec, "
                                 "layers, spacing) to the layers before build_codes.")
        members = [c for c in range(1, codemap.n_codes)
                   if per_code[c] & inc and all(per_code[c] & g for g in groups) and not per_code[c] & exc]
        out[region] = np.asarray(members, dtype=np.int64)
    return out


def unmatched_regions(spec, layers: Sequence[LabelLayer]) -> dict[str, str]:
    """Regions that no label can fill, each with a message naming what is missing and what exists.

    A region is unmatched when no label name of ``layers`` (voxels or not) matches its ``include``
    patterns, or none matches one of its ``within`` groups. The message names those patterns, the
    closest existing names ("did you mean"), the TotalSegmentator task that has such classes when no
    layer of that task is present, and the label names that exist. Messages name no file or patient.
    """
    import difflib

    spec = normalise_spec(spec)
    namespaces = {layer.namespace for layer in layers}
    labels = [lab for lab in _labels_of(layers) if lab[0] != MARGIN_NAMESPACE]
    several = len({ns for ns, _ in labels}) > 1
    shown = [f"{ns}:{n}" if several and ns else n for ns, n in labels]
    out = {}
    for region, rule in spec.items():
        missing = [p for p in rule["include"]] if not _matching(rule["include"], labels, namespaces) else []
        for g in rule["within"]:
            if not _matching(g, labels, namespaces):
                missing.extend(g)
        if not missing:
            continue
        msg = f"region {region!r} matches no label: no label name matches {', '.join(map(repr, missing))}"
        close = []
        for p in missing:
            close += [c for c in difflib.get_close_matches(_stem(p, namespaces), [n for _, n in labels], 3, 0.6)
                      if c not in close]
        msg += f"; did you mean {', '.join(map(repr, close[:5]))}?" if close else "."
        absent = sorted({p.partition(":")[0] for p in missing if ":" in p and p.partition(":")[0] not in namespaces})
        if absent:
            msg += (f" No label source has the name space {', '.join(map(repr, absent))} (name spaces: "
                    f"{', '.join(repr(ns) for ns in sorted(namespaces - {MARGIN_NAMESPACE}))}).")
        present = _tasks_with(missing, set(), only=namespaces)
        tasks = [] if present else _tasks_with(missing, namespaces)
        if present:
            msg += (f" TotalSegmentator's {present[0]} task segments such classes, but the {present[0]!r} labels "
                    "here lack them: a partial output (--roi_subset) or files removed from its folder?")
        if tasks:
            msg += (f" Such classes come from TotalSegmentator's {' or '.join(tasks)} task "
                    f"(TotalSegmentator -ta {tasks[0]}); add its output to the labels.")
        if labels:
            more = f" and {len(shown) - 30} more" if len(shown) > 30 else ""
            msg += f" Labels that exist: {', '.join(shown[:30])}{more}."
        else:
            msg += " There are no labels."
        out[region] = msg
    return out


def _stem(pattern: str, namespaces: set[str]) -> str:
    """A pattern's letters to compare with label names: its name-space prefix and ``*``/``?`` removed."""
    stem = pattern.split(":", 1)[1] if pattern.partition(":")[0] in namespaces else pattern
    return stem.replace("*", "").replace("?", "")


def exclude_typos(spec, layers: Sequence[LabelLayer]) -> dict[str, str]:
    """Regions with an ``exclude`` pattern that matches no label but looks like a misspelt label name.

    An exclude pattern that matches nothing is normal (``lesion*`` without lesions, an organ the
    segmentation lacks); one whose letters are within a typo of an existing label name
    (``lesoin*`` beside ``lesion``) silently leaves those voxels in the region, so each gets a
    message naming the pattern and the label it resembles.
    """
    import difflib

    spec = normalise_spec(spec)
    namespaces = {layer.namespace for layer in layers}
    labels = [lab for lab in _labels_of(layers) if lab[0] != MARGIN_NAMESPACE]
    names = sorted({n for _, n in labels})
    out = {}
    for region, rule in spec.items():
        found = []
        for pat in rule["exclude"]:
            if _matching([pat], labels, namespaces):
                continue
            stem = _stem(pat, namespaces)
            close = difflib.get_close_matches(stem, names, 3, 0.75) if stem else []
            if close:
                found.append(f"{pat!r} (did you mean {', '.join(map(repr, close))}?)")
        if found:
            out[region] = (f"region {region!r}: exclude pattern {', '.join(found)} matches no label, so those voxels "
                           "stay in the region; fix the spelling.")
    return out


def _tasks_with(patterns: Sequence[str], namespaces: set[str], only: set[str] | None = None) -> list[str]:
    """TotalSegmentator tasks (not among ``namespaces``; among ``only`` if given) with a class a pattern matches."""
    from petfeat.io.totalsegmentator import TASK_CLASSES, TASK_ORDER

    out = []
    for task in TASK_ORDER:
        if task in namespaces or task not in TASK_CLASSES or (only is not None and task not in only):
            continue
        for p in patterns:
            ns, sep, glob = p.partition(":")
            glob = glob if sep and (ns == task or ns in namespaces) else p
            if any(fnmatch.fnmatchcase(c, glob) for c in TASK_CLASSES[task]):
                out.append(task)
                break
    return out[:2]


def regions_naming_known_labels(spec, layers: Sequence[LabelLayer]) -> set[str]:
    """Regions whose include patterns and every within group match a label name of the layers (voxels or not)."""
    spec = normalise_spec(spec)
    unmatched = unmatched_regions(spec, layers)
    return {r for r in spec if r not in unmatched}


def default_spec(layers: Sequence[LabelLayer]) -> dict[str, dict]:
    """One region per label of every layer (margins aside).

    A region is named after its label, or ``NS:name`` when the name occurs in more than one name space.
    """
    labels = [lab for lab in _labels_of(layers) if lab[0] != MARGIN_NAMESPACE]
    spaces: dict[str, set[str]] = {}
    for ns, n in labels:
        spaces.setdefault(n, set()).add(ns)
    out = {}
    for ns, n in labels:
        if len(spaces[n]) > 1:
            out[f"{ns}:{n}"] = {"include": [f"{ns}:{_escape(n)}"], "within": [], "exclude": [],
                                "exclude_margin_mm": 0.0}
        else:
            out[n] = {"include": [_escape(n)], "within": [], "exclude": [], "exclude_margin_mm": 0.0}
    return out


def margin_layers(spec, layers: Sequence[LabelLayer], spacing_zyx: Sequence[float]) -> list[LabelLayer]:
    """The exclusion-margin layers the regions of ``spec`` need (name space ``margin``).

    For every distinct ``(exclude, exclude_margin_mm)`` of the spec with a margin, one uint8 layer
    marks the voxels whose centre lies within the margin (physical distance, using the voxel
    spacing; a voxel at exactly the margin is inside) of a voxel that carries an excluded label,
    those voxels included. One compiled pass (:func:`or_sparse`) marks the excluded voxels; the
    distance is exact (:func:`dilate_mm`'s methods), and the margin becomes the layer. No layer is
    made when no voxel carries an excluded label (then nothing needs a margin).
    """
    spec = normalise_spec(spec)
    real = [layer for layer in layers if layer.namespace != MARGIN_NAMESPACE]
    if not real:
        return []
    shape = real[0].array.shape
    namespaces = {layer.namespace for layer in real}
    labels = _labels_of(real)
    sp = np.asarray(spacing_zyx, np.float64)
    out, done = [], set()
    for rule in spec.values():
        mm = rule["exclude_margin_mm"]
        key = (tuple(rule["exclude"]), mm)
        if mm <= 0 or key in done:
            continue
        done.add(key)
        matched = _matching(rule["exclude"], labels, namespaces)
        chosen = []  # (array, ids) per layer with an excluded label
        for layer in real:
            ids = [i for i, n in layer.names.items() if (layer.namespace, n) in matched]
            if ids and layer.array.itemsize <= 2:
                chosen.append((layer.array, ids))
            elif ids:  # ids of four or eight bytes: no table per id
                chosen.append((np.isin(layer.array, ids).view(np.uint8), [1]))
        if not chosen:
            continue
        excluded = np.zeros(shape, np.uint8)
        marked = np.zeros(2, bool)  # marked[1]: some voxel carries an excluded label
        for k in range(0, len(chosen), MAX_LAYERS - 1):  # the mark so far is the first layer of each later pass
            batch = ([(excluded, [1])] if k else []) + chosen[k:k + MAX_LAYERS - 1]
            starts, size = table_layout([a for a, _ in batch])
            tab = np.zeros(size, np.uint32)
            for s, (a, ids) in zip(starts, batch):
                i = np.asarray(ids, np.int64)
                tab[s + i[(i > 0) & (i < 1 << (8 * a.itemsize))]] = 1
            or_sparse([a for a, _ in batch], tab, starts, excluded, marked, zeroed=True)
        if not marked[1]:
            continue
        margin = np.zeros(shape, np.uint8)
        _dilate_into(excluded.view(bool), sp, mm, margin.view(bool))
        out.append(LabelLayer(margin, {1: margin_label(rule["exclude"], mm)}, f"margin {mm:g} mm",
                              namespace=MARGIN_NAMESPACE))
    return out


def dilate_mm(mask: np.ndarray, spacing_zyx: Sequence[float], margin_mm: float) -> np.ndarray:
    """Voxels whose centre lies within ``margin_mm`` of the centre of a ``mask`` voxel (``mask`` included).

    Exact Euclidean distance in physical units, by one of two equivalent methods: the ball of the
    margin as one x-interval ``-h..h`` per ``(dz, dy)`` offset, each row of the mask dilated along x
    as a bit set and the output row the OR of its neighbour rows' dilations (:func:`_dilate_rows`),
    when that costs at most :data:`_STAMP_OPS_PER_VOXEL` word operations per voxel; else SimpleITK's
    ``SignedMaurerDistanceMap`` with the voxel spacing, squared distances compared with ``margin_mm**2``.
    """
    mask = np.ascontiguousarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"dilate_mm takes a (Z, Y, X) mask, not {mask.ndim} dimensions")
    out = np.zeros(mask.shape, bool)
    if mask.any():
        _dilate_into(mask, np.asarray(spacing_zyx, np.float64), margin_mm, out)
    return out


#: The row method of :func:`dilate_mm` is chosen while it costs at most this many 64-bit word operations per voxel.
_STAMP_OPS_PER_VOXEL = 16


def _ball_rows(spacing_zyx: np.ndarray, margin_mm: float) -> np.ndarray:
    """The ball of the margin as rows ``(dz, dy, h)``: its voxels at ``(dz, dy)`` are ``dx`` in ``-h..h``."""
    return _ball_rows_of(tuple(float(s) for s in spacing_zyx), float(margin_mm))


@functools.lru_cache(maxsize=64)
def _ball_rows_of(spacing_zyx: tuple[float, ...], margin_mm: float) -> np.ndarray:
    """:func:`_ball_rows`, remembered per spacing and margin (read-only)."""
    from petfeat.features import sphere_offsets

    offs = sphere_offsets(np.asarray(spacing_zyx), margin_mm * np.sqrt(1 + _MARGIN_SLACK))
    pairs, first = np.unique(offs[:, :2], axis=0, return_index=True)  # offsets are sorted by (dz, dy, dx)
    rows = np.column_stack([pairs, -offs[first, 2]]).astype(np.int64)  # the first dx of a row is -h
    rows.flags.writeable = False
    return rows


def _dilate_into(mask: np.ndarray, sp: np.ndarray, margin_mm: float, out: np.ndarray) -> None:
    """``out`` (bool, zero, C-contiguous) = :func:`dilate_mm` of ``mask`` (bool, C-contiguous, not empty).

    The distance map method works in the mask's bounding box grown by the margin.
    """
    seg = _ball_rows(sp, margin_mm)
    nz, ny, nx = mask.shape
    nw = (nx + 63) // 64
    n_h = int(seg[:, 2].max()) + 1
    if nz * ny * nw * (len(seg) + 8 * n_h) <= _STAMP_OPS_PER_VOXEL * mask.size:
        _dilate_rows(mask, seg, n_h, out)
        return
    import SimpleITK as sitk

    box = []
    for axis in range(3):
        at = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(at[0]), int(at[-1]) + 1))
    reach = np.floor(margin_mm / sp + 1e-9).astype(int)
    grown = tuple(slice(max(0, s.start - r), min(n, s.stop + r)) for s, r, n in zip(box, reach, mask.shape))
    img = sitk.GetImageFromArray(np.ascontiguousarray(mask[grown]).view(np.uint8))
    img.SetSpacing(tuple(float(s) for s in sp[::-1]))
    d2 = sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=True, useImageSpacing=True)
    out[grown] = sitk.GetArrayViewFromImage(d2) <= margin_mm * margin_mm * (1 + _MARGIN_SLACK)


def _dilate_rows(mask: np.ndarray, seg: np.ndarray, n_h: int, out: np.ndarray) -> None:
    """``out`` = the mask dilated by the ball whose rows ``(dz, dy, h)`` are ``seg`` (:func:`_ball_rows`).

    Two compiled passes over chunks of slices: each non-empty mask row as a bit set (64-bit words)
    and its x-dilations by ``1 .. n_h - 1``; then each output slice ``z`` as the OR, over the ball's
    rows, of slice ``z + dz``'s dilations by ``h`` shifted by ``dy`` rows (one contiguous run of
    words per ball row, skipped where slice ``z + dz`` has no mask voxel).
    """
    nz, ny, nx = mask.shape
    dil = np.zeros((n_h, nz, ny * ((nx + 63) // 64)), np.uint64)
    filled = np.zeros((nz, ny), bool)
    n_chunks = chunk_count(nz)
    mask8, out8 = mask.view(np.uint8), out.view(np.uint8)
    for_chunks(_row_bits, n_chunks, 0, mask8, seg, dil, filled, out8, n_chunks)
    for_chunks(_row_bits, n_chunks, 1, mask8, seg, dil, filled.any(axis=1, keepdims=True), out8, n_chunks)


@njit(cache=True, nogil=True)
def _row_bits(c0, c1, phase, mask, seg, dil, filled, out, n_chunks):  # pragma: no cover - compiled
    """:func:`_dilate_rows` for the slices of chunks ``[c0, c1)``.

    ``phase`` 0: the bit sets ``dil[h, z, y * nw:(y + 1) * nw]`` of the non-empty rows, which it
    marks in ``filled[z, y]``. ``phase`` 1: the output slices; ``filled[z, 0]``: slice ``z`` has a
    mask voxel. Loops over words run on unsigned indices.
    """
    mask, seg, dil, filled, out = borrowed(mask, seg, dil, filled, out)
    nz, ny, nx = mask.shape
    n_h = dil.shape[0]
    nw = dil.shape[2] // ny
    one = np.uint64(1)
    top = np.uint64(63)
    acc = np.zeros(ny * nw, np.uint64)
    for z in range(c0 * nz // n_chunks, c1 * nz // n_chunks):
        if phase == 0:
            for y in range(ny):
                row = mask[z, y]
                hit = np.uint8(0)
                for x in range(nx):
                    hit |= row[x]
                if hit == 0:
                    continue
                filled[z, y] = True
                bits = dil[0, z, y * nw:(y + 1) * nw]
                for x in range(nx):
                    if row[x]:
                        bits[x >> 6] |= one << np.uint64(x & 63)
                # dilation by h: the dilation by h - 1, shifted by one bit either way (bits past nx are never
                # written out, and shifted back they land within the dilation of the bit they came from)
                for h in range(1, n_h):
                    prev = dil[h - 1, z, y * nw:(y + 1) * nw]
                    cur = dil[h, z, y * nw:(y + 1) * nw]
                    for w in range(nw):
                        v = prev[w]
                        up = v << one
                        down = v >> one
                        if w > 0:
                            up |= prev[w - 1] >> top
                        if w + 1 < nw:
                            down |= prev[w + 1] << top
                        cur[w] = v | up | down
            continue
        acc[:] = 0
        hit = False
        for k in range(seg.shape[0]):
            zz = z + seg[k, 0]
            if zz < 0 or zz >= nz or not filled[zz, 0]:
                continue
            hit = True
            dy = seg[k, 1]
            src = dil[seg[k, 2], zz]
            a0 = np.uint64(max(0, -dy) * nw)  # output rows max(0, -dy) .. min(ny, ny - dy) read rows + dy
            s0 = np.uint64(max(0, dy) * nw)
            for i in range(np.uint64((ny - abs(dy)) * nw)):
                acc[a0 + i] |= src[s0 + i]
        if not hit:
            continue
        for y in range(ny):
            any_bit = np.uint64(0)
            for w in range(y * nw, (y + 1) * nw):
                any_bit |= acc[w]
            if any_bit == 0:
                continue
            row = out[z, y]
            for x in range(nx):
                row[x] = np.uint8((acc[y * nw + (x >> 6)] >> np.uint64(x & 63)) & one)


#: Voxels one thread holds the keys of at once in :func:`or_sparse` (4 KB of uint32 keys, in L1).
_SPARSE_SPAN = 1024


def or_sparse(layers: Sequence[np.ndarray], table: np.ndarray, starts: Sequence[int], out: np.ndarray,
              present: np.ndarray | None = None, zeroed: bool = False) -> None:
    """``out[...] = OR_j table[starts[j] + layers[j]]`` in one compiled pass that skips zeros eight voxels at a time.

    The same result as :func:`petfeat.kernels.label_codes.or_tables`: the voxels go in groups of
    eight, one 64-bit word of a one-byte layer, and a layer whose ids are all 0 in a group adds
    nothing to it (its ``table[starts[j]]`` is 0), so sparse label maps cost little more than reading them.

    Parameters
    ----------
    layers : sequence of ndarray
        Up to :data:`~petfeat.kernels.label_codes.MAX_LAYERS` volumes of one shape, of unsigned
        integers of 1 or 2 bytes or bool; ``out`` may be one of them (each group is read before it is written).
    table : ndarray
        Read as uint32; ``table[starts[j]]`` must be 0, and ``starts[j] + id`` inside it for every id that occurs.
    starts : sequence of int
        Where each layer's entries start.
    out : ndarray
        C-contiguous, of the layers' shape, items of 1 or 2 bytes (values are truncated to them).
    present : 1-D bool ndarray, optional
        Set at every OR of table entries that occurs (before its truncation to ``out``'s items), and at 0;
        a table longer than any of them.
    zeroed : bool
        ``out`` holds 0 wherever every layer holds 0 (a fresh ``np.zeros``, or one of the layers): groups
        of zeros are not written, so pages of a fresh ``np.zeros`` that only zeros fall in are never touched.
    """
    if not out.flags.c_contiguous or out.shape != np.shape(layers[0]) or out.itemsize not in (1, 2):
        raise ValueError("or_sparse writes into a C-contiguous array of the layers' shape, items of 1 or 2 bytes")
    views, widths, size = pack_layers(layers)
    if max(widths) > 2:
        raise ValueError("or_sparse reads ids of 1 or 2 bytes")
    table = np.ascontiguousarray(table, np.uint32)
    st = np.zeros(MAX_LAYERS, np.int64)
    st[:len(layers)] = np.asarray(starts, np.int64)
    if np.any(table[st[:len(layers)]] != 0):
        raise ValueError("or_sparse needs table[starts[j]] == 0 (id 0 adds nothing)")
    n_chunks = chunk_count(-(-size // _SPARSE_SPAN))
    mark = present is not None
    present = np.zeros(1, bool) if present is None else present
    for_chunks(_or_spans, n_chunks, views, widths, len(layers), size, table, st, out.reshape(-1).view(np.uint8),
               zeroed, present, mark, n_chunks)


@njit(cache=True, nogil=True)
def _or_spans(c0, c1, layers, widths, n_layers, size, table, starts, out, zeroed, present, mark,
              n_chunks):  # pragma: no cover - compiled
    """:func:`or_sparse` for the spans of chunks ``[c0, c1)``.

    ``layers`` are the byte views of :func:`~petfeat.kernels.label_codes.pack_layers` (ids of one or
    two bytes), ``out`` the output's bytes (items of one or two bytes: ``out.size // size``; with
    ``zeroed``, groups of zeros are not written). Group ``g`` (voxels ``8g .. 8g + 7``) of a layer of
    item size ``w`` is ``w`` 64-bit words, tested as words, and its table entries are read in the
    same loop; the last group of the volume may be shorter, and is read voxel by voxel. ``hit[g]``:
    group ``g``'s keys are written. Inner loops have constant trip counts and unsigned indices (no
    negative-index wrap-around): both keep them fast.
    """
    ls = (borrowed(layers[0]), borrowed(layers[1]), borrowed(layers[2]), borrowed(layers[3]), borrowed(layers[4]),
          borrowed(layers[5]), borrowed(layers[6]), borrowed(layers[7]))
    widths, table, starts, out, present = borrowed(widths, table, starts, out, present)
    ow = out.size // size if size else 1
    o2 = out[:out.size // 2 * 2].view(np.uint16)
    n_spans = (size + _SPARSE_SPAN - 1) // _SPARSE_SPAN
    key = np.zeros(_SPARSE_SPAN, np.uint32)
    hit = np.zeros(_SPARSE_SPAN // 8, np.bool_)
    zero = np.uint64(0)
    u1, u2, u8 = np.uint64(1), np.uint64(2), np.uint64(8)
    for c in range(c0, c1):
        last = np.uint32(0)
        if mark:
            present[0] = True
        for span in range(c * n_spans // n_chunks, (c + 1) * n_spans // n_chunks):
            lo = span * _SPARSE_SPAN
            m = min(_SPARSE_SPAN, size - lo)
            whole = m // 8  # groups of eight voxels; the last group of the volume may be shorter
            n_groups = (m + 7) // 8
            g0 = np.uint64(lo // 8)
            ulo = np.uint64(lo)
            hit[:] = False
            for j in range(n_layers):
                a = ls[j]
                w = widths[j]
                s = np.uint64(starts[j])
                aw = a[:a.size // 8 * 8].view(np.uint64)
                if w == 1:
                    for g in range(whole):
                        if aw[g0 + np.uint64(g)] == zero:
                            continue
                        k0 = u8 * np.uint64(g)
                        v0 = ulo + k0
                        if not hit[g]:
                            hit[g] = True
                            for b in range(8):
                                key[k0 + np.uint64(b)] = table[s + np.uint64(a[v0 + np.uint64(b)])]
                        else:
                            for b in range(8):
                                key[k0 + np.uint64(b)] |= table[s + np.uint64(a[v0 + np.uint64(b)])]
                else:
                    for g in range(whole):
                        i = (g0 + np.uint64(g)) * u2
                        if (aw[i] | aw[i + u1]) == zero:
                            continue
                        k0 = u8 * np.uint64(g)
                        if not hit[g]:
                            hit[g] = True
                            for b in range(8):
                                key[k0 + np.uint64(b)] = 0
                        v0 = (ulo + k0) * u2
                        for b in range(8):
                            v = v0 + u2 * np.uint64(b)
                            key[k0 + np.uint64(b)] |= table[s + (np.uint64(a[v]) | (np.uint64(a[v + u1]) << u8))]
                for v in range(lo + 8 * whole, lo + m):  # the short last group, voxel by voxel
                    i = np.uint64(v * w)
                    idv = np.uint64(a[i]) if w == 1 else np.uint64(a[i]) | (np.uint64(a[i + u1]) << u8)
                    if idv == 0:
                        continue
                    if not hit[whole]:
                        hit[whole] = True
                        for b in range(8):
                            key[u8 * np.uint64(whole) + np.uint64(b)] = 0
                    key[np.uint64(v - lo)] |= table[s + idv]
            for g in range(n_groups):
                if zeroed and not hit[g]:
                    continue
                k0 = u8 * np.uint64(g)
                v0 = ulo + k0
                if g < whole and ow == 1:
                    for b in range(8):
                        out[v0 + np.uint64(b)] = np.uint8(key[k0 + np.uint64(b)]) if hit[g] else np.uint8(0)
                elif g < whole:
                    for b in range(8):
                        o2[v0 + np.uint64(b)] = np.uint16(key[k0 + np.uint64(b)]) if hit[g] else np.uint16(0)
                else:
                    for v in range(lo + 8 * g, lo + m):
                        kk = key[np.uint64(v - lo)] if hit[g] else np.uint32(0)
                        if ow == 1:
                            out[np.uint64(v)] = np.uint8(kk)
                        else:
                            o2[np.uint64(v)] = np.uint16(kk)
            if mark:
                for g in range(n_groups):
                    if not hit[g]:
                        continue
                    for b in range(8):
                        kk = key[np.uint64(8 * g + b)]
                        if kk != last and lo + 8 * g + b < size:  # runs of one key are common; marked: only read
                            last = kk
                            if not present[kk]:
                                present[kk] = True


def codes_touching_border(codes: np.ndarray) -> np.ndarray:
    """Sorted codes present on any of the six faces of the volume."""
    faces = [codes[0], codes[-1], codes[:, 0], codes[:, -1], codes[:, :, 0], codes[:, :, -1]]
    return np.unique(np.concatenate([np.unique(f) for f in faces]))


#: Bone classes of TotalSegmentator's ``total`` task (costal cartilage is not bone).
BONE_PATTERNS = ["vertebrae_*", "rib_*", "sacrum", "hip_*", "femur_*", "humerus_*", "scapula_*", "clavicula_*",
                 "sternum", "skull"]
#: Visceral organs of the ``total`` task for the per-site tumour burden (PROMISE miTNM M1c sites): liver, lungs
#: (every lobe), adrenal glands, kidneys, spleen, pancreas, brain. Hollow organs (bowel, stomach, bladder),
#: muscle, vessels and fat count as lymph node or soft tissue.
VISCERAL_PATTERNS = ["liver", "lung_*", "adrenal_gland_*", "kidney_*", "spleen", "pancreas", "brain"]
PROSTATE_PATTERNS = ["prostate"]
LESION_PATTERNS = ["lesion*"]
#: Parotid glands, left and right (``head_glands_cavities`` task).
PAROTID_PATTERNS = ["parotid_gland_*"]
#: Blood pool: the aorta (``total`` task), the vessel PROMISE reads the blood-pool uptake in.
BLOOD_POOL_PATTERNS = ["aorta"]
#: Organs of high physiological PSMA uptake that touch or overlap bone: the parotid label of the head_glands_cavities
#: task overlaps the total task's skull; liver, spleen and kidneys lie on the lower ribs, the bladder on the pubic
#: bones. (FDG adds brain and heart: give healthy_bone your own exclude list for it.)
HIGH_UPTAKE_PATTERNS = ["parotid_gland_*", "submandibular_gland_*", "liver", "spleen", "kidney_*", "urinary_bladder"]
#: Margin (mm) kept between healthy bone and lesions or high-uptake organs: about twice the ~5 mm FWHM of PSMA
#: PET (docs/regions.md).
HEALTHY_BONE_MARGIN_MM = 10.0

_BUILTIN_RAW = {
    "whole_body_tumor": {"include": LESION_PATTERNS},
    # Per-site tumour burden: lesion voxels by the organ label that covers them, bone first, then prostate,
    # then visceral organs; the rest is lymph node or soft tissue. The four partition whole_body_tumor.
    "tumor_bone": {"include": LESION_PATTERNS, "within": [BONE_PATTERNS]},
    "tumor_prostate": {"include": LESION_PATTERNS, "within": [PROSTATE_PATTERNS], "exclude": BONE_PATTERNS},
    "tumor_visceral": {"include": LESION_PATTERNS, "within": [VISCERAL_PATTERNS],
                       "exclude": BONE_PATTERNS + PROSTATE_PATTERNS},
    "tumor_lymph_node_or_soft_tissue": {"include": LESION_PATTERNS,
                                        "exclude": BONE_PATTERNS + PROSTATE_PATTERNS + VISCERAL_PATTERNS},
    "bone": {"include": BONE_PATTERNS},
    # Bone farther than the margin from every lesion and high-uptake organ voxel: no spill-in into its SUVmax.
    "healthy_bone": {"include": BONE_PATTERNS, "exclude": LESION_PATTERNS + HIGH_UPTAKE_PATTERNS,
                     "exclude_margin_mm": HEALTHY_BONE_MARGIN_MM},
    # The glands are classes of TotalSegmentator's head_glands_cavities task (-ta head_glands_cavities), not of
    # the default total task.
    "salivary_glands": {"include": ["parotid_gland_*", "submandibular_gland_*"], "exclude": LESION_PATTERNS},
    # Reference organs of the PSMA quantities (petfeat.quantities, docs/definitions.md): liver, parotid glands
    # (head_glands_cavities task) and blood pool, the aorta label of the total task; lesion voxels excluded.
    "parotid_glands": {"include": PAROTID_PATTERNS, "exclude": LESION_PATTERNS},
    "aorta": {"include": BLOOD_POOL_PATTERNS, "exclude": LESION_PATTERNS},
    "liver": {"include": ["liver"], "exclude": LESION_PATTERNS},
}
#: Built-in regions (TotalSegmentator class names; the lesion layer's label is ``lesion``), normalised.
#: ``salivary_glands`` and ``parotid_glands`` need the ``head_glands_cavities`` task's output among the labels.
BUILTIN_REGIONS: dict[str, dict] = normalise_spec(_BUILTIN_RAW)


def load_spec(path: str | Path) -> dict[str, dict]:
    """Read a region spec from YAML; ``builtin`` entries take the built-in sets.

    A region given as ``builtin`` (or ``true``) is the built-in region of that name; a mapping with
    ``builtin: true`` is the built-in region with the mapping's other keys replacing its own.

    Example::

        regions:
          whole_body_tumor: builtin
          healthy_bone: {builtin: true, exclude_margin_mm: 6}
          tumor_bone: {include: ["lesion*"], within: [[vertebrae_*, rib_*, sacrum]]}
          prostate_bed: {include: [prostate], exclude: ["lesion*"]}
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LabelError(f"{path}: not a readable YAML file ({exc}).") from exc
    if isinstance(data, Mapping) and "regions" in data:
        data = data["regions"]
    if not isinstance(data, Mapping):
        raise LabelError(f"{path}: expected a mapping 'regions: {{name: {{include: [...], exclude: [...]}}}}'.")
    out = {}
    for name, value in data.items():
        builtin = value == "builtin" or value is True or (isinstance(value, Mapping) and value.get("builtin") is True)
        if builtin:
            if name not in BUILTIN_REGIONS:
                raise LabelError(f"{path}: region {name!r} is not built in; built-in regions are "
                                 f"{', '.join(BUILTIN_REGIONS)}.")
            base = dict(BUILTIN_REGIONS[name])
            if isinstance(value, Mapping):
                if "require" in value:
                    base.pop("within")
                base.update({k: v for k, v in value.items() if k != "builtin"})
            out[name] = base
        else:
            out[name] = value
    try:
        return normalise_spec(out)
    except LabelError as exc:
        raise LabelError(f"{path}: {exc}") from exc
