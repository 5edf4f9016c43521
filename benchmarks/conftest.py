"""Shared inputs of the kernel benchmarks: a 600 x 200 x 200 int16 PET-like volume and label layouts."""

from __future__ import annotations

import numpy as np
import pytest

SHAPE = (600, 200, 200)


def blocky_codes(rng, shape, n_labels):
    """Organ-like labels: random boxes covering roughly a third of the volume; later boxes overwrite."""
    codes = np.zeros(shape, np.uint8)
    for lab in range(1, n_labels + 1):
        size = [max(3, int(s * rng.uniform(0.1, 0.35))) for s in shape]
        start = [int(rng.integers(0, s - d)) for s, d in zip(shape, size, strict=True)]
        codes[tuple(slice(a, a + d) for a, d in zip(start, size, strict=True))] = lab
    return codes


@pytest.fixture(scope="session")
def volume():
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 32000, SHAPE, dtype=np.int16)
    scale = rng.uniform(1e-4, 2e-4, SHAPE[0])
    offset = np.zeros(SHAPE[0])
    return stored, scale, offset


@pytest.fixture(scope="session", params=[10, 60], ids=lambda n: f"{n}labels")
def labels(request):
    rng = np.random.default_rng(request.param)
    codes = blocky_codes(rng, SHAPE, request.param)
    return codes, request.param + 1
