"""Shared fixtures. Without a real NVIDIA GPU the GPU kernels run on Numba's CUDA simulator.

The simulator must be chosen before Numba is imported, so this happens at conftest import.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REAL_GPU = shutil.which("nvidia-smi") is not None and Path("/dev/nvidiactl").exists()
if not REAL_GPU:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    import numba  # a plugin may have imported numba already: its config is read then, so set it too

    numba.config.ENABLE_CUDASIM = os.environ["NUMBA_ENABLE_CUDASIM"] == "1"

# CI and developers have shared/ beside the checkout; elsewhere set PETFEAT_REFERENCE.
REFERENCE = Path(os.environ.get("PETFEAT_REFERENCE",
                                Path(__file__).resolve().parents[1].parent / "shared" / "reference")).resolve()
DRO = REFERENCE / "suv-dro" / "DRO"
IBSI = REFERENCE / "ibsi-digital-phantom"

#: One tolerance for CPU vs GPU vs oracle agreement (DESIGN.md section 2).
RTOL = 1e-6


def pytest_report_header(config):
    sim = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    return f"petfeat GPU tests: {'Numba CUDA simulator (no GPU)' if sim else 'real CUDA device'}; reference {REFERENCE}"


def _require_gpu():
    from petfeat.backend import gpu_available

    ok, why = gpu_available()
    if not ok:
        pytest.skip(f"GPU backend unavailable: {why}")


@pytest.fixture(params=["cpu", "gpu"])
def backend(request):
    """Every kernel test runs on both backends (GPU = simulator when no device is present)."""
    if request.param == "gpu":
        _require_gpu()
    return request.param


@pytest.fixture
def gpu():
    """For tests that only concern the GPU backend."""
    _require_gpu()
    return "gpu"


@pytest.fixture(scope="session")
def reference_dir():
    if not REFERENCE.exists():
        pytest.fail(f"reference data not found at {REFERENCE}; set PETFEAT_REFERENCE to shared/reference")
    return REFERENCE


@pytest.fixture(scope="session")
def synth_archive(tmp_path_factory):
    """A small synthetic archive (3 patients, one per vendor variant, 8 mm voxels)."""
    from petfeat.synth import generate_archive

    out = tmp_path_factory.mktemp("archive")
    truths = generate_archive(out, 3, seed=7, voxel_mm=8.0)
    return out, truths


@pytest.fixture(autouse=True)
def _key_file_in_tmp(monkeypatch, tmp_path_factory):
    """Tests never write the pseudonymisation key or the label cache to the real home: both live in pytest's tmp."""
    monkeypatch.setenv("PETFEAT_KEY_FILE", str(tmp_path_factory.getbasetemp() / "petfeat-test.key"))
    # and no label cache in ~/.cache: off, unless a test sets its own folder (subprocesses inherit the variable)
    monkeypatch.setenv("PETFEAT_LABEL_CACHE", "off")
