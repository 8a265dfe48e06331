"""A native decoder's own stderr (pylibjpeg-rle's Rust panic text and backtrace) stays out of the
user's terminal; the one-line reason still says what failed. A library caller's stderr is left alone."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import encapsulate

from shared import quiet
from shared.dataset import decode_pixels, read_dataset
from shared.errors import InvalidDicomError

from .conftest import bundled

REASON = ("(7FE0,0010) RLE Lossless pixel data could not be decoded "
          "(index out of bounds: the len is 8192 but the index is 8193)")


@pytest.fixture(scope="module")
def panicking(tmp_path_factory) -> Path:
    """MR_small_RLE.dcm whose segments replicate past their end: pylibjpeg-rle panics on it."""
    ds = pydicom.dcmread(bundled("MR_small_RLE.dcm"))
    segment = bytes([0x81, 0x00]) * 40
    header = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13))
    ds.PixelData = encapsulate([header + segment + segment])
    path = tmp_path_factory.mktemp("panic") / "panic.dcm"
    ds.save_as(path)
    return path


def decode(path: Path) -> str:
    ds = read_dataset(path.read_bytes())
    with pytest.raises(InvalidDicomError) as err:
        decode_pixels(ds, max_pixels=1 << 28)
    return str(err.value)


def test_silenced_only_where_asked_or_in_a_conversion_child(panicking, capfd, monkeypatch):
    monkeypatch.setenv("RUST_BACKTRACE", "1")
    monkeypatch.setattr(quiet, "_requested", False)  # a library caller in its main process
    assert decode(panicking) == REASON
    noise = capfd.readouterr().err
    assert "panicked at" in noise  # (the backtrace setting is read once per process: not pinned)
    monkeypatch.setattr(quiet, "_requested", True)
    assert decode(panicking) == REASON
    assert capfd.readouterr().err == ""
    os.write(2, b"fd 2 is back\n")
    assert capfd.readouterr().err == "fd 2 is back\n"


@pytest.mark.parametrize("workers", [1, 2])
def test_convert_prints_the_summary_and_reasons_only(panicking, tmp_path, workers):
    """In the pool's children (2 workers) and in the command's own process (1 worker)."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(panicking, src / "panic.dcm")
    shutil.copy(bundled("CT_small.dcm"), src / "ct.dcm")
    command = [str(Path(sys.executable).parent / "dicomfleet"), "convert", str(src), "--out",
               str(tmp_path / "out"), "--no-deid", "--format", "png", "--workers", str(workers)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RUST_BACKTRACE": "1"})
    assert run.returncode == 1, run.stderr
    lines = run.stderr.splitlines()
    assert lines[0].startswith("2 series, 2 instances, 1 converted, 1 outputs, 1 failed in "), run.stderr
    assert len(lines) == 2 and lines[1].startswith("  failed ") and lines[1].endswith(f"/0001: {REASON}")
