"""What a user sees on the console: SUV header decisions, regions that match no label, synth progress and targets."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import DRO

from petfeat.errors import PetfeatError, PetfeatWarning

DRO_MBQ = DRO / "DRO_3_0"  # RadionuclideTotalDose written in MBq (368.08)


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "petfeat.cli", *args], capture_output=True, text=True, timeout=600,
                          **kw)


def _regions_file(path, text: str):
    path.write_text(text)
    return str(path)


# --- 1. SUV header decisions reach the console and input_notes ---------------------------------------------------
def test_suv_decision_is_a_console_warning_and_in_input_notes_of_every_row(tmp_path):
    regions = _regions_file(tmp_path / "regions.yaml", "regions:\n  roi: [label_1]\n")
    r = _cli("extract", "--pet", str(DRO_MBQ / "PT"), "--labels", str(DRO_MBQ / "mask" / "DRO_mask.nii.gz"),
             "--regions", regions, "--backend", "cpu", "--no-peak", "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "RadionuclideTotalDose" in ln]
    assert len(lines) == 1
    assert lines[0].startswith("petfeat extract: warning: SUV: RadionuclideTotalDose (0018,1074) = 368.08")
    assert "read as MBq" in lines[0] and "3.6808e+08 Bq" in lines[0] and "--dose" in lines[0]
    f = pd.read_parquet(tmp_path / "out" / "features.parquet")
    assert f.set_index("region").loc["roi", "suv_mean"] == pytest.approx(1.00558, abs=2e-4)  # the dose was in MBq
    notes = json.loads(f.input_notes.iloc[0])
    assert len(notes["suv"]) == 1 and notes["suv"][0].startswith("RadionuclideTotalDose (0018,1074) = 368.08")
    assert set(f.input_notes) == {json.dumps(notes, separators=(",", ":"), sort_keys=True)}  # compact, every row
    for secret in ("DRO", str(DRO_MBQ), "PHANTOM"):  # PatientID, the folder, PatientName
        assert secret not in f.input_notes.iloc[0]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["suv"]["warnings"][0] == notes["suv"][0] and "decisions" not in run["suv"]
    assert run["warnings"][0] == f"SUV header decision: {notes['suv'][0]}"  # as a batch's run.json lists it


def test_the_api_warns_of_suv_decisions_it_makes_and_rows_carry_them(reference_dir):
    from petfeat.extract import extract
    from petfeat.io.dicom import read_pet_series
    from petfeat.suv import compute_suv_factors

    series = read_pet_series(reference_dir / "suv-dro" / "DRO" / "DRO_3_0" / "PT")
    labels = np.zeros(series.stored.shape, np.uint8)
    labels[:, 100:150, 100:150] = 1
    kw = {"label_names": {1: "box"}, "regions": {"box": ["box"]}, "backend": "cpu", "peaks": False}
    with pytest.warns(PetfeatWarning, match=r"SUV: RadionuclideTotalDose \(0018,1074\) = 368.08") as caught:
        res = extract(series, labels, **kw)
    assert len(caught) == 1 and caught[0].filename == __file__  # points at the caller's line
    assert "read as MBq" in json.loads(res.features.input_notes.iloc[0])["suv"][0]
    # factors computed by the caller (the batch, the command line): they warn there; the rows still carry them
    factors = compute_suv_factors(series.suv_header)
    assert factors.decisions and set(factors.decisions) <= set(factors.warnings)
    with warnings_as_errors():
        res2 = extract(series, labels, factors=factors, **kw)
    assert res2.features.input_notes.iloc[0] == res.features.input_notes.iloc[0]


def test_routine_branches_are_no_decisions_and_leave_input_notes_as_the_readers(reference_dir):
    from petfeat.io.dicom import read_pet_header
    from petfeat.suv import compute_suv_factors

    for case in ("DRO_0_0", "DRO_2_4", "DRO_3_4"):  # SUL not computed, Philips scale factor, DecayCorrection NONE
        f = compute_suv_factors(read_pet_header(reference_dir / "suv-dro" / "DRO" / case / "PT").suv_header)
        assert f.warnings and f.decisions == [], case
    midnight = compute_suv_factors(read_pet_header(reference_dir / "suv-dro" / "DRO" / "DRO_4_2" / "PT").suv_header)
    assert len(midnight.decisions) == 1 and "RadiopharmaceuticalStartTime (0018,1072)" in midnight.decisions[0]
    assert "midnight crossing" in midnight.decisions[0]


class warnings_as_errors:  # noqa: N801 - a context manager used like a function
    """Any warning inside is an error (pytest's own setting, stated where a test relies on it)."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


# --- 2. no region matches any label: one warning with the labels and the fix --------------------------------------
def test_rtstruct_with_the_builtin_regions_gives_one_warning_whose_fix_works(reference_dir, tmp_path):
    sts = reference_dir / "mirp-sts" / "STS_001" / "dicom"
    rtstruct = next((sts / "mask").glob("*.dcm"))
    args = ["extract", "--pet", str(sts / "image"), "--labels", str(rtstruct), "--backend", "cpu", "--no-peak"]
    r = _cli(*args, "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    warned = [ln for ln in r.stderr.splitlines() if "warning:" in ln]
    assert len(warned) == 1, r.stderr
    assert "none of the 11 built-in regions" in warned[0] and "the labels are GTV_Mass_PET." in warned[0]
    assert "--regions regions.yaml" in warned[0]
    f = pd.read_parquet(tmp_path / "out" / "features.parquet")
    assert len(f) == 11 and set(f.status) == {"no_matching_label"}  # the table is as before
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["warnings"][0] == warned[0].split("warning: ", 1)[1] and len(run["warnings"]) == 12
    # the regions file the warning suggests measures the label
    suggested = re.search(r"'(regions: \{.*?\})'", warned[0]).group(1)
    regions = _regions_file(tmp_path / "regions.yaml", suggested + "\n")
    from petfeat.cli import main

    with warnings_as_errors():  # no warning at all
        assert main([*args, "--regions", regions, "-o", str(tmp_path / "out2")]) == 0
    f2 = pd.read_parquet(tmp_path / "out2" / "features.parquet")
    assert list(f2.region) == ["GTV_Mass_PET"] and f2.status.iloc[0] == "ok" and f2.voxel_count.iloc[0] > 0


def test_the_summary_names_ten_labels_and_counts_the_rest_and_quotes_glob_characters():
    from petfeat.extract import extract
    from petfeat.regions import LabelLayer

    shape = (3, 4, 5)
    arr = np.arange(60, dtype=np.uint8).reshape(shape) % 13
    names = {i: f"roi_{i:02d}" for i in range(1, 12)} | {12: "GTV[1]*"}
    with pytest.warns(PetfeatWarning) as caught:
        res = extract(np.ones(shape), [LabelLayer(arr, names)], {"a": ["liver"], "b": ["spleen"]}, spacing=(1, 1, 1),
                      backend="cpu", peaks=False)
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert "none of the 2 regions matches a label name" in msg
    assert "roi_01, roi_02" in msg and "roi_10 and 2 more." in msg and "roi_11" not in msg
    assert res.warnings[0] == msg and len(res.warnings) == 3
    # a label name with glob characters is suggested as a pattern that matches only itself
    with pytest.warns(PetfeatWarning) as caught:
        extract(np.ones(shape), [LabelLayer(arr, {12: "GTV[1]*", 1: "x"})], {"a": ["liver"], "b": ["spleen"]},
                spacing=(1, 1, 1), backend="cpu", peaks=False)
    suggested = re.search(r"'regions: (\{.*?\})'", str(caught[0].message)).group(1)
    spec = json.loads(suggested)
    with warnings_as_errors():
        f = extract(np.ones(shape), [LabelLayer(arr, {12: "GTV[1]*", 1: "x"})], spec, spacing=(1, 1, 1),
                    backend="cpu", peaks=False).features.set_index("region")
    assert f.loc["GTV[1]*", "voxel_count"] == int((arr == 12).sum())
    assert f.loc["x", "voxel_count"] == int((arr == 1).sum())


def _warned(regions, names):
    from petfeat.extract import extract
    from petfeat.regions import LabelLayer

    arr = np.ones((2, 3, 4), np.uint8)
    with pytest.warns(PetfeatWarning) as caught:
        res = extract(np.ones(arr.shape), [LabelLayer(arr, names)], regions, spacing=(1, 1, 1), backend="cpu",
                      peaks=False)
    return [str(w.message) for w in caught], res


def test_some_regions_matching_or_one_region_keeps_the_warning_per_region():
    msgs, res = _warned({"liver": ["liver"], "a": ["spleen"], "b": ["kidney"]}, {1: "liver"})
    assert [m.split(":")[0] for m in msgs] == ["region 'a' matches no label", "region 'b' matches no label"]
    assert res.warnings == msgs
    msgs, _ = _warned({"liver": ["livr"]}, {1: "liver"})  # one misspelt region: its own "did you mean"
    assert len(msgs) == 1 and "region 'liver' matches no label" in msgs[0] and "did you mean 'liver'?" in msgs[0]


def test_the_summary_carries_the_close_names():
    msgs, _ = _warned({"liver": ["liver"], "spleen": ["spleen"], "aorta": ["aorta"]}, {1: "Liver", 2: "Spleen"})
    assert len(msgs) == 1 and msgs[0].startswith("none of the 3 regions matches a label name")
    assert "Close names (did you mean): liver: 'Liver'; spleen: 'Spleen'." in msgs[0]


# --- 3. synth progress: plain lines when stderr is not a terminal ------------------------------------------------
def _synth(out, *extra, patients: int = 2) -> int:
    from petfeat.cli import main

    return main(["synth", str(out), "--patients", str(patients), "--voxel-mm", "30", *extra])


def test_synth_progress_in_a_log_is_plain_lines(tmp_path, capsys):
    assert _synth(tmp_path / "a") == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "\033" not in err
    lines = err.splitlines()
    assert lines[-2].startswith("synth: wrote patient 2/2") and lines[-1].startswith("2 synthetic studies in ")


def test_synth_progress_on_a_terminal_is_a_bar_rewritten_in_place(tmp_path, monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    assert _synth(tmp_path / "a", patients=1) == 0
    out = tty.getvalue()
    assert "\r[" in out and "synth: wrote patient 1/1" in out


# --- 4. synth over an existing folder ----------------------------------------------------------------------------
def test_synth_refuses_a_folder_of_other_files_and_leaves_it_alone(tmp_path, capsys):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me\n")
    assert _synth(target) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "no synthetic archive" in err and "choose another folder" in err
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert _synth(target, "--overwrite") == 2  # --overwrite never clears a folder that is not a synthetic archive
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    assert _synth(tmp_path / "file") == 2 and "is a file" in capsys.readouterr().err


def test_synth_over_a_synthetic_archive_refuses_without_overwrite_and_replaces_with_it(tmp_path, capsys):
    from petfeat.cli import main

    target = tmp_path / "arch"
    assert _synth(target) == 0
    before = (target / "SYN0002" / "truth.json").read_text()
    assert main(["synth", str(target), "--patients", "1", "--voxel-mm", "30", "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert "holds a synthetic archive already (seed 0, 2 patients at 30.0 mm)" in err and "--overwrite" in err
    assert (target / "SYN0002" / "truth.json").read_text() == before
    (target / "manifest.csv").write_text("study_id\n")
    assert main(["synth", str(target), "--patients", "1", "--voxel-mm", "30", "--seed", "5", "--overwrite"]) == 0
    info = json.loads((target / "archive.json").read_text())
    assert (info["seed"], info["n_patients"]) == (5, 1)
    assert sorted(p.name for p in target.iterdir()) == ["SYN0001", "archive.json", "manifest.csv"]  # no old study


def test_an_unfinished_synthetic_archive_is_recognised_and_not_taken_for_the_demos(tmp_path, monkeypatch):
    import argparse

    from petfeat import synth
    from petfeat.demo import _same_archive

    def crash(i, n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synth.generate_archive(tmp_path / "a", 2, seed=0, voxel_mm=30.0, ct_labels=False, progress=crash)
    assert (tmp_path / "a" / "SYN0001").is_dir()
    assert not _same_archive(tmp_path / "a", argparse.Namespace(seed=0, patients=2, voxel_mm=30.0))
    with pytest.raises(PetfeatError, match=r"synthetic archive already \(unfinished\).*overwrite"):
        synth.generate_archive(tmp_path / "a", 2, seed=0, voxel_mm=30.0, ct_labels=False)
    synth.generate_archive(tmp_path / "a", 2, seed=0, voxel_mm=30.0, ct_labels=False, overwrite=True)
    assert _same_archive(tmp_path / "a", argparse.Namespace(seed=0, patients=2, voxel_mm=30.0))


def test_single_study_run_json_lists_the_readers_warnings_with_inputs_named_by_option(tmp_path):
    """The DRO's own mask stores its ids as int16, read exactly: a note in run.json (path-free), not on the console."""
    mask = DRO_MBQ / "mask" / "DRO_mask.nii.gz"
    regions = _regions_file(tmp_path / "regions.yaml", "regions:\n  roi: [label_1]\n")
    r = _cli("extract", "--pet", str(DRO_MBQ / "PT"), "--labels", str(mask), "--regions", regions,
             "--backend", "cpu", "--no-peak", "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "read as unsigned" not in r.stderr
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    kept = [w for w in run["warnings"] if "read as unsigned" in w]
    assert kept == ["LabelNote: <labels 1>: label ids stored as 16-bit signed integer (whole numbers 0-1) are "
                    "read as unsigned integers (exactly)."]
    assert "DRO" not in json.dumps(run["warnings"])  # neither the folder nor the file name


def test_replace_paths_names_given_absolute_and_resolved_forms_only_at_boundaries(tmp_path):
    from petfeat.pseudonyms import replace_paths

    (tmp_path / "Doe_John").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "Doe_John")
    text = (f"{tmp_path}/link/a.nii.gz: bad; {tmp_path / 'Doe_John'}: ok; {tmp_path}/Doe_Johnny/b, "
            f"'{tmp_path}/link'")
    out = replace_paths(text, {str(tmp_path / "link"): "<labels 1>"})
    assert out == f"<labels 1>/a.nii.gz: bad; <labels 1>: ok; {tmp_path}/Doe_Johnny/b, '<labels 1>'"
