"""Cold start: ``petfeat extract`` on one study with an empty Numba cache, and which kernels compile for how long.

    python benchmarks/bench_cold_start.py STUDY_FOLDER      # a folder with pet/, seg/ and lesions.nii.gz

Runs the command in this process with ``NUMBA_CACHE_DIR`` set to a new empty folder (so every
kernel compiles), listening to Numba's compile events, and prints the wall time and the compile
time of each top-level compiled function (nested compiles are counted in their caller), as wall
and as this process's CPU seconds (compiling is one thread: on a shared machine the CPU seconds
vary less than the wall time). The SUVpeak kernel compiles in a helper process
(``kernels/warmup.py``): its wall time from start to end, and how long this process waited for it,
are printed too (the helper's CPU is not in this process's CPU seconds).
For a small study: ``petfeat synth /tmp/small --patients 1 --voxel-mm 4``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    study = argv[0]
    cache = tempfile.mkdtemp(prefix="numba-empty-")
    os.environ["NUMBA_CACHE_DIR"] = cache  # before Numba is imported
    from numba.core import event

    compiles, stack = {}, []

    class Listener(event.Listener):
        def on_start(self, ev):
            stack.append((time.perf_counter(), time.process_time()))

        def on_end(self, ev):
            t0, c0 = stack.pop()
            fn = getattr(ev.data.get("dispatcher"), "py_func", None)
            name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"
            if not stack:
                compiles.setdefault(name, []).append((time.perf_counter() - t0, time.process_time() - c0))

    event.register("numba:compile", Listener())
    import resource

    from petfeat.kernels import peak_cpu, warmup

    from petfeat.cli import main as petfeat_main

    helper = {}
    start, wait = warmup.start_peak_compile, peak_cpu.wait_peak_compile

    def timed_start(*a, **k):
        helper["started_at"] = time.perf_counter()
        helper["started"] = start(*a, **k)
        return helper["started"]

    def timed_wait(*a, **k):
        t = time.perf_counter()
        proc = warmup._helper
        wait(*a, **k)
        if proc is not None:
            helper.update(waited=time.perf_counter() - t, returncode=proc.returncode)

    warmup.start_peak_compile, peak_cpu.wait_peak_compile = timed_start, timed_wait

    with tempfile.TemporaryDirectory() as out:
        t0, c0 = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            petfeat_main(["extract", "--pet", f"{study}/pet", "--labels", f"{study}/seg", "--lesions",
                          f"{study}/lesions.nii.gz", "--backend", "cpu", "--no-label-cache", "--key-file",
                          f"{out}/key", "-o", f"{out}/out"])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rows = sorted(((sum(w for w, _ in v), sum(c for _, c in v), k, len(v)) for k, v in compiles.items()), reverse=True)
    print(f"\ncold run {wall:.1f} s ({cpu:.1f} CPU s); top-level compiles {sum(r[0] for r in rows):.1f} s "
          f"({sum(r[1] for r in rows):.1f} CPU s); load {os.getloadavg()}")
    for total, cpu_total, name, n in rows:
        print(f"{total:8.2f} s {cpu_total:8.2f} CPU s  {n} specialisation(s)  {name}")
    if helper.get("started"):
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        kid_cpu = kids.ru_utime + kids.ru_stime
        print(f"SUVpeak helper process: started {helper['started_at'] - t0:.1f} s into the run, this process waited "
              f"{helper.get('waited', 0.0):.1f} s for it (exit {helper.get('returncode')}); helper CPU "
              f"{kid_cpu:.1f} s")
        print(f"both processes: {cpu + kid_cpu:.1f} CPU s ({cpu:.1f} here + {kid_cpu:.1f} helper; the helper's "
              f"includes its Python start and imports) for {wall:.1f} s of wall on {os.cpu_count()} cores")
    else:
        print("no SUVpeak helper process (the kernel was cached, or not needed)")


if __name__ == "__main__":
    main()
