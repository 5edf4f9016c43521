"""A/B of the CPU fused pass in one process: this checkout against an earlier commit's kernel.

    python benchmarks/ab_fused_word_scan.py [REV [float32]]   # REV defaults to 5572229 (before the word scan)

The earlier ``kernels/reduce_cpu.py`` is read with ``git show REV:...`` and imported beside the
current one; both run on the kernel benchmark's inputs (600 x 200 x 200 int16, 10 and 60 blocky
labels, see conftest.py), interleaved with the floor, 15 rounds; prints the best time of each and
its ratio to the floor (the int16 floor also for ``float32``, which times the float kernel on the
same values). The two kernels' partials are checked to agree first.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from petfeat.kernels import reduce_cpu
from petfeat.kernels.partials import merge_stack
from petfeat.kernels.threads import cpu_threads

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from conftest import SHAPE, blocky_codes  # noqa: E402
from test_bench_kernels import _floor  # noqa: E402


def load_old(rev: str, module: str = "reduce_cpu"):
    """A kernel module as it was at ``rev``.

    Its import of ``reduce_cpu`` is the one of the same ``rev`` (the run-scan helpers it shares
    change signature between commits); its other relative imports are made absolute (today's).
    """
    src = subprocess.run(["git", "show", f"{rev}:kernels/{module}.py"], cwd=HERE.parent, check=True,
                         capture_output=True, text=True).stdout
    if module != "reduce_cpu" and "from .reduce_cpu import" in src:
        name = load_old(rev).__name__
        src = src.replace("from .reduce_cpu import", f"from {name} import")
    src = src.replace("from .", "from petfeat.kernels.")
    path = Path(tempfile.mkdtemp()) / f"{module}_{rev}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod  # importable by name, for the module that imports it
    spec.loader.exec_module(mod)
    return mod


def int_partials(module, stored, codes, scale, offset, n_codes, n_chunks, exact=True):
    """A ``reduce_cpu`` module's per-chunk partials (``fused_partials``, or the parallel kernels of older commits)."""
    if hasattr(module, "fused_partials"):
        return module.fused_partials(stored, codes, scale, offset, n_codes, n_chunks, exact)
    kernel = module._fused_chunks_int if exact else module._fused_chunks_float
    return kernel(stored, codes, scale, offset, n_codes, n_chunks)


def main() -> None:
    rev = sys.argv[1] if len(sys.argv) > 1 else "5572229"
    old = load_old(rev)
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 32000, SHAPE, dtype=np.int16)
    scale, offset = rng.uniform(1e-4, 2e-4, SHAPE[0]), np.zeros(SHAPE[0])
    n_chunks = cpu_threads() * 4
    print(f"{cpu_threads()} threads; {SHAPE} int16; best of 15 interleaved rounds; old = {rev}")
    as_float = sys.argv[2:] == ["float32"]  # the float kernel (NaN checks) on the same values as float32
    pixels = stored.astype(np.float32) if as_float else stored
    print(f"{'float' if as_float else 'integer'} kernel on {pixels.dtype} pixels")
    for n_labels in (10, 60):
        codes = blocky_codes(np.random.default_rng(n_labels), SHAPE, n_labels)
        args = (pixels, codes, scale, offset, n_labels + 1, n_chunks, not as_float)

        def k_old():
            return int_partials(old, *args)

        def k_new():
            return int_partials(reduce_cpu, *args)

        a, b = merge_stack(*k_old()), merge_stack(*k_new())
        assert (a.count == b.count).all() and (a.argmax == b.argmax).all() and (a.argmin == b.argmin).all()
        assert np.allclose(a.mean, b.mean, rtol=1e-13) and np.allclose(a.m2, b.m2, rtol=1e-10)
        runs = {"floor": lambda: _floor(stored, codes), "old": k_old, "new": k_new}
        best = dict.fromkeys(runs, np.inf)
        for f in runs.values():
            f()
        for _ in range(15):
            for name, f in runs.items():
                t = time.perf_counter()
                f()
                best[name] = min(best[name], time.perf_counter() - t)
        print(f"{n_labels} labels: " + "  ".join(f"{k} {v * 1e3:.2f} ms ({v / best['floor']:.2f}x floor)"
                                                  for k, v in best.items())
              + f"  old/new {best['old'] / best['new']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
