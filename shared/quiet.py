"""Native decoders' own stderr kept out of the user's terminal and the worker logs.

A Rust decoder's panic prints its message (and, under RUST_BACKTRACE, a hundred-frame backtrace)
straight to file descriptor 2 before pyo3 turns it into an exception; C decoders fprintf there
too. The failure already reaches the user as the one-line reason its exception carries, so fd 2
is pointed at /dev/null around the decode call. That is process-wide, so it is done only where
nothing else shares the process: conversion children (pool processes of `convert` and of a
worker), which run one instance at a time on one thread, and a process that asks for it
(`dicomfleet convert` itself). A library caller's stderr is left alone.
"""
from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_requested = False
_devnull: int | None = None


def silence_in_this_process() -> None:
    """Silence native decoders in this process too (a command that owns its terminal)."""
    global _requested
    _requested = True


def ignore_input_warnings() -> None:
    """Python's warnings off in a process that reads inputs (a command, a worker, their pools).
    pydicom warns of a corrupt element and numpy of an overflow in two lines that name a source
    file; some quote the file's bytes, and none says more than the instance's one-line reason."""
    warnings.simplefilter("ignore")


def _enabled() -> bool:
    # a pool child has multiprocessing imported already; a process without it is no child, and
    # need not import it (~5 ms of every one-worker run's start-up) to find that out
    mp = sys.modules.get("multiprocessing")
    return _requested or (mp is not None and mp.parent_process() is not None)


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """fd 2 to /dev/null for the block, in a conversion child or where asked; else nothing."""
    global _devnull
    if not _enabled():
        yield
        return
    if _devnull is None:
        _devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(_devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()  # what Python itself wrote inside the block goes where fd 2 pointed
        os.dup2(saved, 2)
        os.close(saved)
