"""Label maps onto the PET grid: NIfTI/NRRD, TotalSegmentator folders, DICOM SEG, RTSTRUCT.

Labels are addressed by name. A label image whose geometry differs from the PET grid is
resampled in physical space with nearest-neighbour interpolation (SimpleITK), or per label as a
fraction kept at >= 0.5 (``mode="fraction"``). Float and signed label images are refused, and so
is a label map that does not overlap the PET field of view. Every layer records each label's
volume on its native grid beside the PET-grid volume (``LabelLayer.native_volume_ml``).

:func:`read_labels` takes any of these paths and returns label layers on the PET grid.
"""

from __future__ import annotations

import gzip
import json
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pydicom
import SimpleITK as sitk

from petfeat.errors import LabelError
from petfeat.io.dicom import Geometry
from petfeat.kernels.label_census import Census, label_census
from petfeat.regions import LabelLayer

_UNSIGNED = {sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkUInt32, sitk.sitkUInt64}
_MAX_ID = {sitk.sitkUInt8: 0xFF, sitk.sitkUInt16: 0xFFFF, sitk.sitkUInt32: 0xFFFFFFFF,
           sitk.sitkUInt64: float(2**64 - 1)}


def reference_image(geometry: Geometry) -> sitk.Image:
    """An empty SimpleITK image with the PET grid's geometry (the resampling reference)."""
    img = sitk.Image([int(s) for s in geometry.shape[::-1]], sitk.sitkUInt8)
    f = geometry.sitk_fields()
    img.SetSpacing(f["spacing"])
    img.SetOrigin(f["origin"])
    img.SetDirection(f["direction"])
    return img


def read_label_image(path: str | Path) -> sitk.Image:
    """Read a label image (NIfTI, NRRD, MHA...) and refuse float or signed pixel types."""
    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise LabelError(f"{path}: cannot be read as an image ({str(exc).strip().splitlines()[-1]}).") from exc
    if img.GetPixelID() not in _UNSIGNED:
        raise LabelError(f"{path}: pixel type {img.GetPixelIDTypeAsString()} is not an unsigned integer; label "
                         "maps must hold unsigned integer ids. Re-save it as uint8/uint16 (e.g. "
                         "sitk.Cast(img, sitk.sitkUInt16)) after checking its values are whole numbers.")
    return img


RESAMPLE_MODES = ("nearest", "fraction")


def census(img: sitk.Image) -> Census:
    """Voxels per id and the box of the labelled voxels of a label image, in one pass."""
    return label_census(sitk.GetArrayViewFromImage(img))


def native_volumes_ml(img: sitk.Image, counts: np.ndarray) -> dict[int, float]:
    """Volume (mL) of each non-zero label id on the image's own grid, from its voxel ``counts`` per id."""
    vox_ml = float(np.prod(img.GetSpacing())) / 1000.0
    return {int(i): float(c) * vox_ml for i, c in enumerate(counts) if i and c}


def to_pet_grid(img: sitk.Image, geometry: Geometry, source: str = "<image>", mode: str = "nearest",
                found: Census | None = None) -> np.ndarray:
    """Bring a label image onto the PET grid; ``(Z, Y, X)`` array of the same ids.

    ``mode="nearest"``: nearest-neighbour resampling of the ids. ``mode="fraction"``: each label
    is resampled as a fraction (linear interpolation of its indicator) and kept where >= 0.5.
    ``found`` is the image's :func:`census` when the caller has it already.

    Raises
    ------
    LabelError
        The label map has labels but none of them falls inside the PET field of view.
    """
    if mode not in RESAMPLE_MODES:
        raise LabelError(f"resampling mode is {mode!r}; choose one of {', '.join(RESAMPLE_MODES)}.")
    ref = reference_image(geometry)
    same = (img.GetSize() == ref.GetSize() and np.allclose(img.GetSpacing(), ref.GetSpacing(), atol=1e-4)
            and np.allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-3)
            and np.allclose(img.GetDirection(), ref.GetDirection(), atol=1e-5))
    if same:
        return sitk.GetArrayFromImage(img)
    found = census(img) if found is None else found
    arr = np.zeros(geometry.shape, sitk.GetArrayViewFromImage(img).dtype)
    if mode == "nearest":
        hit = resample_box(img, geometry, sitk.sitkNearestNeighbor, img.GetPixelID(), found.box)
        if hit is not None:
            arr[hit[0]] = hit[1]
    else:
        best = np.zeros(geometry.shape, np.float32)
        for lab in (int(v) for v in np.flatnonzero(found.counts) if v):
            one = sitk.BinaryThreshold(img, lab, lab, 1, 0)
            hit = resample_box(sitk.Cast(one, sitk.sitkFloat32), geometry, sitk.sitkLinear, sitk.sitkFloat32,
                               census(one).box)
            if hit is None:
                continue
            box, frac = hit
            sub_arr, sub_best = arr[box], best[box]
            take = (frac >= 0.5) & (frac > sub_best)
            sub_arr[take] = lab
            sub_best[take] = frac[take]
    if not arr.any() and found.box is not None:
        raise LabelError(f"{source}: the label map does not overlap the PET field of view (its labels fall outside "
                         "the PET grid after resampling). Check that it belongs to this study and frame of reference.")
    return arr


def resample_box(img: sitk.Image, geometry: Geometry, interpolator: int, pixel_id: int,
                 native: tuple[slice, slice, slice] | None) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Resample ``img`` onto the part of the PET grid its non-zero voxels (in the box ``native``) can reach.

    A class of a whole-body segmentation covers a small box of the PET grid; resampling only that
    box (the class's bounding box grown by one voxel of its own grid, which covers nearest and
    linear interpolation) gives the same values as resampling the whole grid, in a fraction of the
    time. Returns ``(box, values)`` with ``box`` the ``(z, y, x)`` slices of the PET grid, or None
    when the image has no non-zero voxel (``native`` None) or none inside the PET grid.
    """
    if native is None:
        return None
    size = img.GetSize()
    lo = [max(native[2 - k].start - 1, -1) for k in range(3)]  # (x, y, z) continuous index corners
    hi = [min(native[2 - k].stop, size[k]) for k in range(3)]
    corners = np.array([img.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))
                        for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    spacing_xyz = np.asarray(geometry.spacing[::-1], dtype=np.float64)
    d = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    index = (corners - np.asarray(geometry.origin)) @ d / spacing_xyz  # PET continuous (x, y, z) indices
    shape_xyz = np.asarray(geometry.shape[::-1])
    first = np.maximum(np.floor(index.min(axis=0)).astype(np.int64) - 1, 0)
    last = np.minimum(np.ceil(index.max(axis=0)).astype(np.int64) + 1, shape_xyz - 1)
    if np.any(last < first):
        return None
    out_size = [int(v) for v in last - first + 1]
    origin = np.asarray(geometry.origin) + d @ (first * spacing_xyz)
    sub = sitk.Resample(img, out_size, sitk.Transform(), interpolator, [float(v) for v in origin],
                        [float(v) for v in spacing_xyz], [float(v) for v in d.ravel()], 0, pixel_id)
    box = tuple(slice(int(first[k]), int(last[k]) + 1) for k in (2, 1, 0))
    return box, sitk.GetArrayFromImage(sub)


def read_totalsegmentator_folder(folder: str | Path, geometry: Geometry) -> LabelLayer:
    """Read a TotalSegmentator output folder (one ``<class>.nii.gz`` per class) onto the PET grid.

    Classes are numbered in sorted name order; a voxel claimed by several classes keeps the
    last in that order.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.nii.gz")) + sorted(folder.glob("*.nii"))
    if not files:
        raise LabelError(f"{folder}: no <class>.nii.gz files; point to a TotalSegmentator output folder.")
    out = np.zeros(geometry.shape, np.uint8 if len(files) < 0xFF else np.uint16)
    names, native = {}, {}
    for i, (f, img) in enumerate(zip(files, _read_ahead(files), strict=True), start=1):
        name = f.name.removesuffix(".gz").removesuffix(".nii")
        found = census(img)
        native[name] = sum(native_volumes_ml(img, found.counts).values())
        hit = resample_box(img, geometry, sitk.sitkNearestNeighbor, img.GetPixelID(), found.box)
        if hit is not None:  # a class may lie outside the PET field of view (e.g. the skull in a torso scan)
            sub = out[hit[0]]
            sub[hit[1] > 0] = i
        names[i] = name
    if not out.any() and any(native.values()):
        raise LabelError(f"{folder}: none of the classes overlaps the PET field of view. Check that the "
                         "segmentation belongs to this study.")
    layer = LabelLayer(out, names, str(folder))
    layer.native_volume_ml = native
    return layer


def _read_ahead(files: list[Path]) -> Iterator[sitk.Image]:
    """The label images of ``files`` in order, decompressed by SimpleITK's thread budget of readers at a time.

    SimpleITK reads without holding the GIL, so a whole-body folder's class files (one gzip
    stream each, most of a folder's time) decompress in parallel: on 2 cores 1.6-1.8x. At most
    one more image than that is read ahead of the one in use, so memory stays a few CT-grid images. In a
    batch task the budget is 1 (:func:`petfeat.batch.run_study`): files are read one by one.
    """
    threads = max(1, sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
    if threads == 1:
        yield from map(read_label_image, files)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending = deque()
        for f in files:
            pending.append(pool.submit(read_label_image, f))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _allow_empty(fn, geometry):
    """One class of a folder may lie outside the PET field of view (e.g. the skull in a torso scan)."""
    try:
        return fn()
    except LabelError:
        return np.zeros(geometry.shape, np.uint8)


def read_label_map(path: str | Path, geometry: Geometry, names: dict[int, str] | None = None,
                   prefix: str = "label", mode: str = "nearest") -> LabelLayer:
    """Read a multilabel image (NIfTI, NRRD, MHA) onto the PET grid.

    Ids without a name in ``names`` are called ``{prefix}_{id}``.
    """
    img = read_label_image(path)
    found = census(img)
    native_ids = native_volumes_ml(img, found.counts)
    arr = to_pet_grid(img, geometry, str(path), mode, found)
    if names is None:
        names = nifti_label_table(path)  # TotalSegmentator --ml files carry their class names
    names = {i: (names or {}).get(i, f"{prefix}_{i}") for i in native_ids}
    layer = LabelLayer(arr, names, str(path))
    layer.native_volume_ml = {names[i]: v for i, v in native_ids.items()}
    return layer


def nifti_label_table(path: str | Path) -> dict[int, str] | None:
    """Label names stored in a NIfTI-1 header extension, as TotalSegmentator's ``--ml`` output has them.

    TotalSegmentator writes an XML ``LabelTable`` (``<Label Key="5">liver</Label>`` ...) as a
    header extension. Returns ``{id: name}``, or None for other files and NIfTIs without one.
    """
    path = Path(path)
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return None
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(352)
            if len(head) < 352 or struct.unpack_from("<i", head, 0)[0] != 348 or head[348] == 0:
                return None  # not little-endian NIfTI-1, or no extension
            vox_offset = int(struct.unpack_from("<f", head, 108)[0])
            ext = f.read(max(0, vox_offset - 352))
    except (OSError, EOFError, struct.error):
        return None
    pos, table = 0, {}
    while pos + 8 <= len(ext):
        size, _code = struct.unpack_from("<ii", ext, pos)
        if size < 8 or pos + size > len(ext):
            break
        content = ext[pos + 8:pos + size].rstrip(b"\x00 \n")
        pos += size
        if b"LabelTable" not in content:
            continue
        try:
            root = ElementTree.fromstring(content.decode("utf-8", "replace").strip())
        except ElementTree.ParseError:
            continue
        for label in root.iter("Label"):
            key, text = label.get("Key"), (label.text or "").strip()
            if key is not None and key.strip().isdigit() and text:
                table[int(key)] = text
    return table or None


def read_lesion_mask(path: str | Path, geometry: Geometry, mode: str = "nearest") -> np.ndarray:
    """A lesion mask (any non-zero id) on the PET grid, as booleans (1 byte per voxel).

    Lesion ids in the file are not kept: petfeat recomputes the connected components
    (:func:`petfeat.lesions.connected_components`), so an instance map and a binary mask give the
    same lesions when their instances do not touch.
    """
    if mode != "nearest":  # fractions are per label id: resample the ids, then binarise
        arr = read_label_map(path, geometry, prefix="lesion", mode=mode).array
        return np.greater(arr, 0, out=np.empty(arr.shape, bool))
    img = read_label_image(path)
    binary = sitk.BinaryThreshold(img, 1, _MAX_ID[img.GetPixelID()], 1, 0)  # uint8 0/1, any id -> 1
    del img
    return to_pet_grid(binary, geometry, str(path)).view(bool)


def read_names_file(path: str | Path) -> dict[int, str]:
    """Label names from a JSON object (``{"1": "liver", ...}``) or a two-column CSV/TSV (id, name)."""
    path = Path(path)
    text = path.read_text()
    try:
        if path.suffix == ".json":
            return {int(k): str(v) for k, v in json.loads(text).items()}
        out = {}
        for line in text.splitlines():
            parts = [p.strip() for p in line.replace("\t", ",").split(",")]
            if len(parts) >= 2 and parts[0].isdigit():
                out[int(parts[0])] = parts[1]
        return out
    except (ValueError, AttributeError) as exc:
        raise LabelError(f"{path}: label names must be a JSON object id -> name or CSV lines 'id,name'.") from exc


def _sitk_from_affine(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image from a (slices, rows, columns) array and a highdicom-style affine."""
    img = sitk.GetImageFromArray(array)
    cols = affine[:3, :3]  # columns: steps along slices, rows, columns (LPS mm)
    steps = [cols[:, 2], cols[:, 1], cols[:, 0]]  # SimpleITK x (column), y (row), z (slice)
    spacing = [float(np.linalg.norm(v)) for v in steps]
    direction = np.stack([v / n for v, n in zip(steps, spacing, strict=True)], axis=1)
    img.SetSpacing(spacing)
    img.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
    img.SetDirection(tuple(float(v) for v in direction.ravel()))
    return img


def read_dicom_seg(path: str | Path, geometry: Geometry, mode: str = "nearest") -> list[LabelLayer]:
    """A DICOM SEG (binary, fractional or labelmap; overlapping segments allowed), segments packed into layers.

    Segments are decoded one at a time (a LABELMAP SEG as its one label volume, split by segment
    number), so memory holds one volume of the SEG's grid, not one per segment: all 117 segments of
    a whole-body SEG on a CT grid at once would be tens of GB.
    """
    import highdicom as hd

    path = Path(path)

    def readable(call):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - highdicom raises many types for bad files
            raise LabelError(f"{path}: not a readable DICOM SEG ({type(exc).__name__}: {exc}).") from exc

    def volume(**kwargs):
        return readable(lambda: seg.get_volume(rescale_fractional=True, **kwargs))

    seg = readable(lambda: hd.seg.segread(path))
    # a LABELMAP SEG lists a background segment 0 in SegmentSequence; segment_numbers leaves it out
    numbers = [int(n) for n in seg.segment_numbers]
    labels = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
    labelmap = None
    if seg.segmentation_type == hd.seg.SegmentationTypeValues.LABELMAP:
        labelmap = volume(segment_numbers=numbers, combine_segments=True, relabel=False)

    def segments():
        for number in numbers:
            if labelmap is not None:
                vol, ind = labelmap, np.equal(labelmap.array, number)
            else:
                vol = volume(segment_numbers=[number], combine_segments=False)
                arr = np.asarray(vol.array)
                ind = np.greater_equal(arr[..., 0] if arr.ndim == 4 else arr, 0.5)
            img = _sitk_from_affine(ind.astype(np.uint8), np.asarray(vol.affine))
            found = census(img)
            on_pet = _allow_empty(lambda img=img, found=found: to_pet_grid(img, geometry, str(path), mode, found),
                                  geometry)
            yield labels[number], on_pet > 0, sum(native_volumes_ml(img, found.counts).values())

    layers = packed_layers(segments(), geometry.shape, str(path))
    labelled = any(ml > 0 for layer in layers for ml in layer.native_volume_ml.values())  # on the SEG's grid
    if not any(layer.array.any() for layer in layers) and labelled:
        raise LabelError(f"{path}: no segment overlaps the PET field of view. Check that the SEG belongs to this "
                         "study.")
    return layers


def read_rtstruct(path: str | Path, geometry: Geometry) -> list[LabelLayer]:
    """An RTSTRUCT rasterised onto the PET grid, ROIs packed into layers (ROIs may overlap; :func:`packed_layers`).

    Closed planar contours are filled with the even-odd rule on the slice nearest to their plane
    (voxel centres inside the polygon); contours of one ROI on one slice combine by XOR (holes).
    """
    path = Path(path)
    ds = pydicom.dcmread(path)
    if str(ds.get("Modality", "")) != "RTSTRUCT":
        raise LabelError(f"{path}: Modality is {ds.get('Modality')!r}, not RTSTRUCT.")
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    d = np.asarray(geometry.direction, float).reshape(3, 3)
    inv = np.linalg.inv(d * np.asarray(geometry.spacing[::-1])[None, :])  # LPS -> (x, y, z) index

    def rois():
        for roi in ds.get("ROIContourSequence", []):
            number = int(roi.ReferencedROINumber)
            mask = np.zeros(geometry.shape, bool)
            for contour in roi.get("ContourSequence", []):
                if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
                    continue
                pts = np.asarray(contour.ContourData, float).reshape(-1, 3)
                idx = (pts - np.asarray(geometry.origin)) @ inv.T  # (x, y, z) continuous indices
                k = int(round(float(np.mean(idx[:, 2]))))
                if not 0 <= k < geometry.shape[0]:
                    continue
                mask[k] ^= _fill_polygon(idx[:, 0], idx[:, 1], geometry.shape[1], geometry.shape[2])
            yield names.get(number, f"roi_{number}"), mask, float(mask.sum()) * geometry.voxel_volume_ml

    layers = packed_layers(rois(), geometry.shape, str(path))
    if not layers:
        raise LabelError(f"{path}: the RTSTRUCT holds no ROI contours.")
    if not any(layer.array.any() for layer in layers):
        raise LabelError(f"{path}: no ROI contour lies inside the PET field of view. Check that the RTSTRUCT belongs "
                         "to this study.")
    return layers


def packed_layers(masks: Iterable[tuple[str, np.ndarray, float]], shape: tuple[int, int, int],
                  source: str) -> list[LabelLayer]:
    """Masks of labels that may overlap (name, boolean PET-grid mask, native volume in mL), packed into layers.

    Each label goes into the first layer that holds none of its voxels and not its name, under that
    layer's next id. A voxel of several labels is in several layers, as when each label had a layer
    of its own, so regions match the same names; but labels that do not overlap share a layer. A
    whole-body SEG of 117 non-overlapping segments is one PET-grid volume instead of 117 (2.1 GB on
    a 2 mm grid). Masks are taken one at a time.
    """
    layers: list[LabelLayer] = []
    for name, mask, native_ml in masks:
        layer = next((la for la in layers if name not in la.names.values() and not la.array[mask].any()), None)
        if layer is None:
            layer = LabelLayer(np.zeros(shape, np.uint8), {}, source)
            layer.native_volume_ml = {}
            layers.append(layer)
        i = len(layer.names) + 1
        if i > np.iinfo(layer.array.dtype).max:
            layer.array = layer.array.astype(np.uint16 if i <= 0xFFFF else np.uint32)
        layer.array[mask] = i
        layer.names[i] = name
        layer.native_volume_ml[name] = native_ml
    return layers


def _fill_polygon(px: np.ndarray, py: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """Even-odd fill of a polygon given in continuous (x, y) voxel indices; voxel centres inside."""
    out = np.zeros((ny, nx), bool)
    x0, y0 = px, py
    x1, y1 = np.roll(px, -1), np.roll(py, -1)
    for y in range(max(0, int(np.ceil(py.min()))), min(ny - 1, int(np.floor(py.max()))) + 1):
        crosses = ((y0 <= y) & (y1 > y)) | ((y1 <= y) & (y0 > y))
        if not crosses.any():
            continue
        xs = np.sort(x0[crosses] + (y - y0[crosses]) * (x1[crosses] - x0[crosses]) / (y1[crosses] - y0[crosses]))
        for a, b in zip(xs[0::2], xs[1::2], strict=False):
            lo, hi = max(0, int(np.ceil(a))), min(nx - 1, int(np.floor(b)))
            if lo <= hi:
                out[y, lo:hi + 1] = True
    return out


def read_labels(path: str | Path, geometry: Geometry, names: dict[int, str] | None = None,
                mode: str = "nearest") -> list[LabelLayer]:
    """Read any supported label source onto the PET grid.

    A folder is a TotalSegmentator output (one ``<class>.nii.gz`` per class); a DICOM file is a
    SEG or an RTSTRUCT (by Modality); anything else is a multilabel image read by SimpleITK
    (NIfTI, NRRD, MHA), named with ``names``, else with the label table a NIfTI carries in its
    header extension (TotalSegmentator's ``--ml`` output), else ``label_<id>``.
    """
    path = Path(path)
    if path.is_dir():
        return [read_totalsegmentator_folder(path, geometry)]
    if not path.exists():
        raise LabelError(f"{path}: no such file or folder.")
    if path.suffix.lower() in (".dcm", "") or _is_dicom(path):
        modality = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality", ""))
        if modality == "SEG":
            return read_dicom_seg(path, geometry, mode)
        if modality == "RTSTRUCT":
            return read_rtstruct(path, geometry)
        raise LabelError(f"{path}: a DICOM {modality or 'file'} is not a label map; give a SEG or RTSTRUCT.")
    return [read_label_map(path, geometry, names, mode=mode)]


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"
