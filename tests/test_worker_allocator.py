"""Batch workers reuse freed volume buffers although Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_CHILD = """
import resource, sys
import numpy as np
from petfeat.batch import _allocator_for_volumes
applied = _allocator_for_volumes() if sys.argv[1] == "tuned" else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):  # a 2 MB buffer filled and freed again and again, as the label reader's chunks are
    a = np.empty(2 << 20, np.uint8)
    a.fill(1)
    del a
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="65536")  # what distributed's nanny gives every worker
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_worker_allocator_stops_page_faults_of_reused_buffers():
    _, plain = _faults("plain")
    applied, tuned = _faults("tuned")
    assert applied == "True"
    # untuned: every 2 MB buffer is a new mmap whose 512 pages fault in (about 51 200 faults)
    assert plain > 100 * 400
    assert tuned < plain / 20
