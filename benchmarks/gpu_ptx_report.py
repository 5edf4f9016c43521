"""Compile petfeat's CUDA kernels for a GPU architecture without a GPU, and report what ptxas says.

Registers per thread, spills and shared memory decide how many blocks a multiprocessor holds
(occupancy); the SASS instruction mix shows atomics that became compare-and-swap loops, shuffles
and loads. Static facts, not timings: they check that the kernels compile for a real device (the
simulator in CI never compiles them) and guide tuning when no GPU is at hand.

Needs numba-cuda and a CUDA toolkit (NVVM, NVRTC, ptxas; cuobjdump and nvdisasm for ``--sass``);
no driver and no device::

    pip install numba-cuda nvidia-cuda-nvrtc nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm
    CUDA_HOME=/usr/local/cuda python benchmarks/gpu_ptx_report.py --cc 9.0 --sass

Numba types a kernel's calls to device functions for the current device; with no device, the
report answers that query with the requested compute capability.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types


def _signatures(T, reduce_gpu, reduce_gpu_int):
    def arr(t, nd=1):
        return T.Array(t, nd, "C")

    outs = (arr(T.int64, 2),) + (arr(T.float64, 2),) * 4 + (arr(T.int64, 2),) * 3
    return {
        "general fused (int16 pixels, uint8 codes)": (
            reduce_gpu._fused_kernel, (arr(T.int16), arr(T.uint8), arr(T.float64), arr(T.float64), T.int64, T.int64,
                                       T.int64) + outs),
        "integer fused (16-bit pixels, uint8 codes)": (
            reduce_gpu_int._fused_int_kernel, (arr(T.int64), arr(T.int64), arr(T.float64), arr(T.float64), T.int64,
                                               T.int64, T.int64, T.int64, arr(T.int64)) + outs),
        "SUVpeak (int16 pixels, uint8 codes)": (
            reduce_gpu._peak_kernel, (arr(T.int16), arr(T.uint8), arr(T.float64), arr(T.float64), T.int64, T.int64,
                                      T.int64, arr(T.int64, 2)) + (arr(T.int64),) * 5 + (T.boolean,)
                                     + (arr(T.int64), arr(T.int64), arr(T.float64), arr(T.float64), arr(T.float64))),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cc", default="9.0", help="compute capability, e.g. 9.0 (H100), 8.0 (A100)")
    p.add_argument("--sass", action="store_true", help="also count SASS atomics, shuffles, votes and global loads")
    args = p.parse_args(argv)
    cc = tuple(int(x) for x in args.cc.split("."))
    arch = f"sm_{cc[0]}{cc[1]}"

    import numba.cuda.dispatcher as dispatcher
    from numba import cuda
    from numba.core import types as T

    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    from petfeat.kernels import reduce_gpu, reduce_gpu_int

    print(f"# petfeat CUDA kernels compiled for {arch} without a device, {dt.date.today().isoformat()}")
    print(f"# command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    from importlib.metadata import version

    print(f"# numba {version('numba')}, numba-cuda {version('numba-cuda')}")
    print(f"# ptxas: {subprocess.run(['ptxas', '--version'], capture_output=True, text=True).stdout.splitlines()[-1]}")
    print(f"# launch: {reduce_gpu.TPB} threads per block; integer kernel tile {reduce_gpu_int.TILE} voxels, "
          f"{reduce_gpu_int.LANE_VOXELS} voxels per lane and step")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (kernel, sig) in _signatures(T, reduce_gpu, reduce_gpu_int).items():
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
            src, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
            with open(src, "w") as f:
                f.write(ptx)
            r = subprocess.run(["ptxas", f"-arch={arch}", "-v", src, "-o", cubin], capture_output=True, text=True,
                               check=True)
            info = " ".join(line.split(":", 1)[-1].strip() for line in r.stderr.splitlines()
                            if "registers" in line or "spill" in line)
            print(f"\n{name}: {info}")
            if args.sass and shutil.which("cuobjdump"):
                sass = subprocess.run(["cuobjdump", "-sass", cubin], capture_output=True, text=True).stdout
                ops = collections.Counter(re.findall(r"\b(ATOMS\.[A-Z0-9.]+|ATOMG?\.[A-Z0-9.]+|RED\.[A-Z0-9.]+|"
                                                     r"SHFL\.[A-Z]+|VOTE\.[A-Z]+|LDG\.[A-Z0-9.]+|BAR\.[A-Z]+)", sass))
                n = len(re.findall(r"^\s+/\*[0-9a-f]{4,}\*/", sass, flags=re.M))
                print(f"  SASS: {n} instructions; " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
