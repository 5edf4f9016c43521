"""Slow, obviously-correct float64 NumPy oracles for the kernels and features."""

from __future__ import annotations

import numpy as np

PEAK_RADIUS_MM = 10.0 * (3.0 / (4.0 * np.pi)) ** (1.0 / 3.0)


def suv(stored, scale, offset):
    return stored.astype(np.float64) * scale[:, None, None] + offset[:, None, None]


def region_stats(values: np.ndarray, mask: np.ndarray) -> dict:
    v = values[mask]
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"count": 0}
    flat = np.flatnonzero(mask.ravel())
    vals = values.ravel()[flat]
    ok = ~np.isnan(vals)
    return {"count": v.size, "mean": v.mean(), "var": ((v - v.mean()) ** 2).mean(), "min": v.min(), "max": v.max(),
            "argmax": flat[ok][np.argmax(vals[ok])], "argmin": flat[ok][np.argmin(vals[ok])]}


def peaks(values: np.ndarray, mask: np.ndarray, spacing) -> tuple[float, float]:
    """IBSI global and local intensity peak by brute force over the whole image."""
    zz, yy, xx = np.indices(values.shape)
    pts = np.stack([zz.ravel(), yy.ravel(), xx.ravel()], 1) * np.asarray(spacing, float)
    flat = values.ravel()
    roi = np.flatnonzero(mask.ravel() & ~np.isnan(flat))
    if roi.size == 0:
        return np.nan, np.nan
    means = np.empty(roi.size)
    for k, i in enumerate(roi):
        near = ((pts - pts[i]) ** 2).sum(1) <= PEAK_RADIUS_MM**2 * (1 + 1e-12)
        w = flat[near]
        means[k] = w[~np.isnan(w)].mean()
    vmax = flat[roi].max()
    return means.max(), means[flat[roi] == vmax].max()


def assert_partials_match(p, stored, codes, scale, offset, n_codes: int, rtol: float) -> None:
    """Every code's partial is the oracle's: count, mean, variance, extremes and their first index.

    Code 0 is never reduced; an empty code (or one with only NaN values) has count 0 and infinite
    extremes; NaN values are counted apart.
    """
    import pytest

    values = suv(stored, scale, offset)
    assert p.count[0] == 0
    for c in range(1, n_codes):
        ref = region_stats(values, codes == c)
        assert p.count[c] == ref["count"]
        assert p.nan_count[c] == int(np.isnan(values[codes == c]).sum())
        if ref["count"] == 0:
            assert p.max[c] == -np.inf and p.min[c] == np.inf
            continue
        assert p.mean[c] == pytest.approx(ref["mean"], rel=rtol)
        assert p.m2[c] / p.count[c] == pytest.approx(ref["var"], rel=rtol, abs=1e-15)
        assert p.max[c] == pytest.approx(ref["max"], rel=1e-12) and p.min[c] == pytest.approx(ref["min"], rel=1e-12)
        assert p.argmax[c] == ref["argmax"] and p.argmin[c] == ref["argmin"]
