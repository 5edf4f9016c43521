"""RTSTRUCT reading: contours rasterised on their own planes, resampled onto the PET grid; real and synthetic."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import DRO
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from petfeat.errors import LabelError, PetfeatWarning
from petfeat.io.dicom import Geometry, read_pet_series
from petfeat.io.labels import read_labels
from petfeat.io.rtstruct import read_rtstruct

RADIUS = 30.0
SPHERE_ML = 4 / 3 * np.pi * RADIUS**3 / 1000  # 113.1 mL
_CONTOUR_DATA = Tag(0x3006, 0x0050)


def _write_rtstruct(path, rois, types=None):
    """An RTSTRUCT with ``rois`` = {name: [contour points (N, 3) in LPS mm, ...]}."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.StructureSetROISequence = Sequence()
    ds.ROIContourSequence = Sequence()
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ROIName = name
        ds.StructureSetROISequence.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ContourSequence = Sequence()
        for i, pts in enumerate(contours):
            c = Dataset()
            c.ContourGeometricType = (types or {}).get((name, i), "CLOSED_PLANAR")
            c.NumberOfContourPoints = len(pts)
            # ContourData written as its encoded text (pydicom validates each DS value: seconds per 1 000 contours)
            raw = "\\".join(f"{v:.4f}" for v in np.asarray(pts).ravel()).encode()
            raw += b" " * (len(raw) % 2)
            c[_CONTOUR_DATA] = RawDataElement(_CONTOUR_DATA, "DS", len(raw), raw, 0, False, True)
            c.set_original_encoding(False, True, c._character_set)
            rc.ContourSequence.append(c)
        ds.ROIContourSequence.append(rc)
    ds.save_as(path, enforce_file_format=True)
    return path


def _circle(centre, r, z_axis=(0, 0, 1), n=256, clockwise=False):
    """Closed polygon of ``n`` vertices on a circle of radius ``r`` in the plane through ``centre``."""
    z_axis = np.asarray(z_axis, float) / np.linalg.norm(z_axis)
    a = np.array([1.0, 0, 0]) if abs(z_axis[0]) < 0.9 else np.array([0, 1.0, 0])
    u = np.cross(z_axis, a)
    u /= np.linalg.norm(u)
    v = np.cross(z_axis, u)
    t = np.linspace(0, 2 * np.pi, n, endpoint=False) * (-1 if clockwise else 1)
    return np.asarray(centre, float) + r * (np.cos(t)[:, None] * u + np.sin(t)[:, None] * v)


def _sphere_contours(centre, r, step, z0=0.0, axis=(0, 0, 1), n=256):
    """A sphere contoured as circles on planes ``z0 + k * step`` along ``axis`` (the planes that cut it)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    c0 = float(np.asarray(centre) @ axis)
    ks = np.arange(np.ceil((c0 - r - z0) / step), np.floor((c0 + r - z0) / step) + 1)
    out = []
    for k in ks:
        h = z0 + k * step - c0
        if r * r - h * h > 1e-6:
            out.append(_circle(np.asarray(centre) + h * axis, np.sqrt(r * r - h * h), axis, n=n))
    return out


def _pet(shape=(40, 40, 40), spacing=(4.0, 4.0, 4.0), origin=(-78.7, -81.3, -77.3), direction=None):
    return Geometry(shape, spacing, origin, tuple(direction) if direction is not None else (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _centres(g):
    zyx = np.stack(np.meshgrid(*[np.arange(s) for s in g.shape], indexing="ij"), -1)
    return g.index_to_lps(zyx)


@pytest.mark.parametrize("step", [1.0, 2.0, 3.0, 4.0, 8.0])
def test_sphere_contoured_every_n_mm_keeps_its_volume_on_a_4mm_pet_grid(tmp_path, step):
    """Planes 0.7 mm off the PET slices; each PET voxel takes the contour plane nearest to its centre."""
    g = _pet()
    rs = _write_rtstruct(tmp_path / "rs.dcm", {"sphere": _sphere_contours((1.1, -2.3, 0.0), RADIUS, step, z0=-0.6)})
    (layer,) = read_rtstruct(rs, g)
    pet_ml = np.count_nonzero(layer.array) * g.voxel_volume_ml
    assert pet_ml == pytest.approx(SPHERE_ML, rel=0.05)
    assert layer.native_volume_ml["sphere"] == pytest.approx(SPHERE_ML, rel=0.03)
    assert layer.notes == {"sphere": {"outside_fov_fraction": 0.0}}
    # the voxels are the sphere's: centres well inside are in, centres well outside are out
    d = np.linalg.norm(_centres(g) - np.array([1.1, -2.3, 0.0]), axis=-1)
    on = layer.array > 0
    assert on[d < RADIUS - step / 2 - 3].all() and not on[d > RADIUS + 3].any()


def test_holes_stay_empty_and_islands_in_holes_are_in(tmp_path):
    """Outer, inner (hole) and island contours on each plane, every 2 mm, read onto a 4 mm grid."""
    g = _pet()
    r_out, r_in, r_island, half = 30.0, 16.0, 6.0, 20.0
    planes = np.arange(-half + 1, half, 2.0)
    contours = []
    for z in planes:
        contours += [_circle((0, 0, z), r_out), _circle((0, 0, z), r_in, clockwise=True), _circle((0, 0, z), r_island)]
    rs = _write_rtstruct(tmp_path / "rs.dcm", {"annulus": contours})
    (layer,) = read_rtstruct(rs, g)
    on = layer.array > 0
    p = _centres(g)
    rho, z = np.hypot(p[..., 0], p[..., 1]), np.abs(p[..., 2])
    inner_z = z < half - 3
    assert not on[(rho > r_island + 2) & (rho < r_in - 2)].any()  # the hole
    assert on[(rho < r_island - 2) & inner_z].all()  # the island
    assert on[(rho > r_in + 2) & (rho < r_out - 2) & inner_z].all()  # the ring
    expected = np.pi * (r_out**2 - r_in**2 + r_island**2) * 2 * half / 1000
    assert np.count_nonzero(on) * g.voxel_volume_ml == pytest.approx(expected, rel=0.05)
    assert layer.native_volume_ml["annulus"] == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("study", ["STS_001", "STS_002", "STS_003"])
def test_real_rtstruct_matches_mirp_voxel_masks(reference_dir, study):
    """reference/mirp-sts: the RTSTRUCT read onto the study's PET grid gives MIRP's own voxel mask (README: 1%)."""
    root = reference_dir / "mirp-sts" / study
    series = read_pet_series(root / "dicom" / "image")
    mirp = sitk.ReadImage(str(root / "nifti" / "mask" / "mask.nii.gz"))
    g = series.geometry
    assert mirp.GetSize() == g.shape[::-1]
    assert np.allclose(mirp.GetSpacing(), g.spacing[::-1], atol=1e-4)
    assert np.allclose(mirp.GetOrigin(), g.origin, atol=1e-3)
    assert np.allclose(mirp.GetDirection(), g.direction, atol=1e-6)
    expected = sitk.GetArrayFromImage(mirp) > 0
    (layer,) = read_labels(root / "dicom" / "mask" / "RS.dcm", g)
    assert layer.names == {1: "GTV_Mass_PET"}
    got = layer.array > 0
    assert abs(int(got.sum()) - int(expected.sum())) <= 0.01 * expected.sum()
    assert np.count_nonzero(got != expected) <= 0.01 * expected.sum()
    assert layer.native_volume_ml["GTV_Mass_PET"] == pytest.approx(expected.sum() * g.voxel_volume_ml, rel=0.03)


def test_roi_half_outside_the_field_of_view_warns_and_records_the_cut(tmp_path):
    g = _pet()
    edge_x = g.origin[0] + (g.shape[2] - 0.5) * g.spacing[2]  # the PET field of view ends here along x
    rois = {"half_out": _sphere_contours((edge_x, 0.0, 0.0), 20.0, 2.0, z0=0.5),
            "inside": _sphere_contours((0.0, 0.0, 0.0), 10.0, 2.0, z0=0.5)}
    rs = _write_rtstruct(tmp_path / "rs.dcm", rois)
    with pytest.warns(PetfeatWarning, match=r"1 ROI\(s\) reach outside the PET field of view.*'half_out' 5"):
        (layer,) = read_rtstruct(rs, g)
    assert layer.notes["half_out"]["outside_fov_fraction"] == pytest.approx(0.5, abs=0.02)
    assert layer.notes["inside"]["outside_fov_fraction"] == 0.0
    half_ml = np.count_nonzero(layer.array == 1) * g.voxel_volume_ml
    assert half_ml == pytest.approx(layer.native_volume_ml["half_out"] / 2, rel=0.05)


def test_oblique_pet_grid_and_oblique_contour_planes(tmp_path):
    """Axial contours onto a PET grid rotated 20 and 30 degrees; tilted planes onto an axial and a tilted grid."""
    a, b = np.deg2rad(20), np.deg2rad(30)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    rot = rz @ rx
    g = _pet(origin=tuple(rot @ np.array([-78.7, -81.3, -77.3])), direction=rot.ravel())
    rs = _write_rtstruct(tmp_path / "axial.dcm", {"sphere": _sphere_contours((0.0, 0.0, 0.0), RADIUS, 2.0, 0.4)})
    (layer,) = read_rtstruct(rs, g)
    assert np.count_nonzero(layer.array) * g.voxel_volume_ml == pytest.approx(SPHERE_ML, rel=0.05)
    tilted = rot[:, 2]
    rs = _write_rtstruct(tmp_path / "tilted.dcm",
                         {"sphere": _sphere_contours((0.0, 0.0, 0.0), RADIUS, 3.0, 0.4, axis=tilted)})
    for grid in (_pet(), g):  # tilted planes onto the axial grid, and onto the grid of the same tilt
        (layer,) = read_rtstruct(rs, grid)
        assert np.count_nonzero(layer.array) * grid.voxel_volume_ml == pytest.approx(SPHERE_ML, rel=0.05)
        assert layer.native_volume_ml["sphere"] == pytest.approx(SPHERE_ML, rel=0.03)


def test_irregular_plane_gaps_and_points_and_lines_skipped(tmp_path):
    """Planes 2 and 3 mm apart in turn; a POINT and an OPEN_PLANAR contour change nothing."""
    planes = np.cumsum(np.tile([2.0, 3.0], 30)) - 75.0
    contours = [_circle((0, 0, z), np.sqrt(RADIUS**2 - z * z)) for z in planes if abs(z) < RADIUS]
    marker = np.array([[0.0, 0.0, 0.1]])
    line = np.array([[-50.0, -50, 0.1], [50, 50, 0.1], [50, -50, 0.1]])
    rs = _write_rtstruct(tmp_path / "rs.dcm", {"sphere": [*contours, marker, line]},
                         types={("sphere", len(contours)): "POINT", ("sphere", len(contours) + 1): "OPEN_PLANAR"})
    (layer,) = read_rtstruct(rs, _pet())
    assert np.count_nonzero(layer.array) * _pet().voxel_volume_ml == pytest.approx(SPHERE_ML, rel=0.05)
    assert layer.native_volume_ml["sphere"] == pytest.approx(SPHERE_ML, rel=0.03)


def test_fifty_roi_structure_set_reads_in_seconds(tmp_path):
    """50 spheres contoured every 2 mm (1 135 contours) onto a 4 mm whole-body-like grid."""
    g = _pet(shape=(120, 90, 130), origin=(-258.7, -181.3, -400.6))
    rng = np.random.default_rng(3)
    rois = {}
    for i in range(50):
        c = rng.uniform([-200, -120, -340], [200, 120, 40])
        rois[f"roi_{i:02d}"] = _sphere_contours(c, rng.uniform(5, 40), 2.0, z0=0.5, n=96)
    n_contours = sum(len(v) for v in rois.values())
    rs = _write_rtstruct(tmp_path / "rs.dcm", rois)
    start = time.perf_counter()
    layers = read_rtstruct(rs, g)
    took = time.perf_counter() - start
    names = [n for layer in layers for n in layer.names.values()]
    assert sorted(names) == sorted(rois) and n_contours > 1000
    for layer in layers:
        for i, name in layer.names.items():
            assert np.count_nonzero(layer.array == i) * g.voxel_volume_ml == pytest.approx(
                layer.native_volume_ml[name], rel=0.1, abs=0.3)
    assert took < 20, f"{took:.1f} s for 50 ROIs"


def test_rtstruct_matches_an_independent_rasteriser_and_the_reference_suvs():
    """DRO_0_0's RTSTRUCT: petfeat's fill vs matplotlib point-in-polygon at voxel centres; SUVs 0.2/1/4."""
    from matplotlib.path import Path as MPath

    from petfeat.suv import compute_suv_factors

    series = read_pet_series(DRO / "DRO_0_0" / "PT")
    g = series.geometry
    rs = next((DRO / "DRO_0_0" / "RS").glob("*.dcm"))
    (layer,) = read_labels(rs, g)
    got = layer.array > 0
    ref = np.zeros(g.shape, bool)
    yy, xx = np.mgrid[0:g.shape[1], 0:g.shape[2]]
    centres = np.stack([xx.ravel() * g.spacing[2] + g.origin[0], yy.ravel() * g.spacing[1] + g.origin[1]], 1)
    for c in pydicom.dcmread(rs).ROIContourSequence[0].ContourSequence:
        p = np.asarray(c.ContourData, float).reshape(-1, 3)
        k = int(round((p[0, 2] - g.origin[2]) / g.spacing[0]))
        ref[k] ^= MPath(p[:, :2]).contains_points(centres).reshape(g.shape[1:])
    assert (ref != got).sum() <= 1e-4 * ref.sum()  # ties where a vertex sits exactly on a voxel centre
    assert layer.names == {1: "region_1"}
    suv = series.rescaled(np.float64) * compute_suv_factors(series.suv_header).suv_bw_factor
    v = suv[got]
    assert (v.min(), np.median(v), v.max()) == pytest.approx((0.2, 1.0, 4.0), abs=1e-4)


def test_rtstruct_refusals_name_the_file(tmp_path):
    series = read_pet_series(DRO / "DRO_0_0" / "PT")
    rs = next((DRO / "DRO_0_0" / "RS").glob("*.dcm"))
    far = dataclasses.replace(series.geometry, origin=tuple(v + 5000.0 for v in series.geometry.origin))
    with pytest.raises(LabelError, match=f"{rs.name}: no ROI contour lies inside the PET field of view"):
        read_rtstruct(rs, far)
    empty = pydicom.dcmread(rs)
    empty.ROIContourSequence = []
    empty.save_as(tmp_path / "empty_rs.dcm")
    with pytest.raises(LabelError, match="empty_rs.dcm: the RTSTRUCT holds no ROI contours"):
        read_rtstruct(tmp_path / "empty_rs.dcm", series.geometry)
    points = _write_rtstruct(tmp_path / "points_rs.dcm", {"marker": [np.array([[0.0, 0.0, 0.0]])]},
                             types={("marker", 0): "POINT"})
    with pytest.raises(LabelError, match="points_rs.dcm: the RTSTRUCT holds no ROI contours"):
        read_rtstruct(points, series.geometry)
    with pytest.raises(LabelError, match="Modality is 'PT', not RTSTRUCT"):
        read_rtstruct(series.files[0], series.geometry)


def test_roi_contoured_on_every_other_plane_is_read_as_continuous_with_a_warning(tmp_path):
    """One ROI on every 2 mm plane, another only on every second one: both keep the sphere's volume."""
    g = _pet()
    rois = {"every": _sphere_contours((0.0, 0.0, -30.0), 20.0, 2.0, z0=0.3),
            "every_other": _sphere_contours((0.0, 0.0, 30.0), RADIUS, 4.0, z0=0.3)}
    rs = _write_rtstruct(tmp_path / "rs.dcm", rois)
    with pytest.warns(PetfeatWarning, match=r"1 ROI\(s\) are contoured on fewer planes.*2 mm.*'every_other' every 4"):
        (layer,) = read_rtstruct(rs, g)
    ids = {name: i for i, name in layer.names.items()}
    assert np.count_nonzero(layer.array == ids["every_other"]) * g.voxel_volume_ml == pytest.approx(SPHERE_ML, rel=0.05)
    assert layer.native_volume_ml["every_other"] == pytest.approx(SPHERE_ML, rel=0.03)
    small = 4 / 3 * np.pi * 20.0**3 / 1000
    assert np.count_nonzero(layer.array == ids["every"]) * g.voxel_volume_ml == pytest.approx(small, rel=0.05)


def test_rois_drawn_on_planes_of_different_normals(tmp_path):
    """An axial ROI (every 2 mm) and a sagittal one (every 3 mm) in one structure set, each on its own stack."""
    g = _pet()
    rois = {"axial": _sphere_contours((-35.0, 0.0, 0.0), 25.0, 2.0, z0=0.3),
            "sagittal": _sphere_contours((35.0, 0.0, 0.0), 25.0, 3.0, z0=0.9, axis=(1, 0, 0))}
    rs = _write_rtstruct(tmp_path / "rs.dcm", rois)
    (layer,) = read_rtstruct(rs, g)
    want = 4 / 3 * np.pi * 25.0**3 / 1000
    for i, name in layer.names.items():
        assert np.count_nonzero(layer.array == i) * g.voxel_volume_ml == pytest.approx(want, rel=0.05), name
        assert layer.native_volume_ml[name] == pytest.approx(want, rel=0.03), name


def test_a_coarser_own_grid_for_large_rois_gives_the_same_pet_mask(tmp_path, monkeypatch):
    """An ROI's fine grid over the voxel budget gets pixels of a smaller odd fraction of the PET's: same PET mask."""
    import petfeat.io.rtstruct as rt

    g = _pet()
    rs = _write_rtstruct(tmp_path / "rs.dcm", {"sphere": _sphere_contours((1.1, -2.3, 0.0), RADIUS, 2.0, z0=-0.6)})
    (fine,) = read_rtstruct(rs, g)
    monkeypatch.setattr(rt, "MAX_FINE_VOXELS", 40_000)
    (coarse,) = read_rtstruct(rs, g)
    assert np.array_equal(fine.array, coarse.array)
    assert coarse.native_volume_ml["sphere"] == pytest.approx(SPHERE_ML, rel=0.05)
    assert coarse.native_volume_ml["sphere"] != fine.native_volume_ml["sphere"]  # the budget did coarsen the grid


def test_contour_points_parsed_from_the_raw_bytes_equal_pydicoms_values(reference_dir):
    """The fast ContourData parse against pydicom's own DS values, on the real RTSTRUCTs and on an in-memory item."""
    from petfeat.io.rtstruct import _contour_data

    files = [next((DRO / "DRO_0_0" / "RS").glob("*.dcm")),
             reference_dir / "mirp-sts" / "STS_001" / "dicom" / "mask" / "RS.dcm"]
    for f in files:
        fast = [_contour_data(c) for roi in pydicom.dcmread(f).ROIContourSequence for c in roi.ContourSequence]
        slow = [np.asarray(c.ContourData, float) for roi in pydicom.dcmread(f).ROIContourSequence
                for c in roi.ContourSequence]
        assert len(fast) == len(slow) > 0 and all(np.array_equal(a, b) for a, b in zip(fast, slow, strict=True))
    item = Dataset()
    item.ContourData = [1.5, -2.25, 3.0]
    assert np.array_equal(_contour_data(item), [1.5, -2.25, 3.0])


def test_plane_spacing_of_a_thin_slice_stack_is_not_rounded():
    """A 0.625 mm CT stack with 4 micron jitter: the spacing is 0.625 mm (0.62 or 0.63 drifts 2 mm over 400 planes)."""
    from petfeat.io.rtstruct import _common_gap

    planes = np.arange(400) * 0.625 - 130.0 + np.random.default_rng(0).uniform(-0.004, 0.004, 400)
    assert _common_gap(planes) == pytest.approx(0.625, abs=5e-4)
    assert _common_gap(np.array([3.0])) is None
    gaps = np.array([0.0, 2.0, 4.0, 9.0, 11.0, 14.0, 16.0])  # mostly 2 mm, one 5 mm and one 3 mm gap
    assert _common_gap(gaps) == pytest.approx(2.0)
