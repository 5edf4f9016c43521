"""Named regions over label layers, and the code volume that serves all of them in one pass.

A *label layer* is an unsigned integer volume on the PET grid with a map from label id to
name (an organ map, a lesion mask...). Each voxel's *code* identifies the combination of labels
that cover it across all layers, so one reduction pass serves overlapping regions: "bone" is
every code whose organ label is a bone, "healthy_bone" the same minus codes with a lesion.

A region spec maps a region name to label-name patterns (``fnmatch`` globs)::

    {"bone": {"include": ["vertebrae_*", "rib_*", "sacrum"], "exclude": ["costal_cartilages"]},
     "healthy_bone": {"include": ["vertebrae_*", "rib_*"], "exclude": ["lesion*"]},
     "liver": ["liver"]}

A code belongs to a region when one of its labels matches an include pattern and none of its
labels matches an exclude pattern.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from petfeat.errors import LabelError
from petfeat.kernels.label_codes import apply_lut, mark_present
from petfeat.slabs import z_slabs

#: Above this many label combinations the code builder sorts instead of using a lookup table.
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
        out = []
        for layer, lab in zip(self.layers, self.combos[code]):
            if lab:
                out.append(layer.names.get(int(lab), f"label_{int(lab)}"))
        return out


def _code_dtype(n: int) -> np.dtype:
    return np.dtype(np.uint8 if n <= 0xFF else np.uint16 if n <= 0xFFFF else np.uint32)


def _combined_key(layers: Sequence[LabelLayer], sizes: list[int], sl: slice) -> np.ndarray:
    """Mixed-radix key of the layers' ids over one Z slab (the ids themselves for one layer)."""
    if len(layers) == 1:
        return layers[0].array[sl]
    key = layers[0].array[sl].astype(np.int64)
    mult = sizes[0]
    for layer, size in zip(layers[1:], sizes[1:]):
        key += layer.array[sl].astype(np.int64) * mult
        mult *= size
    return key


def build_codes(layers: Sequence[LabelLayer], shape: tuple[int, ...]) -> CodeMap:
    """Combine label layers into one code volume (vectorised, O(voxels), slab-sized temporaries)."""
    if not layers:
        raise LabelError("no label layers were given; pass at least one label map.")
    for layer in layers:
        if layer.array.shape != tuple(shape):
            raise LabelError(f"{layer.source}: label map shape {layer.array.shape} differs from the PET grid "
                             f"{tuple(shape)} (Z, Y, X). Resample it onto the PET grid first "
                             "(petfeat.io.labels.resample_to_grid).")
    return _code_layers(list(layers), [int(layer.array.max()) + 1 for layer in layers], shape)


def _code_layers(layers: list[LabelLayer], sizes: list[int], shape: tuple[int, ...]) -> CodeMap:
    """:func:`build_codes` of layers whose ids are below ``sizes``."""
    groups, size_of_group = [[]], 1  # consecutive layers (indices) whose combined key fits in an int64
    for j, size in enumerate(sizes):
        if groups[-1] and size_of_group * size > _KEY_LIMIT:
            groups.append([])
            size_of_group = 1
        groups[-1].append(j)
        size_of_group *= size
    if len(groups) > 1:  # e.g. a SEG or RTSTRUCT of more than 62 segments: code each group, then the group codes
        parts = [_code_layers([layers[j] for j in g], [sizes[j] for j in g], shape) for g in groups]
        top = _code_layers([LabelLayer(part.codes, {}, "label group") for part in parts],
                           [part.n_codes for part in parts], shape)
        combos = np.concatenate([part.combos[top.combos[:, j]] for j, part in enumerate(parts)], axis=1)
        return CodeMap(top.codes, combos, layers)
    total = int(np.prod(sizes, dtype=np.float64))
    # Two passes over Z slabs (the combined key is int64: a whole-volume key would be 8 bytes per voxel).
    if total <= _LUT_LIMIT:  # which keys occur, then a lookup table key -> code (compiled, parallel loops)
        present = np.zeros(total, bool)
        for sl in z_slabs(shape):
            mark_present(_combined_key(layers, sizes, sl), present)
        present[0] = False
        keys = np.concatenate([[0], np.flatnonzero(present)])
        lut = np.zeros(total, dtype=_code_dtype(len(keys)))
        lut[keys] = np.arange(len(keys))
        codes = np.empty(shape, lut.dtype)
        for sl in z_slabs(shape):
            apply_lut(_combined_key(layers, sizes, sl), lut, codes[sl])
    else:
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
    return CodeMap(np.ascontiguousarray(codes), combos, layers)


def normalise_spec(spec) -> dict[str, dict[str, list[str]]]:
    """Normalise a region spec: a name -> str | list | {"include": [...], "exclude": [...]} mapping."""
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
                             f"(and optionally 'exclude'), got {value!r}.")
        unknown = set(value) - {"include", "exclude"}
        if unknown:
            raise LabelError(f"region {name!r}: unknown keys {sorted(unknown)}; allowed: include, exclude.")
        inc = [str(v) for v in _as_list(value["include"])]
        exc = [str(v) for v in _as_list(value.get("exclude", []))]
        if not inc:
            raise LabelError(f"region {name!r}: 'include' is empty; name at least one label or glob.")
        out[str(name)] = {"include": inc, "exclude": exc}
    return out


def _as_list(v):
    return [v] if isinstance(v, str) else list(v)


def region_codes(spec, codemap: CodeMap) -> dict[str, np.ndarray]:
    """Codes of each region of ``spec`` (see module docstring for the matching rule)."""
    spec = normalise_spec(spec)
    names_per_code = [codemap.code_names(c) for c in range(codemap.n_codes)]
    out = {}
    for region, rule in spec.items():
        members = []
        for c, names in enumerate(names_per_code):
            if c == 0:
                continue
            inc = any(fnmatch.fnmatchcase(n, p) for n in names for p in rule["include"])
            exc = any(fnmatch.fnmatchcase(n, p) for n in names for p in rule["exclude"])
            if inc and not exc:
                members.append(c)
        out[region] = np.asarray(members, dtype=np.int64)
    return out


def regions_naming_known_labels(spec, layers: Sequence[LabelLayer]) -> set[str]:
    """Regions whose include patterns match at least one label name of the layers (voxels or not)."""
    spec = normalise_spec(spec)
    names = [n for layer in layers for n in layer.names.values()]
    return {r for r, rule in spec.items() if any(fnmatch.fnmatchcase(n, p) for n in names for p in rule["include"])}


def default_spec(layers: Sequence[LabelLayer]) -> dict[str, dict[str, list[str]]]:
    """One region per label name of every layer."""
    names = []
    for layer in layers:
        for n in layer.names.values():
            if n not in names:
                names.append(n)
    return {n: {"include": [n], "exclude": []} for n in names}


def codes_touching_border(codes: np.ndarray) -> np.ndarray:
    """Sorted codes present on any of the six faces of the volume."""
    faces = [codes[0], codes[-1], codes[:, 0], codes[:, -1], codes[:, :, 0], codes[:, :, -1]]
    return np.unique(np.concatenate([np.unique(f) for f in faces]))


#: Built-in region sets (TotalSegmentator class names; lesion layers are named ``lesion_<id>``).
BONE_PATTERNS = ["vertebrae_*", "rib_*", "sacrum", "hip_*", "femur_*", "humerus_*", "scapula_*", "clavicula_*",
                 "sternum", "skull"]
BUILTIN_REGIONS: dict[str, dict[str, list[str]]] = {
    "whole_body_tumor": {"include": ["lesion*"], "exclude": []},
    "bone": {"include": BONE_PATTERNS, "exclude": []},
    "healthy_bone": {"include": BONE_PATTERNS, "exclude": ["lesion*"]},
    "salivary_glands": {"include": ["parotid_gland_*", "submandibular_gland_*"], "exclude": ["lesion*"]},
    "liver": {"include": ["liver"], "exclude": ["lesion*"]},
}


def load_spec(path: str | Path) -> dict[str, dict[str, list[str]]]:
    """Read a region spec from YAML; ``builtin: true`` entries (or the name alone) take the built-in sets.

    Example::

        regions:
          whole_body_tumor: builtin
          healthy_bone: builtin
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
        if value == "builtin" or value is True:
            if name not in BUILTIN_REGIONS:
                raise LabelError(f"{path}: region {name!r} is not built in; built-in regions are "
                                 f"{', '.join(BUILTIN_REGIONS)}.")
            out[name] = BUILTIN_REGIONS[name]
        else:
            out[name] = value
    try:
        return normalise_spec(out)
    except LabelError as exc:
        raise LabelError(f"{path}: {exc}") from exc
