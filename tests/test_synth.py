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
