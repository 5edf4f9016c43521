"""CPU kernel benchmarks (pytest-benchmark), peers in the same run.

    python -m pytest benchmarks/test_bench_kernels.py --benchmark-json benchmarks/results/cpu_kernels.json
    python benchmarks/report.py benchmarks/results/cpu_kernels.json

The volume's 72 MB fit in a large last-level cache (480 MiB on some CI-like machines), where the
floor runs at cache speed, not memory speed. Groups ``...-beyond-llc`` time the floor and the fused
pass again on the volume tiled along z past twice the last-level cache: there the floor is the
memory bandwidth.

Peers get the SUV volume already converted to float32 (an advantage: petfeat reads the raw int16
pixels and converts in the kernel); the floor reads the int16 pixels and the uint8 codes once. The
fused pass and the floor are also timed on float32 pixels (groups ``...-float32``: the float path,
against a floor that reads the float32 pixels).
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit
from petfeat.kernels.borrowed import borrowed
from petfeat.kernels.peak_cpu import suv_peak_cpu
from petfeat.kernels.reduce_cpu import fused_reduce_cpu
from petfeat.kernels.threads import chunk_count, cpu_threads, for_chunks

from petfeat.features import sphere_offsets


@njit(cache=True, nogil=True, fastmath=True)
def _floor_pass(c0, c1, stored, codes, acc, n_chunks):  # fastmath: the float sum may reassociate (vectorises)
    stored, codes, acc = borrowed(stored, codes, acc)
    nz, ny, nx = stored.shape
    for z in range(c0 * nz // n_chunks, c1 * nz // n_chunks):
        s = acc[z]
        for y in range(ny):
            for x in range(nx):
                s += stored[z, y, x] + codes[z, y, x]
        acc[z] = s


def _floor(stored, codes):
    """One pass that reads every pixel and code once, on the kernels' threads (the memory-bandwidth floor)."""
    acc = np.zeros(stored.shape[0], np.float64 if stored.dtype.kind == "f" else np.int64)
    n_chunks = chunk_count(stored.shape[0])  # as the kernels' chunks
    for_chunks(_floor_pass, n_chunks, stored, codes, acc, n_chunks)
    return acc.sum()


@pytest.fixture(scope="module")
def suv_f32(volume):
    stored, scale, offset = volume
    return (stored * scale[:, None, None].astype(np.float32)).astype(np.float32)


@pytest.fixture(scope="module")
def stored_f32(volume):
    """The same stored values as float32 pixels (NIfTI-converted PET): the fused pass's float path."""
    return volume[0].astype(np.float32)


def _pixels(volume, stored_f32, pixels):
    return volume[0] if pixels == "int16" else stored_f32


def _group(labels, pixels):
    return f"reduce-{labels[1] - 1}labels" + ("" if pixels == "int16" else f"-{pixels}")


@pytest.mark.parametrize("pixels", ["int16", "float32"])
def test_floor(benchmark, volume, stored_f32, labels, pixels):
    benchmark.group = _group(labels, pixels)
    benchmark.extra_info["threads"] = cpu_threads()
    benchmark(_floor, _pixels(volume, stored_f32, pixels), labels[0])


@pytest.mark.parametrize("pixels", ["int16", "float32"])
def test_fused(benchmark, volume, stored_f32, labels, pixels):
    benchmark.group = _group(labels, pixels)
    stored, scale, offset = volume
    benchmark(fused_reduce_cpu, _pixels(volume, stored_f32, pixels), labels[0], scale, offset, labels[1])


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache (Linux sysfs); 64 MiB when it cannot be read."""
    from pathlib import Path

    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
        sizes.append(int(text.rstrip("KMG")) * unit)
    return max(sizes, default=64 << 20)


@pytest.fixture(scope="module")
def beyond_llc(volume, labels):
    """Pixels, codes and per-slice scale/offset tiled along z until they exceed twice the last-level cache."""
    stored, scale, offset = volume
    copies = -(-2 * last_level_cache_bytes() // (stored.nbytes + labels[0].nbytes))
    return (np.tile(stored, (copies, 1, 1)), np.tile(labels[0], (copies, 1, 1)), np.tile(scale, copies),
            np.tile(offset, copies))


@pytest.mark.parametrize("kernel", ["floor", "fused"])
def test_beyond_llc(benchmark, beyond_llc, labels, kernel):
    stored, codes, scale, offset = beyond_llc
    benchmark.group = f"reduce-{labels[1] - 1}labels-beyond-llc"
    benchmark.extra_info["shape"] = list(stored.shape)
    benchmark.extra_info["megabytes"] = (stored.nbytes + codes.nbytes) / 1e6
    if kernel == "floor":
        benchmark.pedantic(_floor, (stored, codes), rounds=7, warmup_rounds=1)
    else:
        benchmark.pedantic(fused_reduce_cpu, (stored, codes, scale, offset, labels[1]), rounds=7, warmup_rounds=1)


@pytest.mark.parametrize("voxel_mm", [4.0, 2.0])
def test_suv_peak_all_regions(benchmark, volume, labels, voxel_mm):
    benchmark.group = f"reduce-{labels[1] - 1}labels"
    stored, scale, offset = volume
    codes, n_codes = labels
    p = fused_reduce_cpu(stored, codes, scale, offset, n_codes)
    ptr = np.concatenate([[0, 0], np.arange(1, n_codes)]).astype(np.int64)
    regs = np.arange(n_codes - 1, dtype=np.int64)
    offs = sphere_offsets((voxel_mm,) * 3)
    benchmark.extra_info["sphere_voxels"] = len(offs)
    benchmark(suv_peak_cpu, stored, codes, scale, offset, offs, ptr, regs, p.max[1:], n_codes - 1)


def test_simpleitk_label_intensity_statistics(benchmark, suv_f32, labels):
    sitk = pytest.importorskip("SimpleITK")
    benchmark.group = f"reduce-{labels[1] - 1}labels"
    img = sitk.GetImageFromArray(suv_f32)
    lab = sitk.GetImageFromArray(labels[0])

    def run():
        f = sitk.LabelIntensityStatisticsImageFilter()
        f.SetNumberOfThreads(cpu_threads())
        f.Execute(lab, img)
        return [(f.GetMean(int(k)), f.GetMaximum(int(k))) for k in f.GetLabels()]

    benchmark(run)


def test_scipy_ndimage(benchmark, suv_f32, labels):
    ndimage = pytest.importorskip("scipy.ndimage")
    benchmark.group = f"reduce-{labels[1] - 1}labels"
    idx = np.arange(1, labels[1])

    def run():  # labels fully covered by later boxes are empty: scipy divides by zero for them
        with np.errstate(invalid="ignore", divide="ignore"):
            return _scipy(ndimage, suv_f32, labels, idx)

    benchmark.pedantic(run, rounds=3, iterations=1)


def _scipy(ndimage, suv_f32, labels, idx):
    return (ndimage.mean(suv_f32, labels[0], idx), ndimage.variance(suv_f32, labels[0], idx),
            ndimage.minimum(suv_f32, labels[0], idx), ndimage.maximum(suv_f32, labels[0], idx),
            ndimage.sum_labels(np.ones_like(labels[0]), labels[0], idx))


def test_pyradiomics_first_order_3_regions(benchmark, suv_f32, labels):
    radiomics = pytest.importorskip(  # its sdist needs NumPy at build time: no wheel for current Pythons
        "radiomics", reason="pyradiomics is not installed: pip install versioneer && "
                            "pip install --no-build-isolation pyradiomics")
    import SimpleITK as sitk
    from radiomics import firstorder

    benchmark.group = f"reduce-{labels[1] - 1}labels"
    img = sitk.GetImageFromArray(suv_f32)
    radiomics.setVerbosity(40)

    def run():
        out = []
        for lab in (1, 2, 3):
            mask = sitk.GetImageFromArray((labels[0] == lab).astype(np.uint8))
            fo = firstorder.RadiomicsFirstOrder(img, mask, binWidth=0.5)
            fo.enableFeatureByName("Mean")
            fo.enableFeatureByName("Maximum")
            fo.enableFeatureByName("Variance")
            out.append(fo.execute())
        return out

    benchmark.pedantic(run, rounds=2, iterations=1)
