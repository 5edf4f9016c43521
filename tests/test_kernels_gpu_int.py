"""The GPU integer kernel (16-bit pixels, uint8 codes, exact tile sums) against the float64 oracle.

Without a device it runs on Numba's simulator, with tiles of 512 voxels (32768 on a device), so
the test volumes below span several tiles per slice, partial tiles and partial lanes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import naive
import numpy as np
import pytest
from conftest import RTOL
from numba import cuda, int32
from petfeat.kernels import reduce_gpu, reduce_gpu_int
from petfeat.kernels.config import SIMULATOR

from petfeat import kernels

SHAPE = (3, 24, 32)  # 768 voxels a slice: 1.5 simulator tiles


def _stored(rng, shape, dtype):
    """Random values over the whole 16-bit range, a tenth of them pinned to its two ends (ties)."""
    info = np.iinfo(dtype)
    s = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    ends = rng.random(shape)
    s[ends < 0.05] = info.min
    s[ends > 0.95] = info.max
    return s


def _codes(rng, shape, layout):
    n = int(np.prod(shape))
    if layout.startswith("stripes"):  # runs of one length, background every fifth: ends at every offset
        run = int(layout.split("_")[1])
        return ((np.arange(n) // run) % 5).astype(np.uint8).reshape(shape), 5
    if layout == "speckle":  # runs of 1-12 voxels of 7 codes: several segments per warp, runs ending in lanes
        lengths = rng.integers(1, 13, n)
        return np.resize(np.repeat(rng.integers(0, 8, n), lengths), shape).astype(np.uint8), 8
    if layout == "organs":  # boxes across lanes, warps and tiles; code 4 empty
        codes = np.zeros(shape, np.uint8)
        codes[:, 2:20, 3:30] = 1
        codes[1:, 10:, :17] = 2
        codes[:, :, -3:] = 3
        return codes, 5
    if layout == "one_voxel":
        codes = np.zeros(shape, np.uint8)
        codes[0, 0, 0] = 1
        codes[-1, -1, -1] = 2
        codes[1, 11, 31] = 3
        return codes, 4
    raise ValueError(layout)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
@pytest.mark.parametrize("layout", ["stripes_1", "stripes_8", "stripes_9", "stripes_100", "stripes_259", "speckle",
                                    "organs", "one_voxel"])
def test_integer_kernel_matches_oracle(gpu, dtype, layout):
    rng = np.random.default_rng(hash((np.dtype(dtype).name, layout)) % 2**32)
    stored = _stored(rng, SHAPE, dtype)
    codes, n_codes = _codes(rng, SHAPE, layout)
    scale = rng.uniform(1e-4, 2e-3, SHAPE[0])
    scale[1] *= -1  # a negative slope: the highest SUV is the lowest stored value
    offset = rng.uniform(-0.01, 0.01, SHAPE[0])
    assert reduce_gpu.prepare_fused(stored, codes, scale, offset, n_codes).kernel == "int"
    p = kernels.fused_reduce(stored, codes, scale, offset, n_codes, backend="gpu")
    naive.assert_partials_match(p, stored, codes, scale, offset, n_codes, RTOL)


@pytest.mark.parametrize("dtype, value", [(np.uint16, 65535), (np.int16, -32768)])
def test_integer_kernel_stays_exact_at_its_tile_bound(gpu, monkeypatch, dtype, value):
    """A full 32768-voxel tile of the largest magnitude: the 32-bit tile sums reach their bound."""
    if SIMULATOR:  # the simulator reads the tile shape at run time; a device has it compiled in
        monkeypatch.setattr(reduce_gpu_int, "GPU_STEPS_PER_TILE", 32768 // reduce_gpu_int.STEP_VOXELS)
        monkeypatch.setattr(reduce_gpu_int, "TILE", 32768)
    assert reduce_gpu_int.TILE == 32768
    stored = np.full((1, 128, 256), value, dtype)
    stored[0, 5, 7] = value - np.sign(value)  # one voxel one step inside the range
    codes = np.ones(stored.shape, np.uint8)
    scale, offset = np.array([1e-3]), np.array([0.25])
    p = kernels.fused_reduce(stored, codes, scale, offset, 2, backend="gpu")
    naive.assert_partials_match(p, stored, codes, scale, offset, 2, RTOL)


def test_general_and_integer_kernels_agree(gpu):
    rng = np.random.default_rng(3)
    stored = _stored(rng, SHAPE, np.int16)
    codes, n_codes = _codes(rng, SHAPE, "speckle")
    scale, offset = rng.uniform(1e-4, 2e-3, SHAPE[0]), np.zeros(SHAPE[0])
    out = {}
    for kernel in ("int", "general"):
        launch = reduce_gpu.prepare_fused(stored, codes, scale, offset, n_codes, kernel=kernel)
        assert launch.kernel == kernel
        launch()
        out[kernel] = reduce_gpu.launch_partials(launch)
    for name in ("count", "argmax", "argmin", "nan_count"):
        np.testing.assert_array_equal(getattr(out["int"], name), getattr(out["general"], name))
    for name in ("mean", "m2", "min", "max"):
        np.testing.assert_allclose(getattr(out["int"], name)[1:], getattr(out["general"], name)[1:], rtol=RTOL)


@pytest.mark.parametrize("stored_dtype, codes_dtype, shape", [
    (np.float32, np.uint8, SHAPE), (np.int8, np.uint8, SHAPE), (np.int16, np.uint16, SHAPE), (np.int16, np.uint8,
                                                                                               (2, 5, 7))])
def test_integer_kernel_refuses_what_it_does_not_take(gpu, stored_dtype, codes_dtype, shape):
    stored, codes = np.ones(shape, stored_dtype), np.ones(shape, codes_dtype)
    with pytest.raises(ValueError, match="integer GPU kernel takes int16/uint16 pixels, uint8 codes and slices.*"
                                         "use kernel='auto' or 'general'"):
        reduce_gpu.prepare_fused(stored, codes, np.ones(shape[0]), np.zeros(shape[0]), 2, kernel="int")
    assert reduce_gpu.prepare_fused(stored, codes, np.ones(shape[0]), np.zeros(shape[0]), 2).kernel == "general"


def test_unknown_kernel_name_is_an_error(gpu):
    z = np.zeros((1, 8, 8), np.int16)
    with pytest.raises(ValueError, match="kernel is 'fast'; use 'auto', 'int' or 'general'"):
        reduce_gpu.prepare_fused(z, z.astype(np.uint8), np.ones(1), np.zeros(1), 2, kernel="fast")


def test_simulator_shared_arrays_are_one_per_line_and_block(gpu):
    """The locked shared-array lookup the GPU module installs under the simulator keeps its semantics."""

    @cuda.jit
    def kernel(out):
        a = cuda.shared.array(32, int32)
        b = cuda.shared.array(32, int32)
        t = cuda.threadIdx.x
        a[t] = 1
        b[t] = 2
        cuda.syncthreads()
        s = 0
        for i in range(cuda.blockDim.x):
            s += a[i] + 10 * b[i]
        out[cuda.blockIdx.x, t] = s

    out = np.zeros((3, 32), np.int64)
    kernel[3, 32](out)
    assert (out == 32 * 21).all()  # every thread saw every thread's writes to a and b, and a is not b


@pytest.mark.parametrize("env, message", [
    ({"PETFEAT_CUDA_TPB": "48"}, "needs whole warps \\(PETFEAT_CUDA_TPB a multiple of 32"),
    ({"PETFEAT_CUDA_GROUPS": "16", "PETFEAT_CUDA_STEPS": "16"},
     "exceeds the 32768 voxels .* lower PETFEAT_CUDA_GROUPS or PETFEAT_CUDA_STEPS"),
])
def test_integer_kernel_refuses_launch_shapes_it_cannot_index(gpu, env, message):
    """A launch shape from the environment that breaks the kernel's warps or keys stops the import, saying which."""
    code = "import petfeat.kernels.reduce_gpu_int"
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0
    assert re.search(message, run.stderr.strip().splitlines()[-1]), run.stderr[-500:]


def test_simulator_pace_changes_the_interval_only_from_the_main_thread(gpu):
    """Pacing applies to a simulated launch from the main thread, never from another (a Dask task thread)."""
    import threading

    from petfeat.kernels.simulator import simulator_pace

    before = sys.getswitchinterval()
    seen = {}

    def in_thread():
        with simulator_pace():
            seen["task thread"] = sys.getswitchinterval()

    with simulator_pace():
        seen["main thread"] = sys.getswitchinterval()
    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join()
    assert seen["task thread"] == before and sys.getswitchinterval() == before
    assert seen["main thread"] == pytest.approx(1e-4 if SIMULATOR else before)
