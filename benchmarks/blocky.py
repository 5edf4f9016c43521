"""The A/B scripts' test volume: 600 x 200 x 200 int16 pixels and blocky (box-shaped) labels."""

from __future__ import annotations

import numpy as np

SHAPE = (600, 200, 200)


def blocky_volume(rng: np.random.Generator, shape=SHAPE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random int16 pixels and per-slice scale/offset (SUV = stored x scale + offset)."""
    stored = rng.integers(0, 30000, shape).astype(np.int16)
    return stored, rng.uniform(1e-4, 2e-4, shape[0]), np.zeros(shape[0])


def blocky_codes(rng: np.random.Generator, n_labels: int, box=(60, 40, 40), shape=SHAPE) -> np.ndarray:
    """``n_labels`` boxes of ``box`` voxels at random places (later boxes overwrite earlier ones)."""
    codes = np.zeros(shape, np.uint8)
    for k in range(1, n_labels + 1):
        z0, y0, x0 = (int(rng.integers(0, s - b)) for s, b in zip(shape, box, strict=True))
        codes[z0:z0 + box[0], y0:y0 + box[1], x0:x0 + box[2]] = k
    return codes
