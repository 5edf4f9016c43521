"""GPU benchmark: device copy bandwidth vs the fused reduction and SUVpeak kernels.

Run on a machine with an NVIDIA GPU (CuPy + Numba CUDA)::

    python benchmarks/gpu_fused.py --shape 800 440 440 --labels 10 60 --out benchmarks/results/gpu.json

The fused kernel reads each stored pixel (int16, 2 bytes) and code (uint8, 1 byte) once; both GPU
kernels are timed (``int``, which int16 pixels with uint8 codes take, and ``general``). The
effective bandwidth is (2 + 1) bytes x voxels / kernel time, compared with a device-to-device copy
(bytes read + bytes written / time) measured in the same run. Every timed result is first checked
against the CPU kernel (which is itself checked against a float64 NumPy oracle in the tests).
Timings are CUDA-event medians over repeats after a warm-up, with fresh random (non-zero) data.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np


def blocky_labels(rng, shape, n_labels):
    """Spatially coherent labels: random boxes (organ-like runs), ~40% of voxels labelled."""
    codes = np.zeros(shape, np.uint8)
    nz, ny, nx = shape
    for lab in range(1, n_labels + 1):
        dz, dy, dx = (max(2, int(s * rng.uniform(0.08, 0.3))) for s in shape)
        z, y, x = (int(rng.integers(0, s - d)) for s, d in zip(shape, (dz, dy, dx), strict=True))
        codes[z : z + dz, y : y + dy, x : x + dx] = lab
    return codes


def cuda_time(fn, repeats, cp):
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1000.0)
    return float(np.median(times)), float(np.min(times))


#: SUVpeak spheres timed: isotropic voxels of 4 mm (19 offsets) and 2 mm (123 offsets).
PEAK_VOXEL_MM = (4, 2)


def _peak_args(partial, n_codes):
    """Every label its own region: CSR map code -> region and the regions' maxima."""
    ptr = np.concatenate([[0, 0], np.arange(1, n_codes)]).astype(np.int64)
    return ptr, np.arange(n_codes - 1, dtype=np.int64), partial.max[1:], n_codes - 1


def peak_times(d_stored, d_codes, scale, offset, partial, n_codes, repeats, cp):
    """Median time of the GPU SUVpeak (all regions) per sphere of :data:`PEAK_VOXEL_MM`."""
    from petfeat import kernels
    from petfeat.features import sphere_offsets

    out = {}
    for mm in PEAK_VOXEL_MM:
        offs = sphere_offsets((float(mm),) * 3)

        def peak():
            kernels.suv_peak(d_stored, d_codes, scale, offset, offs, *_peak_args(partial, n_codes), backend="gpu")

        peak()
        out[mm] = cuda_time(peak, max(3, repeats // 3), cp)[0]
    return out


def peaks_match(stored, codes, d_stored, d_codes, scale, offset, partial, n_codes):
    """Whether the GPU's global and local peaks equal the CPU's to 1e-9, for every sphere of :data:`PEAK_VOXEL_MM`."""
    from petfeat import kernels
    from petfeat.features import sphere_offsets

    ok = True
    for mm in PEAK_VOXEL_MM:
        offs = sphere_offsets((float(mm),) * 3)
        gpu = kernels.suv_peak(d_stored, d_codes, scale, offset, offs, *_peak_args(partial, n_codes), backend="gpu")
        cpu = kernels.suv_peak(stored, codes, scale, offset, offs, *_peak_args(partial, n_codes), backend="cpu")
        ok = ok and all(np.allclose(g, c, rtol=1e-9, atol=0) for g, c in zip(gpu, cpu, strict=True))
    return bool(ok)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[800, 440, 440])
    p.add_argument("--labels", type=int, nargs="+", default=[10, 60])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default=None)
    p.add_argument("--no-cpu-check", action="store_true", help="skip the CPU comparison (simulator dry runs)")
    args = p.parse_args(argv)

    from numba import cuda
    from petfeat.kernels import reduce_gpu

    from petfeat import kernels

    sim = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    if sim:
        cp = None
        dev_name = "Numba CUDA simulator (dry run, timings meaningless)"
    else:
        import cupy as cp

        dev_name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    shape = tuple(args.shape)
    n = int(np.prod(shape))
    rng = np.random.default_rng(2026)
    result = {
        "benchmark": "gpu_fused", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": dev_name, "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "shape_zyx": list(shape), "voxels": n, "host": platform.node(), "python": platform.python_version(),
        "numba": __import__("numba").__version__, "runs": [],
    }
    try:
        result["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,"
                                               "clocks.mem", "--format=csv,noheader"], capture_output=True,
                                              text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass

    stored = rng.integers(0, 30000, shape, dtype=np.int16)
    scale = rng.uniform(1e-4, 2e-4, shape[0])
    offset = np.zeros(shape[0])

    if not sim:
        # device-to-device copy bandwidth (read + write), on a buffer larger than L2
        buf = cp.asarray(rng.integers(0, 255, 2 * n, dtype=np.uint8))
        dst = cp.empty_like(buf)
        cuda_time(lambda: dst.__setitem__(Ellipsis, buf), 3, cp)
        t_copy, _ = cuda_time(lambda: dst.__setitem__(Ellipsis, buf), args.repeats, cp)
        copy_bw = 2 * buf.nbytes / t_copy
        result["copy_bandwidth_GBps"] = copy_bw / 1e9
        del buf, dst
        t0 = time.perf_counter()
        d_stored = cp.asarray(stored)
        cp.cuda.Device().synchronize()
        result["h2d_stored_s"] = time.perf_counter() - t0
    else:
        d_stored = stored
        copy_bw = float("nan")

    for n_labels in args.labels:
        codes = blocky_labels(rng, shape, n_labels)
        n_codes = n_labels + 1
        d_codes = cp.asarray(codes) if not sim else codes
        partial = kernels.fused_reduce(d_stored, d_codes, scale, offset, n_codes, backend="gpu")
        run = {"labels": n_labels, "labelled_fraction": float((codes > 0).mean())}
        if not args.no_cpu_check:
            t0 = time.perf_counter()
            ref = kernels.fused_reduce(stored, codes, scale, offset, n_codes, backend="cpu")
            run["cpu_fused_s"] = time.perf_counter() - t0
            ok = (np.array_equal(ref.count, partial.count) and np.array_equal(ref.argmax, partial.argmax)
                  and np.allclose(ref.mean[1:], partial.mean[1:], rtol=1e-6)
                  and np.allclose(ref.m2[1:], partial.m2[1:], rtol=1e-6))
            run["matches_cpu"] = bool(ok)
            if not ok:
                print("MISMATCH between GPU and CPU partials", file=sys.stderr)
        if not sim:
            # the kernel alone (device-resident inputs, scale/offset upload included: 2 x Z doubles)
            d_flat_s, d_flat_c = d_stored.reshape(-1), d_codes.reshape(-1)

            def fused_call():  # the public call: launch + copy of block partials + host merge
                reduce_gpu.fused_reduce_gpu(d_flat_s.reshape(shape), d_flat_c.reshape(shape), scale, offset, n_codes)

            bytes_read = n * (stored.itemsize + codes.itemsize)
            # the kernel alone, both GPU kernels in the same run: "int" (what int16 pixels take) and "general"
            for kind in ("general", "int"):
                launch = reduce_gpu.prepare_fused(d_stored, d_codes, scale, offset, n_codes, kernel=kind)
                launch()
                got = reduce_gpu.launch_partials(launch)
                t_med, t_min = cuda_time(launch, args.repeats, cp)
                run[kind] = dict(s_median=t_med, s_min=t_min, GBps=bytes_read / t_med / 1e9,
                                 fraction_of_copy_bandwidth=bytes_read / t_med / copy_bw, grid_blocks=launch.grid,
                                 matches_call=bool(np.array_equal(got.count, partial.count)
                                                   and np.array_equal(got.argmax, partial.argmax)))
            fused_call()
            t_call, _ = cuda_time(fused_call, args.repeats, cp)
            t_med = run["int"]["s_median"]
            run.update(fused_s_median=t_med, fused_GBps=bytes_read / t_med / 1e9,
                       fraction_of_copy_bandwidth=bytes_read / t_med / copy_bw, call_s_median=t_call,
                       general_over_int=run["general"]["s_median"] / t_med)
            for mm, t_peak in peak_times(d_stored, d_codes, scale, offset, partial, n_codes, args.repeats, cp).items():
                run[f"peak_{mm}mm_s_median"] = t_peak
                run[f"peak_{mm}mm_over_fused"] = t_peak / t_med
        if not args.no_cpu_check:  # both modes: the GPU SUVpeak against the CPU's separable kernel
            run["peak_matches_cpu"] = peaks_match(stored, codes, d_stored, d_codes, scale, offset, partial, n_codes)
            if not run["peak_matches_cpu"]:
                print("MISMATCH between GPU and CPU SUVpeaks", file=sys.stderr)
        result["runs"].append(run)
        print(json.dumps(run), flush=True)

    cuda.synchronize()
    print(f"\n{dev_name}; shape {shape}; copy bandwidth {result.get('copy_bandwidth_GBps', float('nan')):.0f} GB/s")
    print(f"{'labels':>6} {'kernel ms':>9} {'GB/s':>7} {'% copy':>7} {'general ms':>10} {'call ms':>8} "
          f"{'peak 4mm':>8} {'/fused':>6} {'peak 2mm':>8} {'/fused':>6} {'match':>6}")
    for r in result["runs"]:
        print(f"{r['labels']:>6} {r.get('fused_s_median', float('nan')) * 1e3:>9.3f} "
              f"{r.get('fused_GBps', float('nan')):>7.0f} "
              f"{100 * r.get('fraction_of_copy_bandwidth', float('nan')):>7.1f} "
              f"{r.get('general', {}).get('s_median', float('nan')) * 1e3:>10.3f} "
              f"{r.get('call_s_median', float('nan')) * 1e3:>8.2f} "
              + "".join(f"{r.get(f'peak_{mm}mm_s_median', float('nan')) * 1e3:>9.2f} "
                        f"{r.get(f'peak_{mm}mm_over_fused', float('nan')):>6.2f}" for mm in PEAK_VOXEL_MM)
              + f" {str(r.get('matches_cpu', '-') and r.get('peak_matches_cpu', '-')):>6}")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    ok = all(r.get("matches_cpu", True) and r.get("peak_matches_cpu", True)
             and r.get("int", {}).get("matches_call", True) and r.get("general", {}).get("matches_call", True)
             for r in result["runs"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
