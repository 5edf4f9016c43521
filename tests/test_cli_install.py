"""Lean install: the core reads a study and extracts features without the [batch] and [stats] extras.

The extras' modules are hidden from a subprocess by a ``sitecustomize`` import blocker, which behaves as a core-only
install does (``ModuleNotFoundError``); ``.ci/run`` checks a real core-only venv as well.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DRO

ROOT = Path(__file__).resolve().parents[1]
EXTRA_MODULES = ("dask", "distributed", "lifelines", "statsmodels", "matplotlib", "jinja2", "tabulate", "pydantic")
BLOCKER = f"""
import sys
BLOCK = {set(EXTRA_MODULES)!r}
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Blocker())
"""


def run_core_only(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "blocker").mkdir(exist_ok=True)
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "blocker"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)


def test_the_blocker_hides_the_extras(tmp_path):
    r = run_core_only(tmp_path, "-c", "import dask")
    assert r.returncode == 1 and "No module named 'dask'" in r.stderr


def test_python_api_reads_a_study_and_extracts_features_without_extras(tmp_path):
    script = f"""
import sys
import numpy as np
import petfeat
series = petfeat.read_pet_series({str(DRO / "DRO_0_0" / "PT")!r})
labels = np.ones(series.geometry.shape, np.uint8)
f = petfeat.extract_features(series, labels, {{"all": {{"include": ["label_1"]}}}}, backend="cpu", peaks=False)
print(round(float(f.suv_max.iloc[0]), 4), int(f.voxel_count.iloc[0]) == labels.size)
print(sorted(m for m in {EXTRA_MODULES!r} if m in sys.modules))
"""
    r = run_core_only(tmp_path, "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["4.0 True", "[]"]  # the DRO's hot insert is SUV 4.00


def test_cli_single_study_without_extras(tmp_path, synth_archive):
    out, truths = synth_archive
    d = out / truths[0]["patient"]
    r = run_core_only(tmp_path, "-m", "petfeat.cli", "extract", "--pet", str(d / "pet"), "--labels", str(d / "seg"),
                      "--lesions", str(d / "lesions.nii.gz"), "-o", str(tmp_path / "o"), "--backend", "cpu")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "features.parquet").exists()


@pytest.mark.parametrize("args, extra", [
    (["extract", "ARCHIVE", "-o", "out"], "batch"),
    (["analyze", "--features", "f.parquet", "--clinical", ".", "-o", "r"], "stats"),
    (["demo", "--out", "d"], "batch"),
])
def test_a_missing_extra_is_one_line_naming_the_pip_command(tmp_path, args, extra):
    r = run_core_only(tmp_path, "-m", "petfeat.cli", *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'petfeat[{extra}]'" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "d").exists()  # the demo refuses before generating anything


def test_import_petfeat_is_lazy():
    code = ("import sys, petfeat; "
            "heavy = [m for m in ('pandas', 'numba', 'pydicom', 'SimpleITK') if m in sys.modules]; "
            "print(heavy); print(petfeat.extract_features.__module__, callable(petfeat.read_pet_series))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["[]", "petfeat.extract True"]


def _requirements() -> dict[str, list[str]]:
    """The installed petfeat's requirements by extra ("" for the core), from its metadata (pyproject.toml)."""
    from importlib.metadata import requires

    out: dict[str, list[str]] = {}
    for req in requires("petfeat") or []:
        spec, _, marker = req.partition(";")
        extra = marker.split("extra ==")[1].strip().strip("'\"") if "extra ==" in marker else ""
        out.setdefault(extra, []).append(spec.strip().lower())
    return out


def test_pyproject_extras():
    reqs = _requirements()
    core = " ".join(reqs[""])
    for m in ("dask", "distributed", "lifelines", "statsmodels", "matplotlib", "jinja2", "tabulate"):
        assert m not in core, m
    assert {"batch", "stats", "gpu", "all", "test"} <= set(reqs)
    assert [r.replace(" ", "") for r in reqs["all"]] == ["petfeat[batch,stats]"]
    numba = next(d for d in reqs[""] if d.startswith("numba"))
    assert "<" in numba  # the kernels use numba internals: bounded to tested releases


def test_every_extra_module_the_cli_names_is_in_its_extra():
    from petfeat.cli import EXTRAS

    reqs = _requirements()
    for module, extra in EXTRAS.items():
        names = " ".join(reqs[extra])
        assert module.rstrip("x") in names, (module, extra)


def test_run_json_records_every_dependency_version(tmp_path, synth_archive):
    import json

    from petfeat.cli import main

    out, truths = synth_archive
    d = out / truths[0]["patient"]
    regions = "regions:\n  whole_body_tumor: builtin\n  kidneys: {include: [kidney_left]}\n"
    (tmp_path / "regions.yaml").write_text(regions)
    assert main(["extract", "--pet", str(d / "pet"), "--labels", str(d / "seg"), "--lesions", str(d / "lesions.nii.gz"),
                 "--regions", str(tmp_path / "regions.yaml"), "-o", str(tmp_path / "o"), "--backend", "cpu",
                 "--no-peak"]) == 0
    versions = json.loads((tmp_path / "o" / "run.json").read_text())["versions"]
    reqs = _requirements()
    declared = {r.split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip()
                for extra, rs in reqs.items() if extra != "test" for r in rs} - {"petfeat"}
    assert declared <= {k.lower() for k in versions}
    for name in ("highdicom", "pandas", "lifelines", "numba", "llvmlite", "python"):
        assert versions[name] or versions.get(name.lower()), name
    assert "cupy-cuda12x" in versions  # listed even when not installed (None)
