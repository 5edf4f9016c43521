"""Which label keys occur and the key -> code lookup (the compiled loops of build_codes) against NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from petfeat.kernels import label_codes


@pytest.mark.parametrize("dtype, total", [(np.uint8, 256), (np.uint16, 4000), (np.int64, 70000)])
@pytest.mark.parametrize("size", [1000, 300_000])  # one chunk; several chunks in parallel
@pytest.mark.parametrize("order", ["random", "sorted"])  # sorted: each chunk sees keys no other chunk does
def test_marked_keys_and_lookup_match_numpy(dtype, total, size, order):
    """Few and many distinct keys, one chunk and several; 70000 keys take the single-thread table."""
    rng = np.random.default_rng(size + total)
    key = rng.integers(0, total, size).astype(dtype)
    key[key % 7 == 3] = 0  # keys that never occur
    if order == "sorted":
        key.sort()
    want = np.zeros(total, bool)
    want[key] = True
    present = np.zeros(total, bool)
    label_codes.mark_present(key.reshape(10, -1), present)
    np.testing.assert_array_equal(present, want)
    present[:] = False  # the table accumulates: two halves mark what the whole does
    label_codes.mark_present(key[: size // 2], present)
    label_codes.mark_present(key[size // 2:], present)
    np.testing.assert_array_equal(present, want)
    lut = rng.permutation(total).astype(np.uint32)
    out = np.empty((10, size // 10), np.uint32)
    label_codes.apply_lut(key.reshape(10, -1), lut, out)
    np.testing.assert_array_equal(out.reshape(-1), lut[key])


def test_apply_lut_refuses_an_output_it_cannot_fill():
    key = np.zeros((4, 6), np.uint8)
    with pytest.raises(ValueError, match="C-contiguous"):
        label_codes.apply_lut(key, np.arange(3, dtype=np.uint8), np.zeros((6, 4), np.uint8).T)
    with pytest.raises(ValueError, match="shape"):
        label_codes.apply_lut(key, np.arange(3, dtype=np.uint8), np.zeros((4, 5), np.uint8))
