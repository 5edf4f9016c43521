"""Ctrl-C stops a command even when a C callback swallowed its ``KeyboardInterrupt``.

Python raises ``KeyboardInterrupt`` in whatever Python code runs next after SIGINT. When that code is
a callback called from C (llvmlite's object-cache hook while Numba compiles a kernel, on a first run),
the exception is printed as "Exception ignored on calling ctypes callback function" and dropped: the
compile then fails with an unrelated error, and a batch went on with its other studies. The command
line's handler also sets :data:`noticed`, so the command can stop where it next looks
(:func:`check`, and :func:`petfeat.cli.main` when the command returns or fails), and the swallowed
exception is not printed (Python's "Exception ignored ..." traceback): the command says "interrupted".
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

#: Set when SIGINT arrived while :func:`noticing` was active.
noticed = threading.Event()


def _on_sigint(signum, frame) -> None:
    noticed.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def noticing() -> Iterator[None]:
    """Within the block, SIGINT raises ``KeyboardInterrupt`` as usual and also sets :data:`noticed`.

    Only in the main thread and only over Python's own handler (a program that set its own keeps it).
    """
    noticed.clear()
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, _on_sigint)
    shown = sys.unraisablehook

    def quiet(unraisable) -> None:  # a KeyboardInterrupt a C callback could not raise: noticed, not printed
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            noticed.set()
            return
        shown(unraisable)

    sys.unraisablehook = quiet
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = shown


def check() -> None:
    """Raise ``KeyboardInterrupt`` if SIGINT arrived (even if the exception it raised was swallowed)."""
    if noticed.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def ignored_by_children() -> Iterator[None]:
    """Processes started within the block ignore SIGINT, so that Ctrl-C reaches this process only.

    A terminal's Ctrl-C goes to every process of the foreground group: each local Dask worker raised
    ``KeyboardInterrupt`` in whatever it ran and printed its traceback, while this process was already
    stopping them. Child processes inherit an ignored SIGINT (and Python installs no handler of its own
    for an ignored signal); this process stops them on its own interrupt. SIGINT is ignored here too
    while the block runs (a Ctrl-C then is not seen). Outside the main thread (where no signal handler
    can be set) the children start as they are.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
