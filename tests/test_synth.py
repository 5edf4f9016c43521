"""The synthetic phantom's shapes: the boxed rasterisation equals the plain formula on every voxel."""

from __future__ import annotations

import numpy as np

from petfeat.synth.phantom import Ellipsoid, grid_coordinates


def test_ellipsoids_on_axis_vectors_and_full_grids_equal_the_formula():
    """Ellipsoids inside, across the edges and outside the grid; axis vectors take the boxed path."""
    rng = np.random.default_rng(1)
    x, y, z = grid_coordinates((30, 24, 20), (5.0, 2.5, 3.0), (-20.0, -30.0, 10.0))
    full = np.broadcast_arrays(x, y, z)
    for _ in range(200):
        e = Ellipsoid(tuple(rng.uniform(-80, 200, 3)), tuple(rng.uniform(0.5, 120, 3)))
        want = sum(((v - c) / r) ** 2 for v, c, r in zip(full, e.centre, e.radii, strict=True)) <= 1.0
        np.testing.assert_array_equal(e.inside(x, y, z), want)
        np.testing.assert_array_equal(e.inside(*full), want)
        out = np.zeros(want.shape, bool)
        out[0, 0, 0] = True  # painting ORs into what is there
        e.paint(out, x, y, z)
        want[0, 0, 0] = True
        np.testing.assert_array_equal(out, want)


def test_same_seed_writes_the_same_uids_so_a_rerun_resumes(tmp_path):
    import pydicom

    from petfeat.synth import generate_archive

    def uids(folder):
        files = sorted(folder.rglob("pet/*.dcm"))
        return [(d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID, d.FrameOfReferenceUID)
                for d in (pydicom.dcmread(f, stop_before_pixels=True) for f in files)]

    generate_archive(tmp_path / "a", 1, seed=3, voxel_mm=16.0)
    generate_archive(tmp_path / "b", 1, seed=3, voxel_mm=16.0)
    generate_archive(tmp_path / "c", 1, seed=4, voxel_mm=16.0)
    a, b, c = uids(tmp_path / "a"), uids(tmp_path / "b"), uids(tmp_path / "c")
    assert a and a == b
    assert len({u[2] for u in a}) == len(a)  # one SOP instance UID per slice
    assert not {u[0] for u in a} & {u[0] for u in c} and not {u[2] for u in a} & {u[2] for u in c}
