"""Command-line conventions: help with defaults and examples, one-line user errors with exit 2, suggestions.

Each mistake a user makes gets one line on stderr, ``petfeat COMMAND: error: ...``, exit status 2 and no
traceback. Most cases run ``main()`` in this process (fast); the native-noise case needs a subprocess.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import DRO

from petfeat.cli import _CompileNotice, _native_noise_filtered, _Progress, build_parser, main

PET = DRO / "DRO_0_0" / "PT"


def one_line_error(capsys, argv, command="extract") -> str:
    """Run ``main(argv)``; assert exit 2, a single stderr line, no traceback; return that line."""
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors leave through parser.exit
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"petfeat {command}: error:".replace(" :", ":")) and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("typo, meant", [("--lesion", "--lesions"), ("--treshold", "--threshold"),
                                         ("--min-lesion", "--min-lesion-ml"), ("--backnd", "--backend")])
def test_abbreviated_or_mistyped_option_is_refused_with_a_suggestion(capsys, tmp_path, typo, meant):
    line = one_line_error(capsys, ["extract", "--pet", str(PET), typo, "x", "-o", str(tmp_path / "o")])
    assert f"unrecognized argument: {typo}; did you mean {meant}?" in line
    assert not (tmp_path / "o").exists()  # refused before any work


def test_mistyped_command_and_choice_get_a_suggestion(capsys):
    line = one_line_error(capsys, ["extrat", "--pet", "x"], command="")
    assert line.startswith("petfeat: error:") and "did you mean extract?" in line
    line = one_line_error(capsys, ["extract", "--pet", "x", "-o", "o", "--peak-neighbours", "regoin"])
    assert "invalid choice: 'regoin'" in line and "did you mean region?" in line


def test_missing_required_option_is_one_line(capsys):
    line = one_line_error(capsys, ["extract", "--pet", str(PET)])
    assert "-o/--out" in line


def test_extract_on_a_pet_folder_without_pet_says_so(capsys, tmp_path):
    """``petfeat extract PET_FOLDER -o OUT`` (forgot --pet) used to start a cluster and process 0 studies, exit 0."""
    line = one_line_error(capsys, ["extract", str(PET), "-o", str(tmp_path / "o")])
    assert "holds DICOM files itself" in line and f"--pet {PET}" in line
    assert not (tmp_path / "o").exists()


def test_extract_on_a_folder_without_studies_says_so(capsys, tmp_path):
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    (tmp_path / "empty" / "notes" / "readme.txt").write_text("no images here")
    line = one_line_error(capsys, ["extract", str(tmp_path / "empty"), "-o", str(tmp_path / "o")])
    assert "no study found" in line and "manifest" in line and "--pet" in line


def test_extract_source_and_pet_together_is_refused(capsys, tmp_path):
    line = one_line_error(capsys, ["extract", str(tmp_path), "--pet", str(PET), "-o", str(tmp_path / "o")])
    assert "not both" in line


def test_extract_lesions_folder_is_one_line_without_native_noise(tmp_path):
    """SimpleITK's HDF5 reader printed ~30 lines of HDF5-DIAG before the message for ``--lesions FOLDER``."""
    (tmp_path / "seg").mkdir()
    r = subprocess.run([sys.executable, "-m", "petfeat.cli", "extract", "--pet", str(PET), "--lesions",
                        str(tmp_path / "seg"), "-o", str(tmp_path / "o"), "--backend", "cpu"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a folder" in lines[0] and "--labels" in lines[0], r.stderr
    assert "HDF5" not in r.stderr


def test_native_noise_filter_drops_the_hdf5_stack_and_keeps_other_output(capfd, tmp_path):
    import os

    import SimpleITK as sitk

    (tmp_path / "secret_folder_name").mkdir()
    with _native_noise_filtered():
        os.write(2, b"kept native line\n")
        with pytest.raises(RuntimeError):
            sitk.ReadImage(str(tmp_path / "secret_folder_name"))  # ITK's HDF5 probe prints its error stack
    err = capfd.readouterr().err
    assert "kept native line" in err
    assert "HDF5-DIAG" not in err and "secret_folder_name" not in err and "major:" not in err


def test_analyze_given_the_lesion_table_says_so(capsys, tmp_path):
    """``analyze --features lesions.parquet`` raised KeyError."""
    pd.DataFrame({"study_id": ["S1"], "lesion_id": [1], "suv_max": [3.0]}).to_parquet(tmp_path / "lesions.parquet")
    (tmp_path / "clinical").mkdir()
    line = one_line_error(capsys, ["analyze", "--features", str(tmp_path / "lesions.parquet"), "--clinical",
                                   str(tmp_path / "clinical"), "-o", str(tmp_path / "r")], command="analyze")
    assert "it is a lesion table" in line and "features.parquet" in line


def test_analyze_unreadable_feature_table(capsys, tmp_path):
    (tmp_path / "f.parquet").write_bytes(b"not parquet")
    line = one_line_error(capsys, ["analyze", "--features", str(tmp_path / "f.parquet"), "--clinical",
                                   str(tmp_path), "-o", str(tmp_path / "r")], command="analyze")
    assert "cannot be read" in line


def test_analyze_missing_study_file(capsys, tmp_path):
    """A missing ``--study`` file raised FileNotFoundError."""
    line = one_line_error(capsys, ["analyze", "--features", "f.parquet", "--clinical", str(tmp_path), "--study",
                                   str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "r")], command="analyze")
    assert "nope.yaml" in line and "no such study spec" in line.lower()


def test_analyze_malformed_study_yaml(capsys, tmp_path):
    """Malformed YAML raised yaml's ParserError/ScannerError with a traceback."""
    (tmp_path / "study.yaml").write_text("endpoints:\n  os: {type: survival\nanalyses:\n  - [\n")
    line = one_line_error(capsys, ["analyze", "--features", "f.parquet", "--clinical", str(tmp_path), "--study",
                                   str(tmp_path / "study.yaml"), "-o", str(tmp_path / "r")], command="analyze")
    assert "study.yaml" in line and ("YAML" in line or "yaml" in line)


def test_analyze_missing_clinical_folder(capsys, tmp_path):
    f = tmp_path / "features.parquet"
    pd.DataFrame({"patient_id": ["P1"], "region": ["liver"], "suv_mean": [5.0]}).to_parquet(f)
    line = one_line_error(capsys, ["analyze", "--features", str(f), "--clinical", str(tmp_path / "nope"), "-o",
                                   str(tmp_path / "r")], command="analyze")
    assert "--clinical" in line and "no such folder" in line


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_option_has_help_and_every_command_examples():
    parser = build_parser()
    assert not parser.allow_abbrev
    for name, sub in _subparsers(parser).items():
        assert not sub.allow_abbrev, name
        assert sub.epilog and "examples:" in sub.epilog and f"petfeat {name}" in sub.epilog, name
        for action in sub._actions:
            assert action.help, f"petfeat {name} {action.option_strings or action.dest} has no help"


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["extract", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: 26)", "(default: 0.0)", "(default: bw)", "(default: auto)", "(default: nearest)",
                  "(default: 30.0)", "examples:"):
        assert shown in text, shown
    assert "(default: None)" not in text and "(default: False)" not in text


def test_progress_in_a_log_is_a_line_every_few_seconds_with_eta(monkeypatch):
    import petfeat.cli as cli

    clock = iter([0.0, 1.0, 2.0, 6.0, 6.5, 20.0])
    monkeypatch.setattr(cli.time, "perf_counter", lambda: next(clock))
    buf = io.StringIO()  # not a terminal
    p = _Progress("scanned {i}/{n} folders", stream=buf, every=5.0, delay=0.0)  # t0 = 0
    for i in (1, 2, 3, 4):  # at 1, 2 (quiet), 6 (a line), 6.5 (quiet)
        p(i, 8)
    p(8, 8)  # the last one is always written
    lines = buf.getvalue().splitlines()
    assert lines == ["scanned 3/8 folders (6 s, ETA 10 s)", "scanned 8/8 folders (20 s)"]


def test_progress_on_a_terminal_is_a_bar_rewritten_in_place():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    buf = Tty()
    p = _Progress("studies {i}/{n}", stream=buf, width=10, delay=0.0)
    p(5, 10)
    p(10, 10)
    out = buf.getvalue()
    assert out.startswith("\r[#####-----] studies 5/10") and "\r[##########] studies 10/10" in out
    assert out.endswith("\n") and out.count("\n") == 1
    quick = Tty()
    p = _Progress("studies {i}/{n}", stream=quick)  # the default delay: a step done within a second says nothing
    p(1, 1)
    assert quick.getvalue() == ""


def test_compile_notice_is_said_once_while_numba_compiles():
    import numba

    buf = io.StringIO()
    with _CompileNotice(stream=buf):
        numba.njit(lambda x: x + 1)(1)
        numba.njit(lambda x: x * 2)(1.5)
    numba.njit(lambda x: x - 1)(1)  # outside: nothing said
    assert buf.getvalue().count("compiling petfeat's kernels") == 1
    quiet = io.StringIO()
    with _CompileNotice(stream=quiet):
        pass
    assert quiet.getvalue() == ""


def test_the_kernel_cache_check_reads_numbas_cache_folder(monkeypatch, tmp_path):
    """An empty Numba cache folder holds no kernel; one with the fused pass's and SUVpeak's indexes does (the
    batch then runs no study of its own before the workers start: tests/test_warmup.py)."""
    from numba.core import config
    from petfeat.kernels.warmup import kernels_cached

    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path / "cache"))  # an empty Numba cache
    assert not kernels_cached()
    (tmp_path / "cache" / "kernels_0123").mkdir(parents=True)
    (tmp_path / "cache" / "kernels_0123" / "reduce_cpu._fused_chunks_int-10.py311.nbi").write_bytes(b"")
    assert not kernels_cached()  # an interrupted first run: the SUVpeak kernel is not there yet
    (tmp_path / "cache" / "kernels_0123" / "peak_cpu._peak_chunks-20.py311.nbi").write_bytes(b"")
    assert kernels_cached()


def test_suv_text_is_aligned_with_units_and_no_none(capsys):
    assert main(["suv", str(DRO / "DRO_3_3" / "PT")]) == 0  # no height/sex: SUL cannot be computed
    lines = capsys.readouterr().out.splitlines()
    table = [ln for ln in lines if not ln.startswith("note:")]
    value_column = {len(ln) - len(ln.split("  ", 1)[1].lstrip()) for ln in table}
    assert len(value_column) == 1  # every value starts in the same column
    text = "\n".join(lines)
    assert "None" not in text and "SUL factor" in text and "n/a" in text
    assert "uptake time       60.0 min (3600 s)" in text
    assert "weight            70 kg" in text and "injected dose     368.08 MBq" in text


def test_heartbeat_says_nothing_for_a_quick_step_and_the_time_for_a_slow_one():
    import time as _time

    from petfeat.cli import _Heartbeat

    quick = io.StringIO()
    with _Heartbeat("analyze: fitting 3 models", stream=quick, delay=5.0):
        pass
    assert quick.getvalue() == ""
    slow = io.StringIO()
    with _Heartbeat("analyze: fitting 3 models", stream=slow, delay=0.05, every=0.1):
        _time.sleep(0.3)
    lines = slow.getvalue().splitlines()
    assert len(lines) >= 2 and all(ln.startswith("analyze: fitting 3 models ... ") for ln in lines)


def test_a_mistyped_label_in_a_region_gets_a_suggestion(capsys, tmp_path, synth_archive):
    out, truths = synth_archive
    d = out / truths[0]["patient"]
    (tmp_path / "r.yaml").write_text("regions:\n  liver: {include: [livr]}\n")
    line = one_line_error(capsys, ["extract", "--pet", str(d / "pet"), "--labels", str(d / "seg"), "--regions",
                                   str(tmp_path / "r.yaml"), "--strict", "-o", str(tmp_path / "o"), "--backend", "cpu"])
    assert "no label name matches 'livr'; did you mean 'liver'?" in line


def test_batch_workers_native_noise_is_dropped_and_other_lines_pass(capfd, tmp_path):
    """A worker process (inheriting descriptor 2) that SimpleITK makes print HDF5-DIAG stacks naming an archive
    folder: ``petfeat extract ARCHIVE`` runs its workers inside this filter."""
    from petfeat.cli import _native_noise_piped

    (tmp_path / "SECRET_STUDY" / "seg").mkdir(parents=True)
    worker = ("import sys, SimpleITK as sitk\n"
              "print('worker line', file=sys.stderr, flush=True)\n"
              "try:\n    sitk.ReadImage(sys.argv[1])\nexcept RuntimeError:\n    pass\n"
              "print('after', file=sys.stderr, flush=True)\n")
    with _native_noise_piped() as console:
        subprocess.run([sys.executable, "-c", worker, str(tmp_path / "SECRET_STUDY" / "seg")], timeout=120, check=True)
        print("progress line", file=console, flush=True)
    err = capfd.readouterr().err
    assert "worker line" in err and "after" in err and "progress line" in err
    assert "HDF5" not in err and "SECRET_STUDY" not in err and "major:" not in err


def test_the_console_filter_ends_at_once_while_a_child_still_holds_the_pipe(capfd, tmp_path):
    """multiprocessing's resource tracker keeps descriptor 2 until the batch process exits: the filter no longer
    waited for the pipe's end (10 s after every batch before its summary), and a later line still passes."""
    from petfeat.cli import _native_noise_piped

    said = tmp_path / "said"
    child = ("import pathlib, sys, time\n"
             "print('early', file=sys.stderr, flush=True); pathlib.Path(sys.argv[1]).touch()\n"
             "time.sleep(2.0); print('late', file=sys.stderr, flush=True)\n")
    with _native_noise_piped():
        proc = subprocess.Popen([sys.executable, "-c", child, str(said)])
        deadline = time.time() + 60
        while not said.exists() and time.time() < deadline:
            time.sleep(0.02)
        t0 = time.perf_counter()
    took = time.perf_counter() - t0
    proc.wait(timeout=60)
    time.sleep(0.5)  # the pump passes the late line on
    err = capfd.readouterr().err
    assert took < 1.0, f"the filter waited {took:.1f} s for a child that holds the pipe"
    assert err.count("early") == 1 and err.count("late") == 1 and "\x00" not in err


def test_batch_options_with_pet_are_refused(capsys, tmp_path):
    line = one_line_error(capsys, ["extract", "--pet", str(PET), "--workers", "4", "-o", str(tmp_path / "o")])
    assert "--workers: batch options" in line
