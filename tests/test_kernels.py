"""Fused reduction and SUVpeak kernels against the float64 NumPy oracle, on both backends."""

from __future__ import annotations

from dataclasses import fields
from functools import partial

import naive
import numpy as np
import pytest
from conftest import RTOL
from petfeat.kernels.partials import Partials, merge

from petfeat import kernels
from petfeat.features import sphere_offsets


def _volume(rng, shape, dtype):
    if dtype == np.float32:
        return rng.normal(3.0, 2.0, shape).astype(np.float32)
    info = np.iinfo(dtype)
    lo = max(info.min, -2000)
    return rng.integers(lo, min(info.max, 30000), shape).astype(dtype)


def _layout(rng, shape, kind):
    nz, ny, nx = shape
    if kind == "few_blocky":  # spatially coherent labels (long runs), 3 labels + background
        codes = np.zeros(shape, np.uint8)
        codes[:, : ny // 2, : nx // 2] = 1
        codes[nz // 2 :, ny // 2 :, :] = 2
        codes[:, :, nx - 2 :] = 3
        return codes, 5  # code 4 is empty
    if kind == "many_random":  # many labels, every voxel a new run
        return rng.integers(0, 40, shape).astype(np.uint16), 40
    if kind == "one_voxel":
        codes = np.zeros(shape, np.uint8)
        codes[1, 2, 3] = 1
        codes[nz - 1, ny - 1, nx - 1] = 2
        return codes, 3
    raise ValueError(kind)


SHAPES = {"cpu": (9, 13, 17), "gpu": (5, 7, 11)}  # the simulator runs every thread in Python


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.float32])
@pytest.mark.parametrize("layout", ["few_blocky", "many_random", "one_voxel"])
@pytest.mark.parametrize("signs", ["positive", "mixed"])  # mixed: some slices with a negative slope
def test_fused_reduce_matches_oracle(backend, dtype, layout, signs):
    rng = np.random.default_rng(hash((dtype.__name__, layout)) % 2**32)
    shape = SHAPES[backend]
    stored = _volume(rng, shape, dtype)
    codes, n_codes = _layout(rng, shape, layout)
    scale = rng.uniform(1e-4, 2e-3, shape[0])  # per-slice slope x SUV factor
    if signs == "mixed":
        scale[::2] *= -1
    offset = rng.uniform(-0.01, 0.01, shape[0])
    p = kernels.fused_reduce(stored, codes, scale, offset, n_codes, backend=backend)
    naive.assert_partials_match(p, stored, codes, scale, offset, n_codes, RTOL)


def test_sparse_wide_rows_match_oracle(backend):
    # rows long enough for the CPU run scan (a 64-bit word of codes per step): all-background rows, runs
    # that start at, inside and just after a 16-code block, runs at both row ends, long background stretches
    rng = np.random.default_rng(11)
    shape = (4, 6, 53)
    stored = _volume(rng, shape, np.int16)
    codes = np.zeros(shape, np.uint8)
    codes[0, 0, 0:3] = 1
    codes[0, 0, 50:53] = 2
    codes[0, 1, 16] = 3
    codes[0, 1, 15] = 1
    codes[1, 2, 31:33] = 2
    codes[1, 3, 32:48] = 3
    codes[2, 4, 47] = 1
    codes[2, 3, 16] = 2  # the first code after exactly one background block
    codes[2, 2, 32] = 3  # ... after exactly two
    codes[3, 5] = rng.integers(0, 4, 53) * (rng.random(53) < 0.2)
    scale = rng.uniform(1e-4, 2e-3, shape[0])
    offset = rng.uniform(-0.01, 0.01, shape[0])
    p = kernels.fused_reduce(stored, codes, scale, offset, 4, backend=backend)
    assert (p.count[1:4] > 0).all()  # every code has voxels
    naive.assert_partials_match(p, stored, codes, scale, offset, 4, RTOL)


def _runs(row):
    """Runs of one non-zero code in a row, by NumPy: [(start, end, code)]."""
    edges = np.flatnonzero(np.diff(np.concatenate([[-1], row.astype(np.int64), [-1]])) != 0)
    return [(int(a), int(b), int(row[a])) for a, b in zip(edges[:-1], edges[1:], strict=True) if row[a] != 0]


@pytest.mark.parametrize("code_dtype", [np.uint8, np.uint16, np.uint32])
def test_cpu_run_scan_finds_every_run(code_dtype):
    """The word-at-a-time run scan against NumPy on rows whose runs start and end at every offset of a word."""
    from numba import njit
    from petfeat.kernels.reduce_cpu import _next_run

    @njit
    def scan(row, x0):
        out = []
        x = x0
        while x < row.shape[0]:
            x, e, c = _next_run(row, x, row.shape[0])
            if x >= row.shape[0]:
                break
            out.append((x, e, c))
            x = e
        return out

    rng = np.random.default_rng(4)
    big = np.iinfo(code_dtype).max  # codes with every bit set must not look like a run end
    for nx in (1, 7, 8, 9, 37, 64, 203):
        for _ in range(40):
            row = np.repeat(rng.choice([0, 0, 1, 2, big], 60), rng.integers(1, 19, 60))[:nx].astype(code_dtype)
            x0 = int(rng.integers(0, nx))  # the scan may start anywhere, not only at a word boundary
            expect = [(max(a, x0), b, c) for a, b, c in _runs(row) if b > x0]
            assert [tuple(int(v) for v in r) for r in scan(row, x0)] == expect, (nx, x0, row)


@pytest.mark.parametrize("code_dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_code_word_packs_codes_little_endian_at_every_offset(code_dtype):
    """The one-load code word holds ``c[i:i + 64 // bits]``, lane k in bits ``[k * bits, (k + 1) * bits)``,
    at aligned and unaligned offsets (codes with every bit set, so no lane leaks into another)."""
    from numba import njit
    from petfeat.kernels.reduce_cpu import _code_word

    @njit
    def words(c, n):
        out = np.empty(n, np.uint64)
        for i in range(n):
            out[i] = _code_word(c, i)
        return out

    bits = np.dtype(code_dtype).itemsize * 8
    per = 64 // bits
    rng = np.random.default_rng(9)
    c = rng.integers(0, np.iinfo(code_dtype).max, 40, dtype=code_dtype, endpoint=True)
    c[::5] = np.iinfo(code_dtype).max
    got = words(c, c.size - per + 1)
    for i, w in enumerate(got):
        expect = sum(int(v) << (k * bits) for k, v in enumerate(c[i:i + per]))
        assert int(w) == expect, (i, hex(int(w)), hex(expect))


@pytest.mark.parametrize("code_dtype", [np.uint8, np.uint16, np.uint32])
def test_fused_reduce_over_code_widths(backend, code_dtype):
    rng = np.random.default_rng(8)
    shape = (3, 4, 37)  # rows not a whole number of 64-bit words of codes
    stored = _volume(rng, shape, np.int16)
    codes = np.repeat(rng.choice([0, 1, 2, 3], 100), rng.integers(1, 12, 100))[:stored.size]
    codes = np.resize(codes, shape).astype(code_dtype)
    scale, offset = rng.uniform(1e-4, 2e-3, shape[0]), rng.uniform(-0.01, 0.01, shape[0])
    p = kernels.fused_reduce(stored, codes, scale, offset, 4, backend=backend)
    assert (p.count[1:4] > 0).all()  # every code has voxels
    naive.assert_partials_match(p, stored, codes, scale, offset, 4, RTOL)


def test_integer_moments_are_exact_on_long_uint16_rows(monkeypatch):
    """uint16 pixels near 65535 on a 4096-voxel row: the integer kernel's M2 is the exact rational value;
    with the row limit lowered below the row length the float kernel takes over and agrees."""
    from fractions import Fraction

    from petfeat.kernels import reduce_cpu

    rng = np.random.default_rng(6)
    stored = rng.integers(65500, 65536, (2, 1, 4096)).astype(np.uint16)
    codes = np.ones(stored.shape, np.uint8)
    codes[1, 0, 100:200] = 2
    n = int((codes == 1).sum())
    vals = [int(v) for v in stored[codes == 1]]
    s1, s2 = sum(vals), sum(v * v for v in vals)
    m2_exact = Fraction(n * s2 - s1 * s1, n)  # scale 1, offset 0: SUV = stored
    ones, zeros = np.ones(2), np.zeros(2)
    p = reduce_cpu.fused_reduce_cpu(stored, codes, ones, zeros, 3)
    assert p.count[1] == n and p.mean[1] == float(Fraction(s1, n))
    assert p.m2[1] == pytest.approx(float(m2_exact), rel=1e-13)
    monkeypatch.setattr(reduce_cpu, "MAX_EXACT_ROW", 1024)
    q = reduce_cpu.fused_reduce_cpu(stored, codes, ones, zeros, 3)
    assert q.m2[1] == pytest.approx(float(m2_exact), rel=1e-9)
    assert q.argmax[1] == p.argmax[1] and q.argmin[2] == p.argmin[2]


@pytest.mark.parametrize("n_chunks", [1, 4])
def test_integer_groups_stay_exact_at_their_bound(n_chunks):
    """Rows of 23170 uint16 voxels near 65535: a code's group (its runs in one slice) holds at most
    MAX_EXACT_GROUP = 2 x 23170 voxels, for which n S2 and S1^2 stay below 2**63. Code 1 in a slice with a
    positive slope, code 2 in one with a negative slope: their extremes come from either end of the stored
    values, with many ties across runs, groups and chunks (one chunk: groups of two rows; four: chunks
    that end inside a slice)."""
    from fractions import Fraction

    from petfeat.kernels import reduce_cpu
    from petfeat.kernels.partials import merge_stack

    nx = 23170
    assert reduce_cpu.MAX_EXACT_GROUP // nx == 2
    rng = np.random.default_rng(13)
    stored = rng.integers(65000, 65536, (2, 3, nx)).astype(np.uint16)
    codes = np.ones(stored.shape, np.uint8)
    codes[1] = 2
    scale, offset = np.array([1.0, -1.0]), np.zeros(2)
    p = merge_stack(*reduce_cpu.fused_partials(stored, codes, scale, offset, 3, n_chunks, exact=True))
    values = naive.suv(stored, scale, offset)
    for c, sign in ((1, 1), (2, -1)):
        ints = [sign * int(v) for v in stored[c - 1].ravel()]  # SUV, exactly
        n, s1, s2 = len(ints), sum(ints), sum(v * v for v in ints)
        assert p.count[c] == n and p.mean[c] == pytest.approx(float(Fraction(s1, n)), rel=1e-15)
        assert p.m2[c] == pytest.approx(float(Fraction(n * s2 - s1 * s1, n)), rel=1e-13)
        ref = naive.region_stats(values, codes == c)
        assert p.argmax[c] == ref["argmax"] and p.argmin[c] == ref["argmin"]
        assert p.max[c] == ref["max"] and p.min[c] == ref["min"]


def test_prefetch_emits_the_llvm_hint_and_reads_nothing():
    """The prefetch intrinsic compiles to llvm.prefetch and may point past the end of the array."""
    from numba import njit
    from petfeat.kernels.prefetch import prefetch

    @njit
    def total(a):
        s = 0
        for i in range(a.size):
            prefetch(a, np.uint64(i + 10**9))  # far outside the array: a hint never faults
            s += a[i]
        return s

    a = np.arange(100, dtype=np.int16)
    assert total(a) == 4950
    assert "llvm.prefetch" in total.inspect_llvm(total.signatures[0])


def test_cpu_and_gpu_agree(gpu):
    rng = np.random.default_rng(11)
    stored = rng.integers(0, 20000, (6, 8, 9)).astype(np.int16)
    codes = rng.integers(0, 6, stored.shape).astype(np.uint8)
    scale, offset = rng.uniform(1e-4, 1e-3, 6), np.zeros(6)
    a = kernels.fused_reduce(stored, codes, scale, offset, 6, backend="cpu")
    b = kernels.fused_reduce(stored, codes, scale, offset, 6, backend="gpu")
    for name in ("count", "argmax", "argmin"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for name in ("mean", "m2", "min", "max"):
        np.testing.assert_allclose(getattr(a, name)[1:], getattr(b, name)[1:], rtol=RTOL)


def test_ties_take_the_smallest_index(backend):
    stored = np.full((3, 4, 5), 100, np.int16)
    codes = np.ones_like(stored, np.uint8)
    p = kernels.fused_reduce(stored, codes, np.ones(3), np.zeros(3), 2, backend=backend)
    assert p.argmax[1] == 0 and p.argmin[1] == 0 and p.m2[1] == 0.0


def test_nan_voxels_counted_and_excluded(backend):
    rng = np.random.default_rng(5)
    stored = rng.normal(2, 1, (4, 5, 6)).astype(np.float32)
    stored[1, 2, 3] = np.nan
    stored[3, 0, 0] = np.nan
    codes = np.ones(stored.shape, np.uint8)
    codes[3] = 2
    p = kernels.fused_reduce(stored, codes, np.ones(4), np.zeros(4), 3, backend=backend)
    ref = naive.region_stats(stored.astype(np.float64), codes == 1)
    assert p.nan_count[1] == 1 and p.nan_count[2] == 1
    assert p.count[1] == ref["count"] and p.mean[1] == pytest.approx(ref["mean"], rel=RTOL)


@pytest.mark.parametrize("dtype", [np.float32, np.int32])  # both take the float kernel on the CPU
def test_float_kernel_with_nan_runs_matches_oracle(backend, dtype):
    """NaN at run starts, inside runs and filling whole runs; ties; negative slopes: every partial field."""
    rng = np.random.default_rng(12)
    shape = (4, 5, 23)
    stored = rng.integers(-50, 50, shape).astype(dtype)  # few distinct values: many ties
    codes = np.resize(np.repeat(rng.choice([0, 1, 2, 3], 80), rng.integers(1, 9, 80)), shape).astype(np.uint8)
    if dtype == np.float32:
        stored[rng.random(shape) < 0.25] = np.nan
        stored[codes == 3] = np.nan  # a label with no finite voxel
    scale = rng.uniform(0.5, 2.0, shape[0])
    scale[1::2] *= -1
    offset = rng.uniform(-1, 1, shape[0])
    p = kernels.fused_reduce(stored, codes, scale, offset, 4, backend=backend)
    values = naive.suv(stored, scale, offset)
    for c in range(1, 4):
        ref = naive.region_stats(values, codes == c)
        assert p.count[c] == ref["count"]
        assert p.nan_count[c] == int(np.isnan(values[codes == c]).sum())
        if ref["count"] == 0:
            assert dtype == np.float32 and c == 3 and p.max[c] == -np.inf
            continue
        assert p.mean[c] == pytest.approx(ref["mean"], rel=RTOL)
        assert p.m2[c] / p.count[c] == pytest.approx(ref["var"], rel=RTOL)
        assert p.max[c] == ref["max"] and p.min[c] == ref["min"]
        assert p.argmax[c] == ref["argmax"] and p.argmin[c] == ref["argmin"]


def test_variance_is_not_lost_to_cancellation(backend):
    """Values 1e4 +- 1e-3: naive sum of squares in float64 loses most digits; shifted sums do not."""
    rng = np.random.default_rng(2)
    stored = rng.integers(-1000, 1000, (4, 6, 8)).astype(np.int16)
    scale, offset = np.full(4, 1e-6), np.full(4, 1e4)
    codes = np.ones(stored.shape, np.uint8)
    p = kernels.fused_reduce(stored, codes, scale, offset, 2, backend=backend)
    v = naive.suv(stored, scale, offset)
    assert p.m2[1] / p.count[1] == pytest.approx(v.var(), rel=1e-6)



@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_cpu_fused_pass_gives_the_same_bits_on_any_thread_count(dtype):
    """The chunks' moments merge in one order whatever the threads: a study's numbers do not depend on the machine."""
    from petfeat.kernels.reduce_cpu import fused_reduce_cpu
    from petfeat.kernels.threads import limited_threads

    rng = np.random.default_rng(11)
    stored = (rng.integers(-200, 3000, (40, 64, 64)) if dtype == np.int16 else rng.gamma(2.0, 300.0, (40, 64, 64)))
    stored = stored.astype(dtype)
    codes = rng.integers(0, 7, stored.shape).astype(np.uint8)
    scale, offset = rng.uniform(0.5, 2.0, 40), rng.uniform(-1.0, 1.0, 40)
    runs = []
    for threads in (1, 2):
        with limited_threads(threads):
            runs.append(fused_reduce_cpu(stored, codes, scale, offset, 7))
    for f in fields(runs[0]):
        assert np.array_equal(getattr(runs[0], f.name), getattr(runs[1], f.name), equal_nan=True), f.name
    naive.assert_partials_match(runs[0], stored, codes, scale, offset, 7, RTOL)


def test_merge_is_associative_and_has_identity():
    rng = np.random.default_rng(9)

    def part(x):
        return Partials(np.array([x.size]), np.array([x.mean()]), np.array([((x - x.mean()) ** 2).sum()]),
                        np.array([x.min()]), np.array([x.max()]), np.array([0]), np.array([1]), np.array([0]))

    a, b, c = (part(rng.normal(m, 1, n)) for m, n in ((1, 10), (50, 3), (-4, 7)))
    left, right = merge(merge(a, b), c), merge(a, merge(b, c))
    for f in ("count", "mean", "m2", "min", "max"):
        np.testing.assert_allclose(getattr(left, f), getattr(right, f), rtol=1e-12)
    e = merge(Partials.empty(1), a)
    np.testing.assert_allclose(e.mean, a.mean) and np.testing.assert_allclose(e.m2, a.m2)


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (3.27, 2.0, 4.07)])
def test_suv_peak_matches_oracle(backend, spacing):
    rng = np.random.default_rng(21)
    shape = (6, 7, 8) if backend == "gpu" else (8, 10, 11)
    stored = rng.integers(0, 5000, shape).astype(np.int16)
    scale, offset = rng.uniform(5e-4, 1e-3, shape[0]), np.zeros(shape[0])
    codes = np.zeros(shape, np.uint8)
    codes[1:4, 2:5, 1:6] = 1
    codes[4:, :3, 5:] = 2  # touches the border: sphere partly outside the image
    codes[0, 0, 0] = 3
    values = naive.suv(stored, scale, offset)
    stored[2, 3, 2] = stored[2, 3, 4] = stored[codes == 1].max()  # a tie for the hottest voxel
    values = naive.suv(stored, scale, offset)
    # regions: 0 -> code 1, 1 -> codes 1 and 2, 2 -> code 3
    regions = [[1], [1, 2], [3]]
    ptr = np.array([0, 0, 2, 3, 4])
    flat = np.array([0, 1, 1, 2])
    rmax = np.array([values[np.isin(codes, r)].max() for r in regions])
    glob, loc = kernels.suv_peak(stored, codes, scale, offset, sphere_offsets(spacing), ptr, flat, rmax, 3,
                                 backend=backend)
    for k, r in enumerate(regions):
        g_ref, l_ref = naive.peaks(values, np.isin(codes, r), spacing)
        assert glob[k] == pytest.approx(g_ref, rel=RTOL) and loc[k] == pytest.approx(l_ref, rel=RTOL)


def test_peak_sphere_counts_compile_once():
    """Rows at the image faces and voxels near the x faces count the sphere's voxels inside the image with one
    compiled ``_in_image`` (each specialisation is seconds of a fresh install). Its two callers are compiled
    afresh here (their cached code would not type the call), with the argument types of the SUVpeak kernel."""
    from numba import njit, typeof
    from petfeat.kernels import peak_cpu

    vol, f64, i64 = np.zeros((3, 3, 3), np.int16), np.zeros(3), np.zeros(3, np.int64)
    border_args = (vol, f64, 1, 1, 1, i64, i64, i64, 1.0, True)
    slice_args = (vol, vol.astype(np.uint8), f64, f64, 1, np.zeros(4, np.int64), i64, i64, i64, 1, 1, 1, f64, 1, 1, 1,
                  1, 1.0, True, np.zeros(3, np.bool_), i64, i64, f64, f64, f64)
    for fn, args in ((peak_cpu._border_mean, border_args), (peak_cpu._sphere_slice, slice_args)):
        njit(nogil=True)(fn.py_func).compile(tuple(typeof(a) for a in args))
    assert len(peak_cpu._in_image.signatures) == 1, peak_cpu._in_image.signatures


def test_peak_on_scattered_codes_merges_each_warps_runs_by_code(backend):
    """Codes change from voxel to voxel (runs of one to a few voxels, a code back after another one inside a
    warp's 32 voxels), overlapping regions: the GPU's per-warp merge of sphere means by run of equal code
    must lose no voxel's mean."""
    rng = np.random.default_rng(41)
    shape = (4, 5, 16)
    stored = rng.integers(-2000, 30000, shape).astype(np.int16)
    scale, offset = rng.uniform(5e-4, 1e-3, shape[0]), rng.uniform(-0.1, 0.1, shape[0])
    codes = np.repeat(rng.integers(0, 5, shape[0] * shape[1] * shape[2] // 2), 2).reshape(shape).astype(np.uint8)
    codes[rng.random(shape) < 0.3] = rng.integers(0, 5)  # runs of one voxel, too
    values = naive.suv(stored, scale, offset)
    regions = [[1], [2], [3], [4], [1, 3], [2, 3, 4]]
    ptr, flat = _csr(regions, 5)
    rmax = np.array([values[np.isin(codes, r)].max() for r in regions])
    spacing = (4.0, 4.0, 4.0)
    glob, loc = kernels.suv_peak(stored, codes, scale, offset, sphere_offsets(spacing), ptr, flat, rmax, len(regions),
                                 backend=backend)
    for k, r in enumerate(regions):
        g_ref, l_ref = naive.peaks(values, np.isin(codes, r), spacing)
        assert glob[k] == pytest.approx(g_ref, rel=RTOL) and loc[k] == pytest.approx(l_ref, rel=RTOL), k


@pytest.mark.parametrize("order", ["fortran", "strided"])
def test_non_contiguous_inputs_give_the_same_results(backend, order):
    """The kernels index flat views; views in another memory order must give what contiguous arrays give."""
    rng = np.random.default_rng(31)
    shape = SHAPES[backend]
    stored = _volume(rng, shape, np.int16)
    codes, n_codes = _layout(rng, shape, "few_blocky")
    scale, offset = rng.uniform(5e-4, 1e-3, shape[0]), rng.uniform(-0.01, 0.01, shape[0])
    if order == "fortran":
        s_view, c_view = np.asfortranarray(stored), np.asfortranarray(codes)
    else:  # every other voxel of a twice-as-wide array
        s_view = np.zeros(shape[:2] + (2 * shape[2],), stored.dtype)[:, :, ::2]
        c_view = np.zeros(shape[:2] + (2 * shape[2],), codes.dtype)[:, :, ::2]
        s_view[...], c_view[...] = stored, codes
    assert not s_view.flags.c_contiguous and not c_view.flags.c_contiguous
    p = kernels.fused_reduce(stored, codes, scale, offset, n_codes, backend=backend)
    q = kernels.fused_reduce(s_view, c_view, scale, offset, n_codes, backend=backend)
    # the CPU is deterministic; the GPU's float atomics may add in another order from one call to the next
    same = np.testing.assert_array_equal if backend == "cpu" else partial(np.testing.assert_allclose, rtol=1e-12)
    for field in fields(Partials):
        same(getattr(q, field.name), getattr(p, field.name), err_msg=field.name)
    ptr, flat = _csr([[c] for c in range(1, n_codes)], n_codes)  # region k <- code k + 1
    args = (scale, offset, sphere_offsets((2.0, 2.0, 2.0)), ptr, flat, p.max[1:], n_codes - 1)
    for u, v in zip(kernels.suv_peak(stored, codes, *args, backend=backend),
                    kernels.suv_peak(s_view, c_view, *args, backend=backend), strict=True):
        same(v, u)


def _peak_case(rng, shape, dtype, n_labels):
    """Random pixels, blob labels (some touching the faces), overlapping regions, a non-zero offset."""
    stored = _volume(rng, shape, dtype)
    codes = np.zeros(shape, np.uint8)
    for lab in range(1, n_labels + 1):
        lo = [int(rng.integers(0, s)) for s in shape]
        hi = [min(s, a + int(rng.integers(1, 5))) for s, a in zip(shape, lo, strict=True)]
        codes[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = lab
    scale = rng.uniform(5e-4, 1e-3, shape[0])
    scale[1::3] *= -1  # negative slopes turn the hottest stored value into the coldest SUV
    offset = rng.uniform(-0.5, 0.5, shape[0])
    regions = [[c] for c in range(1, n_labels + 1)] + [list(range(1, n_labels + 1, 2)), [n_labels + 1]]
    return stored, codes, scale, offset, regions


def _csr(regions, n_codes):
    per_code = [[r for r, codes in enumerate(regions) if c in codes] for c in range(n_codes)]
    ptr = np.concatenate([[0], np.cumsum([len(x) for x in per_code])]).astype(np.int64)
    return ptr, np.asarray([r for x in per_code for r in x], np.int64)


@pytest.mark.parametrize("code_dtype", [np.uint8, np.uint16])
def test_peak_region_boxes_match_numpy(code_dtype):
    """The SUVpeak's per-slice box of voxels whose code has a region (word-at-a-time scans from both row
    ends) against NumPy: codes in no region, empty slices, rows not a whole number of words, one-voxel rows."""
    from petfeat.kernels.peak_cpu import _roi_boxes

    rng = np.random.default_rng(17)
    for nx in (1, 7, 8, 23, 64):
        codes = (rng.integers(0, 6, (5, 9, nx)) * (rng.random((5, 9, nx)) < 0.1)).astype(code_dtype)
        codes[2] = 0
        codes[3] = np.where(codes[3] > 0, 5, 0)  # slice 3: only a code that is in no region
        has_reg = np.array([False, True, True, False, True, False])
        box = _roi_boxes(codes, has_reg, 1, 5)
        for z in range(1, 5):
            zz, yy, xx = np.nonzero(has_reg[codes[z:z + 1].astype(np.int64)])
            expect = [yy.min(), yy.max(), xx.min(), xx.max()] if yy.size else [9, -1, nx, -1]
            assert box[z - 1].tolist() == expect, (nx, z)


@pytest.mark.parametrize("code_dtype", [np.uint8, np.uint16, np.int32])
def test_peak_nonzero_boxes_match_numpy(code_dtype):
    """The per-slice box of non-zero codes from OR-ed uint64 words against NumPy: codes in the first and last
    lane of a word, empty slices, one-word rows."""
    from petfeat.kernels.peak_cpu import _nonzero_boxes, code_words

    rng = np.random.default_rng(18)
    per = 8 // np.dtype(code_dtype).itemsize
    for nx in (per, 2 * per, 5 * per, 64):
        codes = (rng.integers(1, 6, (6, 9, nx)) * (rng.random((6, 9, nx)) < 0.05)).astype(code_dtype)
        codes[2] = 0
        codes[3] = 0
        codes[3, 4, 0] = codes[3, 7, nx - 1] = 3  # first lane of the first word, last lane of the last
        codes[4] = 0
        codes[4, 0, per - 1] = codes[4, 8, nx - per] = 1
        words, log2_bits = code_words(codes, np.array([False, True, True, True, True, True]))
        assert log2_bits == {1: 3, 2: 4, 4: 5}[codes.dtype.itemsize]
        box = _nonzero_boxes(words, log2_bits, 1, 6)
        for z in range(1, 6):
            zz, yy, xx = np.nonzero(codes[z:z + 1])
            expect = [yy.min(), yy.max(), xx.min(), xx.max()] if yy.size else [9, -1, nx, -1]
            assert box[z - 1].tolist() == expect, (nx, z)


def test_peak_code_words_refuses_what_the_word_boxes_cannot_take():
    """Word boxes need every non-zero code (and only those) in a region and rows of whole aligned words."""
    from petfeat.kernels.peak_cpu import code_words

    codes = np.zeros((2, 3, 16), np.uint8)
    every = np.ones(4, bool)
    every[0] = False
    assert code_words(codes, every)[1] == 3
    assert code_words(codes[:, :, :12].copy(), every)[1] == 0  # 12-byte rows
    assert code_words(codes, np.array([False, True, False, True]))[1] == 0  # code 2 is in no region
    assert code_words(codes, np.ones(4, bool))[1] == 0  # code 0 in a region
    unaligned = np.zeros(2 * 3 * 16 + 1, np.uint8)[1:].reshape(2, 3, 16)
    assert code_words(unaligned, every)[1] == 0


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (4.0, 4.0, 4.0), (3.27, 2.0, 4.07)])
@pytest.mark.parametrize("n_chunks", [1, 3, 6])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize("tiling", ["default", "tiny"])  # tiny: one row per strip, 7 values per plane block
def test_separable_peak_matches_oracle_across_chunks(spacing, n_chunks, dtype, tiling):
    """The separable CPU kernel on chunk boundaries, strip and block edges, faces, overlapping regions and an
    empty region; region boxes from code words (16-voxel rows) and, with the tiny tiling, by scanning."""
    from petfeat.kernels import peak_cpu

    block, ring_bytes = (peak_cpu.PLANE_BLOCK, peak_cpu.RING_BYTES) if tiling == "default" else (7, 1)
    rng = np.random.default_rng(hash((spacing, n_chunks, dtype.__name__)) % 2**32)
    shape = (13, 11, 16)
    stored, codes, scale, offset, regions = _peak_case(rng, shape, dtype, 6)
    values = naive.suv(stored, scale, offset)
    n_codes = 8  # code 7 is in the last region and on no voxel
    ptr, flat = _csr(regions, n_codes)
    rmax = np.array([values[np.isin(codes, r)].max() if np.isin(codes, r).any() else -np.inf for r in regions])
    plan = peak_cpu.sphere_plan(sphere_offsets(spacing))
    sums = peak_cpu.sums_dtype(stored, plan)  # int16: exact float32 sums; float32 pixels: float64 sums
    assert sums == (np.float32 if dtype == np.int16 else np.float64)
    has_reg = np.diff(ptr) > 0
    assert peak_cpu.code_words(codes, has_reg)[1] == 3  # 8-bit codes: boxes from words, unless told to scan
    boxes = peak_cpu.region_boxes(codes, has_reg, by_words=tiling == "default")
    glob, loc, bad = peak_cpu._peak_separable(stored, codes, scale, offset, *plan, has_reg, ptr, flat, rmax,
                                              len(regions), n_chunks, np.zeros(1, sums), block, ring_bytes, boxes)
    assert not bad.any()  # finite pixels: every sphere sum is finite
    glob, loc = glob.max(axis=0), loc.max(axis=0)
    for k, r in enumerate(regions):
        g_ref, l_ref = naive.peaks(values, np.isin(codes, r), spacing)
        if np.isnan(g_ref):
            assert glob[k] == -np.inf and loc[k] == -np.inf
        else:
            assert glob[k] == pytest.approx(g_ref, rel=RTOL) and loc[k] == pytest.approx(l_ref, rel=RTOL)


def test_peak_on_float_pixels_with_nan_skips_them(backend):
    """NaN neighbours are not averaged (the CPU takes the direct kernel for such pixels)."""
    rng = np.random.default_rng(5)
    shape = (6, 7, 8) if backend == "gpu" else (9, 10, 11)
    stored, codes, scale, offset, regions = _peak_case(rng, shape, np.float32, 4)
    stored[rng.random(shape) < 0.1] = np.nan
    values = naive.suv(stored, scale, offset)
    ptr, flat = _csr(regions, 6)
    rmax = np.array([np.nanmax(values[np.isin(codes, r)], initial=-np.inf) for r in regions])
    glob, loc = kernels.suv_peak(stored, codes, scale, offset, sphere_offsets((2.0, 2.0, 2.0)), ptr, flat, rmax,
                                 len(regions), backend=backend)
    for k, r in enumerate(regions):
        g_ref, l_ref = naive.peaks(values, np.isin(codes, r), (2.0, 2.0, 2.0))
        if np.isnan(g_ref):
            assert glob[k] == -np.inf
        else:
            assert glob[k] == pytest.approx(g_ref, rel=RTOL) and loc[k] == pytest.approx(l_ref, rel=RTOL)


@pytest.mark.parametrize("where", ["out_of_reach", "in_reach", "infinite_in_region"])
def test_separable_peak_reports_non_finite_sums_only_within_reach(where):
    """A NaN or infinite pixel within a region voxel's sphere makes the separable kernel report it (the caller
    then takes the direct kernel); one out of every region voxel's reach leaves the separable result exact."""
    from petfeat.kernels import peak_cpu

    rng = np.random.default_rng(9)
    shape = (12, 14, 16)
    stored = rng.uniform(0, 30000, shape).astype(np.float32)
    codes = np.zeros(shape, np.uint8)
    codes[3:6, 3:7, 2:6] = 1
    codes[7:10, 8:12, 9:14] = 2
    spacing = (4.0, 4.0, 4.0)  # reach 1 voxel
    if where == "out_of_reach":
        stored[0, 13, 15] = np.nan  # the box of slice 0 holds no region voxel
        stored[11, 0, 0] = np.inf
        stored[5, 12, 0] = np.nan  # in a slice with a region, far from it
        stored[6, 9, 3] = np.nan  # read by the disc sums (in the chunk's box), two voxels from both regions
    elif where == "in_reach":
        stored[6, 5, 4] = np.nan  # next to region 1, not in it
    else:
        stored[8, 9, 10] = -np.inf  # in region 2
    scale, offset = rng.uniform(5e-4, 1e-3, shape[0]), rng.uniform(-0.1, 0.1, shape[0])
    values = naive.suv(stored, scale, offset)
    ptr, flat = _csr([[1], [2]], 3)
    rmax = np.array([np.nanmax(values[codes == c]) for c in (1, 2)])
    plan = peak_cpu.sphere_plan(sphere_offsets(spacing))
    has_reg = np.diff(ptr) > 0
    _, _, bad = peak_cpu._peak_separable(stored, codes, scale, offset, *plan, has_reg, ptr, flat, rmax, 2, 3,
                                         np.zeros(1, np.float64), peak_cpu.PLANE_BLOCK, peak_cpu.RING_BYTES)
    assert bad.any() == (where != "out_of_reach")
    glob, loc = kernels.suv_peak(stored, codes, scale, offset, sphere_offsets(spacing), ptr, flat, rmax, 2)
    for k, c in enumerate((1, 2)):
        g_ref, l_ref = naive.peaks(values, codes == c, spacing)
        assert glob[k] == pytest.approx(g_ref, rel=RTOL) and loc[k] == pytest.approx(l_ref, rel=RTOL)


def test_sphere_plan_is_the_sphere_and_refuses_gaps():
    from petfeat.kernels.peak_cpu import sphere_plan

    offs = sphere_offsets((3.27, 2.0, 4.07))
    plan = sphere_plan(offs)
    rebuilt = {(int(dz), int(dy), dx) for dz, dy, h in zip(plan.row_dz, plan.row_dy, plan.row_h, strict=True)
               for dx in range(-h, h + 1)}
    assert rebuilt == {tuple(map(int, o)) for o in offs}
    assert plan.n_per_dz.sum() == len(offs)
    for dz, p in zip(plan.dzs, plan.dz_profile, strict=True):  # each dz's profile holds that dz's rows
        terms = set(zip(plan.term_dy[plan.prof_ptr[p]:plan.prof_ptr[p + 1]],
                        plan.term_h[plan.prof_ptr[p]:plan.prof_ptr[p + 1]], strict=True))
        assert terms == {(dy, h) for z, dy, h in zip(plan.row_dz, plan.row_dy, plan.row_h, strict=True) if z == dz}
    gapped = np.array([[0, 0, -2], [0, 0, 0], [0, 0, 2]])  # not a centred run along x
    assert sphere_plan(gapped) is None


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (4.0, 4.0, 4.0), (3.27, 2.0, 4.07)])
def test_disc_program_rebuilds_every_profile(spacing):
    """Each profile's program (a base profile plus and minus terms) sums exactly that profile's rows."""
    from collections import Counter

    from petfeat.kernels.peak_cpu import sphere_plan

    plan = sphere_plan(sphere_offsets(spacing))
    n_prof = len(plan.prof_ptr) - 1
    built: list[Counter] = []
    for p in range(n_prof):
        base = plan.prof_base[p]
        assert base < p  # built from an earlier profile or from zero
        got = Counter(built[base]) if base >= 0 else Counter()
        for t in range(plan.step_ptr[p], plan.step_ptr[p + 1]):
            got[(int(plan.step_dy[t]), int(plan.step_h[t]))] += int(plan.step_sign[t])
        built.append(+got)  # drop zero counts
        want = Counter(zip(plan.term_dy[plan.prof_ptr[p]:plan.prof_ptr[p + 1]].tolist(),
                           plan.term_h[plan.prof_ptr[p]:plan.prof_ptr[p + 1]].tolist(), strict=True))
        assert built[p] == want and all(v >= 0 for v in got.values())
    assert len(plan.step_dy) <= len(plan.term_dy)
    assert plan.widest >= max(plan.n_per_dz)


def test_peak_with_gapped_offsets_takes_the_direct_kernel():
    """Offsets that are not x-segments still give the mean over exactly those offsets."""
    rng = np.random.default_rng(8)
    stored = rng.integers(0, 1000, (5, 6, 7)).astype(np.int16)
    codes = np.zeros(stored.shape, np.uint8)
    codes[2, 3, 1:6] = 1
    offs = np.array([[0, 0, -2], [0, 0, 0], [0, 0, 2], [1, 0, 0]])
    scale, offset = np.full(5, 0.01), np.zeros(5)
    glob, _ = kernels.suv_peak(stored, codes, scale, offset, offs, np.array([0, 0, 1]), np.array([0]),
                               np.array([np.inf]), 1)
    v = stored.astype(float) * 0.01
    ref = max(np.mean([v[2, 3, x - 2], v[2, 3, x], v[2, 3, x + 2], v[3, 3, x]]) for x in range(2, 5))
    ref = max(ref, np.mean([v[2, 3, 3], v[2, 3, 1], v[3, 3, 1]]), np.mean([v[2, 3, 3], v[2, 3, 5], v[3, 3, 5]]))
    assert glob[0] == pytest.approx(ref, rel=1e-12)


def test_sphere_offsets_physical_radius():
    offs = sphere_offsets((2.0, 2.0, 2.0))
    assert len(offs) == 123  # voxel centres within 6.2035 mm at 2 mm spacing (IBSI phantom grid)
    aniso = sphere_offsets((5.0, 2.0, 2.0))
    assert np.abs(aniso[:, 0]).max() == 1 and np.abs(aniso[:, 2]).max() == 3


def test_gpu_code_limit_is_an_error(gpu):
    from petfeat.kernels.config import MAX_GPU_CODES

    z = np.zeros((2, 2, 2), np.int16)
    with pytest.raises(ValueError, match="exceeds the GPU limit MAX_GPU_CODES"):
        kernels.fused_reduce(z, z.astype(np.uint16), np.ones(2), np.zeros(2), MAX_GPU_CODES + 1, backend="gpu")
