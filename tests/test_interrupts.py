"""Ctrl-C stops a command even where a C callback swallowed its KeyboardInterrupt (Numba compiling on a first run)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import time

import pytest

from petfeat import interrupts
from petfeat.cli import _interrupted, build_parser, main

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _interrupt_inside_a_c_callback() -> None:
    """SIGINT while Python code runs as a callback of C (qsort): the KeyboardInterrupt is printed and dropped."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
    sent = []

    def cmp(a, b):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.time() + 5
            while time.time() < deadline:  # the handler runs here, inside the callback
                pass
        return a[0] - b[0]

    values = (ctypes.c_int * 4)(3, 1, 2, 0)
    libc.qsort(values, 4, ctypes.sizeof(ctypes.c_int), compare(cmp))


def test_a_swallowed_interrupt_is_still_noticed(capfd, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # Python's own: prints the traceback
    with interrupts.noticing():
        _interrupt_inside_a_c_callback()  # returns: the exception did not get out of the callback
        assert interrupts.noticed.is_set()
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    with interrupts.noticing():  # each command starts afresh
        interrupts.check()
    assert "Traceback" not in capfd.readouterr().err  # not Python's "Exception ignored ..." print


def test_a_command_failing_after_a_swallowed_interrupt_exits_130(monkeypatch, capsys):
    def compile_cut_short(args):
        _interrupt_inside_a_c_callback()
        raise RuntimeError("no compiled object yet for <Library '_or_spans'>")  # what Numba said next

    monkeypatch.setattr("petfeat.cli.cmd_suv", compile_cut_short)
    assert main(["suv", "somewhere"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "interrupted" and "RuntimeError" not in err


def test_a_command_that_returns_after_a_swallowed_interrupt_exits_130(monkeypatch, capsys):
    monkeypatch.setattr("petfeat.cli.cmd_suv", lambda args: _interrupt_inside_a_c_callback() or 0)
    assert main(["suv", "somewhere"]) == 130


def test_other_errors_still_propagate(monkeypatch):
    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr("petfeat.cli.cmd_suv", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["suv", "somewhere"])


def test_an_interrupted_batch_says_its_finished_studies_are_kept(tmp_path):
    parser = build_parser()
    batch = parser.parse_args(["extract", str(tmp_path / "archive"), "-o", "out"])
    one = parser.parse_args(["extract", "--pet", str(tmp_path / "pet"), "-o", "o"])
    assert _interrupted(batch) == "interrupted: finished studies are kept in out; rerun the same command to resume"
    assert _interrupted(one) == "interrupted"
