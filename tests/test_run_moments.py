"""The vector-IR run moments: 16-bit pixels against exact integer sums (Python ints), float pixels against
float64 sums of the same values in Python."""

from __future__ import annotations

import naive
import numpy as np
import pytest
from numba import njit
from petfeat.kernels.run_moments import BLOCK, FLOAT_BLOCK, run_moments16, run_moments_float


@njit(cache=False)
def _all_runs(s):
    """Moments of every run s[x:e], 0 <= x < e <= s.size, in row-major (x, e) order."""
    n = s.size
    out = np.empty((n * (n + 1) // 2, 4), np.int64)
    k = 0
    for x in range(n):
        for e in range(x + 1, n + 1):
            out[k, 0], out[k, 1], out[k, 2], out[k, 3] = run_moments16(s, x, e)
            k += 1
    return out


def _oracle(s):
    v = s.astype(object)  # Python ints: exact
    rows = []
    for x in range(s.size):
        for e in range(x + 1, s.size + 1):
            r = v[x:e]
            rows.append((sum(r), sum(t * t for t in r), min(r), max(r)))
    return np.array(rows, dtype=object)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
@pytest.mark.parametrize("size", [BLOCK, 3 * BLOCK + 5])
def test_every_run_of_a_short_array_is_exact(dtype, size):
    """Every start and stop: runs inside one block, across blocks, ending at the array's end (its last
    block is read ending there), full-range values including both extremes of the type."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(size)
    s = rng.integers(info.min, int(info.max) + 1, size).astype(dtype)
    s[[3, size - 1]] = info.min, info.max
    got = _all_runs(s)
    want = _oracle(s)
    assert (got.astype(object) == want).all()


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
def test_long_runs_at_the_extremes_stay_exact(dtype):
    """32768 values (the longest row the integer kernel takes) all at the type's largest magnitude."""
    info = np.iinfo(dtype)
    for value in (info.min, info.max):
        s = np.full(32768 + 7, value, dtype)
        got = [int(t) for t in _one(s, 3, 32768 + 3)]
        v = int(value)
        assert got == [32768 * v, 32768 * v * v, v, v]


@njit(cache=False)
def _one(s, x, e):
    return run_moments16(s, x, e)


def test_ir_is_generic_vector_code():
    """No target-specific intrinsic in the IR (Numba's own reference counting aside): LLVM lowers it for
    whatever CPU runs it."""
    import re

    s = np.arange(64, dtype=np.int16)
    _one(s, 0, 64)
    names = set(re.findall(r"llvm\.[a-z0-9_.]+", _one.inspect_llvm(_one.signatures[0])))
    assert {"llvm.vector.reduce.add.v32i32", "llvm.vector.reduce.add.v16i64"} <= names
    assert not [n for n in names if n.startswith("llvm.x86") and ".atomic." not in n]


def test_other_types_are_refused_at_compile_time():
    from numba.core.errors import TypingError

    with pytest.raises(TypingError):
        _one(np.arange(64, dtype=np.int32), 0, 5)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
def test_fused_pass_on_arrays_smaller_than_a_block(dtype):
    """Fewer voxels than one vector block: the fused pass takes its scalar loop and still matches the oracle."""
    from petfeat.kernels.reduce_cpu import fused_reduce_cpu

    rng = np.random.default_rng(3)
    stored = rng.integers(0, 30000, (2, 2, 7)).astype(dtype)
    assert stored.size < BLOCK
    codes = rng.integers(0, 3, stored.shape).astype(np.uint8)
    scale, offset = rng.uniform(0.5, 2.0, 2), rng.uniform(-1.0, 1.0, 2)
    p = fused_reduce_cpu(stored, codes, scale, offset, 3)
    naive.assert_partials_match(p, stored, codes, scale, offset, 3, 1e-12)


@njit(cache=False)
def _float_runs(s, a, b, k):
    """``run_moments_float`` of every run s[x:e], 0 <= x < e <= s.size, in row-major (x, e) order."""
    n = s.size
    out = np.empty((n * (n + 1) // 2, 5))
    r = 0
    for x in range(n):
        for e in range(x + 1, n + 1):
            out[r, 0], out[r, 1], out[r, 2], out[r, 3], out[r, 4] = run_moments_float(s, x, e, a, b, k)
            r += 1
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [FLOAT_BLOCK, 3 * FLOAT_BLOCK + 5])
@pytest.mark.parametrize("slope", [0.37, -2.5])
def test_every_float_run_against_python_sums(dtype, size, slope):
    """Every start and stop (inside a block, across blocks, the last block read ending at the array's end) of
    random values with NaN holes and an all-NaN stretch: count, shifted sums of the SUV, stored extremes."""
    rng = np.random.default_rng(size)
    s = (rng.standard_normal(size) * 1000).astype(dtype)
    s[rng.random(size) < 0.2] = np.nan
    s[5:9] = np.nan
    b, k = -3.0, 120.0
    got = _float_runs(s, slope, b, k)
    r = 0
    for x in range(size):
        for e in range(x + 1, size + 1):
            raw = [float(t) for t in s[x:e] if not np.isnan(t)]
            d = [t * slope + b - k for t in raw]
            want = (len(raw), sum(d), sum(t * t for t in d), max(raw, default=-np.inf), min(raw, default=np.inf))
            assert got[r, 0] == want[0] and got[r, 3] == want[3] and got[r, 4] == want[4], (x, e)
            scale = max(1.0, sum(abs(t) for t in d))
            assert abs(got[r, 1] - want[1]) <= 1e-13 * scale
            assert got[r, 2] == pytest.approx(want[2], rel=1e-13, abs=1e-300)
            r += 1


def test_float_ir_is_generic_vector_code():
    import re

    @njit(cache=False)
    def one(s):
        return run_moments_float(s, 1, 40, 2.0, 0.5, 1.0)

    one(np.arange(64, dtype=np.float32))
    names = set(re.findall(r"llvm\.[a-z0-9_.]+", one.inspect_llvm(one.signatures[0])))
    assert "llvm.vector.reduce.add.v16i32" in names
    assert not [n for n in names if n.startswith("llvm.x86") and ".atomic." not in n]


def test_float_runs_refuse_integer_arrays():
    from numba.core.errors import TypingError

    @njit(cache=False)
    def one(s):
        return run_moments_float(s, 0, 5, 1.0, 0.0, 0.0)

    with pytest.raises(TypingError):
        one(np.arange(64, dtype=np.int32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 2, 3), (3, 5, 9)])  # fewer voxels than a float block, and more
def test_fused_pass_on_float_pixels_with_nan(dtype, shape):
    """The float fused pass: its scalar loops below one vector block, the vector-IR runs above it; NaN voxels
    counted and left out."""
    from petfeat.kernels.reduce_cpu import fused_reduce_cpu

    rng = np.random.default_rng(4)
    stored = (rng.uniform(-100, 30000, shape)).astype(dtype)
    stored[rng.random(shape) < 0.15] = np.nan
    codes = rng.integers(0, 3, shape).astype(np.uint8)
    scale, offset = rng.uniform(-2.0, 2.0, shape[0]), rng.uniform(-1.0, 1.0, shape[0])
    p = fused_reduce_cpu(stored, codes, scale, offset, 3)
    naive.assert_partials_match(p, stored, codes, scale, offset, 3, 1e-12)


def test_plain_loop_fallback_gives_the_oracle_results(tmp_path):
    """With the vector-IR helpers off (as when a Numba release moves its internals), the fused pass is the same.

    Runs in a fresh process with an empty Numba cache, so the kernels are compiled against the plain loops.
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import numpy as np
import naive
from petfeat.kernels import fused_reduce
import petfeat.kernels.reduce_cpu as rc
assert rc.run_moments16.__module__.endswith("run_loops"), rc.run_moments16
rng = np.random.default_rng(5)
codes = rng.integers(0, 7, (6, 17, 70)).astype(np.uint8)
codes[:, :, 20:60] = np.repeat(rng.integers(0, 7, (6, 17, 1)), 40, axis=2)  # long runs: the block paths
for stored in (rng.integers(-3000, 30000, codes.shape).astype(np.int16),
               rng.integers(0, 60000, codes.shape).astype(np.uint16),
               rng.normal(3, 1, codes.shape).astype(np.float32)):
    if stored.dtype == np.float32:
        stored[0, 0, :5] = np.nan
    scale, offset = rng.uniform(0.5, 2, 6), rng.uniform(-1, 1, 6)
    p = fused_reduce(stored, codes, scale, offset, 7)
    naive.assert_partials_match(p, stored, codes, scale, offset, 7, 1e-9)
print("ok")
"""
    env = {**os.environ, "PETFEAT_LLVM_IR": "0", "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-3000:]
